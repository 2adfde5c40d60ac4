//! Apache Thrift over TCP: the binary (strict and old non-strict) and compact protocols on
//! the framed, unframed (buffered) and THeader transports, told apart frame by frame from
//! their first bytes.
//!
//! Metadata of every message: `method` (without a `Service:` prefix), `service` (only
//! when the name has the multiplexed `Service:method` form), `message_type` (`call`,
//! `reply`, `exception` or `oneway`), and every THeader `INFO_KEYVALUE` header under its
//! own name (a repeated key keeps its last value). Info headers whose key or value is not
//! UTF-8, or whose key is one of the three names above, are not routable and are written
//! back unchanged; `INFO_PKEYVALUE` headers are kept as they are too.
//!
//! Encoding: an unchanged message goes out as the bytes that came in. A new request id is
//! patched into the message's seqid and, for THeader, the header's SEQ_ID; a compact seqid
//! is a varint, so only the bytes up to it are rebuilt and the frame length fixed. Changed
//! metadata rewrites the THeader info header section only. Framed and unframed messages
//! have no place for metadata on the wire: there changed metadata affects routing only,
//! and `method`, `service` and `message_type` are never written back.
//!
//! THeader payloads with transforms (zlib) cannot be read: a request gets a
//! `TApplicationException` (`INVALID_TRANSFORM`) and the connection stays open.
//!
//! Protocol options: `transport` (`auto`, `framed`, `unframed` or `header`) and `protocol`
//! (`auto`, `binary` or `compact`) limit what a listener or cluster accepts; `auto`, the
//! default, detects each frame.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use metamesh_codecs::thrift::{
    self as wire, detect_protocol, detect_transport, exception_type, frame_len, parse_header_frame,
    parse_message_header, write_exception, Exception, Framing, HeaderFrame, HeaderPrefix, InfoKind,
    MessageType, Protocol as Serialization, TType, Transport, Walker,
};
use metamesh_core::{
    Codec, CodecOptions, DecodeError, EncodeError, EncodedFrame, ErrorAction, KnownText,
    LocalReply, LocalReplyKind, Message, MessageKind, Metadata, OptionError, Protocol,
    ProtocolOptions, Scratch, Side,
};

/// The keys every decoded message has, found in the table of well-known texts when the
/// codec is compiled.
const METHOD: KnownText = KnownText::of("method");
const SERVICE: KnownText = KnownText::of("service");
const MESSAGE_TYPE: KnownText = KnownText::of("message_type");

// Positions in `Message::layout`.
const VARIANT: usize = 0; // the bits below
const PAYLOAD_AT: usize = 1; // where the Thrift message starts in the frame
const SEQ_AT: usize = 2; // where its seqid is
const SEQ_LEN: usize = 3; // how long the seqid is (4, or 1 to 5 for a compact varint)

const BIT_DECODED: u32 = 1 << 7; // the layout was written by this codec
const TRANSPORT_MASK: u32 = 0b11;
const BIT_COMPACT: u32 = 1 << 2;
const BIT_STRICT: u32 = 1 << 3;

/// Offset of SEQ_ID in a THeader frame.
const HEADER_SEQ_AT: usize = 8;
/// Offset of FLAGS in a THeader frame.
const HEADER_FLAGS_AT: usize = 6;

/// Metadata keys derived from the message itself rather than from info headers.
const DERIVED_KEYS: [&str; 3] = ["method", "service", "message_type"];

/// The Apache Thrift protocol, registered as `thrift`.
#[derive(Debug, Default, Clone)]
pub struct ThriftProtocol;

impl ThriftProtocol {
    /// A shareable instance.
    pub fn shared() -> Arc<dyn Protocol> {
        Arc::new(ThriftProtocol)
    }
}

/// What a codec accepts, from the `transport` and `protocol` options (`None`: any).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The only transport accepted.
    pub transport: Option<Transport>,
    /// The only serialization accepted.
    pub protocol: Option<Serialization>,
}

