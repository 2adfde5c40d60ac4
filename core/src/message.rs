//! The protocol-neutral view of one decoded frame: its kind, request id, routable
//! metadata and the original bytes. Codecs produce and consume these; everything else in
//! core works on them without knowing the protocol.

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

/// What a decoded frame is, as far as routing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A request that expects a response.
    Request,
    /// A request that expects no response.
    OnewayRequest,
    /// A response whose transport status is success (a business exception is still this).
    Response,
    /// A keep-alive probe or its answer; never routed, answered by the protocol.
    Heartbeat,
    /// Any other protocol event (never routed).
    Event,
    /// A response whose transport status reports a failure.
    Error,
    /// A piece of the body of the request or response before it on the same connection
    /// (an HTTP body chunk). Never routed: it follows its message to the same peer, in
    /// order, and is written through unchanged.
    Data,
}

/// How a message continues on its connection. Frame-at-a-time protocols (Dubbo, Thrift)
/// always decode complete messages; streaming protocols (HTTP/1.1) hand over a head first
/// and the body in [`MessageKind::Data`] pieces, so a large body never sits in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StreamState {
    /// Nothing follows: the message (or the last body piece) ends its stream.
    #[default]
    End,
    /// [`MessageKind::Data`] pieces follow; the last one is marked [`StreamState::End`].
    More,
    /// After this response the connection stops carrying messages and becomes an opaque
    /// byte tunnel in both directions (an HTTP `101 Switching Protocols` or a `CONNECT`
    /// answered with success).
    Upgrade,
}

impl MessageKind {
    /// True for kinds that the router handles.
    pub fn is_request(self) -> bool {
        matches!(self, MessageKind::Request | MessageKind::OnewayRequest)
    }

    /// True for kinds that answer a request.
    pub fn is_response(self) -> bool {
        matches!(self, MessageKind::Response | MessageKind::Error)
    }
}

/// Small ordered map of routable string attributes. Keys compare ASCII case-insensitively.
///
/// Keys and values are [`ByteString`]s, so a codec can hand out slices of the frame it
/// decoded without copying them. Any change marks the map dirty, which tells the codec
/// that the metadata section has to be re-encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: SmallVec<[(ByteString, ByteString); 8]>,
    dirty: bool,
    /// Entries that came from decoding (the first `decoded` ones).
    decoded: usize,
    /// True once an entry that came from decoding was changed or removed.
    rewritten: bool,
}

impl Metadata {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|(k, _)| k.len() == key.len() && k.eq_ignore_ascii_case(key))
    }

    /// The value of `key`, compared case-insensitively.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| &*self.entries[i].1)
    }

    /// True when `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Adds an entry while decoding: does not mark the map dirty and does not look for an
    /// existing key (codecs append each key once, in wire order).
    pub fn push_decoded(&mut self, key: impl Into<ByteString>, value: impl Into<ByteString>) {
        self.entries.push((key.into(), value.into()));
        self.decoded = self.entries.len();
    }

    /// Adds or replaces an entry while decoding, without marking the map dirty: for wire
    /// formats where a repeated key overrides the earlier one (as a Java map does).
    pub fn insert_decoded(&mut self, key: impl Into<ByteString>, value: impl Into<ByteString>) {
        let key = key.into();
        let value = value.into();
        match self.position(&key) {
            Some(i) => self.entries[i].1 = value,
            None => self.entries.push((key, value)),
        }
        self.decoded = self.entries.len();
    }

    /// Sets `key` to `value`, replacing an existing entry in place or appending a new one.
    pub fn set(&mut self, key: impl Into<ByteString>, value: impl Into<ByteString>) {
        let key = key.into();
        let value = value.into();
        self.dirty = true;
        match self.position(&key) {
            Some(i) => {
                if i < self.decoded && self.entries[i].1 != value {
                    self.rewritten = true;
                }
                self.entries[i].1 = value;
            }
            None => self.entries.push((key, value)),
        }
    }

    /// Removes `key`; returns its old value.
    pub fn remove(&mut self, key: &str) -> Option<ByteString> {
        let i = self.position(key)?;
        self.dirty = true;
        if i < self.decoded {
            self.rewritten = true;
            self.decoded -= 1;
        }
        Some(self.entries.remove(i).1)
    }

    /// The entries added since decoding, when that is the only change: every decoded
    /// entry still holds its decoded value. A codec can then append these to the
    /// original metadata section instead of writing it anew. `None` when nothing changed
    /// or a decoded entry was changed or removed.
    pub fn appended(&self) -> Option<impl Iterator<Item = (&str, &str)> + Clone> {
        (self.dirty && !self.rewritten).then(|| {
            self.entries[self.decoded..]
                .iter()
                .map(|(k, v)| (&**k, &**v))
        })
    }

    /// True once `set` or `remove` changed the map since it was decoded.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (&**k, &**v))
    }
}

