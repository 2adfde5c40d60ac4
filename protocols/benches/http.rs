//! The per-message work of the HTTP/1.1 codec outside the sockets: decoding a curl-like
//! request head, passing it through unchanged, re-encoding it after a header mutation,
//! and scanning a chunked body.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use metamesh_codecs::http1::ChunkedScanner;
use metamesh_core::{CodecOptions, EncodedFrame, Protocol, Side};
use metamesh_protocols::http::HttpProtocol;

/// A request head as curl sends it, with a few headers a service mesh typically sees.
const HEAD: &[u8] = b"GET /api/v1/users/42?fields=name,email HTTP/1.1\r\n\
Host: users.default.svc.cluster.local:8080\r\n\
User-Agent: curl/7.88.1\r\n\
Accept: */*\r\n\
Accept-Encoding: gzip, deflate\r\n\
X-Request-Id: 5f1c2a8e-7b4d-4c1e-9a3f-2d6b8e0c4a71\r\n\
X-Tenant: acme\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\n\
\r\n";

fn chunked_body(total: usize, chunk: usize) -> Bytes {
    let mut out = Vec::with_capacity(total + total / chunk * 10 + 5);
    let mut left = total;
    while left > 0 {
        let n = chunk.min(left);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.resize(out.len() + n, b'b');
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    Bytes::from(out)
}

fn http(c: &mut Criterion) {
    let http = HttpProtocol;
    let mut downstream = http.codec(&CodecOptions::new(Side::Downstream));
    let mut upstream = http.codec(&CodecOptions::new(Side::Upstream));
    let decoded = {
        let mut buf = BytesMut::from(HEAD);
        downstream.decode(&mut buf).expect("ok").expect("head")
    };

    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_request_head", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(HEAD);
            black_box(downstream.decode(&mut buf).expect("ok").expect("head"))
        })
    });
    group.bench_function("encode_pass_through", |b| {
        b.iter(|| {
            let mut out = EncodedFrame::new();
            upstream.encode(&decoded, 1, &mut out).expect("encode");
            black_box(out.len())
        })
    });
    group.bench_function("encode_mutated_head", |b| {
        b.iter(|| {
            let mut msg = decoded.clone();
            msg.metadata.set("x-tier", "batch");
            msg.metadata.set("x-tenant", "acme-batch");
            let mut out = EncodedFrame::new();
            upstream.encode(&msg, 1, &mut out).expect("encode");
            black_box(out.len())
        })
    });
    group.bench_function("decode_mutate_encode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(HEAD);
            let mut msg = downstream.decode(&mut buf).expect("ok").expect("head");
            msg.metadata.set("x-tier", "batch");
            let mut out = EncodedFrame::new();
            upstream.encode(&msg, 1, &mut out).expect("encode");
            black_box(out.len())
        })
    });

    let body = chunked_body(1 << 20, 16 * 1024);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("scan_chunked_1mib_16k_chunks", |b| {
        b.iter(|| {
            let mut s = ChunkedScanner::default();
            black_box(s.scan(&body).expect("ok"))
        })
    });
    let small = chunked_body(1 << 20, 64);
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("scan_chunked_1mib_64b_chunks", |b| {
        b.iter(|| {
            let mut s = ChunkedScanner::default();
            black_box(s.scan(&small).expect("ok"))
        })
    });
    group.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
