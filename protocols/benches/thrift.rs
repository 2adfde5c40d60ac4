//! The per-message work of the Thrift codec: decoding requests of the common variants,
//! writing them back unchanged, with a new seqid, and with a changed THeader info header.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use metamesh_codecs::thrift::{MessageType, Protocol as Serialization, Transport};
use metamesh_core::{Codec, CodecOptions, EncodedFrame, Message, Protocol, Side};
use metamesh_protocols::thrift::build::Frame;
use metamesh_protocols::thrift::ThriftProtocol;

const FIELDS: &[(i16, &str)] = &[(1, "hello from the benchmark"), (2, "acme-tenant-0042")];
const HEADERS: &[(&str, &str)] = &[
    ("x-tenant", "acme"),
    ("x-route", "blue"),
    ("x-request-id", "6f1c2a8e-58a4-4d4b-9a59-0b9f0c2e7d11"),
];

fn request(transport: Transport, protocol: Serialization) -> Bytes {
    Frame {
        transport,
        protocol,
        strict: true,
        name: "EchoService:echo",
        message_type: MessageType::Call,
        headers: if transport == Transport::Header {
            HEADERS
        } else {
            &[]
        },
        flags: 0,
        fields: FIELDS,
    }
    .encode(7)
}

fn decode(codec: &mut dyn Codec, frame: &[u8]) -> Message {
    let mut buf = BytesMut::from(frame);
    codec.decode(&mut buf).expect("decodes").expect("a frame")
}

fn bench(c: &mut Criterion) {
    let protocol = ThriftProtocol;
    let mut down = protocol.codec(&CodecOptions::new(Side::Downstream));
    let mut up = protocol.codec(&CodecOptions::new(Side::Upstream));
    let header_binary = request(Transport::Header, Serialization::Binary);
    let framed_compact = request(Transport::Framed, Serialization::Compact);
    let unframed_binary = request(Transport::Unframed, Serialization::Binary);

    let mut g = c.benchmark_group("thrift");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("decode_theader_binary", &header_binary),
        ("decode_framed_compact", &framed_compact),
        ("decode_unframed_binary", &unframed_binary),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&frame[..]),
                |mut buf| black_box(down.decode(&mut buf).expect("ok").expect("frame")),
                BatchSize::SmallInput,
            )
        });
    }

    let theader = decode(down.as_mut(), &header_binary);
    let compact = decode(down.as_mut(), &framed_compact);
    g.bench_function("encode_pass_through", |b| {
        b.iter(|| {
            let mut out = EncodedFrame::new();
            up.encode(black_box(&theader), theader.request_id, &mut out)
                .expect("encodes");
            black_box(out)
        })
    });
    for (name, msg) in [
        ("encode_new_seqid_theader_binary", &theader),
        ("encode_new_seqid_framed_compact", &compact),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut out = EncodedFrame::new();
                up.encode(black_box(msg), 0x1234_5678, &mut out)
                    .expect("encodes");
                black_box(out)
            })
        });
    }
    let mut mutated = theader.clone();
    mutated.metadata.set("x-tier", "batch");
    g.bench_function("encode_theader_header_mutation", |b| {
        b.iter(|| {
            let mut out = EncodedFrame::new();
            up.encode(black_box(&mutated), 0x1234_5678, &mut out)
                .expect("encodes");
            black_box(out)
        })
    });
    g.bench_function("decode_mutate_encode_theader_binary", |b| {
        b.iter_batched(
            || BytesMut::from(&header_binary[..]),
            |mut buf| {
                let mut msg = down.decode(&mut buf).expect("ok").expect("frame");
                msg.metadata.set("x-tier", "batch");
                let mut out = EncodedFrame::new();
                up.encode(&msg, 0x1234_5678, &mut out).expect("encodes");
                black_box(out)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
