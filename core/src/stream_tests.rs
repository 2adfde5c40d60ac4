//! In-process tests of the engine for protocols that do not multiplex, over real loopback
//! sockets, with the streaming test protocol from [`crate::testing`] on both sides:
//! streamed bodies, connection reuse, local replies with bodies, interim continue
//! replies, upgrades to a tunnel, stale pooled connections and timeouts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::codec::{Codec, CodecOptions, Protocol, Side};
use crate::config::Bootstrap;
use crate::message::{Message, MessageKind, StreamState};
use crate::proxy::{Proxy, ProxyBuilder};
use crate::testing::{registry, stream_head, StreamTestProtocol, STREAM_UPGRADE};

/// A stream-test server. Per request (attribute `mode`):
/// - `echo` (default): answers at once with a head announcing the request's body length
///   and echoes every body piece as it arrives; attributes `conn` (the number of the
///   upstream connection) and `served-by` are added; `x-download: N` answers a body of N
///   bytes instead;
/// - `close`: answers, then closes the connection without saying so;
/// - `upgrade`: answers with an upgrade and echoes raw bytes from then on;
/// - `silent`: never answers.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let n = conns.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::spawn(serve_upstream(s, n));
        }
    });
    addr
}

async fn serve_upstream(mut s: TcpStream, conn: u64) {
    let mut codec = StreamTestProtocol.codec(&CodecOptions::new(Side::Downstream));
    let mut buf = BytesMut::new();
    let conn = conn.to_string();
    loop {
        let Some(msg) = read_message(&mut s, &mut codec, &mut buf).await else {
            return;
        };
        match msg.kind {
            MessageKind::Data if s.write_all(&msg.frame).await.is_err() => return,
            MessageKind::Data => {}
            MessageKind::Request => {
                let mode = msg.metadata.get("mode").unwrap_or("echo").to_owned();
                let mut headers: Vec<(&str, &str)> = msg.metadata.iter().collect();
                headers.push(("conn", &conn));
                let body_len = match msg.stream {
                    StreamState::More => crate::testing::payload(&msg)
                        .try_into()
                        .map(u64::from_be_bytes)
                        .unwrap_or(0),
                    _ => 0,
                };
                let download: Option<u64> =
                    msg.metadata.get("x-download").and_then(|v| v.parse().ok());
                match mode.as_str() {
                    "silent" => continue,
                    "upgrade" => {
                        let head = stream_head(
                            MessageKind::Response,
                            msg.request_id,
                            &headers,
                            STREAM_UPGRADE,
                        );
                        if s.write_all(&head).await.is_err() {
                            return;
                        }
                        let _ = s.write_all(&buf).await;
                        let (mut rd, mut wr) = s.split();
                        let _ = tokio::io::copy(&mut rd, &mut wr).await;
                        return;
                    }
                    _ => {}
                }
                let len = download.unwrap_or(body_len);
                let head = stream_head(MessageKind::Response, msg.request_id, &headers, len);
                if s.write_all(&head).await.is_err() {
                    return;
                }
                if let Some(n) = download {
                    let chunk = vec![b'd'; 64 * 1024];
                    let mut left = n as usize;
                    while left > 0 {
                        let k = left.min(chunk.len());
                        if s.write_all(&chunk[..k]).await.is_err() {
                            return;
                        }
                        left -= k;
                    }
                }
                if mode == "close" {
                    return;
                }
            }
            _ => {}
        }
    }
}

