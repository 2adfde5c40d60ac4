use std::collections::HashMap;

use super::{tag, utf8, Value};

/// UTF-16 units per non-final string chunk; Java and hessian.js split at the same place.
const STRING_CHUNK: usize = 0x8000;
/// Bytes per non-final binary chunk, as hessian.js writes them.
const BINARY_CHUNK: usize = 4093;

/// A growable byte buffer an [`Encoder`] writes into.
pub trait Sink {
    /// Appends one byte.
    fn put_u8(&mut self, b: u8);
    /// Appends a run of bytes.
    fn put_slice(&mut self, s: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put_u8(&mut self, b: u8) {
        self.push(b);
    }
    #[inline]
    fn put_slice(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
}

impl Sink for bytes::BytesMut {
    #[inline]
    fn put_u8(&mut self, b: u8) {
        bytes::BufMut::put_u8(self, b);
    }
    #[inline]
    fn put_slice(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    #[inline]
    fn put_u8(&mut self, b: u8) {
        (**self).put_u8(b);
    }
    #[inline]
    fn put_slice(&mut self, s: &[u8]) {
        (**self).put_slice(s);
    }
}

/// Writes Hessian 2.0 values, each in its most compact form.
///
/// Like a decoder, one encoder should write one whole body: a type name or class
/// definition is written once and referred to by index afterwards. Back-references
/// ([`Value::Ref`]) are written as given; the encoder does not detect shared values.
#[derive(Debug, Default)]
pub struct Encoder<B = Vec<u8>> {
    buf: B,
    types: HashMap<String, u32>,
    /// Class definitions written so far, by class name: (field names, index).
    classes: HashMap<String, Vec<(Vec<String>, u32)>>,
    class_count: u32,
}

impl Encoder<Vec<u8>> {
    /// An encoder writing into a new `Vec<u8>`.
    pub fn new() -> Self {
        Self::with_buffer(Vec::new())
    }
}

impl<B: AsRef<[u8]>> Encoder<B> {
    /// Everything written so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

/// How many bytes [`Encoder::write_i32`] writes for `v`: for a caller that sizes a
/// buffer exactly before writing into it.
pub fn i32_len(v: i32) -> usize {
    match v {
        -0x10..=0x2f => 1,
        -0x800..=0x7ff => 2,
        -0x40000..=0x3ffff => 3,
        _ => 5,
    }
}

/// Appends the string `s` to `buf`, as [`Encoder::write_str`] does: for a writer that
/// has only strings to write and no class definitions or type names to keep track of
/// (which is what an [`Encoder`] is for).
pub fn write_str<B: Sink>(buf: &mut B, s: &str) {
    if s.is_ascii() {
        let mut rest = s.as_bytes();
        while rest.len() > STRING_CHUNK {
            let (chunk, tail) = rest.split_at(STRING_CHUNK);
            string_header(buf, STRING_CHUNK, false);
            buf.put_slice(chunk);
            rest = tail;
        }
        string_header(buf, rest.len(), true);
        buf.put_slice(rest);
        return;
    }
    let mut rest = s;
    loop {
        let mut units = 0;
        let mut split = None;
        for (i, c) in rest.char_indices() {
            let w = c.len_utf16();
            if units + w > STRING_CHUNK {
                split = Some(i);
                break;
            }
            units += w;
        }
        let (chunk, tail) = match split {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        string_header(buf, units, split.is_none());
        utf8::encode_cesu8(chunk, |b| buf.put_slice(b));
        if split.is_none() {
            return;
        }
        rest = tail;
    }
}

fn string_header<B: Sink>(buf: &mut B, units: usize, last: bool) {
    if !last {
        buf.put_u8(tag::STRING_CHUNK);
        buf.put_slice(&(units as u16).to_be_bytes());
    } else if units <= 0x1f {
        buf.put_u8(units as u8);
    } else if units <= 0x3ff {
        buf.put_slice(&[tag::STRING_MEDIUM + (units >> 8) as u8, units as u8]);
    } else {
        buf.put_u8(tag::STRING_FINAL);
        buf.put_slice(&(units as u16).to_be_bytes());
    }
}

impl<B: Sink> Encoder<B> {
    /// An encoder appending to `buf`.
    pub fn with_buffer(buf: B) -> Self {
        Encoder {
            buf,
            types: HashMap::new(),
            classes: HashMap::new(),
            class_count: 0,
        }
    }

    /// The buffer, giving up the encoder.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// The buffer.
    pub fn get_ref(&self) -> &B {
        &self.buf
    }

    /// The buffer, for appending bytes that are not Hessian.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.buf
    }

    /// `N`.
    pub fn write_null(&mut self) -> &mut Self {
        self.buf.put_u8(tag::NULL);
        self
    }

    /// `T` or `F`.
    pub fn write_bool(&mut self, v: bool) -> &mut Self {
        self.buf.put_u8(if v { tag::TRUE } else { tag::FALSE });
        self
    }

    /// An int in 1, 2, 3 or 5 bytes ([`i32_len`] says how many).
    pub fn write_i32(&mut self, v: i32) -> &mut Self {
        match v {
            -0x10..=0x2f => self.buf.put_u8((v + i32::from(tag::INT_ZERO)) as u8),
            -0x800..=0x7ff => {
                self.buf
                    .put_slice(&[((v >> 8) + i32::from(tag::INT_BYTE_ZERO)) as u8, v as u8]);
            }
            -0x40000..=0x3ffff => self.buf.put_slice(&[
                ((v >> 16) + i32::from(tag::INT_SHORT_ZERO)) as u8,
                (v >> 8) as u8,
                v as u8,
            ]),
            _ => {
                self.buf.put_u8(tag::INT);
                self.buf.put_slice(&v.to_be_bytes());
            }
        }
        self
    }

    /// A long in 1, 2, 3, 5 or 9 bytes.
    pub fn write_i64(&mut self, v: i64) -> &mut Self {
        match v {
            -0x08..=0x0f => self.buf.put_u8((v + i64::from(tag::LONG_ZERO)) as u8),
            -0x800..=0x7ff => self
                .buf
                .put_slice(&[((v >> 8) + i64::from(tag::LONG_BYTE_ZERO)) as u8, v as u8]),
            -0x40000..=0x3ffff => self.buf.put_slice(&[
                ((v >> 16) + i64::from(tag::LONG_SHORT_ZERO)) as u8,
                (v >> 8) as u8,
                v as u8,
            ]),
            _ => match i32::try_from(v) {
                Ok(v32) => {
                    self.buf.put_u8(tag::LONG_INT32);
                    self.buf.put_slice(&v32.to_be_bytes());
                }
                Err(_) => {
                    self.buf.put_u8(tag::LONG);
                    self.buf.put_slice(&v.to_be_bytes());
                }
            },
        }
        self
    }

    /// A double in the shortest form that decodes to exactly the same bits.
    pub fn write_f64(&mut self, v: f64) -> &mut Self {
        let same = |d: f64| d.to_bits() == v.to_bits();
        let t = v.trunc();
        if same(t) && (-32768.0..=32767.0).contains(&t) {
            // Integral, and not -0.0 (same() compares bits against the i16 round trip).
            let i = t as i16;
            if same(f64::from(i)) {
                match i {
                    0 => self.buf.put_u8(tag::DOUBLE_ZERO),
                    1 => self.buf.put_u8(tag::DOUBLE_ONE),
                    -0x80..=0x7f => self.buf.put_slice(&[tag::DOUBLE_BYTE, i as u8]),
                    _ => {
                        self.buf.put_u8(tag::DOUBLE_SHORT);
                        self.buf.put_slice(&i.to_be_bytes());
                    }
                }
                return self;
            }
        }
        let millis = v * 1000.0;
        if (-2_147_483_648.0..=2_147_483_647.0).contains(&millis) {
            let m = millis as i32;
            if same(0.001 * f64::from(m)) {
                self.buf.put_u8(tag::DOUBLE_MILLIS);
                self.buf.put_slice(&m.to_be_bytes());
                return self;
            }
        }
        self.buf.put_u8(tag::DOUBLE);
        self.buf.put_slice(&v.to_bits().to_be_bytes());
        self
    }

    /// A date, in minutes when it falls on a whole minute that fits 32 bits.
    pub fn write_date(&mut self, millis: i64) -> &mut Self {
        if millis % 60_000 == 0 {
            if let Ok(minutes) = i32::try_from(millis / 60_000) {
                self.buf.put_u8(tag::DATE_MINUTES);
                self.buf.put_slice(&minutes.to_be_bytes());
                return self;
            }
        }
        self.buf.put_u8(tag::DATE_MILLIS);
        self.buf.put_slice(&millis.to_be_bytes());
        self
    }

    /// A string. Lengths count UTF-16 units; strings over 0x8000 units are split into
    /// chunks (never inside a surrogate pair), as Java does.
    pub fn write_str(&mut self, s: &str) -> &mut Self {
        write_str(&mut self.buf, s);
        self
    }

    /// A string or, for `None`, null.
    pub fn write_nullable_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.write_str(s),
            None => self.write_null(),
        }
    }

    /// Binary data, split into chunks of 4093 bytes as hessian.js does.
    pub fn write_binary(&mut self, b: &[u8]) -> &mut Self {
        let mut rest = b;
        while rest.len() > BINARY_CHUNK {
            let (chunk, tail) = rest.split_at(BINARY_CHUNK);
            self.buf.put_u8(tag::BINARY_CHUNK);
            self.buf.put_slice(&(BINARY_CHUNK as u16).to_be_bytes());
            self.buf.put_slice(chunk);
            rest = tail;
        }
        let n = rest.len();
        if n <= 0x0f {
            self.buf.put_u8(tag::BINARY_SHORT + n as u8);
        } else if n <= 0x3ff {
            self.buf
                .put_slice(&[tag::BINARY_MEDIUM + (n >> 8) as u8, n as u8]);
        } else {
            self.buf.put_u8(tag::BINARY_FINAL);
            self.buf.put_slice(&(n as u16).to_be_bytes());
        }
        self.buf.put_slice(rest);
        self
    }

    /// Starts an untyped list of `len` values; write them next. Returns true when the
    /// list was started in variable-length form (only for lengths beyond `i32::MAX`) and
    /// must be finished with [`Encoder::write_list_end`].
    pub fn write_list_untyped(&mut self, len: usize) -> bool {
        self.write_list_start(None, len)
    }

    /// Starts a list of `len` values of type `ty`; see [`Encoder::write_list_untyped`].
    pub fn write_list_typed(&mut self, ty: &str, len: usize) -> bool {
        self.write_list_start(Some(ty), len)
    }

    /// Starts a list of `len` values, typed or not; see [`Encoder::write_list_untyped`].
    pub fn write_list_start(&mut self, ty: Option<&str>, len: usize) -> bool {
        let Ok(n) = i32::try_from(len) else {
            self.write_list_variable(ty);
            return true;
        };
        match (ty, len) {
            (None, 0..=7) => self.buf.put_u8(tag::UNTYPED_LIST_COMPACT + len as u8),
            (Some(ty), 0..=7) => {
                self.buf.put_u8(tag::TYPED_LIST_COMPACT + len as u8);
                self.write_type(ty);
            }
            (None, _) => {
                self.buf.put_u8(tag::FIXED_UNTYPED_LIST);
                self.write_i32(n);
            }
            (Some(ty), _) => {
                self.buf.put_u8(tag::FIXED_TYPED_LIST);
                self.write_type(ty);
                self.write_i32(n);
            }
        }
        false
    }

    /// Starts a list of unknown length; finish it with [`Encoder::write_list_end`].
    pub fn write_list_variable(&mut self, ty: Option<&str>) -> &mut Self {
        match ty {
            None => self.buf.put_u8(tag::VAR_UNTYPED_LIST),
            Some(ty) => {
                self.buf.put_u8(tag::VAR_TYPED_LIST);
                self.write_type(ty);
            }
        }
        self
    }

    /// Ends a variable-length list.
    pub fn write_list_end(&mut self) -> &mut Self {
        self.buf.put_u8(tag::END);
        self
    }

    /// Starts a map: `H` when untyped, else `M` and the type. Write keys and values next,
    /// then [`Encoder::write_map_end`].
    pub fn write_map_start(&mut self, ty: Option<&str>) -> &mut Self {
        match ty {
            None => self.buf.put_u8(tag::UNTYPED_MAP),
            Some(ty) => {
                self.buf.put_u8(tag::TYPED_MAP);
                self.write_type(ty);
            }
        }
        self
    }

    /// Ends a map.
    pub fn write_map_end(&mut self) -> &mut Self {
        self.buf.put_u8(tag::END);
        self
    }

    /// Starts an object of `class` with these field names, defining the class first if
    /// this encoder has not written it with the same fields. Write one value per field
    /// next, in order.
    pub fn write_object_start<S: AsRef<str>>(&mut self, class: &str, fields: &[S]) -> &mut Self {
        let known = self.classes.get(class).and_then(|defs| {
            defs.iter()
                .find(|(names, _)| {
                    names
                        .iter()
                        .map(String::as_str)
                        .eq(fields.iter().map(AsRef::as_ref))
                })
                .map(|&(_, i)| i)
        });
        let index = match known {
            Some(i) => i,
            None => {
                let i = self.class_count;
                self.class_count += 1;
                self.buf.put_u8(tag::CLASS_DEF);
                self.write_str(class);
                self.write_i32(fields.len() as i32);
                for f in fields {
                    self.write_str(f.as_ref());
                }
                let names = fields.iter().map(|f| f.as_ref().to_owned()).collect();
                self.classes
                    .entry(class.to_owned())
                    .or_default()
                    .push((names, i));
                i
            }
        };
        if index <= 0x0f {
            self.buf.put_u8(tag::OBJECT_COMPACT + index as u8);
        } else {
            self.buf.put_u8(tag::OBJECT);
            self.write_i32(index as i32);
        }
        self
    }

    /// A back-reference to the `index`th list, map or object of the body.
    pub fn write_ref(&mut self, index: u32) -> &mut Self {
        self.buf.put_u8(tag::REF);
        self.write_i32(index as i32)
    }

    /// Any value, recursively.
    pub fn write_value(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Null => self.write_null(),
            Value::Bool(b) => self.write_bool(*b),
            Value::Int(i) => self.write_i32(*i),
            Value::Long(l) => self.write_i64(*l),
            Value::Double(d) => self.write_f64(*d),
            Value::Date(ms) => self.write_date(*ms),
            Value::String(s) => self.write_str(s),
            Value::Binary(b) => self.write_binary(b),
            Value::List { ty, items } => {
                let end = self.write_list_start(ty.as_deref(), items.len());
                for item in items {
                    self.write_value(item);
                }
                if end {
                    self.write_list_end();
                }
                self
            }
            Value::Map { ty, entries } => {
                self.write_map_start(ty.as_deref());
                for (k, v) in entries {
                    self.write_value(k);
                    self.write_value(v);
                }
                self.write_map_end()
            }
            Value::Object { class, fields } => {
                let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                self.write_object_start(class, &names);
                for (_, v) in fields {
                    self.write_value(v);
                }
                self
            }
            Value::Ref(i) => self.write_ref(*i),
        }
    }

    /// A type name the first time, its index afterwards.
    fn write_type(&mut self, ty: &str) {
        if let Some(&i) = self.types.get(ty) {
            self.write_i32(i as i32);
        } else {
            let i = self.types.len() as u32;
            self.types.insert(ty.to_owned(), i);
            self.write_str(ty);
        }
    }
}
