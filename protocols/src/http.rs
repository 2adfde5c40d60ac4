//! HTTP/1.1 (and 1.0) over TCP, on the wire format of `metamesh_codecs::http1`.
//!
//! A message is decoded as its head (`frame` is exactly the head's bytes) and, when a body
//! follows (`stream: More`), as [`MessageKind::Data`] pieces made of whatever body bytes
//! have arrived, the last one `stream: End`. Chunked bodies keep their chunk framing, so
//! every body is forwarded byte for byte and never held whole.
//!
//! Metadata of a request: `:method`; `:path` (path and query, `/` for an absolute-form
//! URI without a path, the target itself for `CONNECT` and `OPTIONS *`); `:authority` (the
//! authority of an absolute-form URI or of `CONNECT`, else `Host`; absent when there is
//! neither); then every header field under its lower-case name, in wire order. Metadata of
//! a response: `:status`, then every header field. A repeated field appears once per line
//! (`get` finds the first). The request id of a request is its position on the
//! connection, from 1; a response carries the id of the request it answers.
//!
//! Changing metadata re-encodes only the head: the request line from `:method`, `:path`
//! (and `:authority` for absolute-form and `CONNECT` targets) with the original version; the
//! original status line; then the fields in metadata order (keys starting with `:` are not
//! fields). An unchanged field keeps its original bytes. When `:authority` changed, `Host`
//! follows it. `Content-Length` and `Transfer-Encoding` are never taken from metadata: the
//! original lines are kept (at the place of the first of them) so a mutation can never make
//! the head disagree with the body that follows it.
//!
//! Interim `1xx` responses other than `101` are dropped by the upstream decoder (the proxy
//! answers `Expect: 100-continue` itself, see [`Protocol::continue_reply`]). A `101` that
//! answers an upgrade request, or a `2xx` answering `CONNECT`, ends with
//! [`StreamState::Upgrade`]: after it the codec decodes nothing more and leaves the bytes in
//! the buffer to the tunnel.
//!
//! Local replies are HTTP/1.1 `text/plain` responses (status by [`local_reply_status`])
//! carrying `x-metamesh-local-reply: <reason>`, and `connection: close` when the request
//! asked to close, came from an HTTP/1.0 client without keep-alive, or still has a body on
//! its way that the client holds back for a `100 Continue`. A request head that cannot be
//! accepted is answered the same way (400; 431 over the limits; 501 for an unknown
//! transfer coding; 505 for a version other than 1.x) and the connection closes; a
//! malformed response, or a chunked body that goes wrong midway, closes the connection.
//!
//! Protocol options: `max_header_bytes` (largest head, default 64 KiB) and `max_headers`
//! (most header fields in a head, default 100).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use metamesh_codecs::http1::{
    list_elements, parse_request, parse_response, summarize, write_header, write_request_line,
    BodyFraming, ChunkedScanner, FieldSummary, FramingError, HeadError, Header, Limits,
    MethodClass, RequestLine, RequestParser, ResponseParser, Span, TargetForm, Version,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEAD_BYTES,
};
use metamesh_core::{
    Codec, CodecOptions, DecodeError, EncodeError, EncodedFrame, ErrorAction, KnownText,
    LocalReply, LocalReplyKind, Message, MessageKind, Metadata, OptionError, Protocol,
    ProtocolOptions, ResponseClass, Scratch, Side, StreamState,
};
use smallvec::SmallVec;

/// Protocol option: the largest head in bytes.
pub const OPTION_MAX_HEADER_BYTES: &str = "max_header_bytes";
/// Protocol option: the most header fields in one head.
pub const OPTION_MAX_HEADERS: &str = "max_headers";

const MAX_HEADER_BYTES_RANGE: RangeInclusive<usize> = 1024..=(1 << 20);
const MAX_HEADERS_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Requests remembered while their responses are outstanding (pipelining).
const MAX_IN_FLIGHT: usize = 64;

/// The answer sent for `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

// Positions in `Message::layout`.
const FLAGS: usize = 0; // the bits below
const HEAD_LEN: usize = 1; // length of the head at the start of `frame`

/// Bits of `layout[FLAGS]`.
mod flag {
    /// The layout was filled by this codec.
    pub const DECODED: u32 = 1;
    /// HTTP/1.1 (else 1.0).
    pub const HTTP11: u32 = 1 << 1;
    /// The connection ends after this exchange.
    pub const CLOSE: u32 = 1 << 2;
    /// A `HEAD` request.
    pub const HEAD: u32 = 1 << 3;
    /// A `CONNECT` request.
    pub const CONNECT: u32 = 1 << 4;
    /// A request asking to switch protocols.
    pub const UPGRADE: u32 = 1 << 5;
    /// A request with `Expect: 100-continue`.
    pub const EXPECT_CONTINUE: u32 = 1 << 6;
    /// A response whose body ends with the connection.
    pub const UNTIL_CLOSE: u32 = 1 << 7;
    /// A response after which the connection is a tunnel.
    pub const TUNNEL: u32 = 1 << 8;
}

