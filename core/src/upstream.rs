//! Upstream connection pools. For multiplexing protocols an endpoint keeps a few shared
//! connections; every request gets a fresh request id on the connection it is sent on,
//! so requests from many downstream connections (which may reuse the same ids) never
//! collide, and the response is handed back to the caller that owns the id.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::stats::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::codec::{Codec, CodecOptions, EncodedFrame, Protocol, ProtocolOptions, Side};
use crate::health::{ClusterShared, HealthCheckSettings, HostHealth, OwnedResourceGuard, Resource};
use crate::io::{FrameWriter, OutQueue};
use crate::message::{LocalReplyKind, Message, MessageKind, ResponseClass};
use crate::stats::{ByClass, ClusterStats};

/// Why an upstream request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The connection could not be established.
    #[error("connect to {0} failed: {1}")]
    ConnectFailed(SocketAddr, String),
    /// The connection closed before the response arrived.
    #[error("upstream connection closed before the response")]
    Reset,
    /// The request could not be encoded.
    #[error("request could not be encoded: {0}")]
    Encode(String),
    /// A circuit breaker of the cluster refused the request.
    #[error("upstream overflow: the cluster's {} limit is reached", .0.as_str())]
    Overflow(Resource),
    /// The deadline passed before the response came.
    #[error("upstream request timeout")]
    Timeout,
}

impl UpstreamError {
    /// The local reply this error becomes.
    pub fn local_reply_kind(&self) -> LocalReplyKind {
        match self {
            UpstreamError::ConnectFailed(..) => LocalReplyKind::UpstreamConnectFailure,
            UpstreamError::Reset => LocalReplyKind::UpstreamReset,
            UpstreamError::Encode(_) => LocalReplyKind::Internal,
            UpstreamError::Overflow(_) => LocalReplyKind::Overloaded,
            UpstreamError::Timeout => LocalReplyKind::Timeout,
        }
    }

    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::ConnectFailed(..) => "connect_failure",
            UpstreamError::Reset => "reset",
            UpstreamError::Encode(_) => "encode",
            UpstreamError::Overflow(_) => "overflow",
            UpstreamError::Timeout => "timeout",
        }
    }
}

/// A response, boxed (it is handed on several times before it is encoded, and a message
/// is 600 bytes to copy), with when it was read.
type Reply = Result<(Box<Message>, Instant), UpstreamError>;

/// Encoded requests a connection queues before the next caller waits for room.
const MAX_QUEUED: usize = 1024 * 1024;

/// Hashes the request ids of one upstream connection. They are the proxy's own
/// (sequential, never chosen by a peer), so one multiplication spreads them over the
/// table: no keyed hash is needed to resist collisions made on purpose.
#[derive(Clone, Copy, Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A request waiting for its response.
struct Waiter {
    tx: oneshot::Sender<Reply>,
    deadline: Instant,
}

/// The requests waiting on one connection, and when the reader next looks for those
/// past their deadline.
#[derive(Default)]
struct Pending {
    waiting: IdMap<Waiter>,
    /// What the reader's timer is set for: no later than any waiting request's deadline.
    /// `None` when it is not set.
    timer: Option<Instant>,
}

/// A connection's requests on their way out.
///
/// Each caller encodes its request into the queue itself. On a connection with nothing
/// else in flight it also writes it, at once and from its own task; otherwise (under
/// load) it hands the queue to the writer task, which lets the other callers about to
/// queue theirs run first, so that their requests leave in one write.
struct Outgoing {
    codec: Box<dyn Codec>,
    queue: OutQueue,
    wr: OwnedWriteHalf,
    /// The writer task has been handed the queue and will write it.
    handed: bool,
    /// A caller found the queue full and waits for room.
    wants_room: bool,
    /// No more requests: the writer writes what is queued and closes the connection.
    finished: bool,
}

