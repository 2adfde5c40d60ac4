//! The HTTP/1.1 codec against messages captured from curl and nginx
//! (`tests/fixtures/http`), plus bodies, interim answers, upgrades, keep-alive, mutation,
//! local replies, limits, smuggling attempts, hostile input and the conformance kit.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metamesh_core::conformance::{Conformance, Sample};
use metamesh_core::{
    Codec, CodecOptions, DecodeError, EncodedFrame, ErrorAction, LocalReply, LocalReplyKind,
    Message, MessageKind, Protocol, ProtocolOptions, Side, StreamState,
};
use metamesh_protocols::http::{local_reply_status, HttpProtocol};
use proptest::prelude::*;

fn fixture(name: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/http/{name}.http",
        env!("CARGO_MANIFEST_DIR")
    );
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn codec(side: Side) -> Box<dyn Codec> {
    HttpProtocol.codec(&CodecOptions::new(side))
}

fn codec_with(side: Side, options: &[(&str, &str)]) -> Box<dyn Codec> {
    let options: ProtocolOptions = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HttpProtocol.codec(&CodecOptions {
        protocol_options: Arc::new(options),
        ..CodecOptions::new(side)
    })
}

/// Decodes everything `c` can from `buf`.
fn drain(c: &mut dyn Codec, buf: &mut BytesMut) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(m) = c.decode(buf).expect("decodes") {
        out.push(m);
    }
    out
}

/// Decodes all of `bytes` with a fresh codec of `side`; nothing may be left over.
fn decode_all(side: Side, bytes: &[u8]) -> Vec<Message> {
    let mut c = codec(side);
    let mut buf = BytesMut::from(bytes);
    let out = drain(&mut *c, &mut buf);
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    out
}

/// Decodes `bytes` arriving in the given pieces.
fn decode_pieces(c: &mut dyn Codec, pieces: &[&[u8]]) -> (Vec<Message>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        out.extend(drain(c, &mut buf));
    }
    (out, buf)
}

fn encode(c: &mut dyn Codec, msg: &Message) -> Bytes {
    let mut out = EncodedFrame::new();
    c.encode(msg, msg.request_id, &mut out).expect("encodes");
    out.to_bytes()
}

fn encode_all(c: &mut dyn Codec, msgs: &[Message]) -> Vec<u8> {
    msgs.iter().flat_map(|m| encode(c, m).to_vec()).collect()
}

fn body(msgs: &[Message]) -> Vec<u8> {
    msgs.iter()
        .filter(|m| m.kind == MessageKind::Data)
        .flat_map(|m| m.frame.to_vec())
        .collect()
}

fn attributes(msg: &Message) -> Vec<(String, String)> {
    msg.metadata
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn head_len(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4
}

/// An upstream codec that has sent `request` (so it knows what the response answers).
fn upstream_after(request: &[u8]) -> Box<dyn Codec> {
    let req = decode_all(Side::Downstream, request);
    let mut up = codec(Side::Upstream);
    encode_all(&mut *up, &req);
    up
}

fn decode_error(side: Side, bytes: &[u8]) -> DecodeError {
    let mut c = codec(side);
    let mut buf = BytesMut::from(bytes);
    loop {
        match c.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(bytes)),
            Err(e) => return e,
        }
    }
}

/// The status and head of the reply a downstream error carries.
fn error_reply(e: &DecodeError) -> (u32, String) {
    match &e.action {
        ErrorAction::ReplyAndClose(m) => (
            m.status.expect("a status"),
            String::from_utf8_lossy(&m.frame).into_owned(),
        ),
        other => panic!("{}: expected a reply and close, got {other:?}", e.reason),
    }
}

#[test]
fn curl_get_head() {
    let f = fixture("curl_get");
    let msgs = decode_all(Side::Downstream, &f);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.kind, MessageKind::Request);
    assert_eq!(m.request_id, 1);
    assert_eq!(m.stream, StreamState::End);
    assert_eq!(m.frame, f);
    let host = m.metadata.get("host").expect("host").to_owned();
    assert!(host.starts_with("127.0.0.1:"));
    assert_eq!(
        attributes(m),
        pairs(&[
            (":method", "GET"),
            (":path", "/api/users?id=7"),
            (":authority", &host),
            ("host", &host),
            ("user-agent", "curl/7.88.1"),
            ("accept", "*/*"),
            ("x-tenant", "acme"),
        ])
    );
    assert!(!m.metadata.is_dirty());
    // Unchanged: the very same bytes, without a copy, whatever id the engine uses.
    for id in [1, 77] {
        let mut out = EncodedFrame::new();
        codec(Side::Upstream)
            .encode(m, id, &mut out)
            .expect("encodes");
        assert_eq!(out.parts().len(), 1);
        assert_eq!(out.parts()[0].as_ptr(), m.frame.as_ptr());
    }
}

#[test]
fn field_names_are_kept_in_lower_case_whatever_their_length() {
    let head = b"GET / HTTP/1.1\r\nHOST: a\r\nContent-Type: text/plain\r\nX-Tenant: acme\r\n\
x-already-lower: 1\r\nX-A-Field-Name-Longer-Than-24: 2\r\nx-a-lower-field-name-longer-than-24: 3\r\n\r\n";
    let msgs = decode_all(Side::Downstream, head);
    assert_eq!(
        attributes(&msgs[0]),
        pairs(&[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
            ("host", "a"),
            ("content-type", "text/plain"),
            ("x-tenant", "acme"),
            ("x-already-lower", "1"),
            ("x-a-field-name-longer-than-24", "2"),
            ("x-a-lower-field-name-longer-than-24", "3"),
        ])
    );
}

