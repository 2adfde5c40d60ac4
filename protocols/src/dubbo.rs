//! Dubbo2 over TCP: the 16-byte header, hessian2 request and response bodies, events.
//!
//! Metadata of a request: `interface` (the service path), `method`, `version` (the service
//! version), and every attachment under its own name (`group` is the `group` attachment).
//! Metadata of a response: its attachments (response flags 3 to 5). Arguments and return
//! values are walked without being decoded. A frame whose serialization is not hessian2
//! is routed on its header alone (no attributes) and passed through unchanged.
//!
//! Changing metadata rewrites only the attachment map; `interface`, `method` and
//! `version` live in the body and are not rewritten.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use metamesh_codecs::hessian2::{self, Decoder, Encoder, Error as HessianError, MapStart, Value};
use metamesh_core::{
    Codec, CodecOptions, DecodeError, EncodeError, EncodedFrame, ErrorAction, KnownText,
    LocalReply, LocalReplyKind, Message, MessageKind, Metadata, Protocol, Scratch,
};

/// Magic bytes at the start of every frame.
pub const MAGIC: [u8; 2] = [0xda, 0xbb];
/// Header length.
pub const HEADER_LEN: usize = 16;
/// Flag bit: the frame is a request.
pub const FLAG_REQUEST: u8 = 0x80;
/// Flag bit: the request expects a response.
pub const FLAG_TWO_WAY: u8 = 0x40;
/// Flag bit: the frame is an event (heartbeat, read-only notice).
pub const FLAG_EVENT: u8 = 0x20;
/// Mask of the serialization id in the flag byte.
pub const SERIALIZATION_MASK: u8 = 0x1f;
/// Serialization id of hessian2.
pub const HESSIAN2: u8 = 2;

/// Response status codes.
pub mod status {
    /// Success.
    pub const OK: u8 = 20;
    /// The client timed out.
    pub const CLIENT_TIMEOUT: u8 = 30;
    /// The server timed out.
    pub const SERVER_TIMEOUT: u8 = 31;
    /// The request could not be decoded.
    pub const BAD_REQUEST: u8 = 40;
    /// The response could not be decoded.
    pub const BAD_RESPONSE: u8 = 50;
    /// No such service.
    pub const SERVICE_NOT_FOUND: u8 = 60;
    /// The service failed.
    pub const SERVICE_ERROR: u8 = 70;
    /// The server failed.
    pub const SERVER_ERROR: u8 = 80;
    /// The client failed.
    pub const CLIENT_ERROR: u8 = 90;
    /// The server has no thread to run the request.
    pub const SERVER_THREADPOOL_EXHAUSTED: u8 = 100;
}

/// Response body flags.
pub mod response_flag {
    /// An exception.
    pub const EXCEPTION: i32 = 0;
    /// A value.
    pub const VALUE: i32 = 1;
    /// A null value.
    pub const NULL_VALUE: i32 = 2;
    /// An exception, then attachments.
    pub const EXCEPTION_WITH_ATTACHMENTS: i32 = 3;
    /// A value, then attachments.
    pub const VALUE_WITH_ATTACHMENTS: i32 = 4;
    /// Attachments only.
    pub const NULL_VALUE_WITH_ATTACHMENTS: i32 = 5;
}

// Positions in `Message::layout`.
const ATTACH_START: usize = 0; // offset of the attachment map in the frame; 0 = none
const ATTACH_END: usize = 1; // offset just past it
const BITS: usize = 2; // the bit flags below
const FLAG_END: usize = 3; // responses: offset just past the response-flag int

const BIT_CLIENT_TAKES_RESPONSE_ATTACHMENTS: u32 = 1;
const BIT_RESPONSE_ATTACHMENTS_ALLOWED: u32 = 2;
// Body fields that also appeared as attachments; their attachment copies are kept.
const BIT_ATTACHED_INTERFACE: u32 = 1 << 8;
const BIT_ATTACHED_METHOD: u32 = 1 << 9;
const BIT_ATTACHED_VERSION: u32 = 1 << 10;

/// Maximum nesting of hessian values inside a frame.
const MAX_DEPTH: usize = 64;

/// The Dubbo2 protocol, registered as `dubbo`.
#[derive(Debug, Default, Clone)]
pub struct DubboProtocol;

impl DubboProtocol {
    /// A shareable instance.
    pub fn shared() -> Arc<dyn Protocol> {
        Arc::new(DubboProtocol)
    }
}