/// The HTTP/1.1 protocol, registered as `http`.
#[derive(Debug, Default, Clone)]
pub struct HttpProtocol;

impl HttpProtocol {
    /// A shareable instance.
    pub fn shared() -> Arc<dyn Protocol> {
        Arc::new(HttpProtocol)
    }
}

/// A request whose response has not been seen yet.
#[derive(Clone, Copy, Debug, Default)]
struct Exchange {
    id: u64,
    method: MethodClass,
    upgrade: bool,
}

#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
}

#[derive(Debug)]
enum State {
    /// Between messages: the next bytes are a head.
    Head,
    /// Inside the body of message `id`; `then_wait` when a `CONNECT` or upgrade request
    /// must be answered before anything else is decoded.
    Body {
        id: u64,
        body: Body,
        then_wait: bool,
    },
    /// After a `CONNECT` or upgrade request, until its response was encoded.
    AwaitAnswer,
    /// The connection carries a tunnel; nothing more is decoded.
    Tunnel,
    /// After a fatal error or a body ended by the close.
    Closed,
}

struct HttpCodec {
    side: Side,
    limits: Limits,
    max_frame_size: usize,
    requests: RequestParser,
    responses: ResponseParser,
    state: State,
    in_flight: VecDeque<Exchange>,
    next_id: u64,
    keep_alive: bool,
    /// Where added header fields are written.
    scratch: Scratch,
}

fn option_in(
    options: &ProtocolOptions,
    key: &str,
    range: &RangeInclusive<usize>,
) -> Result<Option<usize>, OptionError> {
    let Some(v) = options.get(key) else {
        return Ok(None);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(OptionError::new(
            key,
            format!(
                "expected a whole number from {} to {}, got {v:?}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// The head limits set by `options` (unset or invalid ones keep their defaults).
fn limits_of(options: &CodecOptions) -> Limits {
    let o = &options.protocol_options;
    let head = option_in(o, OPTION_MAX_HEADER_BYTES, &MAX_HEADER_BYTES_RANGE)
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_MAX_HEAD_BYTES);
    let headers = option_in(o, OPTION_MAX_HEADERS, &MAX_HEADERS_RANGE)
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_MAX_HEADERS);
    Limits {
        max_head_bytes: head.min(options.max_frame_size),
        max_headers: headers,
        ..Limits::default()
    }
}

/// Adds a decoded entry whose key and value are bytes of the frame (or static): the
/// metadata keeps them where they are when they are UTF-8, and their lossy text when not.
fn push(md: &mut Metadata, key: &[u8], value: &[u8]) {
    if !md.push_decoded_bytes(key, value) {
        md.push_decoded(String::from_utf8_lossy(key), String::from_utf8_lossy(value));
    }
}

/// The name a field is kept under: its bytes in the frame when it has no upper case, else
/// its lower-case form (well-known names take no copy).
enum FieldName<'a> {
    Frame(&'a [u8]),
    Known(KnownText),
    Lower(Vec<u8>),
}

fn field_name(frame: &[u8], span: Span) -> FieldName<'_> {
    let name = span.of(frame);
    let mut lower = [0u8; 24];
    let Some(lower) = lower.get_mut(..name.len()) else {
        return if name.iter().any(u8::is_ascii_uppercase) {
            FieldName::Lower(name.to_ascii_lowercase())
        } else {
            FieldName::Frame(name)
        };
    };
    // One pass lowers a short name and tells whether it had upper case at all.
    let mut upper = false;
    for (l, &b) in lower.iter_mut().zip(name) {
        // Without a branch per byte: the case bit is set on the upper-case letters only.
        let is_upper = b.wrapping_sub(b'A') < 26;
        upper |= is_upper;
        *l = b | (u8::from(is_upper) << 5);
    }
    if !upper {
        return FieldName::Frame(name);
    }
    match KnownText::lookup(lower) {
        Some(k) => FieldName::Known(k),
        None => FieldName::Lower(lower.to_vec()),
    }
}

/// Pseudo-field names, found in the table of well-known texts at compile time.
const METHOD: KnownText = KnownText::of(":method");
const PATH: KnownText = KnownText::of(":path");
const AUTHORITY: KnownText = KnownText::of(":authority");
const STATUS: KnownText = KnownText::of(":status");

/// Adds a decoded entry under a well-known key, as [`push`] does.
fn push_known(md: &mut Metadata, key: KnownText, value: &[u8]) {
    if !md.push_decoded_known(key, value) {
        md.push_decoded(key.as_str(), String::from_utf8_lossy(value));
    }
}

/// The authority without userinfo.
fn host_part(frame: &[u8], authority: Span) -> Span {
    match authority.of(frame).iter().rposition(|&b| b == b'@') {
        Some(at) => Span::new(authority.start as usize + at + 1, authority.end as usize),
        None => authority,
    }
}

/// Where `:path` and `:authority` of a request come from.
enum Derived {
    Span(Span),
    Static(&'static str),
}

fn derived_bytes<'a>(frame: &'a [u8], d: &Derived) -> &'a [u8] {
    match d {
        Derived::Span(s) => s.of(frame),
        Derived::Static(s) => s.as_bytes(),
    }
}

fn derived_str<'a>(frame: &'a [u8], d: &Derived) -> Cow<'a, str> {
    match d {
        Derived::Span(s) => String::from_utf8_lossy(s.of(frame)),
        Derived::Static(s) => Cow::Borrowed(s),
    }
}

