//! End-to-end tests of the `metamesh` binary against real third-party Dubbo2 peers
//! (dubbo-py and dubbo-python, see tests/peers/README.md): routing by attachment with a
//! request mutation, request-id rewriting for multiplexing clients, local replies, hostile
//! input, graceful drain, configuration validation and local heartbeats.
//!
//! Needs the peers installed once with `scripts/setup-test-deps.sh`; without them every
//! test that talks to a peer fails and says so.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::dubbo::{self, echo_of, RawClient, INTERFACE};
use common::{
    assert_all_ok, assert_errors, closed_port, endpoint_list, provider_endpoints, run_consumer,
    wait_for, Consumer, Provider, Proxy, TempFile,
};
use metamesh_core::{Message, MessageKind};
use metamesh_protocols::dubbo::{build, status};
use serde_json::Value as Json;

/// One listener `dubbo-out` on route configuration `dubbo-routes` with a default route to
/// cluster `demo` over `providers`.
fn single_cluster_config(providers: &[&Provider], listener_extra: &str) -> String {
    single_cluster_yaml(listener_extra, "", &provider_endpoints(providers))
}

/// [`single_cluster_config`] over `endpoints` (a YAML flow list), with `listener_extra`
/// lines added to the listener and `cluster_extra` lines (indented four spaces) to the
/// cluster.
fn single_cluster_yaml(listener_extra: &str, cluster_extra: &str, endpoints: &str) -> String {
    format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
{listener_extra}
routes:
  - name: dubbo-routes
    routes:
      - name: default
        route: [{{ cluster: demo }}]
clusters:
  - name: demo
{cluster_extra}    endpoints: {endpoints}
"#
    )
}

// ----------------------------------------------------------------- raw Dubbo over TCP

/// A hessian2 string of at most 1023 ASCII characters.
fn hessian_str(s: &str) -> Vec<u8> {
    assert!(s.is_ascii() && s.len() < 1024);
    let mut out = if s.len() < 32 {
        vec![s.len() as u8]
    } else {
        vec![0x30 + (s.len() >> 8) as u8, s.len() as u8]
    };
    out.extend_from_slice(s.as_bytes());
    out
}

/// A two-way `sayHello(arg)` request with attachment `req-key=key`, as a Java consumer
/// would send it.
fn say_hello(arg: &str, key: &str, id: i64) -> bytes::Bytes {
    dubbo::say_hello("2.0.2", arg, &[("req-key", key)], id)
}

fn error_text(reply: &Message) -> String {
    build::response_value(reply).expect_err("an error response")
}

fn pseudo_random_bytes(n: usize) -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ------------------------------------------------------------------------------ tests

