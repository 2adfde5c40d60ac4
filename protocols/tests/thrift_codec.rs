//! The Thrift codec against messages captured from Apache Thrift's Python library
//! (`tests/fixtures/thrift`) and frames of every variant built here: decoding, zero-copy
//! pass-through, seqid rewriting, THeader header mutation, local replies, split reads,
//! limits and hostile input, and the core conformance kit.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metamesh_codecs::thrift::{
    exception_type, parse_header_frame, MessageType, Protocol as Serialization, Transport,
};
use metamesh_core::conformance::{Conformance, Sample};
use metamesh_core::{
    Codec, CodecOptions, EncodedFrame, ErrorAction, LocalReply, LocalReplyKind, Message,
    MessageKind, Protocol, ProtocolOptions, Side,
};
use metamesh_protocols::thrift::build::{exception_of, variant_of, Frame};
use metamesh_protocols::thrift::ThriftProtocol;
use proptest::prelude::*;

fn fixture(name: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/thrift/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    Bytes::from(bytes)
}

fn codec_with(side: Side, options: &[(&str, &str)]) -> Box<dyn Codec> {
    let options: ProtocolOptions = options
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ThriftProtocol.codec(&CodecOptions {
        protocol_options: Arc::new(options),
        ..CodecOptions::new(side)
    })
}

fn codec(side: Side) -> Box<dyn Codec> {
    codec_with(side, &[])
}

fn decode_one(side: Side, bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let msg = codec(side)
        .decode(&mut buf)
        .expect("decodes")
        .expect("a whole frame");
    assert!(buf.is_empty(), "the frame was consumed exactly");
    msg
}

fn encode_parts(msg: &Message, id: u64) -> EncodedFrame {
    let mut out = EncodedFrame::new();
    codec(Side::Upstream)
        .encode(msg, id, &mut out)
        .expect("encodes");
    out
}

fn encode(msg: &Message, id: u64) -> Bytes {
    encode_parts(msg, id).to_bytes()
}

