//! What the proxy tells about each request: metrics when it ends, an access log line
//! (formatted and written by a thread of its own, never by the request path), and the
//! request id and trace context it carries upstream.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::stats::Counter;
use tokio::time::Instant;

use crate::config::{self, AccessLogFormat};
use crate::message::{KnownText, LocalReplyKind, Message, ResponseClass};
use crate::router::Route;
use crate::stats::{ListenerStats, Stats};

/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// Metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Access log entries waiting for the writer; past this, entries are dropped (and
/// counted) rather than slowing requests down.
const QUEUE: usize = 16 * 1024;

/// The default line of `format: text`.
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%PROTOCOL% %SERVICE% %METHOD% %PATH%\" %RESPONSE_CODE% %RESPONSE_CLASS% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%REQUEST_ID%\" \"%UPSTREAM_HOST%\" %ROUTE_NAME% %UPSTREAM_CLUSTER% %LISTENER% %DOWNSTREAM_REMOTE_ADDRESS%";

/// A random version 4 UUID, as a request id.
pub fn new_request_id() -> String {
    let mut out = [0u8; 36];
    request_id_into(&mut out).to_owned()
}

/// The two lowercase hex digits of each byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// Writes a random version 4 UUID into `out`, and returns it as text. The bits come from
/// a generator of the calling thread (xoshiro256++, seeded from the operating system's
/// entropy when the thread first asks): request ids have to be unique, not secret, and
/// this costs a few instructions where a cryptographic generator costs hundreds.
fn request_id_into(out: &mut [u8; 36]) -> &str {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    thread_local! {
        static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_entropy());
    }
    let v: u128 = RNG.with(|r| r.borrow_mut().gen());
    // Version 4, variant 10.
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    // Where each byte's two digits go: the dashes are at 8, 13, 18 and 23. A fixed
    // number of table lookups, which the compiler unrolls.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (&at, byte) in AT.iter().zip(v.to_be_bytes()) {
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    for dash in [8, 13, 18, 23] {
        out[dash] = b'-';
    }
    // Only ASCII hex digits and dashes were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// The `traceparent` of the proxy's span for a request that arrived with `parent`: the
/// same trace id and flags, a new span id. `None` when `parent` is not a valid
/// version-00 (or later, read as 00) trace context.
pub fn child_traceparent(parent: &str) -> Option<String> {
    let b = parent.as_bytes();
    // version "-" trace-id "-" parent-id "-" flags; later versions may append fields.
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    if b.len() > 55 && (b[55] != b'-' || &parent[..2] == "00") {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    let (version, trace, span, flags) = (
        &parent[..2],
        &parent[3..35],
        &parent[36..52],
        &parent[53..55],
    );
    if !lower_hex(version)
        || version == "ff"
        || !lower_hex(trace)
        || !lower_hex(span)
        || !lower_hex(flags)
    {
        return None;
    }
    if trace.bytes().all(|c| c == b'0') || span.bytes().all(|c| c == b'0') {
        return None;
    }
    let mut id: u64 = rand::random();
    if id == 0 {
        id = 1;
    }
    Some(format!("00-{trace}-{id:016x}-{flags}"))
}

/// Gives `req` a request id when it has none and the proxy's span when it carries a
/// trace context, as `tracing` says.
pub fn propagate(tracing: &config::Tracing, req: &mut Message) {
    if !tracing.request_id && !tracing.traceparent {
        return;
    }
    // One pass over the request's entries finds both.
    let (id, parent) = req.metadata.get_two(REQUEST_ID, TRACEPARENT);
    let add_id = tracing.request_id && id.is_none();
    let child = parent
        .filter(|_| tracing.traceparent)
        .and_then(child_traceparent);
    if add_id {
        let mut id = [0u8; 36];
        req.metadata
            .push_absent_known(REQUEST_ID_KEY, request_id_into(&mut id));
    }
    if let Some(child) = child {
        req.metadata.set(TRACEPARENT, child);
    }
}

/// [`REQUEST_ID`], found in the table of well-known texts at compile time.
const REQUEST_ID_KEY: KnownText = KnownText::of(REQUEST_ID);

/// One field of a text line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(Field),
    Req(String),
}

/// The operators of `text_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    StartTime,
    Listener,
    Protocol,
    Downstream,
    Service,
    Method,
    Path,
    Route,
    Cluster,
    Upstream,
    Code,
    Class,
    Flags,
    Duration,
    BytesReceived,
    BytesSent,
    Attempts,
    RequestId,
    TraceId,
    SpanId,
}