impl Settings {
    /// Reads and checks the protocol options.
    pub fn from_options(options: &ProtocolOptions) -> Result<Self, OptionError> {
        let mut s = Settings::default();
        for (key, value) in options {
            match (key.as_str(), value.as_str()) {
                ("transport", "auto") | ("protocol", "auto") => {}
                ("transport", "framed") => s.transport = Some(Transport::Framed),
                ("transport", "unframed") => s.transport = Some(Transport::Unframed),
                ("transport", "header") => s.transport = Some(Transport::Header),
                ("protocol", "binary") => s.protocol = Some(Serialization::Binary),
                ("protocol", "compact") => s.protocol = Some(Serialization::Compact),
                ("transport", v) => {
                    return Err(OptionError::new(
                        key,
                        format!("{v:?} is not auto, framed, unframed or header"),
                    ))
                }
                ("protocol", v) => {
                    return Err(OptionError::new(
                        key,
                        format!("{v:?} is not auto, binary or compact"),
                    ))
                }
                _ => {
                    return Err(OptionError::new(
                        key,
                        "unknown option (thrift takes transport and protocol)",
                    ))
                }
            }
        }
        Ok(s)
    }
}

/// Where things are in a decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    transport: Transport,
    protocol: Serialization,
    strict: bool,
    payload_at: usize,
    seq_at: usize,
    seq_len: usize,
}

impl Layout {
    fn store(&self, msg: &mut Message) {
        let transport = match self.transport {
            Transport::Framed => 0,
            Transport::Unframed => 1,
            Transport::Header => 2,
        };
        let mut bits = BIT_DECODED | transport;
        if self.protocol == Serialization::Compact {
            bits |= BIT_COMPACT;
        }
        if self.strict {
            bits |= BIT_STRICT;
        }
        msg.layout = [
            bits,
            self.payload_at as u32,
            self.seq_at as u32,
            self.seq_len as u32,
        ];
    }

    /// The layout recorded by `decode`, or found again by parsing the frame.
    fn of(msg: &Message) -> Result<Self, wire::Error> {
        let bits = msg.layout[VARIANT];
        if bits & BIT_DECODED == 0 {
            return parse_frame(&msg.frame, Settings::default()).map(|p| p.layout);
        }
        let transport = match bits & TRANSPORT_MASK {
            0 => Transport::Framed,
            1 => Transport::Unframed,
            _ => Transport::Header,
        };
        let layout = Layout {
            transport,
            protocol: if bits & BIT_COMPACT != 0 {
                Serialization::Compact
            } else {
                Serialization::Binary
            },
            strict: bits & BIT_STRICT != 0,
            payload_at: msg.layout[PAYLOAD_AT] as usize,
            seq_at: msg.layout[SEQ_AT] as usize,
            seq_len: msg.layout[SEQ_LEN] as usize,
        };
        match layout.seq_at.checked_add(layout.seq_len) {
            Some(end) if end <= msg.frame.len() && layout.seq_at >= layout.payload_at => Ok(layout),
            _ => Err(wire::Error::Truncated),
        }
    }
}

/// A frame read far enough to route it.
struct Parsed {
    layout: Layout,
    message_type: MessageType,
    seq_id: i32,
    name: std::ops::Range<usize>,
    header: Option<HeaderFrame>,
}

