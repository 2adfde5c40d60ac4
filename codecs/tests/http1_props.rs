//! Property tests of the HTTP/1.x head parser and chunked scanner: no input panics, and
//! splitting the input across reads never changes the result.

use metamesh_codecs::http1::{
    parse_request, parse_response, summarize, write_head, ChunkedScanner, HeadStart, Limits,
    RequestParser, ResponseParser, Version,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

fn field_value() -> impl Strategy<Value = String> {
    "[ -~]{0,24}".prop_map(|v| v.trim().to_owned())
}

fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((token(), field_value()), 0..12)
}

fn request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("HEAD"), Just("X-CUSTOM")],
        "/[a-zA-Z0-9/?=&%._-]{0,40}",
        any::<bool>(),
        fields(),
    )
        .prop_map(|(method, target, http11, fields)| {
            let mut out = Vec::new();
            let version = if http11 {
                Version::Http11
            } else {
                Version::Http10
            };
            write_head(
                &mut out,
                HeadStart::Request {
                    method: method.as_bytes(),
                    target: target.as_bytes(),
                    version,
                },
                fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            )
            .expect("generated heads are valid");
            out
        })
}

/// Split points: sorted positions inside `len`.
fn splits(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(len);
    points.sort_unstable();
    points
}

/// A chunked body with random chunk sizes, extensions and trailers.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        vec((1usize..300, any::<bool>()), 0..8),
        vec((token(), field_value()), 0..3),
    )
        .prop_map(|(chunks, trailers)| {
            let mut out = Vec::new();
            for (n, ext) in chunks {
                out.extend_from_slice(format!("{n:x}").as_bytes());
                if ext {
                    out.extend_from_slice(b" ;name=\"va lue\";flag");
                }
                out.extend_from_slice(b"\r\n");
                out.resize(out.len() + n, b'x');
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (k, v) in trailers {
                out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

proptest! {
    #[test]
    fn random_input_never_panics(input in vec(any::<u8>(), 0..600)) {
        let limits = Limits { max_head_bytes: 256, max_headers: 8, ..Limits::default() };
        if let Ok(Some(h)) = parse_request(&input, limits) {
            prop_assert!(h.len <= input.len());
            let _ = summarize(&h.headers, &input);
        }
        if let Ok(Some(h)) = parse_response(&input, limits) {
            prop_assert!(h.len <= input.len());
            let _ = summarize(&h.headers, &input);
        }
        let mut s = ChunkedScanner::new(&limits);
        if let Ok(Some(n)) = s.scan(&input) {
            prop_assert!(n <= input.len());
        }
    }

    #[test]
    fn mutated_heads_never_panic(head in request_head(), flips in vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut input = head;
        for (at, b) in flips {
            let i = at % input.len();
            input[i] = b;
        }
        let mut p = RequestParser::new(Limits::default());
        for n in 0..=input.len() {
            if p.parse(&input[..n]).map_or(true, |h| h.is_some()) {
                break;
            }
        }
    }

    #[test]
    fn split_heads_parse_the_same(head in request_head(), extra in vec(any::<u8>(), 0..20), cuts in vec(any::<usize>(), 0..6)) {
        let mut input = head.clone();
        input.extend_from_slice(&extra);
        let whole = parse_request(&input, Limits::default());
        let Ok(Some(expected)) = &whole else {
            return Err(TestCaseError::fail(format!("{whole:?}")));
        };
        prop_assert_eq!(expected.len, head.len());
        let mut p = RequestParser::new(Limits::default());
        let mut got = None;
        for end in splits(input.len(), &cuts) {
            if let Some(h) = p.parse(&input[..end]).expect("valid head") {
                got = Some(h);
                break;
            }
        }
        prop_assert_eq!(got.as_ref(), Some(expected));
    }

    #[test]
    fn split_malformed_heads_fail_the_same(input in vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'a'), Just(b'1'), Just(b'/'), any::<u8>()], 0..120), cuts in vec(any::<usize>(), 0..6)) {
        let limits = Limits { max_head_bytes: 100, max_headers: 4, ..Limits::default() };
        let whole = ResponseParser::new(limits).parse(&input);
        let mut p = ResponseParser::new(limits);
        let mut last = Ok(None);
        for end in splits(input.len(), &cuts) {
            last = p.parse(&input[..end]);
            if !matches!(last, Ok(None)) {
                break;
            }
        }
        prop_assert_eq!(last, whole);
    }

    #[test]
    fn split_chunked_bodies_end_the_same(body in chunked_body(), extra in vec(any::<u8>(), 0..20), cuts in vec(any::<usize>(), 0..8)) {
        let mut input = body.clone();
        input.extend_from_slice(&extra);
        prop_assert_eq!(ChunkedScanner::default().scan(&input), Ok(Some(body.len())));
        let mut s = ChunkedScanner::default();
        let mut from = 0;
        let mut end = None;
        for to in splits(input.len(), &cuts) {
            if let Some(n) = s.scan(&input[from..to]).expect("valid body") {
                end = Some(from + n);
                break;
            }
            from = to;
        }
        prop_assert_eq!(end, Some(body.len()));
    }
}
