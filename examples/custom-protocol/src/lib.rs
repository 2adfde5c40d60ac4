//! `kv`: a small multiplexed request/response protocol added to metamesh from outside
//! core, as a user would add their own. It implements [`metamesh_core::Codec`] and
//! [`metamesh_core::Protocol`]; registering [`KvProtocol`] with a
//! [`metamesh_core::ProxyBuilder`] (or a [`ProtocolRegistry`]) lets listeners say
//! `protocol: kv`, and every routing feature of the engine then works for it.
//!
//! # Wire format
//!
//! Every frame is a 16-byte head, a block of key/value headers and an opaque body. All
//! integers are big-endian.
//!
//! ```text
//!  0      1      2      3      4             8             12            16
//!  +------+------+------+------+-------------+-------------+-------------+
//!  | 'K'  | 'V'  | ver  | kind | request id  |   length    |  hdr_len    |
//!  | 0x4b | 0x56 | 0x01 |  u8  |     u32     |     u32     |     u32     |
//!  +------+------+------+------+-------------+-------------+-------------+
//!  | header block: hdr_len bytes of entries                              |
//!  |   +-------------+-----------+---------------+-------------+         |
//!  |   | key_len u16 | key bytes | value_len u16 | value bytes | ...     |
//!  |   +-------------+-----------+---------------+-------------+         |
//!  +---------------------------------------------------------------------+
//!  | body: length - hdr_len bytes, opaque                                |
//!  +---------------------------------------------------------------------+
//! ```
//!
//! - `length` counts every byte after the 16-byte head (header block and body), so a
//!   frame is `16 + length` bytes long.
//! - `hdr_len` is the size of the header block; the body starts at `16 + hdr_len`.
//! - Header keys are non-empty UTF-8, values are UTF-8 (possibly empty). A key appears at
//!   most once per frame (compared ASCII case-insensitively).
//! - `kind` is one of [`Kind`]: 1 request, 2 oneway request, 3 response, 4 error
//!   response, 5 ping, 6 pong.
//! - A response or error carries the request id of the request it answers; a pong
//!   carries the id of its ping. Many requests may be in flight on one connection and
//!   their answers may come back in any order.
//! - An error frame names what failed in its `reason` header (for the proxy's own
//!   answers one of [`metamesh_core::LocalReplyKind::as_str`], such as `no_route`), and
//!   carries a human-readable message as its body.
//!
//! # Metadata
//!
//! The routable attributes of a kv message are exactly its headers, each under its own
//! name (`method`, `batchjob`, ... are ordinary headers). Routes match on them and
//! `request_mutation` / `response_mutation` add or replace headers.
//!
//! # Options
//!
//! `protocol_options: { max_headers: "N" }` on a listener or cluster limits how many
//! headers a frame may carry (1 to 4096, default 64); a frame with more is malformed.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use metamesh_core::{
    Codec, CodecOptions, DecodeError, EncodeError, EncodedFrame, ErrorAction, LocalReply, Message,
    MessageKind, Metadata, OptionError, Protocol, ProtocolOptions, ProtocolRegistry,
};

pub mod peer;

/// The two magic bytes every frame starts with (`KV`).
pub const MAGIC: [u8; 2] = *b"KV";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed head.
pub const HEAD_LEN: usize = 16;
/// Name of the protocol option that limits headers per frame.
pub const OPTION_MAX_HEADERS: &str = "max_headers";
/// Headers per frame when `max_headers` is not set.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Largest value `max_headers` accepts.
pub const MAX_HEADERS_LIMIT: usize = 4096;
/// The header naming what an error frame reports.
pub const REASON_HEADER: &str = "reason";

/// Longest message a local reply carries in its body; longer ones are cut.
const MAX_REPLY_MESSAGE: usize = 4096;

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A request that expects a response.
    Request = 1,
    /// A request that expects no response.
    Oneway = 2,
    /// A successful response.
    Response = 3,
    /// A failed response; its `reason` header says why, its body explains.
    Error = 4,
    /// A keep-alive probe; answered with a pong carrying the same id.
    Ping = 5,
    /// The answer to a ping.
    Pong = 6,
}

impl Kind {
    /// The kind a byte on the wire stands for.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Oneway,
            3 => Kind::Response,
            4 => Kind::Error,
            5 => Kind::Ping,
            6 => Kind::Pong,
            _ => return None,
        })
    }

    /// The engine's view of this kind.
    pub fn message_kind(self) -> MessageKind {
        match self {
            Kind::Request => MessageKind::Request,
            Kind::Oneway => MessageKind::OnewayRequest,
            Kind::Response => MessageKind::Response,
            Kind::Error => MessageKind::Error,
            Kind::Ping | Kind::Pong => MessageKind::Heartbeat,
        }
    }

    /// The wire kind of a message decoded by this crate (or built by [`frame`]).
    pub fn of(msg: &Message) -> Option<Kind> {
        msg.frame.get(3).copied().and_then(Kind::from_byte)
    }
}

