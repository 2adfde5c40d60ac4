//! Writing Thrift: messages and values in either protocol, frames in any transport, THeader
//! header sections, and `TApplicationException` replies.

use super::transport::{InfoKind, HEADER_FIXED_LEN, HEADER_MAGIC, MAX_HEADER_SECTION};
use super::{
    exception_type, Error, MessageType, Protocol, TType, BINARY_VERSION_1, COMPACT_PROTOCOL_ID,
    COMPACT_VERSION,
};

/// Appends `v` as an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, v: u64) {
    let (bytes, len) = varint(v);
    out.extend_from_slice(&bytes[..len]);
}

/// `v` as an unsigned LEB128 varint: the bytes, of which the first `len` are used (at
/// most ten), for a writer that has no `Vec` to append to.
pub fn varint(mut v: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while v >= 0x80 {
        bytes[len] = (v as u8) | 0x80;
        v >>= 7;
        len += 1;
    }
    bytes[len] = v as u8;
    (bytes, len + 1)
}

fn zigzag32(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Writes one message in either protocol. Calls follow the shape of the value:
/// `message_begin`, `struct_begin`, fields (`field_begin` then the value), `field_stop`,
/// `struct_end`. Lengths and counts must fit in an `i32`.
#[derive(Debug)]
pub struct Writer<'o> {
    out: &'o mut Vec<u8>,
    protocol: Protocol,
    strict: bool,
    last_fid: i16,
    outer_fids: Vec<i16>,
    bool_field: Option<i16>,
}

impl<'o> Writer<'o> {
    /// A writer appending to `out`; binary messages get the strict header.
    pub fn new(out: &'o mut Vec<u8>, protocol: Protocol) -> Self {
        Self {
            out,
            protocol,
            strict: true,
            last_fid: 0,
            outer_fids: Vec::new(),
            bool_field: None,
        }
    }

