//! The protocol-neutral view of one decoded frame: its kind, request id, routable
//! metadata and the original bytes. Codecs produce and consume these; everything else in
//! core works on them without knowing the protocol.

use bytes::Bytes;
use bytestring::ByteString;
use smallstr::SmallString;
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
/// An entry decoded from a frame costs no copy and no reference count: when the map was
/// made for a frame ([`Metadata::with_source`], which [`Message::new`] does), a key or
/// value that is a slice of that frame is kept as its position in it. Well-known names
/// (`interface`, `:path`, `x-request-id`, ...) are kept as an index into a static table,
/// and any other text is copied into one buffer the map owns. An entry is 16 bytes and
/// twelve are kept inline, so a message moves cheaply and most never allocate for their
/// entries. Any change marks the map dirty, which tells the codec that the
/// metadata section has to be re-encoded.
#[derive(Clone)]
pub struct Metadata {
    /// The frame that [`Slot::Source`] positions are in.
    source: Bytes,
    entries: SmallVec<[(Slot, Slot); INLINE_ENTRIES]>,
    /// The text of [`Slot::Owned`] entries: the first [`OWNED_INLINE`] bytes inside the
    /// map, so that a request id or a short header mutation costs no allocation.
    owned: SmallString<[u8; OWNED_INLINE]>,
    /// Entries that came from decoding (the first `decoded` ones).
    decoded: u32,
    dirty: bool,
    /// True once an entry that came from decoding was changed or removed.
    rewritten: bool,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            source: Bytes::new(),
            entries: SmallVec::new(),
            owned: SmallString::new(),
            decoded: 0,
            dirty: false,
            rewritten: false,
        }
    }
}

/// Entries a map holds without allocating (as many as 8 entries of 24 bytes took).
const INLINE_ENTRIES: usize = 12;

/// Bytes of owned text a map holds without allocating: a request id (36) and a short
/// key and value besides.
const OWNED_INLINE: usize = 48;

/// Which text a [`Slot`]'s position is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Bytes `at..at + len` of the source frame, UTF-8 (checked when added).
    Source = 0,
    /// Bytes `at..at + len` of the map's own buffer.
    Owned = 1,
    /// Entry `at` of [`WELL_KNOWN`], `len` bytes long.
    Known = 2,
}

/// Where the text of a key or a value is: its [`Place`], its position there and its
/// length, packed into 8 bytes (2, 32 and 30 bits).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot(u64);

impl Slot {
    /// The longest text a slot holds (a gibibyte less one byte).
    const MAX_LEN: usize = (1 << 30) - 1;

    /// `None` when `len` is over [`Slot::MAX_LEN`].
    const fn new(place: Place, at: u32, len: usize) -> Option<Slot> {
        if len > Self::MAX_LEN {
            return None;
        }
        Some(Slot((place as u64) << 62 | (len as u64) << 32 | at as u64))
    }

    fn place(self) -> Place {
        match self.0 >> 62 {
            0 => Place::Source,
            1 => Place::Owned,
            _ => Place::Known,
        }
    }

    fn at(self) -> u32 {
        self.0 as u32
    }

    fn len(self) -> usize {
        ((self.0 >> 32) as usize) & Self::MAX_LEN
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}({}, {})", self.place(), self.at(), self.len())
    }
}