fn attributes(msg: &Message) -> Vec<(String, String)> {
    msg.metadata
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const SEQID: u64 = 16_909_060;

const CLIENT_HEADERS: [(&str, &str); 2] = [("x-tenant", "acme"), ("x-route", "blue")];

/// A captured request: name, variant, kind, method, service, seqid, info headers.
type CapturedRequest = (
    &'static str,
    Transport,
    Serialization,
    MessageKind,
    &'static str,
    Option<&'static str>,
    u64,
    &'static [(&'static str, &'static str)],
);

/// Every captured request.
#[rustfmt::skip]
fn captured_requests() -> Vec<CapturedRequest> {
    use MessageKind::{OnewayRequest as O, Request as R};
    use Serialization::{Binary as B, Compact as C};
    use Transport::{Framed as F, Header as H, Unframed as U};
    let no: &[(&str, &str)] = &[];
    let hd: &[(&str, &str)] = &CLIENT_HEADERS;
    let mux = Some("EchoService");
    vec![
        ("binary_framed_echo_request", F, B, R, "echo", None, 0, no),
        ("binary_framed_echo_seqid_request", F, B, R, "echo", None, SEQID, no),
        ("binary_framed_fail_request", F, B, R, "fail", None, 0, no),
        ("binary_framed_undeclared_request", F, B, R, "undeclared", None, 0, no),
        ("binary_framed_unknown_method_request", F, B, R, "nosuchMethod", None, 0, no),
        ("binary_framed_oneway_request", F, B, O, "fire", None, 0, no),
        ("binary_framed_nonstrict_echo_request", F, B, R, "echo", None, 0, no),
        ("compact_framed_echo_request", F, C, R, "echo", None, 0, no),
        ("compact_framed_echo_seqid_request", F, C, R, "echo", None, SEQID, no),
        ("compact_framed_fail_request", F, C, R, "fail", None, 0, no),
        ("compact_framed_undeclared_request", F, C, R, "undeclared", None, 0, no),
        ("compact_framed_unknown_method_request", F, C, R, "nosuchMethod", None, 0, no),
        ("compact_framed_oneway_request", F, C, O, "fire", None, 0, no),
        ("binary_buffered_echo_request", U, B, R, "echo", None, 0, no),
        ("binary_buffered_echo_seqid_request", U, B, R, "echo", None, SEQID, no),
        ("binary_buffered_fail_request", U, B, R, "fail", None, 0, no),
        ("binary_buffered_undeclared_request", U, B, R, "undeclared", None, 0, no),
        ("binary_buffered_oneway_request", U, B, O, "fire", None, 0, no),
        ("compact_buffered_echo_request", U, C, R, "echo", None, 0, no),
        ("compact_buffered_undeclared_request", U, C, R, "undeclared", None, 0, no),
        ("header_binary_echo_request", H, B, R, "echo", None, 0, hd),
        ("header_binary_echo_seqid_request", H, B, R, "echo", None, SEQID, hd),
        ("header_binary_fail_request", H, B, R, "fail", None, 0, hd),
        ("header_binary_undeclared_request", H, B, R, "undeclared", None, 0, hd),
        ("header_binary_unknown_method_request", H, B, R, "nosuchMethod", None, 0, hd),
        ("header_binary_oneway_request", H, B, O, "fire", None, 0, hd),
        ("header_binary_no_headers_echo_request", H, B, R, "echo", None, 0, no),
        ("header_compact_echo_request", H, C, R, "echo", None, 0, hd),
        ("header_compact_echo_seqid_request", H, C, R, "echo", None, SEQID, hd),
        ("header_compact_undeclared_request", H, C, R, "undeclared", None, 0, hd),
        ("mux_binary_framed_echo_request", F, B, R, "echo", mux, 0, no),
        ("mux_binary_framed_fail_request", F, B, R, "fail", mux, 0, no),
        ("mux_binary_framed_oneway_request", F, B, O, "fire", mux, 0, no),
        ("mux_compact_framed_echo_request", F, C, R, "echo", mux, 0, no),
        ("mux_header_binary_echo_request", H, B, R, "echo", mux, 0, hd),
    ]
}

/// A captured reply: name, kind, method, seqid, exception (type and text), whether it
/// carries the server's info header.
type CapturedReply = (
    &'static str,
    MessageKind,
    &'static str,
    u64,
    Option<(i32, &'static str)>,
    bool,
);

/// Every captured reply.
#[rustfmt::skip]
fn captured_replies() -> Vec<CapturedReply> {
    use MessageKind::{Error as E, Response as R};
    let internal = Some((exception_type::INTERNAL_ERROR, "Internal error"));
    let unknown = Some((exception_type::UNKNOWN_METHOD, "Unknown function nosuchMethod"));
    vec![
        ("binary_framed_echo_reply", R, "echo", 0, None, false),
        ("binary_framed_echo_seqid_reply", R, "echo", SEQID, None, false),
        ("binary_framed_fail_reply", R, "fail", 0, None, false),
        ("binary_framed_undeclared_reply", E, "undeclared", 0, internal, false),
        ("binary_framed_unknown_method_reply", E, "nosuchMethod", 0, unknown, false),
        ("binary_framed_nonstrict_echo_reply", R, "echo", 0, None, false),
        ("compact_framed_echo_reply", R, "echo", 0, None, false),
        ("compact_framed_echo_seqid_reply", R, "echo", SEQID, None, false),
        ("compact_framed_fail_reply", R, "fail", 0, None, false),
        ("compact_framed_undeclared_reply", E, "undeclared", 0, internal, false),
        ("compact_framed_unknown_method_reply", E, "nosuchMethod", 0, unknown, false),
        ("binary_buffered_echo_reply", R, "echo", 0, None, false),
        ("binary_buffered_echo_seqid_reply", R, "echo", SEQID, None, false),
        ("binary_buffered_fail_reply", R, "fail", 0, None, false),
        ("binary_buffered_undeclared_reply", E, "undeclared", 0, internal, false),
        ("compact_buffered_echo_reply", R, "echo", 0, None, false),
        ("compact_buffered_undeclared_reply", E, "undeclared", 0, internal, false),
        ("header_binary_echo_reply", R, "echo", 0, None, true),
        ("header_binary_echo_seqid_reply", R, "echo", SEQID, None, true),
        ("header_binary_fail_reply", R, "fail", 0, None, true),
        ("header_binary_undeclared_reply", E, "undeclared", 0, internal, true),
        ("header_binary_unknown_method_reply", E, "nosuchMethod", 0, unknown, false),
        ("header_binary_no_headers_echo_reply", R, "echo", 0, None, true),
        ("header_binary_zlib_echo_reply", R, "echo", 0, None, true),
        ("header_compact_echo_reply", R, "echo", 0, None, true),
        ("header_compact_echo_seqid_reply", R, "echo", SEQID, None, true),
        ("header_compact_undeclared_reply", E, "undeclared", 0, internal, true),
        ("mux_binary_framed_echo_reply", R, "echo", 0, None, false),
        ("mux_binary_framed_fail_reply", R, "fail", 0, None, false),
        ("mux_compact_framed_echo_reply", R, "echo", 0, None, false),
        ("mux_header_binary_echo_reply", R, "echo", 0, None, true),
    ]
}

#[test]
fn captured_requests_decode_and_pass_through_unchanged() {
    for (name, transport, protocol, kind, method, service, seq, headers) in captured_requests() {
        let f = fixture(name);
        let m = decode_one(Side::Downstream, &f);
        assert_eq!(m.kind, kind, "{name}");
        assert_eq!(m.request_id, seq, "{name}");
        assert_eq!(variant_of(&m), Some((transport, protocol)), "{name}");
        let message_type = if kind == MessageKind::OnewayRequest {
            "oneway"
        } else {
            "call"
        };
        let mut want = vec![("method", method)];
        if let Some(s) = service {
            want.push(("service", s));
        }
        want.push(("message_type", message_type));
        want.extend_from_slice(headers);
        assert_eq!(attributes(&m), pairs(&want), "{name}");
        // Unchanged: the very same bytes, without a copy.
        let out = encode_parts(&m, m.request_id);
        assert_eq!(out.parts().len(), 1, "{name}");
        assert_eq!(out.parts()[0].as_ptr(), m.frame.as_ptr(), "{name}");
        assert_eq!(out.to_bytes(), f, "{name}");
    }
}

#[test]
fn captured_replies_decode() {
    for (name, kind, method, seq, exception, has_headers) in captured_replies() {
        let m = decode_one(Side::Upstream, &fixture(name));
        assert_eq!(m.kind, kind, "{name}");
        assert_eq!(m.request_id, seq, "{name}");
        assert_eq!(m.metadata.get("method"), Some(method), "{name}");
        assert_eq!(m.metadata.get("service"), None, "{name}");
        let (status, message_type) = match kind {
            MessageKind::Error => (3, "exception"),
            _ => (2, "reply"),
        };
        assert_eq!(m.status, Some(status), "{name}");
        assert_eq!(m.metadata.get("message_type"), Some(message_type), "{name}");
        assert_eq!(
            m.metadata.get("x-served-by-group"),
            has_headers.then_some("capture"),
            "{name}"
        );
        match exception {
            Some((ty, text)) => {
                assert_eq!(exception_of(&m), Ok((ty, text.to_owned())), "{name}")
            }
            None => assert!(exception_of(&m).is_err(), "{name}"),
        }
        assert_eq!(encode(&m, m.request_id), fixture(name), "{name}");
    }
}

#[test]
fn zlib_payloads_get_an_invalid_transform_reply() {
    let f = fixture("header_binary_zlib_echo_request");
    let mut buf = BytesMut::from(&f[..]);
    let e = codec(Side::Downstream)
        .decode(&mut buf)
        .expect_err("a compressed payload cannot be routed");
    assert_eq!(e.reason, "unsupported_transform");
    assert!(buf.is_empty(), "the frame was consumed");
    let ErrorAction::Reply(reply) = e.action else {
        panic!("expected a reply, got {:?}", e.action);
    };
    assert_eq!(reply.kind, MessageKind::Error);
    assert_eq!(
        variant_of(&reply),
        Some((Transport::Header, Serialization::Binary))
    );
    let (ty, text) = exception_of(&reply).expect("exception");
    assert_eq!(ty, exception_type::INVALID_TRANSFORM);
    assert!(text.contains("transform 1"), "{text}");
    let back = decode_one(Side::Upstream, &encode(&reply, reply.request_id));
    assert_eq!(back.kind, MessageKind::Error);
    // A server's answer with a transform closes the upstream connection.
    let mut buf = BytesMut::from(&f[..]);
    let e = codec(Side::Upstream).decode(&mut buf).expect_err("error");
    assert!(matches!(e.action, ErrorAction::Close));
}

/// One frame of every variant, built here.
fn variants() -> Vec<(&'static str, Frame<'static>)> {
    let fields: &[(i16, &str)] = &[(1, "hello"), (2, "world")];
    let headers: &[(&str, &str)] = &[("user-id", "42"), ("x-tier", "gold")];
    let base = |transport, protocol, strict| Frame {
        transport,
        protocol,
        strict,
        name: "Calc:add",
        message_type: MessageType::Call,
        headers: if transport == Transport::Header {
            headers
        } else {
            &[]
        },
        flags: 0,
        fields,
    };
    use Serialization::{Binary, Compact};
    use Transport::{Framed, Header, Unframed};
    vec![
        ("binary strict framed", base(Framed, Binary, true)),
        ("binary non-strict framed", base(Framed, Binary, false)),
        ("binary non-strict unframed", base(Unframed, Binary, false)),
        ("compact framed", base(Framed, Compact, true)),
        ("binary unframed", base(Unframed, Binary, true)),
        ("compact unframed", base(Unframed, Compact, true)),
        ("THeader binary", base(Header, Binary, true)),
        ("THeader compact", base(Header, Compact, true)),
    ]
}

#[test]
fn every_variant_decodes_encodes_and_rewrites_ids() {
    for (name, frame) in variants() {
        for seq in [0i32, 7, 300, -1, i32::MAX] {
            let bytes = frame.encode(seq);
            let m = decode_one(Side::Downstream, &bytes);
            assert_eq!(m.kind, MessageKind::Request, "{name}");
            assert_eq!(m.request_id, u64::from(seq as u32), "{name}");
            assert_eq!(
                variant_of(&m),
                Some((frame.transport, frame.protocol)),
                "{name}"
            );
            assert_eq!(m.metadata.get("method"), Some("add"), "{name}");
            assert_eq!(m.metadata.get("service"), Some("Calc"), "{name}");
            assert_eq!(m.metadata.get("message_type"), Some("call"), "{name}");
            if frame.transport == Transport::Header {
                assert_eq!(m.metadata.get("user-id"), Some("42"), "{name}");
                assert_eq!(m.metadata.get("X-Tier"), Some("gold"), "{name}");
            }
            assert_eq!(encode(&m, m.request_id), bytes, "{name}");
            // New ids, including ones that change a compact varint's length.
            for id in [0u64, 1, 127, 128, 300, 0x1234_5678, 0x7fff_fffe] {
                let out = encode_parts(&m, id);
                let patched = out.to_bytes();
                assert_eq!(
                    patched,
                    frame.encode(id as i32),
                    "{name}: seq {seq} -> {id}"
                );
                let again = decode_one(Side::Downstream, &patched);
                assert_eq!(again.request_id, id, "{name}");
                assert_eq!(attributes(&again), attributes(&m), "{name}");
                // The body after the seqid is shared, not copied.
                let last = out.parts().last().expect("parts");
                let tail_at = m.frame.len() - last.len();
                assert_eq!(last.as_ptr(), m.frame[tail_at..].as_ptr(), "{name}");
                if frame.transport == Transport::Header {
                    let h = parse_header_frame(&patched).expect("header");
                    assert_eq!(h.seq_id, id as i32, "{name}");
                }
            }
        }
    }
}

#[test]
fn captured_seqids_are_rewritten_and_restored() {
    for (name, ..) in captured_requests() {
        let f = fixture(name);
        let m = decode_one(Side::Downstream, &f);
        for id in [1u64, 0x7fff_fffe] {
            let upstream = encode(&m, id);
            let seen = decode_one(Side::Upstream, &upstream);
            assert_eq!(seen.request_id, id, "{name}");
            assert_eq!(attributes(&seen), attributes(&m), "{name}");
            // The proxy puts the client's id back: the original bytes.
            assert_eq!(encode(&seen, m.request_id), f, "{name}");
        }
    }
    // Both seqids of a THeader frame follow the rewrite.
    let m = decode_one(Side::Downstream, &fixture("header_compact_echo_request"));
    let upstream = encode(&m, SEQID);
    assert_eq!(upstream, fixture("header_compact_echo_seqid_request"));
}

#[test]
fn theader_mutation_rewrites_only_the_info_headers() {
    for name in [
        "header_binary_echo_request",
        "header_compact_echo_seqid_request",
        "mux_header_binary_echo_request",
    ] {
        let f = fixture(name);
        let m = decode_one(Side::Downstream, &f);
        let mut changed = m.clone();
        changed.metadata.set("x-tier", "batch");
        changed.metadata.set("X-Tenant", "globex");
        changed.metadata.remove("x-route");
        // Keys that describe the message are not info headers and are not written.
        changed.metadata.set("method", "other");
        for id in [m.request_id, 99] {
            let out = encode_parts(&changed, id);
            let bytes = out.to_bytes();
            let again = decode_one(Side::Downstream, &bytes);
            assert_eq!(again.request_id, id, "{name}");
            assert_eq!(again.metadata.get("x-tier"), Some("batch"), "{name}");
            assert_eq!(again.metadata.get("x-tenant"), Some("globex"), "{name}");
            assert_eq!(again.metadata.get("x-route"), None, "{name}");
            assert_eq!(again.metadata.get("method"), Some("echo"), "{name}");
            assert_eq!(
                again.metadata.get("service"),
                m.metadata.get("service"),
                "{name}"
            );
            // The payload is untouched and shared.
            let old = parse_header_frame(&f).expect("header");
            let new = parse_header_frame(&bytes).expect("header");
            assert_eq!(new.flags, old.flags);
            assert_eq!(new.protocol, old.protocol);
            assert_eq!((new.payload_at - 14) % 4, 0, "{name}: padded");
            if id == m.request_id {
                assert_eq!(&bytes[new.payload_at..], &f[old.payload_at..], "{name}");
                let last = out.parts().last().expect("parts");
                assert_eq!(last.as_ptr(), m.frame[old.payload_at..].as_ptr(), "{name}");
            }
        }
    }
}

#[test]
fn unroutable_info_headers_survive_mutation() {
    use metamesh_codecs::thrift::{write_frame, Framing, HeaderPrefix, InfoKind, Writer};
    let mut f = Vec::new();
    let prefix = HeaderPrefix {
        flags: 5,
        seq_id: 3,
        protocol: Serialization::Compact,
        headers: &[
            (b"method", b"from-header"),
            (b"bin", b"\xff\xfe"),
            (b"k", b"v"),
        ],
        persistent_headers: &[(b"client", b"py")],
    };
    write_frame(&mut f, &Framing::Header(prefix), |out| {
        let mut w = Writer::new(out, Serialization::Compact);
        w.message_begin("ping", MessageType::Call, 3);
        w.struct_begin();
        w.field_stop();
        w.struct_end();
    })
    .expect("frame");
    let m = decode_one(Side::Downstream, &f);
    assert_eq!(
        attributes(&m),
        pairs(&[("method", "ping"), ("message_type", "call"), ("k", "v")])
    );
    let mut changed = m.clone();
    changed.metadata.set("k", "w");
    let bytes = encode(&changed, 4);
    let h = parse_header_frame(&bytes).expect("header");
    assert_eq!((h.flags, h.seq_id), (5, 4));
    let infos: Vec<_> = h.infos(&bytes).map(|i| (i.kind, i.key, i.value)).collect();
    assert_eq!(
        infos,
        [
            (InfoKind::KeyValue, &b"method"[..], &b"from-header"[..]),
            (InfoKind::KeyValue, &b"bin"[..], &b"\xff\xfe"[..]),
            (InfoKind::KeyValue, &b"k"[..], &b"w"[..]),
            (InfoKind::PersistentKeyValue, &b"client"[..], &b"py"[..]),
        ]
    );
}

#[test]
fn metadata_changes_on_frames_without_headers_only_route() {
    for name in [
        "binary_framed_echo_request",
        "compact_buffered_echo_request",
        "mux_compact_framed_echo_request",
    ] {
        let f = fixture(name);
        let mut m = decode_one(Side::Downstream, &f);
        m.metadata.set("x-tier", "batch");
        assert_eq!(encode(&m, m.request_id), f, "{name}");
        let patched = encode(&m, 77);
        let again = decode_one(Side::Downstream, &patched);
        assert_eq!(again.request_id, 77);
        assert_eq!(again.metadata.get("x-tier"), None);
    }
}

#[test]
fn local_replies_are_exceptions_in_the_clients_encoding() {
    let p = ThriftProtocol;
    let mut requests: Vec<(String, Bytes)> = captured_requests()
        .into_iter()
        .filter(|r| r.3 == MessageKind::Request)
        .map(|r| (r.0.to_owned(), fixture(r.0)))
        .collect();
    for (name, frame) in variants() {
        requests.push((name.to_owned(), frame.encode(0x0102_0304)));
    }
    for (name, bytes) in requests {
        let req = decode_one(Side::Downstream, &bytes);
        let method = req.metadata.get("method").expect("method").to_owned();
        for kind in LocalReplyKind::ALL {
            let reply = p.local_reply(
                &req,
                LocalReply {
                    kind,
                    message: "because",
                },
            );
            assert_eq!(reply.request_id, req.request_id, "{name}");
            // As the client's codec reads it.
            let got = decode_one(Side::Upstream, &encode(&reply, reply.request_id));
            assert_eq!(got.kind, MessageKind::Error, "{name}");
            assert_eq!(got.status, Some(3), "{name}");
            assert_eq!(got.request_id, req.request_id, "{name}");
            assert_eq!(variant_of(&got), variant_of(&req), "{name}");
            assert_eq!(got.metadata.get("method"), Some(&*method), "{name}");
            assert_eq!(
                got.metadata.get("x-tenant"),
                None,
                "{name}: no headers echoed"
            );
            let (ty, text) = exception_of(&got).expect("exception");
            let want = match kind {
                LocalReplyKind::NoRoute => exception_type::UNKNOWN_METHOD,
                LocalReplyKind::BadRequest => exception_type::PROTOCOL_ERROR,
                _ => exception_type::INTERNAL_ERROR,
            };
            assert_eq!(ty, want, "{name} {kind:?}");
            assert!(text.contains("because"), "{name}: {text}");
            if kind == LocalReplyKind::NoRoute {
                assert!(
                    text.contains(&format!("no route for method {method}")),
                    "{text}"
                );
            } else {
                assert!(text.contains(kind.as_str()), "{text}");
            }
        }
    }
    // Local replies keep the strictness of a binary request.
    let req = decode_one(
        Side::Downstream,
        &fixture("binary_framed_nonstrict_echo_request"),
    );
    let reply = p.local_reply(
        &req,
        LocalReply {
            kind: LocalReplyKind::Timeout,
            message: "late",
        },
    );
    assert_eq!(
        &reply.frame[4..8],
        &[0, 0, 0, 4],
        "non-strict: the name comes first"
    );
}

#[test]
fn every_split_of_a_frame_decodes_the_same() {
    let mut frames: Vec<(String, Bytes, Side)> = Vec::new();
    for (name, ..) in captured_requests() {
        frames.push((name.to_owned(), fixture(name), Side::Downstream));
    }
    for (name, ..) in captured_replies() {
        frames.push((name.to_owned(), fixture(name), Side::Upstream));
    }
    for (name, frame) in variants() {
        frames.push((name.to_owned(), frame.encode(300), Side::Downstream));
    }
    for (name, bytes, side) in frames {
        let whole = decode_one(side, &bytes);
        for at in 0..=bytes.len() {
            let mut c = codec(side);
            let mut buf = BytesMut::from(&bytes[..at]);
            let first = c.decode(&mut buf).expect("first part");
            let m = match first {
                Some(m) => m,
                None => {
                    buf.extend_from_slice(&bytes[at..]);
                    c.decode(&mut buf).expect("decodes").expect("frame")
                }
            };
            assert!(buf.is_empty(), "{name} split at {at}");
            assert_eq!(m.frame, whole.frame, "{name} split at {at}");
            assert_eq!(m.request_id, whole.request_id, "{name} split at {at}");
            assert_eq!(attributes(&m), attributes(&whole), "{name} split at {at}");
            assert_eq!(m.layout, whole.layout, "{name} split at {at}");
        }
    }
}

#[test]
fn back_to_back_frames_of_mixed_variants() {
    let mut stream = BytesMut::new();
    let mut want = Vec::new();
    for (i, (_, frame)) in variants().into_iter().enumerate() {
        let bytes = frame.encode(i as i32);
        stream.extend_from_slice(&bytes);
        want.push(bytes);
    }
    let mut c = codec(Side::Downstream);
    for (i, bytes) in want.iter().enumerate() {
        let m = c.decode(&mut stream).expect("decodes").expect("frame");
        assert_eq!(&m.frame, bytes);
        assert_eq!(m.request_id, i as u64);
    }
    assert!(stream.is_empty());
    assert!(c.decode(&mut stream).expect("empty").is_none());
}

#[test]
fn frames_over_the_limit_are_refused_early() {
    let small = |side| {
        ThriftProtocol.codec(&CodecOptions {
            max_frame_size: 64,
            ..CodecOptions::new(side)
        })
    };
    // A framed length over the limit: refused from the first 8 bytes.
    let mut buf = BytesMut::from(&[0, 0, 1, 0, 0x80, 0x01, 0, 1][..]);
    let e = small(Side::Downstream)
        .decode(&mut buf)
        .expect_err("too large");
    assert_eq!(e.reason, "frame_too_large");
    assert!(matches!(e.action, ErrorAction::Close));
    // An unframed string field that claims a megabyte.
    let big = Frame {
        transport: Transport::Unframed,
        ..Frame::call("m")
    }
    .encode(1);
    let mut head = big[..big.len() - 1].to_vec(); // cut off the stop byte
    head.extend_from_slice(&[11, 0, 9, 0, 0x10, 0, 0]);
    let mut buf = BytesMut::from(&head[..]);
    let e = small(Side::Upstream)
        .decode(&mut buf)
        .expect_err("too large");
    assert_eq!(e.reason, "frame_too_large");
    // An unframed message that keeps growing.
    let mut c = small(Side::Downstream);
    let mut buf = BytesMut::from(&head[..head.len() - 7]);
    buf.extend_from_slice(&[15, 0, 9, 3, 0, 0, 0x10, 0]);
    let mut result = c.decode(&mut buf);
    while let Ok(None) = result {
        buf.extend_from_slice(&[1; 8]);
        result = c.decode(&mut buf);
    }
    assert_eq!(result.expect_err("too large").reason, "frame_too_large");
}

#[test]
fn garbage_closes_the_connection() {
    for (bytes, reason) in [
        (&b"\xff\xff\xff\xff\xff\xff\xff\xff"[..], "bad_thrift_frame"),
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "bad_thrift_frame"),
        // A framed strict message of type 9.
        (
            &[0, 0, 0, 12, 0x80, 0x01, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1][..],
            "bad_thrift_frame",
        ),
        // A frame too short for its message.
        (&[0, 0, 0, 4, 0x80, 0x01, 0, 1][..], "bad_thrift_frame"),
        // THeader with an unknown payload protocol (JSON).
        (
            &[
                0, 0, 0, 14, 0x0f, 0xff, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0x5b, 0x5d,
            ][..],
            "bad_thrift_frame",
        ),
    ] {
        let mut buf = BytesMut::from(bytes);
        let e = codec(Side::Downstream)
            .decode(&mut buf)
            .expect_err("garbage");
        assert_eq!(e.reason, reason, "{bytes:?}");
        assert!(matches!(e.action, ErrorAction::Close), "{bytes:?}");
    }
}

#[test]
fn options_limit_the_variants() {
    let p = ThriftProtocol;
    let opts = |list: &[(&str, &str)]| -> ProtocolOptions {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    for ok in [
        &[][..],
        &[("transport", "auto"), ("protocol", "auto")][..],
        &[("transport", "framed"), ("protocol", "binary")][..],
        &[("transport", "unframed"), ("protocol", "compact")][..],
        &[("transport", "header")][..],
    ] {
        assert!(p.validate_options(&opts(ok)).is_ok(), "{ok:?}");
    }
    for (bad, key) in [
        (&[("transport", "http")][..], "transport"),
        (&[("protocol", "json")][..], "protocol"),
        (&[("framing", "framed")][..], "framing"),
    ] {
        let e = p.validate_options(&opts(bad)).expect_err("refused");
        assert_eq!(e.key, key);
    }
    // A compact-only listener refuses a binary frame.
    let mut buf = BytesMut::from(&fixture("binary_framed_echo_request")[..]);
    let e = codec_with(Side::Downstream, &[("protocol", "compact")])
        .decode(&mut buf)
        .expect_err("binary refused");
    assert_eq!(e.reason, "unsupported_protocol");
    // A framed-only listener does not take THeader frames for framed ones.
    let mut buf = BytesMut::from(&fixture("header_binary_echo_request")[..]);
    assert!(codec_with(Side::Downstream, &[("transport", "framed")])
        .decode(&mut buf)
        .is_err());
    // Forced variants decode what they name.
    for (name, options) in [
        (
            "compact_buffered_echo_request",
            [("transport", "unframed"), ("protocol", "compact")],
        ),
        (
            "header_binary_echo_request",
            [("transport", "header"), ("protocol", "binary")],
        ),
        (
            "binary_framed_nonstrict_echo_request",
            [("transport", "framed"), ("protocol", "binary")],
        ),
    ] {
        let f = fixture(name);
        let mut buf = BytesMut::from(&f[..]);
        let m = codec_with(Side::Downstream, &options)
            .decode(&mut buf)
            .expect("decodes")
            .expect("frame");
        assert_eq!(m.frame, f, "{name}");
    }
}

#[test]
fn registered_as_thrift() {
    let r = metamesh_protocols::builtin();
    let p = r.get("thrift").expect("registered");
    assert_eq!(p.name(), "thrift");
    assert!(p.multiplexing());
    let m = decode_one(Side::Downstream, &fixture("binary_framed_echo_request"));
    assert!(p.heartbeat_reply(&m).is_none());
}

#[test]
fn thrift_passes_the_conformance_kit() {
    let mut kit = Conformance::new(ThriftProtocol::shared());
    let mut n = 0;
    for (name, transport, ..) in captured_requests() {
        let s = Sample::new(name, fixture(name));
        kit = kit.request(if transport == Transport::Header {
            s
        } else {
            s.no_metadata_section()
        });
        n += 1;
    }
    for (name, frame) in variants() {
        let s = Sample::new(name, frame.encode(5));
        kit = kit.request(if frame.transport == Transport::Header {
            s
        } else {
            s.no_metadata_section()
        });
        n += 1;
    }
    for (name, ..) in captured_replies() {
        let s = Sample::new(name, fixture(name));
        kit = kit.response(
            if name.starts_with("header_") || name.starts_with("mux_header") {
                s
            } else {
                s.no_metadata_section()
            },
        );
        n += 1;
    }
    let report = kit.random_inputs(3000, 7).run();
    assert_eq!(report.samples, n);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_input_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        cut in any::<prop::sample::Index>(),
        upstream in any::<bool>(),
    ) {
        let side = if upstream { Side::Upstream } else { Side::Downstream };
        let mut c = codec(side);
        let at = cut.index(data.len() + 1);
        let mut buf = BytesMut::from(&data[..at]);
        for part in [&data[at..], &[][..]] {
            for _ in 0..64 {
                match c.decode(&mut buf) {
                    Ok(Some(m)) => {
                        let mut out = EncodedFrame::new();
                        let _ = c.encode(&m, 12345, &mut out);
                        let _ = ThriftProtocol.local_reply(&m, LocalReply {
                            kind: LocalReplyKind::NoRoute,
                            message: "x",
                        });
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            buf.extend_from_slice(part);
        }
    }

    #[test]
    fn valid_prefixes_with_random_bodies_never_panic(
        which in 0usize..8,
        body in proptest::collection::vec(prop_oneof![any::<u8>(), 0u8..16], 0..200),
    ) {
        let (_, frame) = variants().swap_remove(which);
        let bytes = frame.encode(1);
        // Keep the transport and message header, replace the body.
        let m = decode_one(Side::Downstream, &bytes);
        let body_at = (m.layout[2] + m.layout[3]) as usize;
        let mut f = bytes[..body_at].to_vec();
        f.extend_from_slice(&body);
        if frame.transport != Transport::Unframed {
            let len = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&len.to_be_bytes());
        }
        let mut buf = BytesMut::from(&f[..]);
        let mut c = codec(Side::Downstream);
        while let Ok(Some(m)) = c.decode(&mut buf) {
            let mut out = EncodedFrame::new();
            let _ = c.encode(&m, 99, &mut out);
        }
    }

    #[test]
    fn theader_mutations_round_trip(
        headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,300}"), 0..8),
        compact in any::<bool>(),
        id in 0u64..0x7fff_ffff,
    ) {
        let frame = Frame {
            transport: Transport::Header,
            protocol: if compact { Serialization::Compact } else { Serialization::Binary },
            headers: &[("x-keep", "1")],
            ..Frame::call("svc:m")
        };
        let m = decode_one(Side::Downstream, &frame.encode(3));
        let mut changed = m.clone();
        for (k, v) in &headers {
            changed.metadata.set(k.clone(), v.clone());
        }
        let again = decode_one(Side::Downstream, &encode(&changed, id));
        prop_assert_eq!(again.request_id, id);
        for (k, v) in changed.metadata.iter() {
            if k != "method" && k != "service" && k != "message_type" {
                prop_assert_eq!(again.metadata.get(k), Some(v));
            }
        }
        prop_assert_eq!(again.metadata.get("method"), Some("m"));
        prop_assert_eq!(again.metadata.get("service"), Some("svc"));
    }
}
