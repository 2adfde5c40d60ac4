//! Downstream connections of protocols that do not multiplex (HTTP/1.1): one exchange at
//! a time, each on an upstream connection of its own. Heads are routed like any other
//! request; bodies stream through piece by piece in both directions at once, so a large
//! upload or download never sits in memory; an upgrade turns both connections into a
//! byte tunnel.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, CodecOptions, DecodeError, EncodedFrame, ErrorAction, Side};
use crate::io::FrameWriter;
use tokio::time::Instant;

use crate::config::RetryOn;
use crate::health::{Outcome, Resource};
use crate::listener::{
    observe_and_route, response_hooks, retry_condition, ListenerContext, Retries, Routed,
    DEFAULT_ROUTE_TIMEOUT,
};
use crate::lua::HookProgram;
use crate::message::{
    LocalReply, LocalReplyKind, Message, MessageKind, ResponseClass, StreamState,
};
use crate::observe::Observed;
use crate::router::Mutation;
use crate::upstream::{EndpointPool, ExclusiveConnection, UpstreamError};

/// How long a body may go without a byte in either direction before the exchange is
/// abandoned (Envoy's default stream idle timeout).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Body bytes of a locally answered request that the proxy reads and discards to keep
/// the connection usable; past this it closes the connection instead.
pub const MAX_DISCARDED_BODY: usize = 1024 * 1024;

/// What the caller should do with the downstream connection after an exchange.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// Locks a codec; a poisoned lock (a panic elsewhere) still yields the codec.
fn lock(codec: &Mutex<Box<dyn Codec>>) -> MutexGuard<'_, Box<dyn Codec>> {
    codec.lock().unwrap_or_else(|p| p.into_inner())
}

/// What reading the next message produced.
enum Next {
    /// Boxed as soon as it is decoded: a message (600 bytes) is handed on several times
    /// before it is done with, and each move of a box copies a pointer.
    Message(Box<Message>),
    /// The peer closed cleanly between messages.
    Closed,
    /// The peer sent something undecodable.
    Bad(DecodeError),
    /// The connection failed or closed inside a message.
    Broken,
}

/// Bytes a connection reads at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Spare room below which the read buffer grows before a read.
const MIN_READ: usize = 1024;

/// Decodes the next message from `buf`, reading from `rd` as needed. An empty buffer is
/// given room only once `rd` is readable, so a connection waiting for its first byte
/// holds none.
async fn next_message(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    codec: &Mutex<Box<dyn Codec>>,
) -> Next {
    let mut eof = false;
    loop {
        if let Some(next) = decode_next(codec, buf, eof) {
            return next;
        }
        if buf.capacity() == 0 && rd.readable().await.is_err() {
            return Next::Broken;
        }
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(buf).await {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(_) => return Next::Broken,
        }
    }
}

/// `fut`'s output, or `Err` when `timer` fires first.
async fn before<T>(
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    fut: impl Future<Output = T>,
) -> Result<T, ()> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(v));
        }
        timer.as_mut().poll(cx).map(Err)
    })
    .await
}

/// What the bytes in `buf` make of the next message (`eof`: no more will come), or
/// `None` while more are needed. A plain function, so that the message it returns never
/// takes room in the state of the future that reads.
fn decode_next(codec: &Mutex<Box<dyn Codec>>, buf: &mut BytesMut, eof: bool) -> Option<Next> {
    if eof {
        let r = lock(codec).decode_eof(buf);
        return Some(match r {
            Ok(Some(m)) => Next::Message(Box::new(m)),
            Ok(None) => Next::Closed,
            Err(e) if e.reason == crate::codec::TRUNCATED_FRAME => Next::Broken,
            Err(e) => Next::Bad(e),
        });
    }
    match lock(codec).decode(buf) {
        Ok(Some(m)) => Some(Next::Message(Box::new(m))),
        Ok(None) => None,
        Err(e) => Some(Next::Bad(e)),
    }
}

/// Encodes `msg` with `codec`. Encoding is done before any await, so that a message is
/// never part of the state a future keeps while it waits for a socket.
fn encode(codec: &Mutex<Box<dyn Codec>>, msg: &Message) -> Result<EncodedFrame, SendError> {
    let mut frame = EncodedFrame::new();
    lock(codec)
        .encode(msg, msg.request_id, &mut frame)
        .map_err(|e| SendError::Encode(e.to_string()))?;
    Ok(frame)
}

