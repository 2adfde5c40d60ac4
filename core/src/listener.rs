//! Downstream connections: accept, decode requests, route them through the current
//! snapshot, forward them upstream and write the answers back. Multiplexing protocols
//! handle a connection's requests concurrently here; others go to [`crate::exchange`],
//! one exchange at a time with streamed bodies.

use std::sync::Arc;
use std::time::Duration;

use std::future::{poll_fn, Future};
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::time::Instant;

use crate::codec::{CodecOptions, EncodedFrame, ErrorAction, Protocol, ProtocolOptions, Side};
use crate::config::RetryOn;
use crate::health::{Outcome, Resource, ResourceGuard};
use crate::io::{OutQueue, FLUSH_AT};
use crate::lua::{HookProgram, Verdict};
use crate::message::{LocalReply, LocalReplyKind, Message, MessageKind};
use crate::observe::Observed;
use crate::request_set::RequestSet;
use crate::router::{Mutation, Route};
use crate::snapshot::{ClusterRuntime, ConfigStore, Snapshot};
use crate::stats::ListenerStats;
use crate::upstream::UpstreamError;

/// Deadline of a route that sets none (as Envoy's default route timeout).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Requests one downstream connection may have in flight; past this the connection is
/// not read until one finishes, so a client cannot pile up unbounded work.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// What a downstream writer is asked to write: each request's future returns one, and it
/// is moved several times on its way to the encoder, so it holds its messages boxed.
enum Outgoing {
    /// A message to encode with this request id (a local reply or a heartbeat's answer).
    Message(Box<Message>, u64),
    /// An upstream response with the request it answers, so that a response that
    /// cannot be encoded is replaced by an `internal` local reply.
    Response(Box<Message>, u64, Arc<Message>),
}

/// Everything a listener's connections share.
pub(crate) struct ListenerContext {
    pub(crate) name: Arc<str>,
    pub(crate) protocol: Arc<dyn Protocol>,
    pub(crate) route_config: String,
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) stats: ListenerStats,
    pub(crate) max_frame_size: usize,
    pub(crate) protocol_options: Arc<ProtocolOptions>,
}