#[test]
fn request_bodies_by_content_length() {
    let f = fixture("curl_post_form");
    let msgs = decode_all(Side::Downstream, &f);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].stream, StreamState::More);
    assert_eq!(msgs[0].frame.len(), head_len(&f));
    assert_eq!(msgs[1].kind, MessageKind::Data);
    assert_eq!(msgs[1].request_id, msgs[0].request_id);
    assert_eq!(msgs[1].stream, StreamState::End);
    assert_eq!(&msgs[1].frame[..], b"name=metamesh&tier=batch");
    assert_eq!(encode_all(&mut *codec(Side::Upstream), &msgs), f);

    // No body bytes buffered yet: nothing to hand over.
    let mut c = codec(Side::Downstream);
    let (out, _) = decode_pieces(&mut *c, &[&f[..head_len(&f)]]);
    assert_eq!(out.len(), 1);
    let mut empty = BytesMut::new();
    assert!(c.decode(&mut empty).expect("decodes").is_none());
}

#[test]
fn every_split_gives_the_same_messages() {
    for name in [
        "curl_post_form",
        "curl_post_chunked",
        "curl_put_expect",
        "curl_get",
    ] {
        let f = fixture(name);
        let whole = decode_all(Side::Downstream, &f);
        for at in 0..=f.len() {
            let mut c = codec(Side::Downstream);
            let (got, rest) = decode_pieces(&mut *c, &[&f[..at], &f[at..]]);
            assert!(rest.is_empty(), "{name} split at {at}");
            assert_eq!(got[0].frame, whole[0].frame, "{name} split at {at}");
            assert_eq!(got[0].metadata, whole[0].metadata, "{name} split at {at}");
            assert_eq!(body(&got), body(&whole), "{name} split at {at}");
            let last = got.last().expect("messages");
            assert_eq!(last.stream, StreamState::End, "{name} split at {at}");
            assert!(got[1..].iter().all(|m| m.kind == MessageKind::Data));
        }
        // One byte at a time: every body piece is at most the one byte that came.
        let singles: Vec<&[u8]> = f.chunks(1).collect();
        let (got, _) = decode_pieces(&mut *codec(Side::Downstream), &singles);
        assert!(got[1..].iter().all(|m| m.frame.len() == 1), "{name}");
        assert_eq!(body(&got), body(&whole), "{name}");
    }
}

#[test]
fn chunked_bodies_pass_through_raw() {
    let f = fixture("curl_post_chunked");
    let msgs = decode_all(Side::Downstream, &f);
    let h = head_len(&f);
    assert_eq!(msgs[0].metadata.get("transfer-encoding"), Some("chunked"));
    assert_eq!(msgs[0].stream, StreamState::More);
    // The chunk framing stays in the pieces, so the body is forwarded byte for byte.
    assert_eq!(body(&msgs), &f[h..]);
    assert!(body(&msgs).ends_with(b"\r\n0\r\n\r\n"));
    assert_eq!(encode_all(&mut *codec(Side::Upstream), &msgs), f);
}

#[test]
fn chunk_extensions_and_trailers() {
    let raw: &[u8] =
        b"4;name=value;flag\r\nwiki\r\n5 ; q=\"a b\"\r\npedia\r\n0\r\nX-Checksum: 42\r\nX-Other: x\r\n\r\n";
    let mut req = b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(raw);
    req.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    let msgs = decode_all(Side::Downstream, &req);
    let data: Vec<_> = msgs
        .iter()
        .filter(|m| m.kind == MessageKind::Data)
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!(&data[0].frame[..], raw);
    assert_eq!(data[0].stream, StreamState::End);
    let next = msgs.last().expect("the next request");
    assert_eq!(next.metadata.get(":path"), Some("/next"));
    assert_eq!(next.request_id, 2);
    for at in 0..=req.len() {
        let (got, rest) = decode_pieces(&mut *codec(Side::Downstream), &[&req[..at], &req[at..]]);
        assert!(rest.is_empty());
        assert_eq!(body(&got), raw, "split at {at}");
        assert_eq!(
            got.last().and_then(|m| m.metadata.get(":path")),
            Some("/next")
        );
    }
}