/// Names and values kept without a copy when they do not come from the frame, sorted by
/// length, then bytes ([`BY_LENGTH`] finds the texts of one length).
const WELL_KNOWN: &[&str] = &[
    "",
    "GET",
    "PUT",
    "age",
    "via",
    "HEAD",
    "POST",
    "call",
    "date",
    "etag",
    "host",
    "path",
    "true",
    "vary",
    ":path",
    "PATCH",
    "TRACE",
    "close",
    "false",
    "group",
    "range",
    "reply",
    "DELETE",
    "accept",
    "cookie",
    "expect",
    "method",
    "oneway",
    "origin",
    "pragma",
    "server",
    ":method",
    ":status",
    "CONNECT",
    "OPTIONS",
    "expires",
    "referer",
    "service",
    "timeout",
    "upgrade",
    "version",
    "internal",
    "location",
    "no_route",
    "rejected",
    "exception",
    "interface",
    ":authority",
    "connection",
    "hook_error",
    "keep-alive",
    "overloaded",
    "set-cookie",
    "text/plain",
    "timeout_ms",
    "user-agent",
    "bad_request",
    "traceparent",
    "content-type",
    "message_type",
    "rate_limited",
    "x-request-id",
    "accept-ranges",
    "authorization",
    "cache-control",
    "if-none-match",
    "last-modified",
    "content-length",
    "upstream_reset",
    "accept-encoding",
    "accept-language",
    "x-forwarded-for",
    "application/json",
    "content-encoding",
    "if-modified-since",
    "transfer-encoding",
    "x-forwarded-proto",
    "no_healthy_upstream",
    "x-metamesh-local-reply",
    "upstream_connect_failure",
];

/// The longest text in [`WELL_KNOWN`].
const WELL_KNOWN_MAX: usize = 24;

/// Where the texts of each length start in [`WELL_KNOWN`]: those of length `n` are at
/// `BY_LENGTH[n]..BY_LENGTH[n + 1]`.
const BY_LENGTH: [usize; WELL_KNOWN_MAX + 2] = {
    let mut starts = [WELL_KNOWN.len(); WELL_KNOWN_MAX + 2];
    let mut i = WELL_KNOWN.len();
    while i > 0 {
        i -= 1;
        starts[WELL_KNOWN[i].len()] = i;
    }
    // A length no text has starts where the next length does.
    let mut n = WELL_KNOWN_MAX;
    while n > 0 {
        n -= 1;
        if starts[n] > starts[n + 1] {
            starts[n] = starts[n + 1];
        }
    }
    starts
};

/// The index of `s` in [`WELL_KNOWN`]: only the texts of its length are compared.
fn well_known(s: &[u8]) -> Option<u32> {
    let n = s.len();
    if n > WELL_KNOWN_MAX {
        return None;
    }
    let (start, end) = (BY_LENGTH[n], BY_LENGTH[n + 1]);
    let first = s.first();
    let at = WELL_KNOWN
        .get(start..end)?
        .iter()
        .position(|k| k.as_bytes().first() == first && k.as_bytes() == s)?;
    u32::try_from(start + at).ok()
}

/// The slot of `s` when it is in [`WELL_KNOWN`].
fn known(s: &[u8]) -> Option<Slot> {
    Slot::new(Place::Known, well_known(s)?, s.len())
}

/// A text of the table of well-known names and values, found once: a decoder that adds
/// an entry under a constant key (`:method`, `interface`) finds the key at compile time,
/// and the map does not look for it per entry.
///
/// ```
/// use metamesh_core::message::{KnownText, Metadata};
/// const METHOD: KnownText = KnownText::of(":method");
/// let mut md = Metadata::new();
/// md.push_decoded_known(METHOD, b"GET");
/// assert_eq!(md.get(":method"), Some("GET"));
/// assert_eq!(KnownText::lookup(b"content-type").map(|k| k.as_str()), Some("content-type"));
/// assert!(KnownText::lookup(b"x-unknown").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KnownText(Slot);

impl KnownText {
    /// `s`, which must be well-known: a constant made with a text that is not fails to
    /// compile (and a call at run time panics). For any text, see [`KnownText::lookup`].
    pub const fn of(s: &'static str) -> KnownText {
        let b = s.as_bytes();
        let n = b.len();
        assert!(n <= WELL_KNOWN_MAX, "not a well-known text");
        let mut i = BY_LENGTH[n];
        while i < BY_LENGTH[n + 1] {
            if bytes_eq(WELL_KNOWN[i].as_bytes(), b) {
                if let Some(slot) = Slot::new(Place::Known, i as u32, n) {
                    return KnownText(slot);
                }
            }
            i += 1;
        }
        panic!("not a well-known text")
    }

    /// `b` when it is a well-known text.
    pub fn lookup(b: &[u8]) -> Option<KnownText> {
        known(b).map(KnownText)
    }