/// The sources of `:path` and `:authority` of a request head.
fn pseudo(frame: &[u8], line: &RequestLine, host: Option<Span>) -> (Derived, Option<Derived>) {
    match line.form {
        TargetForm::Absolute {
            authority, path, ..
        } => {
            let path = if !path.is_empty() {
                Derived::Span(path)
            } else if line.method.of(frame) == b"OPTIONS" {
                Derived::Static("*")
            } else {
                Derived::Static("/")
            };
            (path, Some(Derived::Span(host_part(frame, authority))))
        }
        TargetForm::Authority => (Derived::Span(line.target), Some(Derived::Span(line.target))),
        TargetForm::Origin | TargetForm::Asterisk => {
            (Derived::Span(line.target), host.map(Derived::Span))
        }
    }
}

fn push_fields(md: &mut Metadata, frame: &[u8], fields: &[Header]) {
    for f in fields {
        let value = f.value.of(frame);
        match field_name(frame, f.name) {
            FieldName::Frame(name) => push(md, name, value),
            FieldName::Known(name) => push_known(md, name, value),
            FieldName::Lower(name) => push(md, &name, value),
        }
    }
}

/// When the only change to `msg`'s metadata is new ordinary header fields, writes the
/// original head with them added before its empty line, and the rest of the frame as
/// it came. False (nothing written) when another change was made, or a new field bears on
/// framing, the connection or the target, so the head has to be written anew.
fn append_fields(
    msg: &Message,
    head_len: usize,
    scratch: &mut Scratch,
    out: &mut EncodedFrame,
) -> Result<bool, EncodeError> {
    let Some(added) = msg.metadata.appended() else {
        return Ok(false);
    };
    let frame = &msg.frame;
    if head_len < 4 || frame.get(head_len - 4..head_len) != Some(&b"\r\n\r\n"[..]) {
        return Ok(false);
    }
    let special = |k: &str| {
        let key = k.as_bytes();
        k.starts_with(':')
            || is_framing_field(key)
            || [
                &b"connection"[..],
                b"upgrade",
                b"expect",
                b"host",
                b"keep-alive",
                b"te",
                b"proxy-connection",
            ]
            .iter()
            .any(|n| key.eq_ignore_ascii_case(n))
    };
    if added.clone().any(|(k, _)| special(k)) {
        return Ok(false);
    }
    let size = added
        .clone()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + 2;
    let mut written = Ok(());
    let fields = scratch.write(size, |w| {
        for (k, v) in added {
            if let Err(e) = write_header(w, k.as_bytes(), v.as_bytes()) {
                written = Err(encode_error(format!("{k}: {e}")));
                return;
            }
        }
        w.extend_from_slice(b"\r\n");
    });
    written?;
    out.push(frame.slice(..head_len - 2));
    out.push(fields);
    if head_len < frame.len() {
        out.push(frame.slice(head_len..));
    }
    Ok(true)
}

fn is_framing_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The HTTP status of a local reply.
pub fn local_reply_status(kind: LocalReplyKind) -> u16 {
    match kind {
        LocalReplyKind::NoRoute => 404,
        LocalReplyKind::NoHealthyUpstream
        | LocalReplyKind::UpstreamConnectFailure
        | LocalReplyKind::UpstreamReset
        | LocalReplyKind::Overloaded => 503,
        LocalReplyKind::Timeout => 504,
        LocalReplyKind::RateLimited => 429,
        LocalReplyKind::Rejected => 403,
        LocalReplyKind::BadRequest => 400,
        LocalReplyKind::HookError | LocalReplyKind::Internal => 500,
    }
}

fn kind_of_status(code: u16) -> MessageKind {
    if (500..600).contains(&code) {
        MessageKind::Error
    } else {
        MessageKind::Response
    }
}