#[test]
fn nginx_responses() {
    let get = fixture("curl_get");
    let cases = [
        ("nginx_200_length", 200, MessageKind::Response, true, true),
        ("nginx_404", 404, MessageKind::Response, true, true),
        (
            "nginx_200_chunked_gzip",
            200,
            MessageKind::Response,
            true,
            true,
        ),
        ("nginx_204", 204, MessageKind::Response, false, true),
        ("nginx_304", 304, MessageKind::Response, false, true),
        ("nginx_close", 200, MessageKind::Response, true, false),
    ];
    for (name, status, kind, has_body, keep_alive) in cases {
        let f = fixture(name);
        let mut up = upstream_after(&get);
        let mut buf = BytesMut::from(&f[..]);
        let msgs = drain(&mut *up, &mut buf);
        assert!(buf.is_empty(), "{name}");
        let head = &msgs[0];
        assert_eq!(head.kind, kind, "{name}");
        assert_eq!(head.status, Some(status), "{name}");
        assert_eq!(head.request_id, 1, "{name}");
        assert_eq!(head.metadata.get(":status"), Some(&*status.to_string()));
        assert_eq!(head.metadata.get("server"), Some("nginx"));
        assert_eq!(head.frame.len(), head_len(&f), "{name}");
        assert_eq!(head.stream == StreamState::More, has_body, "{name}");
        assert_eq!(body(&msgs), &f[head_len(&f)..], "{name}");
        assert_eq!(up.keep_alive(), keep_alive, "{name}");
        // Written back to the client unchanged.
        let mut down = codec(Side::Downstream);
        let mut dbuf = BytesMut::from(&get[..]);
        drain(&mut *down, &mut dbuf);
        assert_eq!(encode_all(&mut *down, &msgs), f, "{name}");
        assert_eq!(down.keep_alive(), keep_alive, "{name}");
    }
    let f = fixture("nginx_200_chunked_gzip");
    for at in 0..=f.len() {
        let mut up = upstream_after(&get);
        let (got, rest) = decode_pieces(&mut *up, &[&f[..at], &f[at..]]);
        assert!(rest.is_empty());
        assert_eq!(body(&got), &f[head_len(&f)..], "split at {at}");
        assert_eq!(got.last().map(|m| m.stream), Some(StreamState::End));
    }
}

#[test]
fn server_errors_are_error_messages() {
    let resp =
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nbusy";
    let mut up = upstream_after(&fixture("curl_get"));
    let mut buf = BytesMut::from(&resp[..]);
    let msgs = drain(&mut *up, &mut buf);
    assert_eq!(msgs[0].kind, MessageKind::Error);
    assert_eq!(msgs[0].status, Some(503));
    assert_eq!(msgs[0].metadata.get("retry-after"), Some("1"));
    assert_eq!(body(&msgs), b"busy");
}

#[test]
fn head_responses_have_no_body() {
    // A HEAD and a GET pipelined: the first answer has a length but no body.
    let mut up = codec(Side::Upstream);
    encode_all(
        &mut *up,
        &decode_all(Side::Downstream, &fixture("curl_head")),
    );
    encode_all(
        &mut *up,
        &decode_all(Side::Downstream, &fixture("curl_get")),
    );
    let mut wire = fixture("nginx_head").to_vec();
    wire.extend_from_slice(&fixture("nginx_200_length"));
    let mut buf = BytesMut::from(&wire[..]);
    let msgs = drain(&mut *up, &mut buf);
    assert!(buf.is_empty());
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0].stream, StreamState::End);
    assert_eq!(msgs[0].metadata.get("content-length"), Some("17"));
    assert_eq!(msgs[1].stream, StreamState::More);
    assert_eq!(&msgs[2].frame[..], b"hello from nginx\n");
    assert!(up.keep_alive());
}

#[test]
fn expect_100_continue() {
    let f = fixture("curl_put_expect");
    let msgs = decode_all(Side::Downstream, &f);
    let req = &msgs[0];
    assert_eq!(req.metadata.get("expect"), Some("100-continue"));
    let cont = HttpProtocol.continue_reply(req).expect("a continue");
    assert_eq!(cont.kind, MessageKind::Event);
    assert_eq!(&cont.frame[..], b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(!cont.metadata.is_dirty());
    // The proxy's own continue goes to the client unchanged and changes nothing.
    let mut down = codec(Side::Downstream);
    let mut dbuf = BytesMut::from(&f[..]);
    drain(&mut *down, &mut dbuf);
    assert_eq!(encode(&mut *down, &cont), cont.frame);
    assert!(down.keep_alive());

    // The server's own interim answers are dropped.
    let mut up = upstream_after(&f);
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    for at in 0..=wire.len() {
        let mut up2 = upstream_after(&f);
        let (got, rest) = decode_pieces(&mut *up2, &[&wire[..at], &wire[at..]]);
        assert!(rest.is_empty());
        assert_eq!(got.len(), 1, "split at {at}");
        assert_eq!(got[0].status, Some(201));
    }
    let mut buf = BytesMut::from(&wire[..]);
    let got = drain(&mut *up, &mut buf);
    assert_eq!(got[0].request_id, req.request_id);

    // No continue without the expectation, for HTTP/1.0, or without a body.
    let get = &decode_all(Side::Downstream, &fixture("curl_get"))[0];
    assert!(HttpProtocol.continue_reply(get).is_none());
    let old = b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx";
    assert!(HttpProtocol
        .continue_reply(&decode_all(Side::Downstream, old)[0])
        .is_none());
    let empty = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
    assert!(HttpProtocol
        .continue_reply(&decode_all(Side::Downstream, empty)[0])
        .is_none());
}

#[test]
fn websocket_upgrade_becomes_a_tunnel() {
    let f = fixture("curl_upgrade");
    let frame: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    // The client side: after the upgrade request nothing is decoded until it is answered.
    let mut down = codec(Side::Downstream);
    let mut buf = BytesMut::from(&f[..]);
    buf.extend_from_slice(frame);
    let req = drain(&mut *down, &mut buf);
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].stream, StreamState::End);
    assert_eq!(&buf[..], frame);

    // The server side: the 101 ends the messages; what follows is left for the tunnel.
    let mut up = upstream_after(&f);
    let mut ubuf = BytesMut::from(
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"[..],
    );
    ubuf.extend_from_slice(frame);
    let resp = drain(&mut *up, &mut ubuf);
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].status, Some(101));
    assert_eq!(resp[0].stream, StreamState::Upgrade);
    assert_eq!(&ubuf[..], frame);
    assert!(up.decode(&mut ubuf).expect("no error").is_none());
    assert!(up.decode_eof(&mut ubuf).expect("no error").is_none());

    // Encoding the 101 for the client turns its connection into a tunnel too.
    encode(&mut *down, &resp[0]);
    assert!(down.decode(&mut buf).expect("no error").is_none());
    assert_eq!(&buf[..], frame);

    // A refused upgrade leaves an ordinary connection.
    let mut down = codec(Side::Downstream);
    let mut buf = BytesMut::from(&f[..]);
    buf.extend_from_slice(&fixture("curl_get"));
    assert_eq!(drain(&mut *down, &mut buf).len(), 1);
    let mut up = upstream_after(&f);
    let mut ubuf = BytesMut::from(&fixture("nginx_404")[..]);
    let refused = drain(&mut *up, &mut ubuf);
    assert_eq!(refused[0].stream, StreamState::More);
    encode_all(&mut *down, &refused);
    let next = drain(&mut *down, &mut buf);
    assert_eq!(next[0].metadata.get(":path"), Some("/api/users?id=7"));
    assert_eq!(next[0].request_id, 2);
}

