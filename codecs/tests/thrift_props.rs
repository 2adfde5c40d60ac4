//! Property tests: the walker finds the exact end of generated messages in both protocols
//! (also when the bytes arrive in two pieces), and no input makes any reader panic.

use metamesh_codecs::thrift::{
    detect_protocol, detect_transport, frame_len, parse_header_frame, parse_message_header,
    skip_message_body, Error, HeaderPrefix, MessageType, Protocol, TType, Walker, Writer,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// A Thrift value to write.
#[derive(Clone, Debug)]
enum V {
    Bool(bool),
    Byte(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Double(f64),
    Binary(Vec<u8>),
    Uuid([u8; 16]),
    Struct(Vec<(i16, V)>),
    List(TType, Vec<V>),
    Set(TType, Vec<V>),
    Map(TType, TType, Vec<(V, V)>),
}

impl V {
    fn ty(&self) -> TType {
        match self {
            V::Bool(_) => TType::Bool,
            V::Byte(_) => TType::Byte,
            V::I16(_) => TType::I16,
            V::I32(_) => TType::I32,
            V::I64(_) => TType::I64,
            V::Double(_) => TType::Double,
            V::Binary(_) => TType::Binary,
            V::Uuid(_) => TType::Uuid,
            V::Struct(_) => TType::Struct,
            V::List(..) => TType::List,
            V::Set(..) => TType::Set,
            V::Map(..) => TType::Map,
        }
    }

    fn write(&self, w: &mut Writer<'_>) {
        match self {
            V::Bool(b) => w.bool(*b),
            V::Byte(b) => w.byte(*b),
            V::I16(v) => w.i16(*v),
            V::I32(v) => w.i32(*v),
            V::I64(v) => w.i64(*v),
            V::Double(v) => w.double(*v),
            V::Binary(v) => w.binary(v),
            V::Uuid(v) => w.uuid(v),
            V::Struct(fields) => {
                w.struct_begin();
                for (id, v) in fields {
                    w.field_begin(v.ty(), *id);
                    v.write(w);
                }
                w.field_stop();
                w.struct_end();
            }
            V::List(t, items) | V::Set(t, items) => {
                if matches!(self, V::List(..)) {
                    w.list_begin(*t, items.len());
                } else {
                    w.set_begin(*t, items.len());
                }
                for v in items {
                    v.write(w);
                }
            }
            V::Map(k, v, entries) => {
                w.map_begin(*k, *v, entries.len());
                for (a, b) in entries {
                    a.write(w);
                    b.write(w);
                }
            }
        }
    }
}

fn scalar_type() -> impl Strategy<Value = TType> {
    prop::sample::select(vec![
        TType::Bool,
        TType::Byte,
        TType::I16,
        TType::I32,
        TType::I64,
        TType::Double,
        TType::Binary,
        TType::Uuid,
    ])
}

fn scalar_of(t: TType) -> BoxedStrategy<V> {
    match t {
        TType::Bool => any::<bool>().prop_map(V::Bool).boxed(),
        TType::Byte => any::<i8>().prop_map(V::Byte).boxed(),
        TType::I16 => any::<i16>().prop_map(V::I16).boxed(),
        TType::I32 => any::<i32>().prop_map(V::I32).boxed(),
        TType::I64 => any::<i64>().prop_map(V::I64).boxed(),
        TType::Double => any::<f64>().prop_map(V::Double).boxed(),
        TType::Uuid => any::<[u8; 16]>().prop_map(V::Uuid).boxed(),
        _ => vec(any::<u8>(), 0..40).prop_map(V::Binary).boxed(),
    }
}

fn scalar() -> impl Strategy<Value = V> {
    scalar_type().prop_flat_map(scalar_of)
}

fn field_id() -> impl Strategy<Value = i16> {
    prop_oneof![1i16..20, any::<i16>()]
}

fn value() -> impl Strategy<Value = V> {
    scalar().prop_recursive(5, 64, 12, |inner| {
        let wrapped = inner.clone().prop_map(|v| V::Struct(vec![(1, v)]));
        prop_oneof![
            vec((field_id(), inner.clone()), 0..8).prop_map(V::Struct),
            (scalar_type(), 0usize..20).prop_flat_map(|(t, n)| {
                vec(scalar_of(t), n).prop_map(move |items| V::List(t, items))
            }),
            (scalar_type(), 0usize..5).prop_flat_map(|(t, n)| {
                vec(scalar_of(t), n).prop_map(move |items| V::Set(t, items))
            }),
            vec(wrapped.clone(), 0..4).prop_map(|items| V::List(TType::Struct, items)),
            (scalar_type(), 0usize..4).prop_flat_map(move |(k, n)| {
                vec((scalar_of(k), wrapped.clone()), n)
                    .prop_map(move |entries| V::Map(k, TType::Struct, entries))
            }),
        ]
    })
}

fn message_type() -> impl Strategy<Value = MessageType> {
    prop::sample::select(vec![
        MessageType::Call,
        MessageType::Reply,
        MessageType::Exception,
        MessageType::Oneway,
    ])
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![Protocol::Binary, Protocol::Compact])
}

fn write_message(
    protocol: Protocol,
    strict: bool,
    name: &str,
    ty: MessageType,
    seq: i32,
    fields: &[(i16, V)],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out, protocol).strict(strict);
    w.message_begin(name, ty, seq);
    V::Struct(fields.to_vec()).write(&mut w);
    out
}