/// Accepts connections until `shutdown` fires; connection tasks join `tracker`.
pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    (tracker, workers): (TaskTracker, Arc<crate::worker::Workers>),
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(listener = %ctx.name, %peer, "accepted");
                    let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                    workers.hand_off(&tracker, stream, move |s| serve_connection(s, ctx, shutdown));
                }
                Err(e) => {
                    // Out of descriptors and similar: back off briefly instead of spinning.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Counts a connection as open until dropped. Holds the gauge alone: the connection's
/// task keeps it for the connection's life.
struct ActiveConnection(prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) async fn serve_connection(
    stream: TcpStream,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
    ctx.stats.cx_total.inc();
    ctx.stats.cx_active.inc();
    let _active = ActiveConnection(ctx.stats.cx_active.clone());
    let peer = stream.peer_addr().ok();
    if !ctx.protocol.multiplexing() {
        // Boxed: an exchange's state is several times a multiplexed connection's, and
        // would otherwise size every connection's task.
        Box::pin(crate::exchange::serve(stream, peer, ctx, shutdown)).await;
        return;
    }
    serve_multiplexed(stream, peer, ctx, shutdown).await;
}

/// Bytes a connection reads at a time once it has data; nothing is allocated for reading
/// before the first byte arrives, and an idle connection gives its buffer back.
const READ_CHUNK: usize = 8 * 1024;
/// Spare room below which the read buffer grows before a read.
const MIN_READ: usize = 1024;

/// A request being handled. Boxed: a [`RequestSet`] of unboxed futures would keep a
/// request's whole state (over 1 KB) in every slot it keeps, busy or not.
type Request<'a> = std::pin::Pin<Box<dyn Future<Output = Option<Outgoing>> + Send + 'a>>;

/// Serves a connection of a multiplexing protocol on one task: its requests are futures
/// polled by the connection (no task per request, no writer task, no channel), and the
/// answers that are ready together leave in one write.
async fn serve_multiplexed(
    mut stream: TcpStream,
    peer: Option<std::net::SocketAddr>,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
    let options = CodecOptions {
        side: Side::Downstream,
        max_frame_size: ctx.max_frame_size,
        protocol_options: ctx.protocol_options.clone(),
    };
    let mut decoder = ctx.protocol.codec(&options);
    let mut encoder = ctx.protocol.codec(&options);
    let (mut rd, mut wr) = stream.split();
    let mut buf = BytesMut::new();
    let mut out = OutQueue::default();
    let mut requests = RequestSet::default();
    let mut reading = true;
    let wait = shutdown.cancelled();
    tokio::pin!(wait);
    let mut cancelled = crate::shutdown::Shutdown::new(&shutdown, wait);
    // When the bytes being decoded were read: the start of each request decoded from
    // them (one clock read per read, however many requests it brought).
    let mut read_at = Instant::now();
    // Requests decoded since the connection's requests were last polled.
    let mut fresh = 0usize;

    loop {
        // Decode what was read while the connection may take more requests.
        while reading && requests.len() < MAX_IN_FLIGHT_PER_CONNECTION {
            match decoder.decode(&mut buf) {
                Ok(Some(msg)) => match msg.kind {
                    MessageKind::Request | MessageKind::OnewayRequest => {
                        ctx.stats.rq_total.inc();
                        // The request is put on the heap once; its state holds a pointer.
                        let msg = Arc::new(msg);
                        let from = (peer, read_at);
                        let request: Request<'_> = Box::pin(handle_request(&ctx, msg, from));
                        requests.push(request);
                        fresh += 1;
                    }
                    MessageKind::Heartbeat | MessageKind::Event => {
                        if let Some(reply) = ctx.protocol.heartbeat_reply(&msg) {
                            ctx.stats.heartbeats.inc();
                            let id = reply.request_id;
                            encode_reply(
                                &ctx,
                                &mut *encoder,
                                &mut out,
                                Outgoing::Message(Box::new(reply), id),
                            );
                        }
                    }
                    MessageKind::Response | MessageKind::Error => {
                        ctx.stats.protocol_error("unexpected_response");
                    }
                    MessageKind::Data => {
                        // A multiplexing protocol has no bodies that stream apart from their head.
                        ctx.stats.protocol_error("unexpected_data");
                        reading = false;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    ctx.stats.protocol_error(e.reason);
                    tracing::info!(listener = %ctx.name, error = %e, "undecodable downstream frame");
                    let (reply, close) = match e.action {
                        ErrorAction::Close => (None, true),
                        ErrorAction::Drop => (None, false),
                        ErrorAction::Reply(m) => (Some(m), false),
                        ErrorAction::ReplyAndClose(m) => (Some(m), true),
                    };
                    if let Some(m) = reply {
                        ctx.stats.local_reply(LocalReplyKind::BadRequest);
                        let id = m.request_id;
                        encode_reply(&ctx, &mut *encoder, &mut out, Outgoing::Message(m, id));
                    }
                    if close {
                        reading = false;
                    }
                }
            }
        }
        if !reading && requests.is_empty() && out.pending() == 0 {
            break;
        }
        if !reading && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        let room = out.pending() < FLUSH_AT;
        let may_read = reading && room && requests.len() < MAX_IN_FLIGHT_PER_CONNECTION;
        if may_read && buf.is_empty() && requests.is_empty() && buf.capacity() > 0 {
            // Idle: give the read buffer (and the room of requests) back until the
            // client sends again.
            buf = BytesMut::new();
            requests.shrink();
        }
        tokio::select! {
            biased;
            _ = &mut cancelled, if reading => reading = false,
            // The requests read together start together: when there are several, none
            // writes to its upstream alone (see `worker::starting_several`).
            Some(answer) = poll_fn(|cx| {
                let several = std::mem::take(&mut fresh) > 1;
                crate::worker::starting(several, || requests.poll_next(cx))
            }), if room && !requests.is_empty() => {
                if let Some(answer) = answer {
                    encode_reply(&ctx, &mut *encoder, &mut out, answer);
                }
                // Gather every answer that is ready now into the same write.
                while out.pending() < FLUSH_AT {
                    match poll_fn(|cx| Poll::Ready(requests.poll_next(cx))).await {
                        Poll::Ready(Some(Some(answer))) => encode_reply(&ctx, &mut *encoder, &mut out, answer),
                        Poll::Ready(Some(None)) => {}
                        _ => break,
                    }
                }
                // Written now rather than on the loop's next turn, which would only come
                // back to write them (a socket that is full is waited for there).
                if out.pending() > 0 {
                    let written = poll_fn(|cx| Poll::Ready(out.poll_write_to(cx, std::pin::Pin::new(&mut wr)))).await;
                    if let Poll::Ready(Err(_)) = written {
                        return;
                    }
                }
            }
            written = poll_fn(|cx| out.poll_write_to(cx, std::pin::Pin::new(&mut wr))), if out.pending() > 0 => {
                if written.is_err() {
                    // The client is gone: what it asked for can no longer be answered.
                    return;
                }
            }
            read = poll_fn(|cx| poll_read(cx, &mut rd, &mut buf)), if may_read => match read {
                Ok(0) => {
                    if !buf.is_empty() {
                        ctx.stats.protocol_error(crate::codec::TRUNCATED_FRAME);
                    }
                    reading = false;
                }
                Ok(_) => read_at = Instant::now(),
                Err(_) => reading = false,
            }
        }
    }
    // Requests already read were answered; close the write side.
    let _ = wr.shutdown().await;
}

/// Reads into `buf`, allocating its room only once the socket has data.
fn poll_read(
    cx: &mut std::task::Context<'_>,
    rd: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut BytesMut,
) -> std::task::Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        std::task::ready!(rd.as_ref().poll_read_ready(cx))?;
    }
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_CHUNK);
    }
    std::pin::pin!(rd.read_buf(buf)).poll(cx)
}

