//! Minimal wire formats for the load generator and the echo backends: building requests
//! and replies, and finding complete frames (with their ids) in a read buffer. Only what
//! a benchmark needs: Dubbo2 over hessian2, Thrift binary on framed and THeader
//! transports, HTTP/1.1 with content-length bodies.

use std::fmt;

/// A protocol the tool speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Dubbo2, hessian2 serialization.
    Dubbo,
    /// Thrift binary protocol, framed or THeader transport.
    Thrift,
    /// HTTP/1.1.
    Http,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Dubbo => "dubbo",
            Protocol::Thrift => "thrift",
            Protocol::Http => "http",
        })
    }
}

/// The Thrift transport the load generator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThriftTransport {
    /// 4-byte length, then a binary message.
    Framed,
    /// THeader (binary protocol inside, no transforms).
    Header,
}

/// A frame found in a buffer: its length and what the tool needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Bytes the frame takes in the buffer (head and body).
    pub len: usize,
    /// Request id (Dubbo id, Thrift seqid); 0 for HTTP.
    pub id: u64,
    /// The frame is a successful reply (Dubbo status 20, Thrift REPLY, HTTP 2xx).
    pub ok: bool,
    /// Status as a number for error reports (Dubbo status, Thrift message type, HTTP status).
    pub status: u16,
    /// A Dubbo event (heartbeat) rather than a request or reply.
    pub event: bool,
    /// The sender closes the connection after this message (HTTP `Connection: close`).
    pub close: bool,
}

/// Why a buffer holds no valid frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// Largest frame accepted from the network.
pub const MAX_FRAME: usize = 16 << 20;

// ---------------------------------------------------------------- Dubbo

const DUBBO_MAGIC: [u8; 2] = [0xda, 0xbb];
const DUBBO_HEADER: usize = 16;
/// Flag bits: request, two-way, event; the low 5 bits are the serialization id (hessian2 = 2).
const DUBBO_REQ: u8 = 0x80;
const DUBBO_TWOWAY: u8 = 0x40;
const DUBBO_EVENT: u8 = 0x20;
const HESSIAN2: u8 = 2;
/// Dubbo response status OK.
pub const DUBBO_OK: u8 = 20;

/// The interface every Dubbo request of the tool calls (the README's routing matches it).
pub const DUBBO_INTERFACE: &str = "org.apache.dubbo.samples.DemoService";

/// Appends a hessian2 string (ASCII or not; the length counts UTF-16 units).
fn hessian_str(out: &mut Vec<u8>, s: &str) {
    let n = s.encode_utf16().count();
    debug_assert!(n < 1024, "the tool writes short strings only");
    if n < 32 {
        out.push(n as u8);
    } else {
        out.push(0x30 | (n >> 8) as u8);
        out.push((n & 0xff) as u8);
    }
    out.extend_from_slice(s.as_bytes());
}

/// The body of a `DemoService.sayHello(String)` call, with and without `batchjob=true`.
pub fn dubbo_request_body(batchjob: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    hessian_str(&mut b, "2.0.2");
    hessian_str(&mut b, DUBBO_INTERFACE);
    hessian_str(&mut b, "0.0.0");
    hessian_str(&mut b, "sayHello");
    hessian_str(&mut b, "Ljava/lang/String;");
    hessian_str(&mut b, "world");
    b.push(b'H');
    for (k, v) in [
        ("path", DUBBO_INTERFACE),
        ("interface", DUBBO_INTERFACE),
        ("version", "0.0.0"),
        ("timeout", "3000"),
        ("remote.application", "metamesh-bench"),
    ] {
        hessian_str(&mut b, k);
        hessian_str(&mut b, v);
    }
    if batchjob {
        hessian_str(&mut b, "batchjob");
        hessian_str(&mut b, "true");
    }
    b.push(b'Z');
    b
}

fn dubbo_frame(out: &mut Vec<u8>, flag: u8, status: u8, id: u64, body: &[u8]) {
    out.extend_from_slice(&DUBBO_MAGIC);
    out.push(flag);
    out.push(status);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends a two-way hessian2 request with `id` and a body from [`dubbo_request_body`].
pub fn dubbo_request(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    dubbo_frame(out, DUBBO_REQ | DUBBO_TWOWAY | HESSIAN2, 0, id, body);
}

/// The body of the echo backend's reply: RESPONSE_VALUE (1) and the string "hello".
pub fn dubbo_reply_body() -> Vec<u8> {
    let mut b = vec![0x91];
    hessian_str(&mut b, "hello");
    b
}

/// Appends a response with status 20 to request `id`.
pub fn dubbo_reply(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    dubbo_frame(out, HESSIAN2, DUBBO_OK, id, body);
}

/// Appends the answer to a heartbeat `id` (an event response with a null body).
pub fn dubbo_heartbeat_reply(out: &mut Vec<u8>, id: u64) {
    dubbo_frame(out, DUBBO_EVENT | HESSIAN2, DUBBO_OK, id, b"N");
}

/// Finds the first Dubbo frame in `buf` (request or response).
pub fn dubbo_frame_at(buf: &[u8]) -> Result<Option<Frame>, Malformed> {
    if buf.len() < DUBBO_HEADER {
        return Ok(None);
    }
    if buf[..2] != DUBBO_MAGIC {
        return Err(Malformed("bad_magic"));
    }
    let body = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if body > MAX_FRAME {
        return Err(Malformed("frame_too_large"));
    }
    let len = DUBBO_HEADER + body;
    if buf.len() < len {
        return Ok(None);
    }
    let flag = buf[2];
    let status = buf[3];
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[4..12]);
    Ok(Some(Frame {
        len,
        id: u64::from_be_bytes(id),
        ok: flag & DUBBO_REQ != 0 || status == DUBBO_OK,
        status: status.into(),
        event: flag & DUBBO_EVENT != 0,
        close: false,
    }))
}

