//! A small length-prefixed protocol for exercising the engine without a real protocol:
//! `u32 length | u64 request id | u8 kind | u16 status | u16 header count |
//! (u16 key length, key, u16 value length, value)* | payload`, all big-endian, where
//! length counts everything after itself. Kinds: 0 request, 1 oneway, 2 response,
//! 3 heartbeat, 4 error. A message with the attribute `unencodable` fails to encode.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{
    Codec, CodecOptions, DecodeError, EncodeError, EncodedFrame, Protocol, ProtocolRegistry,
};
use crate::message::{LocalReply, Message, MessageKind, Metadata, StreamState};

/// The test protocol, registered as `test`.
#[derive(Debug, Default)]
pub struct TestProtocol;

/// A registry holding [`TestProtocol`] and [`StreamTestProtocol`].
pub fn registry() -> ProtocolRegistry {
    let mut r = ProtocolRegistry::new();
    r.register(Arc::new(TestProtocol));
    r.register(Arc::new(StreamTestProtocol));
    r
}

const FIXED: usize = 4 + 8 + 1 + 2 + 2;

fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Request => 0,
        MessageKind::OnewayRequest => 1,
        MessageKind::Response => 2,
        MessageKind::Heartbeat | MessageKind::Event | MessageKind::Data => 3,
        MessageKind::Error => 4,
    }
}

/// Builds a frame.
pub fn frame(
    kind: MessageKind,
    id: u64,
    status: u16,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u64(id);
    body.put_u8(kind_byte(kind));
    body.put_u16(status);
    put_headers(&mut body, headers.iter().copied());
    body.extend_from_slice(payload);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    out.freeze()
}

fn put_headers<'a>(out: &mut BytesMut, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    let at = out.len();
    out.put_u16(0);
    let mut n = 0u16;
    for (k, v) in headers {
        out.put_u16(k.len() as u16);
        out.extend_from_slice(k.as_bytes());
        out.put_u16(v.len() as u16);
        out.extend_from_slice(v.as_bytes());
        n += 1;
    }
    out[at..at + 2].copy_from_slice(&n.to_be_bytes());
}

/// The payload of a decoded message.
pub fn payload(msg: &Message) -> &[u8] {
    msg.frame.get(msg.layout[0] as usize..).unwrap_or_default()
}

struct TestCodec {
    max: usize,
}

fn bad(detail: &str) -> DecodeError {
    DecodeError::close("malformed_frame", detail)
}

impl Codec for TestCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max {
            return Err(DecodeError::close(
                "frame_too_large",
                format!("{len} bytes"),
            ));
        }
        if len < FIXED - 4 {
            return Err(bad("frame shorter than its fixed header"));
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(4 + len).freeze();
        let mut cur = &frame[4..];
        let id = cur.get_u64();
        let kind = match cur.get_u8() {
            0 => MessageKind::Request,
            1 => MessageKind::OnewayRequest,
            2 => MessageKind::Response,
            3 => MessageKind::Heartbeat,
            4 => MessageKind::Error,
            _ => return Err(bad("unknown kind")),
        };
        let status = cur.get_u16();
        let count = cur.get_u16();
        let mut metadata = Metadata::new();
        for _ in 0..count {
            let k = take_str(&frame, &mut cur)?;
            let v = take_str(&frame, &mut cur)?;
            metadata.push_decoded(k, v);
        }
        let headers_end = frame.len() - cur.len();
        let mut msg = Message::new(kind, id, frame);
        msg.metadata = metadata;
        msg.status = Some(u32::from(status));
        msg.layout[0] = headers_end as u32;
        Ok(Some(msg))
    }

    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError> {
        if msg.frame.len() < FIXED {
            return Err(EncodeError {
                what: "test frame",
                detail: "frame shorter than its fixed header".into(),
            });
        }
        if msg.metadata.contains("unencodable") {
            return Err(EncodeError {
                what: "test frame",
                detail: "attribute `unencodable` is set".into(),
            });
        }
        if !msg.metadata.is_dirty() {
            if request_id == msg.request_id {
                out.push(msg.frame.clone());
            } else {
                let mut head = BytesMut::from(&msg.frame[..12]);
                head[4..12].copy_from_slice(&request_id.to_be_bytes());
                out.push(head.freeze());
                out.push(msg.frame.slice(12..));
            }
            return Ok(());
        }
        let payload = payload(msg);
        let mut body = BytesMut::new();
        body.put_u64(request_id);
        body.extend_from_slice(&msg.frame[12..15]);
        put_headers(&mut body, msg.metadata.iter());
        let mut head = BytesMut::with_capacity(4 + body.len());
        head.put_u32((body.len() + payload.len()) as u32);
        head.extend_from_slice(&body);
        out.push(head.freeze());
        out.push(msg.frame.slice(msg.layout[0] as usize..));
        Ok(())
    }
}