/// State shared by a connection's handle, reader and writer.
///
/// Deadlines are kept by the connection rather than by a timer per request: the reader
/// has one timer, set for the earliest deadline it knows of, and answers the requests
/// past theirs with [`UpstreamError::Timeout`] when it fires. A request whose deadline
/// comes before the timer (a shorter timeout than the others', or the first after the
/// timer ran out) moves it earlier and wakes the reader; any other costs no timer work.
struct Shared {
    pending: Mutex<Pending>,
    closed: AtomicBool,
    /// Set when a request moved the timer earlier.
    rearm: AtomicBool,
    reader: AtomicWaker,
    out: Mutex<Outgoing>,
    writer: AtomicWaker,
    /// Signalled when a full queue was written.
    room: Notify,
}

impl Shared {
    fn new(codec: Box<dyn Codec>, wr: OwnedWriteHalf) -> Self {
        Self {
            pending: Mutex::default(),
            closed: AtomicBool::new(false),
            rearm: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            out: Mutex::new(Outgoing {
                codec,
                queue: OutQueue::default(),
                wr,
                handed: false,
                wants_room: false,
                finished: false,
            }),
            writer: AtomicWaker::new(),
            room: Notify::new(),
        }
    }

    /// Encodes `msg` as request `id` into the queue: `Ok(false)` when the queue is full
    /// (nothing was queued). With `now`, and nothing else queued, it is written at once;
    /// otherwise the writer task is handed the queue.
    fn send(&self, msg: &Message, id: u64, now: bool) -> Result<bool, UpstreamError> {
        let mut guard = self.out.lock().map_err(|_| UpstreamError::Reset)?;
        let o = &mut *guard;
        if o.finished {
            return Err(UpstreamError::Reset);
        }
        if o.queue.pending() >= MAX_QUEUED {
            o.wants_room = true;
            return Ok(false);
        }
        let mut frame = EncodedFrame::new();
        o.codec
            .encode(msg, id, &mut frame)
            .map_err(|e| UpstreamError::Encode(e.to_string()))?;
        o.queue.push(frame);
        if o.handed {
            return Ok(true);
        }
        // A failed write is left to the writer, which meets the error again and closes.
        if now && matches!(o.queue.try_write_to(&o.wr), Ok(true)) {
            return Ok(true);
        }
        o.handed = true;
        drop(guard);
        self.writer.wake();
        Ok(true)
    }

    /// No more requests: the writer writes what is queued and closes the connection.
    fn finish(&self) {
        if let Ok(mut o) = self.out.lock() {
            o.finished = true;
        }
        self.writer.wake();
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        Some(self.pending.lock().ok()?.waiting.remove(&id)?.tx)
    }

    /// Registers a request waiting for its response until `deadline`.
    fn wait(&self, id: u64, tx: oneshot::Sender<Reply>, deadline: Instant) -> bool {
        let earlier = {
            let Ok(mut p) = self.pending.lock() else {
                return false;
            };
            p.waiting.insert(id, Waiter { tx, deadline });
            let earlier = p.timer.is_none_or(|t| deadline < t);
            if earlier {
                p.timer = Some(deadline);
            }
            earlier
        };
        if earlier {
            self.rearm.store(true, Ordering::Release);
            self.reader.wake();
        }
        true
    }