/// Bytes biased towards type codes and small lengths, so random input goes deep.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        any::<u8>(),
        0u8..17,
        prop::sample::select(vec![
            0x0c, 0x0d, 0x0e, 0x0f, 0x1c, 0x19, 0x1b, 0xf9, 0x80, 0x82, 0xff
        ]),
    ];
    vec(byte, 0..200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn walk_finds_the_exact_end(
        protocol in protocol(),
        strict in any::<bool>(),
        name in "[A-Za-z:]{0,12}",
        ty in message_type(),
        seq in any::<i32>(),
        fields in vec((field_id(), value()), 0..6),
        tail in vec(any::<u8>(), 0..8),
        split in any::<prop::sample::Index>(),
    ) {
        let msg = write_message(protocol, strict, &name, ty, seq, &fields);
        prop_assert_eq!(detect_protocol(&msg), Ok(protocol));
        let h = parse_message_header(protocol, &msg).expect("header");
        prop_assert_eq!(h.seq_id, seq);
        prop_assert_eq!(h.message_type, ty);
        prop_assert_eq!(&msg[h.name.clone()], name.as_bytes());
        let mut long = msg.clone();
        long.extend_from_slice(&tail);
        prop_assert_eq!(skip_message_body(protocol, &long, h.body_at), Ok(msg.len()));
        // In two pieces: the walk resumes where the first piece ended.
        let cut = h.body_at + split.index(msg.len() - h.body_at);
        let mut w = Walker::new(protocol, TType::Struct, h.body_at);
        if cut < msg.len() {
            let e = w.walk(&long[..cut]).unwrap_err();
            let is_incomplete = matches!(e, Error::Incomplete { needed } if needed > cut);
            prop_assert!(is_incomplete);
        }
        prop_assert_eq!(w.walk(&long), Ok(msg.len()));
    }

    #[test]
    fn random_bytes_never_panic(bytes in wire(), start in 0usize..4) {
        let _ = detect_transport(&bytes);
        let _ = detect_protocol(&bytes);
        let _ = frame_len(&bytes);
        let _ = parse_header_frame(&bytes);
        for p in [Protocol::Binary, Protocol::Compact] {
            let _ = parse_message_header(p, &bytes);
            let _ = skip_message_body(p, &bytes, start);
            let mut w = Walker::new(p, TType::Struct, start);
            for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len()] {
                if w.walk(&bytes[..cut]).is_ok() {
                    break;
                }
            }
        }
    }

    #[test]
    fn random_header_sections_never_panic(words in 0u16..8, section in wire(), payload in wire()) {
        let mut f = Vec::new();
        let len = 10 + section.len() + payload.len();
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.extend_from_slice(&[0x0f, 0xff, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&words.to_be_bytes());
        f.extend_from_slice(&section);
        f.extend_from_slice(&payload);
        if let Ok(h) = parse_header_frame(&f) {
            prop_assert!(h.payload_at < f.len());
            for info in h.infos(&f) {
                prop_assert!(info.key.len() + info.value.len() < f.len());
            }
        }
    }

    #[test]
    fn corrupted_messages_never_panic(
        protocol in protocol(),
        fields in vec((field_id(), value()), 0..4),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut msg = write_message(protocol, true, "m", MessageType::Call, 1, &fields);
        for (i, b) in flips {
            let i = i.index(msg.len());
            msg[i] = b;
        }
        if let Ok(h) = parse_message_header(protocol, &msg) {
            let _ = skip_message_body(protocol, &msg, h.body_at);
        }
    }

    #[test]
    fn header_prefixes_round_trip(
        protocol in protocol(),
        flags in any::<u16>(),
        seq in any::<i32>(),
        headers in vec((vec(any::<u8>(), 0..20), vec(any::<u8>(), 0..300)), 0..6),
        persistent in vec((vec(any::<u8>(), 0..20), vec(any::<u8>(), 0..20)), 0..3),
        payload in vec(any::<u8>(), 1..30),
    ) {
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let ppairs: Vec<(&[u8], &[u8])> = persistent.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let mut f = Vec::new();
        HeaderPrefix { flags, seq_id: seq, protocol, headers: &pairs, persistent_headers: &ppairs }
            .write(payload.len(), &mut f)
            .expect("prefix");
        f.extend_from_slice(&payload);
        prop_assert_eq!(frame_len(&f), Ok(f.len()));
        let h = parse_header_frame(&f).expect("parse");
        prop_assert_eq!((h.flags, h.seq_id, h.protocol), (flags, seq, protocol));
        prop_assert_eq!(&f[h.payload_at..], &payload[..]);
        let read: Vec<(&[u8], &[u8])> = h.infos(&f).map(|i| (i.key, i.value)).collect();
        let mut all = pairs.clone();
        all.extend_from_slice(&ppairs);
        prop_assert_eq!(read, all);
    }
}
