//! A short run of the load tool (bench/): against the third-party peers, so its frames are
//! known to be right, and through `metamesh proxy` to its own echo backends, closed and
//! open loop for every protocol. It checks the tool's report, not performance: figures
//! come from bench/side-by-side.sh.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::nginx::Nginx;
use common::{Provider, Proxy, ThriftServer};
use metamesh_bench::load::{self, LoadConfig, Report};
use metamesh_bench::proto::{Protocol, ThriftTransport};
use metamesh_bench::{echo, proto};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn config(protocol: Protocol, target: SocketAddr) -> LoadConfig {
    LoadConfig {
        protocol,
        target,
        connections: 2,
        inflight: 4,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        rate: None,
        batchjob_every: 3,
        thrift_transport: ThriftTransport::Framed,
        drain: Duration::from_secs(2),
        measure_pids: Vec::new(),
    }
}

/// Every request of the window answered with success, and the percentiles in order.
fn assert_clean(r: &Report, what: &str) {
    let json = serde_json::to_string(r).expect("report serializes");
    assert!(r.sent > 0, "{what}: nothing sent: {json}");
    assert_eq!(r.errors, 0, "{what}: errors: {json}");
    assert_eq!(r.ok, r.sent, "{what}: not all answered: {json}");
    let l = &r.latency_us;
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{what}: percentiles out of order: {json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    for k in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(v["latency_us"][k].is_number(), "{what}: no {k}: {json}");
    }
}

#[test]
fn load_tool_speaks_to_third_party_peers() {
    let rt = runtime();
    let provider = Provider::ready("bench", Provider::spawn("bench", &[]));
    let thrift = ThriftServer::ready("bench", ThriftServer::spawn("bench", &[]));
    let thrift_header = ThriftServer::ready(
        "bench",
        ThriftServer::spawn("bench", &["--transport", "header"]),
    );
    let nginx = Nginx::start("bench-nginx", &[], 1, |ports, _| {
        format!(
            "server {{ listen 127.0.0.1:{}; keepalive_requests 100; \
             location / {{ return 200 \"hello\"; }} }}",
            ports[0]
        )
    });
    let addr = |s: String| s.parse::<SocketAddr>().expect("address");
    let runs = [
        (
            Protocol::Dubbo,
            ThriftTransport::Framed,
            addr(provider.addr()),
        ),
        (
            Protocol::Thrift,
            ThriftTransport::Framed,
            addr(thrift.addr()),
        ),
        (
            Protocol::Thrift,
            ThriftTransport::Header,
            addr(thrift_header.addr()),
        ),
        (
            Protocol::Http,
            ThriftTransport::Framed,
            addr(format!("127.0.0.1:{}", nginx.ports[0])),
        ),
    ];
    for (protocol, transport, target) in runs {
        let cfg = LoadConfig {
            thrift_transport: transport,
            ..config(protocol, target)
        };
        let r = rt.block_on(load::run(cfg)).expect("load run");
        assert_clean(&r, &format!("{protocol} {transport:?} against its peer"));
    }
}

fn proxy_yaml(protocol: Protocol, e1: SocketAddr, e2: SocketAddr) -> String {
    let (key, value) = match protocol {
        Protocol::Dubbo => ("batchjob", "\"true\""),
        Protocol::Thrift => ("method", proto::THRIFT_METHOD),
        Protocol::Http => ("x-batchjob", "\"true\""),
    };
    format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: bench, address: 127.0.0.1:0, protocol: {protocol}, route_config: bench }}
routes:
  - name: bench
    routes:
      - {{ name: batchjob, match: {{ attributes: {{ {key}: {{ exact: {value} }} }} }}, route: [{{ cluster: batch }}], request_mutation: [{{ key: x-tier, value: batch }}] }}
      - {{ name: default, route: [{{ cluster: user }}] }}
clusters:
  - {{ name: batch, endpoints: [{{ address: {e2} }}] }}
  - {{ name: user, endpoints: [{{ address: {e1} }}] }}
"#
    )
}

#[test]
fn load_tool_through_metamesh_closed_and_open_loop() {
    let rt = runtime();
    for protocol in [Protocol::Dubbo, Protocol::Thrift, Protocol::Http] {
        let addrs = rt
            .block_on(async {
                let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
                let bound = echo::bind(&[any, any]).await?;
                let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
                for (l, _) in bound {
                    tokio::spawn(echo::serve(l, protocol));
                }
                Ok::<_, std::io::Error>(addrs)
            })
            .expect("echo backends");
        let proxy = Proxy::start(&proxy_yaml(protocol, addrs[0], addrs[1]), &[]);
        let target = proxy.listener("bench");
        let pid = proxy.proc.pid();

        let closed = LoadConfig {
            measure_pids: vec![pid],
            ..config(protocol, target)
        };
        let r = rt.block_on(load::run(closed)).expect("closed loop");
        assert_clean(&r, &format!("{protocol} closed loop"));
        let p = r.process.as_ref().expect("process report");
        assert!(p.pids.contains(&pid) && p.peak_rss_kib > 0, "{p:?}");

        let rate = 400.0;
        let open = LoadConfig {
            rate: Some(rate),
            inflight: 64,
            ..config(protocol, target)
        };
        let r = rt.block_on(load::run(open)).expect("open loop");
        assert_clean(&r, &format!("{protocol} open loop"));
        assert_eq!(r.mode, "open");
        assert!(
            (r.send_rate - rate).abs() <= rate * 0.1,
            "{protocol}: rate {rate} asked, {} sent per second",
            r.send_rate
        );
        drop(proxy);
    }
}