fn take_str(frame: &Bytes, cur: &mut &[u8]) -> Result<bytestring::ByteString, DecodeError> {
    if cur.len() < 2 {
        return Err(bad("truncated header"));
    }
    let n = cur.get_u16() as usize;
    if cur.len() < n {
        return Err(bad("truncated header"));
    }
    let start = frame.len() - cur.len();
    cur.advance(n);
    bytestring::ByteString::try_from(frame.slice(start..start + n))
        .map_err(|_| bad("header is not UTF-8"))
}

impl Protocol for TestProtocol {
    fn name(&self) -> &str {
        "test"
    }

    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
        Box::new(TestCodec {
            max: options.max_frame_size,
        })
    }

    fn multiplexing(&self) -> bool {
        true
    }

    fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message {
        let f = frame(
            MessageKind::Error,
            request.request_id,
            500,
            &[("reason", reply.kind.as_str())],
            reply.message.as_bytes(),
        );
        let mut codec = TestCodec { max: usize::MAX };
        let mut buf = BytesMut::from(&f[..]);
        match codec.decode(&mut buf) {
            Ok(Some(m)) => m,
            _ => Message::new(MessageKind::Error, request.request_id, f),
        }
    }

    fn heartbeat_reply(&self, heartbeat: &Message) -> Option<Message> {
        let f = frame(
            MessageKind::Response,
            heartbeat.request_id,
            0,
            &[("heartbeat", "pong")],
            b"",
        );
        Some(Message::new(MessageKind::Response, heartbeat.request_id, f))
    }
}

/// A streaming, non-multiplexing variant of the test protocol, registered as `stest`:
/// every head is a test frame whose payload is a big-endian `u64` body length, and that
/// many raw body bytes follow it, decoded as [`MessageKind::Data`] pieces. A response
/// head with length `u64::MAX` upgrades the connection to a byte tunnel. A head with
/// attribute `connection: close` ends the connection after its exchange; a request with
/// `expect: continue` gets an interim `continue` frame before it is forwarded.
#[derive(Debug, Default)]
pub struct StreamTestProtocol;

/// Length value of a response head that upgrades the connection.
pub const STREAM_UPGRADE: u64 = u64::MAX;

/// A stream-test head announcing a body of `body_len` bytes.
pub fn stream_head(kind: MessageKind, id: u64, headers: &[(&str, &str)], body_len: u64) -> Bytes {
    frame(kind, id, 0, headers, &body_len.to_be_bytes())
}

struct StreamTestCodec {
    head: TestCodec,
    body_left: u64,
    keep_alive: bool,
}

impl Codec for StreamTestCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if self.body_left > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = usize::try_from(self.body_left).map_or(buf.len(), |left| left.min(buf.len()));
            self.body_left -= n as u64;
            let mut piece = Message::new(MessageKind::Data, 0, buf.split_to(n).freeze());
            piece.stream = if self.body_left == 0 {
                StreamState::End
            } else {
                StreamState::More
            };
            return Ok(Some(piece));
        }
        let Some(mut msg) = self.head.decode(buf)? else {
            return Ok(None);
        };
        let len = match payload(&msg) {
            [a, b, c, d, e, f, g, h] => u64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h]),
            _ => 0,
        };
        if msg.metadata.get("connection") == Some("close") {
            self.keep_alive = false;
        }
        if len == STREAM_UPGRADE && msg.kind.is_response() {
            msg.stream = StreamState::Upgrade;
        } else if len > 0 {
            self.body_left = len;
            msg.stream = StreamState::More;
        }
        Ok(Some(msg))
    }

    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError> {
        if msg.kind == MessageKind::Data {
            out.push(msg.frame.clone());
            return Ok(());
        }
        if msg.metadata.get("connection") == Some("close") {
            self.keep_alive = false;
        }
        self.head.encode(msg, request_id, out)
    }

    fn keep_alive(&self) -> bool {
        self.keep_alive
    }
}

impl Protocol for StreamTestProtocol {
    fn name(&self) -> &str {
        "stest"
    }

    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
        Box::new(StreamTestCodec {
            head: TestCodec {
                max: options.max_frame_size,
            },
            body_left: 0,
            keep_alive: true,
        })
    }

    fn multiplexing(&self) -> bool {
        false
    }

    fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message {
        let f = stream_head(
            MessageKind::Error,
            request.request_id,
            &[("reason", reply.kind.as_str()), ("message", reply.message)],
            0,
        );
        let mut codec = TestCodec { max: usize::MAX };
        let mut buf = BytesMut::from(&f[..]);
        match codec.decode(&mut buf) {
            Ok(Some(m)) => m,
            _ => Message::new(MessageKind::Error, request.request_id, f),
        }
    }

    fn heartbeat_reply(&self, _heartbeat: &Message) -> Option<Message> {
        None
    }

    fn continue_reply(&self, request: &Message) -> Option<Message> {
        (request.metadata.get("expect") == Some("continue")).then(|| {
            let f = stream_head(
                MessageKind::Heartbeat,
                request.request_id,
                &[("continue", "")],
                0,
            );
            Message::new(MessageKind::Event, request.request_id, f)
        })
    }
}