/// True when a Dubbo frame found by [`dubbo_frame_at`] is a request that wants an answer.
pub fn dubbo_wants_reply(buf: &[u8]) -> bool {
    buf.len() > 2 && buf[2] & DUBBO_REQ != 0 && buf[2] & DUBBO_TWOWAY != 0
}

// ---------------------------------------------------------------- Thrift

const THRIFT_VERSION_1: u32 = 0x8001_0000;
const THRIFT_CALL: u8 = 1;
const THRIFT_REPLY: u8 = 2;
const THEADER_MAGIC: [u8; 2] = [0x0f, 0xff];
/// The method every Thrift request of the tool calls (`EchoService.echo` of tests/peers).
pub const THRIFT_METHOD: &str = "echo";

/// Appends a binary-protocol message: strict header, then `fields` as the struct.
fn thrift_message(out: &mut Vec<u8>, kind: u8, name: &str, seqid: i32, fields: &[u8]) {
    out.extend_from_slice(&(THRIFT_VERSION_1 | u32::from(kind)).to_be_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&seqid.to_be_bytes());
    out.extend_from_slice(fields);
}

/// `echo_args { 1: EchoRequest { 1: message } }` (and the struct stops).
pub fn thrift_echo_args(message: &str) -> Vec<u8> {
    let mut f = vec![12, 0, 1, 11, 0, 1];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message.as_bytes());
    f.extend_from_slice(&[0, 0]);
    f
}

/// `echo_result { 0: EchoReply { 2: message } }`.
pub fn thrift_echo_result(message: &str) -> Vec<u8> {
    let mut f = vec![12, 0, 0, 11, 0, 2];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message.as_bytes());
    f.extend_from_slice(&[0, 0]);
    f
}

/// Appends one framed or THeader binary message of `kind` with `seqid`.
fn thrift_out(
    out: &mut Vec<u8>,
    transport: ThriftTransport,
    kind: u8,
    name: &str,
    seqid: i32,
    fields: &[u8],
) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if transport == ThriftTransport::Header {
        out.extend_from_slice(&THEADER_MAGIC);
        out.extend_from_slice(&[0, 0]); // flags
        out.extend_from_slice(&seqid.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // header words
        out.extend_from_slice(&[0, 0, 0, 0]); // protocol binary, no transforms, padding
    }
    thrift_message(out, kind, name, seqid, fields);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends an `echo` call with `seqid`.
pub fn thrift_request(out: &mut Vec<u8>, transport: ThriftTransport, seqid: i32, args: &[u8]) {
    thrift_out(out, transport, THRIFT_CALL, THRIFT_METHOD, seqid, args);
}

/// Appends a REPLY to call `name`/`seqid`.
pub fn thrift_reply(
    out: &mut Vec<u8>,
    transport: ThriftTransport,
    name: &str,
    seqid: i32,
    result: &[u8],
) {
    thrift_out(out, transport, THRIFT_REPLY, name, seqid, result);
}

/// A Thrift frame found in a buffer, with the message header the echo backend needs.
#[derive(Debug, PartialEq, Eq)]
pub struct ThriftFrame<'a> {
    /// Length, seqid, REPLY or not.
    pub frame: Frame,
    /// The transport it came on.
    pub transport: ThriftTransport,
    /// The message name.
    pub name: &'a str,
    /// The message type (1 call, 2 reply, 3 exception, 4 oneway).
    pub kind: u8,
}