/// The fields of the fixed head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    version: u8,
    kind: u8,
    id: u32,
    length: u32,
    hdr_len: u32,
}

impl Head {
    /// Reads the head at the front of `b`; `None` when `b` is shorter than a head or
    /// does not start with the magic.
    fn parse(b: &[u8]) -> Option<Head> {
        let h: &[u8; HEAD_LEN] = b.get(..HEAD_LEN)?.try_into().ok()?;
        if h[..2] != MAGIC {
            return None;
        }
        let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        Some(Head {
            version: h[2],
            kind: h[3],
            id: word(4),
            length: word(8),
            hdr_len: word(12),
        })
    }

    fn write(&self, out: &mut BytesMut) {
        out.extend_from_slice(&MAGIC);
        out.put_u8(self.version);
        out.put_u8(self.kind);
        out.put_u32(self.id);
        out.put_u32(self.length);
        out.put_u32(self.hdr_len);
    }

    /// Total frame length.
    fn frame_len(&self) -> u64 {
        HEAD_LEN as u64 + u64::from(self.length)
    }
}

fn encode_error(what: &'static str, detail: String) -> EncodeError {
    EncodeError { what, detail }
}

/// Writes a header block; fails on an empty key or a key or value longer than 65535 bytes.
fn write_headers<'a>(
    out: &mut BytesMut,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), EncodeError> {
    for (k, v) in headers {
        if k.is_empty() {
            return Err(encode_error("kv header", "a header name is empty".into()));
        }
        for s in [k, v] {
            let n = u16::try_from(s.len()).map_err(|_| {
                encode_error(
                    "kv header",
                    format!("{k:?}: {} bytes is over the limit of 65535", s.len()),
                )
            })?;
            out.put_u16(n);
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(())
}

/// Builds the head for a header block of `hdr_len` bytes and a body of `body_len`.
fn head_for(kind: u8, id: u32, hdr_len: usize, body_len: usize) -> Result<Head, EncodeError> {
    let hdr_len = u32::try_from(hdr_len)
        .map_err(|_| encode_error("kv frame", format!("{hdr_len} bytes of headers")))?;
    let length = u32::try_from(body_len)
        .ok()
        .and_then(|b| b.checked_add(hdr_len))
        .ok_or_else(|| encode_error("kv frame", format!("{body_len} bytes of body")))?;
    Ok(Head {
        version: VERSION,
        kind,
        id,
        length,
        hdr_len,
    })
}

/// Builds a complete frame.
pub fn frame(
    kind: Kind,
    id: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Bytes, EncodeError> {
    let mut block = BytesMut::new();
    write_headers(&mut block, headers.iter().copied())?;
    let head = head_for(kind as u8, id, block.len(), body.len())?;
    let mut out = BytesMut::with_capacity(HEAD_LEN + block.len() + body.len());
    head.write(&mut out);
    out.extend_from_slice(&block);
    out.extend_from_slice(body);
    Ok(out.freeze())
}

/// The body of a kv message, sharing the frame's buffer (empty for anything else).
pub fn body(msg: &Message) -> Bytes {
    match Head::parse(&msg.frame) {
        Some(h) => {
            let start = HEAD_LEN.saturating_add(h.hdr_len as usize);
            msg.frame
                .get(start..)
                .map(|b| msg.frame.slice_ref(b))
                .unwrap_or_default()
        }
        None => Bytes::new(),
    }
}

/// Why a complete frame could not be read.
struct Malformed {
    reason: &'static str,
    detail: String,
}

fn malformed(reason: &'static str, detail: impl Into<String>) -> Malformed {
    Malformed {
        reason,
        detail: detail.into(),
    }
}

/// Reads a `u16`-length-prefixed UTF-8 string of `frame` at `*at`, sharing its buffer.
fn take_str(frame: &Bytes, at: &mut usize, end: usize) -> Result<ByteString, Malformed> {
    let truncated = || malformed("malformed_headers", "a header runs past the header block");
    let len_end = at
        .checked_add(2)
        .filter(|e| *e <= end)
        .ok_or_else(truncated)?;
    let n = match frame.get(*at..len_end) {
        Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
        _ => return Err(truncated()),
    };
    let str_end = len_end
        .checked_add(n)
        .filter(|e| *e <= end)
        .ok_or_else(truncated)?;
    *at = str_end;
    ByteString::try_from(frame.slice(len_end..str_end))
        .map_err(|_| malformed("malformed_headers", "a header is not UTF-8"))
}

/// Decodes one complete frame whose head has been checked.
fn parse(frame: Bytes, head: &Head, max_headers: usize) -> Result<Message, Malformed> {
    let Some(kind) = Kind::from_byte(head.kind) else {
        return Err(malformed(
            "unknown_kind",
            format!("unknown frame kind {}", head.kind),
        ));
    };
    if head.hdr_len > head.length {
        return Err(malformed(
            "malformed_headers",
            format!(
                "header block of {} bytes in a frame of {} bytes",
                head.hdr_len, head.length
            ),
        ));
    }
    let end = HEAD_LEN + head.hdr_len as usize;
    // Strings sliced out of `frame` are kept as positions in it, not copied.
    let mut metadata = Metadata::with_source(frame.clone());
    let mut at = HEAD_LEN;
    while at < end {
        if metadata.len() == max_headers {
            return Err(malformed(
                "too_many_headers",
                format!("more than {max_headers} headers"),
            ));
        }
        let key = take_str(&frame, &mut at, end)?;
        let value = take_str(&frame, &mut at, end)?;
        if key.is_empty() {
            return Err(malformed("malformed_headers", "a header has an empty name"));
        }
        if metadata.contains(&key) {
            return Err(malformed(
                "duplicate_header",
                format!("header {:?} appears twice", &*key),
            ));
        }
        metadata.push_decoded(key, value);
    }
    let mut msg = Message::new(kind.message_kind(), u64::from(head.id), frame);
    msg.metadata = metadata;
    Ok(msg)
}

/// An error frame answering request `id`: `reason` as its header, `message` as its body.
fn error_frame(id: u32, reason: &str, message: &str) -> Bytes {
    let mut cut = message.len().min(MAX_REPLY_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let text = message.get(..cut).unwrap_or_default();
    frame(Kind::Error, id, &[(REASON_HEADER, reason)], text.as_bytes()).unwrap_or_else(|_| {
        // Unreachable with a short reason; a bare error frame still answers the request.
        let mut out = BytesMut::with_capacity(HEAD_LEN);
        Head {
            version: VERSION,
            kind: Kind::Error as u8,
            id,
            length: 0,
            hdr_len: 0,
        }
        .write(&mut out);
        out.freeze()
    })
}

/// A decoded error frame answering request `id`.
fn error_message(id: u32, reason: &str, message: &str) -> Message {
    let bytes = error_frame(id, reason, message);
    match Head::parse(&bytes).map(|h| parse(bytes.clone(), &h, usize::MAX)) {
        Some(Ok(m)) => m,
        _ => Message::new(MessageKind::Error, u64::from(id), bytes),
    }
}

/// Per-connection kv decoder and encoder.
#[derive(Debug)]
pub struct KvCodec {
    max_frame_size: usize,
    max_headers: usize,
}

impl KvCodec {
    /// A codec with the limits of `options`.
    pub fn new(options: &CodecOptions) -> Self {
        Self {
            max_frame_size: options.max_frame_size,
            max_headers: options
                .option(OPTION_MAX_HEADERS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_HEADERS),
        }
    }

    /// Checks what can be checked before a whole head has arrived, so garbage closes the
    /// connection at once instead of waiting for more bytes.
    fn check_prefix(buf: &[u8]) -> Result<(), DecodeError> {
        let magic_ok = buf.iter().zip(MAGIC).all(|(a, b)| *a == b);
        if !magic_ok {
            return Err(DecodeError::close("bad_magic", "not a kv frame"));
        }
        match buf.get(2) {
            Some(&v) if v != VERSION => Err(DecodeError::close(
                "unsupported_version",
                format!("kv version {v}, this codec speaks {VERSION}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Codec for KvCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        Self::check_prefix(buf)?;
        let Some(head) = Head::parse(buf) else {
            return Ok(None);
        };
        let total = head.frame_len();
        if total > self.max_frame_size as u64 {
            let detail = format!(
                "frame of {total} bytes is over the limit of {} bytes",
                self.max_frame_size
            );
            // The rest of the frame is never read, so the connection cannot go on; a
            // request still learns why.
            let action = if head.kind == Kind::Request as u8 {
                ErrorAction::ReplyAndClose(Box::new(error_message(
                    head.id,
                    "frame_too_large",
                    &detail,
                )))
            } else {
                ErrorAction::Close
            };
            return Err(DecodeError {
                reason: "frame_too_large",
                detail,
                action,
            });
        }
        let total = total as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(total).freeze();
        parse(frame, &head, self.max_headers)
            .map(Some)
            .map_err(|m| {
                // The bad frame is consumed, so the stream stays in sync: a request gets an
                // error answer, frames nobody waits for are dropped. A bad response closes
                // the connection, since its request would otherwise wait for nothing.
                let action = match Kind::from_byte(head.kind) {
                    Some(Kind::Request) => ErrorAction::Reply(Box::new(error_message(
                        head.id,
                        "bad_request",
                        &m.detail,
                    ))),
                    Some(Kind::Response | Kind::Error) => ErrorAction::Close,
                    Some(Kind::Oneway | Kind::Ping | Kind::Pong) | None => ErrorAction::Drop,
                };
                DecodeError {
                    reason: m.reason,
                    detail: m.detail,
                    action,
                }
            })
    }

    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError> {
        let not_kv = |detail: &str| EncodeError {
            what: "kv frame",
            detail: detail.to_owned(),
        };
        let id =
            u32::try_from(request_id).map_err(|_| not_kv("request id does not fit in 32 bits"))?;
        let head = Head::parse(&msg.frame).ok_or_else(|| not_kv("no kv head"))?;
        if head.frame_len() != msg.frame.len() as u64 || head.hdr_len > head.length {
            return Err(not_kv("lengths in the head do not match the frame"));
        }
        let body_start = HEAD_LEN + head.hdr_len as usize;

        if !msg.metadata.is_dirty() {
            if request_id == msg.request_id {
                // Unchanged: the bytes as they arrived, not copied.
                out.push(msg.frame.clone());
            } else {
                // A new id: a fresh 16-byte head, the rest shared with the original.
                let mut h = BytesMut::with_capacity(HEAD_LEN);
                Head { id, ..head }.write(&mut h);
                out.push(h.freeze());
                out.push(msg.frame.slice(HEAD_LEN..));
            }
            return Ok(());
        }

        // Changed attributes: a new head and header block; the body is shared.
        let mut block = BytesMut::with_capacity(msg.metadata.len() * 24);
        write_headers(&mut block, msg.metadata.iter())?;
        let body_len = msg.frame.len() - body_start;
        let new_head = head_for(head.kind, id, block.len(), body_len)?;
        let mut h = BytesMut::with_capacity(HEAD_LEN + block.len());
        new_head.write(&mut h);
        h.extend_from_slice(&block);
        out.push(h.freeze());
        out.push(msg.frame.slice(body_start..));
        Ok(())
    }
}

/// The kv protocol, registered as `kv`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvProtocol;

impl KvProtocol {
    /// A shareable instance, ready for [`metamesh_core::ProxyBuilder::protocol`].
    pub fn shared() -> Arc<dyn Protocol> {
        Arc::new(KvProtocol)
    }
}

impl Protocol for KvProtocol {
    fn name(&self) -> &str {
        "kv"
    }

    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
        Box::new(KvCodec::new(options))
    }

    fn multiplexing(&self) -> bool {
        true
    }

    fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message {
        // Requests decoded by this codec carry 32-bit ids.
        let id = u32::try_from(request.request_id).unwrap_or(0);
        error_message(id, reply.kind.as_str(), reply.message)
    }

    fn heartbeat_reply(&self, heartbeat: &Message) -> Option<Message> {
        if Kind::of(heartbeat) != Some(Kind::Ping) {
            return None;
        }
        let id = u32::try_from(heartbeat.request_id).ok()?;
        let pong = frame(Kind::Pong, id, &[], b"").ok()?;
        Some(Message::new(MessageKind::Heartbeat, u64::from(id), pong))
    }

    fn validate_options(&self, options: &ProtocolOptions) -> Result<(), OptionError> {
        for (key, value) in options {
            if key != OPTION_MAX_HEADERS {
                return Err(OptionError::new(
                    key.clone(),
                    format!("unknown kv option (known: {OPTION_MAX_HEADERS})"),
                ));
            }
            match value.parse::<usize>() {
                Ok(n) if (1..=MAX_HEADERS_LIMIT).contains(&n) => {}
                _ => {
                    return Err(OptionError::new(
                        key.clone(),
                        format!("must be an integer from 1 to {MAX_HEADERS_LIMIT}, got {value:?}"),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The built-in protocols of `metamesh-protocols` plus `kv`: what a proxy that ships
/// this protocol registers.
pub fn registry() -> ProtocolRegistry {
    let mut r = metamesh_protocols::builtin();
    r.register(KvProtocol::shared());
    r
}