/// One decoded frame.
#[derive(Clone, Debug)]
pub struct Message {
    /// What the frame is.
    pub kind: MessageKind,
    /// The request id as it stands in `frame` (Dubbo request id, Thrift seqid, ...).
    pub request_id: u64,
    /// Routable attributes. Changing them makes the codec re-encode the metadata section.
    pub metadata: Metadata,
    /// Protocol status of a response, when the protocol has one (e.g. Dubbo's status byte).
    pub status: Option<u32>,
    /// The frame exactly as read from the wire (or as built by a local reply).
    pub frame: Bytes,
    /// Positions inside `frame` that the codec recorded for its own use when encoding.
    pub layout: [u32; 4],
    /// Whether body pieces or a tunnel follow this message.
    pub stream: StreamState,
}

impl Message {
    /// A message of `kind` around `frame`, with no metadata.
    pub fn new(kind: MessageKind, request_id: u64, frame: Bytes) -> Self {
        Self {
            kind,
            request_id,
            metadata: Metadata::new(),
            status: None,
            frame,
            layout: [0; 4],
            stream: StreamState::End,
        }
    }
}

/// Why the proxy answered a request itself instead of forwarding the upstream's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalReplyKind {
    /// No route matched the request.
    NoRoute,
    /// The chosen cluster has no endpoint that can take the request.
    NoHealthyUpstream,
    /// Connecting to the upstream failed.
    UpstreamConnectFailure,
    /// The upstream connection closed before the response arrived.
    UpstreamReset,
    /// The route's timeout expired.
    Timeout,
    /// A rate limit refused the request.
    RateLimited,
    /// A hook or filter rejected the request.
    Rejected,
    /// A hook failed (script error, instruction budget or memory cap).
    HookError,
    /// The request could not be decoded.
    BadRequest,
    /// A limit of the proxy (queue, circuit breaker) refused the request.
    Overloaded,
    /// The proxy failed in a way the client cannot fix.
    Internal,
}

impl LocalReplyKind {
    /// Stable snake_case name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalReplyKind::NoRoute => "no_route",
            LocalReplyKind::NoHealthyUpstream => "no_healthy_upstream",
            LocalReplyKind::UpstreamConnectFailure => "upstream_connect_failure",
            LocalReplyKind::UpstreamReset => "upstream_reset",
            LocalReplyKind::Timeout => "timeout",
            LocalReplyKind::RateLimited => "rate_limited",
            LocalReplyKind::Rejected => "rejected",
            LocalReplyKind::HookError => "hook_error",
            LocalReplyKind::BadRequest => "bad_request",
            LocalReplyKind::Overloaded => "overloaded",
            LocalReplyKind::Internal => "internal",
        }
    }

    /// Every kind, for pre-registering metrics.
    pub const ALL: [LocalReplyKind; 11] = [
        LocalReplyKind::NoRoute,
        LocalReplyKind::NoHealthyUpstream,
        LocalReplyKind::UpstreamConnectFailure,
        LocalReplyKind::UpstreamReset,
        LocalReplyKind::Timeout,
        LocalReplyKind::RateLimited,
        LocalReplyKind::Rejected,
        LocalReplyKind::HookError,
        LocalReplyKind::BadRequest,
        LocalReplyKind::Overloaded,
        LocalReplyKind::Internal,
    ];
}

/// The class of a response, for metrics and access logs. Protocols with numeric status
/// codes in the HTTP style report their hundreds (`1xx` to `5xx`); others report success
/// or error from the response's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// `1xx`.
    Status1xx,
    /// `2xx`.
    Status2xx,
    /// `3xx`.
    Status3xx,
    /// `4xx`.
    Status4xx,
    /// `5xx`.
    Status5xx,
    /// A response of a protocol without status classes whose transport status is success.
    Success,
    /// A response of a protocol without status classes that reports a failure.
    Error,
}