/// A complete `text/plain` response built by the proxy. The body (none when answering
/// `HEAD`) is part of `frame`, after the head.
fn reply(
    code: u16,
    kind: LocalReplyKind,
    message: &str,
    id: u64,
    head: bool,
    close: bool,
) -> Message {
    let reason = reason_phrase(code);
    let body_len = message.len() + 1;
    let mut w = BytesMut::with_capacity(160 + body_len);
    // Writing into a BytesMut cannot fail.
    let _ = write!(
        w,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {body_len}\r\n\
         x-metamesh-local-reply: {}\r\n",
        kind.as_str()
    );
    if close {
        w.extend_from_slice(b"connection: close\r\n");
    }
    w.extend_from_slice(b"\r\n");
    let head_len = w.len();
    if !head {
        w.extend_from_slice(message.as_bytes());
        w.extend_from_slice(b"\n");
    }
    let mut msg = Message::new(kind_of_status(code), id, w.freeze());
    msg.status = Some(u32::from(code));
    let md = &mut msg.metadata;
    md.push_decoded(
        ByteString::from_static(":status"),
        ByteString::from(code.to_string()),
    );
    md.push_decoded(
        ByteString::from_static("content-type"),
        ByteString::from_static("text/plain"),
    );
    md.push_decoded(
        ByteString::from_static("content-length"),
        ByteString::from(body_len.to_string()),
    );
    md.push_decoded(
        ByteString::from_static("x-metamesh-local-reply"),
        ByteString::from_static(kind.as_str()),
    );
    if close {
        md.push_decoded(
            ByteString::from_static("connection"),
            ByteString::from_static("close"),
        );
    }
    msg.layout[FLAGS] = flag::DECODED | flag::HTTP11 | if close { flag::CLOSE } else { 0 };
    msg.layout[HEAD_LEN] = head_len as u32;
    msg
}

/// The flags of a request: recorded when it was decoded, else read from its metadata.
fn request_flags(request: &Message) -> u32 {
    if request.layout[FLAGS] & flag::DECODED != 0 {
        return request.layout[FLAGS];
    }
    metadata_flags(&request.metadata, flag::HTTP11)
}