/// Why a complete frame could not be turned into a message.
enum FrameError {
    /// The bytes are not what they should be.
    Bad(wire::Error),
    /// A THeader payload with transforms.
    Transform(HeaderFrame),
    /// A variant the settings leave out.
    NotAllowed(&'static str),
}

impl From<wire::Error> for FrameError {
    fn from(e: wire::Error) -> Self {
        FrameError::Bad(e)
    }
}

/// Reads the transport and message headers of the complete frame `frame`.
fn parse_frame(frame: &[u8], settings: Settings) -> Result<Parsed, wire::Error> {
    let transport = match settings.transport {
        Some(t) => t,
        None => detect_transport(frame)?,
    };
    parse_frame_as(frame, transport, settings).map_err(|e| match e {
        FrameError::Bad(e) => e,
        FrameError::Transform(_) | FrameError::NotAllowed(_) => wire::Error::BadVersion,
    })
}

fn parse_frame_as(
    frame: &[u8],
    transport: Transport,
    settings: Settings,
) -> Result<Parsed, FrameError> {
    let (payload_at, header) = match transport {
        Transport::Unframed => (0, None),
        Transport::Framed => (4, None),
        Transport::Header => {
            let h = parse_header_frame(frame)?;
            if h.transforms > 0 {
                return Err(FrameError::Transform(h));
            }
            (h.payload_at, Some(h))
        }
    };
    let payload = frame.get(payload_at..).unwrap_or_default();
    let protocol = match &header {
        Some(h) => h.protocol,
        None => detect_protocol(payload).map_err(wire::Error::in_frame)?,
    };
    if settings.protocol.is_some_and(|p| p != protocol) {
        return Err(FrameError::NotAllowed("protocol"));
    }
    let m = parse_message_header(protocol, payload).map_err(wire::Error::in_frame)?;
    Ok(Parsed {
        layout: Layout {
            transport,
            protocol,
            strict: m.strict,
            payload_at,
            seq_at: payload_at + m.seq_id_at,
            seq_len: m.seq_id_len,
        },
        message_type: m.message_type,
        seq_id: m.seq_id,
        name: payload_at + m.name.start..payload_at + m.name.end,
        header,
    })
}

fn is_derived_key(k: &[u8]) -> bool {
    DERIVED_KEYS
        .iter()
        .any(|d| d.as_bytes().eq_ignore_ascii_case(k))
}

/// The message of a parsed frame, with its metadata.
fn message(frame: Bytes, p: &Parsed) -> Message {
    let kind = match p.message_type {
        MessageType::Call => MessageKind::Request,
        MessageType::Oneway => MessageKind::OnewayRequest,
        MessageType::Reply => MessageKind::Response,
        MessageType::Exception => MessageKind::Error,
    };
    let mut msg = Message::new(kind, u64::from(p.seq_id as u32), frame.clone());
    if kind.is_response() {
        msg.status = Some(u32::from(p.message_type.code()));
    }
    p.layout.store(&mut msg);
    // Keys and values are bytes of the frame: the metadata keeps them where they are.
    let md = &mut msg.metadata;
    let name = frame.get(p.name.clone()).unwrap_or_default();
    let text = |md: &mut Metadata, key: KnownText, value: &[u8]| {
        if !md.push_decoded_known(key, value) {
            md.push_decoded(key.as_str(), String::from_utf8_lossy(value));
        }
    };
    match name.iter().position(|&b| b == b':') {
        Some(i) => {
            text(md, METHOD, &name[i + 1..]);
            text(md, SERVICE, &name[..i]);
        }
        None => text(md, METHOD, name),
    }
    text(md, MESSAGE_TYPE, p.message_type.as_str().as_bytes());
    if let Some(h) = &p.header {
        for info in h.infos(&frame) {
            if info.kind != InfoKind::KeyValue || is_derived_key(info.key) {
                continue;
            }
            // A key or value that is not UTF-8 is left out.
            md.insert_decoded_bytes(info.key, info.value);
        }
    }
    msg
}

fn bad_frame(e: wire::Error) -> DecodeError {
    DecodeError::close("bad_thrift_frame", e.to_string())
}

fn too_large(len: usize, max: usize) -> DecodeError {
    DecodeError::close(
        "frame_too_large",
        format!("frame of at least {len} bytes is over the limit of {max} bytes"),
    )
}

struct ThriftCodec {
    settings: Settings,
    side: Side,
    max_frame_size: usize,
    /// An unframed message being walked as its bytes arrive.
    walking: bool,
    walker: Walker,
    /// Where patched frame heads are written.
    scratch: Scratch,
}

impl ThriftCodec {
    fn new(options: &CodecOptions) -> Self {
        Self {
            settings: Settings::from_options(&options.protocol_options).unwrap_or_default(),
            side: options.side,
            max_frame_size: options.max_frame_size,
            walking: false,
            walker: Walker::new(Serialization::Binary, TType::Struct, 0),
            scratch: Scratch::default(),
        }
    }