/// The header fields of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The flag byte.
    pub flags: u8,
    /// Status (responses).
    pub status: u8,
    /// Request id.
    pub request_id: i64,
    /// Body length.
    pub body_len: u32,
}

impl Header {
    /// Parses the first 16 bytes; `None` when the magic is wrong.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Self> {
        if b[..2] != MAGIC {
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[4..12]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[12..16]);
        Some(Self {
            flags: b[2],
            status: b[3],
            request_id: i64::from_be_bytes(id),
            body_len: u32::from_be_bytes(len),
        })
    }

    /// Writes the header.
    pub fn write(&self, out: &mut BytesMut) {
        out.extend_from_slice(&MAGIC);
        out.put_u8(self.flags);
        out.put_u8(self.status);
        out.put_i64(self.request_id);
        out.put_u32(self.body_len);
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    /// True for events.
    pub fn is_event(&self) -> bool {
        self.flags & FLAG_EVENT != 0
    }

    /// True for two-way requests.
    pub fn is_two_way(&self) -> bool {
        self.flags & FLAG_TWO_WAY != 0
    }

    /// The serialization id.
    pub fn serialization(&self) -> u8 {
        self.flags & SERIALIZATION_MASK
    }
}

/// Counts the parameters in a JVM method descriptor such as `Ljava/lang/String;I[J`.
pub fn count_parameters(descriptor: impl AsRef<[u8]>) -> Option<usize> {
    let b = descriptor.as_ref();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        while i < b.len() && b[i] == b'[' {
            i += 1;
        }
        match b.get(i)? {
            b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S' | b'V' => i += 1,
            b'L' => i += b[i..].iter().position(|c| *c == b';')? + 1,
            _ => return None,
        }
        n += 1;
    }
    Some(n)
}

/// The numeric form of a Dubbo version string, as Dubbo compares them ("2.0.2" is 2000200):
/// up to four dot-separated parts, each read from its leading digits (capped at 99).
/// One pass over the bytes: every request carries the version.
fn int_version(b: &[u8]) -> Option<u32> {
    let (mut out, mut parts, mut i) = (0u32, 0, 0);
    loop {
        let (mut n, start) = (0u32, i);
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
            i += 1;
        }
        if i == start {
            return None;
        }
        out = out.checked_mul(100)?.checked_add(n.min(99))?;
        parts += 1;
        match b[i..].iter().position(|&c| c == b'.') {
            Some(dot) if parts < 4 => i += dot + 1,
            _ => break,
        }
    }
    while parts < 4 {
        out = out.checked_mul(100)?;
        parts += 1;
    }
    Some(out)
}

/// True when a client of this Dubbo version understands response flags 3 to 5.
pub fn supports_response_attachments(dubbo_version: impl AsRef<[u8]>) -> bool {
    let v = dubbo_version.as_ref();
    // What nearly every client sends, known without parsing.
    if v == b"2.0.2" {
        return true;
    }
    int_version(v).is_some_and(|v| (2_000_200..=2_009_900).contains(&v))
}

struct DubboCodec {
    max_frame_size: usize,
    /// Where new headers and attachment maps are written.
    scratch: Scratch,
}

fn hessian_err(e: HessianError) -> String {
    e.to_string()
}

/// Text form of an attachment value for metadata (empty for null and containers).
fn display(v: &Value) -> String {
    v.to_display_string()
        .map(Cow::into_owned)
        .unwrap_or_default()
}

/// Reads a string as UTF-8 bytes: one chunk of ASCII (nearly all) is its bytes in the
/// frame, which the metadata keeps as a position in it; any other is decoded.
fn read_utf8<'b>(d: &mut Decoder<'b>) -> Result<Cow<'b, [u8]>, HessianError> {
    if let Some(bytes) = d.read_ascii() {
        return Ok(Cow::Borrowed(bytes));
    }
    Ok(match d.read_str()? {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    })
}

/// Reads one attachment value as UTF-8 bytes: a string as [`read_utf8`] reads it, any
/// other value as its text.
fn read_attachment_value<'b>(d: &mut Decoder<'b>) -> Result<Cow<'b, [u8]>, HessianError> {
    match d.peek_tag() {
        Some(0x00..=0x1f | 0x30..=0x33 | b'S' | b'R') => read_utf8(d),
        _ => Ok(Cow::Owned(display(&d.read_value()?).into_bytes())),
    }
}

