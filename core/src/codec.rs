//! The codec contract: what a protocol implements so that the generic engine can route
//! it. A [`Protocol`] is a shared factory and answers local replies; a [`Codec`] is the
//! per-connection, per-direction decoder/encoder.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::message::{LocalReply, Message, Operation, ResponseClass};

/// [`DecodeError::reason`] of a connection that closed inside a frame; the engine treats
/// it as a broken connection rather than a protocol error.
pub const TRUNCATED_FRAME: &str = "truncated_frame";

/// Default maximum size of one frame: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 * 1024;

/// Which end of the proxy a codec instance serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Talks to clients: decodes requests, encodes responses.
    Downstream,
    /// Talks to servers: encodes requests, decodes responses.
    Upstream,
}

/// Protocol-specific settings of a listener or cluster (`protocol_options` in the
/// bootstrap), checked by [`Protocol::validate_options`] before any codec sees them.
pub type ProtocolOptions = BTreeMap<String, String>;

/// Limits and settings handed to every codec instance.
#[derive(Clone, Debug)]
pub struct CodecOptions {
    /// Which end this codec serves.
    pub side: Side,
    /// Largest frame the codec may buffer; larger ones are a decode error.
    pub max_frame_size: usize,
    /// Protocol-specific settings, already accepted by [`Protocol::validate_options`].
    pub protocol_options: Arc<ProtocolOptions>,
}

impl CodecOptions {
    /// Options for `side` with the default frame limit and no protocol options.
    pub fn new(side: Side) -> Self {
        Self {
            side,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            protocol_options: Arc::default(),
        }
    }

    /// The protocol option `key`, if set.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.protocol_options.get(key).map(String::as_str)
    }
}

/// A protocol option that [`Protocol::validate_options`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct OptionError {
    /// The option's key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl OptionError {
    /// An error about option `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// What the connection should do about a frame that could not be decoded.
#[derive(Debug)]
pub enum ErrorAction {
    /// The stream cannot be resynchronised: close the connection.
    Close,
    /// The bad frame was consumed and needs no answer; keep the connection.
    Drop,
    /// The bad frame was consumed; send this reply and keep the connection.
    Reply(Box<Message>),
    /// Send this reply, then close the connection.
    ReplyAndClose(Box<Message>),
}

/// A frame that could not be decoded.
#[derive(Debug)]
pub struct DecodeError {
    /// Stable snake_case reason, used as a metric label (e.g. `bad_magic`, `frame_too_large`).
    pub reason: &'static str,
    /// Human-readable detail for logs.
    pub detail: String,
    /// What to do next.
    pub action: ErrorAction,
}