async fn read_message(
    s: &mut TcpStream,
    codec: &mut Box<dyn Codec>,
    buf: &mut BytesMut,
) -> Option<Message> {
    loop {
        if let Some(m) = codec.decode(buf).ok()? {
            return Some(m);
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

struct Client {
    stream: TcpStream,
    codec: Box<dyn Codec>,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            codec: StreamTestProtocol.codec(&CodecOptions::new(Side::Upstream)),
            buf: BytesMut::new(),
        }
    }

    async fn head(&mut self, id: u64, headers: &[(&str, &str)], body_len: u64) {
        let f = stream_head(MessageKind::Request, id, headers, body_len);
        self.stream.write_all(&f).await.expect("write head");
    }

    async fn recv(&mut self) -> Option<Message> {
        read_message(&mut self.stream, &mut self.codec, &mut self.buf).await
    }

    /// Reads a response head and its whole body.
    async fn response(&mut self) -> (Message, Vec<u8>) {
        let head = self.recv().await.expect("response head");
        let mut body = Vec::new();
        if head.stream == StreamState::More {
            loop {
                let piece = self.recv().await.expect("body piece");
                assert_eq!(piece.kind, MessageKind::Data);
                body.extend_from_slice(&piece.frame);
                if piece.stream == StreamState::End {
                    break;
                }
            }
        }
        (head, body)
    }

    async fn call(&mut self, id: u64, headers: &[(&str, &str)], body: &[u8]) -> (Message, Vec<u8>) {
        self.head(id, headers, body.len() as u64).await;
        self.stream.write_all(body).await.expect("write body");
        self.response().await
    }

    /// True when the proxy closed the connection (nothing more arrives).
    async fn closed(&mut self) -> bool {
        self.recv().await.is_none()
    }
}

async fn start() -> Proxy {
    start_with(crate::worker::default_concurrency()).await
}

/// A proxy with `workers` workers.
async fn start_with(workers: usize) -> Proxy {
    let up = upstream().await;
    let yaml = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: stest, route_config: rc }}
routes:
  - name: rc
    routes:
      - name: nowhere
        match: {{ attributes: {{ dead: {{ present: true }} }} }}
        route: [{{ cluster: dead }}]
      - name: echo
        match: {{ attributes: {{ mode: {{ present: true }} }} }}
        route: [{{ cluster: echo }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
        response_mutation: [{{ key: x-served-by, value: metamesh }}]
        timeout: 2s
clusters:
  - {{ name: echo, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: dead, connect_timeout: 200ms, endpoints: [{{ address: "127.0.0.1:1" }}] }}
"#
    );
    ProxyBuilder::new()
        .protocols(&registry())
        .concurrency(workers)
        .start(Bootstrap::from_yaml(&yaml).expect("yaml"))
        .await
        .expect("start")
}

fn listener(proxy: &Proxy) -> SocketAddr {
    proxy.listener_addr("in").expect("listener")
}

#[tokio::test]
async fn streams_large_bodies_both_ways_and_reuses_the_upstream_connection() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.head(1, &[("mode", "echo")], body.len() as u64).await;
    let (mut rd, mut wr) = c.stream.split();
    let send = async {
        for piece in body.chunks(64 * 1024) {
            wr.write_all(piece).await.expect("upload");
        }
    };
    let mut codec = StreamTestProtocol.codec(&CodecOptions::new(Side::Upstream));
    let mut buf = BytesMut::new();
    let recv = async {
        let mut got = Vec::with_capacity(body.len());
        let mut head = None;
        let mut pieces = 0;
        loop {
            let m = loop {
                if let Some(m) = codec.decode(&mut buf).expect("decodable") {
                    break m;
                }
                assert!(
                    rd.read_buf(&mut buf).await.expect("read") > 0,
                    "closed early"
                );
            };
            if m.kind == MessageKind::Data {
                pieces += 1;
                got.extend_from_slice(&m.frame);
                if m.stream == StreamState::End {
                    break;
                }
            } else {
                head = Some(m);
            }
        }
        (head.expect("head"), got, pieces)
    };
    let ((), (head, got, pieces)) = tokio::join!(send, recv);
    assert_eq!(head.kind, MessageKind::Response);
    assert_eq!(head.metadata.get("x-served-by"), Some("metamesh"));
    assert_eq!(head.metadata.get("x-tier"), Some("batch"));
    assert_eq!(got.len(), body.len());
    assert!(got == body, "echoed body differs");
    assert!(
        pieces > 1,
        "the body came back in one piece: it was buffered"
    );
    let first_conn = head.metadata.get("conn").expect("conn").to_owned();

    let (head, got) = c.call(2, &[("mode", "echo")], b"again").await;
    assert_eq!(got, b"again");
    assert_eq!(head.metadata.get("conn"), Some(first_conn.as_str()));

    let (_, got) = c
        .call(3, &[("mode", "echo"), ("x-download", "3000000")], b"")
        .await;
    assert_eq!(got.len(), 3_000_000);
    assert!(got.iter().all(|&b| b == b'd'));
}