/// A bit of a 64-bit set that an attachment key, compared as metadata compares keys
/// (ASCII case folded), always falls on: its length and its first and last bytes.
const fn key_bit(key: &[u8]) -> u64 {
    let (first, last) = match key {
        [] => (0, 0),
        [f, .., l] => (f.to_ascii_lowercase(), l.to_ascii_lowercase()),
        [f] => (f.to_ascii_lowercase(), f.to_ascii_lowercase()),
    };
    let h = (key.len() as u64)
        .wrapping_mul(31)
        .wrapping_add(first as u64 * 7)
        .wrapping_add(last as u64);
    1 << (h & 63)
}

/// The keys a request's metadata has before its attachments are read.
const BODY_KEYS: [&[u8]; 3] = [b"interface", b"method", b"version"];
/// The same keys, found in the table of well-known texts at compile time.
const BODY_KEYS_KNOWN: [KnownText; 3] = [
    KnownText::of("interface"),
    KnownText::of("method"),
    KnownText::of("version"),
];
/// Their [`key_bit`]s.
const BODY_KEY_BITS: u64 = key_bit(BODY_KEYS[0]) | key_bit(BODY_KEYS[1]) | key_bit(BODY_KEYS[2]);

/// Reads an attachment map into `metadata`; returns the bits of body fields it repeated.
/// A request's map (`skip_body_keys`) is read after the body fields ([`BODY_KEYS`]) went
/// into `metadata`; a response's into an empty one.
fn read_attachments(
    d: &mut Decoder<'_>,
    metadata: &mut Metadata,
    skip_body_keys: bool,
) -> Result<u32, HessianError> {
    let mut bits = 0;
    if matches!(d.read_map_start()?, MapStart::Null) {
        return Ok(0);
    }
    // The keys present so far, as bits: a key whose bit is clear repeats none of them and
    // is appended without searching the map. (A bit set for a key that is not there only
    // costs a search.)
    let mut seen = if skip_body_keys { BODY_KEY_BITS } else { 0 };
    while !d.at_end_marker()? {
        let key = read_utf8(d)?;
        let value = read_attachment_value(d)?;
        if skip_body_keys {
            let bit = match &*key {
                b"interface" => BIT_ATTACHED_INTERFACE,
                b"method" => BIT_ATTACHED_METHOD,
                b"version" => BIT_ATTACHED_VERSION,
                _ => 0,
            };
            if bit != 0 {
                bits |= bit;
                continue;
            }
        }
        let bit = key_bit(&key);
        if seen & bit == 0 {
            seen |= bit;
            metadata.push_decoded_bytes(&key, &value);
        } else {
            // A repeated key overrides the earlier one, as it does in the provider's map.
            metadata.insert_decoded_bytes(&key, &value);
        }
    }
    Ok(bits)
}

impl DubboCodec {
    /// Reads the request `msg` (made around its frame by `decode`, which returns it: a
    /// message is filled where it is, not moved from call to call).
    fn decode_request(&self, h: &Header, msg: &mut Message) -> Result<(), String> {
        msg.kind = if h.is_event() {
            MessageKind::Heartbeat
        } else if h.is_two_way() {
            MessageKind::Request
        } else {
            MessageKind::OnewayRequest
        };
        if h.is_event() {
            // Heartbeats carry a null body; any other event payload is an "other event".
            if msg.frame.get(HEADER_LEN..) != Some(b"N") && msg.frame.len() > HEADER_LEN {
                msg.kind = MessageKind::Event;
            }
            return Ok(());
        }
        if h.serialization() != HESSIAN2 {
            return Ok(());
        }
        // The body is read from the frame while the entries go into the metadata.
        let Message {
            frame,
            metadata,
            layout,
            ..
        } = msg;
        let mut d = Decoder::new(&frame[HEADER_LEN..]).with_max_depth(MAX_DEPTH);
        let dubbo_version = read_utf8(&mut d).map_err(hessian_err)?;
        let supports = supports_response_attachments(&dubbo_version);
        let path = read_utf8(&mut d).map_err(hessian_err)?;
        let version = match d.peek_tag() {
            Some(b'N') => {
                d.skip_value().map_err(hessian_err)?;
                Cow::Borrowed(&b""[..])
            }
            _ => read_utf8(&mut d).map_err(hessian_err)?,
        };
        let method = read_utf8(&mut d).map_err(hessian_err)?;
        let descriptor = read_utf8(&mut d).map_err(hessian_err)?;
        let n = count_parameters(&descriptor).ok_or_else(|| {
            format!(
                "invalid parameter descriptor {:?}",
                String::from_utf8_lossy(&descriptor)
            )
        })?;
        // All UTF-8 (ASCII, or decoded), so every entry is added.
        let [interface, method_key, version_key] = BODY_KEYS_KNOWN;
        metadata.push_decoded_known(interface, &path);
        metadata.push_decoded_known(method_key, &method);
        metadata.push_decoded_known(version_key, &version);
        for i in 0..n {
            d.skip_value()
                .map_err(|e| format!("argument {i}: {}", hessian_err(e)))?;
        }
        let mut bits = if supports {
            BIT_CLIENT_TAKES_RESPONSE_ATTACHMENTS
        } else {
            0
        };
        if !d.is_empty() {
            let start = HEADER_LEN + d.position();
            bits |= read_attachments(&mut d, metadata, true)
                .map_err(|e| format!("attachments: {}", hessian_err(e)))?;
            layout[ATTACH_START] = start as u32;
            layout[ATTACH_END] = (HEADER_LEN + d.position()) as u32;
        }
        layout[BITS] = bits;
        Ok(())
    }