/// Queues an encoded frame on `out`. A frame of small chunks is copied at once, and the
/// future returned is already done; one with a chunk large enough to be written as it is
/// waits for the socket in a boxed future, so that no exchange keeps room for that wait.
fn send<'a>(
    out: &'a mut FrameWriter<OwnedWriteHalf>,
    frame: Result<EncodedFrame, SendError>,
) -> impl Future<Output = Result<(), SendError>> + Send + 'a {
    let frame = match frame {
        Ok(frame) => frame,
        Err(e) => return Either::Left(std::future::ready(Err(e))),
    };
    if out.gather(&frame) {
        return Either::Left(std::future::ready(Ok(())));
    }
    Either::Right(Box::pin(async move {
        out.push(frame).await.map_err(|_| SendError::Io)
    }))
}

#[derive(Debug)]
enum SendError {
    Encode(String),
    Io,
}

/// Serves one downstream connection of a protocol that does not multiplex.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: Option<std::net::SocketAddr>,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
    let (rd, wr) = stream.into_split();
    let options = CodecOptions {
        side: Side::Downstream,
        max_frame_size: ctx.max_frame_size,
        protocol_options: ctx.protocol_options.clone(),
    };
    let codec = Mutex::new(ctx.protocol.codec(&options));
    let mut down = Downstream {
        rd,
        // Nothing is allocated for reading or writing before the client sends.
        buf: BytesMut::new(),
        out: FrameWriter::new(wr),
        codec,
    };
    let wait = shutdown.cancelled();
    tokio::pin!(wait);
    let mut shutdown = crate::shutdown::Shutdown::new(&shutdown, wait);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut shutdown, if down.buf.is_empty() => break,
            n = next_message(&mut down.rd, &mut down.buf, &down.codec) => n,
        };
        let msg = match next {
            Next::Message(m) => m,
            Next::Closed | Next::Broken => break,
            Next::Bad(e) => {
                down.undecodable(&ctx, e).await;
                break;
            }
        };
        let flow = if msg.kind.is_request() {
            // Boxed: an exchange's state is large, and a connection waiting for its next
            // request should not keep room for it.
            Box::pin(exchange(&ctx, &mut down, msg, peer)).await
        } else {
            match not_a_request(&ctx, &down.codec, &msg) {
                Other::Reply(frame) => down.reply(frame).await,
                Other::Ignore => Flow::Continue,
                Other::Close => Flow::Close,
            }
        };
        if flow == Flow::Close || !lock(&down.codec).keep_alive() || shutdown.is_cancelled() {
            break;
        }
    }
    let _ = down.out.shutdown().await;
}

/// What a downstream message that is not a request asks of the connection.
enum Other {
    /// Answer it with this (a heartbeat's reply).
    Reply(Result<EncodedFrame, SendError>),
    /// Nothing to answer.
    Ignore,
    /// It has no place here: close.
    Close,
}

/// Handles a downstream message that is not a request. A plain function, so that the
/// reply it makes is never part of a connection's state while it writes.
fn not_a_request(ctx: &ListenerContext, codec: &Mutex<Box<dyn Codec>>, msg: &Message) -> Other {
    match msg.kind {
        MessageKind::Heartbeat | MessageKind::Event => match ctx.protocol.heartbeat_reply(msg) {
            Some(reply) => {
                ctx.stats.heartbeats.inc();
                Other::Reply(encode(codec, &reply))
            }
            None => Other::Ignore,
        },
        _ => {
            ctx.stats.protocol_error("unexpected_message");
            Other::Close
        }
    }
}

/// The client side of an exchange.
struct Downstream {
    rd: OwnedReadHalf,
    buf: BytesMut,
    out: FrameWriter<OwnedWriteHalf>,
    codec: Mutex<Box<dyn Codec>>,
}

