//! End-to-end tests of traffic management in the `metamesh` binary, against the real
//! third-party Dubbo2 peers of `tests/peers` (dubbo-py providers and consumers) and, for
//! HTTP/1.1, Debian's nginx with curl as the client: locality-aware balancing (failover to
//! the next zone and back, weighted distribution), active health checks and outlier
//! detection, retries, consistent hashing (ring hash and Maglev), traffic mirroring (to a
//! healthy, a stalled and a dead shadow), local rate limits and circuit breakers.
//!
//! Every wait is on a condition with a deadline: endpoint health is read from
//! `/clusters?format=json`, request counts from `/stats/prometheus` or from the peers.
//! Needs the peers installed once with `scripts/setup-test-deps.sh`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::dubbo::{echo_of, RawClient};
use common::nginx::{curl_within, Nginx};
use common::{
    assert_served, closed_port, endpoint_list, endpoint_of, free_ports, wait_for, Consumer,
    Provider, Proxy,
};
use metamesh_core::Message;
use metamesh_protocols::dubbo::{build, status};
use serde_json::Value as Json;

/// How long an endpoint may take to change health in `/clusters` (probes run every
/// 200 ms; the margin is for a loaded CI machine).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ helpers: config

/// The node line of a proxy running in zone bj/800002.
const NODE_IN_800002: &str =
    "node: { id: c1, cluster: demo, locality: { region: bj, zone: \"800002\", subzone: \"\" } }\n";

/// Route lines: a 10 s timeout and up to three attempts of 2 s each (the calls are idempotent).
const RETRIES: &str = "        timeout: 10s
        retry: { attempts: 3, per_try_timeout: 2s, idempotent: true }
";

/// TCP probes every 200 ms; one failure takes an endpoint out, one success brings it back.
const TCP_HEALTH_CHECK: &str = "health_check: { type: tcp, interval: 200ms, timeout: 500ms, \
                                unhealthy_threshold: 1, healthy_threshold: 1 }";

/// One listener `dubbo-out` whose default route (with `route_extra` lines) goes to the
/// round-robin cluster `demo` (with `cluster_extra` lines) over `endpoints`, a YAML flow
/// list; `head` comes first (a node line, or nothing).
fn demo_config(head: &str, route_extra: &str, cluster_extra: &str, endpoints: &str) -> String {
    format!(
        r#"{head}admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
routes:
  - name: r
    routes:
      - name: default
        route: [{{ cluster: demo }}]
{route_extra}clusters:
  - name: demo
    lb_policy: round_robin
{cluster_extra}    endpoints: {endpoints}
"#
    )
}

/// Endpoints in region `bj`, each `(address, zone)`, in YAML flow style.
fn bj_endpoints(zoned: &[(&str, &str)]) -> String {
    let list: Vec<String> = zoned
        .iter()
        .map(|(addr, zone)| {
            format!("{{ address: \"{addr}\", locality: {{ region: bj, zone: \"{zone}\" }} }}")
        })
        .collect();
    format!("[{}]", list.join(", "))
}

fn addrs(providers: &[&Provider]) -> Vec<String> {
    providers.iter().map(|p| p.addr()).collect()
}

// ---------------------------------------------------------- helpers: consumer output