    /// Turns a complete frame into a message, or into the error the connection needs.
    fn finish(&self, frame: Bytes, transport: Transport) -> Result<Message, DecodeError> {
        match parse_frame_as(&frame, transport, self.settings) {
            Ok(p) => Ok(message(frame, &p)),
            Err(FrameError::Bad(e)) => Err(bad_frame(e)),
            Err(FrameError::NotAllowed(what)) => Err(DecodeError::close(
                "unsupported_protocol",
                format!("the {what} of this frame is not the configured one"),
            )),
            Err(FrameError::Transform(h)) => {
                let detail = format!(
                    "THeader transform {} is not supported",
                    h.first_transform.unwrap_or_default()
                );
                let action = match self.side {
                    Side::Downstream => match transform_reply(&h, &detail) {
                        Some(reply) => ErrorAction::Reply(Box::new(reply)),
                        None => ErrorAction::Close,
                    },
                    Side::Upstream => ErrorAction::Close,
                };
                Err(DecodeError {
                    reason: "unsupported_transform",
                    detail,
                    action,
                })
            }
        }
    }

    fn decode_unframed(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if !self.walking {
            let protocol = match detect_protocol(buf) {
                Ok(p) => p,
                Err(wire::Error::Incomplete { .. }) => return Ok(None),
                Err(e) => return Err(bad_frame(e)),
            };
            let header = match parse_message_header(protocol, buf) {
                Ok(h) => h,
                Err(wire::Error::Incomplete { needed }) if needed > self.max_frame_size => {
                    return Err(too_large(needed, self.max_frame_size))
                }
                Err(wire::Error::Incomplete { .. }) => return Ok(None),
                Err(e) => return Err(bad_frame(e)),
            };
            self.walker.reset(protocol, TType::Struct, header.body_at);
            self.walking = true;
        }
        match self.walker.walk(buf) {
            Ok(end) if end > self.max_frame_size => {
                self.walking = false;
                Err(too_large(end, self.max_frame_size))
            }
            Ok(end) => {
                self.walking = false;
                let frame = buf.split_to(end).freeze();
                self.finish(frame, Transport::Unframed).map(Some)
            }
            Err(wire::Error::Incomplete { needed }) => {
                if needed > self.max_frame_size {
                    self.walking = false;
                    return Err(too_large(needed, self.max_frame_size));
                }
                Ok(None)
            }
            Err(e) => {
                self.walking = false;
                Err(bad_frame(e))
            }
        }
    }
}

/// The `INVALID_TRANSFORM` answer to a THeader request whose payload cannot be read.
fn transform_reply(h: &HeaderFrame, detail: &str) -> Option<Message> {
    let mut out = Vec::with_capacity(64 + detail.len());
    let prefix = HeaderPrefix {
        flags: h.flags,
        seq_id: h.seq_id,
        protocol: h.protocol,
        headers: &[],
        persistent_headers: &[],
    };
    let e = Exception {
        name: "",
        seq_id: h.seq_id,
        message: detail,
        kind: exception_type::INVALID_TRANSFORM,
    };
    write_exception(&mut out, &Framing::Header(prefix), h.protocol, true, &e).ok()?;
    let frame = Bytes::from(out);
    let p = parse_frame_as(&frame, Transport::Header, Settings::default()).ok()?;
    Some(message(frame, &p))
}

impl Codec for ThriftCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if self.walking {
            return self.decode_unframed(buf);
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let transport = match self.settings.transport {
            Some(t) => t,
            None => match detect_transport(buf) {
                Ok(t) => t,
                Err(wire::Error::Incomplete { .. }) => return Ok(None),
                Err(e) => return Err(bad_frame(e)),
            },
        };
        if transport == Transport::Unframed {
            return self.decode_unframed(buf);
        }
        let total = match frame_len(buf) {
            Ok(n) => n,
            Err(wire::Error::Incomplete { .. }) => return Ok(None),
            Err(e) => return Err(bad_frame(e)),
        };
        if total > self.max_frame_size {
            return Err(too_large(total, self.max_frame_size));
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(total).freeze();
        self.finish(frame, transport).map(Some)
    }

    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError> {
        let seq_id = u32::try_from(request_id).map_err(|_| EncodeError {
            what: "thrift seqid",
            detail: format!("request id {request_id} does not fit in 32 bits"),
        })? as i32;
        let new_id = (request_id != msg.request_id).then_some(seq_id);
        let layout = Layout::of(msg).map_err(|e| EncodeError {
            what: "thrift frame",
            detail: e.to_string(),
        })?;
        let rewrite_headers = msg.metadata.is_dirty() && layout.transport == Transport::Header;
        let result = match (new_id, rewrite_headers) {
            (None, false) => {
                out.push(msg.frame.clone());
                Ok(())
            }
            (Some(id), false) => patch_seq_id(msg, &layout, id, &mut self.scratch, out),
            (new_id, true) => rewrite_info_headers(msg, &layout, new_id, out),
        };
        result.map_err(|e| EncodeError {
            what: "thrift frame",
            detail: e.to_string(),
        })
    }
}

/// Appends `seq_id` as `layout`'s serialization writes it (for `rewrite_info_headers`).
fn seq_id_bytes(layout: &Layout, seq_id: i32, out: &mut Vec<u8>) {
    let (bytes, len) = seq_id_wire(layout, seq_id);
    out.extend_from_slice(&bytes[..len]);
}

/// `seq_id` as `layout`'s serialization writes it: four bytes, or a varint of up to five.
fn seq_id_wire(layout: &Layout, seq_id: i32) -> ([u8; 10], usize) {
    match layout.protocol {
        Serialization::Binary => {
            let mut out = [0u8; 10];
            out[..4].copy_from_slice(&seq_id.to_be_bytes());
            (out, 4)
        }
        Serialization::Compact => wire::varint(u64::from(seq_id as u32)),
    }
}

/// Writes `msg` with `seq_id`: the bytes before the seqid are copied (with THeader's SEQ_ID
/// and, when a compact varint changes length, the frame length fixed) and the rest shared.
fn patch_seq_id(
    msg: &Message,
    layout: &Layout,
    seq_id: i32,
    scratch: &mut Scratch,
    out: &mut EncodedFrame,
) -> Result<(), wire::Error> {
    let frame = &msg.frame;
    let seq_end = layout.seq_at + layout.seq_len;
    let before = frame.get(..layout.seq_at).ok_or(wire::Error::Truncated)?;
    let (seq, seq_len) = seq_id_wire(layout, seq_id);
    let header_seq = layout.transport == Transport::Header;
    if header_seq && before.len() + seq_len < HEADER_SEQ_AT + 4 {
        return Err(wire::Error::Truncated);
    }
    let grown = (layout.seq_at + seq_len) as i64 - seq_end as i64;
    let new_len = if grown != 0 && layout.transport != Transport::Unframed {
        let len = frame.get(..4).ok_or(wire::Error::Truncated)?.get_i32();
        let len = i32::try_from(i64::from(len) + grown)
            .map_err(|_| wire::Error::TooLarge("thrift frame"))?;
        Some(len)
    } else {
        None
    };
    let head = scratch.write(layout.seq_at + seq_len, |head| {
        head.extend_from_slice(before);
        head.extend_from_slice(&seq[..seq_len]);
        if header_seq {
            head[HEADER_SEQ_AT..HEADER_SEQ_AT + 4].copy_from_slice(&seq_id.to_be_bytes());
        }
        if let Some(len) = new_len {
            head[..4].copy_from_slice(&len.to_be_bytes());
        }
    });
    out.push(head);
    out.push(frame.slice(seq_end..));
    Ok(())
}

/// Writes a THeader `msg` with a new info header section built from its metadata (and
/// `new_id`, if given); the payload after the seqid is shared.
fn rewrite_info_headers(
    msg: &Message,
    layout: &Layout,
    new_id: Option<i32>,
    out: &mut EncodedFrame,
) -> Result<(), wire::Error> {
    let frame = &msg.frame;
    let h = parse_header_frame(frame)?;
    let mut headers: Vec<(&[u8], &[u8])> = Vec::with_capacity(msg.metadata.len());
    let mut persistent: Vec<(&[u8], &[u8])> = Vec::new();
    for info in h.infos(frame) {
        match info.kind {
            InfoKind::PersistentKeyValue => persistent.push((info.key, info.value)),
            InfoKind::KeyValue => {
                let routable = !is_derived_key(info.key)
                    && std::str::from_utf8(info.key).is_ok()
                    && std::str::from_utf8(info.value).is_ok();
                if !routable {
                    headers.push((info.key, info.value));
                }
            }
        }
    }
    for (k, v) in msg.metadata.iter() {
        if !is_derived_key(k.as_bytes()) {
            headers.push((k.as_bytes(), v.as_bytes()));
        }
    }
    let payload_at = layout.payload_at;
    let (payload_head, rest_at) = match new_id {
        Some(id) => {
            let mut head = frame
                .get(payload_at..layout.seq_at)
                .ok_or(wire::Error::Truncated)?
                .to_vec();
            seq_id_bytes(layout, id, &mut head);
            (head, layout.seq_at + layout.seq_len)
        }
        None => (Vec::new(), payload_at),
    };
    let rest = frame.get(rest_at..).ok_or(wire::Error::Truncated)?;
    let mut prefix = Vec::with_capacity(64 + payload_head.len() + 16 * headers.len());
    HeaderPrefix {
        flags: h.flags,
        seq_id: new_id.unwrap_or(h.seq_id),
        protocol: h.protocol,
        headers: &headers,
        persistent_headers: &persistent,
    }
    .write(payload_head.len() + rest.len(), &mut prefix)?;
    prefix.extend_from_slice(&payload_head);
    out.push(Bytes::from(prefix));
    out.push(frame.slice(rest_at..));
    Ok(())
}

/// The `TApplicationException` type a local reply carries.
pub fn local_reply_type(kind: LocalReplyKind) -> i32 {
    match kind {
        LocalReplyKind::NoRoute => exception_type::UNKNOWN_METHOD,
        LocalReplyKind::BadRequest => exception_type::PROTOCOL_ERROR,
        LocalReplyKind::NoHealthyUpstream
        | LocalReplyKind::UpstreamConnectFailure
        | LocalReplyKind::UpstreamReset
        | LocalReplyKind::Timeout
        | LocalReplyKind::RateLimited
        | LocalReplyKind::Rejected
        | LocalReplyKind::Overloaded
        | LocalReplyKind::HookError
        | LocalReplyKind::Internal => exception_type::INTERNAL_ERROR,
    }
}

impl Protocol for ThriftProtocol {
    fn name(&self) -> &str {
        "thrift"
    }

    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
        Box::new(ThriftCodec::new(options))
    }