impl Downstream {
    /// Writes an encoded reply and flushes.
    async fn reply(&mut self, frame: Result<EncodedFrame, SendError>) -> Flow {
        match send(&mut self.out, frame).await {
            Ok(()) => match self.out.flush().await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Close,
            },
            Err(SendError::Encode(e)) => {
                tracing::warn!(error = %e, "cannot encode a reply; closing the connection");
                Flow::Close
            }
            Err(SendError::Io) => Flow::Close,
        }
    }

    /// Answers an undecodable frame as the codec asks; the connection closes after.
    async fn undecodable(&mut self, ctx: &ListenerContext, e: DecodeError) {
        ctx.stats.protocol_error(e.reason);
        tracing::info!(listener = %ctx.name, error = %e, "undecodable downstream frame");
        if let ErrorAction::Reply(m) | ErrorAction::ReplyAndClose(m) = e.action {
            ctx.stats.local_reply(LocalReplyKind::BadRequest);
            let frame = encode(&self.codec, &m);
            drop(m);
            let _ = self.reply(frame).await;
        }
    }

    /// Answers `req` locally. A body still on its way is read and dropped so the
    /// connection stays usable, unless the client waits for a continue before sending it
    /// or it is too large, in which case the connection closes after the reply.
    async fn local_reply(
        &mut self,
        ctx: &ListenerContext,
        req: &Message,
        (kind, text): (LocalReplyKind, &str),
        obs: &mut Observed<'_>,
    ) -> Flow {
        ctx.stats.local_reply(kind);
        tracing::debug!(listener = %ctx.name, reason = kind.as_str(), message = text, "local reply");
        let mut flow = Flow::Continue;
        if req.kind == MessageKind::OnewayRequest {
            obs.unanswered(kind);
        } else {
            let frame = {
                let reply = ctx.protocol.local_reply(
                    req,
                    LocalReply {
                        kind,
                        message: text,
                    },
                );
                obs.answer(&*ctx.protocol, &reply, Some(kind));
                encode(&self.codec, &reply)
            };
            flow = self.reply(frame).await;
        }
        if flow == Flow::Continue && req.stream == StreamState::More {
            flow = if ctx.protocol.continue_reply(req).is_some() {
                Flow::Close
            } else {
                self.discard_body().await
            };
        }
        flow
    }

    /// Reads the rest of a request body and drops it.
    async fn discard_body(&mut self) -> Flow {
        let mut seen = 0usize;
        loop {
            let next = next_message(&mut self.rd, &mut self.buf, &self.codec);
            let next = tokio::time::timeout(STREAM_IDLE_TIMEOUT, next).await;
            match next {
                Ok(Next::Message(m)) if m.kind == MessageKind::Data => {
                    seen = seen.saturating_add(m.frame.len());
                    if m.stream == StreamState::End {
                        return Flow::Continue;
                    }
                    if seen > MAX_DISCARDED_BODY {
                        return Flow::Close;
                    }
                }
                _ => return Flow::Close,
            }
        }
    }
}

/// Why forwarding a request body stopped early.
enum BodyError {
    /// The client broke off or sent garbage.
    Downstream,
    /// The upstream connection failed.
    Upstream,
}

/// Why no complete response came back.
enum ResponseError {
    /// Nothing of the response reached the client yet: a local reply can still be sent.
    BeforeHead(LocalReplyKind, String),
    /// An error response the caller may retry; nothing of it was forwarded yet and its
    /// body (if any) is still unread on the upstream connection.
    Held(Box<Message>),
    /// The response head was already forwarded; the client connection must close.
    AfterHead,
}

/// How the response ended.
struct ResponseDone {
    upgrade: bool,
    error: bool,
    /// Class and status of the response head.
    class: ResponseClass,
    status: Option<u32>,
    /// Bytes of the head as received.
    head_bytes: u64,
}

/// A route and the listener's hooks, for what happens to a response.
type RoutedHooks<'a> = (&'a crate::router::Route, &'a [Arc<HookProgram>]);

/// What one attempt at an upstream produced before the response was looked at.
type AttemptFailure = (Option<RetryOn>, LocalReplyKind, String);