    /// Ready when a request moved the timer earlier since the last time.
    fn poll_rearm(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Instant>> {
        self.reader.register(cx.waker());
        if self.rearm.swap(false, Ordering::AcqRel) {
            std::task::Poll::Ready(self.pending.lock().ok().and_then(|p| p.timer))
        } else {
            std::task::Poll::Pending
        }
    }

    /// Fails the requests whose deadline is not after `now` with a timeout; returns when
    /// the timer is due next (the earliest deadline left).
    fn expire(&self, now: Instant) -> Option<Instant> {
        let (expired, next) = {
            let Ok(mut p) = self.pending.lock() else {
                return None;
            };
            let expired: SmallVec<[Waiter; 4]> = p
                .waiting
                .extract_if(|_, w| w.deadline <= now)
                .map(|(_, w)| w)
                .collect();
            let next = p.waiting.values().map(|w| w.deadline).min();
            p.timer = next;
            (expired, next)
        };
        for w in expired {
            let _ = w.tx.send(Err(UpstreamError::Timeout));
        }
        next
    }

    /// Requests waiting for their response, as far as a glance tells: a map another
    /// thread holds right now counts as busy (it is taken per request), so the writer
    /// never waits for the lock.
    fn waiting(&self) -> usize {
        self.pending
            .try_lock()
            .map_or(usize::MAX, |p| p.waiting.len())
    }

    /// Marks the connection dead and fails everything still waiting on it.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.finish();
        self.room.notify_waiters();
        let drained: Vec<_> = match self.pending.lock() {
            Ok(mut p) => p.waiting.drain().collect(),
            Err(_) => return,
        };
        for (_, w) in drained {
            let _ = w.tx.send(Err(UpstreamError::Reset));
        }
    }
}

/// One shared upstream connection.
pub struct MuxConnection {
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Drop for MuxConnection {
    fn drop(&mut self) {
        self.shared.finish();
    }
}

/// Removes a pending entry when the caller stops waiting (timeout, cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            drop(self.shared.take(self.id));
        }
    }
}

impl MuxConnection {
    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends `msg` and waits for its response (none when `expect_response` is false),
    /// which comes with when it was read.
    async fn call(
        &self,
        msg: &Message,
        expect_response: bool,
        deadline: Instant,
    ) -> Result<Option<(Box<Message>, Instant)>, UpstreamError> {
        // Ids stay below 2^31 so that every protocol's id field (Thrift's is an i32) holds them.
        let id = (self.next_id.fetch_add(1, Ordering::Relaxed) % 0x7fff_fffe) + 1;
        let (rx, guard) = if expect_response {
            let (tx, rx) = oneshot::channel();
            if !self.shared.wait(id, tx, deadline) {
                return Err(UpstreamError::Reset);
            }
            let guard = PendingGuard {
                shared: &self.shared,
                id,
                armed: true,
            };
            // `close` flags before it drains: an entry added after the drain sees the flag.
            if self.is_closed() {
                return Err(UpstreamError::Reset);
            }
            (Some(rx), Some(guard))
        } else {
            (None, None)
        };
        // Written now when this is the connection's only request in flight and no other
        // starts with it; queued for the writer under load; when the writer is far
        // behind, waits for room until the deadline.
        let now = self.shared.waiting() <= 1 && !crate::worker::starting_several();
        if !self.shared.send(msg, id, now)? {
            // Boxed: a writer this far behind is rare, and the wait's state would
            // otherwise be part of every request's.
            let shared = &self.shared;
            let room = async {
                loop {
                    let room = shared.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    if shared.send(msg, id, false)? {
                        return Ok(());
                    }
                    room.await;
                }
            };
            match Box::pin(tokio::time::timeout_at(deadline, room)).await {
                Ok(r) => r?,
                Err(_) => return Err(UpstreamError::Timeout),
            }
        }
        let Some(rx) = rx else { return Ok(None) };
        let result = rx.await;
        if let Some(mut g) = guard {
            g.armed = false;
        }
        match result {
            Ok(Ok(m)) => Ok(Some(m)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Reset),
        }
    }
}

/// A connection slot of an endpoint pool.
#[derive(Default)]
struct Slot {
    conn: ArcSwapOption<MuxConnection>,
    connecting: tokio::sync::Mutex<()>,
}

/// Settings of the connections to one endpoint.
#[derive(Clone)]
pub struct PoolSettings {
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// Shared connections per endpoint.
    pub connections: usize,
    /// Largest response frame.
    pub max_frame_size: usize,
    /// Protocol-specific settings of the cluster.
    pub protocol_options: Arc<ProtocolOptions>,
    /// Active health checking of the endpoint.
    pub health_check: Option<HealthCheckSettings>,
}

