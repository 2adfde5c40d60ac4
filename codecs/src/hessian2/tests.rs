use std::borrow::Cow;

use super::*;

fn enc(f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
    let mut e = Encoder::new();
    f(&mut e);
    e.into_inner()
}

/// Decodes one value that must fill `bytes`, and checks that skipping it agrees.
fn dec(bytes: &[u8]) -> Value {
    let mut d = Decoder::new(bytes);
    let v = d
        .read_value()
        .unwrap_or_else(|e| panic!("{e} in {bytes:02x?}"));
    assert!(d.is_empty(), "{} bytes left after {v:?}", d.remaining());
    let mut s = Decoder::new(bytes);
    s.skip_value().expect("skip");
    assert_eq!(s.position(), bytes.len(), "skip length for {v:?}");
    v
}

fn dec_err(bytes: &[u8]) -> Error {
    let read = Decoder::new(bytes)
        .read_value()
        .expect_err("read should fail");
    Decoder::new(bytes)
        .skip_value()
        .expect_err("skip should fail");
    read
}

/// Encodes `v`, checks it decodes back, and returns the bytes.
fn round(v: &Value) -> Vec<u8> {
    let bytes = enc(|e| {
        e.write_value(v);
    });
    assert_eq!(
        &dec(&bytes),
        v,
        "bytes {:02x?}",
        &bytes[..bytes.len().min(40)]
    );
    bytes
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

#[test]
fn null_and_bools() {
    assert_eq!(round(&Value::Null), [b'N']);
    assert_eq!(round(&Value::Bool(true)), [b'T']);
    assert_eq!(round(&Value::Bool(false)), [b'F']);
}

#[test]
fn int_forms_and_boundaries() {
    let cases: &[(i32, &[u8])] = &[
        (0, &[0x90]),
        (-16, &[0x80]),
        (47, &[0xbf]),
        (-17, &[0xc7, 0xef]),
        (48, &[0xc8, 0x30]),
        (-2048, &[0xc0, 0x00]),
        (2047, &[0xcf, 0xff]),
        (-2049, &[0xd3, 0xf7, 0xff]),
        (2048, &[0xd4, 0x08, 0x00]),
        (-262144, &[0xd0, 0x00, 0x00]),
        (262143, &[0xd7, 0xff, 0xff]),
        (-262145, &[b'I', 0xff, 0xfb, 0xff, 0xff]),
        (262144, &[b'I', 0x00, 0x04, 0x00, 0x00]),
        (i32::MIN, &[b'I', 0x80, 0, 0, 0]),
        (i32::MAX, &[b'I', 0x7f, 0xff, 0xff, 0xff]),
    ];
    for &(v, bytes) in cases {
        assert_eq!(round(&Value::Int(v)), bytes, "{v}");
        assert_eq!(Decoder::new(bytes).read_i32(), Ok(v));
        assert_eq!(Decoder::new(bytes).read_i64(), Ok(i64::from(v)));
    }
    // The full form may carry small values too.
    assert_eq!(dec(&[b'I', 0, 0, 0, 1]), Value::Int(1));
}

#[test]
fn long_forms_and_boundaries() {
    let cases: &[(i64, &[u8])] = &[
        (0, &[0xe0]),
        (-8, &[0xd8]),
        (15, &[0xef]),
        (-9, &[0xf7, 0xf7]),
        (16, &[0xf8, 0x10]),
        (-2048, &[0xf0, 0x00]),
        (2047, &[0xff, 0xff]),
        (-2049, &[0x3b, 0xf7, 0xff]),
        (-262144, &[0x38, 0x00, 0x00]),
        (262143, &[0x3f, 0xff, 0xff]),
        (262144, &[b'Y', 0x00, 0x04, 0x00, 0x00]),
        (i64::from(i32::MIN), &[b'Y', 0x80, 0, 0, 0]),
        (i64::from(i32::MAX), &[b'Y', 0x7f, 0xff, 0xff, 0xff]),
        (i64::from(i32::MAX) + 1, &[b'L', 0, 0, 0, 0, 0x80, 0, 0, 0]),
        (
            i64::from(i32::MIN) - 1,
            &[b'L', 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
        ),
        (i64::MIN, &[b'L', 0x80, 0, 0, 0, 0, 0, 0, 0]),
        (
            i64::MAX,
            &[b'L', 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ];
    for &(v, bytes) in cases {
        assert_eq!(round(&Value::Long(v)), bytes, "{v}");
        assert_eq!(Decoder::new(bytes).read_i64(), Ok(v));
        assert!(matches!(
            Decoder::new(bytes).read_i32(),
            Err(Error::UnexpectedTag { pos: 0, .. })
        ));
    }
}

#[test]
fn double_forms() {
    let cases: &[(f64, &[u8])] = &[
        (0.0, &[0x5b]),
        (1.0, &[0x5c]),
        (-1.0, &[0x5d, 0xff]),
        (127.0, &[0x5d, 0x7f]),
        (-128.0, &[0x5d, 0x80]),
        (128.0, &[0x5e, 0x00, 0x80]),
        (-32768.0, &[0x5e, 0x80, 0x00]),
        (32767.0, &[0x5e, 0x7f, 0xff]),
        (32768.0, &[0x5f, 0x01, 0xf4, 0x00, 0x00]),
        (0.5, &[0x5f, 0x00, 0x00, 0x01, 0xf4]),
        (-2.5, &[0x5f, 0xff, 0xff, 0xf6, 0x3c]),
        (0.001, &[0x5f, 0x00, 0x00, 0x00, 0x01]),
    ];
    for &(v, bytes) in cases {
        assert_eq!(round(&Value::Double(v)), bytes, "{v}");
    }
    // Values no shorter form reproduces bit for bit.
    for v in [
        -0.0,
        0.1 + 0.2,
        1e300,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        3_000_000.5,
        1.0e-4,
    ] {
        let bytes = round(&Value::Double(v));
        assert_eq!(bytes.len(), 9, "{v}");
        assert_eq!(bytes[0], b'D');
    }
    assert_eq!(
        dec(&[b'D', 0x40, 0x28, 0x80, 0, 0, 0, 0, 0]),
        Value::Double(12.25)
    );
}

#[test]
fn date_forms() {
    assert_eq!(
        round(&Value::Date(1_700_000_040_000)),
        [0x4b, 0x01, 0xb0, 0x55, 0x16]
    );
    let ms: i64 = 1_700_000_000_123;
    let mut want = vec![0x4a];
    want.extend_from_slice(&ms.to_be_bytes());
    assert_eq!(round(&Value::Date(ms)), want);
    assert_eq!(dec(&[0x4b, 0xff, 0xff, 0xff, 0xff]), Value::Date(-60_000));
    // Whole minutes beyond 32 bits need the millisecond form.
    assert_eq!(
        round(&Value::Date(i64::from(i32::MAX) * 60_000 + 60_000))[0],
        0x4a
    );
}

#[test]
fn string_lengths() {
    for (len, header) in [
        (0usize, vec![0x00]),
        (31, vec![0x1f]),
        (32, vec![0x30, 0x20]),
        (1023, vec![0x33, 0xff]),
        (1024, vec![b'S', 0x04, 0x00]),
        (0x8000, vec![b'S', 0x80, 0x00]),
        (65535, vec![b'R', 0x80, 0x00]),
        (65536, vec![b'R', 0x80, 0x00]),
    ] {
        let text = "x".repeat(len);
        let bytes = round(&Value::String(text.clone()));
        assert_eq!(&bytes[..header.len()], &header[..], "len {len}");
        assert_eq!(Decoder::new(&bytes).read_string().as_deref(), Ok(&*text));
    }
    // 65535 units: one full 0x8000 chunk, then 0x7fff units in a final `S` chunk.
    let bytes = enc(|e| {
        e.write_str(&"y".repeat(65535));
    });
    assert_eq!(&bytes[3 + 0x8000..3 + 0x8000 + 3], &[b'S', 0x7f, 0xff]);
    // 65536: 0x8000 + 0x8000.
    let bytes = enc(|e| {
        e.write_str(&"y".repeat(65536));
    });
    assert_eq!(&bytes[3 + 0x8000..3 + 0x8000 + 3], &[b'S', 0x80, 0x00]);
}

#[test]
fn string_units_are_utf16() {
    // é is 2 bytes and 1 unit; 中 3 bytes and 1 unit; 😀 is 2 units as CESU-8 surrogates.
    assert_eq!(round(&s("é")), [0x01, 0xc3, 0xa9]);
    assert_eq!(round(&s("中")), [0x01, 0xe4, 0xb8, 0xad]);
    assert_eq!(round(&s("😀")), [0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]);
    // Real 4-byte UTF-8 decodes too, counted as two units.
    assert_eq!(dec(&[0x03, 0xf0, 0x9f, 0x98, 0x80, b'!']), s("😀!"));
    // A 4-byte character cannot fit in the one unit that is left.
    assert_eq!(
        dec_err(&[0x01, 0xf0, 0x9f, 0x98, 0x80]),
        Error::InvalidUtf8 { pos: 5 }
    );
    // Lone surrogates become U+FFFD.
    assert_eq!(dec(&[0x01, 0xed, 0xa0, 0xbd]), s("\u{fffd}"));
    assert_eq!(dec(&[0x02, 0xed, 0xb8, 0x80, b'a']), s("\u{fffd}a"));
    assert_eq!(
        dec(&[0x02, 0xed, 0xa0, 0xbd, 0xed, 0xa0, 0xbd]),
        s("\u{fffd}\u{fffd}")
    );
}

#[test]
fn string_chunks_keep_surrogate_pairs() {
    // 0x7fff units, then an emoji that would straddle the 0x8000 boundary.
    let text = format!("{}😀b", "a".repeat(0x7fff));
    let bytes = round(&Value::String(text));
    assert_eq!(&bytes[..3], &[b'R', 0x7f, 0xff]);
    assert_eq!(&bytes[3 + 0x7fff..3 + 0x7fff + 1], &[0x03]);
    // A pair split across chunks by another writer still joins up.
    let split = [b'R', 0x00, 0x01, 0xed, 0xa0, 0xbd, 0x01, 0xed, 0xb8, 0x80];
    assert_eq!(dec(&split), s("😀"));
    // A non-final chunk may be followed by any final string form.
    assert_eq!(dec(&[b'R', 0x00, 0x01, b'a', 0x30, 0x01, b'b']), s("ab"));
    assert_eq!(
        dec(&[b'R', 0x00, 0x01, b'a', b'S', 0x00, 0x01, b'b']),
        s("ab")
    );
    // But not by anything else.
    assert!(matches!(
        dec_err(&[b'R', 0x00, 0x01, b'a', 0x90]),
        Error::UnexpectedTag {
            tag: 0x90,
            pos: 4,
            ..
        }
    ));
}

#[test]
fn read_str_borrows_when_it_can() {
    let bytes = enc(|e| {
        e.write_str("com.example.DemoService")
            .write_str("中文")
            .write_str("😀");
    });
    let mut d = Decoder::new(&bytes);
    assert!(matches!(
        d.read_str(),
        Ok(Cow::Borrowed("com.example.DemoService"))
    ));
    assert!(matches!(d.read_str(), Ok(Cow::Borrowed("中文"))));
    assert!(matches!(d.read_str(), Ok(Cow::Owned(ref o)) if o == "😀"));
    assert!(d.is_empty());
}

#[test]
fn read_ascii_reads_one_ascii_chunk_or_nothing() {
    // Each short, medium and final form of an ASCII string is read where it is.
    for len in [0usize, 1, 31, 32, 1023, 1024, 0x8000] {
        let text = "k".repeat(len);
        let bytes = enc(|e| {
            e.write_str(&text).write_i32(7);
        });
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.read_ascii(), Some(text.as_bytes()), "len {len}");
        assert_eq!(d.read_i32(), Ok(7), "len {len}");
    }
    // Non-ASCII, several chunks, other tags and a cut-off string are left untouched for
    // the general reader, which still reads (or rejects) them as before.
    for bytes in [
        enc(|e| {
            e.write_str("é");
        }),
        enc(|e| {
            e.write_str(&"y".repeat(65536));
        }),
        enc(|e| {
            e.write_i32(1);
        }),
        vec![0x05, b'a', b'b'],
        vec![b'S', 0x00],
        vec![0x30],
        vec![],
    ] {
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.read_ascii(), None);
        assert_eq!(d.position(), 0);
    }
    assert_eq!(dec_err(&[0x05, b'a', b'b']), Error::Eof);
}

#[test]
fn invalid_utf8() {
    assert_eq!(dec_err(&[0x01, 0xff]), Error::InvalidUtf8 { pos: 1 });
    assert_eq!(dec_err(&[0x01, 0x80]), Error::InvalidUtf8 { pos: 1 });
    // Bad continuation bytes are found by reading; skipping only follows lead bytes.
    let bad = [0x01, 0xc3, 0x28];
    assert_eq!(
        Decoder::new(&bad).read_value(),
        Err(Error::InvalidUtf8 { pos: 2 })
    );
    let mut d = Decoder::new(&bad);
    assert_eq!(d.skip_value(), Ok(()));
    assert!(d.is_empty());
}

#[test]
fn binary_lengths_and_chunks() {
    for (len, header) in [
        (0usize, vec![0x20]),
        (15, vec![0x2f]),
        (16, vec![0x34, 0x10]),
        (1023, vec![0x37, 0xff]),
        (1024, vec![b'B', 0x04, 0x00]),
        (4093, vec![b'B', 0x0f, 0xfd]),
        (4094, vec![b'A', 0x0f, 0xfd]),
        (70_000, vec![b'A', 0x0f, 0xfd]),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let bytes = round(&Value::Binary(data));
        assert_eq!(&bytes[..header.len()], &header[..], "len {len}");
    }
    // 4094 bytes: a 4093-byte chunk, then one byte in the short form.
    let bytes = enc(|e| {
        e.write_binary(&[1u8; 4094]);
    });
    assert_eq!(&bytes[3 + 4093..], &[0x21, 1]);
    assert_eq!(
        dec(&[b'A', 0x00, 0x02, 1, 2, b'A', 0, 0, 0x34, 0x01, 3]),
        Value::Binary(vec![1, 2, 3])
    );
    assert!(matches!(
        dec_err(&[b'A', 0x00, 0x01, 1, b'N']),
        Error::UnexpectedTag {
            tag: b'N',
            pos: 4,
            ..
        }
    ));
}

fn list(ty: Option<&str>, items: Vec<Value>) -> Value {
    Value::List {
        ty: ty.map(str::to_owned),
        items,
    }
}

fn map(ty: Option<&str>, entries: Vec<(Value, Value)>) -> Value {
    Value::Map {
        ty: ty.map(str::to_owned),
        entries,
    }
}

#[test]
fn list_forms() {
    let ints = vec![Value::Int(1), Value::Int(2)];
    // 0x55 variable typed, 0x56 fixed typed, 0x57 variable untyped, 0x58 fixed untyped.
    assert_eq!(
        dec(&[0x55, 0x04, b'[', b'i', b'n', b't', 0x91, 0x92, b'Z']),
        list(Some("[int"), ints.clone())
    );
    assert_eq!(
        dec(&[0x56, 0x04, b'[', b'i', b'n', b't', 0x92, 0x91, 0x92]),
        list(Some("[int"), ints.clone())
    );
    assert_eq!(dec(&[0x57, 0x91, 0x92, b'Z']), list(None, ints.clone()));
    assert_eq!(dec(&[0x58, 0x92, 0x91, 0x92]), list(None, ints.clone()));
    assert_eq!(
        dec(&[0x72, 0x04, b'[', b'i', b'n', b't', 0x91, 0x92]),
        list(Some("[int"), ints.clone())
    );
    assert_eq!(dec(&[0x7a, 0x91, 0x92]), list(None, ints.clone()));
    assert_eq!(dec(&[0x78]), list(None, vec![]));
    assert_eq!(dec(&[0x57, b'Z']), list(None, vec![]));

    // The encoder writes fixed-length lists, compact up to 7 items.
    assert_eq!(round(&list(None, ints.clone())), [0x7a, 0x91, 0x92]);
    let eight = vec![Value::Null; 8];
    assert_eq!(&round(&list(None, eight.clone()))[..2], &[0x58, 0x98]);
    assert_eq!(
        round(&list(Some("[int"), ints.clone())),
        [0x72, 0x04, b'[', b'i', b'n', b't', 0x91, 0x92]
    );
    assert_eq!(
        &round(&list(Some("[x"), eight))[..4],
        &[0x56, 0x02, b'[', b'x']
    );
    let mut e = Encoder::new();
    e.write_list_variable(Some("[x"))
        .write_null()
        .write_list_end();
    e.write_list_variable(None).write_list_end();
    let bytes = e.into_inner();
    assert_eq!(bytes, [0x55, 0x02, b'[', b'x', b'N', b'Z', 0x57, b'Z']);
    let mut d = Decoder::new(&bytes);
    assert_eq!(d.read_value(), Ok(list(Some("[x"), vec![Value::Null])));
    assert_eq!(d.read_value(), Ok(list(None, vec![])));
}

#[test]
fn list_start_streaming() {
    let bytes = [
        0x56, 0x02, b'[', b'x', 0x92, 0x91, 0x92, 0x57, 0x91, b'Z', b'N',
    ];
    let mut d = Decoder::new(&bytes);
    assert_eq!(
        d.read_list_start(),
        Ok(ListStart::Fixed {
            ty: Some("[x".into()),
            len: 2
        })
    );
    assert_eq!(d.read_i32(), Ok(1));
    assert_eq!(d.read_i32(), Ok(2));
    assert_eq!(d.read_list_start(), Ok(ListStart::Variable { ty: None }));
    assert_eq!(d.at_end_marker(), Ok(false));
    assert_eq!(d.read_i32(), Ok(1));
    assert_eq!(d.at_end_marker(), Ok(true));
    assert_eq!(d.read_list_start(), Ok(ListStart::Null));
    assert_eq!(d.at_end_marker(), Err(Error::Eof));
}

#[test]
fn list_lengths_are_checked() {
    assert_eq!(
        dec_err(&[0x58, b'I', 0x7f, 0xff, 0xff, 0xff, 0x90]),
        Error::TooLarge {
            what: "list length",
            len: 0x7fff_ffff,
            limit: 1
        }
    );
    assert_eq!(
        dec_err(&[0x58, 0x8f]),
        Error::NegativeLength {
            what: "list length",
            len: -1,
            pos: 1
        }
    );
    assert!(matches!(
        dec_err(&[0x58, b'N']),
        Error::UnexpectedTag {
            tag: b'N',
            pos: 1,
            ..
        }
    ));
}

#[test]
fn maps_and_type_refs() {
    let m = map(
        None,
        vec![(s("a"), Value::Int(1)), (Value::Int(2), Value::Null)],
    );
    assert_eq!(round(&m), [b'H', 0x01, b'a', 0x91, 0x92, b'N', b'Z']);
    // The second use of a type name is an int reference to it; lists and maps share the
    // type table.
    let v = list(
        None,
        vec![
            map(Some("java.util.TreeMap"), vec![]),
            list(Some("java.util.TreeMap"), vec![]),
            map(Some("java.util.TreeMap"), vec![(s("k"), s("v"))]),
            list(Some("[int"), vec![]),
            list(Some("[int"), vec![]),
        ],
    );
    let bytes = round(&v);
    let mut want = vec![0x7d, b'M', 0x11];
    want.extend_from_slice(b"java.util.TreeMap");
    want.extend_from_slice(&[b'Z', 0x70, 0x90, b'M', 0x90, 0x01, b'k', 0x01, b'v', b'Z']);
    want.extend_from_slice(&[0x70, 0x04, b'[', b'i', b'n', b't', 0x70, 0x91]);
    assert_eq!(bytes, want);
    assert_eq!(
        dec_err(&[b'M', 0x91, b'Z']),
        Error::InvalidTypeRef { index: 1 }
    );
    assert!(matches!(
        dec_err(b"MNZ"),
        Error::UnexpectedTag {
            tag: b'N',
            pos: 1,
            ..
        }
    ));
}

#[test]
fn map_streaming_for_attachments() {
    let bytes = enc(|e| {
        e.write_map_start(None)
            .write_str("timeout")
            .write_i32(3000)
            .write_str("group")
            .write_str("blue")
            .write_map_end();
        e.write_map_start(Some("java.util.TreeMap")).write_map_end();
        e.write_null();
    });
    let mut d = Decoder::new(&bytes);
    assert_eq!(d.read_map_start(), Ok(MapStart::Untyped));
    let mut seen = Vec::new();
    while !d.at_end_marker().unwrap() {
        let k = d.read_str().unwrap();
        let v = d.read_value().unwrap();
        seen.push((k.into_owned(), v.to_display_string().unwrap().into_owned()));
    }
    assert_eq!(
        seen,
        [
            ("timeout".to_owned(), "3000".to_owned()),
            ("group".to_owned(), "blue".to_owned())
        ]
    );
    assert_eq!(
        d.read_map_start(),
        Ok(MapStart::Typed("java.util.TreeMap".into()))
    );
    assert_eq!(d.at_end_marker(), Ok(true));
    assert_eq!(d.read_map_start(), Ok(MapStart::Null));
    assert!(d.is_empty());
    // A wrong tag consumes nothing.
    let mut d = Decoder::new(&[0x90]);
    assert!(matches!(
        d.read_map_start(),
        Err(Error::UnexpectedTag {
            tag: 0x90,
            pos: 0,
            ..
        })
    ));
    assert_eq!(d.position(), 0);
    assert_eq!(d.read_i32(), Ok(0));
}

fn obj(class: &str, fields: &[(&str, Value)]) -> Value {
    Value::Object {
        class: class.to_owned(),
        fields: fields
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
    }
}

#[test]
fn class_defs_and_objects() {
    let a = obj("com.x.User", &[("name", s("bob")), ("age", Value::Int(3))]);
    let b = obj("com.x.User", &[("name", s("amy")), ("age", Value::Int(4))]);
    let bytes = round(&list(None, vec![a.clone(), b.clone()]));
    let mut want = vec![0x7a, b'C', 0x0a];
    want.extend_from_slice(b"com.x.User");
    want.extend_from_slice(&[0x92, 0x04, b'n', b'a', b'm', b'e', 0x03, b'a', b'g', b'e']);
    want.extend_from_slice(&[0x60, 0x03, b'b', b'o', b'b', 0x93]);
    want.extend_from_slice(&[0x60, 0x03, b'a', b'm', b'y', 0x94]);
    assert_eq!(bytes, want);

    // Same class name, other fields: a second definition.
    let c = obj("com.x.User", &[("id", Value::Long(1))]);
    let bytes = round(&list(None, vec![a, c.clone(), b]));
    assert_eq!(bytes.iter().filter(|&&x| x == b'C').count(), 2);

    // Beyond 16 definitions objects use `O` and an int index.
    let many: Vec<Value> = (0..18)
        .map(|i| obj(&format!("C{i}"), &[("f", Value::Int(i))]))
        .collect();
    let mut items = many.clone();
    items.push(many[17].clone());
    let bytes = round(&list(None, items));
    // The repeat of class 17: `O`, index 17, then its field (int 17).
    assert_eq!(&bytes[bytes.len() - 3..], &[b'O', 0xa1, 0xa1]);

    // Objects with no fields, and `O` with an explicit index.
    assert_eq!(dec(&[b'C', 0x01, b'E', 0x90, b'O', 0x90]), obj("E", &[]));
    // A definition may precede any value.
    assert_eq!(dec(&[b'C', 0x01, b'E', 0x90, 0x91]), Value::Int(1));
    assert_eq!(dec_err(&[0x60]), Error::InvalidClassRef { index: 0 });
    assert_eq!(
        dec_err(&[b'C', 0x01, b'E', 0x90, b'O', 0x8f]),
        Error::InvalidClassRef { index: u32::MAX }
    );
    assert!(matches!(
        dec_err(&[b'C', 0x01, b'E', 0x91, 0x90]),
        Error::UnexpectedTag {
            tag: 0x90,
            pos: 4,
            ..
        }
    ));
}

#[test]
fn definitions_carry_across_values_and_skips() {
    let a = obj(
        "P",
        &[("x", Value::Int(1)), ("tags", list(Some("[s"), vec![]))],
    );
    let bytes = enc(|e| {
        e.write_value(&a)
            .write_value(&a)
            .write_value(&list(Some("[s"), vec![]));
    });
    let mut d = Decoder::new(&bytes);
    d.skip_value().unwrap();
    assert_eq!(d.read_value(), Ok(a.clone()));
    assert_eq!(d.read_value(), Ok(list(Some("[s"), vec![])));
    assert!(d.is_empty());
    let mut d = Decoder::new(&bytes);
    for _ in 0..3 {
        d.skip_value().unwrap();
    }
    assert!(d.is_empty());
}

#[test]
fn back_references() {
    // [ {a: Q0}, Q1 ]: refs count lists, maps and objects in the order they start.
    let v = list(
        None,
        vec![
            map(None, vec![(s("a"), Value::Ref(0))]),
            Value::Ref(1),
            obj("O", &[("self", Value::Ref(2))]),
        ],
    );
    let bytes = round(&v);
    assert_eq!(&bytes[..7], &[0x7b, b'H', 0x01, b'a', b'Q', 0x90, b'Z']);
    assert_eq!(dec_err(&[b'Q', 0x90]), Error::InvalidRef { index: 0 });
    assert_eq!(dec_err(&[0x79, b'Q', 0x91]), Error::InvalidRef { index: 1 });
    assert_eq!(
        dec_err(&[0x79, b'Q', 0x8f]),
        Error::InvalidRef { index: u32::MAX }
    );
    // Streamed maps count too.
    let mut d = Decoder::new(&[b'H', b'Z', b'Q', 0x90]);
    assert_eq!(d.read_map_start(), Ok(MapStart::Untyped));
    assert_eq!(d.at_end_marker(), Ok(true));
    assert_eq!(d.read_value(), Ok(Value::Ref(0)));
}

fn nested(opener: &[u8], n: usize) -> Vec<u8> {
    opener.repeat(n)
}

#[test]
fn ten_thousand_deep_is_too_deep() {
    let deep_lists = nested(&[0x57], 10_000);
    let deep_fixed = nested(&[0x79], 10_000);
    let deep_map_keys = nested(b"H", 10_000);
    let deep_map_values = nested(&[b'H', 0x90], 10_000);
    let mut deep_objects = vec![b'C', 0x01, b'N', 0x91, 0x01, b'f'];
    deep_objects.extend(nested(&[0x60], 10_000));
    let mut deep_typed = vec![0x55, 0x01, b't'];
    deep_typed.extend(nested(&[0x55, 0x90], 10_000));
    for bytes in [
        deep_lists,
        deep_fixed,
        deep_map_keys,
        deep_map_values,
        deep_objects,
        deep_typed,
    ] {
        assert_eq!(
            Decoder::new(&bytes).read_value(),
            Err(Error::TooDeep { limit: 128 })
        );
        assert_eq!(
            Decoder::new(&bytes).skip_value(),
            Err(Error::TooDeep { limit: 128 })
        );
    }
}

#[test]
fn depth_limit_is_exact() {
    let mut two = vec![0x79, 0x79, 0x78];
    assert!(Decoder::new(&two).with_max_depth(3).read_value().is_ok());
    assert_eq!(
        Decoder::new(&two).with_max_depth(2).read_value(),
        Err(Error::TooDeep { limit: 2 })
    );
    assert_eq!(
        Decoder::new(&two).with_max_depth(2).skip_value(),
        Err(Error::TooDeep { limit: 2 })
    );
    two.pop();
    two.push(0x90);
    assert!(Decoder::new(&two).with_max_depth(2).read_value().is_ok());
    assert!(Decoder::new(&two).with_max_depth(2).skip_value().is_ok());
}

fn sample() -> Value {
    list(
        None,
        vec![
            Value::Null,
            Value::Bool(true),
            Value::Int(-300_000),
            Value::Int(1000),
            Value::Long(1 << 40),
            Value::Long(-5),
            Value::Double(2.5),
            Value::Double(1e100),
            Value::Date(1_700_000_000_123),
            s("héllo 😀"),
            Value::String("z".repeat(40)),
            Value::Binary(vec![9; 20]),
            list(Some("[int"), vec![Value::Int(1); 9]),
            map(
                Some("java.util.TreeMap"),
                vec![(
                    s("k"),
                    obj("com.x.User", &[("n", s("u")), ("m", Value::Ref(1))]),
                )],
            ),
            obj("com.x.User", &[("n", Value::Null), ("m", Value::Ref(0))]),
            list(Some("[int"), vec![]),
        ],
    )
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = round(&sample());
    for n in 0..bytes.len() {
        let cut = &bytes[..n];
        assert!(Decoder::new(cut).read_value().is_err(), "read prefix {n}");
        assert!(Decoder::new(cut).skip_value().is_err(), "skip prefix {n}");
    }
}

#[test]
fn unknown_tags_are_errors() {
    for t in [0x40u8, 0x45, 0x47, 0x50, b'Z'] {
        assert_eq!(
            dec_err(&[t]),
            Error::UnexpectedTag {
                tag: t,
                pos: 0,
                expected: "a value"
            }
        );
    }
    assert_eq!(dec_err(&[]), Error::Eof);
}

#[test]
fn typed_readers() {
    let bytes = enc(|e| {
        e.write_str("a")
            .write_null()
            .write_str("b")
            .write_bool(true)
            .write_i64(1 << 40);
    });
    let mut d = Decoder::new(&bytes);
    assert_eq!(d.peek_tag(), Some(0x01));
    assert_eq!(d.read_string(), Ok("a".into()));
    assert!(matches!(
        d.read_string(),
        Err(Error::UnexpectedTag { tag: b'N', .. })
    ));
    assert_eq!(d.read_nullable_string(), Ok(None));
    assert_eq!(d.read_nullable_string(), Ok(Some("b".into())));
    assert!(d.read_i32().is_err());
    assert_eq!(d.read_bool(), Ok(true));
    assert_eq!(d.read_i64(), Ok(1 << 40));
    assert_eq!(d.peek_tag(), None);
    assert_eq!(d.read_i64(), Err(Error::Eof));
}

#[test]
fn display_strings_and_helpers() {
    assert_eq!(s("x").to_display_string().as_deref(), Some("x"));
    assert_eq!(Value::Int(-3).to_display_string().as_deref(), Some("-3"));
    assert_eq!(
        Value::Long(1 << 40).to_display_string().as_deref(),
        Some("1099511627776")
    );
    assert_eq!(
        Value::Bool(false).to_display_string().as_deref(),
        Some("false")
    );
    assert_eq!(
        Value::Double(1.0).to_display_string().as_deref(),
        Some("1.0")
    );
    assert_eq!(
        Value::Double(0.25).to_display_string().as_deref(),
        Some("0.25")
    );
    assert_eq!(Value::Null.to_display_string(), None);
    assert_eq!(list(None, vec![]).to_display_string(), None);
    assert_eq!(s("x").as_str(), Some("x"));
    assert_eq!(Value::Int(2).as_i64(), Some(2));
    assert_eq!(Value::Double(f64::NAN), Value::Double(f64::NAN));
    assert_ne!(Value::Double(0.0), Value::Double(-0.0));
}

#[test]
fn error_messages_are_readable() {
    let e = Decoder::new(&[0x90, 0x40]).skip_value().and_then(|()| {
        let mut d = Decoder::new(&[0x40]);
        d.read_value().map(drop)
    });
    assert_eq!(
        e.unwrap_err().to_string(),
        "hessian2: unexpected tag 0x40 at byte 0, expected a value"
    );
    assert_eq!(
        Error::TooDeep { limit: 128 }.to_string(),
        "hessian2 value is nested deeper than 128 lists, maps or objects"
    );
}

#[test]
fn bytes_mut_sink() {
    let mut out = bytes::BytesMut::new();
    {
        let mut e = Encoder::with_buffer(&mut out);
        e.write_value(&sample());
    }
    assert_eq!(&out[..], &round(&sample())[..]);
}

#[test]
fn string_spans_read_like_strings() {
    // Each input is one string followed by a marker byte; the span, decoded with str_at,
    // must read as read_str does, and leave the decoder at the marker.
    for text in ["", "batchjob", "é中", "😀!", &"x".repeat(300)] {
        let mut bytes = enc(|e| {
            e.write_str(text);
        });
        bytes.push(b'Z');
        let mut d = Decoder::new(&bytes);
        let span = d.read_str_span().expect("span").expect("one chunk");
        assert_eq!(d.str_at(span.clone()).expect("decodes"), text);
        assert_eq!(d.peek_tag(), Some(b'Z'), "{text:?}");
        let mut r = Decoder::new(&bytes);
        assert_eq!(r.read_str().expect("read"), text);
        assert_eq!(r.position(), d.position());
    }
    // Java's surrogate pair is not UTF-8: the span holds its bytes, str_at joins them.
    let cesu = [0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80];
    let mut d = Decoder::new(&cesu);
    let span = d.read_str_span().expect("span").expect("one chunk");
    assert!(std::str::from_utf8(&cesu[span.clone()]).is_err());
    assert_eq!(d.str_at(span).expect("decodes"), "😀");
    // Invalid bytes are an error naming their position, as read_str's are: a bad
    // continuation byte when decoding, a bad lead byte already when finding the span.
    let bad = [0x02, b'a', 0xc3, 0x28];
    let mut d = Decoder::new(&bad);
    let span = d.read_str_span().expect("span").expect("one chunk");
    assert_eq!(d.str_at(span), Err(Error::InvalidUtf8 { pos: 3 }));
    assert_eq!(
        Decoder::new(&bad).read_str(),
        Err(Error::InvalidUtf8 { pos: 3 })
    );
    let bad = [0x02, b'a', 0xff];
    assert_eq!(
        Decoder::new(&bad).read_str_span(),
        Err(Error::InvalidUtf8 { pos: 2 })
    );
    assert_eq!(
        Decoder::new(&bad).read_str(),
        Err(Error::InvalidUtf8 { pos: 2 })
    );
    // Chunked strings and other values give no span and consume nothing.
    for other in [
        &[b'R', 0x00, 0x01, b'a', 0x01, b'b'][..],
        &[0x90],
        b"N",
        &[],
    ] {
        let mut d = Decoder::new(other);
        assert_eq!(d.read_str_span().expect("no error"), None, "{other:02x?}");
        assert_eq!(d.position(), 0);
    }
    // A truncated string is an error and consumes nothing.
    let mut d = Decoder::new(&[0x05, b'a', b'b']);
    assert_eq!(d.read_str_span(), Err(Error::Eof));
    assert_eq!(d.position(), 0);
}

#[test]
fn i32_len_is_what_write_i32_writes() {
    // Every boundary of the four forms, and values on both sides of it.
    let edges = [
        i32::MIN,
        -0x40001,
        -0x40000,
        -0x801,
        -0x800,
        -0x11,
        -0x10,
        -1,
        0,
        0x2f,
        0x30,
        0x7ff,
        0x800,
        0x3ffff,
        0x40000,
        i32::MAX,
    ];
    for v in edges.into_iter().chain((-0x50000..0x50000).step_by(97)) {
        let written = enc(|e| {
            e.write_i32(v);
        });
        assert_eq!(i32_len(v), written.len(), "{v}");
    }
}

#[test]
fn the_ascii_check_finds_a_high_byte_wherever_it_is() {
    for len in 0..70 {
        let text = vec![b'a'; len];
        assert!(super::utf8::is_ascii(&text), "{len}");
        for at in 0..len {
            let mut bytes = text.clone();
            bytes[at] = 0x80 | (at as u8);
            assert!(!super::utf8::is_ascii(&bytes), "{len} {at}");
        }
    }
}

#[test]
fn strings_written_without_an_encoder_read_back_in_a_bytes_buffer() {
    let long = "a".repeat(0x8000 + 5);
    let texts = ["", "x-request-id", "中文", "😀 and more", long.as_str()];
    let mut buf = bytes::BytesMut::new();
    for t in texts {
        write_str(&mut buf, t);
    }
    let mut d = Decoder::new(&buf);
    for t in texts {
        assert_eq!(d.read_string().as_deref(), Ok(t));
    }
    assert!(d.is_empty());
}