/// One request from head to the end of its response, with retries. Not an `async fn`:
/// the block uses the request where it was moved in, where an `async fn` would keep a
/// second copy of it in its state.
#[allow(clippy::manual_async_fn)]
fn exchange<'a>(
    ctx: &'a ListenerContext,
    down: &'a mut Downstream,
    mut req: Box<Message>,
    peer: Option<std::net::SocketAddr>,
) -> impl Future<Output = Flow> + Send + 'a {
    async move {
        ctx.stats.rq_total.inc();
        let snapshot = ctx.store.load();
        // The route's timeout counts from here too: one clock read serves both.
        let start = Instant::now();
        let (mut obs, routed) = observe_and_route(ctx, &snapshot, &mut req, (peer, start));
        let Routed {
            route,
            cluster,
            hash,
            listener_hooks,
        } = match routed {
            Ok(r) => r,
            Err((kind, text)) => return down.local_reply(ctx, &req, (kind, &text), &mut obs).await,
        };
        obs.route(route);
        let Some(_request) = cluster.shared.acquire(Resource::Requests) else {
            let text = format!(
                "{} ({})",
                UpstreamError::Overflow(Resource::Requests),
                cluster.name
            );
            return down
                .local_reply(ctx, &req, (LocalReplyKind::Overloaded, &text), &mut obs)
                .await;
        };
        // Body bytes pumped each way, over every attempt.
        let body_in = AtomicU64::new(0);
        let body_out = AtomicU64::new(0);
        let flow = attempts(
            ctx,
            down,
            &req,
            (route, cluster, hash, listener_hooks),
            (&mut obs, &body_in, &body_out),
            start,
        )
        .await;
        let (sent_up, sent_down) = (
            body_in.load(Ordering::Relaxed),
            body_out.load(Ordering::Relaxed),
        );
        obs.rx_bytes += sent_up;
        obs.tx_bytes += sent_down;
        cluster.stats.tx_bytes.inc_by(sent_up);
        cluster.stats.rx_bytes.inc_by(sent_down);
        flow
    }
}

/// The route's cluster, the request's hash and the listener's hooks.
type Target<'s> = (
    &'s crate::router::Route,
    &'s crate::snapshot::ClusterRuntime,
    Option<u64>,
    &'s [Arc<HookProgram>],
);

/// Body byte counts: request pieces sent upstream, response pieces sent downstream.
type Counted<'a, 'o> = (&'a mut Observed<'o>, &'a AtomicU64, &'a AtomicU64);