/// Idle connections an endpoint keeps for protocols that do not multiplex.
pub const MAX_IDLE_EXCLUSIVE: usize = 64;

/// An upstream connection that carries one exchange at a time (protocols that do not
/// multiplex). Checked out of its endpoint's pool for an exchange and checked back in
/// when the exchange left it reusable.
pub(crate) struct ExclusiveConnection {
    pub(crate) rd: tokio::net::tcp::OwnedReadHalf,
    pub(crate) wr: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    pub(crate) buf: BytesMut,
    /// One codec for both directions, so it can carry state from request to response.
    pub(crate) codec: Mutex<Box<dyn Codec>>,
    /// True when the connection served an earlier exchange.
    pub(crate) reused: bool,
    /// When the exchange in progress stops waiting for its response head. One timer for
    /// the connection's life: moving it to a later deadline for the next exchange only
    /// stores the new time, where a timer per exchange is added to the runtime's timer
    /// wheel and taken out of it each time.
    pub(crate) deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The worker whose timers `deadline` belongs to.
    timer_worker: Option<usize>,
    /// Counts the connection against the cluster's limit while it lives.
    _counted: OwnedResourceGuard,
    _open: OpenConnection,
}

impl ExclusiveConnection {
    /// Sets the response deadline of the exchange about to start. A connection used by
    /// another worker than the one that made its timer (workers that share connections)
    /// gets a timer of that worker's own, so that no timer outlives its runtime in use.
    pub(crate) fn arm(&mut self, at: Instant) {
        let here = crate::worker::current();
        if here == self.timer_worker {
            self.deadline.as_mut().reset(at);
        } else {
            self.deadline = Box::pin(tokio::time::sleep_until(at));
            self.timer_worker = here;
        }
    }
}