/// 1,000 dubbo-py requests over 16 connections: every 3rd carries `batchjob=true` and
/// must reach the batchjob group with `x-tier=batch` added; the rest reach the user group
/// untouched; round robin spreads each group's share over both of its providers.
#[test]
fn batchjob_routing_with_mutation_over_16_connections() {
    common::python();
    // DEBUG makes dubbo-py's server log "got message" once per received frame: a
    // per-provider request count.
    let providers = Provider::start_all(
        &["batchjob", "batchjob", "user", "user"],
        &["--log-level", "DEBUG"],
    );
    let (batch, user) = providers.split_at(2);
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
routes:
  - name: dubbo-routes
    routes:
      - name: batchjob
        match:
          attributes:
            interface: {{ exact: {INTERFACE} }}
            batchjob: {{ exact: "true" }}
        route: [{{ cluster: demo-batchjob }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
      - name: default
        route: [{{ cluster: demo-user }}]
clusters:
  - name: demo-batchjob
    endpoints: {}
  - name: demo-user
    endpoints: {}
"#,
        provider_endpoints(&[&batch[0], &batch[1]]),
        provider_endpoints(&[&user[0], &user[1]]),
    );
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out").to_string();

    let summary = run_consumer(&[
        "--target",
        &target,
        "--count",
        "1000",
        "--connections",
        "16",
        "--batchjob-every",
        "3",
    ]);
    assert_all_ok(&summary, 1000, "16 connections");
    let groups = &summary["by_group"];
    let group = |g: &str, k: &str| groups[g][k].as_u64().unwrap_or(0);
    assert_eq!(group("batchjob", "batchjob_requests"), 333, "{summary:#}");
    assert_eq!(group("batchjob", "plain_requests"), 0, "{summary:#}");
    assert_eq!(group("user", "plain_requests"), 667, "{summary:#}");
    assert_eq!(group("user", "batchjob_requests"), 0, "{summary:#}");
    let batch_added = groups["batchjob"]["added_attachments"]
        .as_object()
        .expect("batchjob added_attachments");
    assert_eq!(
        batch_added.get("x-tier=batch").and_then(Json::as_u64),
        Some(333),
        "every batchjob request carries x-tier=batch: {summary:#}"
    );
    assert_eq!(batch_added.len(), 1, "only x-tier is added: {summary:#}");
    // Besides: every request got an x-request-id of its own.
    assert_eq!(summary["request_ids"], 1000, "{summary:#}");
    assert_eq!(summary["distinct_request_ids"], 1000, "{summary:#}");
    let user_added = groups["user"]["added_attachments"]
        .as_object()
        .expect("user added_attachments");
    assert!(
        user_added.is_empty(),
        "nothing added to user traffic: {summary:#}"
    );
    let unknown: Vec<&String> = groups
        .as_object()
        .unwrap()
        .keys()
        .filter(|g| *g != "batchjob" && *g != "user")
        .collect();
    assert!(
        unknown.is_empty(),
        "replies from unknown groups: {summary:#}"
    );

    // Round robin: both providers of each group served, and together exactly the
    // group's share.
    for (members, want) in [(batch, 333), (user, 667)] {
        let counts = wait_for(Duration::from_secs(10), "provider request logs", || {
            let c: Vec<usize> = members
                .iter()
                .map(|p| p.stderr_count("got message"))
                .collect();
            (c.iter().sum::<usize>() == want).then_some(c)
        });
        for (p, n) in members.iter().zip(&counts) {
            assert!(
                *n > want / 4,
                "provider {} of group {} served {n} of {want} requests: {counts:?}",
                p.addr(),
                p.group
            );
        }
    }

    let route = |r: &str| {
        proxy.counter(
            "metamesh_route_rq_total",
            &[("route_config", "dubbo-routes"), ("route", r)],
        )
    };
    assert_eq!(route("batchjob"), 333);
    assert_eq!(route("default"), 667);
    assert_eq!(
        proxy.counter(
            "metamesh_upstream_rq_total",
            &[("cluster", "demo-batchjob")]
        ),
        333
    );
    assert_eq!(
        proxy.counter("metamesh_upstream_rq_total", &[("cluster", "demo-user")]),
        667
    );
    assert_eq!(
        proxy.counter("metamesh_downstream_cx_total", &[("listener", "dubbo-out")]),
        16
    );
    assert_eq!(
        proxy.counter("metamesh_local_reply_total", &[("listener", "dubbo-out")]),
        0
    );
}

/// Two dubbo-python processes at once, each multiplexing 4 requests on each of its 4
/// connections and each numbering its requests from 0: the ids collide across downstream
/// connections that share one upstream connection, so the proxy must rewrite them.
#[test]
fn dubbo_python_multiplexed_with_colliding_ids() {
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let proxy = Proxy::start(&single_cluster_config(&[&providers[0]], ""), &[]);
    let target = proxy.listener("dubbo-out").to_string();
    let args = [
        "--target",
        &target,
        "--client",
        "dubbo-python",
        "--count",
        "400",
        "--connections",
        "4",
        "--inflight",
        "4",
        "--version",
        "2.4.10",
    ];
    let a = Consumer::spawn(&args);
    let b = Consumer::spawn(&args);
    let (a, b) = (a.finish(), b.finish());
    for s in [&a, &b] {
        assert_eq!(s["client"], "dubbo-python", "{s:#}");
        assert_all_ok(s, 400, "dubbo-python");
        assert_eq!(
            s["by_group"]["user"]["plain_requests"].as_u64(),
            Some(400),
            "{s:#}"
        );
    }
    assert_eq!(
        proxy.counter("metamesh_upstream_rq_total", &[("cluster", "demo")]),
        800
    );
    assert_eq!(
        proxy.counter("metamesh_downstream_cx_total", &[("listener", "dubbo-out")]),
        8
    );
}

/// No route, a refused upstream connection and a route timeout each reach real clients
/// as protocol-native error replies, and each is counted.
#[test]
fn local_replies_reach_real_clients() {
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let dead = closed_port();
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: noroute, address: 127.0.0.1:0, protocol: dubbo, route_config: strict }}
  - {{ name: refused, address: 127.0.0.1:0, protocol: dubbo, route_config: to-dead }}
  - {{ name: slow, address: 127.0.0.1:0, protocol: dubbo, route_config: short-timeout }}
