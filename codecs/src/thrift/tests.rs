//! Unit tests against bytes written by Apache Thrift's Python library (0.25.0, pure Python
//! protocols): a call with every kind of value, THeader frames with info headers, and
//! `TApplicationException` replies.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

// A call whose args struct holds a string, a negative i32, a bool, a list<i64>, a
// map<string,bool>, an empty map, a nested struct (double, bool), a set of 16 bools, an i16
// and a byte, with field ids that need both the short and the long compact field header.
const BINARY_STRICT: &str = "800100010000000843616c633a616464000000070b0001000000026869080002ffffffd6020003010f00140a000000020000000000000001fffffffffffffed40d00150b0200000001000000016b000d00160b02000000000c00050400013ff800000000000002000200000e0006020000001001000100010001000100010001000100060007fffe030008ff00";
const BINARY_NON_STRICT: &str = "0000000361646401000000070b0001000000026869080002ffffffd6020003010f00140a000000020000000000000001fffffffffffffed40d00150b0200000001000000016b000d00160b02000000000c00050400013ff800000000000002000200000e0006020000001001000100010001000100010001000100060007fffe030008ff00";
const COMPACT: &str = "8221ac02036164641802686915531109282602d7041b0181016b021b000c0a17000000000000f83f12001af11001020102010201020102010201020102140313ff00";
const COMPACT_NEGATIVE_SEQ: &str = "8221ffffffff0f036164641802686915531109282602d7041b0181016b021b000c0a17000000000000f83f12001af11001020102010201020102010201020102140313ff00";
// THeader frames with headers user-id=42 and x-tier=gold around `ping` (seqid 9).
const THEADER_BINARY: &str = "000000370fff00000000000900070000010207757365722d696402343206782d7469657204676f6c6400800100010000000470696e670000000900";
const THEADER_COMPACT: &str = "0000002f0fff00000000000900070200010207757365722d696402343206782d7469657204676f6c64008221090470696e6700";
// EXCEPTION `ping` seqid 7, TApplicationException(UNKNOWN_METHOD, "no route").
const EXCEPTION_BINARY: &str =
    "800100030000000470696e67000000070b0001000000086e6f20726f7574650800020000000100";
const EXCEPTION_COMPACT: &str = "8261070470696e6718086e6f20726f757465150200";

/// Writes the same call as the vectors above.
fn write_sample(protocol: Protocol, strict: bool, name: &str, seq_id: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out, protocol).strict(strict);
    w.message_begin(name, MessageType::Call, seq_id);
    w.struct_begin();
    w.field_begin(TType::Binary, 1);
    w.string("hi");
    w.field_begin(TType::I32, 2);
    w.i32(-42);
    w.field_begin(TType::Bool, 3);
    w.bool(true);
    w.field_begin(TType::List, 20);
    w.list_begin(TType::I64, 2);
    w.i64(1);
    w.i64(-300);
    w.field_begin(TType::Map, 21);
    w.map_begin(TType::Binary, TType::Bool, 1);
    w.string("k");
    w.bool(false);
    w.field_begin(TType::Map, 22);
    w.map_begin(TType::Binary, TType::Bool, 0);
    w.field_begin(TType::Struct, 5);
    w.struct_begin();
    w.field_begin(TType::Double, 1);
    w.double(1.5);
    w.field_begin(TType::Bool, 2);
    w.bool(false);
    w.field_stop();
    w.struct_end();
    w.field_begin(TType::Set, 6);
    w.set_begin(TType::Bool, 16);
    for i in 0..16 {
        w.bool(i % 2 == 0);
    }
    w.field_begin(TType::I16, 7);
    w.i16(-2);
    w.field_begin(TType::Byte, 8);
    w.byte(-1);
    w.field_stop();
    w.struct_end();
    out
}

#[test]
fn writer_matches_the_reference_bytes() {
    assert_eq!(
        write_sample(Protocol::Binary, true, "Calc:add", 7),
        hex(BINARY_STRICT)
    );
    assert_eq!(
        write_sample(Protocol::Binary, false, "add", 7),
        hex(BINARY_NON_STRICT)
    );
    assert_eq!(
        write_sample(Protocol::Compact, true, "add", 300),
        hex(COMPACT)
    );
    assert_eq!(
        write_sample(Protocol::Compact, true, "add", -1),
        hex(COMPACT_NEGATIVE_SEQ)
    );
}