impl ResponseClass {
    /// Every class, in label order.
    pub const ALL: [ResponseClass; 7] = [
        ResponseClass::Status1xx,
        ResponseClass::Status2xx,
        ResponseClass::Status3xx,
        ResponseClass::Status4xx,
        ResponseClass::Status5xx,
        ResponseClass::Success,
        ResponseClass::Error,
    ];

    /// Stable name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseClass::Status1xx => "1xx",
            ResponseClass::Status2xx => "2xx",
            ResponseClass::Status3xx => "3xx",
            ResponseClass::Status4xx => "4xx",
            ResponseClass::Status5xx => "5xx",
            ResponseClass::Success => "success",
            ResponseClass::Error => "error",
        }
    }

    /// The class of an HTTP-style status code (100–599); `None` outside that range.
    pub fn of_status_code(code: u32) -> Option<ResponseClass> {
        Some(match code {
            100..=199 => ResponseClass::Status1xx,
            200..=299 => ResponseClass::Status2xx,
            300..=399 => ResponseClass::Status3xx,
            400..=499 => ResponseClass::Status4xx,
            500..=599 => ResponseClass::Status5xx,
            _ => return None,
        })
    }

    /// The class from a response's kind alone.
    pub fn of_kind(kind: MessageKind) -> ResponseClass {
        if kind == MessageKind::Error {
            ResponseClass::Error
        } else {
            ResponseClass::Success
        }
    }

    /// Position in [`ResponseClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a request asks for, in words an operator reads in an access log: the service
/// (Dubbo interface, Thrift service, HTTP authority), the method and, for protocols
/// with one, the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Operation<'m> {
    /// Service, interface or authority.
    pub service: Option<&'m str>,
    /// Method (an RPC method or an HTTP method).
    pub method: Option<&'m str>,
    /// Path, for protocols that address resources by path.
    pub path: Option<&'m str>,
}

/// A local reply to build: why, and a human-readable message for the client.
#[derive(Clone, Copy, Debug)]
pub struct LocalReply<'a> {
    /// The reason.
    pub kind: LocalReplyKind,
    /// Text for the client (a Dubbo error string, an HTTP body, a Thrift exception message).
    pub message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_entries_are_told_apart_from_rewrites() {
        let mut m = Metadata::new();
        m.push_decoded("a", "1");
        m.push_decoded("b", "2");
        assert!(m.appended().is_none(), "nothing changed");
        m.set("c", "3");
        m.set("C", "4");
        m.set("a", "1");
        let added: Vec<_> = m.appended().expect("only appended").collect();
        assert_eq!(added, [("c", "4")]);
        m.remove("c");
        assert_eq!(m.appended().expect("still only appended").count(), 0);
        m.set("b", "changed");
        assert!(m.appended().is_none());
        let mut n = Metadata::new();
        n.push_decoded("a", "1");
        n.set("z", "9");
        n.remove("a");
        assert!(n.appended().is_none(), "a removal is a rewrite");
    }

    #[test]
    fn keys_are_case_insensitive_and_order_is_kept() {
        let mut m = Metadata::new();
        m.push_decoded("Interface", "a.B");
        m.push_decoded("batchjob", "true");
        assert_eq!(m.get("interface"), Some("a.B"));
        assert_eq!(m.get("BATCHJOB"), Some("true"));
        assert!(!m.is_dirty());
        m.set("BatchJob", "false");
        assert!(m.is_dirty());
        assert_eq!(m.len(), 2);
        m.set("x-tier", "batch");
        let keys: Vec<_> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["Interface", "batchjob", "x-tier"]);
        assert_eq!(m.remove("X-TIER").as_deref(), Some("batch"));
        assert_eq!(m.get("x-tier"), None);
        assert_eq!(m.remove("missing"), None);
    }

    #[test]
    fn keys_of_different_length_do_not_match() {
        let mut m = Metadata::new();
        m.push_decoded("ab", "1");
        assert_eq!(m.get("a"), None);
        assert_eq!(m.get("abc"), None);
    }
}
