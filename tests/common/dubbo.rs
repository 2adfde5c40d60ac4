//! Dubbo frames driven from a test, for what the peer consumers cannot produce or show:
//! per-request attachments at volume, pipelining, response attachments, hostile bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metamesh_codecs::hessian2::Value;
use metamesh_core::{CodecOptions, Message, Protocol, Side};
use metamesh_protocols::dubbo::{build, status, DubboProtocol};
use serde_json::Value as Json;

/// The interface the peer providers serve.
pub const INTERFACE: &str = "org.apache.dubbo.samples.DemoService";

/// A two-way `sayHello(arg)` request with `attachments` and request id `id`, sent with
/// Dubbo version `dubbo_version`, as a Java consumer would send it.
pub fn say_hello(dubbo_version: &str, arg: &str, attachments: &[(&str, &str)], id: i64) -> Bytes {
    build::Request {
        dubbo_version,
        interface: INTERFACE,
        version: "1.0",
        method: "sayHello",
        args: &[("Ljava/lang/String;", Value::from(arg))],
        attachments,
        two_way: true,
    }
    .encode(id)
}

/// A Dubbo connection to the proxy, reading the frames it sends back.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    codec: Box<dyn metamesh_core::Codec>,
    next_id: i64,
}

impl RawClient {
    /// Connects to `addr`; a read waits at most 15 s.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_read_timeout(addr, Duration::from_secs(15))
    }

    /// Connects to `addr`; a read waits at most `read_timeout`.
    pub fn with_read_timeout(addr: SocketAddr, read_timeout: Duration) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(read_timeout)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
            codec: DubboProtocol.codec(&CodecOptions::new(Side::Upstream)),
            next_id: 1,
        }
    }

    /// Writes `bytes` as they are.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to proxy");
    }

    /// Closes the writing half of the connection.
    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Writes a two-way `sayHello(arg)` with `attachments` and Dubbo version
    /// `dubbo_version`; returns its request id.
    pub fn send_version(
        &mut self,
        dubbo_version: &str,
        arg: &str,
        attachments: &[(&str, &str)],
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&say_hello(dubbo_version, arg, attachments, id));
        id as u64
    }

    /// [`RawClient::send_version`] with Dubbo version 2.0.2.
    pub fn send(&mut self, arg: &str, attachments: &[(&str, &str)]) -> u64 {
        self.send_version("2.0.2", arg, attachments)
    }

    /// The next frame, or `None` when the proxy closed (or reset) the connection first.
    pub fn next_frame(&mut self, what: &str) -> Option<Message> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("{what}: undecodable frame from the proxy: {e}"),
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("{what}: reading from the proxy: {e}"),
            }
        }
    }

    /// The next frame; fails when the proxy closes the connection first.
    pub fn read_frame(&mut self, what: &str) -> Message {
        self.next_frame(what)
            .unwrap_or_else(|| panic!("{what}: the proxy closed the connection"))
    }

    /// Sends one request with Dubbo version `dubbo_version` and waits for its reply.
    pub fn call_version(
        &mut self,
        dubbo_version: &str,
        arg: &str,
        attachments: &[(&str, &str)],
    ) -> Message {
        let id = self.send_version(dubbo_version, arg, attachments);
        let reply = self.read_frame(arg);
        assert_eq!(reply.request_id, id, "{arg}: reply to another request");
        reply
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, arg: &str, attachments: &[(&str, &str)]) -> Message {
        self.call_version("2.0.2", arg, attachments)
    }

    /// The proxy closes the connection (EOF or reset) without sending anything more.
    pub fn expect_closed(&mut self, what: &str) {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!(
                "{what}: expected the proxy to close, got {n} bytes: {:02x?}",
                &chunk[..n.min(64)]
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: expected the proxy to close the connection: {e}"),
        }
        assert!(
            self.buf.is_empty(),
            "{what}: unexpected bytes {:02x?}",
            &self.buf[..]
        );
    }
}

/// The provider's JSON echo carried by a successful response; fails on anything else.
pub fn echo_of(reply: &Message, what: &str) -> Json {
    match build::response_value(reply) {
        Ok(Value::String(s)) if reply.status == Some(u32::from(status::OK)) => {
            serde_json::from_str(&s).expect("provider echo is JSON")
        }
        other => panic!(
            "{what}: expected the provider's echo, got status {:?}: {other:?}",
            reply.status
        ),
    }
}
