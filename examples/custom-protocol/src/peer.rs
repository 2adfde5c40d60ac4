//! Small kv peers on tokio, used by this crate's tests and meant as a starting point for
//! your own: a [`Server`] that answers every request with the request's headers plus its
//! own name, and a [`Client`] that sends requests, oneway requests and pings.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metamesh_core::{Codec, CodecOptions, ErrorAction, Message, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::{body, frame, Kind, KvCodec, REASON_HEADER};

/// The header a [`Server`] adds to every response: its name.
pub const SERVED_BY: &str = "served-by";
/// A request carrying this header gets an error frame whose `reason` is the header's value.
pub const FAIL: &str = "fail";

/// One decoded kv frame, as a peer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's kind.
    pub kind: Kind,
    /// Its request id.
    pub id: u32,
    /// Its headers, in wire order.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Bytes,
}

impl Frame {
    /// Reads a message decoded by [`KvCodec`].
    pub fn from_message(msg: &Message) -> Option<Frame> {
        Some(Frame {
            kind: Kind::of(msg)?,
            id: u32::try_from(msg.request_id).ok()?,
            headers: msg
                .metadata
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: body(msg),
        })
    }

    /// The value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn encode(kind: Kind, id: u32, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Bytes> {
    frame(kind, id, headers, body).map_err(invalid)
}

/// A kv server: answers a request with a response carrying the request's headers plus
/// `served-by: NAME` and the request's body, or with an error frame when the request has
/// a `fail` header; answers pings with pongs; records every request and oneway request it
/// receives. Stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: std::net::SocketAddr,
    received: watch::Receiver<Vec<Frame>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving as `name`.
    pub async fn bind(name: impl Into<String>, addr: impl ToSocketAddrs) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name.into());
        let (tx, received) = watch::channel(Vec::new());
        let tx = Arc::new(tx);
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so stopping the server stops them too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve(stream, name.clone(), tx.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Server {
            addr,
            received,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Every request and oneway request received so far, in arrival order.
    pub fn received(&self) -> Vec<Frame> {
        self.received.borrow().clone()
    }

    /// Waits until at least `n` requests (of either kind) have arrived.
    pub async fn wait_received(&self, n: usize) -> Vec<Frame> {
        let mut rx = self.received.clone();
        let seen = match rx.wait_for(|r| r.len() >= n).await {
            Ok(r) => r.clone(),
            Err(_) => self.received(),
        };
        seen
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, name: Arc<str>, log: Arc<watch::Sender<Vec<Frame>>>) {
    let _ = serve_connection(stream, &name, &log).await;
}

async fn serve_connection(
    mut stream: TcpStream,
    name: &str,
    log: &watch::Sender<Vec<Frame>>,
) -> io::Result<()> {
    let mut codec = KvCodec::new(&CodecOptions::new(Side::Downstream));
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        loop {
            let msg = match codec.decode(&mut buf) {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    let why = invalid(format!("{}: {}", e.reason, e.detail));
                    match e.action {
                        ErrorAction::Drop => continue,
                        ErrorAction::Reply(m) => {
                            stream.write_all(&m.frame).await?;
                            continue;
                        }
                        ErrorAction::ReplyAndClose(m) => {
                            stream.write_all(&m.frame).await?;
                            return Err(why);
                        }
                        ErrorAction::Close => return Err(why),
                    }
                }
            };
            let Some(req) = Frame::from_message(&msg) else {
                continue;
            };
            let answer = match req.kind {
                Kind::Request => Some(answer(name, &req)?),
                Kind::Ping => Some(encode(Kind::Pong, req.id, &[], b"")?),
                _ => None,
            };
            if matches!(req.kind, Kind::Request | Kind::Oneway) {
                log.send_modify(|r| r.push(req));
            }
            if let Some(bytes) = answer {
                stream.write_all(&bytes).await?;
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// The server's answer to a request.
fn answer(name: &str, req: &Frame) -> io::Result<Bytes> {
    if let Some(reason) = req.header(FAIL) {
        let message = format!("{name} failed the request on purpose");
        return encode(
            Kind::Error,
            req.id,
            &[(REASON_HEADER, reason)],
            message.as_bytes(),
        );
    }
    let mut headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(SERVED_BY))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.push((SERVED_BY, name));
    encode(Kind::Response, req.id, &headers, &req.body)
}

/// A kv client on one connection. [`Client::call`] sends a request and waits for its
/// answer; [`Client::send`] and [`Client::recv`] pipeline by hand.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    codec: KvCodec,
    buf: BytesMut,
    next_id: u32,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            codec: KvCodec::new(&CodecOptions::new(Side::Upstream)),
            buf: BytesMut::with_capacity(8 * 1024),
            next_id: 1,
        })
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Writes one frame.
    pub async fn send(
        &mut self,
        kind: Kind,
        id: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let bytes = encode(kind, id, headers, body)?;
        self.stream.write_all(&bytes).await
    }

    /// Writes raw bytes (for trying out malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame from the server; `None` once the server closed the connection.
    pub async fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(msg) = self.codec.decode(&mut self.buf).map_err(invalid)? {
                return Frame::from_message(&msg)
                    .map(Some)
                    .ok_or_else(|| invalid("a frame without a kv kind"));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Waits for the answer to `id`: the next frame, which must carry that id.
    async fn answer(&mut self, id: u32) -> io::Result<Frame> {
        let f = self
            .recv()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
        if f.id != id {
            return Err(invalid(format!("expected an answer to {id}, got {f:?}")));
        }
        Ok(f)
    }

    /// Sends a request and returns its answer (a response or an error frame).
    pub async fn call(&mut self, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Frame> {
        let id = self.next_id();
        self.send(Kind::Request, id, headers, body).await?;
        self.answer(id).await
    }

    /// Sends a oneway request.
    pub async fn oneway(&mut self, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        let id = self.next_id();
        self.send(Kind::Oneway, id, headers, body).await
    }

    /// Sends a ping and returns the answer (a pong).
    pub async fn ping(&mut self) -> io::Result<Frame> {
        let id = self.next_id();
        self.send(Kind::Ping, id, &[], b"").await?;
        self.answer(id).await
    }
}