/// Tries the request on the cluster's endpoints as the retry policy allows, and answers
/// the client with a response or a local reply.
async fn attempts(
    ctx: &ListenerContext,
    down: &mut Downstream,
    req: &Message,
    (route, cluster, hash, listener_hooks): Target<'_>,
    (obs, body_in, body_out): Counted<'_, '_>,
    start: Instant,
) -> Flow {
    let total = route.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    let deadline = start + total;
    let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
    let mut retries = Retries::new(route, cluster, deadline);
    let mut exclude = None;
    let mut continued = false;
    loop {
        retries.next_attempt();
        let Some((index, endpoint)) = cluster.pick(hash, exclude) else {
            let text = format!("no healthy upstream in cluster {}", cluster.name);
            return down
                .local_reply(ctx, req, (LocalReplyKind::NoHealthyUpstream, &text), obs)
                .await;
        };
        exclude = Some(index);
        let pool: &EndpointPool = &endpoint.pool;
        obs.attempt(&cluster.name, pool.address());
        let now = Instant::now();
        let active = pool.begin_request(now);
        let remaining = deadline.saturating_duration_since(now);
        let this_try = per_try.map_or(remaining, |t| t.min(remaining));
        // An error response is held back for a retry only when one could follow.
        let hold_error = req.stream == StreamState::End && retries.allows(RetryOn::ErrorStatus);

        // A pooled connection the server closed meanwhile fails at once; a request whose
        // head alone makes it up is sent again on a fresh connection.
        let mut stale = 0;
        let attempt: Result<_, AttemptFailure> = loop {
            stale += 1;
            let mut up = match pool.checkout().await {
                Ok(c) => c,
                Err(e) => {
                    let text = format!("{} ({})", e, cluster.name);
                    break Err((retry_condition(&e), e.local_reply_kind(), text));
                }
            };
            if !continued {
                continued = true;
                let cont = ctx
                    .protocol
                    .continue_reply(req)
                    .map(|cont| encode(&down.codec, &cont));
                if let Some(frame) = cont {
                    if down.reply(frame).await == Flow::Close {
                        return Flow::Close;
                    }
                }
            }
            match send(&mut up.wr, encode(&up.codec, req)).await {
                Ok(()) => {}
                Err(SendError::Encode(e)) => {
                    pool.stats().rq_error("encode");
                    let text = format!("{} ({})", UpstreamError::Encode(e), cluster.name);
                    return down
                        .local_reply(ctx, req, (LocalReplyKind::Internal, &text), obs)
                        .await;
                }
                Err(SendError::Io) if up.reused && stale == 1 => continue,
                Err(SendError::Io) => {
                    pool.stats().rq_error("reset");
                    let text = format!("{} ({})", UpstreamError::Reset, cluster.name);
                    break Err((Some(RetryOn::Reset), LocalReplyKind::UpstreamReset, text));
                }
            }
            let routed = (route, listener_hooks);
            let (resp, body) = forward(
                ctx,
                down,
                &mut up,
                req,
                routed,
                (this_try, hold_error),
                (body_in, body_out),
            )
            .await;
            let again = up.reused
                && stale == 1
                && req.stream == StreamState::End
                && matches!(
                    &resp,
                    Err(ResponseError::BeforeHead(LocalReplyKind::UpstreamReset, _))
                )
                && up.buf.is_empty();
            if again {
                tracing::debug!(cluster = %cluster.name, "pooled connection was closed; retrying on a new one");
                continue;
            }
            break Ok((up, resp, body));
        };

        let (mut up, resp, body) = match attempt {
            Ok(a) => a,
            Err((on, kind, text)) => {
                if on.is_some() {
                    cluster.report(index, Outcome::LocalFailure);
                }
                // Nothing reached the upstream yet, so even a body still to come can go
                // to another endpoint.
                if let Some(on) = on {
                    let may_repeat =
                        req.stream == StreamState::End || on == RetryOn::ConnectFailure;
                    if retries.again(on, may_repeat).await {
                        continue;
                    }
                }
                return down.local_reply(ctx, req, (kind, &text), obs).await;
            }
        };

        match resp {
            Ok(done) => {
                active.responded(done.class, req.frame.len(), done.head_bytes);
                obs.answered(done.class, done.status, done.head_bytes, None);
                cluster.report(
                    index,
                    if done.error {
                        Outcome::ErrorStatus
                    } else {
                        Outcome::Success
                    },
                );
                if done.upgrade {
                    tunnel(down, &mut up).await;
                    return Flow::Close;
                }
                let body_ok = body.is_ok();
                if body_ok && lock(&up.codec).keep_alive() {
                    pool.checkin(up);
                }
                return if body_ok { Flow::Continue } else { Flow::Close };
            }
            Err(ResponseError::Held(head)) => {
                cluster.report(index, Outcome::ErrorStatus);
                if retries.again(RetryOn::ErrorStatus, true).await {
                    // The held response's body is never read: the connection goes.
                    continue;
                }
                let routed = (route, listener_hooks);
                let class = ctx.protocol.response_class(&head);
                active.responded(class, req.frame.len(), head.frame.len() as u64);
                let delivered = deliver(ctx, down, &mut up, req, routed, head, body_out).await;
                if let Ok(done) = &delivered {
                    obs.answered(done.class, done.status, done.head_bytes, None);
                }
                return match delivered {
                    Ok(done) if done.upgrade => {
                        tunnel(down, &mut up).await;
                        Flow::Close
                    }
                    Ok(_) => {
                        if lock(&up.codec).keep_alive() {
                            pool.checkin(up);
                        }
                        Flow::Continue
                    }
                    Err(_) => Flow::Close,
                };
            }
            Err(ResponseError::BeforeHead(LocalReplyKind::HookError, text)) => {
                // The upstream answered; a response hook failed on the answer.
                cluster.report(index, Outcome::Success);
                let flow = down
                    .local_reply(ctx, req, (LocalReplyKind::HookError, &text), obs)
                    .await;
                return if body.is_ok() || req.stream == StreamState::End {
                    flow
                } else {
                    Flow::Close
                };
            }
            Err(ResponseError::BeforeHead(kind, text)) => {
                pool.stats().rq_error(match kind {
                    LocalReplyKind::Timeout => "timeout",
                    _ => "reset",
                });
                cluster.report(index, Outcome::LocalFailure);
                let on = match kind {
                    LocalReplyKind::Timeout => RetryOn::Timeout,
                    _ => RetryOn::Reset,
                };
                // A body that started to flow cannot be sent again.
                if retries.again(on, req.stream == StreamState::End).await {
                    continue;
                }
                let text = format!("{text} ({})", cluster.name);
                let flow = down.local_reply(ctx, req, (kind, &text), obs).await;
                // The body may have been cut off halfway: the connection is out of step.
                return if body.is_ok() || req.stream == StreamState::End {
                    flow
                } else {
                    Flow::Close
                };
            }
            Err(ResponseError::AfterHead) => {
                pool.stats().rq_error("reset");
                cluster.report(index, Outcome::LocalFailure);
                return Flow::Close;
            }
        }
    }
}