/// Counts an upstream connection as open until dropped.
pub(crate) struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ExclusiveConnection {
    /// True when an idle connection is still open and has sent nothing unasked.
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.rd.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Connections to one endpoint of one cluster.
pub struct EndpointPool {
    address: SocketAddr,
    protocol: Arc<dyn Protocol>,
    settings: PoolSettings,
    /// Idle exclusive connections, one list per connection group.
    idle: Box<[Mutex<Vec<ExclusiveConnection>>]>,
    /// Shared connections: `settings.connections` per connection group, group after
    /// group. Each worker uses its own group, so its requests go out on connections its
    /// own event loop drives.
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    active: AtomicUsize,
    stats: ClusterStats,
    requests: Counter,
    responses: ByClass,
    health: HostHealth,
    shared: Arc<ClusterShared>,
}

impl EndpointPool {
    /// A pool with no connections yet.
    pub fn new(
        address: SocketAddr,
        protocol: Arc<dyn Protocol>,
        settings: PoolSettings,
        shared: Arc<ClusterShared>,
    ) -> Self {
        let n = settings.connections.max(1);
        let groups = crate::worker::connection_groups();
        let stats = shared.stats().clone();
        Self {
            address,
            protocol,
            settings,
            idle: (0..groups).map(|_| Mutex::new(Vec::new())).collect(),
            slots: (0..n * groups).map(|_| Slot::default()).collect(),
            next_slot: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            requests: stats.endpoint(&address.to_string()),
            responses: stats.endpoint_responses(&address.to_string()),
            stats,
            health: HostHealth::default(),
            shared,
        }
    }

    /// Starts the active health check of the endpoint, when its cluster has one. The
    /// check stops when the pool is dropped.
    pub fn start_health_check(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(settings) = self.settings.health_check.clone() {
            runtime.spawn(crate::health::run_health_check(
                Arc::downgrade(self),
                settings,
                self.shared.clone(),
            ));
        }
    }

    /// The endpoint's health.
    pub fn health(&self) -> &HostHealth {
        &self.health
    }

    /// The protocol spoken to the endpoint.
    pub fn protocol(&self) -> &Arc<dyn Protocol> {
        &self.protocol
    }

    /// The endpoint address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The settings the pool was built with.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Requests in flight to this endpoint.
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Live shared connections, plus idle exclusive ones.
    pub fn connections(&self) -> usize {
        let idle: usize = self
            .idle
            .iter()
            .map(|l| l.lock().map_or(0, |v| v.len()))
            .sum();
        idle + self
            .slots
            .iter()
            .filter(|s| s.conn.load().as_ref().is_some_and(|c| !c.is_closed()))
            .count()
    }

    /// Takes an idle exclusive connection that is still open, or connects a new one.
    pub(crate) async fn checkout(&self) -> Result<ExclusiveConnection, UpstreamError> {
        let idle = &self.idle[crate::worker::connection_group() % self.idle.len()];
        loop {
            let Some(conn) = idle.lock().ok().and_then(|mut v| v.pop()) else {
                break;
            };
            if conn.usable() {
                return Ok(conn);
            }
        }
        let counted = self
            .shared
            .acquire_owned(Resource::Connections)
            .ok_or(UpstreamError::Overflow(Resource::Connections))?;
        let _pending = self
            .shared
            .acquire(Resource::Pending)
            .ok_or(UpstreamError::Overflow(Resource::Pending))?;
        let stream = self.open().await.inspect_err(|e| {
            self.stats.cx_connect_fail.inc();
            self.stats.rq_error(e.reason());
        })?;
        let (rd, wr) = stream.into_split();
        let options = self.codec_options();
        Ok(ExclusiveConnection {
            rd,
            wr: FrameWriter::new(wr),
            buf: BytesMut::with_capacity(16 * 1024),
            codec: Mutex::new(self.protocol.codec(&options)),
            reused: false,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_worker: crate::worker::current(),
            _counted: counted,
            _open: OpenConnection::new(&self.stats.cx_active),
        })
    }

    /// Returns a connection whose exchange finished cleanly and left it reusable.
    pub(crate) fn checkin(&self, mut conn: ExclusiveConnection) {
        conn.reused = true;
        let idle = &self.idle[crate::worker::connection_group() % self.idle.len()];
        if let Ok(mut idle) = idle.lock() {
            if idle.len() < MAX_IDLE_EXCLUSIVE {
                idle.push(conn);
            }
        }
    }

    /// Counts a request sent to this endpoint, whose attempt started at `start`; the
    /// guard counts it finished.
    pub(crate) fn begin_request(&self, start: Instant) -> ActiveGuard<'_> {
        self.stats.rq_total.inc();
        self.stats.rq_active.inc();
        self.requests.inc();
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { pool: self, start }
    }

    /// The metric handles of the endpoint's cluster.
    pub(crate) fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    fn codec_options(&self) -> CodecOptions {
        CodecOptions {
            side: Side::Upstream,
            max_frame_size: self.settings.max_frame_size,
            protocol_options: self.settings.protocol_options.clone(),
        }
    }

    async fn open(&self) -> Result<TcpStream, UpstreamError> {
        let fail = |e: String| UpstreamError::ConnectFailed(self.address, e);
        let stream = tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(self.address),
        )
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        self.stats.cx_total.inc();
        Ok(stream)
    }

    /// Sends `msg` to the endpoint and waits for the response, for an attempt that must
    /// end by `deadline` and started at `started` (the time from it to the response is
    /// the endpoint's request duration; the caller usually has a clock reading at hand).
    pub async fn call(
        &self,
        msg: &Message,
        expect_response: bool,
        (deadline, started): (Instant, Instant),
    ) -> Result<Option<Box<Message>>, UpstreamError> {
        let active = self.begin_request(started);
        let n = self.settings.connections.max(1);
        let group = crate::worker::connection_group() % (self.slots.len() / n);
        // One connection per group (the default) needs no turn taking, and so no write
        // to a counter every worker shares.
        let turn = if n == 1 {
            0
        } else {
            self.next_slot.fetch_add(1, Ordering::Relaxed) % n
        };
        let slot = &self.slots[group * n + turn];
        let conn = match Self::established(slot) {
            Some(c) => c,
            // Connecting is rare: its state is boxed so that every request's is smaller.
            None => {
                match tokio::time::timeout_at(deadline, Box::pin(self.connection(slot))).await {
                    Ok(c) => c?,
                    Err(_) => {
                        self.stats.rq_error(UpstreamError::Timeout.reason());
                        return Err(UpstreamError::Timeout);
                    }
                }
            }
        };
        let sent = msg.frame.len();
        match conn.call(msg, expect_response, deadline).await {
            Err(e) => {
                self.stats.rq_error(e.reason());
                Err(e)
            }
            Ok(Some((resp, at))) => {
                let class = self.protocol.response_class(&resp);
                active.responded_at(at, class, sent, resp.frame.len() as u64);
                Ok(Some(resp))
            }
            Ok(None) => {
                self.stats.tx_bytes.inc_by(sent as u64);
                Ok(None)
            }
        }
    }

    /// The slot's connection when it is open.
    fn established(slot: &Slot) -> Option<Arc<MuxConnection>> {
        slot.conn.load_full().filter(|c| !c.is_closed())
    }

    async fn connection(&self, slot: &Slot) -> Result<Arc<MuxConnection>, UpstreamError> {
        let _pending = self
            .shared
            .acquire(Resource::Pending)
            .ok_or(UpstreamError::Overflow(Resource::Pending))?;
        let _lock = slot.connecting.lock().await;
        if let Some(c) = slot.conn.load_full() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let c = self.connect().await.inspect_err(|e| {
            if matches!(e, UpstreamError::ConnectFailed(..)) {
                self.stats.cx_connect_fail.inc();
            }
            self.stats.rq_error(e.reason());
        })?;
        slot.conn.store(Some(c.clone()));
        Ok(c)
    }

    async fn connect(&self) -> Result<Arc<MuxConnection>, UpstreamError> {
        let counted = self
            .shared
            .acquire_owned(Resource::Connections)
            .ok_or(UpstreamError::Overflow(Resource::Connections))?;
        let stream = self.open().await?;
        let (rd, wr) = stream.into_split();
        let options = self.codec_options();
        let shared = Arc::new(Shared::new(self.protocol.codec(&options), wr));
        tokio::spawn(write_loop(shared.clone()));
        tokio::spawn(read_loop(
            rd,
            self.protocol.clone(),
            options,
            shared.clone(),
            self.stats.clone(),
            (counted, OpenConnection::new(&self.stats.cx_active)),
        ));
        tracing::debug!(cluster_endpoint = %self.address, "upstream connection established");
        Ok(Arc::new(MuxConnection {
            shared,
            next_id: AtomicU64::new(0),
        }))
    }
}

