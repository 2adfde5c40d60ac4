//! The kv codec through core's conformance kit, then the promises the kit cannot see
//! from outside: which buffers an encode shares, and what each malformed input does.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kv_protocol::{
    body, frame, Kind, KvProtocol, DEFAULT_MAX_HEADERS, HEAD_LEN, OPTION_MAX_HEADERS,
};
use metamesh_core::conformance::{Conformance, Sample};
use metamesh_core::{
    Codec, CodecOptions, DecodeError, EncodedFrame, ErrorAction, LocalReply, LocalReplyKind,
    Message, MessageKind, Protocol, ProtocolOptions, Side,
};

fn kv(kind: Kind, id: u32, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    frame(kind, id, headers, body).expect("a valid frame")
}

fn request() -> Bytes {
    kv(
        Kind::Request,
        7,
        &[("method", "get"), ("batchjob", "true"), ("user", "ünï")],
        b"key-42",
    )
}

fn options(pairs: &[(&str, &str)]) -> ProtocolOptions {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn codec(side: Side) -> Box<dyn Codec> {
    KvProtocol.codec(&CodecOptions::new(side))
}

fn decode_with(options: &CodecOptions, bytes: &[u8]) -> Result<Option<Message>, DecodeError> {
    KvProtocol.codec(options).decode(&mut BytesMut::from(bytes))
}

fn decode(side: Side, bytes: &[u8]) -> Result<Option<Message>, DecodeError> {
    decode_with(&CodecOptions::new(side), bytes)
}

fn decode_one(side: Side, bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let m = codec(side)
        .decode(&mut buf)
        .expect("decodes")
        .expect("a whole frame");
    assert!(buf.is_empty(), "consumed exactly one frame");
    m
}

fn encode(msg: &Message, id: u64) -> EncodedFrame {
    let mut out = EncodedFrame::new();
    codec(Side::Upstream)
        .encode(msg, id, &mut out)
        .expect("encodes");
    out
}

#[test]
fn kv_passes_the_conformance_kit() {
    let req = request();
    let report = Conformance::new(KvProtocol::shared())
        .request(Sample::new("request with headers and body", req.clone()).changing("batchjob"))
        .request(Sample::new(
            "oneway",
            kv(Kind::Oneway, 8, &[("event", "audit")], b"payload"),
        ))
        .request(Sample::new("bare request", kv(Kind::Request, 9, &[], b"")))
        .response(
            Sample::new(
                "response",
                kv(
                    Kind::Response,
                    7,
                    &[("served-by", "batch-1"), ("method", "get")],
                    b"value-42",
                ),
            )
            .in_reply_to(req.clone()),
        )
        .response(
            Sample::new(
                "error response",
                kv(Kind::Error, 7, &[("reason", "not_found")], b"no such key"),
            )
            .in_reply_to(req),
        )
        .response(Sample::new(
            "bodiless response",
            kv(Kind::Response, u32::MAX, &[], b""),
        ))
        .run();
    assert_eq!(report.samples, 6);
    assert_eq!(report.local_replies, 2 * LocalReplyKind::ALL.len());
    assert!(report.random_inputs > 0);
}

#[test]
fn kv_conforms_with_a_header_limit() {
    Conformance::new(KvProtocol::shared())
        .options(options(&[(OPTION_MAX_HEADERS, "4")]))
        .request(Sample::new("request", request()))
        .random_inputs(500, 7)
        .run();
}

#[test]
fn metadata_is_the_headers() {
    let m = decode_one(Side::Downstream, &request());
    assert_eq!(m.kind, MessageKind::Request);
    assert_eq!(m.request_id, 7);
    let attrs: Vec<_> = m.metadata.iter().collect();
    assert_eq!(
        attrs,
        [("method", "get"), ("batchjob", "true"), ("user", "ünï")]
    );
    assert_eq!(m.metadata.get("BatchJob"), Some("true"));
    assert_eq!(&body(&m)[..], b"key-42");
    assert_eq!(Kind::of(&m), Some(Kind::Request));
}

#[test]
fn unchanged_messages_are_written_from_the_read_buffer() {
    let m = decode_one(Side::Downstream, &request());
    let out = encode(&m, 7);
    assert_eq!(out.parts().len(), 1);
    assert_eq!(out.parts()[0].as_ptr(), m.frame.as_ptr(), "not copied");
    // Decoded strings are slices of the frame too.
    let method = m.metadata.get("method").expect("method");
    assert!(m.frame.as_ptr_range().contains(&method.as_ptr()));
}

#[test]
fn a_new_request_id_patches_only_the_head() {
    let f = request();
    let m = decode_one(Side::Downstream, &f);
    let out = encode(&m, 0x0102_0304);
    assert_eq!(out.parts().len(), 2, "a new head + the original rest");
    assert_eq!(out.parts()[0].len(), HEAD_LEN);
    assert_eq!(out.parts()[1].as_ptr(), m.frame[HEAD_LEN..].as_ptr());
    let bytes = out.to_bytes();
    assert_eq!(&bytes[4..8], &0x0102_0304u32.to_be_bytes());
    assert_eq!(&bytes[..4], &f[..4]);
    assert_eq!(&bytes[8..], &f[8..]);
}

#[test]
fn a_mutation_rewrites_the_header_block_and_shares_the_body() {
    let mut m = decode_one(Side::Downstream, &request());
    m.metadata.set("x-tier", "batch");
    m.metadata.remove("user");
    let out = encode(&m, 99);
    let body_part = out.parts().last().expect("parts");
    assert_eq!(body_part.as_ptr(), body(&m).as_ptr(), "body not copied");
    let bytes = out.to_bytes();
    let length = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    assert_eq!(length, bytes.len() - HEAD_LEN, "length fixed");
    let again = decode_one(Side::Upstream, &bytes);
    assert_eq!(again.request_id, 99);
    let attrs: Vec<_> = again.metadata.iter().collect();
    assert_eq!(
        attrs,
        [("method", "get"), ("batchjob", "true"), ("x-tier", "batch")]
    );
    assert_eq!(&body(&again)[..], b"key-42");
}

#[test]
fn ids_wider_than_the_wire_are_refused() {
    let m = decode_one(Side::Downstream, &request());
    let mut out = EncodedFrame::new();
    let e = codec(Side::Upstream)
        .encode(&m, u64::from(u32::MAX) + 1, &mut out)
        .expect_err("does not fit");
    assert!(e.to_string().contains("32 bits"), "{e}");
}

#[test]
fn a_mutation_that_cannot_be_written_is_an_encode_error() {
    let mut m = decode_one(Side::Downstream, &request());
    m.metadata.set("big", "x".repeat(70_000));
    let mut out = EncodedFrame::new();
    let e = codec(Side::Upstream)
        .encode(&m, 1, &mut out)
        .expect_err("too long for a u16 length");
    assert!(e.to_string().contains("65535"), "{e}");
}

#[test]
fn local_replies_are_error_frames_with_reason_and_message() {
    let req = decode_one(Side::Downstream, &request());
    for kind in LocalReplyKind::ALL {
        let reply = KvProtocol.local_reply(
            &req,
            LocalReply {
                kind,
                message: "no route matched the request",
            },
        );
        let bytes = encode(&reply, req.request_id).to_bytes();
        let m = decode_one(Side::Upstream, &bytes);
        assert_eq!(m.kind, MessageKind::Error);
        assert_eq!(Kind::of(&m), Some(Kind::Error));
        assert_eq!(m.request_id, 7);
        assert_eq!(m.metadata.get("reason"), Some(kind.as_str()));
        assert_eq!(&body(&m)[..], b"no route matched the request");
    }
}

#[test]
fn pings_are_answered_with_pongs_and_pongs_with_nothing() {
    let ping = decode_one(Side::Downstream, &kv(Kind::Ping, 41, &[], b""));
    assert_eq!(ping.kind, MessageKind::Heartbeat);
    let pong = KvProtocol.heartbeat_reply(&ping).expect("a pong");
    assert_eq!(Kind::of(&pong), Some(Kind::Pong));
    assert_eq!(pong.request_id, 41);
    let pong = decode_one(Side::Upstream, &encode(&pong, 41).to_bytes());
    assert_eq!(pong.kind, MessageKind::Heartbeat);
    assert!(
        KvProtocol.heartbeat_reply(&pong).is_none(),
        "no ping-pong loop"
    );
}

#[test]
fn an_oversized_request_is_answered_then_the_connection_closes() {
    let options = CodecOptions {
        max_frame_size: 64,
        ..CodecOptions::new(Side::Downstream)
    };
    let big = kv(Kind::Request, 5, &[("k", "v")], &[0u8; 100]);
    // Only the head has arrived: the size is known and refused at once.
    let e = decode_with(&options, &big[..HEAD_LEN]).expect_err("too large");
    assert_eq!(e.reason, "frame_too_large");
    let ErrorAction::ReplyAndClose(reply) = e.action else {
        panic!("expected a reply and a close, got {:?}", e.action);
    };
    assert_eq!(reply.request_id, 5);
    assert_eq!(reply.metadata.get("reason"), Some("frame_too_large"));

    let big = kv(Kind::Response, 5, &[], &[0u8; 100]);
    let e = decode_with(&options, &big).expect_err("too large");
    assert_eq!(e.reason, "frame_too_large");
    assert!(matches!(e.action, ErrorAction::Close));
}

/// A frame with a hand-written header block.
fn raw(kind: u8, id: u32, block: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = b"KV\x01".to_vec();
    v.push(kind);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&((block.len() + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(&(block.len() as u32).to_be_bytes());
    v.extend_from_slice(block);
    v.extend_from_slice(body);
    v
}

#[test]
fn malformed_input_gets_the_documented_action() {
    let dup = b"\x00\x01a\x00\x011\x00\x01A\x00\x012";
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\n".to_vec(),
            "bad_magic",
            "close",
        ),
        ("one bad byte", b"X".to_vec(), "bad_magic", "close"),
        (
            "another version",
            b"KV\x02\x01".to_vec(),
            "unsupported_version",
            "close",
        ),
        (
            "duplicate header in a request",
            raw(1, 3, dup, b""),
            "duplicate_header",
            "reply",
        ),
        (
            "header past its block",
            raw(1, 3, b"\x00\x09abc", b""),
            "malformed_headers",
            "reply",
        ),
        (
            "empty header name",
            raw(1, 3, b"\x00\x00\x00\x01v", b""),
            "malformed_headers",
            "reply",
        ),
        (
            "not UTF-8",
            raw(1, 3, b"\x00\x01\xff\x00\x00", b""),
            "malformed_headers",
            "reply",
        ),
        (
            "malformed oneway",
            raw(2, 3, dup, b""),
            "duplicate_header",
            "drop",
        ),
        ("unknown kind", raw(9, 3, b"", b"x"), "unknown_kind", "drop"),
        (
            "malformed response",
            raw(3, 3, dup, b""),
            "duplicate_header",
            "close",
        ),
    ];
    for (name, bytes, reason, action) in cases {
        let mut buf = BytesMut::from(&bytes[..]);
        let e = codec(Side::Downstream).decode(&mut buf).expect_err(name);
        assert_eq!(e.reason, reason, "{name}");
        let got = match &e.action {
            ErrorAction::Close => "close",
            ErrorAction::Drop => "drop",
            ErrorAction::Reply(m) => {
                assert_eq!(m.metadata.get("reason"), Some("bad_request"), "{name}");
                assert_eq!(m.request_id, 3, "{name}");
                "reply"
            }
            ErrorAction::ReplyAndClose(_) => "reply and close",
        };
        assert_eq!(got, action, "{name}");
        if action != "close" {
            assert!(buf.is_empty(), "{name}: the bad frame is consumed");
        }
    }
    // A header block longer than the frame says the frame is.
    let mut bad = raw(1, 3, b"", b"");
    bad[12..16].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(
        decode(Side::Downstream, &bad).expect_err("hdr_len").reason,
        "malformed_headers"
    );
}

#[test]
fn max_headers_limits_a_frame() {
    let options = CodecOptions {
        protocol_options: Arc::new(options(&[(OPTION_MAX_HEADERS, "2")])),
        ..CodecOptions::new(Side::Downstream)
    };
    let f = kv(Kind::Request, 1, &[("a", "1"), ("b", "2"), ("c", "3")], b"");
    let e = decode_with(&options, &f).expect_err("three headers");
    assert_eq!(e.reason, "too_many_headers");
    let f = kv(Kind::Request, 1, &[("a", "1"), ("b", "2")], b"");
    assert!(decode_with(&options, &f).expect("two headers").is_some());
    // Without the option the default applies.
    let many: Vec<(String, String)> = (0..=DEFAULT_MAX_HEADERS)
        .map(|i| (format!("h{i}"), String::new()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&**k, &**v)).collect();
    let f = kv(Kind::Request, 1, &many, b"");
    assert_eq!(
        decode(Side::Downstream, &f).expect_err("65 headers").reason,
        "too_many_headers"
    );
}

#[test]
fn options_are_validated() {
    let p = KvProtocol;
    assert!(p.validate_options(&options(&[])).is_ok());
    assert!(p
        .validate_options(&options(&[(OPTION_MAX_HEADERS, "16")]))
        .is_ok());
    for bad in ["0", "4097", "many", "-1", ""] {
        let e = p
            .validate_options(&options(&[(OPTION_MAX_HEADERS, bad)]))
            .expect_err(bad);
        assert_eq!(e.key, OPTION_MAX_HEADERS);
    }
    let e = p
        .validate_options(&options(&[("transport", "framed")]))
        .expect_err("unknown");
    assert_eq!(e.key, "transport");
    assert!(e.message.contains("max_headers"), "{e}");
}

#[test]
fn frames_arrive_in_pieces_and_back_to_back() {
    let a = request();
    let b = kv(Kind::Ping, 8, &[], b"");
    let mut c = codec(Side::Downstream);
    let mut buf = BytesMut::new();
    let all = [&a[..], &b[..]].concat();
    let mut got = Vec::new();
    for chunk in all.chunks(5) {
        buf.extend_from_slice(chunk);
        while let Some(m) = c.decode(&mut buf).expect("decodes") {
            got.push((m.kind, m.request_id));
        }
    }
    assert_eq!(
        got,
        [(MessageKind::Request, 7), (MessageKind::Heartbeat, 8)]
    );
    assert!(buf.is_empty());
}