impl DecodeError {
    /// An error after which the connection is closed.
    pub fn close(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            action: ErrorAction::Close,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for DecodeError {}

/// A message that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {detail}")]
pub struct EncodeError {
    /// What was being encoded.
    pub what: &'static str,
    /// Why it failed.
    pub detail: String,
}

/// An encoded frame as a short list of byte chunks, so an unchanged body is written
/// straight from the buffer it was read into.
#[derive(Clone, Debug, Default)]
pub struct EncodedFrame {
    parts: SmallVec<[Bytes; 3]>,
}

impl EncodedFrame {
    /// An empty frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk (empty chunks are dropped).
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.parts.push(part);
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The chunks in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Takes the chunks out.
    pub fn into_parts(self) -> SmallVec<[Bytes; 3]> {
        self.parts
    }

    /// Copies all chunks into one contiguous buffer (tests, small frames).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts[0].clone(),
            _ => {
                let mut out = BytesMut::with_capacity(self.len());
                for p in &self.parts {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

/// Where an encoder writes the short pieces of a frame it cannot take from the frame it
/// was given (a header with a new request id, appended entries): each piece is split off
/// as [`Bytes`] that share one block, so that writing one costs no allocation of its own.
/// A block is reused from its start once every piece cut from it has been dropped (they
/// live until they are written), and a new one is allocated only while the last is still
/// in use.
///
/// ```
/// use metamesh_core::codec::Scratch;
///
/// let mut scratch = Scratch::default();
/// let head = scratch.write(4, |b| b.extend_from_slice(b"abcd"));
/// let next = scratch.write(2, |b| b.extend_from_slice(b"ef"));
/// assert_eq!((&head[..], &next[..]), (&b"abcd"[..], &b"ef"[..]));
/// ```
#[derive(Debug, Default)]
pub struct Scratch {
    buf: BytesMut,
}

impl Scratch {
    /// The size of a block. A connection that has encoded keeps one while it is open.
    pub const BLOCK: usize = 1024;

    /// Calls `write` with an empty buffer that has room for at least `room` bytes, and
    /// returns what it appended (it may append more than `room`: the buffer grows).
    pub fn write(&mut self, room: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
        debug_assert!(self.buf.is_empty());
        if self.buf.capacity() < room {
            // Takes back the whole block when no piece of it is alive any more.
            self.buf.reserve(room.max(Self::BLOCK));
        }
        write(&mut self.buf);
        self.buf.split().freeze()
    }
}

/// Per-connection decoder and encoder of one protocol.
///
/// For protocols that multiplex, the engine may use separate instances to read and to
/// write one connection. For protocols that do not, one instance per connection decodes
/// and encodes every message on it, so it may carry state from a request to its response
/// (for example that the answer to an HTTP `HEAD` has no body).
///
/// Streaming protocols decode a message head with [`crate::StreamState::More`] and then
/// its body as [`crate::MessageKind::Data`] pieces (each decoded from whatever bytes have
/// arrived, the last marked [`crate::StreamState::End`]); the engine forwards each piece
/// as it comes, so a body is never held whole.
pub trait Codec: Send + 'static {
    /// Decodes one frame from the front of `buf`, consuming exactly its bytes.
    ///
    /// Returns `Ok(None)` when more bytes are needed. Never panics, and never lets a frame
    /// grow beyond the configured maximum frame size.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError>;

    /// Encodes `msg` with `request_id` on the wire.
    ///
    /// With an unchanged metadata map and `request_id == msg.request_id` this must push
    /// `msg.frame` unchanged. A different id is patched in place; dirty metadata re-encodes
    /// only the section that carries it and fixes length fields.
    fn encode(
        &mut self,
        msg: &Message,
        request_id: u64,
        out: &mut EncodedFrame,
    ) -> Result<(), EncodeError>;

    /// Called once when the peer closed its sending side, with whatever is left in `buf`.
    /// A protocol whose last message may be delimited by the close itself (an HTTP/1.x
    /// response body without a length) returns that message's final piece here; the
    /// default treats leftover bytes as a truncated frame.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if buf.is_empty() {
            Ok(None)
        } else {
            Err(DecodeError::close(
                TRUNCATED_FRAME,
                format!("connection closed inside a frame ({} bytes)", buf.len()),
            ))
        }
    }

    /// False once a message decoded or encoded on this connection said that the
    /// connection ends after the current exchange (HTTP `Connection: close`, HTTP/1.0
    /// without keep-alive, a body delimited by the close). Asked by the engine between
    /// exchanges of protocols that do not multiplex.
    fn keep_alive(&self) -> bool {
        true
    }
}

/// A protocol: names itself, makes codecs, and answers what the proxy must answer itself.
pub trait Protocol: Send + Sync + 'static {
    /// The name used in listener configuration (`dubbo`, `thrift`, `http`, ...).
    fn name(&self) -> &str;

    /// A new codec for one connection.
    fn codec(&self, options: &CodecOptions) -> Box<dyn Codec>;

    /// True when many requests may share one upstream connection, told apart by request
    /// id (the proxy then rewrites ids so that many downstream connections share few
    /// upstream ones). False means one request in flight per upstream connection.
    fn multiplexing(&self) -> bool;

    /// A protocol-native error response to `request`.
    fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message;

    /// The answer to a heartbeat (or other event) that expects one; `None` otherwise.
    fn heartbeat_reply(&self, heartbeat: &Message) -> Option<Message>;

    /// A keep-alive probe the proxy sends to check that an upstream is alive (Dubbo's
    /// heartbeat event); `None` when the protocol has none. Active health checks of
    /// `type: heartbeat` encode it with a fresh request id on a connection of their own
    /// and expect an answer of kind [`crate::MessageKind::Heartbeat`] or [`crate::MessageKind::Event`]
    /// with that id.
    fn heartbeat_request(&self) -> Option<Message> {
        None
    }

    /// Checks the `protocol_options` of a listener or cluster. The default accepts none.
    fn validate_options(&self, options: &ProtocolOptions) -> Result<(), OptionError> {
        match options.keys().next() {
            Some(key) => Err(OptionError::new(
                key.clone(),
                format!("protocol {} has no options", self.name()),
            )),
            None => Ok(()),
        }
    }

    /// An interim answer the client waits for before it sends the rest of `request` (an
    /// HTTP `100 Continue` for `Expect: 100-continue`). The proxy sends it once the
    /// request is routed and an upstream connection is ready; a request answered locally
    /// instead gets no interim answer and its connection closes after the reply.
    fn continue_reply(&self, request: &Message) -> Option<Message> {
        let _ = request;
        None
    }

    /// Called with every upstream response before response mutation and encoding, with
    /// the request it answers, so the codec can note what the client can take (for
    /// example whether a Dubbo client understands response attachments).
    fn finish_response(&self, request: &Message, response: &mut Message) {
        let _ = (request, response);
    }

    /// The class of `response` for metrics and access logs. The default tells success
    /// from error by the response's kind; protocols with HTTP-style status codes report
    /// their hundreds.
    fn response_class(&self, response: &Message) -> ResponseClass {
        ResponseClass::of_kind(response.kind)
    }

    /// What `request` asks for, for access logs. The default reads the metadata keys
    /// the built-in codecs use: `service`, `interface` or `:authority` for the service,
    /// `method` or `:method` for the method, and `:path`.
    fn operation<'m>(&self, request: &'m Message) -> Operation<'m> {
        let md = &request.metadata;
        Operation {
            service: md
                .get("service")
                .or_else(|| md.get("interface"))
                .or_else(|| md.get(":authority")),
            method: md.get("method").or_else(|| md.get(":method")),
            path: md.get(":path"),
        }
    }
}