/// The request flags that metadata implies, for a message of `version` (a flag bit).
fn metadata_flags(md: &Metadata, version: u32) -> u32 {
    let mut f = version;
    let (mut close, mut keep_alive, mut upgrade_token, mut upgrade) = (false, false, false, false);
    for (k, v) in md.iter() {
        if k.eq_ignore_ascii_case("connection") {
            for t in list_elements(v.as_bytes()) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if k.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if k.eq_ignore_ascii_case("expect") && v.trim().eq_ignore_ascii_case("100-continue")
        {
            f |= flag::EXPECT_CONTINUE;
        }
    }
    if close || (version == 0 && !keep_alive) {
        f |= flag::CLOSE;
    }
    if upgrade && upgrade_token && version != 0 {
        f |= flag::UPGRADE;
    }
    f | md
        .get(":method")
        .map_or(0, |m| method_flag(MethodClass::of(m.as_bytes())))
}

fn method_flag(m: MethodClass) -> u32 {
    match m {
        MethodClass::Head => flag::HEAD,
        MethodClass::Connect => flag::CONNECT,
        MethodClass::Other => 0,
    }
}

fn method_of_flags(f: u32) -> MethodClass {
    if f & flag::HEAD != 0 {
        MethodClass::Head
    } else if f & flag::CONNECT != 0 {
        MethodClass::Connect
    } else {
        MethodClass::Other
    }
}

fn version_flag(v: Version) -> u32 {
    match v {
        Version::Http11 => flag::HTTP11,
        Version::Http10 => 0,
    }
}

fn encode_error(detail: impl Into<String>) -> EncodeError {
    EncodeError {
        what: "http head",
        detail: detail.into(),
    }
}

/// Limits for re-reading a head this codec already accepted.
fn relaxed() -> Limits {
    Limits {
        max_head_bytes: u32::MAX as usize,
        max_headers: usize::MAX,
        ..Limits::default()
    }
}

impl HttpCodec {
    fn new(options: &CodecOptions) -> Self {
        let limits = limits_of(options);
        Self {
            side: options.side,
            limits,
            max_frame_size: options.max_frame_size,
            requests: RequestParser::new(limits),
            responses: ResponseParser::new(limits),
            state: State::Head,
            in_flight: VecDeque::new(),
            next_id: 1,
            keep_alive: true,
            scratch: Scratch::default(),
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn push_exchange(&mut self, ex: Exchange) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(ex);
    }

    /// A downstream error: answer with `code` and close.
    fn refuse(&mut self, reason: &'static str, detail: String, code: u16) -> DecodeError {
        self.state = State::Closed;
        self.keep_alive = false;
        let id = self.take_id();
        let text = format!("{}: {detail}", reason_phrase(code));
        let msg = reply(code, LocalReplyKind::BadRequest, &text, id, false, true);
        DecodeError {
            reason,
            detail,
            action: ErrorAction::ReplyAndClose(Box::new(msg)),
        }
    }

    /// An upstream error: close.
    fn fail(&mut self, reason: &'static str, detail: String) -> DecodeError {
        self.state = State::Closed;
        self.keep_alive = false;
        DecodeError::close(reason, detail)
    }

    fn refuse_framing(&mut self, e: FramingError) -> DecodeError {
        let code = if e == FramingError::UnsupportedTransferCoding {
            501
        } else {
            400
        };
        self.refuse(e.reason(), e.to_string(), code)
    }

    fn decode_request(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if self.requests.in_first_line() && buf.starts_with(b"\r\n") {
            // RFC 9112 §2.2: empty lines before a request line are ignored.
            while buf.starts_with(b"\r\n") {
                buf.advance(2);
            }
            self.requests.reset();
        }
        let (start, head_len) = match self.requests.parse_in_place(buf) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => {
                let code = match e {
                    _ if e.is_limit() => 431,
                    HeadError::UnsupportedVersion => 505,
                    _ => 400,
                };
                return Err(self.refuse(e.reason(), e.to_string(), code));
            }
        };
        let frame = buf.split_to(head_len).freeze();
        let version = start.version;
        let fields = summarize(self.requests.headers(), &frame);
        let fields = fields.map_err(|e| self.refuse_framing(e))?;
        let framing = fields
            .request_framing(version)
            .map_err(|e| self.refuse_framing(e))?;
        if fields.host_count > 1 {
            return Err(self.refuse("duplicate_host", "several Host fields".into(), 400));
        }
        if fields.host_count == 0 && version == Version::Http11 {
            return Err(self.refuse("missing_host", "HTTP/1.1 request without Host".into(), 400));
        }
        let method = MethodClass::of(start.method.of(&frame));
        let upgrade = fields.wants_upgrade(version);
        let mut flags = flag::DECODED | version_flag(version);
        if !fields.keep_alive(version) {
            flags |= flag::CLOSE;
            self.keep_alive = false;
        }
        if upgrade {
            flags |= flag::UPGRADE;
        }
        if fields.expect_continue {
            flags |= flag::EXPECT_CONTINUE;
        }
        flags |= method_flag(method);

        let id = self.take_id();
        let (path, authority) = pseudo(&frame, &start, fields.host);
        let mut msg = Message::new(MessageKind::Request, id, frame);
        let md = &mut msg.metadata;
        push_known(md, METHOD, start.method.of(&msg.frame));
        push_known(md, PATH, derived_bytes(&msg.frame, &path));
        if let Some(a) = &authority {
            push_known(md, AUTHORITY, derived_bytes(&msg.frame, a));
        }
        push_fields(md, &msg.frame, self.requests.headers());
        msg.layout[FLAGS] = flags;
        msg.layout[HEAD_LEN] = head_len as u32;
        self.push_exchange(Exchange {
            id,
            method,
            upgrade,
        });
        let then_wait = method == MethodClass::Connect || upgrade;
        msg.stream = self.start_body(id, framing, then_wait);
        Ok(Some(msg))
    }

    /// Moves to the state after a head with `framing`; returns the head's stream state.
    fn start_body(&mut self, id: u64, framing: BodyFraming, then_wait: bool) -> StreamState {
        let body = match framing {
            BodyFraming::Length(n) => Body::Length(n),
            BodyFraming::Chunked => Body::Chunked(ChunkedScanner::new(&self.limits)),
            BodyFraming::UntilClose => Body::UntilClose,
            BodyFraming::Tunnel => {
                self.state = State::Tunnel;
                return StreamState::Upgrade;
            }
            BodyFraming::None => {
                self.state = if then_wait {
                    State::AwaitAnswer
                } else {
                    State::Head
                };
                return StreamState::End;
            }
        };
        self.state = State::Body {
            id,
            body,
            then_wait,
        };
        StreamState::More
    }

    fn decode_response(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        loop {
            let (start, head_len) = match self.responses.parse_in_place(buf) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e.reason(), e.to_string())),
            };
            let frame = buf.split_to(head_len).freeze();
            let code = start.code;
            if code < 200 && code != 101 {
                // Interim responses are dropped: the proxy sends its own 100 Continue.
                continue;
            }
            let ex = match self.in_flight.pop_front() {
                Some(ex) => ex,
                None => Exchange {
                    id: self.take_id(),
                    ..Exchange::default()
                },
            };
            let version = start.version;
            let fields = summarize(self.responses.headers(), &frame);
            let fields = fields.map_err(|e| self.fail(e.reason(), e.to_string()))?;
            let framing = fields
                .response_framing(version, code, ex.method)
                .map_err(|e| self.fail(e.reason(), e.to_string()))?;
            if code == 101 && !ex.upgrade {
                return Err(self.fail(
                    "unexpected_switching_protocols",
                    "101 answering a request that asked for no upgrade".into(),
                ));
            }
            let mut flags = flag::DECODED | version_flag(version);
            if !fields.keep_alive(version) {
                flags |= flag::CLOSE;
            }
            match framing {
                BodyFraming::UntilClose => flags |= flag::UNTIL_CLOSE | flag::CLOSE,
                BodyFraming::Tunnel => flags |= flag::TUNNEL,
                _ => {}
            }
            if flags & flag::CLOSE != 0 {
                self.keep_alive = false;
            }
            let mut msg = Message::new(kind_of_status(code), ex.id, frame);
            msg.status = Some(u32::from(code));
            push_known(&mut msg.metadata, STATUS, start.code_span.of(&msg.frame));
            push_fields(&mut msg.metadata, &msg.frame, self.responses.headers());
            msg.layout[FLAGS] = flags;
            msg.layout[HEAD_LEN] = head_len as u32;
            msg.stream = self.start_body(ex.id, framing, false);
            return Ok(Some(msg));
        }
    }

    fn decode_body(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let State::Body {
            id,
            body,
            then_wait,
        } = &mut self.state
        else {
            return Ok(None);
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let (id, then_wait) = (*id, *then_wait);
        let scanned = match body {
            Body::Length(rest) => {
                let n = (*rest).min(buf.len() as u64);
                *rest -= n;
                Ok((n as usize, *rest == 0))
            }
            Body::Chunked(scanner) => match scanner.scan(buf) {
                Ok(Some(n)) => Ok((n, true)),
                Ok(None) => Ok((buf.len(), false)),
                Err(e) => Err(e),
            },
            Body::UntilClose => Ok((buf.len(), false)),
        };
        let (n, end) = scanned.map_err(|e| self.fail(e.reason(), e.to_string()))?;
        let mut msg = Message::new(MessageKind::Data, id, buf.split_to(n).freeze());
        if end {
            self.state = if then_wait {
                State::AwaitAnswer
            } else {
                State::Head
            };
        } else {
            msg.stream = StreamState::More;
        }
        Ok(Some(msg))
    }

    /// Re-encodes the head of a message whose metadata changed; returns its flags.
    fn reencode(
        &self,
        msg: &Message,
        head_len: usize,
        out: &mut EncodedFrame,
    ) -> Result<u32, EncodeError> {
        let frame = &msg.frame;
        let head = frame.get(..head_len).unwrap_or_default();
        let mut w = BytesMut::with_capacity(head_len + 128);
        let flags = if msg.kind.is_request() {
            let h = match parse_request(head, relaxed()) {
                Ok(Some(h)) => h,
                _ => return Err(encode_error("not an HTTP request head")),
            };
            let fields = summarize(&h.headers, head).unwrap_or_default();
            let (path, authority) = pseudo(head, &h.start, fields.host);
            let md = &msg.metadata;
            let orig_method = String::from_utf8_lossy(h.start.method.of(head));
            let orig_path = derived_str(head, &path);
            let orig_authority = authority.as_ref().map(|a| derived_str(head, a));
            let method = md.get(":method").unwrap_or(&orig_method);
            let new_path = md.get(":path").filter(|p| *p != orig_path);
            let new_authority = md
                .get(":authority")
                .filter(|a| Some(*a) != orig_authority.as_deref());
            let target: Option<Cow<'_, str>> = match h.start.form {
                TargetForm::Absolute { scheme, .. }
                    if new_path.is_some() || new_authority.is_some() =>
                {
                    Some(Cow::Owned(format!(
                        "{}://{}{}",
                        String::from_utf8_lossy(scheme.of(head)),
                        new_authority
                            .or(orig_authority.as_deref())
                            .unwrap_or_default(),
                        new_path.unwrap_or(&orig_path)
                    )))
                }
                TargetForm::Authority => new_path.or(new_authority).map(Cow::Borrowed),
                _ => new_path.map(Cow::Borrowed),
            };
            if target.is_none() && method == orig_method {
                w.extend_from_slice(Span::new(0, h.start.end as usize).of(head));
            } else {
                let target = match &target {
                    Some(t) => t.as_bytes(),
                    None => h.start.target.of(head),
                };
                write_request_line(&mut w, method.as_bytes(), target, h.start.version)
                    .map_err(|e| encode_error(e.to_string()))?;
            }
            write_fields(&mut w, md, &h.headers, head, new_authority)?;
            metadata_flags(md, version_flag(h.start.version)) | flag::DECODED
        } else {
            let h = match parse_response(head, relaxed()) {
                Ok(Some(h)) => h,
                _ => return Err(encode_error("not an HTTP response head")),
            };
            w.extend_from_slice(Span::new(0, h.start.end as usize).of(head));
            write_fields(&mut w, &msg.metadata, &h.headers, head, None)?;
            let kept = msg.layout[FLAGS] & (flag::UNTIL_CLOSE | flag::TUNNEL | flag::CLOSE);
            metadata_flags(&msg.metadata, version_flag(h.start.version))
                & (flag::CLOSE | flag::HTTP11)
                | kept
                | flag::DECODED
        };
        w.extend_from_slice(b"\r\n");
        out.push(w.freeze());
        if head_len < frame.len() {
            out.push(frame.slice(head_len..));
        }
        Ok(flags)
    }

    /// Notes a request head written to the server.
    fn sent_request(&mut self, id: u64, flags: u32) {
        if flags & flag::CLOSE != 0 {
            self.keep_alive = false;
        }
        self.push_exchange(Exchange {
            id,
            method: method_of_flags(flags),
            upgrade: flags & flag::UPGRADE != 0,
        });
    }

    /// Notes a response head written to the client.
    fn sent_response(&mut self, msg: &Message, flags: u32) {
        let code = msg.status.unwrap_or(200);
        if code < 200 && code != 101 {
            return;
        }
        let ex = self.in_flight.pop_front().unwrap_or_default();
        let tunnel = msg.stream == StreamState::Upgrade
            || flags & flag::TUNNEL != 0
            || (code == 101 && ex.upgrade)
            || (ex.method == MethodClass::Connect && (200..300).contains(&code));
        if tunnel {
            self.state = State::Tunnel;
        } else if matches!(self.state, State::AwaitAnswer) {
            self.state = State::Head;
        }
        if flags & (flag::CLOSE | flag::UNTIL_CLOSE) != 0 {
            self.keep_alive = false;
        }
    }

    /// The flags and head length of a head message, from its layout or by reading it.
    fn head_info(msg: &Message) -> Result<(u32, usize), EncodeError> {
        let frame = &msg.frame;
        if msg.layout[FLAGS] & flag::DECODED != 0 {
            let len = (msg.layout[HEAD_LEN] as usize).min(frame.len());
            return Ok((msg.layout[FLAGS], len));
        }
        if msg.kind.is_request() {
            let h = match parse_request(frame, relaxed()) {
                Ok(Some(h)) => h,
                _ => return Err(encode_error("not an HTTP request head")),
            };
            let f = summarize(&h.headers, frame).unwrap_or_default();
            let method = method_flag(MethodClass::of(h.start.method.of(frame)));
            Ok((head_flags(&f, h.start.version) | method, h.len))
        } else {
            let h = match parse_response(frame, relaxed()) {
                Ok(Some(h)) => h,
                _ => return Err(encode_error("not an HTTP response head")),
            };
            let f = summarize(&h.headers, frame).unwrap_or_default();
            Ok((head_flags(&f, h.start.version), h.len))
        }
    }
}