/// Finds the first framed or THeader message in `buf` (binary protocol inside).
pub fn thrift_frame_at(buf: &[u8]) -> Result<Option<ThriftFrame<'_>>, Malformed> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if size > MAX_FRAME {
        return Err(Malformed("frame_too_large"));
    }
    let len = 4 + size;
    if buf.len() < len {
        return Ok(None);
    }
    let frame = &buf[4..len];
    let (transport, msg) = if frame.len() >= 10 && frame[..2] == THEADER_MAGIC {
        let words = u16::from_be_bytes([frame[8], frame[9]]) as usize;
        let start = 10 + words * 4;
        let header = frame.get(10..start).ok_or(Malformed("truncated_header"))?;
        if header.first() != Some(&0) {
            return Err(Malformed("not_binary"));
        }
        (ThriftTransport::Header, &frame[start..])
    } else {
        (ThriftTransport::Framed, frame)
    };
    if msg.len() < 12 {
        return Err(Malformed("truncated_message"));
    }
    let word = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]);
    if word & 0xffff_0000 != THRIFT_VERSION_1 {
        return Err(Malformed("not_strict_binary"));
    }
    let kind = (word & 0xff) as u8;
    let nlen = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]) as usize;
    let name = msg
        .get(8..8 + nlen)
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or(Malformed("bad_name"))?;
    let seq = msg
        .get(8 + nlen..12 + nlen)
        .ok_or(Malformed("truncated_message"))?;
    let seqid = i32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]);
    Ok(Some(ThriftFrame {
        frame: Frame {
            len,
            id: u64::from(seqid as u32),
            ok: kind == THRIFT_REPLY || kind == THRIFT_CALL,
            status: kind.into(),
            event: false,
            close: false,
        },
        transport,
        name,
        kind,
    }))
}

// ---------------------------------------------------------------- HTTP/1.1

/// Appends a `GET /echo` request, with `x-batchjob: true` when asked.
pub fn http_request(out: &mut Vec<u8>, batchjob: bool) {
    out.extend_from_slice(b"GET /echo HTTP/1.1\r\nHost: bench\r\nUser-Agent: metamesh-bench\r\n");
    if batchjob {
        out.extend_from_slice(b"x-batchjob: true\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The echo backend's reply.
pub const HTTP_REPLY: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

/// Finds the first complete HTTP/1.1 message (request or response) in `buf`; the body
/// must have a `content-length` (or none for requests and 204/304 responses).
pub fn http_message_at(buf: &[u8]) -> Result<Option<Frame>, Malformed> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(Malformed("head_too_large"));
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let status = if first.starts_with(b"HTTP/") {
        let code = first.get(9..12).ok_or(Malformed("bad_status_line"))?;
        std::str::from_utf8(code)
            .ok()
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or(Malformed("bad_status_line"))?
    } else {
        0
    };
    let mut body = 0usize;
    let mut close = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            body = std::str::from_utf8(&line[colon + 1..])
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(Malformed("bad_content_length"))?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = line[colon + 1..]
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Malformed("chunked_body"));
        }
    }
    if body > MAX_FRAME {
        return Err(Malformed("frame_too_large"));
    }
    let len = head_end + 4 + body;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        len,
        id: 0,
        ok: status == 0 || (200..300).contains(&status),
        status,
        event: false,
        close,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dubbo_round_trip() {
        let mut out = Vec::new();
        dubbo_request(&mut out, 7, &dubbo_request_body(true));
        let f = dubbo_frame_at(&out).unwrap().unwrap();
        assert_eq!((f.len, f.id, f.event), (out.len(), 7, false));
        assert!(dubbo_wants_reply(&out));
        assert_eq!(dubbo_frame_at(&out[..out.len() - 1]).unwrap(), None);
        let mut r = Vec::new();
        dubbo_reply(&mut r, 9, &dubbo_reply_body());
        let f = dubbo_frame_at(&r).unwrap().unwrap();
        assert!(f.ok && f.id == 9 && !dubbo_wants_reply(&r));
        assert_eq!(
            dubbo_frame_at(b"xxxxxxxxxxxxxxxxxx"),
            Err(Malformed("bad_magic"))
        );
    }

    #[test]
    fn hessian_medium_string() {
        let mut b = Vec::new();
        hessian_str(&mut b, DUBBO_INTERFACE);
        assert_eq!(&b[..2], &[0x30, 36]);
    }

    #[test]
    fn thrift_round_trip_both_transports() {
        for t in [ThriftTransport::Framed, ThriftTransport::Header] {
            let mut out = Vec::new();
            thrift_request(&mut out, t, -5, &thrift_echo_args("hi"));
            let f = thrift_frame_at(&out).unwrap().unwrap();
            assert_eq!(f.transport, t);
            assert_eq!((f.name, f.kind, f.frame.len), ("echo", 1, out.len()));
            assert_eq!(f.frame.id, u64::from((-5i32) as u32));
            let mut r = Vec::new();
            thrift_reply(&mut r, t, "echo", 3, &thrift_echo_result("hi"));
            let f = thrift_frame_at(&r).unwrap().unwrap();
            assert!(f.frame.ok && f.kind == 2 && f.frame.id == 3);
        }
    }

    #[test]
    fn http_messages() {
        let mut req = Vec::new();
        http_request(&mut req, true);
        let f = http_message_at(&req).unwrap().unwrap();
        assert_eq!((f.len, f.status), (req.len(), 0));
        let f = http_message_at(HTTP_REPLY).unwrap().unwrap();
        assert_eq!((f.len, f.status, f.ok), (HTTP_REPLY.len(), 200, true));
        assert_eq!(
            http_message_at(&HTTP_REPLY[..HTTP_REPLY.len() - 1]),
            Ok(None)
        );
        let e = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert!(!http_message_at(e).unwrap().unwrap().ok);
        let c = b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n";
        assert!(http_message_at(c).unwrap().unwrap().close);
    }
}