    fn multiplexing(&self) -> bool {
        true
    }

    fn validate_options(&self, options: &ProtocolOptions) -> Result<(), OptionError> {
        Settings::from_options(options).map(|_| ())
    }

    fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message {
        let frame = &request.frame;
        let seq_id = request.request_id as u32 as i32;
        let parsed = Layout::of(request)
            .ok()
            .and_then(|l| parse_frame_as(frame, l.transport, Settings::default()).ok());
        let (layout, method) = match &parsed {
            Some(p) => {
                let name = frame.get(p.name.clone()).unwrap_or_default();
                let name = String::from_utf8_lossy(name);
                let method = match name.split_once(':') {
                    Some((_, m)) => m.to_owned(),
                    None => name.into_owned(),
                };
                (p.layout, method)
            }
            None => (
                Layout {
                    transport: Transport::Framed,
                    protocol: Serialization::Binary,
                    strict: true,
                    payload_at: 4,
                    seq_at: 0,
                    seq_len: 0,
                },
                request
                    .metadata
                    .get("method")
                    .unwrap_or_default()
                    .to_owned(),
            ),
        };
        let text = match reply.kind {
            LocalReplyKind::NoRoute => format!("no route for method {method}: {}", reply.message),
            kind => format!("{}: {}", kind.as_str(), reply.message),
        };
        let flags = frame
            .get(HEADER_FLAGS_AT..HEADER_FLAGS_AT + 2)
            .map_or(0, |mut b| b.get_u16());
        let framing = match layout.transport {
            Transport::Framed => Framing::Framed,
            Transport::Unframed => Framing::Unframed,
            Transport::Header => Framing::Header(HeaderPrefix {
                flags,
                seq_id,
                protocol: layout.protocol,
                headers: &[],
                persistent_headers: &[],
            }),
        };
        let e = Exception {
            name: &method,
            seq_id,
            message: &text,
            kind: local_reply_type(reply.kind),
        };
        let mut out = Vec::with_capacity(64 + method.len() + text.len());
        let written = write_exception(&mut out, &framing, layout.protocol, layout.strict, &e);
        if written.is_err() {
            // Only a message too long for a frame gets here: send the type alone.
            out.clear();
            let short = Exception { message: "", ..e };
            let _ = write_exception(&mut out, &framing, layout.protocol, layout.strict, &short);
        }
        let frame = Bytes::from(out);
        match parse_frame_as(&frame, layout.transport, Settings::default()) {
            Ok(p) => message(frame, &p),
            Err(_) => {
                let mut m = Message::new(MessageKind::Error, request.request_id, frame);
                m.status = Some(u32::from(MessageType::Exception.code()));
                m
            }
        }
    }