/// Counts a request in flight to an endpoint until dropped.
pub(crate) struct ActiveGuard<'a> {
    pool: &'a EndpointPool,
    start: tokio::time::Instant,
}

impl ActiveGuard<'_> {
    /// Records the response head: its class, the time to it, and the bytes of the
    /// request (`sent`) and the head (`received`).
    pub(crate) fn responded(&self, class: ResponseClass, sent: usize, received: u64) {
        self.responded_at(Instant::now(), class, sent, received);
    }

    /// As [`Self::responded`], for a head read at `at`.
    pub(crate) fn responded_at(
        &self,
        at: Instant,
        class: ResponseClass,
        sent: usize,
        received: u64,
    ) {
        let stats = &self.pool.stats;
        stats
            .rq_duration
            .observe(at.saturating_duration_since(self.start));
        stats.responses.inc(class);
        self.pool.responses.inc(class);
        stats.tx_bytes.inc_by(sent as u64);
        stats.rx_bytes.inc_by(received);
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.stats.rq_active.dec();
    }
}

/// Writes what the callers of a connection hand over (see [`Outgoing`]) until the
/// connection finishes or a write fails; then closes it.
async fn write_loop(shared: Arc<Shared>) {
    use std::task::Poll;
    loop {
        // Until the queue is handed over, or the connection finishes.
        let finished = poll_fn(|cx| {
            shared.writer.register(cx.waker());
            match shared.out.lock() {
                Ok(o) if o.handed || o.finished => Poll::Ready(o.finished),
                Ok(_) => Poll::Pending,
                Err(_) => Poll::Ready(true),
            }
        })
        .await;
        // Under load (several requests waiting on this connection), other tasks are
        // about to queue theirs too: let them, so that one write takes them all.
        if !finished && shared.waiting() > 1 {
            tokio::task::yield_now().await;
        }
        let (written, room) = poll_fn(|cx| {
            let Ok(mut guard) = shared.out.lock() else {
                return Poll::Ready((false, false));
            };
            let o = &mut *guard;
            match o.queue.poll_write_to(cx, std::pin::Pin::new(&mut o.wr)) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    o.handed = false;
                    Poll::Ready((r.is_ok(), std::mem::take(&mut o.wants_room)))
                }
            }
        })
        .await;
        if room {
            shared.room.notify_waiters();
        }
        if finished || !written {
            break;
        }
    }
    shared.close();
    // Sends the end of the stream: the endpoint closes its side, and the reader stops.
    if let Ok(mut o) = shared.out.lock() {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let _ = tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut o.wr), &mut cx);
    }
}

