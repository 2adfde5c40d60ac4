//! The control plane at scale: 1,000 Dubbo services with 10 endpoints each (10,000
//! endpoints), each with a DestinationRule of two subsets and a MetaRouter. Measures, for
//! one proxy, parsing + validation of the whole mesh, translation, encoding into xDS
//! resources, decoding them back and compiling them into a snapshot as the proxy does;
//! then the whole path over the network: an ADS server and a proxy's ADS client on
//! loopback, from connecting to the first configuration applied, and from one endpoint
//! moving to the update applied. Prints the resource counts and the process's peak memory.

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

    // Over the network: a server on 127.0.0.1 and a client whose apply compiles the
    // configuration into a snapshot, as the proxy does.
    let moved = load(&text.replacen("address: 10.0.0.1,", "address: 10.0.0.99,", 1));
    moved.validate().expect("valid");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("scale_1000_services_10000_endpoints_over_ads");
    g.sample_size(10);
    g.bench_function("first_push_to_applied", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let (took, _) = runtime.block_on(push_over_ads(&text, &node, None));
                total += took;
            }
            total
        })
    });
    g.bench_function("endpoint_change_to_applied", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let (_, update) = runtime.block_on(push_over_ads(&text, &node, Some(&moved)));
                total += update.expect("an update was timed");
            }
            total
        })
    });
    g.finish();
    let _ = black_box(mesh);
}

/// Serves the mesh of `text` on loopback and connects a client whose apply compiles each
/// configuration; returns the time from starting the client to the first configuration
/// applied, and, with `then`, from publishing `then` to its configuration applied.
async fn push_over_ads(
    text: &str,
    node: &Node,
    then: Option<&MeshResources>,
) -> (std::time::Duration, Option<std::time::Duration>) {
    use metamesh_control::ads::{AdsClient, AdsClientConfig, AdsServer};
    use metamesh_control::source::Loaded;
    use std::sync::Arc;
    let loaded = |generation, mesh| {
        Some(Arc::new(Loaded {
            generation,
            mesh,
            files: vec!["scale.yaml".into()],
        }))
    };
    let (mesh_tx, mesh_rx) = tokio::sync::watch::channel(loaded(1, load(text)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = AdsServer::with_debounce(mesh_rx, std::time::Duration::from_millis(1));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let server = server.clone();
        async move {
            let _ = server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    let (applied_tx, mut applied) = tokio::sync::mpsc::unbounded_channel();
    let protocols = metamesh_protocols::builtin();
    let store: Arc<std::sync::Mutex<Option<metamesh_core::snapshot::ConfigStore>>> = Arc::default();
    let started = std::time::Instant::now();
    let client = AdsClient::start(
        AdsClientConfig::new(format!("http://{addr}"), node.clone()),
        move |b| {
            let (protocols, store, applied_tx) =
                (protocols.clone(), store.clone(), applied_tx.clone());
            async move {
                let mut held = store.lock().unwrap_or_else(|p| p.into_inner());
                match held.as_ref() {
                    Some(s) => s.update(b).map(|_| ()).map_err(|e| e.to_string())?,
                    None => {
                        let s = metamesh_core::snapshot::ConfigStore::new(
                            b,
                            protocols,
                            Arc::new(metamesh_core::stats::Stats::new()),
                        )
                        .map_err(|e| e.to_string())?;
                        *held = Some(s);
                    }
                }
                let _ = applied_tx.send(std::time::Instant::now());
                Ok(())
            }
        },
    );
    let first = applied.recv().await.expect("first configuration") - started;
    let update = match then {
        None => None,
        Some(mesh) => {
            // Parsing is the source's work, not the push's: the moved mesh comes parsed.
            let next = loaded(2, mesh.clone());
            let published = std::time::Instant::now();
            mesh_tx.send_replace(next);
            Some(applied.recv().await.expect("the update") - published)
        }
    };
    drop(client);
    let _ = stop.send(());
    let _ = serving.await;
    (first, update)
}

criterion_group!(benches, bench);
criterion_main!(benches);
