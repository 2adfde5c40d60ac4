//! The Dubbo codec against frames captured from third-party Dubbo libraries
//! (`tests/fixtures/dubbo`), plus mutation, id rewriting, local replies and hostile input.

use bytes::{Bytes, BytesMut};
use metamesh_codecs::hessian2::{Decoder, Value};
use metamesh_core::{
    Codec, CodecOptions, EncodedFrame, ErrorAction, LocalReply, LocalReplyKind, Message,
    MessageKind, Protocol, Side,
};
use metamesh_protocols::dubbo::{self, build, status, DubboProtocol, HEADER_LEN};
use proptest::prelude::*;

fn fixture(name: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/dubbo/{name}.hex",
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

fn codec(side: Side) -> Box<dyn Codec> {
    DubboProtocol.codec(&CodecOptions::new(side))
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

fn encode(msg: &Message, id: u64) -> Bytes {
    let mut out = EncodedFrame::new();
    codec(Side::Downstream)
        .encode(msg, id, &mut out)
        .expect("encodes");
    out.to_bytes()
}

fn attributes(msg: &Message) -> Vec<(String, String)> {
    msg.metadata
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn dubbo_py_request_with_attachments() {
    let f = fixture("dubbo_py_request_attachments");
    let m = decode_one(Side::Downstream, &f);
    assert_eq!(m.kind, MessageKind::Request);
    assert_eq!(m.request_id, 1);
    assert_eq!(
        m.metadata.get("interface"),
        Some("org.apache.dubbo.samples.DemoService")
    );
    assert_eq!(m.metadata.get("method"), Some("sayHello"));
    assert_eq!(m.metadata.get("version"), Some("1.0"));
    assert_eq!(m.metadata.get("BatchJob"), Some("true"));
    assert_eq!(m.metadata.get("tenant"), Some("acme"));
    assert_eq!(m.metadata.get("group"), None);
    // Unchanged: the very same bytes, without a copy.
    let mut out = EncodedFrame::new();
    codec(Side::Downstream)
        .encode(&m, 1, &mut out)
        .expect("encode");
    assert_eq!(out.parts().len(), 1);
    assert_eq!(out.parts()[0].as_ptr(), m.frame.as_ptr());
}

#[test]
fn every_captured_request_decodes() {
    for (name, kind, method) in [
        (
            "dubbo_py_request_no_attachments",
            MessageKind::Request,
            "sayHello",
        ),
        (
            "dubbo_py_request_py_str_arg",
            MessageKind::Request,
            "sayHello",
        ),
        (
            "dubbo_py_request_mixed_args",
            MessageKind::Request,
            "echoMixed",
        ),
        (
            "dubbo_py_request_no_args",
            MessageKind::Request,
            "returnNull",
        ),
        (
            "dubbo_py_request_oneway",
            MessageKind::OnewayRequest,
            "sayHello",
        ),
        ("dubbo_python_request", MessageKind::Request, "sayHello"),
        (
            "dubbo_python_request_second",
            MessageKind::Request,
            "sayHello",
        ),
    ] {
        let m = decode_one(Side::Downstream, &fixture(name));
        assert_eq!(m.kind, kind, "{name}");
        assert_eq!(m.metadata.get("method"), Some(method), "{name}");
        assert_eq!(
            m.metadata.get("interface"),
            Some("org.apache.dubbo.samples.DemoService"),
            "{name}"
        );
    }
    // dubbo-python repeats path/interface/version as attachments: one `interface` key.
    let m = decode_one(Side::Downstream, &fixture("dubbo_python_request"));
    assert_eq!(m.metadata.get("version"), Some("1.0.0"));
    assert_eq!(
        m.metadata.get("path"),
        Some("org.apache.dubbo.samples.DemoService")
    );
    assert_eq!(
        m.metadata.iter().filter(|(k, _)| *k == "interface").count(),
        1
    );
}

#[test]
fn heartbeats_and_events() {
    let p = DubboProtocol;
    // dubbo-python's heartbeat is two-way: answered with status 20 and the same id.
    let hb = decode_one(Side::Downstream, &fixture("dubbo_python_heartbeat_request"));
    assert_eq!(hb.kind, MessageKind::Heartbeat);
    let reply = p
        .heartbeat_reply(&hb)
        .expect("two-way heartbeat is answered");
    assert_eq!(&reply.frame[..4], &[0xda, 0xbb, 0x22, status::OK]);
    assert_eq!(&reply.frame[4..12], &hb.frame[4..12]);
    assert_eq!(&reply.frame[HEADER_LEN..], b"N");
    // dubbo-py's heartbeat is one-way: like Java, no answer.
    let hb = decode_one(Side::Downstream, &fixture("dubbo_py_heartbeat_request"));
    assert_eq!(hb.kind, MessageKind::Heartbeat);
    assert!(p.heartbeat_reply(&hb).is_none());
    // Heartbeat responses are recognised and never answered.
    for name in ["dubbo_py_heartbeat_response", "provider_heartbeat_response"] {
        let m = decode_one(Side::Upstream, &fixture(name));
        assert_eq!(m.kind, MessageKind::Heartbeat, "{name}");
        assert!(p.heartbeat_reply(&m).is_none(), "{name}");
    }
}

#[test]
fn captured_responses_decode() {
    let m = decode_one(Side::Upstream, &fixture("provider_response_attachments"));
    assert_eq!(m.kind, MessageKind::Response);
    assert_eq!(m.status, Some(20));
    let value = build::response_value(&m).expect("value");
    assert!(value
        .as_str()
        .is_some_and(|s| s.contains("\"batchjob\": \"true\"")));

    let m = decode_one(Side::Upstream, &fixture("provider_response_null"));
    assert_eq!(build::response_value(&m), Ok(Value::Null));

    let m = decode_one(Side::Upstream, &fixture("provider_response_exception"));
    assert_eq!(m.kind, MessageKind::Error);
    assert_eq!(m.status, Some(90));
    assert_eq!(
        build::response_value(&m),
        Err("provider capture: fail() raised on purpose".to_owned())
    );
    for name in [
        "provider_response_no_attachments",
        "provider_response_to_oneway",
        "provider_response_dubbo_python",
    ] {
        assert_eq!(
            decode_one(Side::Upstream, &fixture(name)).kind,
            MessageKind::Response
        );
    }
}

#[test]
fn request_id_rewrite_patches_only_the_header() {
    let f = fixture("dubbo_py_request_attachments");
    let m = decode_one(Side::Downstream, &f);
    let mut out = EncodedFrame::new();
    codec(Side::Upstream)
        .encode(&m, 0x0102_0304_0506, &mut out)
        .expect("encode");
    assert_eq!(
        out.parts().len(),
        2,
        "new header + the original body buffer"
    );
    assert_eq!(out.parts()[1].as_ptr(), m.frame[HEADER_LEN..].as_ptr());
    let bytes = out.to_bytes();
    assert_eq!(&bytes[4..12], &0x0102_0304_0506i64.to_be_bytes());
    assert_eq!(&bytes[..4], &f[..4]);
    assert_eq!(&bytes[12..], &f[12..]);
}

#[test]
fn mutation_rewrites_attachments_and_keeps_the_rest() {
    let f = fixture("dubbo_python_request");
    let mut m = decode_one(Side::Downstream, &f);
    m.metadata.set("x-tier", "batch");
    m.metadata.set("version", "ignored-body-field");
    m.metadata.remove("path");
    let bytes = encode(&m, 77);
    let again = decode_one(Side::Upstream, &bytes);
    assert_eq!(again.request_id, 77);
    assert_eq!(again.metadata.get("x-tier"), Some("batch"));
    assert_eq!(again.metadata.get("path"), None);
    // Body fields are not rewritten, and the client's own attachment copies stay.
    assert_eq!(again.metadata.get("version"), Some("1.0.0"));
    assert_eq!(again.metadata.get("method"), Some("sayHello"));
    let len = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    assert_eq!(len, bytes.len() - HEADER_LEN, "body length fixed");
    // The argument section is byte-identical.
    let arg = b"\x05world";
    assert!(bytes.windows(arg.len()).any(|w| w == arg));
    assert!(
        bytes.windows(7).any(|w| w == b"version"),
        "attachment copy of version kept"
    );
}

#[test]
fn a_new_attachment_extends_the_original_map_without_copying_the_body() {
    let f = fixture("dubbo_python_request");
    let mut m = decode_one(Side::Downstream, &f);
    let before = attributes(&m);
    m.metadata
        .set("x-request-id", "4b1d0c2e-2a55-4e7d-9a3c-1f0e2d3c4b5a");
    let mut out = EncodedFrame::new();
    codec(Side::Upstream)
        .encode(&m, 9, &mut out)
        .expect("encode");
    assert_eq!(
        out.parts().len(),
        3,
        "header, the original body, the new entries"
    );
    assert_eq!(
        out.parts()[1].as_ptr(),
        m.frame[HEADER_LEN..].as_ptr(),
        "the body is shared, not copied"
    );
    let bytes = out.to_bytes();
    let len = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    assert_eq!(len, bytes.len() - HEADER_LEN, "body length fixed");
    let again = decode_one(Side::Upstream, &bytes);
    assert_eq!(again.request_id, 9);
    let mut want = before;
    want.push((
        "x-request-id".to_owned(),
        "4b1d0c2e-2a55-4e7d-9a3c-1f0e2d3c4b5a".to_owned(),
    ));
    let mut got = attributes(&again);
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn mutation_keeps_typed_attachment_values() {
    let req = build::Request {
        dubbo_version: "2.0.2",
        interface: "svc.Demo",
        version: "",
        method: "m",
        args: &[("I", Value::Int(5))],
        attachments: &[],
        two_way: true,
    }
    .encode(3);
    // Append a typed attachment by hand: timeout = int 3000.
    let mut body = req[HEADER_LEN..req.len() - 2].to_vec();
    body.extend_from_slice(b"H\x07timeout\xd4\x0b\xb8\x05group\x01gZ");
    let f = build::frame(req[2], 0, 3, &body);
    let mut m = decode_one(Side::Downstream, &f);
    assert_eq!(m.metadata.get("timeout"), Some("3000"));
    assert_eq!(m.metadata.get("group"), Some("g"));
    m.metadata.set("group", "batch");
    let out = encode(&m, 3);
    let typed = b"\x07timeout\xd4\x0b\xb8";
    assert!(
        out.windows(typed.len()).any(|w| w == typed),
        "the int stays an int"
    );
    let again = decode_one(Side::Upstream, &out);
    assert_eq!(again.metadata.get("group"), Some("batch"));
    assert_eq!(again.metadata.get("timeout"), Some("3000"));
}

#[test]
fn response_mutation_respects_the_clients_version() {
    let p = DubboProtocol;
    let resp_bytes = fixture("provider_response_no_attachments");
    for (version, allowed) in [
        ("2.0.2", true),
        ("2.0.99", true),
        ("2.5.3", false),
        ("2.4.10", false),
    ] {
        let req_bytes = build::Request {
            dubbo_version: version,
            interface: "svc",
            version: "1.0",
            method: "m",
            args: &[],
            attachments: &[],
            two_way: true,
        }
        .encode(1);
        let req = decode_one(Side::Downstream, &req_bytes);
        let mut resp = decode_one(Side::Upstream, &resp_bytes);
        p.finish_response(&req, &mut resp);
        resp.metadata.set("x-served-by", "metamesh");
        let out = encode(&resp, 1);
        let again = decode_one(Side::Upstream, &out);
        if allowed {
            assert_eq!(
                again.metadata.get("x-served-by"),
                Some("metamesh"),
                "{version}"
            );
            assert_eq!(
                out[HEADER_LEN], 0x94,
                "flag VALUE became VALUE_WITH_ATTACHMENTS"
            );
            assert_eq!(build::response_value(&again), build::response_value(&resp));
        } else {
            assert_eq!(
                out, resp_bytes,
                "{version}: clients that cannot read them get none"
            );
        }
    }
    // A response that already has attachments gets them rewritten in place.
    let with = build::response(4, &Value::from("v"), &[("a", "1")]);
    let mut resp = decode_one(Side::Upstream, &with);
    resp.metadata.set("b", "2");
    let again = decode_one(Side::Upstream, &encode(&resp, 4));
    assert_eq!(again.metadata.get("a"), Some("1"));
    assert_eq!(again.metadata.get("b"), Some("2"));
}

#[test]
fn local_replies_are_dubbo_errors_the_codec_reads_back() {
    let p = DubboProtocol;
    let req = decode_one(Side::Downstream, &fixture("dubbo_py_request_attachments"));
    for (kind, code) in [
        (LocalReplyKind::NoRoute, 60),
        (LocalReplyKind::Timeout, 31),
        (LocalReplyKind::NoHealthyUpstream, 80),
        (LocalReplyKind::BadRequest, 40),
    ] {
        let reply = p.local_reply(
            &req,
            LocalReply {
                kind,
                message: "why ünïcode",
            },
        );
        let bytes = encode(&reply, 1);
        let m = decode_one(Side::Upstream, &bytes);
        assert_eq!(m.kind, MessageKind::Error);
        assert_eq!(m.status, Some(code));
        assert_eq!(m.request_id, 1);
        assert_eq!(build::response_value(&m), Err("why ünïcode".to_owned()));
        assert_eq!(dubbo::local_reply_status(kind), code as u8);
    }
}

/// A call of `svc` version 1, method `m`, without arguments, with `attachments`.
fn call_with(attachments: &[(&str, &str)]) -> Bytes {
    build::Request {
        dubbo_version: "2.0.2",
        interface: "svc",
        version: "1",
        method: "m",
        args: &[],
        attachments,
        two_way: true,
    }
    .encode(1)
}

#[test]
fn a_repeated_attachment_key_keeps_the_last_value_through_mutation() {
    let f = call_with(&[("d", ""), ("d", " ")]);
    let mut m = decode_one(Side::Downstream, &f);
    assert_eq!(m.metadata.get("d"), Some(" "));
    assert_eq!(m.metadata.len(), 4);
    m.metadata.set("a", "");
    let again = decode_one(Side::Upstream, &encode(&m, 2));
    assert_eq!(again.metadata.get("d"), Some(" "));
    assert_eq!(again.metadata.get("a"), Some(""));
}

#[test]
fn repeated_attachment_keys_are_found_whatever_their_case_and_number() {
    // Enough distinct keys that their quick-check bits collide, repeats in other cases,
    // and an attachment repeating a body field in another case (it overrides the field).
    let mut pairs: Vec<(String, String)> = (0..80)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    pairs.push(("K7".into(), "again".into()));
    pairs.push(("k79".into(), "last".into()));
    pairs.push(("Method".into(), "other".into()));
    let attachments: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
    let f = call_with(&attachments);
    let m = decode_one(Side::Downstream, &f);
    // interface, method, version and the 80 distinct keys: each once.
    assert_eq!(m.metadata.len(), 83);
    assert_eq!(m.metadata.get("k7"), Some("again"));
    assert_eq!(m.metadata.get("k79"), Some("last"));
    assert_eq!(m.metadata.get("k3"), Some("v3"));
    assert_eq!(m.metadata.get("method"), Some("other"));
    let keys: Vec<&str> = m.metadata.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys.iter().filter(|k| k.eq_ignore_ascii_case("k7")).count(),
        1
    );
}

#[test]
fn builder_round_trip() {
    let f = build::Request {
        dubbo_version: "2.0.2",
        interface: "org.apache.dubbo.samples.DemoService",
        version: "1.0.0",
        method: "sayHello",
        args: &[("Ljava/lang/String;", Value::from("world"))],
        attachments: &[("batchjob", "true"), ("group", "g1")],
        two_way: true,
    }
    .encode(42);
    let m = decode_one(Side::Downstream, &f);
    assert_eq!(m.request_id, 42);
    assert_eq!(m.metadata.get("group"), Some("g1"));
    assert_eq!(m.metadata.get("batchjob"), Some("true"));
    let mut d = Decoder::new(&f[HEADER_LEN..]);
    assert_eq!(d.read_string().expect("version"), "2.0.2");
}

#[test]
fn descriptors() {
    assert_eq!(dubbo::count_parameters(""), Some(0));
    assert_eq!(
        dubbo::count_parameters("Ljava/lang/String;IJDZLdict;"),
        Some(6)
    );
    assert_eq!(dubbo::count_parameters("[[I[Ljava/lang/Object;S"), Some(3));
    assert_eq!(dubbo::count_parameters("Ljava/lang/String"), None);
    assert_eq!(dubbo::count_parameters("Q"), None);
    assert!(dubbo::supports_response_attachments("2.0.2"));
    assert!(!dubbo::supports_response_attachments("2.0.1"));
    assert!(dubbo::supports_response_attachments("2.0.2-SNAPSHOT"));
    assert!(!dubbo::supports_response_attachments("2.7.8"));
    assert!(!dubbo::supports_response_attachments("garbage"));
}

#[test]
fn every_split_of_a_frame_decodes_the_same() {
    let f = fixture("dubbo_python_request");
    let whole = decode_one(Side::Downstream, &f);
    for cut in 0..f.len() {
        let mut c = codec(Side::Downstream);
        let mut buf = BytesMut::from(&f[..cut]);
        assert!(
            c.decode(&mut buf).expect("no error on a prefix").is_none(),
            "cut {cut}"
        );
        buf.extend_from_slice(&f[cut..]);
        let m = c.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(attributes(&m), attributes(&whole));
    }
}

#[test]
fn hostile_input() {
    // Wrong magic: close.
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    let e = codec(Side::Downstream)
        .decode(&mut buf)
        .expect_err("bad magic");
    assert_eq!(e.reason, "bad_magic");
    assert!(matches!(e.action, ErrorAction::Close));

    // Body length over the limit: a Dubbo error for the caller, then close.
    let mut head = fixture("dubbo_py_request_attachments")[..HEADER_LEN].to_vec();
    head[12..16].copy_from_slice(&(64u32 << 20).to_be_bytes());
    let e = codec(Side::Downstream)
        .decode(&mut BytesMut::from(&head[..]))
        .expect_err("too large");
    assert_eq!(e.reason, "frame_too_large");
    match e.action {
        ErrorAction::ReplyAndClose(m) => {
            assert_eq!(m.status, Some(u32::from(status::BAD_REQUEST)));
            assert_eq!(m.request_id, 1);
        }
        other => panic!("{other:?}"),
    }

    // A malformed body: answered with BAD_REQUEST, the frame consumed, the next decodes.
    let good = fixture("dubbo_py_request_attachments");
    let mut bad = good.to_vec();
    bad[HEADER_LEN] = 0x4f; // 'O' where a string should be
    let mut buf = BytesMut::from(&bad[..]);
    buf.extend_from_slice(&good);
    let mut c = codec(Side::Downstream);
    let e = c.decode(&mut buf).expect_err("malformed");
    assert_eq!(e.reason, "malformed_body");
    assert!(matches!(e.action, ErrorAction::Reply(_)));
    assert_eq!(
        c.decode(&mut buf).expect("ok").expect("frame").request_id,
        1
    );

    // Arguments nested 10,000 deep: an error, not a stack overflow.
    let mut body = Vec::new();
    for s in ["2.0.2", "svc", "1.0", "m", "Ljava/lang/Object;"] {
        body.push(s.len() as u8);
        body.extend_from_slice(s.as_bytes());
    }
    body.extend(std::iter::repeat_n(0x57u8, 10_000)); // 'W' variable-length untyped lists
    let f = build::frame(0xc2, 0, 9, &body);
    let e = codec(Side::Downstream)
        .decode(&mut BytesMut::from(&f[..]))
        .expect_err("deep");
    assert_eq!(e.reason, "malformed_body");
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        for side in [Side::Downstream, Side::Upstream] {
            let mut c = codec(side);
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..4 {
                match c.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn valid_header_random_body_never_panics(
        flags in prop_oneof![Just(0xc2u8), Just(0x82), Just(0x02), Just(0xe2), Just(0xc6)],
        status in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let f = build::frame(flags, status, 1, &body);
        for side in [Side::Downstream, Side::Upstream] {
            let mut buf = BytesMut::from(&f[..]);
            if let Ok(Some(mut m)) = codec(side).decode(&mut buf) {
                m.metadata.set("k", "v");
                let mut out = EncodedFrame::new();
                let _ = codec(side).encode(&m, 5, &mut out);
            }
        }
    }

    #[test]
    fn mutated_requests_round_trip(
        attachments in proptest::collection::vec(("[a-z][a-z0-9-]{0,8}", "[ -~]{0,12}"), 0..6),
        key in "[a-z]{1,6}", value in "[ -~]{0,10}",
    ) {
        let atts: Vec<(&str, &str)> = attachments.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let f = build::Request {
            dubbo_version: "2.0.2", interface: "svc", version: "1", method: "m",
            args: &[("Ljava/lang/String;", Value::from("a"))], attachments: &atts, two_way: true,
        }.encode(1);
        let mut m = decode_one(Side::Downstream, &f);
        m.metadata.set(key.as_str(), value.as_str());
        let want = attributes(&m);
        let again = decode_one(Side::Upstream, &encode(&m, 2));
        let mut got = attributes(&again);
        let mut want = want;
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn dubbo_passes_the_conformance_kit() {
    use metamesh_core::conformance::{Conformance, Sample};
    // A client on Dubbo 2.0.2 takes response attachments, so responses to it can be mutated.
    let modern = metamesh_protocols::dubbo::build::Request {
        dubbo_version: "2.0.2",
        interface: "org.apache.dubbo.samples.DemoService",
        version: "1.0.0",
        method: "sayHello",
        args: &[("Ljava/lang/String;", Value::String("world".into()))],
        attachments: &[
            ("batchjob", "true"),
            ("path", "org.apache.dubbo.samples.DemoService"),
        ],
        two_way: true,
    }
    .encode(42);
    let mut kit = Conformance::new(std::sync::Arc::new(
        metamesh_protocols::dubbo::DubboProtocol,
    ))
    .request(Sample::new("dubbo 2.0.2 request", modern.clone()));
    for name in [
        "dubbo_py_request_attachments",
        "dubbo_py_request_mixed_args",
        "dubbo_py_request_no_args",
        "dubbo_py_request_no_attachments",
        "dubbo_py_request_oneway",
        "dubbo_py_request_py_str_arg",
        "dubbo_python_request",
        "dubbo_python_request_second",
    ] {
        kit = kit.request(Sample::new(name, fixture(name)));
    }
    for name in [
        "provider_response_attachments",
        "provider_response_dubbo_python",
        "provider_response_no_attachments",
        "provider_response_null",
    ] {
        kit = kit.response(Sample::new(name, fixture(name)).in_reply_to(modern.clone()));
    }
    // A response with an error status carries only the error text: no attachments.
    let name = "provider_response_exception";
    kit = kit.response(Sample::new(name, fixture(name)).no_metadata_section());
    let report = kit.run();
    assert_eq!(report.samples, 14);
}