routes:
  - name: strict
    routes:
      - name: tenant-only
        match:
          attributes:
            x-tenant: {{ present: true }}
        route: [{{ cluster: up }}]
  - name: to-dead
    routes:
      - name: all
        route: [{{ cluster: dead }}]
  - name: short-timeout
    routes:
      - name: all
        route: [{{ cluster: up }}]
        timeout: 200ms
clusters:
  - name: up
    endpoints: {}
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: "127.0.0.1:{dead}" }}]
"#,
        provider_endpoints(&[&providers[0]])
    );
    let proxy = Proxy::start(&yaml, &[]);
    let noroute = proxy.listener("noroute").to_string();
    let refused = proxy.listener("refused").to_string();
    let slow = proxy.listener("slow").to_string();

    // All four clients run at once.
    let no_route_py = Consumer::spawn(&["--target", &noroute, "--count", "3"]);
    let no_route_dp = Consumer::spawn(&[
        "--target",
        &noroute,
        "--count",
        "2",
        "--client",
        "dubbo-python",
    ]);
    let refused_py = Consumer::spawn(&["--target", &refused, "--count", "2"]);
    let slow_py = Consumer::spawn(&[
        "--target",
        &slow,
        "--count",
        "1",
        "--raw-attachments",
        r#"{"x-delay-ms": "2000"}"#,
    ]);
    let no_route_py = no_route_py.finish();
    let no_route_dp = no_route_dp.finish();
    let refused_py = refused_py.finish();
    let slow_py = slow_py.finish();

    assert_errors(
        &no_route_py,
        3,
        &["status 60", "no route matched the request"],
        "no route, dubbo-python",
    );
    assert_errors(
        &no_route_dp,
        2,
        &["no route matched the request"],
        "no route, dubbo-py",
    );
    assert_errors(
        &refused_py,
        2,
        &["status 80", &format!("127.0.0.1:{dead}"), "failed"],
        "connection refused",
    );
    assert_errors(
        &slow_py,
        1,
        &["status 31", "timeout after 200ms"],
        "timeout",
    );
    // The local timeout answered well before the provider's 2 s delay.
    assert!(
        slow_py["elapsed_s"].as_f64().unwrap_or(f64::MAX) < 1.5,
        "the timeout reply waited for the provider: {slow_py:#}"
    );

    let local = |listener: &str, reason: &str| {
        proxy.counter(
            "metamesh_local_reply_total",
            &[("listener", listener), ("reason", reason)],
        )
    };
    assert_eq!(local("noroute", "no_route"), 5);
    assert_eq!(local("refused", "upstream_connect_failure"), 2);
    assert_eq!(local("slow", "timeout"), 1);
    assert!(
        proxy.counter(
            "metamesh_upstream_cx_connect_fail_total",
            &[("cluster", "dead")]
        ) >= 1
    );
    assert_eq!(
        proxy.counter(
            "metamesh_upstream_rq_error_total",
            &[("cluster", "up"), ("reason", "timeout")]
        ),
        1
    );
    // Nothing reached a provider for the unrouted requests.
    assert_eq!(
        proxy.counter("metamesh_upstream_rq_total", &[("cluster", "up")]),
        1
    );
}

