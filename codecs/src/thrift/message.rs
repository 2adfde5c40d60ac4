//! The message header every Thrift message starts with: name, type and sequence id, with
//! the positions an encoder needs to patch them; and the `TApplicationException` body.

use std::ops::Range;

use super::cursor::Cursor;
use super::skip::Walker;
use super::{
    Error, MessageType, Protocol, TType, BINARY_VERSION_1, COMPACT_PROTOCOL_ID, COMPACT_VERSION,
};

/// The header of one message, with positions relative to the start of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    /// The serialization.
    pub protocol: Protocol,
    /// Binary only: true for the strict header (`0x8001` version word), false for the old
    /// one (name length first). Always true for compact.
    pub strict: bool,
    /// The message type.
    pub message_type: MessageType,
    /// The sequence id.
    pub seq_id: i32,
    /// Where the name's bytes are.
    pub name: Range<usize>,
    /// Where the sequence id is.
    pub seq_id_at: usize,
    /// How long the sequence id is: 4 in the binary protocol, 1 to 5 (a varint) in the
    /// compact protocol.
    pub seq_id_len: usize,
    /// Where the body struct starts.
    pub body_at: usize,
}

/// The protocol of the message starting at `msg[0]`: `0x80` starts a strict binary
/// message, `0x82` a compact one, and anything else is taken for an old non-strict binary
/// message (its first word is the name's length). Needs two bytes.
pub fn detect_protocol(msg: &[u8]) -> Result<Protocol, Error> {
    let (Some(&b0), Some(&b1)) = (msg.first(), msg.get(1)) else {
        return Err(Error::Incomplete { needed: 2 });
    };
    match b0 {
        0x80 if b1 == 0x01 => Ok(Protocol::Binary),
        COMPACT_PROTOCOL_ID if b1 & 0x1f == COMPACT_VERSION => Ok(Protocol::Compact),
        b if b & 0x80 == 0 => Ok(Protocol::Binary),
        _ => Err(Error::BadVersion),
    }
}

/// Reads the header of the message at the start of `msg` in `protocol`.
///
/// The name is not checked for UTF-8. Returns [`Error::Incomplete`] when `msg` ends
/// before the header does.
pub fn parse_message_header(protocol: Protocol, msg: &[u8]) -> Result<MessageHeader, Error> {
    let mut c = Cursor::new(msg, 0);
    match protocol {
        Protocol::Binary => {
            let first = c.i32()?;
            let strict = first < 0;
            let (message_type, name) = if strict {
                let word = first as u32;
                if word & 0xffff_0000 != BINARY_VERSION_1 {
                    return Err(Error::BadVersion);
                }
                let message_type = message_type((word & 0xff) as u8)?;
                let len = c.binary_size("message name")?;
                let start = c.pos;
                c.skip(len)?;
                (message_type, start..c.pos)
            } else {
                // The old header: name length, name, type byte.
                let start = c.pos;
                c.skip(first as usize)?;
                let name = start..c.pos;
                (message_type(c.u8()?)?, name)
            };
            let seq_id_at = c.pos;
            let seq_id = c.i32()?;
            Ok(MessageHeader {
                protocol,
                strict,
                message_type,
                seq_id,
                name,
                seq_id_at,
                seq_id_len: 4,
                body_at: c.pos,
            })
        }
        Protocol::Compact => {
            if c.u8()? != COMPACT_PROTOCOL_ID {
                return Err(Error::BadVersion);
            }
            let version_type = c.u8()?;
            if version_type & 0x1f != COMPACT_VERSION {
                return Err(Error::BadVersion);
            }
            let message_type = message_type((version_type >> 5) & 0x07)?;
            let seq_id_at = c.pos;
            // Written as the unsigned 32-bit pattern of the signed id.
            let seq_id = c.varint32()? as i32;
            let seq_id_len = c.pos - seq_id_at;
            let len = c.size("message name")?;
            let start = c.pos;
            c.skip(len)?;
            Ok(MessageHeader {
                protocol,
                strict: true,
                message_type,
                seq_id,
                name: start..c.pos,
                seq_id_at,
                seq_id_len,
                body_at: c.pos,
            })
        }
    }
}

fn message_type(code: u8) -> Result<MessageType, Error> {
    MessageType::from_code(code).ok_or(Error::BadMessageType(code))
}

/// The fields of a `TApplicationException`, as read by [`read_exception`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplicationException<'a> {
    /// Field 1, `message` (empty when absent).
    pub message: &'a [u8],
    /// Field 2, `type` (0, UNKNOWN, when absent).
    pub kind: i32,
}

/// Reads the `TApplicationException` struct at `body_at` in the complete message `msg`;
/// other fields are skipped.
pub fn read_exception(
    protocol: Protocol,
    msg: &[u8],
    body_at: usize,
) -> Result<ApplicationException<'_>, Error> {
    let mut c = Cursor::new(msg, body_at);
    let mut out = ApplicationException::default();
    let mut last_fid = 0i16;
    loop {
        let b = c.u8()?;
        let (code, id) = match protocol {
            Protocol::Binary if b == 0 => return Ok(out),
            Protocol::Binary => (b, i16::from_be_bytes(c.array()?)),
            Protocol::Compact if b & 0x0f == 0 => return Ok(out),
            Protocol::Compact => {
                let id = match b >> 4 {
                    0 => {
                        let z = c.varint(3)?;
                        ((z >> 1) as i16) ^ -((z & 1) as i16)
                    }
                    delta => last_fid.wrapping_add(i16::from(delta)),
                };
                last_fid = id;
                (b & 0x0f, id)
            }
        };
        let ty = match protocol {
            Protocol::Binary => TType::from_binary(code),
            Protocol::Compact if code <= 2 => continue, // a bool field: its value is the type
            Protocol::Compact => TType::from_compact(code),
        }
        .ok_or(Error::BadType(code))?;
        match (id, ty, protocol) {
            (1, TType::Binary, Protocol::Binary) => {
                let len = c.binary_size("string")?;
                out.message = c.take(len)?;
            }
            (1, TType::Binary, Protocol::Compact) => {
                let len = c.size("string")?;
                out.message = c.take(len)?;
            }
            (2, TType::I32, Protocol::Binary) => out.kind = c.i32()?,
            (2, TType::I32, Protocol::Compact) => {
                let z = c.varint32()?;
                out.kind = ((z >> 1) as i32) ^ -((z & 1) as i32);
            }
            _ => c.pos = Walker::new(protocol, ty, c.pos).walk(msg)?,
        }
    }
}