#[test]
fn unrequested_switching_protocols_is_an_error() {
    let mut up = upstream_after(&fixture("curl_get"));
    let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"[..]);
    let e = up.decode(&mut buf).expect_err("refused");
    assert_eq!(e.reason, "unexpected_switching_protocols");
    assert!(matches!(e.action, ErrorAction::Close));
}

#[test]
fn connect_tunnels() {
    let f = fixture("curl_connect");
    let req = &decode_all(Side::Downstream, &f)[0];
    assert_eq!(req.metadata.get(":method"), Some("CONNECT"));
    assert_eq!(req.metadata.get(":authority"), Some("example.com:443"));
    assert_eq!(req.metadata.get(":path"), Some("example.com:443"));
    assert_eq!(req.metadata.get("proxy-connection"), Some("Keep-Alive"));
    assert_eq!(req.stream, StreamState::End);

    let mut up = upstream_after(&f);
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01"[..]);
    let resp = drain(&mut *up, &mut buf);
    assert_eq!(resp[0].stream, StreamState::Upgrade);
    assert_eq!(&buf[..], b"\x16\x03\x01");

    let mut up = upstream_after(&f);
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno"[..],
    );
    let resp = drain(&mut *up, &mut buf);
    assert_eq!(resp[0].stream, StreamState::More);
    assert_eq!(body(&resp), b"no");
}

#[test]
fn absolute_form_targets() {
    let f = fixture("curl_proxy_get");
    let req = &decode_all(Side::Downstream, &f)[0];
    assert_eq!(req.metadata.get(":path"), Some("/x?y=1"));
    assert_eq!(req.metadata.get(":authority"), Some("example.com"));
    let req = &decode_all(
        Side::Downstream,
        b"GET http://u:p@other.test:81 HTTP/1.1\r\nHost: ignored\r\n\r\n",
    )[0];
    assert_eq!(req.metadata.get(":path"), Some("/"));
    assert_eq!(req.metadata.get(":authority"), Some("other.test:81"));
    let req = &decode_all(Side::Downstream, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")[0];
    assert_eq!(req.metadata.get(":path"), Some("*"));
}

#[test]
fn keep_alive_rules() {
    let cases: [(&[u8], bool); 6] = [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: TE, Close\r\n\r\n",
            false,
        ),
        (b"GET / HTTP/1.0\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        (
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive, close\r\n\r\n",
            false,
        ),
    ];
    for (req, keep) in cases {
        let mut down = codec(Side::Downstream);
        let mut buf = BytesMut::from(req);
        let msgs = drain(&mut *down, &mut buf);
        assert_eq!(down.keep_alive(), keep, "{}", String::from_utf8_lossy(req));
        // The upstream connection that carries it follows the same rule.
        let mut up = codec(Side::Upstream);
        encode_all(&mut *up, &msgs);
        assert_eq!(up.keep_alive(), keep, "{}", String::from_utf8_lossy(req));
    }
    let f = fixture("curl_http10");
    let mut down = codec(Side::Downstream);
    drain(&mut *down, &mut BytesMut::from(&f[..]));
    assert!(!down.keep_alive());

    // HTTP/1.0 responses close unless they say keep-alive.
    let mut up = upstream_after(&fixture("curl_get"));
    drain(
        &mut *up,
        &mut BytesMut::from(&b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..]),
    );
    assert!(!up.keep_alive());
    let mut up = upstream_after(&fixture("curl_get"));
    drain(
        &mut *up,
        &mut BytesMut::from(
            &b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"[..],
        ),
    );
    assert!(up.keep_alive());
}