/// Hostile bytes, each on its own connection, while a real client runs through the same
/// listener unharmed.
#[test]
fn bad_input_is_contained_per_connection() {
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let proxy = Proxy::start(
        &single_cluster_config(&[&providers[0]], "    max_frame_size: 65536"),
        &[],
    );
    let addr = proxy.listener("dubbo-out");
    let target = addr.to_string();
    let consumer = Consumer::spawn(&["--target", &target, "--count", "3000", "--connections", "4"]);
    // Hostile traffic starts once the real client is under way.
    wait_for(
        Duration::from_secs(20),
        "the consumer's first requests",
        || {
            (proxy.counter("metamesh_downstream_rq_total", &[("listener", "dubbo-out")]) > 0)
                .then_some(())
        },
    );
    let errors = |reason: &str| {
        proxy.counter(
            "metamesh_downstream_protocol_error_total",
            &[("listener", "dubbo-out"), ("reason", reason)],
        )
    };

    // Random bytes (never starting with the magic): closed.
    let mut c = RawClient::new(addr);
    let mut junk = pseudo_random_bytes(256);
    if junk[0] == 0xda {
        junk[0] = 0;
    }
    c.write(&junk);
    c.expect_closed("random bytes");

    // A well-formed header with the wrong magic: closed, bad_magic.
    let mut c = RawClient::new(addr);
    let mut frame = build::frame(0xc2, 0, 1, b"N").to_vec();
    frame[0] = 0xca;
    frame[1] = 0xfe;
    c.write(&frame);
    c.expect_closed("wrong magic");
    proxy.wait_counter(
        "metamesh_downstream_protocol_error_total",
        &[("listener", "dubbo-out"), ("reason", "bad_magic")],
        2,
    );

    // A frame cut short, then the client's half-close: truncated_frame.
    let mut c = RawClient::new(addr);
    let whole = say_hello("never-complete", "raw-truncated", 3);
    c.write(&whole[..whole.len() - 5]);
    c.shutdown_write();
    c.expect_closed("truncated frame");
    proxy.wait_counter(
        "metamesh_downstream_protocol_error_total",
        &[("listener", "dubbo-out"), ("reason", "truncated_frame")],
        1,
    );

    // A two-way request header announcing a body over max_frame_size: a status-40 reply
    // with the same id, then the connection closes.
    let mut c = RawClient::new(addr);
    let big_id: i64 = 0x1234_5678_9abc;
    let mut head = build::frame(0xc2, 0, big_id, &[]).to_vec();
    head[12..16].copy_from_slice(&100_000u32.to_be_bytes());
    c.write(&head);
    let reply = c.read_frame("oversized frame");
    assert_eq!(reply.request_id, big_id as u64, "{reply:?}");
    assert_eq!(
        reply.status,
        Some(u32::from(status::BAD_REQUEST)),
        "{reply:?}"
    );
    assert_eq!(reply.frame[2] & 0x80, 0, "a response, not a request");
    c.expect_closed("after the oversized-frame reply");
    assert_eq!(errors("frame_too_large"), 1);

    // Arguments nested 10,000 lists deep: a status-40 reply, and the connection still
    // carries the next request to the provider.
    let mut c = RawClient::new(addr);
    let mut body = Vec::new();
    for s in ["2.0.2", INTERFACE, "1.0", "sayHello", "Ljava/lang/Object;"] {
        body.extend(hessian_str(s));
    }
    body.extend_from_slice(&[0x57; 10_000]);
    c.write(&build::frame(0xc2, 0, 7, &body));
    let reply = c.read_frame("deeply nested arguments");
    assert_eq!(reply.request_id, 7, "{reply:?}");
    assert_eq!(
        reply.status,
        Some(u32::from(status::BAD_REQUEST)),
        "{reply:?}"
    );
    let text = error_text(&reply);
    assert!(text.contains("malformed"), "{text}");
    c.write(&say_hello("after-bad", "raw-after-bad", 8));
    let reply = c.read_frame("a valid request after the malformed one");
    assert_eq!(reply.request_id, 8);
    let echo = echo_of(&reply, "a valid request after the malformed one");
    assert_eq!(echo["args"][0], "after-bad", "{echo:#}");
    assert_eq!(echo["attachments"]["req-key"], "raw-after-bad", "{echo:#}");
    assert_eq!(errors("malformed_body"), 1);

    let summary = consumer.finish();
    assert_all_ok(&summary, 3000, "the consumer beside the bad input");
    assert_eq!(errors("bad_magic"), 2);
    assert_eq!(errors("truncated_frame"), 1);
    assert_eq!(
        proxy.counter(
            "metamesh_local_reply_total",
            &[("listener", "dubbo-out"), ("reason", "bad_request")]
        ),
        2
    );
    // The proxy is still whole.
    assert_eq!(proxy.scrape("/ready"), "LIVE\n");
}