/// Sends `req` (which has no body to stream) to the endpoint of `pool` on a connection
/// of its own, reads the whole response and drops it; returns the response's kind. Used
/// for mirror copies of protocols that do not multiplex.
pub(crate) async fn exchange_once(
    pool: &EndpointPool,
    req: &Message,
) -> Result<MessageKind, UpstreamError> {
    let _active = pool.begin_request(Instant::now());
    let mut up = pool.checkout().await?;
    send(&mut up.wr, encode(&up.codec, req))
        .await
        .map_err(|e| match e {
            SendError::Encode(text) => UpstreamError::Encode(text),
            SendError::Io => UpstreamError::Reset,
        })?;
    up.wr.flush().await.map_err(|_| UpstreamError::Reset)?;
    if req.kind == MessageKind::OnewayRequest {
        return Ok(MessageKind::Response);
    }
    let head = loop {
        match next_message(&mut up.rd, &mut up.buf, &up.codec).await {
            Next::Message(m) if m.kind.is_response() => break m,
            Next::Message(m) if matches!(m.kind, MessageKind::Heartbeat | MessageKind::Event) => {}
            _ => return Err(UpstreamError::Reset),
        }
    };
    let mut stream = head.stream;
    while stream == StreamState::More {
        match next_message(&mut up.rd, &mut up.buf, &up.codec).await {
            Next::Message(m) if m.kind == MessageKind::Data => stream = m.stream,
            _ => return Ok(head.kind),
        }
    }
    if stream == StreamState::End && lock(&up.codec).keep_alive() {
        pool.checkin(up);
    }
    Ok(head.kind)
}