#[test]
fn bodies_delimited_by_the_close() {
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome bytes";
    let mut up = upstream_after(&fixture("curl_get"));
    let mut buf = BytesMut::from(&resp[..]);
    let msgs = drain(&mut *up, &mut buf);
    assert!(!up.keep_alive());
    assert_eq!(msgs[0].stream, StreamState::More);
    assert_eq!(msgs.last().map(|m| m.stream), Some(StreamState::More));
    buf.extend_from_slice(b" and the rest");
    let more = drain(&mut *up, &mut buf);
    assert_eq!(&more[0].frame[..], b" and the rest");
    let last = up.decode_eof(&mut buf).expect("eof").expect("a last piece");
    assert_eq!(last.kind, MessageKind::Data);
    assert_eq!(last.stream, StreamState::End);
    assert!(last.frame.is_empty());

    // The client connection closes after it.
    let mut down = codec(Side::Downstream);
    drain(&mut *down, &mut BytesMut::from(&fixture("curl_get")[..]));
    encode(&mut *down, &msgs[0]);
    assert!(!down.keep_alive());

    // Anywhere else the close cuts a message short.
    let mut up = upstream_after(&fixture("curl_get"));
    let f = fixture("nginx_200_length");
    let mut buf = BytesMut::from(&f[..f.len() - 3]);
    drain(&mut *up, &mut buf);
    assert_eq!(
        up.decode_eof(&mut buf).expect_err("truncated").reason,
        "truncated_frame"
    );
    let mut down = codec(Side::Downstream);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHo"[..]);
    drain(&mut *down, &mut buf);
    assert_eq!(
        down.decode_eof(&mut buf).expect_err("truncated").reason,
        "truncated_frame"
    );
    let mut buf = BytesMut::from(&b"\r\n"[..]);
    assert!(codec(Side::Downstream)
        .decode_eof(&mut buf)
        .expect("idle")
        .is_none());
}