/// SIGTERM while a slow request is in flight: the reply still arrives intact, then the
/// proxy exits 0 and its ports are closed.
#[test]
fn sigterm_drains_in_flight_requests() {
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let mut proxy = Proxy::start(
        &single_cluster_config(&[&providers[0]], ""),
        &["--drain-timeout", "10s"],
    );
    let addr = proxy.listener("dubbo-out");
    let target = addr.to_string();
    let consumer = Consumer::spawn(&[
        "--target",
        &target,
        "--count",
        "1",
        "--raw-attachments",
        r#"{"x-delay-ms": "1500"}"#,
    ]);
    wait_for(
        Duration::from_secs(20),
        "the slow request in flight",
        || {
            proxy
                .scrape("/clusters")
                .contains("::rq_active::1\n")
                .then_some(())
        },
    );
    let signalled = Instant::now();
    proxy.proc.terminate();
    let summary = consumer.finish();
    assert_all_ok(&summary, 1, "the request in flight");
    let status = proxy.proc.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "proxy exit status after SIGTERM: {status}"
    );
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "the proxy exited before the in-flight request could finish"
    );
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect_err("the listener is closed after exit");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(TcpStream::connect_timeout(&proxy.admin, Duration::from_secs(2)).is_err());
}

/// `metamesh validate` names the file and the path of every bad field.
#[test]
fn validate_reports_every_bad_field() {
    let good = r#"admin: { address: 127.0.0.1:0 }
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
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
        timeout: 2s
      - name: default
        route: [{ cluster: demo-user }]
clusters:
  - name: demo-batchjob
    endpoints: [{ address: "127.0.0.1:20881" }]
  - name: demo-user
    endpoints: [{ address: "127.0.0.1:20882" }]
"#;
    let file = TempFile::new("good", good);
    let out = common::validate(&file.path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("{}: ok (", file.path.display())),
        "{stdout}"
    );

    let bad = good
        .replace(
            "address: 127.0.0.1:0\n    protocol",
            "address: localhost:20880\n    protocol",
        )
        .replace("cluster: demo-batchjob }]", "cluster: nowhere }]")
        .replace(
            "batchjob: { exact: \"true\" }",
            "batchjob: { regex: \"(\" }",
        );
    assert_ne!(bad, good);
    let file = TempFile::new("bad", &bad);
    let out = common::validate(&file.path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: invalid configuration"), "{stderr}");
    let prefix = format!("{}: ", file.path.display());
    let lines: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    for path in [
        "listeners[dubbo-out].address: ",
        "routes[dubbo-routes].routes[batchjob].route[0].cluster: ",
        "routes[dubbo-routes].routes[batchjob].match.attributes.batchjob.regex: ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(path)),
            "no line for {path:?} in:\n{stderr}"
        );
    }
    assert_eq!(lines.len(), 3, "exactly the three problems:\n{stderr}");

    // A parse error names the field too.
    let unparsable = good.replace("timeout: 2s", "timeout: soon");
    let file = TempFile::new("unparsable", &unparsable);
    let out = common::validate(&file.path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: routes[0].routes[0].timeout: ",
            file.path.display()
        )),
        "{stderr}"
    );
}

