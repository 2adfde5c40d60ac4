//! Transports: telling framed, unframed and THeader streams apart, frame lengths, and the
//! THeader header section (protocol id, transforms, info headers).

use super::cursor::Cursor;
use super::{Error, Protocol, Transport, COMPACT_PROTOCOL_ID, COMPACT_VERSION};

/// The magic in the high 16 bits of a THeader frame's second word.
pub const HEADER_MAGIC: u16 = 0x0fff;
/// Bytes of a THeader frame before its header section: LENGTH, MAGIC, FLAGS, SEQ_ID and
/// HEADER_SIZE.
pub const HEADER_FIXED_LEN: usize = 14;
/// The largest header section HEADER_SIZE can describe, in bytes.
pub const MAX_HEADER_SECTION: usize = 0xffff * 4;

/// The transport of the stream whose next frame starts at `buf[0]`.
///
/// A strict binary or compact message at the very start is unframed. Otherwise the first
/// word is a length and the second word tells: THeader magic, a strict binary or compact
/// message (framed), or a word whose two high bytes are zero (framed, an old non-strict
/// binary message with a short name). Anything else is an unframed non-strict binary
/// message if its first word, the name length, is under 16 MiB, and no Thrift at all
/// otherwise. Needs up to eight bytes.
pub fn detect_transport(buf: &[u8]) -> Result<Transport, Error> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Err(Error::Incomplete { needed: 2 });
    };
    match b0 {
        0x80 if b1 == 0x01 => return Ok(Transport::Unframed),
        COMPACT_PROTOCOL_ID if b1 & 0x1f == COMPACT_VERSION => return Ok(Transport::Unframed),
        b if b & 0x80 != 0 => return Err(Error::BadVersion),
        _ => {}
    }
    let Some(second) = buf.get(4..8) else {
        return Err(Error::Incomplete { needed: 8 });
    };
    Ok(match (second[0], second[1]) {
        (0x0f, 0xff) => Transport::Header,
        (0x80, 0x01) => Transport::Framed,
        (COMPACT_PROTOCOL_ID, v) if v & 0x1f == COMPACT_VERSION => Transport::Framed,
        (0, 0) => Transport::Framed,
        // A non-strict name length; one of 16 MiB or more is no method name.
        _ if b0 == 0 => Transport::Unframed,
        _ => return Err(Error::BadVersion),
    })
}

/// The whole length of the framed or THeader frame at `buf[0]`, its 4-byte length
/// field included. Needs four bytes.
pub fn frame_len(buf: &[u8]) -> Result<usize, Error> {
    let len = Cursor::new(buf, 0).i32()?;
    if len < 0 {
        return Err(Error::BadFrameLength(i64::from(len)));
    }
    Ok(len as usize + 4)
}

/// The kind of an info section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InfoKind {
    /// `INFO_KEYVALUE` (1): headers of this message.
    KeyValue,
    /// `INFO_PKEYVALUE` (2): headers that persist on the connection.
    PersistentKeyValue,
}

impl InfoKind {
    /// The info id on the wire.
    pub fn id(self) -> u32 {
        match self {
            InfoKind::KeyValue => 1,
            InfoKind::PersistentKeyValue => 2,
        }
    }

    fn from_id(id: u64) -> Option<Self> {
        match id {
            1 => Some(InfoKind::KeyValue),
            2 => Some(InfoKind::PersistentKeyValue),
            _ => None,
        }
    }
}

/// One key/value info header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoHeader<'a> {
    /// The section it came from.
    pub kind: InfoKind,
    /// The key's bytes.
    pub key: &'a [u8],
    /// The value's bytes.
    pub value: &'a [u8],
}

/// What a THeader frame's fixed fields and header section say, with positions relative
/// to the start of the frame (its LENGTH field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderFrame {
    /// FLAGS.
    pub flags: u16,
    /// SEQ_ID of the frame.
    pub seq_id: i32,
    /// The payload protocol.
    pub protocol: Protocol,
    /// Number of transforms applied to the payload (a payload with transforms cannot be
    /// read without undoing them).
    pub transforms: u32,
    /// The id of the first transform, if any.
    pub first_transform: Option<u32>,
    /// Where the info sections start.
    pub info_at: usize,
    /// Where the info sections that were understood end (padding or an unknown info id
    /// follows).
    pub info_end: usize,
    /// Where the payload (the Thrift message) starts: the end of the header section.
    pub payload_at: usize,
}