#[test]
fn pipelined_requests_get_consecutive_ids() {
    let mut wire = fixture("curl_post_form").to_vec();
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(&fixture("curl_get"));
    wire.extend_from_slice(&fixture("curl_head"));
    let msgs = decode_all(Side::Downstream, &wire);
    let heads: Vec<_> = msgs
        .iter()
        .filter(|m| m.kind == MessageKind::Request)
        .map(|m| {
            (
                m.request_id,
                m.metadata.get(":method").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        heads,
        [(1, "POST".into()), (2, "GET".into()), (3, "HEAD".into())]
    );
}

#[test]
fn large_bodies_stream_in_pieces() {
    const SIZE: usize = 50 * 1024 * 1024;
    const READ: usize = 64 * 1024;
    let head = format!("PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n");
    let mut c = codec(Side::Downstream);
    let mut buf = BytesMut::from(head.as_bytes());
    let msgs = drain(&mut *c, &mut buf);
    assert_eq!(msgs.len(), 1);
    let chunk = vec![0x5a; READ];
    let (mut total, mut pieces, mut ended) = (0usize, 0usize, false);
    while total < SIZE {
        let n = READ.min(SIZE - total);
        buf.extend_from_slice(&chunk[..n]);
        for m in drain(&mut *c, &mut buf) {
            assert!(m.frame.len() <= READ);
            total += m.frame.len();
            pieces += 1;
            ended = m.stream == StreamState::End;
        }
        assert!(buf.is_empty(), "nothing is held back");
    }
    assert!(ended);
    assert_eq!(total, SIZE);
    assert_eq!(pieces, SIZE / READ);

    // The same body chunked, read in pieces that cut through the chunk framing.
    let mut c = codec(Side::Downstream);
    let head = "PUT /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut buf = BytesMut::from(head.as_bytes());
    drain(&mut *c, &mut buf);
    let mut chunk = format!("{:x}\r\n", 100_000).into_bytes();
    chunk.resize(chunk.len() + 100_000, b'z');
    chunk.extend_from_slice(b"\r\n");
    let mut wire = Vec::new();
    while wire.len() < SIZE {
        wire.extend_from_slice(&chunk);
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let mut seen = 0;
    let mut ended = false;
    for read in wire.chunks(READ - 7) {
        buf.extend_from_slice(read);
        for m in drain(&mut *c, &mut buf) {
            assert!(m.frame.len() <= READ);
            seen += m.frame.len();
            ended = m.stream == StreamState::End;
        }
    }
    assert!(ended);
    assert_eq!(seen, wire.len());
}

#[test]
fn request_mutation_rewrites_only_the_head() {
    let f = fixture("curl_post_form");
    let msgs = decode_all(Side::Downstream, &f);
    let mut head = msgs[0].clone();
    head.metadata.set("x-tier", "batch");
    head.metadata.set("user-agent", "metamesh");
    head.metadata.remove("accept");
    head.metadata.set(":path", "/v2/form");
    // Framing fields cannot be changed by a mutation.
    head.metadata.set("content-length", "999");
    let mut up = codec(Side::Upstream);
    let wire = encode_all(&mut *up, &[head, msgs[1].clone()]);
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("POST /v2/form HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("\r\nUser-Agent: metamesh\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Length: 24\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
    assert!(text.contains("\r\nx-tier: batch\r\n"));
    assert!(!text.contains("Accept:"));
    assert!(wire.ends_with(b"\r\n\r\nname=metamesh&tier=batch"));

    let again = decode_all(Side::Downstream, &wire);
    let m = &again[0].metadata;
    assert_eq!(m.get(":path"), Some("/v2/form"));
    assert_eq!(m.get("x-tier"), Some("batch"));
    assert_eq!(m.get("user-agent"), Some("metamesh"));
    assert_eq!(m.get("accept"), None);
    assert_eq!(m.get("content-length"), Some("24"));
    assert_eq!(body(&again), body(&msgs));
}

#[test]
fn new_fields_are_added_before_the_empty_line_of_the_original_head() {
    let f = fixture("curl_post_form");
    let msgs = decode_all(Side::Downstream, &f);
    let mut head = msgs[0].clone();
    head.metadata
        .set("x-request-id", "4b1d0c2e-2a55-4e7d-9a3c-1f0e2d3c4b5a");
    let mut out = EncodedFrame::new();
    codec(Side::Upstream)
        .encode(&head, head.request_id, &mut out)
        .expect("encode");
    assert_eq!(
        out.parts()[0].as_ptr(),
        head.frame.as_ptr(),
        "the original head is shared, not rewritten"
    );
    let wire = out.to_bytes();
    let n = head_len(&head.frame);
    let mut want = head.frame[..n - 2].to_vec();
    want.extend_from_slice(b"x-request-id: 4b1d0c2e-2a55-4e7d-9a3c-1f0e2d3c4b5a\r\n\r\n");
    want.extend_from_slice(&head.frame[n..]);
    assert_eq!(&wire[..], &want[..]);
    let again = decode_all(Side::Downstream, &[&wire[..], &msgs[1].frame[..]].concat());
    let mut want = attributes(&msgs[0]);
    want.push((
        "x-request-id".into(),
        "4b1d0c2e-2a55-4e7d-9a3c-1f0e2d3c4b5a".into(),
    ));
    assert_eq!(attributes(&again[0]), want);
    assert_eq!(body(&again), body(&msgs));

    // A value that would split the head is refused, as on the long way.
    let mut bad = msgs[0].clone();
    bad.metadata.set("x-evil", "a\r\nInjected: 1");
    let mut out = EncodedFrame::new();
    assert!(codec(Side::Upstream)
        .encode(&bad, bad.request_id, &mut out)
        .is_err());
    // A new field that bears on the connection takes the long way.
    let mut close = msgs[0].clone();
    close.metadata.set("connection", "close");
    let wire = encode(&mut *codec(Side::Upstream), &close);
    assert!(String::from_utf8_lossy(&wire).contains("\r\nconnection: close\r\n"));
}

#[test]
fn authority_changes_move_host() {
    let f = fixture("curl_get");
    let mut m = decode_all(Side::Downstream, &f).remove(0);
    m.metadata.set(":authority", "backend.internal:8080");
    let wire = encode(&mut *codec(Side::Upstream), &m);
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("GET /api/users?id=7 HTTP/1.1\r\nHost: backend.internal:8080\r\n"));
    let again = &decode_all(Side::Downstream, &wire)[0];
    assert_eq!(
        again.metadata.get(":authority"),
        Some("backend.internal:8080")
    );
    assert_eq!(again.metadata.get("host"), Some("backend.internal:8080"));

    // An absolute-form target follows too.
    let mut m = decode_all(Side::Downstream, &fixture("curl_proxy_get")).remove(0);
    m.metadata.set(":authority", "example.org");
    m.metadata.set(":method", "HEAD");
    let wire = encode(&mut *codec(Side::Upstream), &m);
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("HEAD http://example.org/x?y=1 HTTP/1.1\r\nHost: example.org\r\n"));
}

#[test]
fn obs_text_values_survive_a_mutation() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9 cr\xe8me\r\n\r\n";
    let mut m = decode_all(Side::Downstream, req).remove(0);
    assert_eq!(m.metadata.get("x-name"), Some("caf\u{fffd} cr\u{fffd}me"));
    m.metadata.set("x-tier", "batch");
    let wire = encode(&mut *codec(Side::Upstream), &m);
    assert!(wire.windows(18).any(|w| w == b"X-Name: caf\xe9 cr\xe8me"));
    assert!(wire.ends_with(b"x-tier: batch\r\n\r\n"));
}

#[test]
fn response_mutation_and_injection() {
    let get = fixture("curl_get");
    let f = fixture("nginx_200_chunked_gzip");
    let mut up = upstream_after(&get);
    let mut buf = BytesMut::from(&f[..]);
    let msgs = drain(&mut *up, &mut buf);
    let mut head = msgs[0].clone();
    head.metadata.set("x-served-by", "metamesh");
    head.metadata.remove("transfer-encoding");
    let mut down = codec(Side::Downstream);
    drain(&mut *down, &mut BytesMut::from(&get[..]));
    let mut all = vec![head];
    all.extend_from_slice(&msgs[1..]);
    let wire = encode_all(&mut *down, &all);
    assert!(wire.starts_with(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n"));
    let mut up = upstream_after(&get);
    let mut buf = BytesMut::from(&wire[..]);
    let again = drain(&mut *up, &mut buf);
    assert!(buf.is_empty());
    assert_eq!(again[0].metadata.get("x-served-by"), Some("metamesh"));
    assert_eq!(again[0].metadata.get("transfer-encoding"), Some("chunked"));
    assert_eq!(body(&again), body(&msgs));

    // A value that would split the head is refused.
    let mut bad = msgs[0].clone();
    bad.metadata.set("x-evil", "a\r\nContent-Length: 0");
    let mut out = EncodedFrame::new();
    assert!(codec(Side::Downstream).encode(&bad, 1, &mut out).is_err());
    let mut bad = decode_all(Side::Downstream, &get).remove(0);
    bad.metadata
        .set(":path", "/ HTTP/1.1\r\nHost: x\r\n\r\nGET /");
    assert!(codec(Side::Upstream).encode(&bad, 1, &mut out).is_err());
}

#[test]
fn local_replies_are_proper_responses() {
    for name in ["curl_get", "curl_post_form", "curl_head", "curl_http10"] {
        let f = fixture(name);
        let req = decode_all(Side::Downstream, &f).remove(0);
        let is_head = name == "curl_head";
        for kind in LocalReplyKind::ALL {
            let text = format!("because {}", kind.as_str());
            let reply = HttpProtocol.local_reply(
                &req,
                LocalReply {
                    kind,
                    message: &text,
                },
            );
            let status = u32::from(local_reply_status(kind));
            assert_eq!(reply.status, Some(status));
            assert_eq!(reply.request_id, req.request_id);
            let wire = encode(&mut *codec(Side::Downstream), &reply);
            let mut up = upstream_after(&f);
            let mut buf = BytesMut::from(&wire[..]);
            let got = drain(&mut *up, &mut buf);
            assert!(buf.is_empty());
            let head = &got[0];
            assert!(head.kind.is_response());
            assert_eq!(head.status, Some(status));
            assert_eq!(head.kind == MessageKind::Error, status >= 500);
            let md = &head.metadata;
            assert_eq!(md.get("content-type"), Some("text/plain"));
            assert_eq!(md.get("x-metamesh-local-reply"), Some(kind.as_str()));
            assert_eq!(
                md.get("content-length"),
                Some(&*(text.len() + 1).to_string())
            );
            assert_eq!(md.get("connection").is_some(), name == "curl_http10");
            if is_head {
                assert!(body(&got).is_empty());
            } else {
                assert_eq!(body(&got), format!("{text}\n").as_bytes());
            }
        }
    }
    let statuses: Vec<_> = LocalReplyKind::ALL
        .iter()
        .map(|k| local_reply_status(*k))
        .collect();
    assert_eq!(
        statuses,
        [404, 503, 503, 503, 504, 429, 403, 500, 400, 503, 500]
    );
    assert!(HttpProtocol
        .heartbeat_reply(&decode_all(Side::Downstream, &fixture("curl_get"))[0])
        .is_none());
}

#[test]
fn local_reply_mutation_keeps_the_body() {
    let req = decode_all(Side::Downstream, &fixture("curl_get")).remove(0);
    let mut reply = HttpProtocol.local_reply(
        &req,
        LocalReply {
            kind: LocalReplyKind::NoRoute,
            message: "no route",
        },
    );
    reply.metadata.set("x-served-by", "metamesh");
    let wire = encode(&mut *codec(Side::Downstream), &reply);
    assert!(wire.ends_with(b"x-served-by: metamesh\r\n\r\nno route\n"));
}

#[test]
fn malformed_requests_get_400_and_close() {
    let cases: [(&[u8], &str, u32); 12] = [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "transfer_encoding_with_content_length",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "conflicting_content_length",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n",
            "conflicting_content_length",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "unsupported_transfer_coding",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "chunked_not_last",
            400,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "transfer_encoding_in_http10",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "obs_fold",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "bad_header", 400),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare_lf", 400),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "duplicate_host",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            "missing_host",
            400,
        ),
        (
            b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
            "unsupported_version",
            505,
        ),
    ];
    for (req, reason, status) in cases {
        let e = decode_error(Side::Downstream, req);
        assert_eq!(e.reason, reason, "{}", String::from_utf8_lossy(req));
        let (got, text) = error_reply(&e);
        assert_eq!(got, status, "{reason}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.contains("\r\nx-metamesh-local-reply: bad_request\r\n"));
        // The same on the upstream side closes without an answer.
        let resp = String::from_utf8_lossy(req)
            .replacen("GET / HTTP/1.1", "HTTP/1.1 200 OK", 1)
            .replacen("POST / HTTP/1.1", "HTTP/1.1 200 OK", 1);
        if resp.starts_with("HTTP/") && !reason.contains("host") {
            let mut up = upstream_after(&fixture("curl_get"));
            let mut buf = BytesMut::from(resp.as_bytes());
            if let Err(e) = up.decode(&mut buf) {
                assert!(matches!(e.action, ErrorAction::Close), "{reason}");
            }
        }
    }
    // A bad chunk in a body closes the connection.
    let mut c = codec(Side::Downstream);
    let mut buf = BytesMut::from(
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
    );
    assert!(c.decode(&mut buf).expect("head").is_some());
    let e = c.decode(&mut buf).expect_err("bad chunk");
    assert_eq!(e.reason, "bad_chunk_size");
    assert!(matches!(e.action, ErrorAction::Close));
    assert!(!c.keep_alive());
}

#[test]
fn upstream_smuggling_is_refused() {
    for resp in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ] {
        let mut up = upstream_after(&fixture("curl_get"));
        let mut buf = BytesMut::from(resp);
        let e = up.decode(&mut buf).expect_err("refused");
        assert!(matches!(e.action, ErrorAction::Close), "{}", e.reason);
        assert!(!up.keep_alive());
    }
}

#[test]
fn head_limits() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(70 * 1024)
    );
    // Refused while still incomplete: the end of the head never has to arrive.
    let e = decode_error(Side::Downstream, &big.as_bytes()[..66 * 1024]);
    assert_eq!(e.reason, "head_too_large");
    assert_eq!(error_reply(&e).0, 431);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        many.push_str(&format!("x-{i}: {i}\r\n"));
    }
    let e = decode_error(Side::Downstream, many.as_bytes());
    assert_eq!(e.reason, "too_many_headers");
    assert_eq!(error_reply(&e).0, 431);

    // Options move the limits.
    let mut c = codec_with(
        Side::Downstream,
        &[("max_header_bytes", "2048"), ("max_headers", "200")],
    );
    many.push_str("\r\n");
    let mut buf = BytesMut::from(many.as_bytes());
    assert!(c.decode(&mut buf).expect("fits").is_some());
    let mut c = codec_with(Side::Downstream, &[("max_header_bytes", "1024")]);
    let mut buf = BytesMut::from(&big.as_bytes()[..1100]);
    assert_eq!(
        c.decode(&mut buf).expect_err("too large").reason,
        "head_too_large"
    );
    let mut up = codec_with(Side::Upstream, &[("max_headers", "3")]);
    let mut buf = BytesMut::from(&fixture("nginx_200_length")[..]);
    assert_eq!(
        up.decode(&mut buf).expect_err("too many").reason,
        "too_many_headers"
    );
}