const FIELDS: &[(&str, Field)] = &[
    ("START_TIME", Field::StartTime),
    ("LISTENER", Field::Listener),
    ("PROTOCOL", Field::Protocol),
    ("DOWNSTREAM_REMOTE_ADDRESS", Field::Downstream),
    ("SERVICE", Field::Service),
    ("METHOD", Field::Method),
    ("PATH", Field::Path),
    ("ROUTE_NAME", Field::Route),
    ("UPSTREAM_CLUSTER", Field::Cluster),
    ("UPSTREAM_HOST", Field::Upstream),
    ("RESPONSE_CODE", Field::Code),
    ("RESPONSE_CLASS", Field::Class),
    ("RESPONSE_FLAGS", Field::Flags),
    ("DURATION", Field::Duration),
    ("BYTES_RECEIVED", Field::BytesReceived),
    ("BYTES_SENT", Field::BytesSent),
    ("ATTEMPTS", Field::Attempts),
    ("REQUEST_ID", Field::RequestId),
    ("TRACE_ID", Field::TraceId),
    ("SPAN_ID", Field::SpanId),
];

/// A parsed `text_format`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineFormat(Vec<Piece>);

impl LineFormat {
    /// Parses a line with `%OPERATOR%` and `%REQ(key)%` fields; `%%` is a percent sign.
    pub fn parse(text: &str) -> Result<LineFormat, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let Some(end) = after.find('%') else {
                return Err(format!("unclosed % at byte {at}"));
            };
            let name = &after[..end];
            let piece =
                if let Some(key) = name.strip_prefix("REQ(").and_then(|k| k.strip_suffix(')')) {
                    if key.is_empty() {
                        return Err("%REQ()% needs a metadata key".into());
                    }
                    Piece::Req(key.to_owned())
                } else {
                    match FIELDS.iter().find(|(n, _)| *n == name) {
                        Some((_, f)) => Piece::Field(*f),
                        None => return Err(format!("unknown field %{name}%")),
                    }
                };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(LineFormat(pieces))
    }

    /// The metadata keys the line reads with `%REQ(key)%`.
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Req(k) => Some(k.as_str()),
            _ => None,
        })
    }
}

/// One request, as the access log tells it.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// When the request was decoded.
    pub start: Option<SystemTime>,
    /// Listener name.
    pub listener: Arc<str>,
    /// Protocol name.
    pub protocol: String,
    /// The client's address.
    pub downstream: Option<SocketAddr>,
    /// Service, interface or authority.
    pub service: Option<String>,
    /// Method.
    pub method: Option<String>,
    /// Path.
    pub path: Option<String>,
    /// Matched route.
    pub route: Option<Arc<str>>,
    /// Cluster of the last attempt.
    pub cluster: Option<String>,
    /// Endpoint of the last attempt.
    pub upstream: Option<SocketAddr>,
    /// Protocol status of the answer (HTTP status, Dubbo status byte, ...).
    pub status: Option<u32>,
    /// Class of the answer.
    pub class: Option<ResponseClass>,
    /// Why the proxy answered itself, if it did.
    pub local_reply: Option<LocalReplyKind>,
    /// From decoding to the answer.
    pub duration: Duration,
    /// Request bytes (head and body).
    pub bytes_received: u64,
    /// Response bytes (head and body).
    pub bytes_sent: u64,
    /// Upstream attempts.
    pub attempts: u32,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `traceparent` as sent upstream.
    pub traceparent: Option<String>,
    /// Logged metadata values, by key.
    pub metadata: Vec<(String, Option<String>)>,
}