#[tokio::test]
async fn a_local_reply_drops_the_body_and_keeps_the_connection() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    let (head, _) = c.call(1, &[("nothing", "matches")], &[7u8; 5000]).await;
    assert_eq!(head.kind, MessageKind::Error);
    assert_eq!(head.metadata.get("reason"), Some("no_route"));
    let (head, _) = c.call(2, &[("dead", "1")], &[7u8; 100]).await;
    assert_eq!(
        head.metadata.get("reason"),
        Some("upstream_connect_failure")
    );
    let (head, got) = c.call(3, &[("mode", "echo")], b"still here").await;
    assert_eq!(head.kind, MessageKind::Response);
    assert_eq!(got, b"still here");
}

#[tokio::test]
async fn expect_continue_gets_an_interim_reply_before_the_body_is_sent() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    c.head(1, &[("mode", "echo"), ("expect", "continue")], 5)
        .await;
    let interim = c.recv().await.expect("interim reply");
    assert!(interim.metadata.contains("continue"), "{interim:?}");
    c.stream.write_all(b"hello").await.expect("body");
    let (head, got) = c.response().await;
    assert_eq!(head.kind, MessageKind::Response);
    assert_eq!(got, b"hello");

    // Answered locally: no interim reply, the body never comes, the connection closes.
    c.head(2, &[("nothing", "matches"), ("expect", "continue")], 5)
        .await;
    let (head, _) = c.response().await;
    assert_eq!(head.metadata.get("reason"), Some("no_route"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn an_upgrade_turns_both_connections_into_a_tunnel() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    c.head(1, &[("mode", "upgrade")], 0).await;
    let head = c.recv().await.expect("upgrade");
    assert_eq!(head.stream, StreamState::Upgrade);
    let raw: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    c.stream.write_all(&raw).await.expect("tunnel write");
    c.stream.shutdown().await.expect("half close");
    let mut back = std::mem::take(&mut c.buf).to_vec();
    c.stream.read_to_end(&mut back).await.expect("tunnel read");
    assert!(
        back == raw,
        "tunnel changed the bytes ({} of {})",
        back.len(),
        raw.len()
    );
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced_transparently() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    let (head, _) = c.call(1, &[("mode", "close")], b"").await;
    let first = head.metadata.get("conn").expect("conn").to_owned();
    for id in 2..5 {
        let (head, got) = c.call(id, &[("mode", "echo")], b"x").await;
        assert_eq!(head.kind, MessageKind::Response, "{head:?}");
        assert_eq!(got, b"x");
        assert_ne!(head.metadata.get("conn"), Some(first.as_str()));
    }
}

#[tokio::test]
async fn a_silent_upstream_times_out_and_a_close_request_ends_the_connection() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    let (head, _) = c.call(1, &[("mode", "silent")], b"").await;
    assert_eq!(head.metadata.get("reason"), Some("timeout"));
    let (head, _) = c
        .call(2, &[("mode", "echo"), ("connection", "close")], b"bye")
        .await;
    assert_eq!(head.kind, MessageKind::Response);
    assert!(c.closed().await);
}

/// Sends request `id` to the silent upstream and checks that it is answered with a
/// timeout at the route's 2 s, not earlier (a timer left from an earlier exchange) and not
/// much later.
async fn times_out_at_the_route_deadline(c: &mut Client, id: u64) {
    let sent = std::time::Instant::now();
    let (head, _) = c.call(id, &[("mode", "silent")], b"").await;
    assert_eq!(head.metadata.get("reason"), Some("timeout"));
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "timed out after {waited:?}, not at the exchange's own 2 s"
    );
}

#[tokio::test]
async fn a_reused_connection_times_out_at_its_own_exchange_deadline() {
    let proxy = start().await;
    let mut c = Client::connect(listener(&proxy)).await;
    let (head, _) = c.call(1, &[("mode", "echo")], b"x").await;
    let conn = head.metadata.get("conn").expect("conn").to_owned();
    // Later than the first exchange's deadline (the route's timeout is 2 s): the
    // connection's timer went off with nothing waiting on it.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (head, _) = c.call(2, &[("mode", "echo")], b"y").await;
    assert_eq!(head.metadata.get("conn"), Some(conn.as_str()), "reused");
    times_out_at_the_route_deadline(&mut c, 3).await;
}