#[test]
fn options_are_validated() {
    let opts = |list: &[(&str, &str)]| -> ProtocolOptions {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(HttpProtocol.validate_options(&opts(&[])).is_ok());
    assert!(HttpProtocol
        .validate_options(&opts(&[
            ("max_header_bytes", "16384"),
            ("max_headers", "50")
        ]))
        .is_ok());
    for (k, v) in [
        ("max_header_bytes", "lots"),
        ("max_header_bytes", "10"),
        ("max_headers", "0"),
        ("max_headers", "-1"),
        ("max_header_size", "100"),
    ] {
        let e = HttpProtocol
            .validate_options(&opts(&[(k, v)]))
            .expect_err("refused");
        assert_eq!(e.key, k);
    }
    let e = HttpProtocol
        .validate_options(&opts(&[("timeout", "1s")]))
        .expect_err("unknown");
    assert!(e.message.contains("max_header_bytes"), "{e}");
}

#[test]
fn registered_as_http() {
    let protocols = metamesh_protocols::builtin();
    let http = protocols.get("http").expect("registered");
    assert_eq!(http.name(), "http");
    assert!(!http.multiplexing());
}

#[test]
fn conformance_kit() {
    // The kit changes the first plain attribute of each sample and expects every other
    // attribute to stay; `:authority` follows `host`, so request samples lead with
    // another field.
    let get = b"GET /api/users?id=7 HTTP/1.1\r\nUser-Agent: curl/7.88.1\r\nHost: example.com\r\nAccept: */*\r\nx-tenant: acme\r\n\r\n";
    let post = b"POST /upload HTTP/1.1\r\nUser-Agent: curl/7.88.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\n";
    let put =
        b"PUT /f HTTP/1.1\r\nAccept: */*\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello";
    let report = Conformance::new(HttpProtocol::shared())
        .request(Sample::new("get", &get[..]))
        .request(Sample::new("chunked post", &post[..]))
        .request(Sample::new("put", &put[..]))
        .request(Sample::new("curl head", fixture("curl_head")).no_metadata_section())
        .response(Sample::new("nginx 200", fixture("nginx_200_length")))
        .response(Sample::new("nginx 404", fixture("nginx_404")))
        .response(Sample::new(
            "nginx chunked",
            fixture("nginx_200_chunked_gzip"),
        ))
        .response(Sample::new("nginx 204", fixture("nginx_204")))
        .run();
    assert_eq!(report.samples, 8);
}

fn request_with_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
        "/[a-z0-9/?=&]{0,30}",
        proptest::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 0..6),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..4),
        any::<bool>(),
    )
        .prop_map(|(method, path, fields, chunks, chunked)| {
            let mut out = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n").into_bytes();
            for (k, v) in fields {
                if matches!(&*k, "host" | "content-length" | "transfer-encoding") {
                    continue;
                }
                out.extend_from_slice(format!("{k}: {}\r\n", v.trim()).as_bytes());
            }
            if chunked {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in &chunks {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            } else {
                let len: usize = chunks.iter().map(Vec::len).sum();
                out.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
                for c in &chunks {
                    out.extend_from_slice(c);
                }
            }
            out
        })
}

