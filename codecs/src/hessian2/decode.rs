use std::borrow::Cow;
use std::ops::Range;

use super::{tag, utf8, Error, Value, DEFAULT_MAX_DEPTH};

/// Lists and maps never reserve more than this many slots up front, whatever the wire says.
const PREALLOC_LIMIT: usize = 1024;

/// Reads Hessian 2.0 values from a borrowed buffer.
///
/// One decoder should read one whole body: class definitions, type names and the
/// back-reference count carry over from one value to the next, as in Java's
/// `Hessian2Input`. Reading and skipping can be mixed freely.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    cur: Cursor<'a>,
    max_depth: usize,
    /// Where each class definition's name and field names are in `buf`.
    classes: Vec<ClassDef>,
    field_names: Vec<usize>,
    /// Where each type name is in `buf`, in definition order.
    types: Vec<usize>,
    /// Lists, maps and objects seen so far (the targets of `Q` references).
    refs: u32,
}

#[derive(Debug, Clone)]
struct ClassDef {
    name_at: usize,
    fields: Range<usize>,
}

/// What [`Decoder::read_map_start`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapStart {
    /// `N`: no map at all. Nothing more to read.
    Null,
    /// `H`: an untyped map (`java.util.HashMap`).
    Untyped,
    /// `M`: a map with this type name.
    Typed(String),
}