/// Encodes what goes back to the client onto `out`. A response that cannot be encoded
/// is replaced by an `internal` local reply.
fn encode_reply(
    ctx: &ListenerContext,
    codec: &mut dyn crate::codec::Codec,
    out: &mut OutQueue,
    item: Outgoing,
) {
    let mut frame = EncodedFrame::new();
    match item {
        Outgoing::Message(msg, id) => match codec.encode(&msg, id, &mut frame) {
            Ok(()) => out.push(frame),
            Err(e) => tracing::warn!(error = %e, "cannot encode a reply; dropped"),
        },
        Outgoing::Response(msg, id, req) => {
            if let Err(e) = codec.encode(&msg, id, &mut frame) {
                tracing::warn!(error = %e, "cannot encode a response; answering locally");
                frame = EncodedFrame::new();
                let text = format!("the response could not be encoded: {e}");
                if let Some(Outgoing::Message(reply, id)) =
                    local_reply(ctx, &req, LocalReplyKind::Internal, &text, None)
                {
                    if let Err(e) = codec.encode(&reply, id, &mut frame) {
                        tracing::warn!(error = %e, "cannot encode a local reply; dropped");
                    }
                }
            }
            if !frame.is_empty() {
                out.push(frame);
            }
        }
    }
}

fn local_reply(
    ctx: &ListenerContext,
    req: &Message,
    kind: LocalReplyKind,
    message: &str,
    obs: Option<&mut Observed<'_>>,
) -> Option<Outgoing> {
    ctx.stats.local_reply(kind);
    tracing::debug!(listener = %ctx.name, reason = kind.as_str(), message, "local reply");
    if req.kind == MessageKind::OnewayRequest {
        if let Some(obs) = obs {
            obs.unanswered(kind);
        }
        return None;
    }
    let reply = ctx.protocol.local_reply(req, LocalReply { kind, message });
    if let Some(obs) = obs {
        obs.answer(&*ctx.protocol, &reply, Some(kind));
    }
    Some(Outgoing::Message(Box::new(reply), req.request_id))
}

/// Where the router sent a request.
pub(crate) struct Routed<'s> {
    pub(crate) route: &'s Route,
    pub(crate) cluster: &'s ClusterRuntime,
    /// The request's consistent-hash key, when the route hashes.
    pub(crate) hash: Option<u64>,
    /// The listener's hooks (their `on_response` runs after the route's).
    pub(crate) listener_hooks: &'s [Arc<HookProgram>],
}

/// A reason to answer locally, with the text for the client.
pub(crate) type Refusal = (LocalReplyKind, String);