    /// Binary only: false writes the old non-strict message header.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    fn compact(&self) -> bool {
        self.protocol == Protocol::Compact
    }

    /// The message header.
    pub fn message_begin(&mut self, name: &str, message_type: MessageType, seq_id: i32) {
        let code = message_type.code();
        match self.protocol {
            Protocol::Binary if self.strict => {
                self.out
                    .extend_from_slice(&(BINARY_VERSION_1 | u32::from(code)).to_be_bytes());
                self.binary(name.as_bytes());
                self.out.extend_from_slice(&seq_id.to_be_bytes());
            }
            Protocol::Binary => {
                self.binary(name.as_bytes());
                self.out.push(code);
                self.out.extend_from_slice(&seq_id.to_be_bytes());
            }
            Protocol::Compact => {
                self.out.push(COMPACT_PROTOCOL_ID);
                self.out.push(COMPACT_VERSION | (code << 5));
                write_varint(self.out, u64::from(seq_id as u32));
                self.binary(name.as_bytes());
            }
        }
    }

    /// Enters a struct.
    pub fn struct_begin(&mut self) {
        if self.compact() {
            self.outer_fids.push(self.last_fid);
            self.last_fid = 0;
        }
    }

    /// Leaves a struct (after [`Writer::field_stop`]).
    pub fn struct_end(&mut self) {
        if self.compact() {
            self.last_fid = self.outer_fids.pop().unwrap_or(0);
        }
    }

    /// Starts field `id` of type `ty`; its value is written next.
    pub fn field_begin(&mut self, ty: TType, id: i16) {
        if !self.compact() {
            self.out.push(ty as u8);
            self.out.extend_from_slice(&id.to_be_bytes());
        } else if ty == TType::Bool {
            // The value goes into the field header: wait for it.
            self.bool_field = Some(id);
        } else {
            self.compact_field_header(ty.compact(), id);
        }
    }

    fn compact_field_header(&mut self, code: u8, id: i16) {
        let delta = i32::from(id) - i32::from(self.last_fid);
        if (1..=15).contains(&delta) {
            self.out.push(((delta as u8) << 4) | code);
        } else {
            self.out.push(code);
            write_varint(self.out, zigzag32(i32::from(id)));
        }
        self.last_fid = id;
    }

    /// Ends the fields of a struct.
    pub fn field_stop(&mut self) {
        self.out.push(0);
    }

    /// A `bool` (a field's value or a container element).
    pub fn bool(&mut self, v: bool) {
        match self.bool_field.take() {
            Some(id) if self.compact() => self.compact_field_header(if v { 1 } else { 2 }, id),
            _ if self.compact() => self.out.push(if v { 1 } else { 2 }),
            _ => self.out.push(u8::from(v)),
        }
    }

    /// A `byte`.
    pub fn byte(&mut self, v: i8) {
        self.out.push(v as u8);
    }

    /// An `i16`.
    pub fn i16(&mut self, v: i16) {
        if self.compact() {
            write_varint(self.out, zigzag32(i32::from(v)));
        } else {
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// An `i32`.
    pub fn i32(&mut self, v: i32) {
        if self.compact() {
            write_varint(self.out, zigzag32(v));
        } else {
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// An `i64`.
    pub fn i64(&mut self, v: i64) {
        if self.compact() {
            write_varint(self.out, zigzag64(v));
        } else {
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A `double` (little-endian in the compact protocol, big-endian in binary).
    pub fn double(&mut self, v: f64) {
        if self.compact() {
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A `uuid`.
    pub fn uuid(&mut self, v: &[u8; 16]) {
        self.out.extend_from_slice(v);
    }

    /// A `binary`.
    pub fn binary(&mut self, v: &[u8]) {
        self.size(v.len());
        self.out.extend_from_slice(v);
    }

    /// A `string`.
    pub fn string(&mut self, v: &str) {
        self.binary(v.as_bytes());
    }

    fn size(&mut self, n: usize) {
        if self.compact() {
            write_varint(self.out, n as u64);
        } else {
            self.out.extend_from_slice(&(n as i32).to_be_bytes());
        }
    }

    /// The header of a list of `len` elements of type `elem`.
    pub fn list_begin(&mut self, elem: TType, len: usize) {
        if self.compact() {
            if len < 15 {
                self.out.push(((len as u8) << 4) | elem.compact());
            } else {
                self.out.push(0xf0 | elem.compact());
                write_varint(self.out, len as u64);
            }
        } else {
            self.out.push(elem as u8);
            self.size(len);
        }
    }

    /// The header of a set (the same as a list's).
    pub fn set_begin(&mut self, elem: TType, len: usize) {
        self.list_begin(elem, len);
    }

    /// The header of a map of `len` entries.
    pub fn map_begin(&mut self, key: TType, value: TType, len: usize) {
        if self.compact() {
            write_varint(self.out, len as u64);
            if len > 0 {
                self.out.push((key.compact() << 4) | value.compact());
            }
        } else {
            self.out.push(key as u8);
            self.out.push(value as u8);
            self.size(len);
        }
    }
}

/// A THeader frame's fields before its payload.
#[derive(Clone, Copy, Debug)]
pub struct HeaderPrefix<'a> {
    /// FLAGS.
    pub flags: u16,
    /// SEQ_ID.
    pub seq_id: i32,
    /// The payload protocol.
    pub protocol: Protocol,
    /// `INFO_KEYVALUE` headers, in order.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// `INFO_PKEYVALUE` headers, in order.
    pub persistent_headers: &'a [(&'a [u8], &'a [u8])],
}

impl HeaderPrefix<'_> {
    /// Appends LENGTH, MAGIC, FLAGS, SEQ_ID, HEADER_SIZE and the zero-padded header
    /// section for a payload of `payload_len` bytes. On error `out` is left as it was.
    pub fn write(&self, payload_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        out.resize(start + HEADER_FIXED_LEN, 0);
        write_varint(out, u64::from(self.protocol.header_id()));
        write_varint(out, 0); // no transforms
        for (kind, pairs) in [
            (InfoKind::KeyValue, self.headers),
            (InfoKind::PersistentKeyValue, self.persistent_headers),
        ] {
            if pairs.is_empty() {
                continue;
            }
            write_varint(out, u64::from(kind.id()));
            write_varint(out, pairs.len() as u64);
            for (k, v) in pairs {
                write_varint(out, k.len() as u64);
                out.extend_from_slice(k);
                write_varint(out, v.len() as u64);
                out.extend_from_slice(v);
            }
        }
        let unpadded = out.len() - start - HEADER_FIXED_LEN;
        let section = unpadded.div_ceil(4) * 4;
        let length = section
            .checked_add(payload_len)
            .and_then(|n| n.checked_add(HEADER_FIXED_LEN - 4))
            .and_then(|n| i32::try_from(n).ok());
        let (Some(length), true) = (length, section <= MAX_HEADER_SECTION) else {
            out.truncate(start);
            return Err(Error::TooLarge("THeader header section"));
        };
        out.resize(start + HEADER_FIXED_LEN + section, 0);
        let mut fixed = [0u8; HEADER_FIXED_LEN];
        fixed[0..4].copy_from_slice(&length.to_be_bytes());
        fixed[4..6].copy_from_slice(&HEADER_MAGIC.to_be_bytes());
        fixed[6..8].copy_from_slice(&self.flags.to_be_bytes());
        fixed[8..12].copy_from_slice(&self.seq_id.to_be_bytes());
        fixed[12..14].copy_from_slice(&((section / 4) as u16).to_be_bytes());
        out[start..start + HEADER_FIXED_LEN].copy_from_slice(&fixed);
        Ok(())
    }
}

/// How a frame is delimited, for [`write_frame`].
#[derive(Clone, Copy, Debug)]
pub enum Framing<'a> {
    /// The message alone.
    Unframed,
    /// A 4-byte length, then the message.
    Framed,
    /// A THeader frame.
    Header(HeaderPrefix<'a>),
}

/// Appends a frame whose message `payload` writes. On error `out` is left as it was.
pub fn write_frame(
    out: &mut Vec<u8>,
    framing: &Framing<'_>,
    payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), Error> {
    let start = out.len();
    let fixed = match framing {
        Framing::Unframed => {
            payload(out);
            return Ok(());
        }
        Framing::Framed => {
            out.extend_from_slice(&[0; 4]);
            4
        }
        Framing::Header(prefix) => {
            prefix.write(0, out)?;
            out.len() - start
        }
    };
    payload(out);
    // LENGTH counts everything after itself.
    let base = fixed - 4;
    let length = (out.len() - start - fixed)
        .checked_add(base)
        .and_then(|n| i32::try_from(n).ok());
    let Some(length) = length else {
        out.truncate(start);
        return Err(Error::TooLarge("thrift frame"));
    };
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// A `TApplicationException` reply.
#[derive(Clone, Copy, Debug)]
pub struct Exception<'a> {
    /// The method name of the message.
    pub name: &'a str,
    /// The sequence id of the request it answers.
    pub seq_id: i32,
    /// Field 1, `message`.
    pub message: &'a str,
    /// Field 2, `type` (see [`exception_type`]).
    pub kind: i32,
}

impl Default for Exception<'_> {
    fn default() -> Self {
        Self {
            name: "",
            seq_id: 0,
            message: "",
            kind: exception_type::UNKNOWN,
        }
    }
}

/// Appends a message of type EXCEPTION carrying `exception`, in `protocol` (binary with
/// the strict header unless `strict` is false) and `framing`.
pub fn write_exception(
    out: &mut Vec<u8>,
    framing: &Framing<'_>,
    protocol: Protocol,
    strict: bool,
    exception: &Exception<'_>,
) -> Result<(), Error> {
    write_frame(out, framing, |out| {
        let mut w = Writer::new(out, protocol).strict(strict);
        w.message_begin(exception.name, MessageType::Exception, exception.seq_id);
        w.struct_begin();
        w.field_begin(TType::Binary, 1);
        w.string(exception.message);
        w.field_begin(TType::I32, 2);
        w.i32(exception.kind);
        w.field_stop();
        w.struct_end();
    })
}