#[test]
fn message_headers_and_body_ends() {
    for (bytes, protocol, strict, name, seq, seq_len) in [
        (BINARY_STRICT, Protocol::Binary, true, "Calc:add", 7, 4),
        (BINARY_NON_STRICT, Protocol::Binary, false, "add", 7, 4),
        (COMPACT, Protocol::Compact, true, "add", 300, 2),
        (COMPACT_NEGATIVE_SEQ, Protocol::Compact, true, "add", -1, 5),
    ] {
        let b = hex(bytes);
        assert_eq!(detect_protocol(&b), Ok(protocol));
        let h = parse_message_header(protocol, &b).expect("header");
        assert_eq!(h.strict, strict);
        assert_eq!(h.message_type, MessageType::Call);
        assert_eq!(&b[h.name.clone()], name.as_bytes());
        assert_eq!(h.seq_id, seq);
        assert_eq!(h.seq_id_len, seq_len);
        assert_eq!(
            h.body_at,
            h.seq_id_at.max(h.name.end) + if protocol == Protocol::Binary { 4 } else { 0 }
        );
        assert_eq!(
            skip_message_body(protocol, &b, h.body_at),
            Ok(b.len()),
            "{bytes}"
        );
        // Trailing bytes belong to the next message.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0x80, 0x01]);
        assert_eq!(skip_message_body(protocol, &longer, h.body_at), Ok(b.len()));
        // Every shorter buffer needs more, and says at least one more byte.
        for cut in h.body_at..b.len() {
            match skip_message_body(protocol, &b[..cut], h.body_at) {
                Err(Error::Incomplete { needed }) => assert!(needed > cut && needed <= b.len()),
                other => panic!("{bytes} cut at {cut}: {other:?}"),
            }
        }
        for cut in 0..h.body_at {
            assert!(parse_message_header(protocol, &b[..cut])
                .unwrap_err()
                .is_incomplete());
        }
    }
}

#[test]
fn walker_resumes_byte_by_byte() {
    for (bytes, protocol) in [
        (BINARY_STRICT, Protocol::Binary),
        (COMPACT, Protocol::Compact),
    ] {
        let b = hex(bytes);
        let h = parse_message_header(protocol, &b).expect("header");
        let mut w = Walker::new(protocol, TType::Struct, h.body_at);
        for cut in h.body_at..b.len() {
            assert!(w.walk(&b[..cut]).unwrap_err().is_incomplete());
            assert!(w.position() <= cut);
        }
        assert_eq!(w.walk(&b), Ok(b.len()));
    }
}