/// What [`Decoder::read_list_start`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListStart {
    /// `N`: no list at all. Nothing more to read.
    Null,
    /// A list of exactly `len` values; no end marker follows.
    Fixed { ty: Option<String>, len: usize },
    /// A list whose values run until an end marker (see [`Decoder::at_end_marker`]).
    Variable { ty: Option<String> },
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `buf`, with a depth limit of 128.
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder {
            cur: Cursor { buf, pos: 0 },
            max_depth: DEFAULT_MAX_DEPTH,
            classes: Vec::new(),
            field_names: Vec::new(),
            types: Vec::new(),
            refs: 0,
        }
    }

    /// Sets how many lists, maps and objects may nest. Reading recurses once per level,
    /// so keep this in the hundreds.
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.cur.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.cur.remaining()
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.cur.remaining() == 0
    }

    /// The next byte, without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.cur.peek()
    }

    /// Reads one value of any kind.
    pub fn read_value(&mut self) -> Result<Value, Error> {
        self.value(0)
    }

    /// Walks over one value of any kind without building it. Class definitions and type
    /// names met on the way are recorded and containers are counted, so later values that
    /// refer to them still read correctly. Strings are not checked for valid UTF-8.
    pub fn skip_value(&mut self) -> Result<(), Error> {
        self.skip(0)
    }

    /// Reads a string. Any other tag is an error and consumes nothing.
    pub fn read_string(&mut self) -> Result<String, Error> {
        self.read_str().map(Cow::into_owned)
    }

    /// Reads a string, borrowing it from the input when it is a single chunk of plain
    /// UTF-8 (the common case). Any other tag is an error and consumes nothing.
    pub fn read_str(&mut self) -> Result<Cow<'a, str>, Error> {
        let (pos, t) = self.expect(is_string_tag, "a string")?;
        self.cur.string_after(t, pos)
    }

    /// Reads a string that is one chunk of ASCII, as its bytes in the input: the fast path
    /// for nearly every string of an RPC envelope (names, versions, attachment keys),
    /// where a length in UTF-16 units is also the length in bytes. One pass over the bytes
    /// checks them. Any other string, any other tag and a truncated input give `None` and
    /// consume nothing; [`Decoder::read_str`] reads those.
    #[inline]
    pub fn read_ascii(&mut self) -> Option<&'a [u8]> {
        let (buf, pos) = (self.cur.buf, self.cur.pos);
        let t = *buf.get(pos)?;
        let (units, start) = match t {
            0x00..=0x1f => (usize::from(t), pos + 1),
            0x30..=0x33 => {
                let low = usize::from(*buf.get(pos + 1)?);
                ((usize::from(t - tag::STRING_MEDIUM) << 8) | low, pos + 2)
            }
            tag::STRING_FINAL => {
                let len = buf.get(pos + 1..pos + 3)?;
                (usize::from(u16::from_be_bytes([len[0], len[1]])), pos + 3)
            }
            _ => return None,
        };
        let bytes = buf.get(start..start + units)?;
        if !super::utf8::is_ascii(bytes) {
            return None;
        }
        self.cur.pos = start + units;
        Some(bytes)
    }

    /// Reads a string that is one chunk and returns where its bytes are in the input,
    /// without checking that they are UTF-8: for a caller that keeps the bytes and checks
    /// them once itself, falling back to [`Decoder::str_at`] when they are not plain UTF-8.
    /// A string in several chunks, or any other tag, gives `None` and consumes nothing.
    pub fn read_str_span(&mut self) -> Result<Option<std::ops::Range<usize>>, Error> {
        let start = self.cur.pos;
        let Some(t) = self.cur.peek() else {
            return Ok(None);
        };
        if !is_string_tag(t) || t == tag::STRING_CHUNK {
            return Ok(None);
        }
        self.cur.pos += 1;
        let span = self
            .cur
            .string_chunk(t, start)
            .and_then(|(units, _)| self.cur.string_body(units));
        match span {
            Ok((at, body)) => Ok(Some(at..at + body.len())),
            Err(e) => {
                self.cur.pos = start;
                Err(e)
            }
        }
    }

    /// Decodes the string bytes at `span` (from [`Decoder::read_str_span`]) as
    /// [`Decoder::read_str`] would: Java's surrogate pairs become characters, and invalid
    /// bytes are an error naming their position.
    pub fn str_at(&self, span: std::ops::Range<usize>) -> Result<Cow<'a, str>, Error> {
        let at = span.start;
        let body = self.cur.buf.get(span).ok_or(Error::Eof)?;
        if let Ok(s) = std::str::from_utf8(body) {
            return Ok(Cow::Borrowed(s));
        }
        let mut out = String::with_capacity(body.len());
        let mut pending = None;
        utf8::decode_into(body, at, &mut out, &mut pending)?;
        if pending.is_some() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
        Ok(Cow::Owned(out))
    }

    /// Reads a string or null. Any other tag is an error and consumes nothing.
    pub fn read_nullable_string(&mut self) -> Result<Option<String>, Error> {
        if self.cur.peek() == Some(tag::NULL) {
            self.cur.pos += 1;
            return Ok(None);
        }
        let (pos, t) = self.expect(is_string_tag, "a string or null")?;
        self.cur.string_after(t, pos).map(|s| Some(s.into_owned()))
    }

    /// Reads an int. Any other tag (a long too) is an error and consumes nothing.
    pub fn read_i32(&mut self) -> Result<i32, Error> {
        let (_, t) = self.expect(is_int_tag, "an int")?;
        self.cur.int_after(t)
    }

    /// Reads a long or an int. Any other tag is an error and consumes nothing.
    pub fn read_i64(&mut self) -> Result<i64, Error> {
        let (_, t) = self.expect(|t| is_int_tag(t) || is_long_tag(t), "a long or an int")?;
        if is_int_tag(t) {
            self.cur.int_after(t).map(i64::from)
        } else {
            self.cur.long_after(t)
        }
    }

    /// Reads a boolean. Any other tag is an error and consumes nothing.
    pub fn read_bool(&mut self) -> Result<bool, Error> {
        let (_, t) = self.expect(|t| t == tag::TRUE || t == tag::FALSE, "a boolean")?;
        Ok(t == tag::TRUE)
    }

    /// Reads the start of a map (`H`, or `M` and its type) or a null. After a map start,
    /// read keys and values until [`Decoder::at_end_marker`] returns true. The map counts
    /// as a back-reference target like any other. Any other tag is an error and consumes
    /// nothing.
    pub fn read_map_start(&mut self) -> Result<MapStart, Error> {
        let (_, t) = self.expect(
            |t| matches!(t, tag::NULL | tag::UNTYPED_MAP | tag::TYPED_MAP),
            "a map or null",
        )?;
        match t {
            tag::NULL => Ok(MapStart::Null),
            tag::UNTYPED_MAP => {
                self.new_ref();
                Ok(MapStart::Untyped)
            }
            _ => {
                let ty = self.read_type()?.into_owned();
                self.new_ref();
                Ok(MapStart::Typed(ty))
            }
        }
    }

    /// Reads the start of a list or a null. For [`ListStart::Fixed`] read exactly `len`
    /// values; for [`ListStart::Variable`] read until [`Decoder::at_end_marker`] returns
    /// true. Any other tag is an error and consumes nothing.
    pub fn read_list_start(&mut self) -> Result<ListStart, Error> {
        let (_, t) = self.expect(|t| t == tag::NULL || is_list_tag(t), "a list or null")?;
        if t == tag::NULL {
            return Ok(ListStart::Null);
        }
        let (ty, len) = self.list_header(t)?;
        let ty = ty.map(Cow::into_owned);
        Ok(match len {
            Some(len) => ListStart::Fixed { ty, len },
            None => ListStart::Variable { ty },
        })
    }

    /// True (consuming it) when the next byte is the `Z` that ends a map or a
    /// variable-length list; false (consuming nothing) for anything else.
    pub fn at_end_marker(&mut self) -> Result<bool, Error> {
        match self.cur.peek() {
            None => Err(Error::Eof),
            Some(tag::END) => {
                self.cur.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    fn expect(
        &mut self,
        accept: impl Fn(u8) -> bool,
        expected: &'static str,
    ) -> Result<(usize, u8), Error> {
        let pos = self.cur.pos;
        let t = self.cur.peek().ok_or(Error::Eof)?;
        if !accept(t) {
            return Err(Error::UnexpectedTag {
                tag: t,
                pos,
                expected,
            });
        }
        self.cur.pos += 1;
        Ok((pos, t))
    }

    fn enter(&self, depth: usize) -> Result<usize, Error> {
        if depth >= self.max_depth {
            return Err(Error::TooDeep {
                limit: self.max_depth,
            });
        }
        Ok(depth + 1)
    }

    fn new_ref(&mut self) {
        self.refs = self.refs.saturating_add(1);
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        loop {
            let pos = self.cur.pos;
            let t = self.cur.byte()?;
            return Ok(match t {
                tag::NULL => Value::Null,
                tag::TRUE => Value::Bool(true),
                tag::FALSE => Value::Bool(false),
                t if is_int_tag(t) => Value::Int(self.cur.int_after(t)?),
                t if is_long_tag(t) => Value::Long(self.cur.long_after(t)?),
                t if is_double_tag(t) => Value::Double(self.cur.double_after(t)?),
                tag::DATE_MILLIS => Value::Date(self.cur.i64()?),
                tag::DATE_MINUTES => Value::Date(i64::from(self.cur.i32()?) * 60_000),
                t if is_string_tag(t) => Value::String(self.cur.string_after(t, pos)?.into_owned()),
                t if is_binary_tag(t) => Value::Binary(self.cur.binary_after(t, pos)?),
                tag::CLASS_DEF => {
                    self.class_def()?;
                    continue;
                }
                t if is_list_tag(t) => {
                    let inner = self.enter(depth)?;
                    let (ty, len) = self.list_header(t)?;
                    let ty = ty.map(Cow::into_owned);
                    let mut items;
                    match len {
                        Some(len) => {
                            items = Vec::with_capacity(len.min(PREALLOC_LIMIT));
                            for _ in 0..len {
                                items.push(self.value(inner)?);
                            }
                        }
                        None => {
                            items = Vec::new();
                            while !self.at_end_marker()? {
                                items.push(self.value(inner)?);
                            }
                        }
                    }
                    Value::List { ty, items }
                }
                tag::UNTYPED_MAP | tag::TYPED_MAP => {
                    let inner = self.enter(depth)?;
                    let ty = if t == tag::TYPED_MAP {
                        Some(self.read_type()?.into_owned())
                    } else {
                        None
                    };
                    self.new_ref();
                    let mut entries = Vec::new();
                    while !self.at_end_marker()? {
                        let k = self.value(inner)?;
                        let v = self.value(inner)?;
                        entries.push((k, v));
                    }
                    Value::Map { ty, entries }
                }
                t if is_object_tag(t) => {
                    let inner = self.enter(depth)?;
                    let def = self.object_header(t)?;
                    let class = self.cur.string_at(def.name_at)?.into_owned();
                    let mut fields = Vec::with_capacity(def.fields.len().min(PREALLOC_LIMIT));
                    for i in def.fields {
                        let at = self.field_names.get(i).copied().ok_or(Error::Eof)?;
                        let name = self.cur.string_at(at)?.into_owned();
                        fields.push((name, self.value(inner)?));
                    }
                    Value::Object { class, fields }
                }
                tag::REF => Value::Ref(self.ref_after()?),
                _ => {
                    return Err(Error::UnexpectedTag {
                        tag: t,
                        pos,
                        expected: "a value",
                    })
                }
            });
        }
    }

    fn skip(&mut self, depth: usize) -> Result<(), Error> {
        loop {
            let pos = self.cur.pos;
            let t = self.cur.byte()?;
            let fixed = match t {
                tag::NULL | tag::TRUE | tag::FALSE => 0,
                0x80..=0xbf | 0xd8..=0xef | tag::DOUBLE_ZERO | tag::DOUBLE_ONE => 0,
                0xc0..=0xcf | 0xf0..=0xff | tag::DOUBLE_BYTE => 1,
                0xd0..=0xd7 | 0x38..=0x3f | tag::DOUBLE_SHORT => 2,
                tag::INT | tag::LONG_INT32 | tag::DOUBLE_MILLIS | tag::DATE_MINUTES => 4,
                tag::LONG | tag::DOUBLE | tag::DATE_MILLIS => 8,
                t if is_string_tag(t) => {
                    self.cur.skip_string_after(t, pos)?;
                    0
                }
                t if is_binary_tag(t) => {
                    self.cur.skip_binary_after(t, pos)?;
                    0
                }
                tag::CLASS_DEF => {
                    self.class_def()?;
                    continue;
                }
                t if is_list_tag(t) => {
                    let inner = self.enter(depth)?;
                    let len = self.skip_list_header(t)?;
                    match len {
                        Some(len) => {
                            for _ in 0..len {
                                self.skip(inner)?;
                            }
                        }
                        None => {
                            while !self.at_end_marker()? {
                                self.skip(inner)?;
                            }
                        }
                    }
                    0
                }
                tag::UNTYPED_MAP | tag::TYPED_MAP => {
                    let inner = self.enter(depth)?;
                    if t == tag::TYPED_MAP {
                        self.skip_type()?;
                    }
                    self.new_ref();
                    while !self.at_end_marker()? {
                        self.skip(inner)?;
                        self.skip(inner)?;
                    }
                    0
                }
                t if is_object_tag(t) => {
                    let inner = self.enter(depth)?;
                    let def = self.object_header(t)?;
                    for _ in def.fields {
                        self.skip(inner)?;
                    }
                    0
                }
                tag::REF => {
                    self.ref_after()?;
                    0
                }
                _ => {
                    return Err(Error::UnexpectedTag {
                        tag: t,
                        pos,
                        expected: "a value",
                    })
                }
            };
            self.cur.take(fixed)?;
            return Ok(());
        }
    }

    /// `C` has been consumed: records the class name and field names by position.
    fn class_def(&mut self) -> Result<(), Error> {
        let name_at = self.cur.pos;
        self.cur.skip_string()?;
        let count = self.length("class field count")?;
        let start = self.field_names.len();
        for _ in 0..count {
            self.field_names.push(self.cur.pos);
            self.cur.skip_string()?;
        }
        self.classes.push(ClassDef {
            name_at,
            fields: start..start + count,
        });
        Ok(())
    }

    /// `O` or a compact object tag has been consumed: finds the class definition and
    /// counts the object as a back-reference target.
    fn object_header(&mut self, t: u8) -> Result<ClassDef, Error> {
        let index = if t == tag::OBJECT {
            self.read_int_any("a class definition index")?
        } else {
            i32::from(t - tag::OBJECT_COMPACT)
        };
        let def = usize::try_from(index)
            .ok()
            .and_then(|i| self.classes.get(i))
            .cloned()
            .ok_or(Error::InvalidClassRef {
                index: index as u32,
            })?;
        self.new_ref();
        Ok(def)
    }

    /// A list tag has been consumed: reads the type (if any) and the length (`None` for
    /// variable-length lists), and counts the list as a back-reference target.
    fn list_header(&mut self, t: u8) -> Result<(Option<Cow<'a, str>>, Option<usize>), Error> {
        let ty = match t {
            tag::VAR_TYPED_LIST | tag::FIXED_TYPED_LIST | 0x70..=0x77 => Some(self.read_type()?),
            _ => None,
        };
        let len = self.list_len(t)?;
        self.new_ref();
        Ok((ty, len))
    }

    fn skip_list_header(&mut self, t: u8) -> Result<Option<usize>, Error> {
        if matches!(t, tag::VAR_TYPED_LIST | tag::FIXED_TYPED_LIST | 0x70..=0x77) {
            self.skip_type()?;
        }
        let len = self.list_len(t)?;
        self.new_ref();
        Ok(len)
    }

    fn list_len(&mut self, t: u8) -> Result<Option<usize>, Error> {
        Ok(match t {
            tag::FIXED_TYPED_LIST | tag::FIXED_UNTYPED_LIST => Some(self.length("list length")?),
            0x70..=0x77 => Some(usize::from(t - tag::TYPED_LIST_COMPACT)),
            0x78..=0x7f => Some(usize::from(t - tag::UNTYPED_LIST_COMPACT)),
            _ => None,
        })
    }

    /// A count from the wire: every counted item takes at least one byte, so a count
    /// larger than the input left is rejected before anything is reserved or looped.
    fn length(&mut self, what: &'static str) -> Result<usize, Error> {
        let pos = self.cur.pos;
        let n = self.read_int_any(what)?;
        let n = usize::try_from(n).map_err(|_| Error::NegativeLength { what, len: n, pos })?;
        let left = self.cur.remaining();
        if n > left {
            return Err(Error::TooLarge {
                what,
                len: n as u64,
                limit: left as u64,
            });
        }
        Ok(n)
    }

    fn read_int_any(&mut self, expected: &'static str) -> Result<i32, Error> {
        let pos = self.cur.pos;
        let t = self.cur.byte()?;
        if !is_int_tag(t) {
            return Err(Error::UnexpectedTag {
                tag: t,
                pos,
                expected,
            });
        }
        self.cur.int_after(t)
    }

    fn ref_after(&mut self) -> Result<u32, Error> {
        let index = self.read_int_any("a reference index")?;
        match u32::try_from(index) {
            Ok(i) if i < self.refs => Ok(i),
            _ => Err(Error::InvalidRef {
                index: index as u32,
            }),
        }
    }

    /// A type: a string (which defines a new type name) or an int (a type reference).
    fn read_type(&mut self) -> Result<Cow<'a, str>, Error> {
        let pos = self.cur.pos;
        let t = self.cur.byte()?;
        if is_string_tag(t) {
            let s = self.cur.string_after(t, pos)?;
            self.types.push(pos);
            Ok(s)
        } else if is_int_tag(t) {
            let at = self.type_ref(t)?;
            self.cur.string_at(at)
        } else {
            Err(Error::UnexpectedTag {
                tag: t,
                pos,
                expected: "a type name or type reference",
            })
        }
    }

    fn skip_type(&mut self) -> Result<(), Error> {
        let pos = self.cur.pos;
        let t = self.cur.byte()?;
        if is_string_tag(t) {
            self.cur.skip_string_after(t, pos)?;
            self.types.push(pos);
            Ok(())
        } else if is_int_tag(t) {
            self.type_ref(t).map(drop)
        } else {
            Err(Error::UnexpectedTag {
                tag: t,
                pos,
                expected: "a type name or type reference",
            })
        }
    }

    fn type_ref(&mut self, t: u8) -> Result<usize, Error> {
        let index = self.cur.int_after(t)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.types.get(i).copied())
            .ok_or(Error::InvalidTypeRef {
                index: index as u32,
            })
    }
}