/// Replies per group the providers reported.
fn served_by_group(summary: &Json) -> BTreeMap<String, u64> {
    summary["by_group"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(g, c)| {
                    let n = c["batchjob_requests"].as_u64().unwrap_or(0)
                        + c["plain_requests"].as_u64().unwrap_or(0);
                    (g.clone(), n)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn elapsed_s(summary: &Json) -> f64 {
    summary["elapsed_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("elapsed_s missing from consumer summary: {summary:#}"))
}

/// Starts a dubbo-py consumer of `count` requests over `connections` connections.
fn spawn_consumer(target: &str, count: u64, connections: u32) -> Consumer {
    Consumer::spawn(&[
        "--target",
        target,
        "--count",
        &count.to_string(),
        "--connections",
        &connections.to_string(),
    ])
}

/// Runs a dubbo-py consumer of `count` requests over `connections` connections.
fn consume(target: &str, count: u64, connections: u32) -> Json {
    spawn_consumer(target, count, connections).finish()
}

/// Polls `f` every 20 ms until it returns `Ok`; fails after `timeout` with `what` and the
/// last `Err` (the state that was still wrong).
fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {state}")
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ---------------------------------------------------------------------- 1: failover

/// Aeraki's locality demo: the proxy runs in bj/800002 and the cluster has providers in
/// its own zone and in bj/800005. Traffic stays in the own zone; when both own-zone
/// providers crash, retries and health checks move it to 800005 without a single failed
/// call; when they come back on the same ports, it returns to 800002 entirely.
#[test]
fn locality_failover_to_the_next_zone_and_back() {
    common::python();
    let local_groups = ["z800002-a", "z800002-b"];
    let ports = free_ports(2);
    // The own-zone providers, always on the same ports.
    let start_local = || -> Vec<Provider> {
        local_groups
            .iter()
            .zip(&ports)
            .map(|(g, p)| Provider::start_on(g, *p, &[]))
            .collect()
    };
    let mut local = start_local();
    let remote = Provider::start_all(&["z800005-a", "z800005-b"], &[]);
    let local_addrs = addrs(&[&local[0], &local[1]]);
    let remote_addrs = addrs(&[&remote[0], &remote[1]]);
    let cluster = format!(
        r#"    locality_lb: {{ enabled: true }}
    connect_timeout: 1s
    {TCP_HEALTH_CHECK}
    outlier_detection: {{ consecutive_errors: 5, consecutive_local_origin_failures: 1, interval: 1s, base_ejection_time: 1s, max_ejection_time: 2s, max_ejection_percent: 100 }}
"#
    );
    let endpoints = bj_endpoints(&[
        (local_addrs[0].as_str(), "800002"),
        (local_addrs[1].as_str(), "800002"),
        (remote_addrs[0].as_str(), "800005"),
        (remote_addrs[1].as_str(), "800005"),
    ]);
    let yaml = demo_config(NODE_IN_800002, RETRIES, &cluster, &endpoints);
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out").to_string();
    let assert_only_own_zone = |groups: &BTreeMap<String, u64>, summary: &Json, what: &str| {
        assert_eq!(
            groups.keys().collect::<Vec<_>>(),
            local_groups.iter().collect::<Vec<_>>(),
            "{what}: {groups:?}\n{summary:#}"
        );
    };
    let all: Vec<String> = local_addrs.iter().chain(&remote_addrs).cloned().collect();
    proxy.wait_health("demo", &all, "healthy", HEALTH_TIMEOUT);

    // Own zone first, the rest of the region next.
    let clusters = proxy.clusters_json();
    for (addr, level) in local_addrs
        .iter()
        .map(|a| (a, 0))
        .chain(remote_addrs.iter().map(|a| (a, 1)))
    {
        let e = endpoint_of(&clusters, "demo", addr)
            .unwrap_or_else(|| panic!("{addr} missing from /clusters: {clusters:#}"));
        assert_eq!(
            e["level"].as_u64(),
            Some(level),
            "{addr}: effective priority level\n{clusters:#}"
        );
    }

    // (a) Everything stays in 800002, spread over both providers there.
    let summary = consume(&target, 240, 4);
    assert_served(&summary, 240, "all providers up");
    let groups = served_by_group(&summary);
    assert_only_own_zone(
        &groups,
        &summary,
        "only the own zone serves while it is healthy",
    );
    assert!(
        groups.values().all(|n| *n >= 60),
        "round robin within the zone: {groups:?}"
    );

    // (b) Both own-zone providers crash. The next requests go out at once, before any
    // probe could have noticed: connect failures are retried on the other zone.
    for p in &mut local {
        p.proc.kill();
    }
    let summary = consume(&target, 240, 4);
    assert_served(
        &summary,
        240,
        "right after both 800002 providers were killed",
    );
    let groups = served_by_group(&summary);
    assert_eq!(groups.values().sum::<u64>(), 240, "{groups:?}\n{summary:#}");
    assert!(
        groups.keys().all(|g| g.starts_with("z800005")),
        "after the crash everything is served by 800005: {groups:?}"
    );
    // The probes see them down.
    proxy.wait_health("demo", &local_addrs, "failed_health_check", HEALTH_TIMEOUT);
    assert!(
        proxy.counter(
            "metamesh_health_check_total",
            &[("cluster", "demo"), ("result", "failure")]
        ) >= 2,
        "failed probes are counted"
    );
    let summary = consume(&target, 120, 4);
    assert_served(&summary, 120, "with 800002 known to be down");
    assert!(
        served_by_group(&summary)
            .keys()
            .all(|g| g.starts_with("z800005")),
        "{summary:#}"
    );

    // (c) The providers come back on the same ports: once the probes see them, traffic
    // returns to 800002 entirely.
    let restarted = start_local();
    proxy.wait_health("demo", &local_addrs, "healthy", HEALTH_TIMEOUT);
    let summary = consume(&target, 240, 4);
    assert_served(&summary, 240, "after the 800002 providers came back");
    let groups = served_by_group(&summary);
    assert_only_own_zone(&groups, &summary, "traffic is back in the own zone only");
    drop(restarted);
}

// -------------------------------------------------------------------- 2: distribute

/// Weighted distribution between zones (Istio's `distribute`): 90/10 over 2,000 calls.
#[test]
fn distribute_mode_splits_traffic_90_10_between_zones() {
    common::python();
    let providers = Provider::start_all(&["z800002", "z800002", "z800005", "z800005"], &[]);
    let a = addrs(&providers.iter().collect::<Vec<_>>());
    let cluster = r#"    locality_lb:
      enabled: true
      locality_weights:
        - { locality: { region: bj, zone: "800002" }, weight: 90 }
        - { locality: { region: bj, zone: "800005" }, weight: 10 }
"#;
    let endpoints = bj_endpoints(&[
        (a[0].as_str(), "800002"),
        (a[1].as_str(), "800002"),
        (a[2].as_str(), "800005"),
        (a[3].as_str(), "800005"),
    ]);
    let yaml = demo_config(NODE_IN_800002, "", cluster, &endpoints);
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out").to_string();
    let summary = consume(&target, 2000, 8);
    assert_served(&summary, 2000, "distribute 90/10");
    let groups = served_by_group(&summary);
    let near = groups.get("z800002").copied().unwrap_or(0);
    let far = groups.get("z800005").copied().unwrap_or(0);
    assert_eq!(near + far, 2000, "{groups:?}");
    let share = near as f64 * 100.0 / 2000.0;
    assert!(
        (87.0..=93.0).contains(&share),
        "800002 served {share:.1}% ({near} of 2000), want 90 ± 3: {groups:?}"
    );
    eprintln!(
        "distribute: 800002 served {near}, 800005 {far} ({share:.1}% / {:.1}%)",
        100.0 - share
    );
    // Within each locality the endpoints share the load.
    let per_endpoint: Vec<u64> = a
        .iter()
        .map(|addr| {
            proxy.counter(
                "metamesh_upstream_endpoint_rq_total",
                &[("cluster", "demo"), ("endpoint", addr)],
            )
        })
        .collect();
    assert_eq!(
        per_endpoint.iter().sum::<u64>(),
        2000,
        "per-endpoint counters {per_endpoint:?}"
    );
    assert!(
        per_endpoint.iter().all(|n| *n > 0),
        "every endpoint served: {per_endpoint:?}"
    );
}

// ------------------------------------------------------------------------ 3: mirror

/// A shadow that accepts connections and never reads or answers.
struct StalledShadow {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StalledShadow {
    fn start() -> StalledShadow {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stalled shadow");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        held.push(s);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StalledShadow {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StalledShadow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 10% of 5,000 calls are copied to a shadow provider, with the route's request mutation;
/// a stalled shadow and a dead shadow never slow down or fail the primary traffic.
#[test]
fn mirror_copies_a_share_and_never_delays_the_primary() {
    common::python();
    let primary = Provider::start_all(&["primary", "primary"], &[]);
    let shadow = Provider::start_all(&["shadow"], &["--log-requests"]);
    let stalled = StalledShadow::start();
    let dead = closed_port();
    let primary_addrs = addrs(&[&primary[0], &primary[1]]);
    let route = |name: &str, mirror: &str| {
        format!(
            r#"  - name: {name}
    routes:
      - name: default
        route: [{{ cluster: primary }}]
        request_mutation: [{{ key: x-mirror, value: copy }}]
        timeout: 5s
{mirror}"#
        )
    };
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: plain, address: 127.0.0.1:0, protocol: dubbo, route_config: plain }}
  - {{ name: sampled, address: 127.0.0.1:0, protocol: dubbo, route_config: sampled }}
  - {{ name: stalled, address: 127.0.0.1:0, protocol: dubbo, route_config: stalled }}
  - {{ name: down, address: 127.0.0.1:0, protocol: dubbo, route_config: down }}
routes:
{}{}{}{}clusters:
  - {{ name: primary, connections_per_endpoint: 2, endpoints: {} }}
  - {{ name: shadow, endpoints: [{{ address: "{}" }}] }}
  - {{ name: stalled, connect_timeout: 1s, endpoints: [{{ address: "127.0.0.1:{}" }}] }}
  - {{ name: down, connect_timeout: 1s, endpoints: [{{ address: "127.0.0.1:{dead}" }}] }}
"#,
        route("plain", ""),
        route(
            "sampled",
            "        mirror: { cluster: shadow, percentage: 10 }\n"
        ),
        route(
            "stalled",
            "        mirror: { cluster: stalled, percentage: 100, max_in_flight: 16 }\n"
        ),
        route(
            "down",
            "        mirror: { cluster: down, percentage: 100 }\n"
        ),
        endpoint_list(&primary_addrs),
        shadow[0].addr(),
        stalled.port,
    );
    let proxy = Proxy::start(&yaml, &[]);
    let mirror = |rc: &str, result: &str| {
        proxy.counter(
            "metamesh_mirror_total",
            &[
                ("route_config", rc),
                ("route", "default"),
                ("result", result),
            ],
        )
    };

    // 10% of 5,000 calls, counted where they arrive.
    const N: u64 = 5000;
    let target = proxy.listener("sampled").to_string();
    let summary = consume(&target, N, 8);
    assert_served(&summary, N, "primary traffic of the sampled mirror");
    assert_eq!(
        summary["by_group"]["primary"]["added_attachments"]["x-mirror=copy"].as_u64(),
        Some(N),
        "the primary sees the request mutation: {summary:#}"
    );
    let copies = wait_until(
        Duration::from_secs(20),
        "the shadow to have answered every copy the proxy sent",
        || {
            let seen = shadow[0].served();
            let sent = mirror("sampled", "sent");
            if sent > 0 && seen.len() as u64 == sent {
                Ok(seen)
            } else {
                Err(format!("{} copies seen, {sent} sent", seen.len()))
            }
        },
    );
    let share = copies.len() as f64 * 100.0 / N as f64;
    assert!(
        (8.5..=11.5).contains(&share),
        "the shadow received {} of {N} calls ({share:.2}%), want 10 ± 1.5",
        copies.len()
    );
    eprintln!(
        "mirror: the shadow received {} of {N} calls ({share:.2}%)",
        copies.len()
    );
    assert_eq!(
        mirror("sampled", "dropped"),
        0,
        "a healthy shadow drops nothing"
    );
    assert_eq!(
        mirror("sampled", "failed"),
        0,
        "a healthy shadow fails nothing"
    );
    let mut keys = HashSet::new();
    for c in &copies {
        let att = &c["attachments"];
        assert_eq!(
            att["x-mirror"], "copy",
            "the copy carries the request mutation: {c}"
        );
        let key = att["req-key"]
            .as_str()
            .unwrap_or_else(|| panic!("a copy without the consumer's req-key: {c}"));
        assert_eq!(
            c["args"][0].as_str(),
            Some(format!("hello-{key}").as_str()),
            "the copy is the original call: {c}"
        );
        assert!(keys.insert(key.to_owned()), "a call copied twice: {c}");
    }

    // Baseline without a mirror, then a shadow that never answers, then one that refuses
    // connections: the primary calls neither fail nor wait for the shadow.
    const M: u64 = 600;
    let run = |listener: &str| {
        let target = proxy.listener(listener).to_string();
        let summary = consume(&target, M, 8);
        assert_served(&summary, M, listener);
        elapsed_s(&summary)
    };
    let baseline = run("plain");
    let bound = baseline * 3.0 + 2.0;
    let with_stalled = run("stalled");
    assert!(
        with_stalled <= bound,
        "with a stalled shadow {M} calls took {with_stalled:.2}s, without a mirror \
         {baseline:.2}s (bound {bound:.2}s)"
    );
    assert!(
        stalled.accepted.load(Ordering::Relaxed) >= 1,
        "copies were sent to the stalled shadow"
    );
    wait_for(
        Duration::from_secs(10),
        "copies over max_in_flight to be dropped",
        || (mirror("stalled", "dropped") > 0).then_some(()),
    );
    let with_dead = run("down");
    assert!(
        with_dead <= bound,
        "with a dead shadow {M} calls took {with_dead:.2}s, without a mirror \
         {baseline:.2}s (bound {bound:.2}s)"
    );
    // Every copy was either dropped at the bound or failed: none could be delivered.
    wait_until(
        Duration::from_secs(20),
        "every copy to the dead shadow to be dropped or failed",
        || {
            let (failed, dropped) = (mirror("down", "failed"), mirror("down", "dropped"));
            if failed + dropped == M {
                Ok(())
            } else {
                Err(format!("{failed} failed + {dropped} dropped, want {M}"))
            }
        },
    );
    assert!(mirror("down", "failed") > 0, "failed copies are counted");
    eprintln!(
        "mirror: {M} calls took {baseline:.2}s without a mirror, {with_stalled:.2}s with a \
         stalled shadow ({} copies dropped), {with_dead:.2}s with a dead one ({} failed, {} \
         dropped)",
        mirror("stalled", "dropped"),
        mirror("down", "failed"),
        mirror("down", "dropped")
    );
    assert_eq!(
        proxy.counter("metamesh_local_reply_total", &[]),
        0,
        "no call got a local reply"
    );
}

// ----------------------------------------------------------------------- 4: retries

/// A provider killed under load: retries (idempotent route) and outlier detection keep
/// every one of 2,000 calls successful.
#[test]
fn retries_hide_a_provider_killed_under_load() {
    common::python();
    let mut providers = Provider::start_all(&["r1", "r2", "victim"], &[]);
    let a = addrs(&providers.iter().collect::<Vec<_>>());
    let cluster = "    connect_timeout: 1s
    outlier_detection: { consecutive_errors: 5, consecutive_local_origin_failures: 1, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100 }
";
    let yaml = demo_config("", RETRIES, cluster, &endpoint_list(&a));
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out").to_string();
    const N: u64 = 2000;
    let consumer = spawn_consumer(&target, N, 8);
    let victim = &a[2];
    wait_for(
        Duration::from_secs(30),
        "the victim to serve some calls",
        || {
            (proxy.counter(
                "metamesh_upstream_endpoint_rq_total",
                &[("cluster", "demo"), ("endpoint", victim)],
            ) >= 30)
                .then_some(())
        },
    );
    providers[2].proc.kill();
    let at_kill = proxy.counter("metamesh_upstream_rq_total", &[("cluster", "demo")]);
    let summary = consumer.finish();
    assert!(
        at_kill < N * 3 / 4,
        "the consumer was nearly done ({at_kill} of {N}) when the provider was killed: \
         the test proves nothing"
    );
    assert_served(&summary, N, "a provider killed under load");
    let groups = served_by_group(&summary);
    assert_eq!(groups.values().sum::<u64>(), N, "{groups:?}");
    let retries = proxy.counter("metamesh_upstream_rq_retry_total", &[("cluster", "demo")]);
    assert!(retries > 0, "no retry was counted; groups {groups:?}");
    assert!(
        proxy.counter("metamesh_outlier_ejections_total", &[("cluster", "demo")]) >= 1,
        "the dead provider is ejected"
    );
    let clusters = proxy.clusters_json();
    let health = endpoint_of(&clusters, "demo", victim).map(|e| e["health"].clone());
    assert_eq!(
        health,
        Some(Json::from("ejected")),
        "the killed provider is ejected\n{clusters:#}"
    );
    eprintln!("killed at {at_kill} upstream requests; {retries} retries; served {groups:?}");
}

// -------------------------------------------------------------- 5: consistent hash

/// Sends one call per user (attachment `user-id`), pipelined on one connection, and
/// returns the port of the provider that answered each.
fn route_users(addr: SocketAddr, users: &[String]) -> Vec<u16> {
    let mut c = RawClient::new(addr);
    let mut ports = Vec::with_capacity(users.len());
    for batch in users.chunks(50) {
        let mut ids = HashMap::new();
        for (k, u) in batch.iter().enumerate() {
            let id = c.send(&format!("hash-{u}"), &[("user-id", u)]);
            ids.insert(id, k);
        }
        let mut got = vec![0u16; batch.len()];
        for _ in batch {
            let reply = c.read_frame("hashed call");
            let k = ids
                .remove(&reply.request_id)
                .unwrap_or_else(|| panic!("reply with an unknown id {}", reply.request_id));
            let echo = echo_of(&reply, &batch[k]);
            assert_eq!(
                echo["attachments"]["user-id"], batch[k],
                "reply to another user: {echo}"
            );
            got[k] = echo["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("no port in {echo}"));
        }
        ports.extend(got);
    }
    ports
}

/// Ring hash and Maglev on `user-id`: a user always reaches the same provider; when one
/// provider goes down only its users move, about a quarter of them.
#[test]
fn consistent_hashing_keeps_users_on_their_provider() {
    common::python();
    let mut providers = Provider::start_all(&["h1", "h2", "h3", "h4"], &[]);
    let a = addrs(&providers.iter().collect::<Vec<_>>());
    let cluster = |name: &str, policy: &str| {
        format!(
            "  - name: {name}\n    lb_policy: {policy}\n    {TCP_HEALTH_CHECK}\n    endpoints: {}\n",
            endpoint_list(&a)
        )
    };
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: ring, address: 127.0.0.1:0, protocol: dubbo, route_config: ring }}
  - {{ name: maglev, address: 127.0.0.1:0, protocol: dubbo, route_config: maglev }}
routes:
  - name: ring
    routes:
      - {{ name: default, route: [{{ cluster: ring }}], hash_policy: [user-id], timeout: 5s }}
  - name: maglev
    routes:
      - {{ name: default, route: [{{ cluster: maglev }}], hash_policy: [user-id], timeout: 5s }}
clusters:
{}{}"#,
        cluster("ring", "ring_hash"),
        cluster("maglev", "maglev"),
    );
    let proxy = Proxy::start(&yaml, &[]);
    for c in ["ring", "maglev"] {
        proxy.wait_health(c, &a, "healthy", HEALTH_TIMEOUT);
    }
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let ports: Vec<u16> = providers.iter().map(|p| p.port).collect();

    let mut before = HashMap::new();
    for lb in ["ring", "maglev"] {
        let addr = proxy.listener(lb);
        let first = route_users(addr, &users);
        for round in 2..=3 {
            let again = route_users(addr, &users);
            let changed: Vec<&String> = users
                .iter()
                .zip(first.iter().zip(&again))
                .filter(|(_, (x, y))| x != y)
                .map(|(u, _)| u)
                .collect();
            assert!(
                changed.is_empty(),
                "{lb}: round {round} sent {} users elsewhere: {changed:?}",
                changed.len()
            );
        }
        let spread: Vec<usize> = ports
            .iter()
            .map(|p| first.iter().filter(|x| *x == p).count())
            .collect();
        assert!(
            spread.iter().all(|n| *n >= 30),
            "{lb}: users per provider {spread:?} (300 users, 4 providers)"
        );
        before.insert(lb, first);
    }

    // One provider goes down; once the probes say so, only its users move.
    let victim = providers[1].port;
    providers[1].proc.kill();
    for c in ["ring", "maglev"] {
        proxy.wait_health(c, &a[1..2], "failed_health_check", HEALTH_TIMEOUT);
    }
    // Both balancers are checked before failing, so one report covers both.
    let mut problems = Vec::new();
    for lb in ["ring", "maglev"] {
        let first = &before[lb];
        let after = route_users(proxy.listener(lb), &users);
        let to_victim = after.iter().filter(|p| **p == victim).count();
        if to_victim > 0 {
            problems.push(format!(
                "{lb}: {to_victim} calls reached the killed provider"
            ));
        }
        let owned = first.iter().filter(|p| **p == victim).count();
        let strays: Vec<(&String, u16, u16)> = users
            .iter()
            .zip(first.iter().zip(&after))
            .filter(|(_, (x, y))| **x != victim && x != y)
            .map(|(u, (x, y))| (u, *x, *y))
            .collect();
        // Maglev's table rebuild may move a handful of entries between the remaining
        // providers (about 0.05% of them for 4 -> 3 backends in a 65,537-slot table); a
        // consistent ring moves none. Either way, at most 1% of the users.
        if strays.len() > 3 {
            problems.push(format!(
                "{lb}: {} of the {} users of providers that stayed up moved (user, from, \
                 to): {strays:?}",
                strays.len(),
                users.len() - owned
            ));
        }
        let share = owned as f64 * 100.0 / users.len() as f64;
        if !(10.0..=40.0).contains(&share) {
            problems.push(format!(
                "{lb}: the killed provider had {owned} of {} users ({share:.1}%)",
                users.len()
            ));
        }
        eprintln!(
            "{lb}: {owned} users moved with the killed provider, {} others",
            strays.len()
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --------------------------------------------------- 6: rate limit, circuit breaker

/// A listener token bucket answers the 6th call locally; a route bucket with a match
/// only counts the calls it matches; a circuit breaker on in-flight requests answers the
/// overflow at once and closes again when the call in flight is done.
#[test]
fn rate_limits_and_circuit_breaker_answer_locally() {
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let up = providers[0].addr();
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: limited
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: plain
    local_rate_limit: {{ max_tokens: 5, fill_interval: 1h }}
  - {{ name: gold, address: 127.0.0.1:0, protocol: dubbo, route_config: gold }}
  - {{ name: guarded, address: 127.0.0.1:0, protocol: dubbo, route_config: guarded }}
routes:
  - name: plain
    routes:
      - {{ name: default, route: [{{ cluster: up }}] }}
  - name: gold
    routes:
      - name: default
        route: [{{ cluster: up-gold }}]
        local_rate_limit: {{ max_tokens: 2, fill_interval: 1h, match: {{ attributes: {{ tier: {{ exact: gold }} }} }} }}
  - name: guarded
    routes:
      - {{ name: default, route: [{{ cluster: guarded }}], timeout: 10s }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: up-gold, endpoints: [{{ address: "{up}" }}] }}
  - name: guarded
    circuit_breakers: {{ max_requests: 1 }}
    endpoints: [{{ address: "{up}" }}]
"#
    );
    let proxy = Proxy::start(&yaml, &[]);
    let local = |listener: &str, reason: &str| {
        proxy.counter(
            "metamesh_local_reply_total",
            &[("listener", listener), ("reason", reason)],
        )
    };
    let limited_reply = |reply: &Message, what: &str| {
        assert_eq!(
            reply.status,
            Some(u32::from(status::SERVER_THREADPOOL_EXHAUSTED)),
            "{what}: {:?}",
            build::response_value(reply)
        );
    };

    // Listener bucket of 5, refilled hourly.
    let mut c = RawClient::new(proxy.listener("limited"));
    for i in 1..=5 {
        echo_of(&c.call(&format!("call-{i}"), &[]), &format!("call {i}"));
    }
    limited_reply(&c.call("call-6", &[]), "the 6th call");
    assert_eq!(local("limited", "rate_limited"), 1);
    assert_eq!(
        proxy.counter("metamesh_upstream_rq_total", &[("cluster", "up")]),
        5,
        "the limited call never went upstream"
    );
    // The connection stays usable (and still limited).
    limited_reply(&c.call("call-7", &[]), "the 7th call");
    assert_eq!(local("limited", "rate_limited"), 2);

    // Route bucket of 2 for tier=gold only.
    let mut c = RawClient::new(proxy.listener("gold"));
    for i in 1..=6 {
        echo_of(
            &c.call(&format!("plain-{i}"), &[("tier", "silver")]),
            "unmatched call",
        );
    }
    for i in 1..=2 {
        echo_of(
            &c.call(&format!("gold-{i}"), &[("tier", "gold")]),
            "gold call",
        );
    }
    limited_reply(&c.call("gold-3", &[("tier", "gold")]), "the 3rd gold call");
    echo_of(
        &c.call("plain-7", &[("tier", "silver")]),
        "an unmatched call after the bucket ran dry",
    );
    assert_eq!(local("gold", "rate_limited"), 1);

    // Circuit breaker: one call in flight at most. The first (slow) call holds it; the
    // two behind it are refused at once.
    let mut c = RawClient::new(proxy.listener("guarded"));
    echo_of(&c.call("warm-up", &[]), "warm-up call");
    let started = Instant::now();
    let slow = c.send("slow", &[("x-delay-ms", "3000")]);
    // Sent upstream (the second request of the cluster) and not answered yet.
    wait_for(Duration::from_secs(10), "the slow call in flight", || {
        let json = proxy.clusters_json();
        (proxy.counter("metamesh_upstream_rq_total", &[("cluster", "guarded")]) == 2
            && endpoint_of(&json, "guarded", &up).is_some_and(|e| e["active_requests"] == 1))
        .then_some(())
    });
    let refused = [
        c.send("over-1", &[("x-delay-ms", "3000")]),
        c.send("over-2", &[("x-delay-ms", "3000")]),
    ];
    for _ in 0..2 {
        let reply = c.read_frame("a call over the breaker");
        assert!(
            refused.contains(&reply.request_id),
            "expected the refusals of calls {refused:?} first (max_requests: 1 with call \
             {slow} in flight), got the answer to call {} after {:?}: status {:?} {:?}",
            reply.request_id,
            started.elapsed(),
            reply.status,
            build::response_value(&reply)
        );
        limited_reply(&reply, "a call over max_requests");
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the refusals waited for the call in flight ({:?})",
        started.elapsed()
    );
    let reply = c.read_frame("the slow call");
    assert_eq!(reply.request_id, slow);
    echo_of(&reply, "the slow call");
    assert_eq!(local("guarded", "overloaded"), 2);
    assert_eq!(
        proxy.counter(
            "metamesh_upstream_overflow_total",
            &[("cluster", "guarded"), ("resource", "requests")]
        ),
        2
    );
    echo_of(&c.call("after", &[]), "a call once the breaker closed");
}

// -------------------------------------------------------------------------- 7: HTTP

/// One nginx process with a primary server (`ports[0]`) and a shadow server
/// (`ports[1]`) that logs every request it gets to `shadow.log`.
fn start_nginx() -> Nginx {
    Nginx::start("nginx-traffic", &[], 2, |ports, dir| {
        format!(
            r#"    log_format shadow '$request_method $request_uri tier=$http_x_tier';
    server {{
        listen 127.0.0.1:{p};
        keepalive_requests 10000;
        location / {{ return 200 "primary uri=$request_uri tier=$http_x_tier\n"; }}
    }}
    server {{
        listen 127.0.0.1:{s};
        keepalive_requests 10000;
        access_log {d}/shadow.log shadow;
        location / {{ return 200 "shadow\n"; }}
    }}"#,
            p = ports[0],
            s = ports[1],
            d = dir.display(),
        )
    })
}

/// The shadow server's access log lines so far.
fn shadow_log(nginx: &Nginx) -> Vec<String> {
    std::fs::read_to_string(nginx.dir().join("shadow.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// curl over one keep-alive connection to every URL; returns its output, where each
/// answer ends with a line `code=<status>`.
fn curl_all(urls: &[String]) -> String {
    let mut args = vec!["-w", "code=%{http_code}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = curl_within(Duration::from_secs(60), &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// HTTP/1.1: connect failures on one of two endpoints are retried on the other (every
/// request succeeds), and bodyless GETs are mirrored, with the request mutation, to a
/// second nginx server that logs each one.
#[test]
fn http_retries_connect_failures_and_mirrors_gets() {
    let nginx = start_nginx();
    let closed = closed_port();
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web }}
routes:
  - name: web
    routes:
      - name: mirrored
        match: {{ attributes: {{ ":path": {{ prefix: /mirror/ }} }} }}
        route: [{{ cluster: primary }}]
        request_mutation: [{{ key: x-tier, value: shadowed }}]
        mirror: {{ cluster: shadow, percentage: 100 }}
      - name: flaky
        route: [{{ cluster: flaky }}]
        retry: {{ attempts: 2 }}
clusters:
  - {{ name: primary, endpoints: [{{ address: "127.0.0.1:{p}" }}] }}
  - {{ name: shadow, endpoints: [{{ address: "127.0.0.1:{s}" }}] }}
  - name: flaky
    lb_policy: round_robin
    connect_timeout: 1s
    endpoints: [{{ address: "127.0.0.1:{closed}" }}, {{ address: "127.0.0.1:{p}" }}]
"#,
        p = nginx.ports[0],
        s = nginx.ports[1],
    );
    let proxy = Proxy::start(&yaml, &[]);
    let base = format!("http://{}", proxy.listener("web"));

    // Retries: round robin sends every other first attempt to the closed port.
    let urls: Vec<String> = (0..20).map(|i| format!("{base}/retry/{i}")).collect();
    let out = curl_all(&urls);
    let codes: Vec<&str> = out.lines().filter(|l| l.starts_with("code=")).collect();
    assert_eq!(codes, vec!["code=200"; 20], "{out}");
    for i in 0..20 {
        assert!(
            out.contains(&format!("primary uri=/retry/{i} tier=\n")),
            "no answer for /retry/{i}:\n{out}"
        );
    }
    let retries = proxy.counter("metamesh_upstream_rq_retry_total", &[("cluster", "flaky")]);
    assert!(retries >= 1, "no retry counted:\n{out}");
    eprintln!("http: 20 requests, {retries} retried after a connect failure");
    assert!(
        proxy.counter(
            "metamesh_upstream_cx_connect_fail_total",
            &[("cluster", "flaky")]
        ) >= 1,
        "the closed endpoint was tried"
    );
    assert_eq!(proxy.counter("metamesh_local_reply_total", &[]), 0);

    // Mirroring every GET.
    const N: usize = 30;
    let urls: Vec<String> = (0..N).map(|i| format!("{base}/mirror/{i}")).collect();
    let out = curl_all(&urls);
    let codes: Vec<&str> = out.lines().filter(|l| l.starts_with("code=")).collect();
    assert_eq!(codes, vec!["code=200"; N], "{out}");
    for i in 0..N {
        assert!(
            out.contains(&format!("primary uri=/mirror/{i} tier=shadowed\n")),
            "no primary answer for /mirror/{i}:\n{out}"
        );
    }
    let log = wait_for(
        Duration::from_secs(20),
        "the shadow server to log every mirrored GET",
        || {
            let log = shadow_log(&nginx);
            (log.len() >= N).then_some(log)
        },
    );
    let mut want: Vec<String> = (0..N)
        .map(|i| format!("GET /mirror/{i} tier=shadowed"))
        .collect();
    let mut got = log.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the shadow's access log");
    proxy.wait_counter(
        "metamesh_mirror_total",
        &[
            ("route_config", "web"),
            ("route", "mirrored"),
            ("result", "sent"),
        ],
        N as u64,
    );
}