#[test]
fn transports_are_told_apart() {
    let framed = |m: &[u8]| {
        let mut f = (m.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(m);
        f
    };
    for (bytes, _) in [(BINARY_STRICT, 0), (COMPACT, 0)] {
        let m = hex(bytes);
        assert_eq!(detect_transport(&m), Ok(Transport::Unframed));
        assert_eq!(detect_transport(&m[..2]), Ok(Transport::Unframed));
        let f = framed(&m);
        assert_eq!(
            detect_transport(&f[..7]),
            Err(Error::Incomplete { needed: 8 })
        );
        assert_eq!(detect_transport(&f), Ok(Transport::Framed));
        assert_eq!(frame_len(&f), Ok(f.len()));
    }
    let non_strict = hex(BINARY_NON_STRICT);
    assert_eq!(
        detect_transport(&framed(&non_strict)),
        Ok(Transport::Framed)
    );
    assert_eq!(detect_transport(&non_strict), Ok(Transport::Unframed));
    assert_eq!(
        detect_transport(&hex(THEADER_BINARY)),
        Ok(Transport::Header)
    );
    assert_eq!(detect_transport(&[0x81, 0x01]), Err(Error::BadVersion));
    assert_eq!(detect_transport(b"GET / HTTP/1.1"), Err(Error::BadVersion));
    assert_eq!(detect_transport(&[0x82, 0x02]), Err(Error::BadVersion));
    assert_eq!(
        detect_transport(&[0x00]),
        Err(Error::Incomplete { needed: 2 })
    );
    assert_eq!(
        frame_len(&[0xff, 0, 0, 0]),
        Err(Error::BadFrameLength(-16777216))
    );
}

#[test]
fn theader_frames_are_read() {
    for (bytes, protocol) in [
        (THEADER_BINARY, Protocol::Binary),
        (THEADER_COMPACT, Protocol::Compact),
    ] {
        let f = hex(bytes);
        let h = parse_header_frame(&f).expect("header frame");
        assert_eq!(h.flags, 0);
        assert_eq!(h.seq_id, 9);
        assert_eq!(h.protocol, protocol);
        assert_eq!(h.transforms, 0);
        assert_eq!(h.payload_at, HEADER_FIXED_LEN + 28);
        let infos: Vec<_> = h.infos(&f).map(|i| (i.kind, i.key, i.value)).collect();
        assert_eq!(
            infos,
            [
                (InfoKind::KeyValue, &b"user-id"[..], &b"42"[..]),
                (InfoKind::KeyValue, &b"x-tier"[..], &b"gold"[..]),
            ]
        );
        let payload = &f[h.payload_at..];
        let m = parse_message_header(protocol, payload).expect("message");
        assert_eq!(m.seq_id, 9);
        assert_eq!(&payload[m.name.clone()], b"ping");
        assert_eq!(
            skip_message_body(protocol, payload, m.body_at),
            Ok(payload.len())
        );

        // The same prefix is written again byte for byte.
        let mut out = Vec::new();
        HeaderPrefix {
            flags: 0,
            seq_id: 9,
            protocol,
            headers: &[(b"user-id", b"42"), (b"x-tier", b"gold")],
            persistent_headers: &[],
        }
        .write(payload.len(), &mut out)
        .expect("prefix");
        out.extend_from_slice(payload);
        assert_eq!(out, f);
    }
}

#[test]
fn persistent_headers_and_padding() {
    let mut out = Vec::new();
    HeaderPrefix {
        flags: 1,
        seq_id: -5,
        protocol: Protocol::Binary,
        headers: &[(b"a", b"")],
        persistent_headers: &[(b"client", b"py")],
    }
    .write(3, &mut out)
    .expect("prefix");
    assert_eq!((out.len() - HEADER_FIXED_LEN) % 4, 0);
    out.extend_from_slice(b"xyz");
    let h = parse_header_frame(&out).expect("parse");
    assert_eq!((h.flags, h.seq_id), (1, -5));
    let infos: Vec<_> = h.infos(&out).map(|i| (i.kind, i.key, i.value)).collect();
    assert_eq!(
        infos,
        [
            (InfoKind::KeyValue, &b"a"[..], &b""[..]),
            (InfoKind::PersistentKeyValue, &b"client"[..], &b"py"[..]),
        ]
    );
    assert_eq!(&out[h.payload_at..], b"xyz");
}

#[test]
fn bad_header_frames() {
    let good = hex(THEADER_BINARY);
    // LENGTH disagrees with the bytes.
    assert!(matches!(
        parse_header_frame(&good[..good.len() - 1]),
        Err(Error::BadFrameLength(_))
    ));
    // HEADER_SIZE beyond the frame.
    let mut f = good.clone();
    f[12..14].copy_from_slice(&0x00ffu16.to_be_bytes());
    assert!(matches!(parse_header_frame(&f), Err(Error::BadHeader(_))));
    // Unknown protocol id (JSON).
    let mut f = good.clone();
    f[14] = 1;
    assert_eq!(parse_header_frame(&f), Err(Error::UnsupportedProtocol(1)));
    // A key longer than the section.
    let mut f = good.clone();
    f[18] = 0x7f;
    assert!(matches!(parse_header_frame(&f), Err(Error::BadHeader(_))));
    // A transform is reported, and info headers are not read past it.
    let mut f = good.clone();
    f[15] = 1;
    f[16] = 1; // zlib
    let h = parse_header_frame(&f).expect("parse");
    assert_eq!((h.transforms, h.first_transform), (1, Some(1)));
    assert_eq!(h.infos(&f).count(), 0);
    // An unknown info id ends the info headers.
    let mut f = good;
    f[16] = 9;
    let h = parse_header_frame(&f).expect("parse");
    assert_eq!(h.infos(&f).count(), 0);
}

#[test]
fn exceptions_match_the_reference_bytes() {
    let e = Exception {
        name: "ping",
        seq_id: 7,
        message: "no route",
        kind: exception_type::UNKNOWN_METHOD,
    };
    for (protocol, bytes) in [
        (Protocol::Binary, EXCEPTION_BINARY),
        (Protocol::Compact, EXCEPTION_COMPACT),
    ] {
        let mut out = Vec::new();
        write_exception(&mut out, &Framing::Unframed, protocol, true, &e).expect("write");
        assert_eq!(out, hex(bytes));
        let h = parse_message_header(protocol, &out).expect("header");
        assert_eq!(
            read_exception(protocol, &out, h.body_at),
            Ok(ApplicationException {
                message: b"no route",
                kind: exception_type::UNKNOWN_METHOD
            })
        );
        let mut framed = Vec::new();
        write_exception(&mut framed, &Framing::Framed, protocol, true, &e).expect("write");
        assert_eq!(frame_len(&framed), Ok(framed.len()));
        assert_eq!(&framed[4..], &out[..]);
        let mut header = Vec::new();
        let prefix = HeaderPrefix {
            flags: 0,
            seq_id: 7,
            protocol,
            headers: &[],
            persistent_headers: &[],
        };
        write_exception(&mut header, &Framing::Header(prefix), protocol, true, &e).expect("write");
        let h = parse_header_frame(&header).expect("header");
        assert_eq!(h.protocol, protocol);
        assert_eq!(&header[h.payload_at..], &out[..]);
    }
    let mut out = Vec::new();
    write_exception(&mut out, &Framing::Unframed, Protocol::Binary, false, &e).expect("write");
    let h = parse_message_header(Protocol::Binary, &out).expect("header");
    assert!(!h.strict);
    assert_eq!(h.message_type, MessageType::Exception);
    assert_eq!(
        skip_message_body(Protocol::Binary, &out, h.body_at),
        Ok(out.len())
    );
}

#[test]
fn depth_is_limited() {
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let nested = |levels: usize| {
            let mut out = Vec::new();
            let mut w = Writer::new(&mut out, protocol);
            w.struct_begin();
            for _ in 1..levels {
                w.field_begin(TType::Struct, 1);
                w.struct_begin();
            }
            for _ in 0..levels {
                w.field_stop();
                w.struct_end();
            }
            out
        };
        let ok = nested(MAX_DEPTH);
        assert_eq!(skip_message_body(protocol, &ok, 0), Ok(ok.len()));
        let deep = nested(MAX_DEPTH + 1);
        assert_eq!(
            skip_message_body(protocol, &deep, 0),
            Err(Error::TooDeep { limit: MAX_DEPTH })
        );
    }
    // Lists nest too.
    let mut deep = Vec::new();
    deep.push(0x0f); // binary: field type list
    deep.extend_from_slice(&[0, 1]);
    for _ in 0..MAX_DEPTH {
        deep.push(15); // list of lists
        deep.extend_from_slice(&1i32.to_be_bytes());
    }
    assert_eq!(
        skip_message_body(Protocol::Binary, &deep, 0),
        Err(Error::TooDeep { limit: MAX_DEPTH })
    );
}