/// The flags a head's fields imply.
fn head_flags(f: &FieldSummary, version: Version) -> u32 {
    let mut flags = version_flag(version);
    if !f.keep_alive(version) {
        flags |= flag::CLOSE;
    }
    if f.wants_upgrade(version) {
        flags |= flag::UPGRADE;
    }
    if f.expect_continue {
        flags |= flag::EXPECT_CONTINUE;
    }
    flags
}

/// True when an original field value and a metadata value are the same.
fn same_value(original: &[u8], value: &str) -> bool {
    original == value.as_bytes()
        || (std::str::from_utf8(original).is_err() && String::from_utf8_lossy(original) == value)
}

/// Writes the fields of `md` (pseudo keys excluded) in order: unchanged ones as their
/// original lines, the framing fields always as their original lines, `Host` as `host`
/// when given.
fn write_fields(
    w: &mut BytesMut,
    md: &Metadata,
    fields: &[Header],
    head: &[u8],
    host: Option<&str>,
) -> Result<(), EncodeError> {
    let mut used: SmallVec<[bool; 32]> = SmallVec::from_elem(false, fields.len());
    let mut framing_done = false;
    let mut host_done = false;
    let write_framing = |w: &mut BytesMut| {
        for f in fields.iter().filter(|f| is_framing_field(f.name.of(head))) {
            w.extend_from_slice(f.line().of(head));
        }
    };
    for (k, v) in md.iter() {
        if k.starts_with(':') {
            continue;
        }
        let key = k.as_bytes();
        if is_framing_field(key) {
            if !framing_done {
                write_framing(w);
                framing_done = true;
            }
            continue;
        }
        let same_name = |f: &Header| f.name.of(head).eq_ignore_ascii_case(key);
        let value = match host {
            Some(h) if key.eq_ignore_ascii_case(b"host") => {
                if host_done {
                    continue;
                }
                host_done = true;
                h
            }
            _ => v,
        };
        let unchanged = fields.iter().enumerate().position(|(i, f)| {
            !used.get(i).copied().unwrap_or(true)
                && same_name(f)
                && same_value(f.value.of(head), value)
        });
        if let Some(i) = unchanged {
            if let (Some(u), Some(f)) = (used.get_mut(i), fields.get(i)) {
                *u = true;
                w.extend_from_slice(f.line().of(head));
                continue;
            }
        }
        let name = fields
            .iter()
            .find(|f| same_name(f))
            .map_or(key, |f| f.name.of(head));
        write_header(w, name, value.as_bytes()).map_err(|e| encode_error(format!("{k}: {e}")))?;
    }
    if !framing_done {
        write_framing(w);
    }
    if let (Some(h), false) = (host, host_done) {
        write_header(w, b"host", h.as_bytes()).map_err(|e| encode_error(format!("host: {e}")))?;
    }
    Ok(())
}