/// Streams the request body up and the response down at the same time. Returns how the
/// response ended and how the request body did (`Ok` when it was complete). With
/// `hold_error`, an error response is handed back unforwarded as [`ResponseError::Held`].
async fn forward(
    ctx: &ListenerContext,
    down: &mut Downstream,
    up: &mut ExclusiveConnection,
    req: &Message,
    route: RoutedHooks<'_>,
    (deadline, hold_error): (Duration, bool),
    (body_in, body_out): (&AtomicU64, &AtomicU64),
) -> (Result<ResponseDone, ResponseError>, Result<(), BodyError>) {
    let Downstream {
        rd: down_rd,
        buf: down_buf,
        out: down_wr,
        codec: down_codec,
    } = down;
    up.arm(Instant::now() + deadline);
    let ExclusiveConnection {
        rd: up_rd,
        wr: up_wr,
        buf: up_buf,
        codec: up_codec,
        deadline: timer,
        ..
    } = up;

    let body = async {
        if req.stream != StreamState::More {
            return up_wr.flush().await.map_err(|_| BodyError::Upstream);
        }
        // The head leaves with the first body piece (or alone, if that is not read yet).
        // Boxed: only a request whose body streams needs the pump's state, and every
        // request's exchange would otherwise keep room for it.
        Box::pin(pump_body(
            ctx,
            (down_rd, down_buf, down_codec),
            (up_wr, up_codec),
            body_in,
        ))
        .await
        .map_err(|e| match e {
            Pump::Read => BodyError::Downstream,
            Pump::Write => BodyError::Upstream,
        })
    };

    let response = async {
        let head = loop {
            match before(timer.as_mut(), next_message(up_rd, up_buf, up_codec)).await {
                Err(_) => {
                    return Err(ResponseError::BeforeHead(
                        LocalReplyKind::Timeout,
                        format!("upstream request timeout after {}ms", deadline.as_millis()),
                    ))
                }
                Ok(Next::Message(m)) if m.kind.is_response() => break m,
                Ok(Next::Message(m))
                    if matches!(m.kind, MessageKind::Heartbeat | MessageKind::Event) => {}
                Ok(Next::Bad(e)) => {
                    ctx.stats.protocol_error(e.reason);
                    return Err(ResponseError::BeforeHead(
                        LocalReplyKind::UpstreamReset,
                        format!("upstream protocol error: {e}"),
                    ));
                }
                Ok(_) => {
                    return Err(ResponseError::BeforeHead(
                        LocalReplyKind::UpstreamReset,
                        UpstreamError::Reset.to_string(),
                    ))
                }
            }
        };
        if hold_error && matches!(head.kind, MessageKind::Error) {
            return Err(ResponseError::Held(head));
        }
        let head = prepare_response(ctx, (req, route), head, down_codec)?;
        send_response(
            ctx,
            (up_rd, up_buf, up_codec),
            (down_wr, down_codec),
            head,
            body_out,
        )
        .await
    };

    tokio::pin!(body, response);
    let mut body_result = None;
    let resp_result = loop {
        tokio::select! {
            r = &mut response => break r,
            b = &mut body, if body_result.is_none() => {
                // A client that broke off mid-body will never see an answer: give up.
                // An upstream that stopped taking the body may still answer it.
                if matches!(b, Err(BodyError::Downstream)) {
                    return (Err(ResponseError::AfterHead), b);
                }
                body_result = Some(b);
            }
        }
    };
    let body_result = match body_result {
        Some(b) => b,
        None if resp_result.is_ok() => body.await,
        None => Err(BodyError::Downstream),
    };
    (resp_result, body_result)
}

/// Forwards a response head that was held back, and its body.
async fn deliver(
    ctx: &ListenerContext,
    down: &mut Downstream,
    up: &mut ExclusiveConnection,
    req: &Message,
    route: RoutedHooks<'_>,
    head: Box<Message>,
    body_out: &AtomicU64,
) -> Result<ResponseDone, ResponseError> {
    let head = prepare_response(ctx, (req, route), head, &down.codec)?;
    send_response(
        ctx,
        (&mut up.rd, &mut up.buf, &up.codec),
        (&mut down.out, &down.codec),
        head,
        body_out,
    )
    .await
}

/// A response head after the route's mutations and hooks, encoded for the client.
struct PreparedHead {
    frame: Result<EncodedFrame, SendError>,
    stream: StreamState,
    done: ResponseDone,
}

