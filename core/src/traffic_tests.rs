//! In-process tests of traffic management over real loopback sockets with the test
//! protocol: retries, per-try timeouts, circuit breakers, local rate limits, outlier
//! detection, mirroring and consistent hashing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::message::MessageKind;
use crate::proxy::Proxy;
use crate::test_peers::{metric, start, upstream, who, Client, Mode};

fn listener(routes: &str, clusters: &str, listener_extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: test, route_config: rc {listener_extra} }}
routes:
  - name: rc
    routes:
{routes}
clusters:
{clusters}
"#
    )
}

/// A cluster entry: `name`, extra settings (`key: value, ` each, or nothing) and endpoints.
fn cluster(name: &str, settings: &str, endpoints: &[SocketAddr]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "  - {{ name: {name}, {settings}endpoints: [{}] }}",
        list.join(", ")
    )
}

/// A proxy with the listener `in` (plus `listener_extra`) on `routes` and `clusters`.
async fn proxy(routes: &str, clusters: &[String], listener_extra: &str) -> Proxy {
    start(&listener(routes, &clusters.join("\n"), listener_extra)).await
}

/// A client of the listener `in`.
async fn client(proxy: &Proxy) -> Client {
    Client::connect(proxy.listener_addr("in").expect("listener")).await
}

/// An address nothing listens on.
fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint() {
    let good = upstream("good", Mode::Echo).await;
    let dead = dead_address();
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }], retry: { attempts: 2, base_interval: 1ms } }",
        &[cluster("c", "", &[dead, good.addr])],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for _ in 0..20 {
        let r = c.call(&[]).await;
        assert_eq!(who(&r), "good");
    }
    assert!(metric(&proxy, "metamesh_upstream_rq_retry_total", "cluster=\"c\"") >= 9);
}

#[tokio::test]
async fn resets_are_retried_only_on_idempotent_routes() {
    let good = upstream("good", Mode::Echo).await;
    let bad = upstream("bad", Mode::Reset).await;
    let proxy = proxy(
        r#"      - name: safe
        match: { attributes: { safe: { present: true } } }
        route: [{ cluster: c }]
        retry: { attempts: 1, idempotent: true, base_interval: 1ms }
      - { name: unsafe, route: [{ cluster: c }], retry: { attempts: 1, base_interval: 1ms } }"#,
        &[cluster("c", "", &[bad.addr, good.addr])],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for _ in 0..10 {
        assert_eq!(who(&c.call(&[("safe", "1")]).await), "good");
    }
    let mut outcomes = HashSet::new();
    for _ in 0..10 {
        outcomes.insert(who(&c.call(&[]).await));
    }
    assert!(
        outcomes.contains("local:upstream_reset"),
        "a reset after the request left is not retried without idempotent: {outcomes:?}"
    );
    assert!(outcomes.contains("good"), "{outcomes:?}");
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_another_endpoint() {
    let slow = upstream("slow", Mode::Slow(5_000)).await;
    let fast = upstream("fast", Mode::Echo).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }], timeout: 3s, retry: { attempts: 1, per_try_timeout: 100ms, idempotent: true, base_interval: 1ms } }",
        &[cluster("c", "", &[slow.addr, fast.addr])],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for _ in 0..6 {
        assert_eq!(who(&c.call(&[]).await), "fast");
    }
    assert!(slow.count() >= 2);
}

#[tokio::test]
async fn a_shorter_deadline_on_a_connection_waiting_for_a_longer_one_is_kept() {
    let echo = upstream("echo", Mode::Echo).await;
    let proxy = proxy(
        r#"      - name: short
        match: { attributes: { short: { present: true } } }
        route: [{ cluster: c }]
        timeout: 150ms
      - { name: long, route: [{ cluster: c }], timeout: 20s }"#,
        &[cluster("c", "connections_per_endpoint: 1, ", &[echo.addr])],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    // The first request sets the connection's timer for its deadline, 20 s away.
    c.send(1, &[("delay-ms", "2500")], b"ping").await;
    while echo.count() < 1 {
        tokio::task::yield_now().await;
    }
    // Each shorter one moves it earlier, and times out at its own deadline: well before
    // the upstream's answer (2.5 s), let alone the first request's deadline.
    for id in [2, 3] {
        let sent = std::time::Instant::now();
        c.send(id, &[("short", "1"), ("delay-ms", "2500")], b"ping")
            .await;
        let r = c.recv().await.expect("reply");
        assert_eq!((r.request_id, who(&r)), (id, "local:timeout".to_owned()));
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_millis(2000),
            "{waited:?}"
        );
    }
    // The first request was left waiting, and gets its answer.
    let r = c.recv().await.expect("reply");
    assert_eq!((r.request_id, who(&r)), (1, "echo".to_owned()));
    assert_eq!(
        metric(
            &proxy,
            "metamesh_upstream_rq_error_total",
            "reason=\"timeout\""
        ),
        2,
        "each timeout is counted once"
    );
}