/// Fails the requests on `shared` whose deadline is not after `now`, and sets `timer` for
/// the earliest deadline left; false when none is left (the timer is not set).
fn expire_and_rearm(
    shared: &Shared,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    now: Instant,
) -> bool {
    match shared.expire(now) {
        Some(at) => {
            timer.reset(at);
            true
        }
        None => false,
    }
}

async fn read_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    protocol: Arc<dyn Protocol>,
    options: CodecOptions,
    shared: Arc<Shared>,
    stats: ClusterStats,
    counted: (OwnedResourceGuard, OpenConnection),
) {
    let _counted = counted;
    let mut codec = protocol.codec(&options);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Set only when `armed`.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed = false;
    // When the bytes being decoded were read (one clock read per read).
    let mut read_at = Instant::now();
    'read: loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => match msg.kind {
                    MessageKind::Response | MessageKind::Error => {
                        if let Some(waiter) = shared.take(msg.request_id) {
                            let _ = waiter.send(Ok((Box::new(msg), read_at)));
                        }
                    }
                    MessageKind::Heartbeat | MessageKind::Event => {
                        if let Some(reply) = protocol.heartbeat_reply(&msg) {
                            let _ = shared.send(&reply, reply.request_id, true);
                        }
                    }
                    MessageKind::Request | MessageKind::OnewayRequest => {
                        stats.protocol_error("unexpected_request");
                    }
                    MessageKind::Data => {
                        // A multiplexing protocol has no bodies that stream apart.
                        stats.protocol_error("unexpected_data");
                        break 'read;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    stats.protocol_error(e.reason);
                    tracing::warn!(error = %e, "upstream sent an undecodable frame; closing");
                    break 'read;
                }
            }
        }
        tokio::select! {
            biased;
            at = poll_fn(|cx| shared.poll_rearm(cx)) => {
                if let Some(at) = at {
                    timer.as_mut().reset(at);
                    armed = true;
                }
            }
            // Before the timer, which is polled only when the socket has nothing. A
            // socket that always has data would keep it from being polled: a read
            // compares its deadline with the read's own clock instead.
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    read_at = Instant::now();
                    if armed && read_at >= timer.deadline() {
                        armed = expire_and_rearm(&shared, timer.as_mut(), read_at);
                    }
                }
            },
            () = &mut timer, if armed => armed = expire_and_rearm(&shared, timer.as_mut(), Instant::now()),
        }
    }
    shared.close();
}
