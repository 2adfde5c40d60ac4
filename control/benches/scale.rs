//! The control plane at scale: 1,000 Dubbo services with 10 endpoints each (10,000
//! endpoints), each with a DestinationRule of two subsets and a MetaRouter. Measures, for
//! one proxy, parsing + validation of the whole mesh, translation, encoding into xDS
//! resources, decoding them back and compiling them into a snapshot as the proxy does;
//! prints the resource counts and the process's peak memory.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use metamesh_control::{parse_file, xds, MeshResources};
use metamesh_core::config::{Locality, Node};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;

fn mesh_yaml() -> String {
    let mut out = String::new();
    for s in 0..SERVICES {
        let port = 20000 + s;
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{ name: svc{s}, namespace: scale, annotations: {{ interface: org.example.Service{s} }} }}\nspec:\n  hosts: [svc{s}.scale.svc]\n  ports: [{{ number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP }}]\n  endpoints:\n"
        ));
        for e in 0..ENDPOINTS {
            let group = if e % 2 == 0 { "user" } else { "batchjob" };
            let zone = if e % 3 == 0 { "800002" } else { "800005" };
            out.push_str(&format!(
                "    - {{ address: 10.{}.{}.{}, labels: {{ group: {group} }}, locality: bj/{zone} }}\n",
                s / 200,
                s % 200,
                e + 1
            ));
        }
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{ name: svc{s}, namespace: scale }}\nspec:\n  host: svc{s}.scale.svc\n  trafficPolicy: {{ outlierDetection: {{ consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s }} }}\n  subsets:\n    - {{ name: user, labels: {{ group: user }} }}\n    - {{ name: batchjob, labels: {{ group: batchjob }} }}\n---\napiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {{ name: svc{s}, namespace: scale }}\nspec:\n  hosts: [svc{s}.scale.svc]\n  routes:\n    - name: batchjob\n      match: {{ attributes: {{ batchjob: {{ exact: \"true\" }} }} }}\n      route: [{{ destination: {{ host: svc{s}.scale.svc, subset: batchjob }} }}]\n    - name: default\n      route: [{{ destination: {{ host: svc{s}.scale.svc, subset: user }} }}]\n---\n"
        ));
    }
    out
}

fn load(text: &str) -> MeshResources {
    let resources = parse_file("scale.yaml", text).expect("parses");
    MeshResources::from_resources(resources)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let text = mesh_yaml();
    let node = Node {
        id: "consumer-1".into(),
        cluster: "demo".into(),
        locality: Locality {
            region: "bj".into(),
            zone: "800002".into(),
            subzone: String::new(),
        },
        outbound_address: None,
        ..Node::default()
    };
    let before = peak_rss_kib();
    let mesh = load(&text);
    let valid = mesh.validated().expect("valid");
    let bootstrap = valid.translate(&node).expect("translates");
    let resources = xds::encode(&bootstrap).expect("encodes");
    let decoded = xds::decode(&resources, &node, None).expect("decodes");
    assert_eq!(decoded.clusters.len(), bootstrap.clusters.len());
    eprintln!(
        "scale: {} listeners, {} route configurations, {} clusters, {} endpoint resources, {} endpoints; peak RSS {} KiB -> {} KiB",
        resources.listeners.len(),
        resources.routes.len(),
        resources.clusters.len(),
        resources.endpoints.len(),
        bootstrap.clusters.iter().map(|c| c.endpoints.len()).sum::<usize>(),
        before,
        peak_rss_kib()
    );

    let mut g = c.benchmark_group("scale_1000_services_10000_endpoints");
    g.sample_size(10);
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let m = load(black_box(&text));
            m.validate().expect("valid");
            m
        })
    });
    g.bench_function("translate_one_proxy", |b| {
        b.iter(|| valid.translate(black_box(&node)).expect("translates"))
    });
    g.bench_function("encode_xds", |b| {
        b.iter(|| xds::encode(black_box(&bootstrap)).expect("encodes"))
    });
    g.bench_function("decode_xds_in_the_proxy", |b| {
        b.iter(|| xds::decode(black_box(&resources), &node, None).expect("decodes"))
    });
    let protocols = metamesh_protocols::builtin();
    g.bench_function("compile_snapshot_in_the_proxy", |b| {
        b.iter(|| {
            metamesh_core::snapshot::ConfigStore::new(
                black_box(decoded.clone()),
                protocols.clone(),
                std::sync::Arc::new(metamesh_core::stats::Stats::new()),
            )
            .expect("compiles")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