#[tokio::test]
async fn error_status_is_retried_when_asked_and_forwarded_otherwise() {
    let failing = upstream("failing", Mode::Fail).await;
    let good = upstream("good", Mode::Echo).await;
    let proxy = proxy(
        r#"      - name: only-failing
        match: { attributes: { f: { present: true } } }
        route: [{ cluster: f }]
        retry: { attempts: 2, idempotent: true, retry_on: [error_status], base_interval: 1ms }
      - { name: r, route: [{ cluster: c }], retry: { attempts: 1, idempotent: true, retry_on: [error_status], base_interval: 1ms } }"#,
        &[
            cluster("c", "", &[failing.addr, good.addr]),
            cluster("f", "", &[failing.addr]),
        ],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for _ in 0..10 {
        let r = c.call(&[]).await;
        assert_eq!(who(&r), "good");
        assert_eq!(r.kind, MessageKind::Response);
    }
    // Every attempt fails: the last error response itself reaches the client.
    let before = failing.count();
    let r = c.call(&[("f", "1")]).await;
    assert_eq!(r.kind, MessageKind::Error);
    assert_eq!(who(&r), "failing");
    assert_eq!(failing.count() - before, 3);
}

#[tokio::test]
async fn max_requests_answers_overloaded() {
    let slow = upstream("slow", Mode::Slow(300)).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }] }",
        &[cluster(
            "c",
            "circuit_breakers: { max_requests: 1 }, ",
            &[slow.addr],
        )],
        "",
    )
    .await;
    let addr = proxy.listener_addr("in").expect("listener");
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    let first = tokio::spawn(async move { who(&a.call(&[]).await) });
    // Wait until the first request holds the only slot.
    while proxy.store().load().clusters()[0].endpoints[0]
        .pool
        .active_requests()
        == 0
    {
        tokio::task::yield_now().await;
    }
    assert_eq!(who(&b.call(&[]).await), "local:overloaded");
    assert_eq!(first.await.expect("join"), "slow");
    assert_eq!(
        metric(
            &proxy,
            "metamesh_upstream_overflow_total",
            "resource=\"requests\""
        ),
        1
    );
    assert_eq!(who(&b.call(&[]).await), "slow", "the slot is free again");
}