    /// Reads the response `msg`, as [`DubboCodec::decode_request`] reads a request.
    fn decode_response(&self, h: &Header, msg: &mut Message) -> Result<(), String> {
        msg.kind = if h.is_event() {
            MessageKind::Heartbeat
        } else if h.status == status::OK {
            MessageKind::Response
        } else {
            MessageKind::Error
        };
        msg.status = Some(u32::from(h.status));
        if h.is_event() || h.status != status::OK || h.serialization() != HESSIAN2 {
            return Ok(());
        }
        let Message {
            frame,
            metadata,
            layout,
            ..
        } = msg;
        let mut d = Decoder::new(&frame[HEADER_LEN..]).with_max_depth(MAX_DEPTH);
        let flag = d.read_i32().map_err(|e| format!("response flag: {e}"))?;
        layout[FLAG_END] = (HEADER_LEN + d.position()) as u32;
        match flag {
            response_flag::EXCEPTION | response_flag::VALUE => {
                d.skip_value().map_err(|e| format!("response value: {e}"))?
            }
            response_flag::NULL_VALUE => {}
            response_flag::EXCEPTION_WITH_ATTACHMENTS
            | response_flag::VALUE_WITH_ATTACHMENTS
            | response_flag::NULL_VALUE_WITH_ATTACHMENTS => {
                if flag != response_flag::NULL_VALUE_WITH_ATTACHMENTS {
                    d.skip_value().map_err(|e| format!("response value: {e}"))?;
                }
                let start = HEADER_LEN + d.position();
                read_attachments(&mut d, metadata, false)
                    .map_err(|e| format!("response attachments: {e}"))?;
                layout[ATTACH_START] = start as u32;
                layout[ATTACH_END] = (HEADER_LEN + d.position()) as u32;
            }
            other => return Err(format!("unknown response flag {other}")),
        }
        Ok(())
    }
}