/// Runs the `on_request` of `hooks` in order.
fn request_hooks(
    hooks: &[Arc<HookProgram>],
    req: &mut Message,
    protocol: &str,
    route_to: &mut Option<String>,
) -> Result<(), Refusal> {
    for hook in hooks {
        match hook.on_request(req, protocol, route_to) {
            Verdict::Continue => {}
            Verdict::Reject(text) => return Err((LocalReplyKind::Rejected, text)),
            Verdict::Failed(_) => {
                return Err((
                    LocalReplyKind::HookError,
                    format!("hook {} failed", hook.name()),
                ))
            }
        }
    }
    Ok(())
}

/// Runs the `on_response` of the route's hooks, then the listener's, each list in
/// reverse (the hook that saw the request first sees the response last). On failure
/// the text for the local reply that replaces the response.
pub(crate) fn response_hooks(
    protocol: &str,
    routed: (&Route, &[Arc<HookProgram>]),
    resp: &mut Message,
    req: &Message,
) -> Result<(), String> {
    let (route, listener_hooks) = routed;
    for hook in route.hooks.iter().rev().chain(listener_hooks.iter().rev()) {
        match hook.on_response(resp, req, protocol) {
            Verdict::Continue => {}
            Verdict::Reject(_) | Verdict::Failed(_) => {
                return Err(format!("hook {} failed", hook.name()))
            }
        }
    }
    Ok(())
}

/// Applies the listener's rate limit and hooks, matches `req` against the listener's
/// routes, runs the route's hooks, applies the route's rate limit and request mutation,
/// sends a mirror copy when the route asks for one, and picks the cluster (the one a hook
/// named with `route_to`, or the route's); or says which local reply to send instead.
pub(crate) fn route_request<'s>(
    ctx: &ListenerContext,
    snapshot: &'s Arc<Snapshot>,
    req: &mut Message,
) -> Result<Routed<'s>, Refusal> {
    crate::observe::propagate(&snapshot.bootstrap.tracing, req);
    if let Some(bucket) = snapshot.listener_limit(&ctx.name) {
        if !bucket.admit(&req.metadata) {
            return Err((
                LocalReplyKind::RateLimited,
                format!("rate limited by listener {}", ctx.name),
            ));
        }
    }
    let protocol = ctx.protocol.name();
    let listener_hooks = snapshot.listener_hooks(&ctx.name);
    let mut route_to = None;
    request_hooks(listener_hooks, req, protocol, &mut route_to)?;
    let Some(table) = snapshot.route_table(&ctx.route_config) else {
        return Err((
            LocalReplyKind::NoRoute,
            "route configuration not found".into(),
        ));
    };
    let route = match table.route(&req.metadata) {
        Some(r) => r,
        None if route_to.is_some() => table.hook_route(),
        None => {
            return Err((
                LocalReplyKind::NoRoute,
                "no route matched the request".into(),
            ))
        }
    };
    route.requests.inc();
    request_hooks(&route.hooks, req, protocol, &mut route_to)?;
    if let Some(bucket) = &route.rate_limit {
        if !bucket.admit(&req.metadata) {
            return Err((
                LocalReplyKind::RateLimited,
                format!("rate limited by route {}", route.name),
            ));
        }
    }
    Mutation::apply_all(&route.request_mutation, &mut req.metadata);
    let hash = route.hash(&req.metadata);
    if let Some(policy) = &route.mirror {
        crate::mirror::send(snapshot, policy, route, req, hash);
    }
    let index = match &route_to {
        Some(name) => snapshot.cluster_index(name).ok_or_else(|| {
            (
                LocalReplyKind::HookError,
                format!("a hook routed to {name:?}, which is not a cluster"),
            )
        })?,
        None => route.pick_cluster().ok_or_else(|| {
            (
                LocalReplyKind::NoHealthyUpstream,
                "the route has no destination".to_owned(),
            )
        })?,
    };
    let Some(cluster) = snapshot.cluster(index) else {
        return Err((
            LocalReplyKind::NoHealthyUpstream,
            "cluster not found".into(),
        ));
    };
    Ok(Routed {
        route,
        cluster,
        hash,
        listener_hooks,
    })
}

/// Starts observing a request just decoded (from `peer`, read at the instant given), and
/// routes it.
pub(crate) fn observe_and_route<'s>(
    ctx: &'s ListenerContext,
    snapshot: &'s Arc<Snapshot>,
    req: &mut Message,
    from: (Option<std::net::SocketAddr>, Instant),
) -> (Observed<'s>, Result<Routed<'s>, Refusal>) {
    let logger = snapshot.access_log.as_ref();
    let mut obs = Observed::start(&ctx.stats, logger, &ctx.name, from, req);
    let routed = route_request(ctx, snapshot, req);
    obs.request(&*ctx.protocol, req);
    (obs, routed)
}