impl Codec for HttpCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match self.state {
            State::Head => match self.side {
                Side::Downstream => self.decode_request(buf),
                Side::Upstream => self.decode_response(buf),
            },
            State::Body { .. } => self.decode_body(buf),
            State::AwaitAnswer if buf.len() > self.max_frame_size => Err(self.fail(
                "frame_too_large",
                format!(
                    "{} bytes sent before the answer to a CONNECT or upgrade request",
                    buf.len()
                ),
            )),
            State::AwaitAnswer | State::Tunnel | State::Closed => Ok(None),
        }
    }

    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError> {
        if matches!(
            msg.kind,
            MessageKind::Data | MessageKind::Event | MessageKind::Heartbeat
        ) {
            out.push(msg.frame.clone());
            return Ok(());
        }
        let (mut flags, head_len) = Self::head_info(msg)?;
        if msg.metadata.is_dirty() {
            if !append_fields(msg, head_len, &mut self.scratch, out)? {
                flags = self.reencode(msg, head_len, out)?;
            }
        } else {
            out.push(msg.frame.clone());
        }
        if msg.kind.is_request() {
            self.sent_request(request_id, flags);
        } else {
            self.sent_response(msg, flags);
        }
        Ok(())
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match &self.state {
            State::Body {
                id,
                body: Body::UntilClose,
                ..
            } => {
                let mut msg = Message::new(MessageKind::Data, *id, buf.split().freeze());
                msg.stream = StreamState::End;
                self.state = State::Closed;
                Ok(Some(msg))
            }
            State::Body { .. } => Err(self.fail(
                metamesh_core::TRUNCATED_FRAME,
                format!("connection closed inside a body ({} bytes left)", buf.len()),
            )),
            State::Head => {
                if self.side == Side::Downstream && self.requests.in_first_line() {
                    while buf.starts_with(b"\r\n") {
                        buf.advance(2);
                    }
                }
                if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(self.fail(
                        metamesh_core::TRUNCATED_FRAME,
                        format!("connection closed inside a head ({} bytes)", buf.len()),
                    ))
                }
            }
            State::AwaitAnswer | State::Tunnel | State::Closed => Ok(None),
        }
    }

    fn keep_alive(&self) -> bool {
        self.keep_alive
    }
}