impl Codec for DubboCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if buf.len() < HEADER_LEN {
            if buf.len() >= 2 && buf[..2] != MAGIC || buf.len() == 1 && buf[0] != MAGIC[0] {
                return Err(DecodeError::close("bad_magic", "not a Dubbo frame"));
            }
            return Ok(None);
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&buf[..HEADER_LEN]);
        let Some(h) = Header::parse(&head) else {
            return Err(DecodeError::close(
                "bad_magic",
                format!("bad magic {:02x}{:02x}", head[0], head[1]),
            ));
        };
        let total = HEADER_LEN as u64 + u64::from(h.body_len);
        if h.body_len > i32::MAX as u32 || total > self.max_frame_size as u64 {
            let detail = format!(
                "frame of {total} bytes is over the limit of {} bytes",
                self.max_frame_size
            );
            let action = if h.is_request() && h.is_two_way() && !h.is_event() {
                ErrorAction::ReplyAndClose(Box::new(error_response(
                    &h,
                    status::BAD_REQUEST,
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
        let mut msg = Message::new(MessageKind::Request, h.request_id as u64, frame);
        if h.is_request() {
            match self.decode_request(&h, &mut msg) {
                Ok(()) => Ok(Some(msg)),
                Err(detail) => {
                    let action = if h.is_two_way() {
                        ErrorAction::Reply(Box::new(error_response(
                            &h,
                            status::BAD_REQUEST,
                            &format!("malformed request: {detail}"),
                        )))
                    } else {
                        ErrorAction::Drop
                    };
                    Err(DecodeError {
                        reason: "malformed_body",
                        detail,
                        action,
                    })
                }
            }
        } else {
            match self.decode_response(&h, &mut msg) {
                Ok(()) => Ok(Some(msg)),
                Err(detail) => Err(DecodeError::close("malformed_body", detail)),
            }
        }
    }

    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError> {
        let frame = &msg.frame;
        if frame.len() < HEADER_LEN {
            return Err(EncodeError {
                what: "dubbo frame",
                detail: "shorter than a header".into(),
            });
        }
        let rewrite = msg.metadata.is_dirty() && can_rewrite(msg);
        if !rewrite {
            if request_id == msg.request_id {
                out.push(frame.clone());
            } else {
                let head = self.scratch.write(HEADER_LEN, |b| {
                    b.extend_from_slice(&frame[..4]);
                    b.put_i64(request_id as i64);
                    b.extend_from_slice(&frame[12..HEADER_LEN]);
                });
                out.push(head);
                out.push(frame.slice(HEADER_LEN..));
            }
            return Ok(());
        }
        if can_append(msg) {
            // Only new attachments: the original body stays, up to the map's end marker.
            let appended = self.scratch.write(128, |b| append_attachments(msg, b));
            let end = msg.layout[ATTACH_END] as usize - 1;
            let head = self.scratch.write(HEADER_LEN, |b| {
                Header {
                    flags: frame[2],
                    status: frame[3],
                    request_id: request_id as i64,
                    body_len: (end - HEADER_LEN + appended.len()) as u32,
                }
                .write(b)
            });
            out.push(head);
            out.push(frame.slice(HEADER_LEN..end));
            out.push(appended);
            return Ok(());
        }
        let (prefix, flag_patch) = rewrite_split(msg);
        let mut encoded = Ok(());
        let attachments = self.scratch.write(attachments_room(msg), |b| {
            encoded = encode_attachments(msg, b)
        });
        encoded.map_err(|e| EncodeError {
            what: "dubbo attachments",
            detail: e,
        })?;
        let flag_len = flag_patch.map_or(0, hessian2::i32_len);
        let head = self.scratch.write(HEADER_LEN + flag_len, |b| {
            Header {
                flags: frame[2],
                status: frame[3],
                request_id: request_id as i64,
                body_len: (flag_len + prefix.len() + attachments.len()) as u32,
            }
            .write(b);
            if let Some(flag) = flag_patch {
                Encoder::with_buffer(b).write_i32(flag);
            }
        });
        out.push(head);
        out.push(prefix);
        out.push(attachments);
        Ok(())
    }
}

/// True when a dirty message's attachments can be written back.
fn can_rewrite(msg: &Message) -> bool {
    let frame = &msg.frame;
    if frame[2] & SERIALIZATION_MASK != HESSIAN2 || frame[2] & FLAG_EVENT != 0 {
        return false;
    }
    match msg.kind {
        MessageKind::Request | MessageKind::OnewayRequest => msg.layout[ATTACH_START] != 0,
        MessageKind::Response => {
            msg.layout[ATTACH_START] != 0
                || (msg.layout[BITS] & BIT_RESPONSE_ATTACHMENTS_ALLOWED != 0
                    && msg.layout[FLAG_END] != 0)
        }
        _ => false,
    }
}

/// The body bytes kept before the new attachment map, and a replacement response flag
/// when a response gains attachments.
fn rewrite_split(msg: &Message) -> (Bytes, Option<i32>) {
    let frame = &msg.frame;
    if msg.layout[ATTACH_START] != 0 {
        return (
            frame.slice(HEADER_LEN..msg.layout[ATTACH_START] as usize),
            None,
        );
    }
    // A response without attachments: flags 0..2 become 3..5 and the map is appended.
    let flag_end = msg.layout[FLAG_END] as usize;
    let old = Decoder::new(&frame[HEADER_LEN..flag_end])
        .read_i32()
        .unwrap_or(1);
    // Some servers write a stray null after NULL_VALUE; with attachments the map must
    // follow the flag directly, so it is dropped (readers ignore it either way).
    let kept = if old == response_flag::NULL_VALUE {
        frame.slice(frame.len()..)
    } else {
        frame.slice(flag_end..)
    };
    (kept, Some(old + 3))
}

/// True when the only change to `msg.metadata` is new keys and the message has an
/// attachment map that they can extend.
fn can_append(msg: &Message) -> bool {
    let (start, end) = (
        msg.layout[ATTACH_START] as usize,
        msg.layout[ATTACH_END] as usize,
    );
    let frame = &msg.frame;
    msg.metadata.appended().is_some()
        && start != 0
        && end > start + 1
        && end <= frame.len()
        && matches!(frame[start], b'H' | b'M')
        && frame[end - 1] == b'Z'
}

/// Writes to `out` the bytes that extend the attachment map of a message that
/// [`can_append`]: the new entries and the map's end marker (which replaces the original
/// one).
fn append_attachments(msg: &Message, out: &mut BytesMut) {
    let is_request = msg.kind.is_request();
    for (k, v) in msg.metadata.appended().into_iter().flatten() {
        let body_key = k.eq_ignore_ascii_case("interface")
            || k.eq_ignore_ascii_case("method")
            || k.eq_ignore_ascii_case("version");
        if is_request && body_key {
            continue;
        }
        // Strings only: no encoder (and its tables of classes and types) is needed.
        hessian2::write_str(out, k);
        hessian2::write_str(out, v);
    }
    out.put_u8(b'Z');
}

/// Room for the attachment map [`encode_attachments`] writes: the original map and every
/// entry as a new string (a short string's header is one byte, a long one's three), so
/// that the buffer does not grow.
fn attachments_room(msg: &Message) -> usize {
    let original =
        (msg.layout[ATTACH_END] as usize).saturating_sub(msg.layout[ATTACH_START] as usize);
    let entries: usize = msg
        .metadata
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    2 + original + entries
}

/// Writes to `out` the attachment map for `msg.metadata`: entries of the original map
/// keep their bytes (and hessian types) unless their value changed; removed keys are left
/// out; new keys are appended as strings.
fn encode_attachments(msg: &Message, out: &mut BytesMut) -> Result<(), String> {
    let is_request = msg.kind.is_request();
    out.put_u8(b'H');
    let mut written: smallvec::SmallVec<[&str; 16]> = smallvec::SmallVec::new();
    let body_key = |k: &str| {
        is_request
            && (k.eq_ignore_ascii_case("interface")
                || k.eq_ignore_ascii_case("method")
                || k.eq_ignore_ascii_case("version"))
    };
    if msg.layout[ATTACH_START] != 0 {
        let start = msg.layout[ATTACH_START] as usize;
        let end = msg.layout[ATTACH_END] as usize;
        // Walk the original body again so class definitions and type references made by
        // the arguments are known when the map's values are walked.
        let body = &msg.frame[HEADER_LEN..end];
        let mut d = Decoder::new(body).with_max_depth(MAX_DEPTH);
        while HEADER_LEN + d.position() < start {
            d.skip_value().map_err(hessian_err)?;
        }
        if !matches!(d.read_map_start().map_err(hessian_err)?, MapStart::Null) {
            while !d.at_end_marker().map_err(hessian_err)? {
                let key_at = d.position();
                let key = d.read_str().map_err(hessian_err)?;
                let value_at = d.position();
                let original = read_attachment_value(&mut d).map_err(hessian_err)?;
                let value_end = d.position();
                if body_key(&key) {
                    // Kept as the client sent it: the body field is what routes.
                    out.extend_from_slice(&body[key_at..value_end]);
                    continue;
                }
                match msg.metadata.get(&key) {
                    None => {}
                    Some(v) if v.as_bytes() == &*original => {
                        out.extend_from_slice(&body[key_at..value_end]);
                    }
                    Some(v) => {
                        out.extend_from_slice(&body[key_at..value_at]);
                        Encoder::with_buffer(&mut *out).write_str(v);
                    }
                }
                if let Some((k, _)) = msg
                    .metadata
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&key))
                {
                    written.push(k);
                }
            }
        }
    }
    let mut e = Encoder::with_buffer(&mut *out);
    for (k, v) in msg.metadata.iter() {
        if body_key(k) || written.iter().any(|w| w.eq_ignore_ascii_case(k)) {
            continue;
        }
        e.write_str(k);
        e.write_str(v);
    }
    out.put_u8(b'Z');
    Ok(())
}

/// A response with `status` and `message` as its hessian string body.
fn error_response(h: &Header, status: u8, message: &str) -> Message {
    let mut e = Encoder::new();
    e.write_str(message);
    let body = e.into_inner();
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    Header {
        flags: HESSIAN2,
        status,
        request_id: h.request_id,
        body_len: body.len() as u32,
    }
    .write(&mut out);
    out.extend_from_slice(&body);
    let mut msg = Message::new(MessageKind::Error, h.request_id as u64, out.freeze());
    msg.status = Some(u32::from(status));
    msg
}

fn header_of(msg: &Message) -> Header {
    let mut head = [0u8; HEADER_LEN];
    if let Some(b) = msg.frame.get(..HEADER_LEN) {
        head.copy_from_slice(b);
    }
    Header::parse(&head).unwrap_or(Header {
        flags: HESSIAN2,
        status: 0,
        request_id: msg.request_id as i64,
        body_len: 0,
    })
}

/// The Dubbo status a local reply carries.
pub fn local_reply_status(kind: LocalReplyKind) -> u8 {
    match kind {
        LocalReplyKind::NoRoute => status::SERVICE_NOT_FOUND,
        LocalReplyKind::Timeout => status::SERVER_TIMEOUT,
        LocalReplyKind::BadRequest => status::BAD_REQUEST,
        LocalReplyKind::RateLimited | LocalReplyKind::Overloaded => {
            status::SERVER_THREADPOOL_EXHAUSTED
        }
        LocalReplyKind::Rejected => status::SERVICE_ERROR,
        LocalReplyKind::NoHealthyUpstream
        | LocalReplyKind::UpstreamConnectFailure
        | LocalReplyKind::UpstreamReset
        | LocalReplyKind::HookError
        | LocalReplyKind::Internal => status::SERVER_ERROR,
    }
}

impl Protocol for DubboProtocol {
    fn name(&self) -> &str {
        "dubbo"
    }

    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
        Box::new(DubboCodec {
            max_frame_size: options.max_frame_size,
            scratch: Scratch::default(),
        })
    }

    fn multiplexing(&self) -> bool {
        true
    }

    fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message {
        let h = header_of(request);
        error_response(&h, local_reply_status(reply.kind), reply.message)
    }

    fn heartbeat_reply(&self, heartbeat: &Message) -> Option<Message> {
        let h = header_of(heartbeat);
        if !h.is_request() || !h.is_two_way() || heartbeat.kind != MessageKind::Heartbeat {
            return None;
        }
        let mut out = BytesMut::with_capacity(HEADER_LEN + 1);
        Header {
            flags: FLAG_EVENT | h.serialization(),
            status: status::OK,
            request_id: h.request_id,
            body_len: 1,
        }
        .write(&mut out);
        out.put_u8(b'N');
        let mut msg = Message::new(MessageKind::Heartbeat, heartbeat.request_id, out.freeze());
        msg.status = Some(u32::from(status::OK));
        Some(msg)
    }

    fn heartbeat_request(&self) -> Option<Message> {
        let mut msg = Message::new(MessageKind::Heartbeat, 0, build::heartbeat(0));
        msg.status = Some(0);
        Some(msg)
    }

    fn finish_response(&self, request: &Message, response: &mut Message) {
        if request.layout[BITS] & BIT_CLIENT_TAKES_RESPONSE_ATTACHMENTS != 0 {
            response.layout[BITS] |= BIT_RESPONSE_ATTACHMENTS_ALLOWED;
        }
    }
}