/// A dubbo-python style two-way heartbeat is answered by the proxy itself: an event
/// response, status 20, same id; no upstream is contacted.
#[test]
fn heartbeats_are_answered_locally() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let yaml = single_cluster_yaml("", "", &endpoint_list([dead]));
    let proxy = Proxy::start(&yaml, &[]);
    let mut c = RawClient::new(proxy.listener("dubbo-out"));
    // dubbo-python's first id is 0; send two heartbeats back to back.
    let mut both = build::heartbeat(0).to_vec();
    both.extend_from_slice(&build::heartbeat(4242));
    c.write(&both);
    for id in [0u64, 4242] {
        let reply = c.read_frame("heartbeat");
        assert_eq!(reply.kind, MessageKind::Heartbeat, "{reply:?}");
        assert_eq!(reply.request_id, id);
        assert_eq!(reply.status, Some(u32::from(status::OK)));
        let head = &reply.frame[..16];
        assert_eq!(&head[..2], &[0xda, 0xbb]);
        assert_eq!(head[2] & 0x80, 0, "a response: {head:02x?}");
        assert_ne!(head[2] & 0x20, 0, "an event: {head:02x?}");
        assert_eq!(head[3], 20, "status 20: {head:02x?}");
    }
    // The connection stays open and usable for more heartbeats.
    c.write(&build::heartbeat(5));
    assert_eq!(c.read_frame("third heartbeat").request_id, 5);
    assert_eq!(
        proxy.counter(
            "metamesh_downstream_heartbeat_total",
            &[("listener", "dubbo-out")]
        ),
        3
    );
    assert_eq!(
        proxy.counter("metamesh_upstream_cx_total", &[("cluster", "demo")]),
        0
    );
    assert_eq!(
        proxy.counter(
            "metamesh_upstream_cx_connect_fail_total",
            &[("cluster", "demo")]
        ),
        0
    );
    assert_eq!(
        proxy.counter("metamesh_upstream_rq_total", &[("cluster", "demo")]),
        0
    );
}

/// Active health checks of `type: heartbeat` probe a real dubbo-py provider with Dubbo
/// heartbeat events on a kept connection; a provider that stops answering is taken out
/// and a fresh one on the same port is brought back.
#[test]
fn heartbeat_health_checks_follow_a_real_provider() {
    let mut providers = Provider::start_all(&["hb"], &[]);
    let port = providers[0].port;
    let yaml = single_cluster_yaml(
        "",
        "    protocol: dubbo
    healthy_panic_threshold: 0
    health_check: { type: heartbeat, interval: 100ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }
",
        &provider_endpoints(&[&providers[0]]),
    );
    let proxy = Proxy::start(&yaml, &[]);
    let health = |proxy: &Proxy| -> String {
        let v: Json = serde_json::from_str(&proxy.scrape("/clusters?format=json")).expect("json");
        v["clusters"][0]["endpoints"][0]["health"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    };
    wait_for(
        Duration::from_secs(20),
        "three heartbeat probes answered",
        || {
            (proxy.counter(
                "metamesh_health_check_total",
                &[("cluster", "demo"), ("result", "success")],
            ) >= 3)
                .then_some(())
        },
    );
    assert_eq!(health(&proxy), "healthy");
    assert_eq!(
        proxy.counter("metamesh_upstream_cx_total", &[("cluster", "demo")]),
        0,
        "probes do not use the traffic pool"
    );

    let wait_health = |want: &str, what: &str| {
        wait_for(Duration::from_secs(20), what, || {
            (health(&proxy) == want).then_some(())
        })
    };
    let target = proxy.listener("dubbo-out").to_string();
    let consume =
        |count: &str| run_consumer(&["--target", &target, "--count", count, "--connections", "1"]);

    providers[0].proc.kill();
    wait_health("failed_health_check", "the dead provider marked unhealthy");
    assert_errors(
        &consume("3"),
        3,
        &["no healthy upstream"],
        "the provider down",
    );

    let back = Provider::start_on("hb", port, &[]);
    wait_health("healthy", "the provider back in service");
    assert_all_ok(&consume("5"), 5, "the provider back");
    drop(back);
}