#[test]
fn malformed_bodies_are_reported() {
    // Binary: a string of negative length.
    let b = [0x0b, 0, 1, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        skip_message_body(Protocol::Binary, &b, 0),
        Err(Error::BadLength("string"))
    );
    // Binary: field type 1 (void) and 17 are no value types.
    assert_eq!(
        skip_message_body(Protocol::Binary, &[1, 0, 1], 0),
        Err(Error::BadType(1))
    );
    assert_eq!(
        skip_message_body(Protocol::Binary, &[17, 0, 1], 0),
        Err(Error::BadType(17))
    );
    // Compact: type nibble 14.
    assert_eq!(
        skip_message_body(Protocol::Compact, &[0x1e], 0),
        Err(Error::BadType(14))
    );
    // Compact: an i32 varint of six bytes.
    let b = [0x15, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(
        skip_message_body(Protocol::Compact, &b, 0),
        Err(Error::BadVarint)
    );
    // Compact: a list whose element type is unknown.
    assert_eq!(
        skip_message_body(Protocol::Compact, &[0x19, 0x1e], 0),
        Err(Error::BadType(14))
    );
    // Empty containers may name any element type.
    assert_eq!(
        skip_message_body(Protocol::Compact, &[0x19, 0x0e, 0], 0),
        Ok(3)
    );
    assert_eq!(
        skip_message_body(Protocol::Binary, &[15, 0, 1, 0, 0, 0, 0, 0, 0], 0),
        Ok(9)
    );
    // Message headers.
    assert_eq!(detect_protocol(&[0x81, 0x01]), Err(Error::BadVersion));
    assert_eq!(
        parse_message_header(Protocol::Binary, &[0x80, 0x01, 0, 5]),
        Err(Error::BadMessageType(5))
    );
    assert_eq!(
        parse_message_header(Protocol::Compact, &[0x82, 0x01]),
        Err(Error::BadMessageType(0))
    );
    assert_eq!(
        parse_message_header(Protocol::Compact, &[0x82, 0x22]),
        Err(Error::BadVersion)
    );
    assert_eq!(
        parse_message_header(Protocol::Binary, &[0x80, 0x01, 0, 1, 0x80, 0, 0, 0]),
        Err(Error::BadLength("message name"))
    );
}

#[test]
fn exceptions_skip_unknown_fields() {
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, protocol);
        w.struct_begin();
        w.field_begin(TType::Bool, 9);
        w.bool(true);
        w.field_begin(TType::List, 10);
        w.list_begin(TType::Binary, 1);
        w.string("x");
        w.field_begin(TType::I32, 2);
        w.i32(-6);
        w.field_begin(TType::I64, 1); // field 1 of the wrong type is skipped
        w.i64(5);
        w.field_stop();
        w.struct_end();
        assert_eq!(
            read_exception(protocol, &out, 0),
            Ok(ApplicationException {
                message: b"",
                kind: -6
            })
        );
        assert!(read_exception(protocol, &out[..out.len() - 1], 0)
            .unwrap_err()
            .is_incomplete());
    }
}

#[test]
fn varints_round_trip() {
    for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let mut out = Vec::new();
        write_varint(&mut out, v);
        let mut c = cursor::Cursor::new(&out, 0);
        assert_eq!(c.varint(10), Ok(v));
        assert_eq!(c.pos, out.len());
    }
}