/// Protocols by name.
#[derive(Clone, Default)]
pub struct ProtocolRegistry {
    protocols: HashMap<String, Arc<dyn Protocol>>,
}

impl ProtocolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `protocol` under its name, replacing one of the same name.
    pub fn register(&mut self, protocol: Arc<dyn Protocol>) -> &mut Self {
        self.protocols.insert(protocol.name().to_owned(), protocol);
        self
    }

    /// The protocol called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Protocol>> {
        self.protocols.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.protocols.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for ProtocolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod scratch_tests {
    use super::Scratch;

    #[test]
    fn scratch_pieces_share_a_block_that_is_taken_back_once_they_are_dropped() {
        let mut s = Scratch::default();
        let a = s.write(16, |b| b.extend_from_slice(&[1; 16]));
        let b = s.write(16, |b| b.extend_from_slice(&[2; 16]));
        assert_eq!((&a[..], &b[..]), (&[1u8; 16][..], &[2u8; 16][..]));
        // Cut one after the other from one block.
        assert_eq!(a.as_ptr().wrapping_add(16), b.as_ptr());
        let start = a.as_ptr();
        drop((a, b));
        // Fill the rest of the block; the next piece starts it again from the front.
        let rest = Scratch::BLOCK - 32;
        let filler = s.write(rest, |b| b.extend_from_slice(&vec![3; rest]));
        assert_eq!(filler.len(), rest);
        drop(filler);
        let again = s.write(8, |b| b.extend_from_slice(b"reused!!"));
        assert_eq!(again.as_ptr(), start);
        assert_eq!(&again[..], b"reused!!");
        // While a piece of the block is alive, the next one comes from a new block and
        // the live one is left as it was.
        let rest = Scratch::BLOCK - 8;
        let _filler = s.write(rest, |b| b.extend_from_slice(&vec![4; rest]));
        let fresh = s.write(4, |b| b.extend_from_slice(b"new!"));
        assert_ne!(fresh.as_ptr(), start);
        assert_eq!(&again[..], b"reused!!");
        assert_eq!(&fresh[..], b"new!");
    }

    #[test]
    fn scratch_grows_past_a_block_for_a_large_piece() {
        let mut s = Scratch::default();
        let big = vec![7u8; 3 * Scratch::BLOCK];
        let piece = s.write(16, |b| b.extend_from_slice(&big));
        assert_eq!(&piece[..], &big[..]);
        let after = s.write(2, |b| b.extend_from_slice(b"ok"));
        assert_eq!(&after[..], b"ok");
    }
}