    /// The text.
    pub fn as_str(self) -> &'static str {
        WELL_KNOWN
            .get(self.0.at() as usize)
            .copied()
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for KnownText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KnownText").field(&self.as_str()).finish()
    }
}

/// Byte equality that a `const fn` can use.
const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Metadata {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map for the entries of `frame`: keys and values added later that are
    /// slices of `frame` (a `&str` borrowed from it, or a `ByteString` sliced out of it)
    /// are kept as positions in it, without a copy.
    pub fn with_source(frame: Bytes) -> Self {
        Self {
            source: frame,
            ..Self::default()
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The byte range of `slot` in its place.
    fn range(slot: Slot) -> std::ops::Range<usize> {
        let at = slot.at() as usize;
        at..at + slot.len()
    }

    /// The bytes of `slot`.
    fn bytes(&self, slot: Slot) -> &[u8] {
        match slot.place() {
            Place::Source => self.source.get(Self::range(slot)).unwrap_or_default(),
            Place::Owned => self
                .owned
                .as_bytes()
                .get(Self::range(slot))
                .unwrap_or_default(),
            Place::Known => WELL_KNOWN
                .get(slot.at() as usize)
                .map_or(&[], |s| s.as_bytes()),
        }
    }

    /// The text of `slot`.
    fn text(&self, slot: Slot) -> &str {
        match slot.place() {
            Place::Source => std::str::from_utf8(self.bytes(slot)).unwrap_or_default(),
            Place::Owned => self.owned.get(Self::range(slot)).unwrap_or_default(),
            Place::Known => WELL_KNOWN
                .get(slot.at() as usize)
                .copied()
                .unwrap_or_default(),
        }
    }

    /// The position of `b` when it is a slice of the source frame (not yet checked to be
    /// UTF-8).
    #[inline]
    fn in_source(&self, b: &[u8]) -> Option<Slot> {
        let at = (b.as_ptr() as usize).wrapping_sub(self.source.as_ptr() as usize);
        if b.is_empty() || at >= self.source.len() || b.len() > self.source.len() - at {
            return None;
        }
        Slot::new(Place::Source, u32::try_from(at).ok()?, b.len())
    }

    /// Where `s` is kept: in the source frame when it is a slice of it, in the table of
    /// well-known text, or else copied into the map's own buffer. `None` only when a
    /// position would not fit in 32 bits (text past 4 GiB) or the text is over
    /// [`Slot::MAX_LEN`].
    fn slot(&mut self, s: &str) -> Option<Slot> {
        if let Some(slot) = self.in_source(s.as_bytes()) {
            return Some(slot);
        }
        if let Some(slot) = known(s.as_bytes()) {
            return Some(slot);
        }
        let at = u32::try_from(self.owned.len()).ok()?;
        at.checked_add(u32::try_from(s.len()).ok()?)?;
        let slot = Slot::new(Place::Owned, at, s.len())?;
        self.owned.push_str(s);
        Some(slot)
    }

    /// Where `b` is kept, as [`Metadata::slot`] does for text; `None` when `b` is not
    /// UTF-8. Bytes of the source frame are checked (one ASCII pass for most), not copied.
    /// That case, nearly every decoded key and value, is inlined into the decoder;
    /// anything else takes [`Metadata::slot_bytes_slow`].
    #[inline]
    fn slot_bytes(&mut self, b: &[u8]) -> Option<Slot> {
        match self.in_source(b) {
            Some(slot) if b.is_ascii() => Some(slot),
            _ => self.slot_bytes_slow(b),
        }
    }

    #[inline(never)]
    fn slot_bytes_slow(&mut self, b: &[u8]) -> Option<Slot> {
        match self.in_source(b) {
            Some(slot) if std::str::from_utf8(b).is_ok() => Some(slot),
            // A well-known text needs no check.
            _ => known(b).or_else(|| self.slot(std::str::from_utf8(b).ok()?)),
        }
    }

    /// Appends a decoded entry; false when either side could not be kept.
    fn push_entry(&mut self, key: Option<Slot>, value: Option<Slot>) -> bool {
        let (Some(k), Some(v)) = (key, value) else {
            return false;
        };
        self.entries.push((k, v));
        self.decoded = self.entries.len() as u32;
        true
    }

    /// Replaces the value of `key` with `value`, or appends an entry with the key
    /// `new_key` makes; false when either side could not be kept.
    fn insert_entry(
        &mut self,
        key: &[u8],
        value: Option<Slot>,
        new_key: impl FnOnce(&mut Self) -> Option<Slot>,
    ) -> bool {
        let Some(v) = value else { return false };
        match self.position_bytes(key) {
            Some(i) => {
                self.entries[i].1 = v;
                self.decoded = self.entries.len() as u32;
                true
            }
            None => {
                let k = new_key(self);
                self.push_entry(k, Some(v))
            }
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.position_bytes(key.as_bytes())
    }

    fn position_bytes(&self, key: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|&(k, _)| k.len() == key.len() && self.bytes(k).eq_ignore_ascii_case(key))
    }

    /// The value of `key`, compared case-insensitively.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| self.text(self.entries[i].1))
    }

    /// The value of `key` as its UTF-8 bytes, compared case-insensitively: what
    /// [`Metadata::get`] gives, without checking the bytes again to make them text. For
    /// comparing a value with another (exact and prefix matches, equality).
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        self.position(key).map(|i| self.bytes(self.entries[i].1))
    }

    /// True when `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Adds an entry while decoding: does not mark the map dirty and does not look for an
    /// existing key (codecs append each key once, in wire order).
    pub fn push_decoded(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let (k, v) = (self.slot(key.as_ref()), self.slot(value.as_ref()));
        self.push_entry(k, v);
    }

    /// Adds an entry while decoding, as [`Metadata::push_decoded`] does, from bytes: those
    /// of the source frame ([`Metadata::with_source`]) are kept where they are, checked
    /// once to be UTF-8 (a plain ASCII check for most). Adds nothing and returns false
    /// when either is not UTF-8.
    #[inline]
    pub fn push_decoded_bytes(&mut self, key: &[u8], value: &[u8]) -> bool {
        let (k, v) = (self.slot_bytes(key), self.slot_bytes(value));
        self.push_entry(k, v)
    }

    /// As [`Metadata::push_decoded_bytes`], under a well-known key found beforehand: the
    /// key takes no lookup and no check. Returns false, adding nothing, when the value is
    /// not UTF-8.
    #[inline]
    pub fn push_decoded_known(&mut self, key: KnownText, value: &[u8]) -> bool {
        let v = self.slot_bytes(value);
        self.push_entry(Some(key.0), v)
    }

    /// Adds or replaces an entry while decoding, without marking the map dirty: for wire
    /// formats where a repeated key overrides the earlier one (as a Java map does).
    pub fn insert_decoded(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let key = key.as_ref();
        let v = self.slot(value.as_ref());
        self.insert_entry(key.as_bytes(), v, |m| m.slot(key));
    }

    /// [`Metadata::insert_decoded`] from bytes, checked as [`Metadata::push_decoded_bytes`]
    /// checks them. Returns false, changing nothing, when either is not UTF-8. (A key
    /// equal to a present one but for ASCII case is UTF-8 like it.)
    pub fn insert_decoded_bytes(&mut self, key: &[u8], value: &[u8]) -> bool {
        let v = self.slot_bytes(value);
        self.insert_entry(key, v, |m| m.slot_bytes(key))
    }

    /// Sets `key` to `value`, replacing an existing entry in place or appending a new one.
    pub fn set(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.dirty = true;
        match self.position(key) {
            Some(i) => {
                if self.bytes(self.entries[i].1) == value.as_bytes() {
                    return;
                }
                if i < self.decoded as usize {
                    self.rewritten = true;
                }
                if let Some(v) = self.slot(value) {
                    self.entries[i].1 = v;
                }
            }
            None => self.push_absent(key, value),
        }
    }

    /// Appends an entry for a key the caller has just found absent, as [`Metadata::set`]
    /// would, without looking for it again.
    pub(crate) fn push_absent(&mut self, key: &str, value: &str) {
        debug_assert!(!self.contains(key));
        self.dirty = true;
        if let (Some(k), Some(v)) = (self.slot(key), self.slot(value)) {
            self.entries.push((k, v));
        }
    }

    /// As [`Metadata::push_absent`], under a well-known key found beforehand.
    pub(crate) fn push_absent_known(&mut self, key: KnownText, value: &str) {
        debug_assert!(!self.contains(key.as_str()));
        self.dirty = true;
        if let Some(v) = self.slot(value) {
            self.entries.push((key.0, v));
        }
    }

    /// The values of two keys (compared as [`Metadata::get`] compares them), found in one
    /// pass over the entries.
    pub(crate) fn get_two(&self, a: &str, b: &str) -> (Option<&str>, Option<&str>) {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut found_a, mut found_b) = (None, None);
        for &(k, v) in &self.entries {
            let n = k.len();
            if n == a.len() && found_a.is_none() && self.bytes(k).eq_ignore_ascii_case(a) {
                found_a = Some(v);
            } else if n == b.len() && found_b.is_none() && self.bytes(k).eq_ignore_ascii_case(b) {
                found_b = Some(v);
            }
        }
        (found_a.map(|v| self.text(v)), found_b.map(|v| self.text(v)))
    }

    /// Removes `key`; returns its old value.
    pub fn remove(&mut self, key: &str) -> Option<ByteString> {
        let i = self.position(key)?;
        self.dirty = true;
        if i < self.decoded as usize {
            self.rewritten = true;
            self.decoded -= 1;
        }
        let (_, v) = self.entries.remove(i);
        Some(match v.place() {
            Place::Source => {
                ByteString::try_from(self.source.slice(Self::range(v))).unwrap_or_default()
            }
            Place::Known => WELL_KNOWN
                .get(v.at() as usize)
                .map_or_else(ByteString::new, |s| ByteString::from_static(s)),
            Place::Owned => ByteString::from(self.text(v)),
        })
    }

    /// The entries added since decoding, when that is the only change: every decoded
    /// entry still holds its decoded value. A codec can then append these to the
    /// original metadata section instead of writing it anew. `None` when nothing changed
    /// or a decoded entry was changed or removed.
    pub fn appended(&self) -> Option<impl Iterator<Item = (&str, &str)> + Clone> {
        (self.dirty && !self.rewritten).then(|| {
            self.entries[self.decoded as usize..]
                .iter()
                .map(|&(k, v)| (self.text(k), self.text(v)))
        })
    }

    /// True once `set` or `remove` changed the map since it was decoded.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|&(k, v)| (self.text(k), self.text(v)))
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.iter().eq(other.iter())
            && self.decoded == other.decoded
            && self.dirty == other.dirty
            && self.rewritten == other.rewritten
    }
}