impl Protocol for HttpProtocol {
    fn name(&self) -> &str {
        "http"
    }

    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
        Box::new(HttpCodec::new(options))
    }

    fn multiplexing(&self) -> bool {
        false
    }

    fn local_reply(&self, request: &Message, reply_to: LocalReply<'_>) -> Message {
        let flags = request_flags(request);
        let close = flags & flag::CLOSE != 0
            || (flags & flag::EXPECT_CONTINUE != 0 && request.stream == StreamState::More);
        reply(
            local_reply_status(reply_to.kind),
            reply_to.kind,
            reply_to.message,
            request.request_id,
            flags & flag::HEAD != 0,
            close,
        )
    }

    fn heartbeat_reply(&self, _heartbeat: &Message) -> Option<Message> {
        None
    }

    fn validate_options(&self, options: &ProtocolOptions) -> Result<(), OptionError> {
        for key in options.keys() {
            if key != OPTION_MAX_HEADER_BYTES && key != OPTION_MAX_HEADERS {
                return Err(OptionError::new(
                    key.clone(),
                    format!(
                        "unknown option of protocol http (known: {OPTION_MAX_HEADER_BYTES}, {OPTION_MAX_HEADERS})"
                    ),
                ));
            }
        }
        option_in(options, OPTION_MAX_HEADER_BYTES, &MAX_HEADER_BYTES_RANGE)?;
        option_in(options, OPTION_MAX_HEADERS, &MAX_HEADERS_RANGE)?;
        Ok(())
    }

    fn response_class(&self, response: &Message) -> ResponseClass {
        response
            .status
            .and_then(ResponseClass::of_status_code)
            .unwrap_or_else(|| ResponseClass::of_kind(response.kind))
    }

    fn continue_reply(&self, request: &Message) -> Option<Message> {
        let flags = request_flags(request);
        let wanted = flags & flag::EXPECT_CONTINUE != 0 && flags & flag::HTTP11 != 0;
        if !wanted || request.stream != StreamState::More {
            return None;
        }
        let mut msg = Message::new(
            MessageKind::Event,
            request.request_id,
            Bytes::from_static(CONTINUE),
        );
        msg.status = Some(100);
        Some(msg)
    }
}