    fn heartbeat_reply(&self, _heartbeat: &Message) -> Option<Message> {
        None
    }
}

/// Builders and readers of Thrift frames, for clients, servers, tests and benchmarks.
pub mod build {
    use super::*;
    use metamesh_codecs::thrift::{read_exception, Writer};

    /// A message to encode: a struct body with string fields.
    #[derive(Clone, Debug)]
    pub struct Frame<'a> {
        /// The transport.
        pub transport: Transport,
        /// The serialization.
        pub protocol: Serialization,
        /// Binary only: false writes the old non-strict message header.
        pub strict: bool,
        /// The message name (`method` or `Service:method`).
        pub name: &'a str,
        /// The message type.
        pub message_type: MessageType,
        /// THeader info headers.
        pub headers: &'a [(&'a str, &'a str)],
        /// THeader FLAGS.
        pub flags: u16,
        /// Fields of the body struct: id and string value.
        pub fields: &'a [(i16, &'a str)],
    }

    impl<'a> Frame<'a> {
        /// A CALL named `name` with no fields, framed binary.
        pub fn call(name: &'a str) -> Self {
            Self {
                transport: Transport::Framed,
                protocol: Serialization::Binary,
                strict: true,
                name,
                message_type: MessageType::Call,
                headers: &[],
                flags: 0,
                fields: &[],
            }
        }

        /// Encodes the frame with `seq_id`.
        pub fn encode(&self, seq_id: i32) -> Bytes {
            let headers: Vec<(&[u8], &[u8])> = self
                .headers
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
            let framing = match self.transport {
                Transport::Framed => Framing::Framed,
                Transport::Unframed => Framing::Unframed,
                Transport::Header => Framing::Header(HeaderPrefix {
                    flags: self.flags,
                    seq_id,
                    protocol: self.protocol,
                    headers: &headers,
                    persistent_headers: &[],
                }),
            };
            let mut out = Vec::new();
            let written = wire::write_frame(&mut out, &framing, |out| {
                let mut w = Writer::new(out, self.protocol).strict(self.strict);
                w.message_begin(self.name, self.message_type, seq_id);
                w.struct_begin();
                for (id, v) in self.fields {
                    w.field_begin(TType::Binary, *id);
                    w.string(v);
                }
                w.field_stop();
                w.struct_end();
            });
            debug_assert!(written.is_ok(), "a test frame fits");
            Bytes::from(out)
        }
    }

    /// The `TApplicationException` of an EXCEPTION message: its type and message.
    pub fn exception_of(msg: &Message) -> Result<(i32, String), String> {
        let layout = Layout::of(msg).map_err(|e| e.to_string())?;
        let payload = msg.frame.get(layout.payload_at..).unwrap_or_default();
        let h = parse_message_header(layout.protocol, payload).map_err(|e| e.to_string())?;
        if h.message_type != MessageType::Exception {
            return Err(format!("a {} message", h.message_type.as_str()));
        }
        let e = read_exception(layout.protocol, payload, h.body_at).map_err(|e| e.to_string())?;
        Ok((e.kind, String::from_utf8_lossy(e.message).into_owned()))
    }

    /// Which transport and serialization a decoded message uses.
    pub fn variant_of(msg: &Message) -> Option<(Transport, Serialization)> {
        Layout::of(msg).ok().map(|l| (l.transport, l.protocol))
    }
}