/// A failure an attempt can end with, as retry policies name them.
pub(crate) fn retry_condition(e: &UpstreamError) -> Option<RetryOn> {
    match e {
        UpstreamError::ConnectFailed(..) => Some(RetryOn::ConnectFailure),
        UpstreamError::Reset => Some(RetryOn::Reset),
        UpstreamError::Timeout => Some(RetryOn::Timeout),
        UpstreamError::Encode(_) | UpstreamError::Overflow(_) => None,
    }
}

/// The retry state of one request: which attempt this is, the request's deadline, and
/// the retry slot taken from the cluster's circuit breaker on the first retry.
pub(crate) struct Retries<'s> {
    route: &'s Route,
    cluster: &'s ClusterRuntime,
    deadline: Instant,
    attempt: u32,
    slot: Option<ResourceGuard<'s>>,
}

impl<'s> Retries<'s> {
    pub(crate) fn new(route: &'s Route, cluster: &'s ClusterRuntime, deadline: Instant) -> Self {
        Self {
            route,
            cluster,
            deadline,
            attempt: 0,
            slot: None,
        }
    }

    /// Starts the next attempt; returns its number (1-based).
    pub(crate) fn next_attempt(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// True when the policy would retry an attempt failing with `on` now (before any
    /// wait or circuit breaker).
    pub(crate) fn allows(&self, on: RetryOn) -> bool {
        self.route.retry.as_ref().is_some_and(|p| {
            self.attempt <= p.attempts && p.retry_on.contains(on) && Instant::now() < self.deadline
        })
    }

    /// Decides whether the attempt that just failed with `on` is tried again, and if so
    /// waits the backoff. `may_repeat` is false when the request cannot be sent again
    /// whatever the policy says.
    pub(crate) async fn again(&mut self, on: RetryOn, may_repeat: bool) -> bool {
        match self.backoff(on, may_repeat) {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                true
            }
            None => false,
        }
    }

    /// Decides whether the attempt that just failed with `on` is tried again, and if so
    /// how long to wait first (counting the retry). What the caller holds need not live
    /// across the wait.
    pub(crate) fn backoff(&mut self, on: RetryOn, may_repeat: bool) -> Option<Duration> {
        if !may_repeat || !self.allows(on) {
            return None;
        }
        if self.slot.is_none() {
            self.slot = Some(self.cluster.shared.acquire(Resource::Retries)?);
        }
        let policy = self.route.retry.as_ref()?;
        self.cluster.stats.retries.inc();
        let now = Instant::now();
        let wait = policy
            .backoff(self.attempt)
            .min(self.deadline.saturating_duration_since(now));
        tracing::debug!(cluster = %self.cluster.name, reason = on.as_str(), attempt = self.attempt, ?wait, "retrying");
        Some(wait)
    }
}