impl Eq for Metadata {}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("entries", &MapView(self))
            .field("dirty", &self.dirty)
            .field("decoded", &self.decoded)
            .field("rewritten", &self.rewritten)
            .finish()
    }
}

struct MapView<'a>(&'a Metadata);

impl std::fmt::Debug for MapView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
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
            metadata: Metadata::with_source(frame.clone()),
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

    /// Place, position and length of an entry's key and value.
    fn view((k, v): (Slot, Slot)) -> ((Place, u32, usize), (Place, u32, usize)) {
        ((k.place(), k.at(), k.len()), (v.place(), v.at(), v.len()))
    }

    fn places((k, v): (Slot, Slot)) -> (Place, Place) {
        (k.place(), v.place())
    }

    #[test]
    fn a_slot_packs_its_place_position_and_length() {
        for place in [Place::Source, Place::Owned, Place::Known] {
            for (at, len) in [(0, 0), (7, 3), (u32::MAX, Slot::MAX_LEN)] {
                let s = Slot::new(place, at, len).unwrap();
                assert_eq!((s.place(), s.at(), s.len()), (place, at, len));
            }
            assert_eq!(Slot::new(place, 0, Slot::MAX_LEN + 1), None);
        }
        assert_eq!(std::mem::size_of::<(Slot, Slot)>(), 16);
        // Twelve entries inline take the room eight took before the slots were packed.
        assert_eq!(
            std::mem::size_of::<SmallVec<[(Slot, Slot); INLINE_ENTRIES]>>(),
            std::mem::size_of::<SmallVec<[([u32; 3], [u32; 3]); 8]>>()
        );
    }

    #[test]
    fn a_map_of_twelve_entries_does_not_allocate_for_them() {
        let mut m = Metadata::new();
        for i in 0..INLINE_ENTRIES {
            m.push_decoded(["interface", "method", "version", "group"][i % 4], "true");
        }
        assert!(!m.entries.spilled());
        m.set("path", "true");
        assert!(
            m.entries.spilled(),
            "the thirteenth entry moves them to the heap"
        );
    }

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
    fn known_texts_are_found_at_compile_time_and_at_run_time() {
        const STATUS: KnownText = KnownText::of(":status");
        assert_eq!(STATUS.as_str(), ":status");
        for k in WELL_KNOWN {
            let found = KnownText::lookup(k.as_bytes()).expect("every table text");
            assert_eq!(found.as_str(), *k);
            assert_eq!(KnownText::of(k), found);
        }
        assert!(KnownText::lookup(b"x-not-known").is_none());
        assert!(std::panic::catch_unwind(|| KnownText::of("x-not-known")).is_err());
        let mut md = Metadata::with_source(Bytes::from_static(b"200"));
        let value = md.source.clone();
        assert!(md.push_decoded_known(STATUS, &value));
        assert!(
            !md.push_decoded_known(STATUS, b"\xff"),
            "a value must be UTF-8"
        );
        assert_eq!((md.len(), md.get(":status")), (1, Some("200")));
        assert!(!md.is_dirty());
    }

    #[test]
    fn well_known_texts_are_found_by_length() {
        assert!(WELL_KNOWN.iter().all(|k| k.len() <= WELL_KNOWN_MAX));
        assert!(
            WELL_KNOWN
                .windows(2)
                .all(|w| (w[0].len(), w[0].as_bytes()) < (w[1].len(), w[1].as_bytes())),
            "sorted by length, then bytes, without repeats"
        );
        for (i, k) in WELL_KNOWN.iter().enumerate() {
            assert_eq!(well_known(k.as_bytes()), Some(i as u32), "{k:?}");
        }
        for miss in [
            "x",
            "Interface",
            "interfacf",
            "x-request-ids",
            &"a".repeat(100),
        ] {
            assert_eq!(well_known(miss.as_bytes()), None, "{miss:?}");
        }
    }

    #[test]
    fn text_is_kept_where_it_is() {
        let frame = Bytes::from_static(b"interface=a.B;note=\xe2\x9c\x93");
        let text = std::str::from_utf8(&frame).unwrap();
        let mut m = Metadata::with_source(frame.clone());
        m.push_decoded(&text[..9], &text[10..13]);
        m.push_decoded("interface", "batch");
        let owned = String::from("note");
        m.push_decoded(owned.as_str(), "checked \u{2713}");
        assert_eq!(
            view(m.entries[0]),
            ((Place::Source, 0, 9), (Place::Source, 10, 3))
        );
        assert_eq!(places(m.entries[1]), (Place::Known, Place::Owned));
        assert_eq!(places(m.entries[2]), (Place::Owned, Place::Owned));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [
                ("interface", "a.B"),
                ("interface", "batch"),
                ("note", "checked \u{2713}")
            ]
        );
        // Another buffer with the same bytes is not the source.
        let copy = Bytes::copy_from_slice(&frame);
        m.insert_decoded(
            std::str::from_utf8(&copy[..9]).unwrap(),
            &std::str::from_utf8(&copy).unwrap()[10..13],
        );
        assert_eq!(
            m.entries[0].1.place(),
            Place::Owned,
            "text of another buffer is copied"
        );
        assert_eq!(m.get("INTERFACE"), Some("a.B"));
        // The bytes of each kind of slot are the text's bytes.
        for (k, v) in [("interface", "a.B"), ("note", "checked \u{2713}")] {
            assert_eq!(m.get_bytes(k), Some(v.as_bytes()), "{k}");
        }
        assert_eq!(m.get_bytes("absent"), None);
        assert_eq!(m.remove("interface").as_deref(), Some("a.B"));
        assert_eq!(m.remove("interface").as_deref(), Some("batch"));
        assert_eq!(m.remove("note").as_deref(), Some("checked \u{2713}"));
        assert!(m.is_empty());
        let mut a = Metadata::new();
        a.push_decoded("interface", "a.B");
        let mut b = Metadata::with_source(frame.clone());
        b.push_decoded(&text[..9], &text[10..13]);
        assert_eq!(a, b, "maps compare by their text");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn bytes_are_checked_once_and_kept_where_they_are() {
        let frame = Bytes::from_static(b"batchjob=true;k=\xe2\x9c\x93;bad=\xff\xfe");
        let mut m = Metadata::with_source(frame.clone());
        assert!(m.push_decoded_bytes(&frame[..8], &frame[9..13]));
        assert!(m.push_decoded_bytes(b"interface", &frame[16..19]));
        assert!(
            !m.push_decoded_bytes(&frame[20..23], &frame[24..26]),
            "not UTF-8"
        );
        assert!(!m.insert_decoded_bytes(b"k", b"\xc3"), "not UTF-8");
        assert!(m.insert_decoded_bytes(b"BATCHJOB", b"false"));
        assert!(m.insert_decoded_bytes(b"note", b"copied"));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [
                ("batchjob", "false"),
                ("interface", "\u{2713}"),
                ("note", "copied")
            ]
        );
        assert_eq!(view(m.entries[0]).0, (Place::Source, 0, 8));
        assert_eq!(places(m.entries[1]), (Place::Known, Place::Source));
        assert_eq!(view(m.entries[1]).1, (Place::Source, 16, 3));
        assert_eq!(m.entries[0].1.place(), Place::Known, "a well-known value");
        assert_eq!(places(m.entries[2]), (Place::Owned, Place::Owned));
        assert!(!m.is_dirty());
        assert_eq!(m.appended().map(Iterator::count), None);
    }

    #[test]
    fn short_owned_text_stays_in_the_map_and_longer_text_moves_out_intact() {
        let mut m = Metadata::new();
        let id = "0b9d3c1e-6f4a-4c6e-9a8b-2f1e0d3c4b5a";
        m.set("x-request-id", id);
        m.set("x-tier", "batch");
        assert!(!m.owned.spilled(), "{} bytes kept inline", m.owned.len());
        m.set("x-long", "a value long enough to need a buffer of its own");
        assert!(m.owned.spilled());
        assert_eq!(m.get("x-request-id"), Some(id));
        assert_eq!(m.get("x-tier"), Some("batch"));
        assert_eq!(
            m.get("x-long"),
            Some("a value long enough to need a buffer of its own")
        );
    }

    #[test]
    fn two_keys_are_found_in_one_pass_as_get_finds_them() {
        let mut m = Metadata::new();
        m.push_decoded("TraceParent", "first");
        m.push_decoded("x-other", "1");
        m.push_decoded("traceparent", "second");
        assert_eq!(
            m.get_two("x-request-id", "traceparent"),
            (None, Some("first"))
        );
        m.push_decoded("X-Request-Id", "id");
        assert_eq!(
            m.get_two("x-request-id", "traceparent"),
            (Some("id"), Some("first"))
        );
        assert_eq!(m.get_two("x-other", "x-other"), (Some("1"), None));
        assert_eq!(m.get_two("absent", "x-othe"), (None, None));
    }

    #[test]
    fn setting_an_equal_value_changes_nothing_but_the_dirty_mark() {
        let mut m = Metadata::new();
        m.push_decoded("a", "1");
        let copied = m.owned.len();
        m.set("a", "1");
        assert!(m.is_dirty());
        assert_eq!(m.appended().expect("not rewritten").count(), 0);
        assert_eq!(m.owned.len(), copied, "nothing copied");
    }

    #[test]
    fn keys_of_different_length_do_not_match() {
        let mut m = Metadata::new();
        m.push_decoded("ab", "1");
        assert_eq!(m.get("a"), None);
        assert_eq!(m.get("abc"), None);
    }
}