#[tokio::test]
async fn max_connections_and_max_retries_answer_overloaded() {
    let good = upstream("good", Mode::Echo).await;
    let dead = dead_address();
    let proxy = proxy(
        r#"      - name: retried
        match: { attributes: { retried: { present: true } } }
        route: [{ cluster: r }]
        retry: { attempts: 2, base_interval: 1ms }
      - { name: c, route: [{ cluster: c }] }"#,
        &[
            // Two shared connections per endpoint, but only one may be open.
            cluster(
                "c",
                "connections_per_endpoint: 2, circuit_breakers: { max_connections: 1 }, ",
                &[good.addr],
            ),
            cluster("r", "circuit_breakers: { max_retries: 0 }, ", &[dead]),
        ],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    // Requests take the two connection slots in turn: the first opens one, the second
    // would need another.
    assert_eq!(who(&c.call(&[]).await), "good");
    assert_eq!(who(&c.call(&[]).await), "local:overloaded");
    assert_eq!(who(&c.call(&[]).await), "good");
    assert_eq!(
        metric(
            &proxy,
            "metamesh_upstream_overflow_total",
            "resource=\"connections\""
        ),
        1
    );
    // A retry the breaker refuses leaves the first failure as the answer.
    assert_eq!(
        who(&c.call(&[("retried", "1")]).await),
        "local:upstream_connect_failure"
    );
    assert_eq!(
        metric(
            &proxy,
            "metamesh_upstream_overflow_total",
            "resource=\"retries\""
        ),
        1
    );
    assert_eq!(
        metric(&proxy, "metamesh_upstream_rq_retry_total", "cluster=\"r\""),
        0
    );
}

#[tokio::test]
async fn rate_limits_per_listener_and_per_route_with_conditions() {
    let good = upstream("good", Mode::Echo).await;
    let proxy = proxy(
        r#"      - name: limited
        match: { attributes: { tenant: { present: true } } }
        route: [{ cluster: c }]
        local_rate_limit: { max_tokens: 2, fill_interval: 1h, match: { attributes: { tenant: { exact: noisy } } } }
      - { name: r, route: [{ cluster: c }] }"#,
        &[cluster("c", "", &[good.addr])],
        ", local_rate_limit: { max_tokens: 8, fill_interval: 1h }",
    )
    .await;
    let mut c = client(&proxy).await;
    assert_eq!(who(&c.call(&[("tenant", "noisy")]).await), "good");
    assert_eq!(who(&c.call(&[("tenant", "noisy")]).await), "good");
    assert_eq!(
        who(&c.call(&[("tenant", "noisy")]).await),
        "local:rate_limited"
    );
    assert_eq!(who(&c.call(&[("tenant", "quiet")]).await), "good");
    // The listener bucket (8) counts every request, limited ones included.
    for _ in 0..4 {
        assert_eq!(who(&c.call(&[]).await), "good");
    }
    assert_eq!(who(&c.call(&[]).await), "local:rate_limited");
    assert_eq!(
        metric(
            &proxy,
            "metamesh_local_reply_total",
            "reason=\"rate_limited\""
        ),
        2
    );
}

/// Aeraki's conditions: a request takes its token from the first condition it meets and
/// from no other bucket; the rest share the listener's default bucket.
#[tokio::test]
async fn listener_conditions_take_from_the_first_bucket_that_matches() {
    let good = upstream("good", Mode::Echo).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }] }",
        &[cluster("c", "", &[good.addr])],
        ", local_rate_limit: { max_tokens: 3, fill_interval: 1h }, local_rate_limit_conditions: [{ max_tokens: 1, fill_interval: 1h, match: { attributes: { method: { exact: sayHello } } } }, { max_tokens: 2, fill_interval: 1h, match: { attributes: { tenant: { prefix: a } } } }]",
    )
    .await;
    let mut c = client(&proxy).await;
    let hello = [("method", "sayHello"), ("tenant", "acme")];
    assert_eq!(who(&c.call(&hello).await), "good");
    // The first condition is spent; matching it, the call takes no other bucket.
    assert_eq!(who(&c.call(&hello).await), "local:rate_limited");
    assert_eq!(who(&c.call(&[("tenant", "acme")]).await), "good");
    assert_eq!(who(&c.call(&[("tenant", "abc")]).await), "good");
    assert_eq!(
        who(&c.call(&[("tenant", "acme")]).await),
        "local:rate_limited"
    );
    // Requests that meet no condition share the default bucket of 3.
    for _ in 0..3 {
        assert_eq!(who(&c.call(&[("tenant", "zed")]).await), "good");
    }
    assert_eq!(who(&c.call(&[]).await), "local:rate_limited");
    assert_eq!(
        metric(
            &proxy,
            "metamesh_local_reply_total",
            "reason=\"rate_limited\""
        ),
        3
    );
}

#[tokio::test]
async fn outlier_detection_ejects_and_brings_back() {
    let failing = upstream("failing", Mode::Fail).await;
    let good = upstream("good", Mode::Echo).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }] }",
        &[cluster(
            "c",
            "outlier_detection: { consecutive_errors: 3, base_ejection_time: 300ms, max_ejection_percent: 50 }, ",
            &[failing.addr, good.addr],
        )],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    // Round robin alternates: three errors from `failing` within six requests.
    for _ in 0..6 {
        c.call(&[]).await;
    }
    assert_eq!(
        metric(&proxy, "metamesh_outlier_ejections_total", "cluster=\"c\""),
        1
    );
    let seen = failing.count();
    for _ in 0..20 {
        assert_eq!(who(&c.call(&[]).await), "good");
    }
    assert_eq!(failing.count(), seen, "ejected: no traffic");
    // The ejection ends after the base time; traffic returns.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if who(&c.call(&[]).await) == "failing" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never unejected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn max_ejection_percent_keeps_endpoints_in_service() {
    let a = upstream("a", Mode::Fail).await;
    let b = upstream("b", Mode::Fail).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }] }",
        &[cluster(
            "c",
            "outlier_detection: { consecutive_errors: 1, base_ejection_time: 1h, max_ejection_percent: 10 }, ",
            &[a.addr, b.addr],
        )],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for _ in 0..10 {
        c.call(&[]).await;
    }
    assert_eq!(
        metric(&proxy, "metamesh_outlier_ejections_total", "cluster=\"c\""),
        1,
        "one endpoint may always be ejected, never both at 10%"
    );
}