/// Routes one request (from `peer`, read at the instant given) and produces what goes
/// back to the client.
async fn handle_request(
    ctx: &ListenerContext,
    mut req: Arc<Message>,
    from: (Option<std::net::SocketAddr>, Instant),
) -> Option<Outgoing> {
    let downstream_id = req.request_id;
    let snapshot = ctx.store.load();
    // Not shared yet: routing changes the request in place, without a copy.
    let (mut obs, routed) = observe_and_route(ctx, &snapshot, Arc::make_mut(&mut req), from);
    let Routed {
        route,
        cluster,
        hash,
        listener_hooks,
    } = match routed {
        Ok(r) => r,
        Err((kind, text)) => return local_reply(ctx, &req, kind, &text, Some(&mut obs)),
    };
    obs.route(route);
    let Some(_request) = cluster.shared.acquire(Resource::Requests) else {
        let text = format!(
            "{} ({})",
            UpstreamError::Overflow(Resource::Requests),
            cluster.name
        );
        return local_reply(ctx, &req, LocalReplyKind::Overloaded, &text, Some(&mut obs));
    };
    let expect_response = req.kind != MessageKind::OnewayRequest;
    let total = route.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    // The route's timeout counts from when the request was read, as Envoy's does.
    let deadline = obs.started() + total;
    let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
    let mut retries = Retries::new(route, cluster, deadline);
    let mut exclude = None;
    loop {
        retries.next_attempt();
        let Some((index, endpoint)) = cluster.pick(hash, exclude) else {
            let text = format!("no healthy upstream in cluster {}", cluster.name);
            return local_reply(
                ctx,
                &req,
                LocalReplyKind::NoHealthyUpstream,
                &text,
                Some(&mut obs),
            );
        };
        exclude = Some(index);
        obs.attempt(&cluster.name, endpoint.pool.address());
        // The attempt ends at the request's deadline, or a per-try timeout from now when
        // that comes first: without a per-try timeout, no clock read per attempt.
        let (try_deadline, this_try, started) = match per_try {
            Some(t) => {
                let now = Instant::now();
                let end = (now + t).min(deadline);
                (end, end.saturating_duration_since(now), now)
            }
            // The first attempt starts when the request was read; a retry, now.
            None if retries.attempt == 1 => (deadline, total, obs.started()),
            None => (deadline, total, Instant::now()),
        };
        // The connection answers with a timeout when the attempt's deadline passes.
        let call = endpoint
            .pool
            .call(&req, expect_response, (try_deadline, started));
        // Only the wait outlives this block, so the request's state keeps no room for a
        // response (or a failure) while it sleeps before the next attempt.
        let wait = {
            let next = match call.await {
                Ok(Some(resp)) => {
                    let error = resp.kind == MessageKind::Error;
                    cluster.report(
                        index,
                        if error {
                            Outcome::ErrorStatus
                        } else {
                            Outcome::Success
                        },
                    );
                    if error {
                        if let Some(wait) = retries.backoff(RetryOn::ErrorStatus, true) {
                            Next::Wait(wait)
                        } else {
                            Next::Answer(resp)
                        }
                    } else {
                        Next::Answer(resp)
                    }
                }
                Ok(None) => {
                    cluster.report(index, Outcome::Success);
                    return None;
                }
                Err(UpstreamError::Timeout) => {
                    // Counted as a `timeout` error of the cluster by the pool.
                    cluster.report(index, Outcome::LocalFailure);
                    let text = if Instant::now() >= deadline {
                        format!(
                            "upstream request timeout after {}ms ({})",
                            total.as_millis(),
                            cluster.name
                        )
                    } else {
                        format!(
                            "upstream per-try timeout after {}ms ({})",
                            this_try.as_millis(),
                            cluster.name
                        )
                    };
                    Next::Fail(Some(RetryOn::Timeout), LocalReplyKind::Timeout, text)
                }
                Err(e) => {
                    if retry_condition(&e).is_some() {
                        cluster.report(index, Outcome::LocalFailure);
                    }
                    let text = format!("{} ({})", e, cluster.name);
                    Next::Fail(retry_condition(&e), e.local_reply_kind(), text)
                }
            };
            match next {
                Next::Answer(mut resp) => {
                    ctx.protocol.finish_response(&req, &mut resp);
                    Mutation::apply_all(&route.response_mutation, &mut resp.metadata);
                    let hooks = (route, listener_hooks);
                    if let Err(text) = response_hooks(ctx.protocol.name(), hooks, &mut resp, &req) {
                        return local_reply(
                            ctx,
                            &req,
                            LocalReplyKind::HookError,
                            &text,
                            Some(&mut obs),
                        );
                    }
                    obs.answer(&*ctx.protocol, &resp, None);
                    return Some(Outgoing::Response(resp, downstream_id, req));
                }
                Next::Wait(wait) => wait,
                Next::Fail(on, kind, text) => {
                    // A oneway request that left the proxy cannot be told apart from one applied.
                    let may_repeat = expect_response || on == Some(RetryOn::ConnectFailure);
                    match on.and_then(|on| retries.backoff(on, may_repeat)) {
                        Some(wait) => wait,
                        None => return local_reply(ctx, &req, kind, &text, Some(&mut obs)),
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// What an attempt of [`handle_request`] leads to.
enum Next {
    /// The response to give the client (after the route's mutations and hooks).
    Answer(Box<Message>),
    /// Try again after this wait.
    Wait(Duration),
    /// The attempt failed: whether the policy may retry it, and the local reply if not.
    Fail(Option<RetryOn>, LocalReplyKind, String),
}
