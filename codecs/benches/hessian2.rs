//! Decoding and skipping a typical Dubbo2 request body: five strings, one argument
//! object and an attachment map of five strings.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use metamesh_codecs::hessian2::{Decoder, Encoder, MapStart, Value};

fn request_body() -> Vec<u8> {
    let mut e = Encoder::new();
    e.write_str("2.0.2")
        .write_str("com.example.DemoService")
        .write_str("1.0.0")
        .write_str("sayHello")
        .write_str("Lcom/example/User;");
    e.write_value(&Value::Object {
        class: "com.example.User".into(),
        fields: vec![
            ("id".into(), Value::Long(1_234_567)),
            ("name".into(), Value::String("Alice Example".into())),
            ("email".into(), Value::String("alice@example.com".into())),
            ("age".into(), Value::Int(30)),
        ],
    });
    e.write_map_start(None);
    for (k, v) in [
        ("path", "com.example.DemoService"),
        ("interface", "com.example.DemoService"),
        ("version", "1.0.0"),
        ("group", "blue"),
        ("batchjob", "nightly"),
    ] {
        e.write_str(k).write_str(v);
    }
    e.write_map_end();
    e.into_inner()
}

fn bench(c: &mut Criterion) {
    let body = request_body();
    let mut g = c.benchmark_group("hessian2_dubbo_request");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("read_value", |b| {
        b.iter(|| {
            let mut d = Decoder::new(black_box(&body));
            while !d.is_empty() {
                black_box(d.read_value().unwrap());
            }
        })
    });
    g.bench_function("skip_value", |b| {
        b.iter(|| {
            let mut d = Decoder::new(black_box(&body));
            while !d.is_empty() {
                d.skip_value().unwrap();
            }
        })
    });
    // What the Dubbo codec does: borrow the header strings, skip the arguments, stream
    // the attachments.
    g.bench_function("metadata_path", |b| {
        b.iter(|| {
            let mut d = Decoder::new(black_box(&body));
            let mut n = 0;
            for _ in 0..5 {
                n += d.read_str().unwrap().len();
            }
            d.skip_value().unwrap();
            if d.read_map_start().unwrap() != MapStart::Null {
                while !d.at_end_marker().unwrap() {
                    n += d.read_str().unwrap().len();
                    n += d.read_str().unwrap().len();
                }
            }
            black_box(n)
        })
    });
    g.bench_function("encode", |b| {
        let values: Vec<Value> = {
            let mut d = Decoder::new(&body);
            std::iter::from_fn(|| (!d.is_empty()).then(|| d.read_value().unwrap())).collect()
        };
        b.iter(|| {
            let mut e = Encoder::with_buffer(Vec::with_capacity(256));
            for v in &values {
                e.write_value(black_box(v));
            }
            black_box(e.into_inner())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