impl Entry {
    fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.get(3..35))
    }

    fn span_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.get(36..52))
    }

    fn duration_ms(&self) -> f64 {
        self.duration.as_secs_f64() * 1e3
    }

    /// The entry as one JSON object.
    pub fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            if !v.is_null() {
                o.insert(k.to_owned(), v);
            }
        };
        put("start_time", self.start.map(rfc3339).into());
        put("listener", (*self.listener).into());
        put("protocol", self.protocol.as_str().into());
        put(
            "downstream_remote_address",
            self.downstream.map(|a| a.to_string()).into(),
        );
        put("service", self.service.clone().into());
        put("method", self.method.clone().into());
        put("path", self.path.clone().into());
        put("route", self.route.as_deref().into());
        put("upstream_cluster", self.cluster.clone().into());
        put("upstream_host", self.upstream.map(|a| a.to_string()).into());
        put("response_code", self.status.into());
        put(
            "response_class",
            self.class.map(ResponseClass::as_str).into(),
        );
        put(
            "local_reply",
            self.local_reply.map(LocalReplyKind::as_str).into(),
        );
        put(
            "duration_ms",
            ((self.duration_ms() * 1e3).round() / 1e3).into(),
        );
        put("bytes_received", self.bytes_received.into());
        put("bytes_sent", self.bytes_sent.into());
        put("attempts", self.attempts.into());
        put("request_id", self.request_id.clone().into());
        put("trace_id", self.trace_id().into());
        put("span_id", self.span_id().into());
        if !self.metadata.is_empty() {
            let md: serde_json::Map<String, serde_json::Value> = self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            put("metadata", md.into());
        }
        serde_json::Value::Object(o).to_string()
    }

    /// The entry as a line of `format`.
    pub fn to_text(&self, format: &LineFormat) -> String {
        let mut out = String::with_capacity(256);
        let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
        for p in &format.0 {
            let s = match p {
                Piece::Literal(l) => {
                    out.push_str(l);
                    continue;
                }
                Piece::Req(k) => opt(self
                    .metadata
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .and_then(|(_, v)| v.as_deref())),
                Piece::Field(f) => match f {
                    Field::StartTime => opt(self.start.map(rfc3339).as_deref()),
                    Field::Listener => self.listener.to_string(),
                    Field::Protocol => self.protocol.clone(),
                    Field::Downstream => opt(self.downstream.map(|a| a.to_string()).as_deref()),
                    Field::Service => opt(self.service.as_deref()),
                    Field::Method => opt(self.method.as_deref()),
                    Field::Path => opt(self.path.as_deref()),
                    Field::Route => opt(self.route.as_deref()),
                    Field::Cluster => opt(self.cluster.as_deref()),
                    Field::Upstream => opt(self.upstream.map(|a| a.to_string()).as_deref()),
                    Field::Code => opt(self.status.map(|s| s.to_string()).as_deref()),
                    Field::Class => opt(self.class.map(ResponseClass::as_str)),
                    Field::Flags => opt(self.local_reply.map(LocalReplyKind::as_str)),
                    Field::Duration => self.duration.as_millis().to_string(),
                    Field::BytesReceived => self.bytes_received.to_string(),
                    Field::BytesSent => self.bytes_sent.to_string(),
                    Field::Attempts => self.attempts.to_string(),
                    Field::RequestId => opt(self.request_id.as_deref()),
                    Field::TraceId => opt(self.trace_id()),
                    Field::SpanId => opt(self.span_id()),
                },
            };
            out.push_str(&s);
        }
        out
    }
}

/// `2026-11-21T06:04:06.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        d.subsec_millis()
    );
    s
}

/// Writes access log entries from a thread of its own.
pub struct AccessLogger {
    config: config::AccessLog,
    tx: mpsc::SyncSender<Entry>,
    keys: Vec<String>,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl AccessLogger {
    /// Opens the file (appending) and starts the writer.
    pub fn start(config: &config::AccessLog, stats: &Stats) -> Result<Arc<AccessLogger>, String> {
        let format = match (&config.format, &config.text_format) {
            (AccessLogFormat::Text, Some(f)) => Some(LineFormat::parse(f)?),
            (AccessLogFormat::Text, None) => Some(LineFormat::parse(DEFAULT_TEXT_FORMAT)?),
            (AccessLogFormat::Json, _) => None,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| format!("cannot open {}: {e}", config.path))?;
        let mut keys = config.metadata.clone();
        if let Some(f) = &format {
            for k in f.keys() {
                if !keys.iter().any(|have| have.eq_ignore_ascii_case(k)) {
                    keys.push(k.to_owned());
                }
            }
        }
        let (tx, rx) = mpsc::sync_channel::<Entry>(QUEUE);
        let (written, failed) = (stats.access_log("written"), stats.access_log("failed"));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
                // Ends when every sender (the logger and its clones) is gone.
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(e) = next.take() {
                        let mut line = match &format {
                            Some(f) => e.to_text(f),
                            None => e.to_json(),
                        };
                        line.push('\n');
                        match out.write_all(line.as_bytes()) {
                            Ok(()) => written.inc(),
                            Err(_) => failed.inc(),
                        };
                        next = rx.try_recv().ok();
                    }
                    if out.flush().is_err() {
                        failed.inc();
                    }
                }
            })
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(Arc::new(AccessLogger {
            config: config.clone(),
            tx,
            keys,
            dropped: stats.access_log("dropped"),
        }))
    }

    /// True when this logger was started from `config`.
    pub fn is_for(&self, config: &config::AccessLog) -> bool {
        self.config == *config
    }

    /// Queues `entry`; drops it (counted) when the writer is behind.
    pub fn log(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.inc();
        }
    }
}