/// Builders for Dubbo frames, for clients, servers and tests written against this crate.
pub mod build {
    use super::*;

    /// A request to encode.
    #[derive(Clone, Debug)]
    pub struct Request<'a> {
        /// Dubbo protocol version string, e.g. `2.0.2`.
        pub dubbo_version: &'a str,
        /// Service path.
        pub interface: &'a str,
        /// Service version.
        pub version: &'a str,
        /// Method name.
        pub method: &'a str,
        /// Arguments with their JVM type descriptors.
        pub args: &'a [(&'a str, Value)],
        /// Attachments.
        pub attachments: &'a [(&'a str, &'a str)],
        /// Two-way (expects a response).
        pub two_way: bool,
    }

    impl Request<'_> {
        /// Encodes the request with `id`.
        pub fn encode(&self, id: i64) -> Bytes {
            let mut e = Encoder::new();
            e.write_str(self.dubbo_version);
            e.write_str(self.interface);
            e.write_str(self.version);
            e.write_str(self.method);
            let descriptor: String = self.args.iter().map(|(d, _)| *d).collect();
            e.write_str(&descriptor);
            for (_, v) in self.args {
                e.write_value(v);
            }
            e.write_map_start(None);
            for (k, v) in self.attachments {
                e.write_str(k);
                e.write_str(v);
            }
            e.write_map_end();
            let flags = FLAG_REQUEST | HESSIAN2 | if self.two_way { FLAG_TWO_WAY } else { 0 };
            frame(flags, 0, id, &e.into_inner())
        }
    }

    /// A successful response carrying `value` and, when given, attachments.
    pub fn response(id: i64, value: &Value, attachments: &[(&str, &str)]) -> Bytes {
        let mut e = Encoder::new();
        if attachments.is_empty() {
            e.write_i32(response_flag::VALUE);
            e.write_value(value);
        } else {
            e.write_i32(response_flag::VALUE_WITH_ATTACHMENTS);
            e.write_value(value);
            e.write_map_start(None);
            for (k, v) in attachments {
                e.write_str(k);
                e.write_str(v);
            }
            e.write_map_end();
        }
        frame(HESSIAN2, status::OK, id, &e.into_inner())
    }

    /// A heartbeat request.
    pub fn heartbeat(id: i64) -> Bytes {
        frame(
            FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2,
            0,
            id,
            b"N",
        )
    }

    /// A frame around `body`.
    pub fn frame(flags: u8, status: u8, id: i64, body: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        Header {
            flags,
            status,
            request_id: id,
            body_len: body.len() as u32,
        }
        .write(&mut out);
        out.extend_from_slice(body);
        out.freeze()
    }

    /// The value of a successful response, or the error text of a failed one.
    pub fn response_value(msg: &Message) -> Result<Value, String> {
        let body = msg.frame.get(HEADER_LEN..).unwrap_or_default();
        let mut d = Decoder::new(body);
        if msg.kind == MessageKind::Error {
            return Err(d.read_string().unwrap_or_else(|e| e.to_string()));
        }
        let flag = d.read_i32().map_err(|e| e.to_string())?;
        match flag {
            response_flag::NULL_VALUE | response_flag::NULL_VALUE_WITH_ATTACHMENTS => {
                Ok(Value::Null)
            }
            response_flag::EXCEPTION | response_flag::EXCEPTION_WITH_ATTACHMENTS => Err(format!(
                "exception: {:?}",
                d.read_value().map_err(|e| e.to_string())?
            )),
            _ => d.read_value().map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::int_version;

    /// The reading of a version string the one-pass parser must agree with: split on
    /// dots, each of the first four parts read from its leading digits.
    fn by_parts(v: &str) -> Option<u32> {
        let mut out = 0u32;
        let mut parts = 0;
        for p in v.split('.') {
            let digits = p.bytes().take_while(u8::is_ascii_digit).count();
            let n: u32 = p[..digits].parse().ok()?;
            out = out.checked_mul(100)?.checked_add(n.min(99))?;
            parts += 1;
            if parts == 4 {
                break;
            }
        }
        while parts < 4 {
            out = out.checked_mul(100)?;
            parts += 1;
        }
        Some(out)
    }

    #[test]
    fn one_pass_reads_versions_as_parts_do() {
        let cases = [
            "2.0.2",
            "2.0.1",
            "2.0.2-SNAPSHOT",
            "2.7.8",
            "3.2.0",
            "2",
            "2.",
            ".2",
            "",
            "garbage",
            "2..2",
            "1.2.3.4",
            "1.2.3.4.5",
            "1.2.3.4.x",
            "1.2.3.4.",
            "100.200.300",
            "4294967295",
            "4294967296",
            "99999999999",
            "2.0.2a.7",
            "2.0.2 ",
            " 2.0.2",
            "0.0.0",
            "2.9.99",
            "2.10.0",
            "+2.0",
            "2.-0",
            "١.٢",
        ];
        for v in cases {
            assert_eq!(int_version(v.as_bytes()), by_parts(v), "{v:?}");
        }
        assert_eq!(int_version(b"2.0.2"), Some(2_000_200));
        assert_eq!(int_version(b"1.2.3.4.5"), Some(1_020_304));
    }
}