#[tokio::test]
async fn mirror_copies_a_share_with_the_mutation_and_drops_the_answer() {
    let primary = upstream("primary", Mode::Echo).await;
    let shadow = upstream("shadow", Mode::Echo).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: p }], request_mutation: [{ key: x-tier, value: gold }], mirror: { cluster: s, percentage: 50 } }",
        &[
            cluster("p", "", &[primary.addr]),
            cluster("s", "", &[shadow.addr]),
        ],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for _ in 0..2000 {
        assert_eq!(who(&c.call(&[]).await), "primary");
    }
    let sent = metric(&proxy, "metamesh_mirror_total", "result=\"sent\"");
    assert!((850..=1150).contains(&sent), "sent {sent} of 2000 at 50%");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while shadow.count() < sent as usize {
        assert!(tokio::time::Instant::now() < deadline, "copies lost");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = shadow.log.lock().expect("log");
    assert!(log
        .iter()
        .all(|h| h.get("x-tier").map(String::as_str) == Some("gold")));
}

#[tokio::test]
async fn a_stalled_shadow_neither_slows_nor_fails_the_primary() {
    let primary = upstream("primary", Mode::Echo).await;
    let shadow = upstream("shadow", Mode::Stall).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: p }], timeout: 30s, mirror: { cluster: s, percentage: 100, max_in_flight: 4 } }",
        &[
            cluster("p", "", &[primary.addr]),
            cluster("s", "", &[shadow.addr]),
        ],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    // Each copy waits up to the route timeout (30 s) for the stalled shadow: only the
    // bound on copies in flight lets the primary through at full speed.
    for _ in 0..500 {
        assert_eq!(who(&c.call(&[]).await), "primary");
    }
    assert_eq!(
        metric(&proxy, "metamesh_mirror_total", "result=\"sent\""),
        4
    );
    assert_eq!(
        metric(&proxy, "metamesh_mirror_total", "result=\"dropped\""),
        496
    );
}

#[tokio::test]
async fn hash_policy_keeps_a_key_on_one_endpoint() {
    let a = upstream("a", Mode::Echo).await;
    let b = upstream("b", Mode::Echo).await;
    let c3 = upstream("c", Mode::Echo).await;
    for policy in ["ring_hash", "maglev"] {
        let proxy = proxy(
            "      - { name: r, route: [{ cluster: c }], hash_policy: [user-id] }",
            &[cluster(
                "c",
                &format!("lb_policy: {policy}, "),
                &[a.addr, b.addr, c3.addr],
            )],
            "",
        )
        .await;
        let mut c = client(&proxy).await;
        let mut owner = HashMap::new();
        for round in 0..3 {
            for u in 0..60 {
                let user = format!("user-{u}");
                let got = who(&c.call(&[("user-id", &user)]).await);
                let first = owner.entry(user.clone()).or_insert_with(|| got.clone());
                assert_eq!(*first, got, "{policy}: {user} moved in round {round}");
            }
        }
        let spread: HashSet<_> = owner.values().collect();
        assert_eq!(spread.len(), 3, "{policy}: keys spread over every endpoint");
        proxy.shutdown(Duration::from_secs(1)).await;
    }
}