/// One request from decoding to its answer. Its metrics (duration, class, bytes) and
/// access log entry are recorded when it is dropped, whichever way the request ended.
pub(crate) struct Observed<'s> {
    stats: &'s ListenerStats,
    start: Instant,
    route: Option<&'s Route>,
    class: Option<ResponseClass>,
    /// Request bytes.
    pub(crate) rx_bytes: u64,
    /// Response bytes.
    pub(crate) tx_bytes: u64,
    log: Option<(Arc<AccessLogger>, Box<Entry>)>,
}

impl<'s> Observed<'s> {
    /// When the request was read.
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    /// Starts observing a request just decoded, read at `received`.
    pub(crate) fn start(
        stats: &'s ListenerStats,
        logger: Option<&Arc<AccessLogger>>,
        listener: &Arc<str>,
        (peer, received): (Option<SocketAddr>, Instant),
        req: &Message,
    ) -> Observed<'s> {
        stats.rq_active.inc();
        let log = logger.map(|l| {
            let entry = Entry {
                start: Some(SystemTime::now()),
                listener: listener.clone(),
                downstream: peer,
                ..Entry::default()
            };
            (l.clone(), Box::new(entry))
        });
        Observed {
            stats,
            start: received,
            route: None,
            class: None,
            rx_bytes: req.frame.len() as u64,
            tx_bytes: 0,
            log,
        }
    }

    /// Notes what the request asks for, once the listener's hooks and the route have
    /// had their say (so a generated request id and mutations show).
    pub(crate) fn request(&mut self, protocol: &dyn crate::codec::Protocol, req: &Message) {
        let Some((logger, e)) = &mut self.log else {
            return;
        };
        let op = protocol.operation(req);
        e.protocol = protocol.name().to_owned();
        e.service = op.service.map(str::to_owned);
        e.method = op.method.map(str::to_owned);
        e.path = op.path.map(str::to_owned);
        e.request_id = req.metadata.get(REQUEST_ID).map(str::to_owned);
        e.traceparent = req.metadata.get(TRACEPARENT).map(str::to_owned);
        e.metadata = logger
            .keys
            .iter()
            .map(|k| (k.clone(), req.metadata.get(k).map(str::to_owned)))
            .collect();
    }

    /// Notes the matched route.
    pub(crate) fn route(&mut self, route: &'s Route) {
        self.route = Some(route);
        if let Some((_, e)) = &mut self.log {
            e.route = Some(route.name.clone());
        }
    }

    /// Notes an upstream attempt to `endpoint` of `cluster`.
    pub(crate) fn attempt(&mut self, cluster: &str, endpoint: SocketAddr) {
        if let Some((_, e)) = &mut self.log {
            e.attempts += 1;
            if e.cluster.as_deref() != Some(cluster) {
                e.cluster = Some(cluster.to_owned());
            }
            e.upstream = Some(endpoint);
        }
    }

    /// Notes the answer the client gets: an upstream's response or a local reply.
    pub(crate) fn answer(
        &mut self,
        protocol: &dyn crate::codec::Protocol,
        answer: &Message,
        local: Option<LocalReplyKind>,
    ) {
        let class = protocol.response_class(answer);
        self.answered(class, answer.status, answer.frame.len() as u64, local);
    }

    /// [`Observed::answer`] from the answer's parts.
    pub(crate) fn answered(
        &mut self,
        class: ResponseClass,
        status: Option<u32>,
        bytes: u64,
        local: Option<LocalReplyKind>,
    ) {
        self.class = Some(class);
        self.tx_bytes += bytes;
        if let Some((_, e)) = &mut self.log {
            e.status = status;
            e.local_reply = local;
        }
    }

    /// Notes a local reply that was not sent (the request was oneway).
    pub(crate) fn unanswered(&mut self, local: LocalReplyKind) {
        if let Some((_, e)) = &mut self.log {
            e.local_reply = Some(local);
        }
    }
}

