//! Test-protocol peers for the in-process engine tests: upstream servers with a chosen
//! behaviour, and a client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::codec::{Codec, CodecOptions, Protocol, Side};
use crate::config::Bootstrap;
use crate::message::{Message, MessageKind};
use crate::proxy::{Proxy, ProxyBuilder};
use crate::testing::{frame, payload, registry, TestProtocol};

/// Starts a proxy on `yaml` with the test protocols registered.
pub(crate) async fn start(yaml: &str) -> Proxy {
    ProxyBuilder::new()
        .protocols(&registry())
        .start(Bootstrap::from_yaml(yaml).expect("yaml"))
        .await
        .expect("start")
}

/// The sum of the samples of counter `name` whose labels contain `labels`.
pub(crate) fn metric(proxy: &Proxy, name: &str, labels: &str) -> u64 {
    let text = proxy.store().stats().encode();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Who answered: the upstream's name, or `local:<reason>` for a local reply.
pub(crate) fn who(m: &Message) -> String {
    match (m.metadata.get("served-by"), m.metadata.get("reason")) {
        (Some(s), _) => s.to_owned(),
        (None, Some(r)) => format!("local:{r}"),
        _ => "?".into(),
    }
}

/// How a test upstream behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Answers each request with its headers plus `served-by` and its payload, after
    /// `delay-ms` when the request has that attribute (so answers can come back out of
    /// order).
    Echo,
    /// Answers as `Echo` does, with an error response.
    Fail,
    /// Closes the connection when a request arrives.
    Reset,
    /// Answers as `Echo` does, after this many milliseconds.
    Slow(u64),
    /// Accepts connections and never reads from them.
    Stall,
    /// Answers no request, and sends responses to requests never made, as fast as the
    /// connection takes them, until it closes.
    Flood,
}

/// Attribute values of one request an upstream received.
pub(crate) type Seen = HashMap<String, String>;

/// A running test upstream.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// Requests received.
    pub(crate) seen: Arc<AtomicUsize>,
    /// Every request's attributes.
    pub(crate) log: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Requests received so far.
    pub(crate) fn count(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// Starts an upstream called `name` behaving as `mode`.
pub(crate) async fn upstream(name: &'static str, mode: Mode) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s2, l2) = (seen.clone(), log.clone());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            if mode == Mode::Stall {
                held.push(s);
                continue;
            }
            if mode == Mode::Flood {
                tokio::spawn(flood(s));
                continue;
            }
            tokio::spawn(serve(s, name, mode, s2.clone(), l2.clone()));
        }
    });
    Upstream { addr, seen, log }
}

/// Writes responses to a request id never used until the connection closes, and reads
/// (and drops) what comes.
async fn flood(s: TcpStream) {
    let (mut rd, mut wr) = s.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    // Large frames, which the proxy reads a buffer at a time: its socket has more most of
    // the times it looks.
    let one = frame(
        MessageKind::Response,
        u64::MAX,
        0,
        &[("served-by", "flood")],
        &vec![0u8; 1024 * 1024],
    );
    while wr.write_all(&one).await.is_ok() {}
}

pub(crate) async fn serve(
    s: TcpStream,
    name: &'static str,
    mode: Mode,
    seen: Arc<AtomicUsize>,
    log: Arc<std::sync::Mutex<Vec<Seen>>>,
) {
    let (mut rd, wr) = s.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let mut codec = TestProtocol.codec(&CodecOptions::new(Side::Downstream));
    let mut buf = BytesMut::new();
    loop {
        while let Ok(Some(req)) = codec.decode(&mut buf) {
            if !req.kind.is_request() {
                continue;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut l) = log.lock() {
                l.push(
                    req.metadata
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                );
            }
            if mode == Mode::Reset {
                return;
            }
            let wr = wr.clone();
            tokio::spawn(async move {
                let delay = match mode {
                    Mode::Slow(ms) => ms,
                    _ => req
                        .metadata
                        .get("delay-ms")
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0),
                };
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let kind = if mode == Mode::Fail {
                    MessageKind::Error
                } else {
                    MessageKind::Response
                };
                let mut headers: Vec<(&str, &str)> = req.metadata.iter().collect();
                headers.push(("served-by", name));
                let f = frame(kind, req.request_id, 0, &headers, payload(&req));
                let _ = wr.lock().await.write_all(&f).await;
            });
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A test-protocol client.
pub(crate) struct Client {
    stream: TcpStream,
    codec: Box<dyn Codec>,
    buf: BytesMut,
    next: u64,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            codec: TestProtocol.codec(&CodecOptions::new(Side::Upstream)),
            buf: BytesMut::new(),
            next: 0,
        }
    }

    /// Sends a request with id `id`.
    pub(crate) async fn send(&mut self, id: u64, headers: &[(&str, &str)], body: &[u8]) {
        let f = frame(MessageKind::Request, id, 0, headers, body);
        self.stream.write_all(&f).await.expect("write");
    }

    /// The next message, or `None` when the proxy closed the connection.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf).expect("decodable reply") {
                return Some(m);
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// Sends `ping` with id `id` and waits for the answer.
    pub(crate) async fn call_id(&mut self, id: u64, headers: &[(&str, &str)]) -> Message {
        self.send(id, headers, b"ping").await;
        self.recv().await.expect("reply")
    }

    /// Sends `ping` with the next id and waits for its answer.
    pub(crate) async fn call(&mut self, headers: &[(&str, &str)]) -> Message {
        self.next += 1;
        let m = self.call_id(self.next, headers).await;
        assert_eq!(m.request_id, self.next, "answers come back in order");
        m
    }
}