/// An upstream that accepts connections and reads nothing from them until `release` is
/// set; then it answers as [`Mode::Echo`] does.
async fn held_upstream(release: tokio::sync::watch::Receiver<bool>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let mut release = release.clone();
            tokio::spawn(async move {
                if release.wait_for(|r| *r).await.is_ok() {
                    let seen = std::sync::Arc::default();
                    let log = std::sync::Arc::default();
                    crate::test_peers::serve(s, "held", Mode::Echo, seen, log).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn requests_wait_while_an_upstream_reads_nothing_and_all_leave_once_it_reads() {
    let (release, held) = tokio::sync::watch::channel(false);
    let addr = held_upstream(held).await;
    let proxy = proxy(
        "      - { name: r, route: [{ cluster: c }], timeout: 60s }",
        &[cluster("c", "", &[addr])],
        ", max_frame_size: 2097152",
    )
    .await;
    let mut c = client(&proxy).await;
    // 32 MiB of requests: more than the kernel buffers of the upstream connection and
    // the proxy's own queue for it take, so later requests wait for room.
    const N: u64 = 32;
    const SIZE: usize = 1024 * 1024;
    for id in 1..=N {
        c.send(id, &[("user", "u")], &vec![id as u8; SIZE]).await;
    }
    let pool = proxy.store().load().clusters()[0].endpoints[0].pool.clone();
    while pool.active_requests() < N as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.send_replace(true);
    let mut answered = HashSet::new();
    for _ in 0..N {
        let r = c.recv().await.expect("reply");
        assert_eq!(who(&r), "held", "request {}", r.request_id);
        let body = crate::testing::payload(&r);
        assert_eq!(body.len(), SIZE, "request {}", r.request_id);
        assert!(body.iter().all(|b| *b == r.request_id as u8));
        answered.insert(r.request_id);
    }
    assert_eq!(answered.len() as u64, N, "every request answered once");
}

#[tokio::test]
async fn requests_to_an_upstream_that_never_reads_time_out_and_others_carry_on() {
    let stalled = upstream("stalled", Mode::Stall).await;
    let good = upstream("good", Mode::Echo).await;
    let proxy = proxy(
        r#"      - { name: stuck, match: { attributes: { stuck: { present: true } } }, route: [{ cluster: s }], timeout: 300ms }
      - { name: r, route: [{ cluster: g }] }"#,
        &[cluster("s", "", &[stalled.addr]), cluster("g", "", &[good.addr])],
        ", max_frame_size: 2097152",
    )
    .await;
    let mut c = client(&proxy).await;
    const N: u64 = 16;
    for id in 1..=N {
        c.send(id, &[("stuck", "1")], &vec![7u8; 1024 * 1024]).await;
    }
    for _ in 0..N {
        let r = c.recv().await.expect("reply");
        assert_eq!(who(&r), "local:timeout", "request {}", r.request_id);
    }
    assert_eq!(who(&c.call_id(100, &[]).await), "good");
}

#[tokio::test]
async fn a_request_times_out_on_a_connection_whose_upstream_never_stops_sending() {
    let flood = upstream("flood", Mode::Flood).await;
    let proxy = proxy(
        r#"      - { name: r, route: [{ cluster: f }], timeout: 300ms }"#,
        &[cluster("f", "", &[flood.addr])],
        ", max_frame_size: 2097152",
    )
    .await;
    let mut c = client(&proxy).await;
    c.send(1, &[], b"x").await;
    let r = tokio::time::timeout(Duration::from_secs(20), c.recv())
        .await
        .expect("answered while the upstream keeps sending")
        .expect("reply");
    assert_eq!((r.request_id, who(&r)), (1, "local:timeout".to_owned()));
}

#[tokio::test]
async fn a_request_that_cannot_be_encoded_upstream_gets_an_internal_local_reply() {
    let good = upstream("good", Mode::Echo).await;
    let proxy = proxy(
        r#"      - name: broken
        match: { attributes: { broken: { present: true } } }
        route: [{ cluster: g }]
        request_mutation: [{ key: unencodable, value: "yes" }]
      - { name: r, route: [{ cluster: g }] }"#,
        &[cluster("g", "", &[good.addr])],
        "",
    )
    .await;
    let mut c = client(&proxy).await;
    for id in 1..=3 {
        let r = c.call_id(id, &[("broken", "1")]).await;
        assert_eq!((r.request_id, who(&r)), (id, "local:internal".to_owned()));
        // The connection to the upstream carries on.
        assert_eq!(who(&c.call_id(id + 10, &[]).await), "good");
    }
    assert_eq!(good.count(), 3, "nothing of the unencodable requests left");
    assert_eq!(
        metric(&proxy, "metamesh_local_reply_total", "reason=\"internal\""),
        3
    );
}