proptest! {
    #[test]
    fn random_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..400), cut in any::<usize>()) {
        for side in [Side::Downstream, Side::Upstream] {
            let mut c = codec(side);
            let mut buf = BytesMut::new();
            let cut = cut % (input.len() + 1);
            for part in [&input[..cut], &input[cut..]] {
                buf.extend_from_slice(part);
                for _ in 0..1000 {
                    match c.decode(&mut buf) {
                        Ok(Some(m)) => {
                            let mut out = EncodedFrame::new();
                            let _ = c.encode(&m, m.request_id, &mut out);
                        }
                        _ => break,
                    }
                }
            }
            let _ = c.decode_eof(&mut buf);
        }
    }

    #[test]
    fn any_split_decodes_the_same(req in request_with_body(), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
        let whole = decode_all(Side::Downstream, &req);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (req.len() + 1)).collect();
        points.push(req.len());
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for p in points {
            pieces.push(&req[from..p]);
            from = p;
        }
        let (got, rest) = decode_pieces(&mut *codec(Side::Downstream), &pieces);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&got[0].frame, &whole[0].frame);
        prop_assert_eq!(&got[0].metadata, &whole[0].metadata);
        prop_assert_eq!(body(&got), body(&whole));
        prop_assert_eq!(encode_all(&mut *codec(Side::Upstream), &got), req);
    }
}