impl HeaderFrame {
    /// The key/value info headers of `frame`, in wire order.
    pub fn infos<'a>(&self, frame: &'a [u8]) -> InfoHeaders<'a> {
        InfoHeaders {
            cursor: Cursor::new(frame.get(..self.info_end).unwrap_or_default(), self.info_at),
            section: None,
            left: 0,
        }
    }
}

/// The key/value info headers of a THeader frame, from [`HeaderFrame::infos`].
#[derive(Clone, Debug)]
pub struct InfoHeaders<'a> {
    cursor: Cursor<'a>,
    section: Option<InfoKind>,
    left: u64,
}

impl<'a> Iterator for InfoHeaders<'a> {
    type Item = InfoHeader<'a>;

    fn next(&mut self) -> Option<InfoHeader<'a>> {
        loop {
            if let (Some(kind), 1..) = (self.section, self.left) {
                self.left -= 1;
                let key = varstring(&mut self.cursor).ok()?;
                let value = varstring(&mut self.cursor).ok()?;
                return Some(InfoHeader { kind, key, value });
            }
            // The range was checked by `parse_header_frame`; stop at its end.
            self.section = Some(InfoKind::from_id(self.cursor.varint(5).ok()?)?);
            self.left = self.cursor.varint(5).ok()?;
        }
    }
}

fn varstring<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], Error> {
    let len = c.varint32()? as usize;
    c.take(len)
}

/// Reads the fixed fields and header section of the complete THeader frame `frame`.
///
/// Info sections of unknown ids end the info headers (the rest of the section is skipped,
/// as the format requires); a frame with transforms is read up to its transform ids.
pub fn parse_header_frame(frame: &[u8]) -> Result<HeaderFrame, Error> {
    let mut c = Cursor::new(frame, 0);
    let len = c.i32().map_err(Error::in_frame)?;
    if usize::try_from(len).ok().and_then(|l| l.checked_add(4)) != Some(frame.len()) {
        return Err(Error::BadFrameLength(i64::from(len)));
    }
    if frame.len() < HEADER_FIXED_LEN {
        return Err(Error::BadFrameLength(i64::from(len)));
    }
    let fixed = (|| -> Result<_, Error> {
        let magic = c.u16()?;
        let flags = c.u16()?;
        let seq_id = c.i32()?;
        let words = c.u16()?;
        Ok((magic, flags, seq_id, words))
    })()
    .map_err(Error::in_frame)?;
    let (magic, flags, seq_id, words) = fixed;
    if magic != HEADER_MAGIC {
        return Err(Error::BadHeader("bad magic"));
    }
    let payload_at = HEADER_FIXED_LEN + usize::from(words) * 4;
    let Some(section) = frame.get(..payload_at) else {
        return Err(Error::BadHeader("header size is larger than the frame"));
    };
    let bad = |_| Error::BadHeader("header section ends inside a field");
    let mut c = Cursor::new(section, HEADER_FIXED_LEN);
    let protocol_id = c.varint32().map_err(bad)?;
    let protocol =
        Protocol::from_header_id(protocol_id).ok_or(Error::UnsupportedProtocol(protocol_id))?;
    let transforms = c.varint32().map_err(bad)?;
    let mut first_transform = None;
    for _ in 0..transforms {
        let id = c.varint32().map_err(bad)?;
        first_transform.get_or_insert(id);
    }
    let info_at = c.pos;
    let mut info_end = info_at;
    if transforms == 0 {
        while c.pos < payload_at {
            let Some(_kind) = InfoKind::from_id(c.varint(5).map_err(bad)?) else {
                break;
            };
            let count = c.varint32().map_err(bad)?;
            for _ in 0..count {
                varstring(&mut c).map_err(bad)?;
                varstring(&mut c).map_err(bad)?;
            }
            info_end = c.pos;
        }
    }
    if payload_at >= frame.len() {
        return Err(Error::BadHeader("no payload"));
    }
    Ok(HeaderFrame {
        flags,
        seq_id,
        protocol,
        transforms,
        first_transform,
        info_at,
        info_end,
        payload_at,
    })
}
