//! Property tests: encoder/decoder round trips, and no input makes the decoder panic.

use metamesh_codecs::hessian2::{Decoder, Encoder, Value};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,6}",
        "[A-Za-z.]{1,20}",
        Just("java.util.TreeMap".to_owned())
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int),
        (-300_000i32..300_000).prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        (-300_000i64..300_000).prop_map(Value::Long),
        any::<f64>().prop_map(Value::Double),
        (-40_000i32..40_000).prop_map(|i| Value::Double(f64::from(i) * 0.001)),
        (-40_000i32..40_000).prop_map(|i| Value::Double(f64::from(i))),
        any::<i64>().prop_map(Value::Date),
        (-1_000_000i64..1_000_000).prop_map(|m| Value::Date(m * 60_000)),
        any::<String>().prop_map(Value::String),
        "[a-z😀é中]{0,40}".prop_map(Value::String),
        vec(any::<u8>(), 0..40).prop_map(Value::Binary),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 10, |inner| {
        prop_oneof![
            (option::of(name()), vec(inner.clone(), 0..10))
                .prop_map(|(ty, items)| Value::List { ty, items }),
            (
                option::of(name()),
                vec((inner.clone(), inner.clone()), 0..5)
            )
                .prop_map(|(ty, entries)| Value::Map { ty, entries }),
            // A handful of class names so that definitions are reused and, with other
            // field lists, redefined.
            ("[A-C]", vec(("[a-c]{1,2}", inner), 0..4))
                .prop_map(|(class, fields)| Value::Object { class, fields }),
        ]
    })
}

/// Bytes that are mostly tags, so random input reaches deep into the decoder.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"ABCDHIJKLMNOQRSTUVWXYZ[\\]^_".to_vec()),
        prop::sample::select(vec![
            0x00u8, 0x01, 0x1f, 0x30, 0x34, 0x60, 0x70, 0x78, 0x90, 0xed, 0xf0
        ]),
    ];
    vec(interesting, 0..200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn values_round_trip(values in vec(value(), 1..4)) {
        let mut e = Encoder::new();
        for v in &values {
            e.write_value(v);
        }
        let bytes = e.into_inner();
        let mut d = Decoder::new(&bytes);
        for v in &values {
            prop_assert_eq!(&d.read_value().unwrap(), v);
        }
        prop_assert!(d.is_empty());
        let mut s = Decoder::new(&bytes);
        for _ in &values {
            s.skip_value().unwrap();
        }
        prop_assert!(s.is_empty());
    }

    #[test]
    fn skip_and_read_agree_on_valid_input(values in vec(value(), 1..4)) {
        let mut e = Encoder::new();
        for v in &values {
            e.write_value(v);
        }
        let bytes = e.into_inner();
        let (mut r, mut s) = (Decoder::new(&bytes), Decoder::new(&bytes));
        for _ in &values {
            r.read_value().unwrap();
            s.skip_value().unwrap();
            prop_assert_eq!(r.position(), s.position());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in wire()) {
        let mut r = Decoder::new(&bytes);
        let mut s = Decoder::new(&bytes);
        loop {
            let read = r.read_value();
            let skip = s.skip_value();
            // Whatever reads also skips, to the same place. (Skipping does not check
            // UTF-8 continuation bytes, so it may get further than reading.)
            if read.is_ok() {
                prop_assert!(skip.is_ok(), "{:?} {:?}", read, skip);
                prop_assert_eq!(r.position(), s.position());
            }
            if read.is_err() || skip.is_err() || r.is_empty() {
                break;
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_in_typed_readers(bytes in wire()) {
        let mut d = Decoder::new(&bytes);
        let _ = d.read_str();
        let _ = d.read_nullable_string();
        let _ = d.read_i32();
        let _ = d.read_i64();
        if d.read_map_start().is_ok() {
            while let Ok(false) = d.at_end_marker() {
                if d.read_str().is_err() || d.skip_value().is_err() {
                    break;
                }
            }
        }
        let _ = d.read_list_start();
    }
}