impl Drop for Observed<'_> {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        self.stats.rq_active.dec();
        self.stats.rq_duration.observe(took);
        self.stats.rx_bytes.inc_by(self.rx_bytes);
        self.stats.tx_bytes.inc_by(self.tx_bytes);
        if let Some(class) = self.class {
            self.stats.responses.inc(class);
            if let Some(r) = self.route {
                r.responses.inc(class);
            }
        }
        if let Some((logger, mut e)) = self.log.take() {
            e.duration = took;
            e.class = self.class;
            e.bytes_received = self.rx_bytes;
            e.bytes_sent = self.tx_bytes;
            logger.log(*e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_pairs_are_each_bytes_two_digits() {
        for b in 0..=255u8 {
            assert_eq!(HEX_PAIRS[usize::from(b)], *format!("{b:02x}").as_bytes());
        }
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            a.bytes()
                .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{a}"
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_gets_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(parent).expect("valid");
        assert_eq!(&child[..36], &parent[..36]);
        assert_eq!(&child[52..], "-01");
        assert_ne!(&child[36..52], &parent[36..52]);
        assert!(child_traceparent(&child).is_some());
        // A later version with more fields is read as version 00.
        let v1 = format!("01{}-extra", &parent[2..]);
        assert!(child_traceparent(&v1).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(child_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn propagation_adds_a_request_id_only_when_missing() {
        let mut m = Message::new(crate::MessageKind::Request, 1, bytes::Bytes::new());
        propagate(&config::Tracing::default(), &mut m);
        let id = m.metadata.get(REQUEST_ID).expect("generated").to_owned();
        propagate(&config::Tracing::default(), &mut m);
        assert_eq!(m.metadata.get(REQUEST_ID), Some(id.as_str()));
        let off = config::Tracing {
            request_id: false,
            traceparent: false,
        };
        let mut n = Message::new(crate::MessageKind::Request, 1, bytes::Bytes::new());
        propagate(&off, &mut n);
        assert!(n.metadata.is_empty());
    }

    #[test]
    fn propagation_makes_a_child_span_of_the_trace_the_request_carries() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for request_id in [true, false] {
            let tracing = config::Tracing {
                request_id,
                traceparent: true,
            };
            let mut m = Message::new(crate::MessageKind::Request, 1, bytes::Bytes::new());
            m.metadata.push_decoded("TraceParent", parent);
            propagate(&tracing, &mut m);
            let child = m.metadata.get(TRACEPARENT).expect("kept");
            assert_ne!(child, parent);
            assert_eq!(child[..36], parent[..36], "same trace");
            assert_eq!(child[52..], parent[52..], "same flags");
            assert_eq!(m.metadata.contains(REQUEST_ID), request_id);
            assert_eq!(m.metadata.len(), 1 + usize::from(request_id));
        }
    }

    #[test]
    fn text_formats_parse_and_render() {
        let f = LineFormat::parse("%PROTOCOL% %REQ(batchjob)% 100%% %RESPONSE_FLAGS% %DURATION%ms")
            .expect("parses");
        let e = Entry {
            protocol: "dubbo".into(),
            metadata: vec![("batchjob".into(), Some("true".into()))],
            local_reply: Some(LocalReplyKind::NoRoute),
            duration: Duration::from_millis(12),
            ..Entry::default()
        };
        assert_eq!(e.to_text(&f), "dubbo true 100% no_route 12ms");
        assert!(LineFormat::parse(DEFAULT_TEXT_FORMAT).is_ok());
        assert_eq!(
            LineFormat::parse("%NOPE%").unwrap_err(),
            "unknown field %NOPE%"
        );
        assert!(LineFormat::parse("%PROTOCOL").is_err());
        assert!(LineFormat::parse("%REQ()%").is_err());
    }

    #[test]
    fn json_entries_leave_out_what_is_unknown() {
        let e = Entry {
            start: Some(UNIX_EPOCH + Duration::from_millis(1_795_240_000_123)),
            listener: "in".into(),
            protocol: "http".into(),
            status: Some(503),
            class: Some(ResponseClass::Status5xx),
            local_reply: Some(LocalReplyKind::NoHealthyUpstream),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..Entry::default()
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(v["start_time"], "2026-11-21T05:46:40.123Z");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_class"], "5xx");
        assert_eq!(v["local_reply"], "no_healthy_upstream");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert!(v.get("route").is_none() && v.get("upstream_host").is_none());
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