/// Position-only reading of primitives; knows nothing of definitions or references.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        let b = self.peek().ok_or(Error::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Eof)?;
        let s = self.buf.get(self.pos..end).ok_or(Error::Eof)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u16(&mut self) -> Result<usize, Error> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn int_after(&mut self, t: u8) -> Result<i32, Error> {
        Ok(match t {
            0x80..=0xbf => i32::from(t) - i32::from(tag::INT_ZERO),
            0xc0..=0xcf => {
                ((i32::from(t) - i32::from(tag::INT_BYTE_ZERO)) << 8) + i32::from(self.byte()?)
            }
            0xd0..=0xd7 => {
                let [b1, b0] = self.array()?;
                ((i32::from(t) - i32::from(tag::INT_SHORT_ZERO)) << 16)
                    + (i32::from(b1) << 8)
                    + i32::from(b0)
            }
            _ => self.i32()?,
        })
    }

    fn long_after(&mut self, t: u8) -> Result<i64, Error> {
        Ok(match t {
            0xd8..=0xef => i64::from(t) - i64::from(tag::LONG_ZERO),
            0xf0..=0xff => {
                ((i64::from(t) - i64::from(tag::LONG_BYTE_ZERO)) << 8) + i64::from(self.byte()?)
            }
            0x38..=0x3f => {
                let [b1, b0] = self.array()?;
                ((i64::from(t) - i64::from(tag::LONG_SHORT_ZERO)) << 16)
                    + (i64::from(b1) << 8)
                    + i64::from(b0)
            }
            tag::LONG_INT32 => i64::from(self.i32()?),
            _ => self.i64()?,
        })
    }

    fn double_after(&mut self, t: u8) -> Result<f64, Error> {
        Ok(match t {
            tag::DOUBLE_ZERO => 0.0,
            tag::DOUBLE_ONE => 1.0,
            tag::DOUBLE_BYTE => f64::from(self.byte()? as i8),
            tag::DOUBLE_SHORT => f64::from(i16::from_be_bytes(self.array()?)),
            tag::DOUBLE_MILLIS => 0.001 * f64::from(self.i32()?),
            _ => f64::from_bits(u64::from_be_bytes(self.array()?)),
        })
    }

    /// Length in UTF-16 units and whether this is the final chunk, for a string tag.
    fn string_chunk(&mut self, t: u8, pos: usize) -> Result<(usize, bool), Error> {
        Ok(match t {
            0x00..=0x1f => (usize::from(t), true),
            0x30..=0x33 => (
                (usize::from(t - tag::STRING_MEDIUM) << 8) | usize::from(self.byte()?),
                true,
            ),
            tag::STRING_FINAL => (self.u16()?, true),
            tag::STRING_CHUNK => (self.u16()?, false),
            _ => {
                return Err(Error::UnexpectedTag {
                    tag: t,
                    pos,
                    expected: "a string chunk",
                })
            }
        })
    }

    /// Bytes of the next string chunk body.
    fn string_body(&mut self, units: usize) -> Result<(usize, &'a [u8]), Error> {
        let at = self.pos;
        let n = utf8::span(self.buf, at, units)?;
        Ok((at, self.take(n)?))
    }

    fn string_after(&mut self, t: u8, pos: usize) -> Result<Cow<'a, str>, Error> {
        let (units, last) = self.string_chunk(t, pos)?;
        let (at, body) = self.string_body(units)?;
        let mut pending = None;
        if last {
            if let Ok(s) = std::str::from_utf8(body) {
                return Ok(Cow::Borrowed(s));
            }
            let mut out = String::with_capacity(body.len());
            utf8::decode_into(body, at, &mut out, &mut pending)?;
            if pending.is_some() {
                out.push(char::REPLACEMENT_CHARACTER);
            }
            return Ok(Cow::Owned(out));
        }
        let mut out = String::with_capacity(body.len());
        utf8::decode_into(body, at, &mut out, &mut pending)?;
        loop {
            let pos = self.pos;
            let t = self.byte()?;
            let (units, last) = self.string_chunk(t, pos)?;
            let (at, body) = self.string_body(units)?;
            utf8::decode_into(body, at, &mut out, &mut pending)?;
            if last {
                break;
            }
        }
        if pending.is_some() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
        Ok(Cow::Owned(out))
    }

    fn skip_string_after(&mut self, t: u8, pos: usize) -> Result<(), Error> {
        let (mut units, mut last) = self.string_chunk(t, pos)?;
        loop {
            self.string_body(units)?;
            if last {
                return Ok(());
            }
            let pos = self.pos;
            let t = self.byte()?;
            (units, last) = self.string_chunk(t, pos)?;
        }
    }

    fn skip_string(&mut self) -> Result<(), Error> {
        let pos = self.pos;
        let t = self.byte()?;
        if !is_string_tag(t) {
            return Err(Error::UnexpectedTag {
                tag: t,
                pos,
                expected: "a string",
            });
        }
        self.skip_string_after(t, pos)
    }

    /// The string that starts at `pos` (a position already walked once).
    fn string_at(&self, pos: usize) -> Result<Cow<'a, str>, Error> {
        let mut c = Cursor { buf: self.buf, pos };
        let t = c.byte()?;
        c.string_after(t, pos)
    }

    fn binary_chunk(&mut self, t: u8, pos: usize) -> Result<(usize, bool), Error> {
        Ok(match t {
            0x20..=0x2f => (usize::from(t - tag::BINARY_SHORT), true),
            0x34..=0x37 => (
                (usize::from(t - tag::BINARY_MEDIUM) << 8) | usize::from(self.byte()?),
                true,
            ),
            tag::BINARY_FINAL => (self.u16()?, true),
            tag::BINARY_CHUNK => (self.u16()?, false),
            _ => {
                return Err(Error::UnexpectedTag {
                    tag: t,
                    pos,
                    expected: "a binary chunk",
                })
            }
        })
    }

    fn binary_after(&mut self, t: u8, pos: usize) -> Result<Vec<u8>, Error> {
        let (len, mut last) = self.binary_chunk(t, pos)?;
        let mut out = self.take(len)?.to_vec();
        while !last {
            let pos = self.pos;
            let t = self.byte()?;
            let (len, l) = self.binary_chunk(t, pos)?;
            out.extend_from_slice(self.take(len)?);
            last = l;
        }
        Ok(out)
    }

    fn skip_binary_after(&mut self, t: u8, pos: usize) -> Result<(), Error> {
        let (mut len, mut last) = self.binary_chunk(t, pos)?;
        loop {
            self.take(len)?;
            if last {
                return Ok(());
            }
            let pos = self.pos;
            let t = self.byte()?;
            (len, last) = self.binary_chunk(t, pos)?;
        }
    }
}

fn is_int_tag(t: u8) -> bool {
    matches!(t, 0x80..=0xd7 | tag::INT)
}

fn is_long_tag(t: u8) -> bool {
    matches!(t, 0xd8..=0xff | 0x38..=0x3f | tag::LONG_INT32 | tag::LONG)
}

fn is_double_tag(t: u8) -> bool {
    matches!(t, tag::DOUBLE | 0x5b..=0x5f)
}

fn is_string_tag(t: u8) -> bool {
    matches!(t, 0x00..=0x1f | 0x30..=0x33 | tag::STRING_CHUNK | tag::STRING_FINAL)
}

fn is_binary_tag(t: u8) -> bool {
    matches!(t, 0x20..=0x2f | 0x34..=0x37 | tag::BINARY_CHUNK | tag::BINARY_FINAL)
}

fn is_list_tag(t: u8) -> bool {
    matches!(t, 0x55..=0x58 | 0x70..=0x7f)
}

fn is_object_tag(t: u8) -> bool {
    matches!(t, tag::OBJECT | 0x60..=0x6f)
}