#[tokio::test]
async fn a_connection_another_worker_made_times_out_on_a_timer_of_the_worker_using_it() {
    // Twice as many workers as connection groups: worker `groups` shares the idle
    // upstream connections of worker 0.
    let groups = crate::worker::connection_groups();
    let proxy = start_with(2 * groups).await;
    // Client connections go to the workers in turn; the first one makes an upstream
    // connection on worker 0 and leaves it idle.
    let mut clients = Vec::new();
    for i in 0..=groups {
        clients.push(Client::connect(listener(&proxy)).await);
        let (head, _) = clients[i].call(1, &[("mode", "echo")], b"x").await;
        assert_eq!(head.kind, MessageKind::Response);
    }
    let mut c = clients.pop().expect("the client of worker `groups`");
    times_out_at_the_route_deadline(&mut c, 2).await;
    proxy.shutdown(Duration::from_secs(1)).await;
}

/// A stream-test server that answers every request with an error head (no body) and
/// drops request bodies.
async fn failing_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut codec = StreamTestProtocol.codec(&CodecOptions::new(Side::Downstream));
                let mut buf = BytesMut::new();
                while let Some(msg) = read_message(&mut s, &mut codec, &mut buf).await {
                    if msg.kind == MessageKind::Request {
                        let head = stream_head(
                            MessageKind::Error,
                            msg.request_id,
                            &[("served-by", "failing")],
                            0,
                        );
                        if s.write_all(&head).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn start_retrying(first: SocketAddr, second: SocketAddr) -> Proxy {
    let up = upstream().await;
    let yaml = format!(
        r#"
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: stest, route_config: rc }}
routes:
  - name: rc
    routes:
      - name: errors
        match: {{ attributes: {{ errors: {{ present: true }} }} }}
        route: [{{ cluster: pair }}]
        retry: {{ attempts: 1, idempotent: true, retry_on: [error_status], base_interval: 1ms }}
      - name: connect
        route: [{{ cluster: pair }}]
        retry: {{ attempts: 1, base_interval: 1ms }}
clusters:
  - {{ name: pair, connect_timeout: 200ms, endpoints: [{{ address: "{first}" }}, {{ address: "{second}" }}] }}
  - {{ name: echo, endpoints: [{{ address: "{up}" }}] }}
"#
    );
    ProxyBuilder::new()
        .protocols(&registry())
        .start(Bootstrap::from_yaml(&yaml).expect("yaml"))
        .await
        .expect("start")
}

#[tokio::test]
async fn a_connect_failure_is_retried_even_for_a_request_with_a_body() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = start_retrying(dead, upstream().await).await;
    let mut c = Client::connect(listener(&proxy)).await;
    for id in 1..=6u64 {
        let body = vec![b'x'; 1000 + id as usize];
        let (head, echoed) = c.call(id, &[("mode", "echo")], &body).await;
        assert_eq!(head.kind, MessageKind::Response, "{head:?}");
        assert_eq!(echoed, body, "the body went to the endpoint that answered");
    }
    // Every connect failure was retried (how many there were depends on where round
    // robin stood for each request).
    let text = proxy.store().stats().encode();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let failures = value("metamesh_upstream_cx_connect_fail_total{cluster=\"pair\"}");
    assert!(failures >= 3, "{text}");
    assert_eq!(
        value("metamesh_upstream_rq_retry_total{cluster=\"pair\"}"),
        failures,
        "{text}"
    );
}

#[tokio::test]
async fn an_error_answer_is_held_for_a_retry_only_without_a_body() {
    let proxy = start_retrying(failing_upstream().await, upstream().await).await;
    let mut c = Client::connect(listener(&proxy)).await;
    // Bodyless: the failing endpoint's answer is held back and the other one answers.
    for id in 1..=6u64 {
        let (head, _) = c.call(id, &[("mode", "echo"), ("errors", "1")], b"").await;
        assert_eq!(head.kind, MessageKind::Response, "{head:?}");
    }
    // With a body that already streamed, the error answer is forwarded as it is.
    let mut kinds = Vec::new();
    for id in 7..=10u64 {
        let (head, _) = c
            .call(id, &[("mode", "echo"), ("errors", "1")], b"body")
            .await;
        kinds.push(head.kind);
    }
    assert!(kinds.contains(&MessageKind::Error), "{kinds:?}");
    assert!(kinds.contains(&MessageKind::Response), "{kinds:?}");
}