/// Mutates a response head, runs the response hooks on it and encodes it. Synchronous,
/// so that the head itself is gone before anything waits for a socket.
fn prepare_response(
    ctx: &ListenerContext,
    (req, route): (&Message, RoutedHooks<'_>),
    mut head: Box<Message>,
    down_codec: &Mutex<Box<dyn Codec>>,
) -> Result<PreparedHead, ResponseError> {
    ctx.protocol.finish_response(req, &mut head);
    Mutation::apply_all(&route.0.response_mutation, &mut head.metadata);
    if let Err(text) = response_hooks(ctx.protocol.name(), route, &mut head, req) {
        return Err(ResponseError::BeforeHead(LocalReplyKind::HookError, text));
    }
    head.request_id = req.request_id;
    Ok(PreparedHead {
        frame: encode(down_codec, &head),
        stream: head.stream,
        done: ResponseDone {
            upgrade: head.stream == StreamState::Upgrade,
            error: head.kind == MessageKind::Error,
            class: ctx.protocol.response_class(&head),
            status: head.status,
            head_bytes: head.frame.len() as u64,
        },
    })
}

/// Writes a prepared response head, then streams its body.
async fn send_response(
    ctx: &ListenerContext,
    (up_rd, up_buf, up_codec): (&mut OwnedReadHalf, &mut BytesMut, &Mutex<Box<dyn Codec>>),
    (down_wr, down_codec): (&mut FrameWriter<OwnedWriteHalf>, &Mutex<Box<dyn Codec>>),
    head: PreparedHead,
    body_out: &AtomicU64,
) -> Result<ResponseDone, ResponseError> {
    let PreparedHead {
        frame,
        stream,
        done,
    } = head;
    send(down_wr, frame)
        .await
        .map_err(|_| ResponseError::AfterHead)?;
    if stream != StreamState::More {
        down_wr
            .flush()
            .await
            .map_err(|_| ResponseError::AfterHead)?;
        return Ok(done);
    }
    // The head leaves with the first body piece (or alone, if that is not read yet).
    pump_body(
        ctx,
        (up_rd, up_buf, up_codec),
        (down_wr, down_codec),
        body_out,
    )
    .await
    .map_err(|_| ResponseError::AfterHead)?;
    Ok(done)
}

/// Which side of a body pump failed.
enum Pump {
    Read,
    Write,
}

/// Forwards body pieces from one connection to the other until the piece that ends the
/// body. What is queued (the head, earlier pieces) is written when the next piece is not
/// read yet and at the end: a head and a body that arrived together leave in one write.
async fn pump_body(
    ctx: &ListenerContext,
    (rd, buf, from): (&mut OwnedReadHalf, &mut BytesMut, &Mutex<Box<dyn Codec>>),
    (wr, to): (&mut FrameWriter<OwnedWriteHalf>, &Mutex<Box<dyn Codec>>),
    counted: &AtomicU64,
) -> Result<(), Pump> {
    loop {
        let buffered = match lock(from).decode(buf) {
            Ok(Some(m)) => Some(encode_piece(&m, to)?),
            Ok(None) => None,
            Err(e) => {
                ctx.stats.protocol_error(e.reason);
                return Err(Pump::Read);
            }
        };
        let piece = match buffered {
            Some(p) => p,
            None => {
                wr.flush().await.map_err(|_| Pump::Write)?;
                // Boxed: a body that came with its head (most) never waits here, and the
                // wait is larger than the rest of the pump.
                let next = Box::pin(tokio::time::timeout(
                    STREAM_IDLE_TIMEOUT,
                    next_message(rd, buf, from),
                ))
                .await;
                match next {
                    Ok(Next::Message(m)) => encode_piece(&m, to)?,
                    Ok(Next::Bad(e)) => {
                        ctx.stats.protocol_error(e.reason);
                        return Err(Pump::Read);
                    }
                    _ => return Err(Pump::Read),
                }
            }
        };
        let (frame, len, end) = piece;
        send(wr, frame).await.map_err(|_| Pump::Write)?;
        counted.fetch_add(len, Ordering::Relaxed);
        if end {
            return wr.flush().await.map_err(|_| Pump::Write);
        }
    }
}

/// A body piece encoded for the other side, with its length and whether it ends the body.
type Piece = (Result<EncodedFrame, SendError>, u64, bool);

/// Encodes a body piece (anything but a piece ends the pump).
fn encode_piece(piece: &Message, to: &Mutex<Box<dyn Codec>>) -> Result<Piece, Pump> {
    if piece.kind != MessageKind::Data {
        return Err(Pump::Read);
    }
    Ok((
        encode(to, piece),
        piece.frame.len() as u64,
        piece.stream == StreamState::End,
    ))
}

/// After an upgrade: bytes flow unchanged both ways until both sides are done.
async fn tunnel(down: &mut Downstream, up: &mut ExclusiveConnection) {
    if down.out.flush().await.is_err() || up.wr.flush().await.is_err() {
        return;
    }
    let to_up = pipe(&mut down.rd, &mut down.buf, up.wr.get_mut());
    let to_down = pipe(&mut up.rd, &mut up.buf, down.out.get_mut());
    let _ = tokio::join!(to_up, to_down);
}

/// Copies what is already buffered, then everything `rd` sends, into `wr`; shuts `wr`
/// down when `rd` ends so the far side sees the close.
async fn pipe<R, W>(rd: &mut R, buf: &mut BytesMut, wr: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while buf.has_remaining() {
        let n = wr.write(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf.advance(n);
    }
    let r = tokio::io::copy(rd, wr).await;
    let _ = wr.shutdown().await;
    r.map(|_| ())
}
