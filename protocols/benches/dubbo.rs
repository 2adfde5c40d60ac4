//! Decode → route → mutate → encode of a typical Dubbo request, the per-request work of
//! the proxy outside the sockets.

use std::sync::Arc;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use metamesh_codecs::hessian2::Value;
use metamesh_core::router::Mutation;
use metamesh_core::snapshot::ConfigStore;
use metamesh_core::stats::Stats;
use metamesh_core::{Bootstrap, CodecOptions, EncodedFrame, Protocol, Side};
use metamesh_protocols::dubbo::{build, DubboProtocol};

const CONFIG: &str = r#"
listeners:
  - { name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: dubbo-routes }
routes:
  - name: dubbo-routes
    routes:
      - name: batchjob
        match:
          attributes:
            interface: { exact: org.apache.dubbo.samples.DemoService }
            batchjob: { exact: "true" }
        route: [{ cluster: demo-batchjob }]
        request_mutation: [{ key: x-tier, value: batch }]
      - name: default
        route: [{ cluster: demo-user }]
clusters:
  - { name: demo-batchjob, endpoints: [{ address: "127.0.0.1:20881" }] }
  - { name: demo-user, endpoints: [{ address: "127.0.0.1:20882" }] }
"#;

fn request(batchjob: bool) -> bytes::Bytes {
    let mut attachments = vec![
        ("path", "org.apache.dubbo.samples.DemoService"),
        ("interface", "org.apache.dubbo.samples.DemoService"),
        ("version", "1.0.0"),
        ("group", "demo"),
        ("timeout", "3000"),
        ("remote.application", "demo-consumer"),
    ];
    if batchjob {
        attachments.push(("batchjob", "true"));
    }
    build::Request {
        dubbo_version: "2.0.2",
        interface: "org.apache.dubbo.samples.DemoService",
        version: "1.0.0",
        method: "sayHello",
        args: &[("Ljava/lang/String;", Value::from("world"))],
        attachments: &attachments,
        two_way: true,
    }
    .encode(1)
}

fn pipeline(c: &mut Criterion) {
    let protocols = metamesh_protocols::builtin();
    let bootstrap = Bootstrap::load(CONFIG, &protocols).expect("config");
    let store = ConfigStore::new(bootstrap, protocols, Arc::new(Stats::new())).expect("store");
    let dubbo = DubboProtocol;
    let mut downstream = dubbo.codec(&CodecOptions::new(Side::Downstream));
    let mut upstream = dubbo.codec(&CodecOptions::new(Side::Upstream));

    let mut group = c.benchmark_group("dubbo");
    let tracing = metamesh_core::config::Tracing::default();
    for (name, batchjob, request_id) in [
        ("route_plain_zero_copy", false, false),
        ("route_batchjob_mutated", true, false),
        ("route_plain_request_id", false, true),
        ("route_batchjob_request_id", true, true),
    ] {
        let frame = request(batchjob);
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&frame[..]);
                let mut msg = downstream.decode(&mut buf).expect("ok").expect("frame");
                if request_id {
                    metamesh_core::observe::propagate(&tracing, &mut msg);
                }
                let snapshot = store.load();
                let table = snapshot.route_table("dubbo-routes").expect("table");
                let route = table.route(&msg.metadata).expect("route");
                Mutation::apply_all(&route.request_mutation, &mut msg.metadata);
                let cluster = snapshot
                    .cluster(route.pick_cluster().expect("a destination"))
                    .expect("cluster");
                let (_, endpoint) = cluster.pick(None, None).expect("endpoint");
                let mut out = EncodedFrame::new();
                upstream.encode(&msg, 7, &mut out).expect("encode");
                black_box((endpoint.pool.address(), out.len()))
            })
        });
    }
    let frame = request(true);
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&frame[..]);
            black_box(downstream.decode(&mut buf).expect("ok").expect("frame"))
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
