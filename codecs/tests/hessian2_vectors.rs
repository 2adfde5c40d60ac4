//! Test vectors written by the reference JavaScript implementation (hessian.js 2.11.0 and
//! js-to-java 2.8.0); see `vectors/generate.js`. Each one must decode to the described
//! value, skip to its end, and survive re-encoding. Where hessian.js picks the same
//! compact forms as our encoder (all but the variable-length lists, which hessian.js
//! was made to write on purpose) the re-encoded bytes must be identical.

use metamesh_codecs::hessian2::{Decoder, Encoder, Value};
use serde_json::Value as Json;

const VECTORS: &str = include_str!("vectors/hessian2.json");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn opt_str(j: &Json) -> Option<String> {
    j.as_str().map(str::to_owned)
}

fn expected(j: &Json) -> Value {
    let field = |k: &str| &j[k];
    match field("t").as_str().expect("t") {
        "null" => Value::Null,
        "bool" => Value::Bool(field("v").as_bool().expect("bool")),
        "int" => Value::Int(i32::try_from(field("v").as_i64().expect("int")).expect("i32")),
        "long" => Value::Long(field("v").as_str().expect("long").parse().expect("i64")),
        "double" => {
            let bits = u64::from_str_radix(field("bits").as_str().expect("bits"), 16);
            Value::Double(f64::from_bits(bits.expect("bits")))
        }
        "date" => Value::Date(field("v").as_str().expect("date").parse().expect("i64")),
        "string" => match field("v").as_str() {
            Some(s) => Value::String(s.to_owned()),
            None => Value::String(
                field("parts")
                    .as_array()
                    .expect("parts")
                    .iter()
                    .map(|p| {
                        let n = usize::try_from(p[1].as_u64().expect("n")).expect("n");
                        p[0].as_str().expect("part").repeat(n)
                    })
                    .collect(),
            ),
        },
        "binary" => Value::Binary(hex(field("hex").as_str().expect("hex"))),
        "list" => Value::List {
            ty: opt_str(field("type")),
            items: field("items")
                .as_array()
                .expect("items")
                .iter()
                .map(expected)
                .collect(),
        },
        "map" => Value::Map {
            ty: opt_str(field("type")),
            entries: field("entries")
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| (expected(&e[0]), expected(&e[1])))
                .collect(),
        },
        "object" => Value::Object {
            class: field("class").as_str().expect("class").to_owned(),
            fields: field("fields")
                .as_array()
                .expect("fields")
                .iter()
                .map(|f| (f[0].as_str().expect("name").to_owned(), expected(&f[1])))
                .collect(),
        },
        "ref" => Value::Ref(u32::try_from(field("v").as_u64().expect("ref")).expect("u32")),
        other => panic!("unknown expected kind {other}"),
    }
}

struct Vector {
    name: String,
    bytes: Vec<u8>,
    value: Value,
    canonical: bool,
}

fn vectors() -> Vec<Vector> {
    let all: Json = serde_json::from_str(VECTORS).expect("vectors json");
    all.as_array()
        .expect("array")
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().expect("name").to_owned(),
            bytes: hex(v["hex"].as_str().expect("hex")),
            value: expected(&v["expected"]),
            canonical: v["canonical"].as_bool().expect("canonical"),
        })
        .collect()
}

#[test]
fn there_are_enough_vectors() {
    let vs = vectors();
    assert!(vs.len() >= 60, "{}", vs.len());
    assert!(vs.iter().filter(|v| !v.canonical).count() <= 2);
}

#[test]
fn vectors_decode_to_the_expected_value() {
    for v in vectors() {
        let mut d = Decoder::new(&v.bytes);
        let got = d.read_value().unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(got, v.value, "{}", v.name);
        assert!(d.is_empty(), "{}: {} bytes left", v.name, d.remaining());
    }
}

#[test]
fn vectors_skip_to_their_end() {
    for v in vectors() {
        let mut d = Decoder::new(&v.bytes);
        d.skip_value().unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(d.position(), v.bytes.len(), "{}", v.name);
    }
}

#[test]
fn vectors_reencode() {
    for v in vectors() {
        let mut e = Encoder::new();
        e.write_value(&v.value);
        let bytes = e.into_inner();
        let again = Decoder::new(&bytes).read_value();
        assert_eq!(again.as_ref(), Ok(&v.value), "{}", v.name);
        if v.canonical {
            assert!(bytes == v.bytes, "{}: bytes differ from hessian.js", v.name);
        }
    }
}

#[test]
fn vector_prefixes_are_errors() {
    for v in vectors().into_iter().filter(|v| v.bytes.len() < 600) {
        for n in 0..v.bytes.len() {
            let cut = &v.bytes[..n];
            assert!(
                Decoder::new(cut).read_value().is_err(),
                "{} cut at {n}",
                v.name
            );
            assert!(
                Decoder::new(cut).skip_value().is_err(),
                "{} cut at {n}",
                v.name
            );
        }
    }
}
