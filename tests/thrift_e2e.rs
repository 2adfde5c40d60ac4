//! End-to-end tests of the `metamesh` binary between real Apache Thrift peers (PyPI
//! `thrift` 0.25.0 servers and generated clients, see tests/peers/README.md): every wire
//! format (binary strict and non-strict, compact; framed, buffered, THeader) passes
//! through with seqids restored; routing by method, by THeader header and by multiplexed
//! service; request and response mutation of THeader headers; server exceptions; local
//! replies that reach the client as Thrift exceptions on a connection that stays usable;
//! THeader zlib payloads; listener protocol options.
//!
//! Needs the peers installed once with `scripts/setup-test-deps.sh`; without them every
//! test fails and says so.

mod common;

use std::time::Duration;

use common::{
    closed_port, endpoint_list, run_thrift_client, spawn_thrift_client, wait_for, Proxy,
    ThriftServer,
};
use serde_json::Value as Json;

/// `TApplicationException` types.
const UNKNOWN_METHOD: u64 = 1;
const INTERNAL_ERROR: u64 = 6;
const INVALID_TRANSFORM: u64 = 8;

/// A wire format: `--transport`, `--protocol` and `--non-strict` of both peers.
#[derive(Clone, Copy, Debug)]
struct Mode {
    transport: &'static str,
    protocol: &'static str,
    strict: bool,
}

const BINARY_FRAMED: Mode = Mode::new("framed", "binary");
const COMPACT_FRAMED: Mode = Mode::new("framed", "compact");
const BINARY_BUFFERED: Mode = Mode::new("buffered", "binary");
const COMPACT_BUFFERED: Mode = Mode::new("buffered", "compact");
const HEADER_BINARY: Mode = Mode::new("header", "binary");
const HEADER_COMPACT: Mode = Mode::new("header", "compact");
/// The old binary message header without a version (name first).
const BINARY_FRAMED_NON_STRICT: Mode = Mode {
    strict: false,
    ..BINARY_FRAMED
};

impl Mode {
    const fn new(transport: &'static str, protocol: &'static str) -> Mode {
        Mode {
            transport,
            protocol,
            strict: true,
        }
    }

    fn args(self) -> Vec<&'static str> {
        let mut v = vec!["--transport", self.transport, "--protocol", self.protocol];
        if !self.strict {
            v.push("--non-strict");
        }
        v
    }

    /// Server arguments: the mode plus `extra`.
    fn server(self, extra: &[&'static str]) -> Vec<&'static str> {
        let mut v = self.args();
        v.extend_from_slice(extra);
        v
    }

    fn is_header(self) -> bool {
        self.transport == "header"
    }
}

/// Starts servers in `mode`, one per group, each logging every call on stderr.
fn servers(mode: Mode, groups: &[&str], extra: &[&'static str]) -> Vec<ThriftServer> {
    let mut args = mode.server(extra);
    args.extend_from_slice(&["--log-level", "INFO"]);
    let specs: Vec<(&str, &[&str])> = groups.iter().map(|g| (*g, &args[..])).collect();
    ThriftServer::start_all(&specs)
}

/// An endpoint list in YAML flow style.
fn endpoints(servers: &[&ThriftServer]) -> String {
    endpoint_list(servers.iter().map(|s| s.addr()))
}

/// Runs the Thrift client against `target` in `mode` with `extra` arguments.
fn client(target: &str, mode: Mode, extra: &[&str]) -> Json {
    let mut args = vec!["--target", target];
    args.extend_from_slice(&mode.args());
    args.extend_from_slice(extra);
    run_thrift_client(&args)
}

/// The number at `path` in a client summary; 0 when absent.
fn num(v: &Json, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// sent == `sent`, ok == `ok`, and nothing went wrong on the way: no reply for another
/// call, no seqid changed, no header lost, no connection dropped.
fn assert_clean(s: &Json, sent: u64, ok: u64) {
    assert_eq!(num(s, &["sent"]), sent, "{s:#}");
    assert_eq!(num(s, &["ok"]), ok, "{s:#}");
    for key in ["mismatched", "seqid_errors", "header_errors", "reconnects"] {
        assert_eq!(num(s, &[key]), 0, "{key}: {s:#}");
    }
}

/// Sum of the counts of reported errors of `kind` (and `type`, when given).
fn errors(s: &Json, kind: &str, ty: Option<u64>) -> u64 {
    s["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| {
                    e["kind"] == kind
                        && match ty {
                            Some(t) => e["type"].as_u64() == Some(t),
                            None => true,
                        }
                })
                .map(|e| e["count"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// The messages of reported errors of `kind` and `type`.
fn error_messages(s: &Json, kind: &str, ty: u64) -> Vec<String> {
    s["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind && e["type"].as_u64() == Some(ty))
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The keys of the object at `key` of a summary.
fn keys(s: &Json, key: &str) -> Vec<String> {
    s[key]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Waits until the servers' logs together show `want` lines containing `needle`.
fn wait_server_log(servers: &[&ThriftServer], needle: &str, want: usize) {
    wait_for(
        Duration::from_secs(10),
        &format!("{want} server log lines with {needle:?}"),
        || {
            let n: usize = servers
                .iter()
                .map(|s| s.proc.stderr().matches(needle).count())
                .sum();
            (n == want).then_some(())
        },
    );
}

/// A proxy configuration with one listener `thrift-in` on route configuration
/// `thrift-routes` holding `routes` (YAML list items, indented six spaces), and one cluster
/// per `(name, servers)`.
fn config(routes: &str, clusters: &[(&str, &[&ThriftServer])]) -> String {
    config_with("", routes, clusters)
}

/// [`config`] with `listener_extra` (`, key: value` items) added to the listener.
fn config_with(
    listener_extra: &str,
    routes: &str,
    clusters: &[(&str, &[&ThriftServer])],
) -> String {
    let clusters: String = clusters
        .iter()
        .map(|(name, servers)| {
            format!(
                "  - {{ name: {name}, endpoints: {} }}\n",
                endpoints(servers)
            )
        })
        .collect();
    format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: thrift-in, address: 127.0.0.1:0, protocol: thrift, route_config: thrift-routes{listener_extra} }}
routes:
  - name: thrift-routes
    routes:
{routes}clusters:
{clusters}"#
    )
}

/// Everything to cluster `echo` over `servers`.
fn passthrough_config(servers: &[&ThriftServer]) -> String {
    config(
        "      - name: default\n        route: [{ cluster: echo }]\n",
        &[("echo", servers)],
    )
}

/// The counter of requests that took route `route` of `thrift-routes`.
fn route_count(proxy: &Proxy, route: &str) -> u64 {
    proxy.counter(
        "metamesh_route_rq_total",
        &[("route_config", "thrift-routes"), ("route", route)],
    )
}

/// Runs the client with `args` on one connection to listener `listener`, numbering its
/// calls from seqid 100: of `calls.0` calls, `calls.1` are served and every other one gets
/// a TApplicationException of type `local.0` carrying the call's seqid, which the proxy
/// counts as a local reply on that listener (of reason `local.1`, when given). Nothing is
/// mismatched and the connection is never dropped.
fn expect_local_replies(
    proxy: &Proxy,
    listener: &str,
    mode: Mode,
    args: &[&str],
    calls: (u64, u64),
    local: (u64, Option<&str>),
) -> Json {
    let target = proxy.listener(listener).to_string();
    let mut all = vec!["--connections", "1", "--seqid-start", "100"];
    all.extend_from_slice(args);
    let sum = client(&target, mode, &all);
    let what = format!("{mode:?} on {listener}");
    assert_clean(&sum, calls.0, calls.1);
    let errs = calls.0 - calls.1;
    assert_eq!(num(&sum, &["error_count"]), errs, "{what}: {sum:#}");
    assert_eq!(
        errors(&sum, "TApplicationException", Some(local.0)),
        errs,
        "{what}: {sum:#}"
    );
    assert_eq!(
        num(&sum, &["reply_types", "exception"]),
        errs,
        "{what}: {sum:#}"
    );
    let mut labels = vec![("listener", listener)];
    if let Some(reason) = local.1 {
        labels.push(("reason", reason));
    }
    assert_eq!(
        proxy.counter("metamesh_local_reply_total", &labels),
        errs,
        "{what}"
    );
    sum
}

/// Listener `thrift-in` accepted `connections` connections and answered nothing itself.
fn assert_no_local_replies(proxy: &Proxy, connections: u64) {
    let listener = [("listener", "thrift-in")];
    assert_eq!(proxy.counter("metamesh_local_reply_total", &listener), 0);
    assert_eq!(
        proxy.counter("metamesh_downstream_cx_total", &listener),
        connections
    );
}

/// One server per group in `mode`, each group a cluster of the same name, and a proxy
/// with `routes`; returns them and the listener's address.
fn two_groups(mode: Mode, groups: [&str; 2], routes: &str) -> (Vec<ThriftServer>, Proxy, String) {
    let s = servers(mode, &groups, &[]);
    let yaml = config(routes, &[(groups[0], &[&s[0]]), (groups[1], &[&s[1]])]);
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("thrift-in").to_string();
    (s, proxy, target)
}

// ------------------------------------------------------------------------------ tests

/// Two real clients at once through the proxy to two real servers: one numbering its
/// calls from 1000, one sending the library's constant seqid 0 on every call, both over 4
/// connections that the proxy multiplexes onto shared upstream connections. Oneway calls
/// in the mix get no reply (a stray frame would be taken as the next call's reply and
/// show up as a mismatch). Every call reaches exactly one server exactly once.
fn passthrough(mode: Mode) {
    common::python();
    let servers = servers(mode, &["echo", "echo"], &[]);
    let proxy = Proxy::start(&passthrough_config(&[&servers[0], &servers[1]]), &[]);
    let target = proxy.listener("thrift-in").to_string();
    let mut args = vec![
        "--target",
        &target,
        "--count",
        "200",
        "--connections",
        "4",
        "--method",
        "echo,slow,fire,echo",
    ];
    args.extend_from_slice(&mode.args());
    if mode.is_header() {
        args.extend_from_slice(&["--header", "x-tenant=acme"]);
    }
    let mut numbered = args.clone();
    numbered.extend_from_slice(&["--seqid-start", "1000"]);
    let a = spawn_thrift_client(&numbered);
    let b = spawn_thrift_client(&args);
    let (a, b) = (a.finish(), b.finish());
    for s in [&a, &b] {
        assert_clean(s, 200, 200);
        assert_eq!(num(s, &["error_count"]), 0, "{s:#}");
        // 150 echo/slow replies, 50 oneway calls without one.
        assert_eq!(num(s, &["by_group", "echo"]), 150, "{s:#}");
        assert_eq!(num(s, &["by_group_method", "echo", "echo"]), 100, "{s:#}");
        assert_eq!(num(s, &["by_group_method", "echo", "slow"]), 50, "{s:#}");
        assert_eq!(num(s, &["reply_types", "reply"]), 150, "{s:#}");
        assert_eq!(s["samples"][0]["transport"], mode.transport, "{s:#}");
        assert_eq!(s["samples"][0]["protocol"], mode.protocol, "{s:#}");
        if mode.is_header() {
            assert_eq!(num(s, &["server_headers", "x-tenant=acme"]), 150, "{s:#}");
            assert!(keys(s, "added_headers").is_empty(), "{s:#}");
            // Each request got a request id of its own on the way.
            assert_eq!(num(s, &["request_ids"]), 150, "{s:#}");
            assert_eq!(num(s, &["distinct_request_ids"]), 150, "{s:#}");
            assert_eq!(
                num(s, &["response_headers", "x-served-by-group=echo"]),
                150,
                "{s:#}"
            );
        }
    }
    let both = [&servers[0], &servers[1]];
    wait_server_log(&both, " call ", 400);
    wait_server_log(&both, "fire('m-", 100);
    for s in &servers {
        let calls = s.proc.stderr().matches(" call ").count();
        assert!(
            calls > 100,
            "round robin: server {} took {calls} of 400",
            s.addr()
        );
    }
    assert_no_local_replies(&proxy, 8);
}

#[test]
fn binary_framed_passthrough() {
    passthrough(BINARY_FRAMED);
}

#[test]
fn compact_framed_passthrough() {
    passthrough(COMPACT_FRAMED);
}

#[test]
fn binary_buffered_passthrough() {
    passthrough(BINARY_BUFFERED);
}

#[test]
fn compact_buffered_passthrough() {
    passthrough(COMPACT_BUFFERED);
}

#[test]
fn binary_framed_non_strict_passthrough() {
    passthrough(BINARY_FRAMED_NON_STRICT);
}

#[test]
fn header_binary_passthrough() {
    passthrough(HEADER_BINARY);
}

#[test]
fn header_compact_passthrough() {
    passthrough(HEADER_COMPACT);
}

/// `method: {exact: slow}` sends every slow() call to the slow group; everything else
/// takes the default route.
#[test]
fn routes_by_method() {
    common::python();
    let routes = r#"      - name: slow
        match:
          attributes:
            method: { exact: slow }
        route: [{ cluster: slowpool }]
      - name: default
        route: [{ cluster: echopool }]
"#;
    let (_servers, proxy, target) = two_groups(COMPACT_FRAMED, ["slowpool", "echopool"], routes);
    let sum = client(
        &target,
        COMPACT_FRAMED,
        &[
            "--count",
            "100",
            "--connections",
            "4",
            "--method",
            "echo,slow",
        ],
    );
    assert_clean(&sum, 100, 100);
    assert_eq!(
        num(&sum, &["by_group_method", "slowpool", "slow"]),
        50,
        "{sum:#}"
    );
    assert_eq!(
        num(&sum, &["by_group_method", "echopool", "echo"]),
        50,
        "{sum:#}"
    );
    assert_eq!(num(&sum, &["by_group", "slowpool"]), 50, "{sum:#}");
    assert_eq!(num(&sum, &["by_group", "echopool"]), 50, "{sum:#}");
    assert_eq!(route_count(&proxy, "slow"), 50);
    assert_eq!(route_count(&proxy, "default"), 50);
}

/// A THeader info header picks the group; the matching route adds a request header the
/// server sees and a response header the client sees, next to the server's own; the
/// default route changes nothing.
#[test]
fn routes_by_theader_header_with_mutations() {
    common::python();
    let routes = r#"      - name: blue
        match:
          attributes:
            x-route: { exact: blue }
        route: [{ cluster: blue }]
        request_mutation: [{ key: x-tier, value: gold }]
        response_mutation: [{ key: x-proxied-by, value: metamesh }]
      - name: default
        route: [{ cluster: green }]
"#;
    let (_servers, proxy, target) = two_groups(HEADER_BINARY, ["blue", "green"], routes);
    let sum = client(
        &target,
        HEADER_BINARY,
        &[
            "--count",
            "200",
            "--connections",
            "4",
            "--header",
            "x-tenant=acme",
            "--tag-every",
            "4",
            "--tag",
            "x-route=blue",
        ],
    );
    assert_clean(&sum, 200, 200);
    assert_eq!(num(&sum, &["by_group", "blue"]), 50, "{sum:#}");
    assert_eq!(num(&sum, &["by_group", "green"]), 150, "{sum:#}");
    assert_eq!(num(&sum, &["by_group_tagged", "blue"]), 50, "{sum:#}");
    assert_eq!(num(&sum, &["by_group_tagged", "green"]), 0, "{sum:#}");
    // Request mutation: only blue traffic carries x-tier, and nothing else was added.
    assert_eq!(num(&sum, &["added_headers", "x-tier=gold"]), 50, "{sum:#}");
    assert_eq!(keys(&sum, "added_headers"), ["x-tier=gold"], "{sum:#}");
    assert_eq!(
        num(&sum, &["server_headers", "x-tenant=acme"]),
        200,
        "{sum:#}"
    );
    // Response mutation next to the server's own headers.
    let resp = |k: &str| num(&sum, &["response_headers", k]);
    assert_eq!(resp("x-proxied-by=metamesh"), 50, "{sum:#}");
    assert_eq!(resp("x-served-by-group=blue"), 50, "{sum:#}");
    assert_eq!(resp("x-served-by-group=green"), 150, "{sum:#}");
    assert_eq!(route_count(&proxy, "blue"), 50);
    assert_eq!(route_count(&proxy, "default"), 150);
}

/// A declared exception (a REPLY with the `throws` field), an undeclared one
/// (TApplicationException INTERNAL_ERROR) and the server's own UNKNOWN_METHOD reach the
/// client as the server sent them, and the connection carries on.
fn server_exceptions(mode: Mode) {
    common::python();
    let s = servers(mode, &["errs"], &[]);
    let proxy = Proxy::start(&passthrough_config(&[&s[0]]), &[]);
    let target = proxy.listener("thrift-in").to_string();
    let sum = client(
        &target,
        mode,
        &[
            "--count",
            "8",
            "--connections",
            "1",
            "--method",
            "fail,undeclared,unknown,echo",
        ],
    );
    assert_clean(&sum, 8, 2);
    assert_eq!(num(&sum, &["error_count"]), 6, "{sum:#}");
    let declared: Vec<&Json> = sum["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "EchoError")
        .collect();
    assert_eq!(declared.len(), 1, "{sum:#}");
    assert_eq!(declared[0]["count"], 2, "{sum:#}");
    assert_eq!(declared[0]["code"], 42, "{sum:#}");
    assert_eq!(declared[0]["group"], "errs", "{sum:#}");
    assert_eq!(
        declared[0]["message"], "errs: fail() raised on purpose",
        "{sum:#}"
    );
    assert_eq!(
        error_messages(&sum, "TApplicationException", INTERNAL_ERROR),
        ["Internal error"],
        "{sum:#}"
    );
    assert_eq!(
        errors(&sum, "TApplicationException", Some(INTERNAL_ERROR)),
        2
    );
    assert_eq!(
        error_messages(&sum, "TApplicationException", UNKNOWN_METHOD),
        ["Unknown function nosuchMethod"],
        "{sum:#}"
    );
    assert_eq!(
        errors(&sum, "TApplicationException", Some(UNKNOWN_METHOD)),
        2
    );
    // Declared exceptions are REPLY messages; the other two EXCEPTION messages.
    assert_eq!(num(&sum, &["reply_types", "reply"]), 4, "{sum:#}");
    assert_eq!(num(&sum, &["reply_types", "exception"]), 4, "{sum:#}");
    assert_no_local_replies(&proxy, 1);
}

#[test]
fn server_exceptions_reach_the_client_binary_framed() {
    server_exceptions(BINARY_FRAMED);
}

#[test]
fn server_exceptions_reach_the_client_header_compact() {
    server_exceptions(HEADER_COMPACT);
}

/// In each wire format: a call no route matches gets TApplicationException
/// UNKNOWN_METHOD from the proxy, a call to a cluster nobody listens on and a call past
/// its route timeout get INTERNAL_ERROR, each in the client's own dialect; calls in
/// between on the same connection still reach the server, and the late reply to the
/// timed-out call never reaches the client.
#[test]
fn local_replies_are_thrift_exceptions_on_a_usable_connection() {
    common::python();
    let modes = [BINARY_FRAMED, COMPACT_BUFFERED, HEADER_BINARY];
    let ups: Vec<ThriftServer> = modes
        .iter()
        .flat_map(|m| servers(*m, &["up"], &[]))
        .collect();
    let dead = closed_port();
    let mut listeners = String::new();
    let mut routes = String::new();
    let mut clusters = format!(
        "  - {{ name: dead, connect_timeout: 1s, endpoints: [{{ address: \"127.0.0.1:{dead}\" }}] }}\n"
    );
    for (i, up) in ups.iter().enumerate() {
        listeners.push_str(&format!(
            "  - {{ name: strict-{i}, address: 127.0.0.1:0, protocol: thrift, route_config: strict-{i} }}\n  - {{ name: dead-{i}, address: 127.0.0.1:0, protocol: thrift, route_config: to-dead }}\n  - {{ name: slow-{i}, address: 127.0.0.1:0, protocol: thrift, route_config: short-timeout-{i} }}\n"
        ));
        routes.push_str(&format!(
            r#"  - name: strict-{i}
    routes:
      - name: only-slow
        match:
          attributes:
            method: {{ exact: slow }}
        route: [{{ cluster: up-{i} }}]
  - name: short-timeout-{i}
    routes:
      - name: all
        route: [{{ cluster: up-{i} }}]
        timeout: 1s
"#
        ));
        clusters.push_str(&format!(
            "  - {{ name: up-{i}, endpoints: {} }}\n",
            endpoints(&[up])
        ));
    }
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
{listeners}routes:
  - name: to-dead
    routes:
      - name: all
        route: [{{ cluster: dead }}]
{routes}clusters:
{clusters}"#
    );
    let proxy = Proxy::start(&yaml, &[]);

    for (i, mode) in modes.iter().enumerate() {
        // No route for echo(): UNKNOWN_METHOD; slow() in between is served.
        let sum = expect_local_replies(
            &proxy,
            &format!("strict-{i}"),
            *mode,
            &["--count", "6", "--method", "echo,slow"],
            (6, 3),
            (UNKNOWN_METHOD, Some("no_route")),
        );
        assert_eq!(num(&sum, &["by_group_method", "up", "slow"]), 3, "{sum:#}");
        // Connection refused: INTERNAL_ERROR on every call.
        expect_local_replies(
            &proxy,
            &format!("dead-{i}"),
            *mode,
            &["--count", "3"],
            (3, 0),
            (INTERNAL_ERROR, None),
        );
        // Route timeout: slow(1200) times out at 1 s. The echo sent right after it shares
        // the upstream connection, where the server answers calls one at a time: its
        // reply comes just after the late slow() reply, which must be dropped.
        let sum = expect_local_replies(
            &proxy,
            &format!("slow-{i}"),
            *mode,
            &[
                "--count",
                "4",
                "--method",
                "slow,echo",
                "--delay-ms",
                "1200",
            ],
            (4, 2),
            (INTERNAL_ERROR, Some("timeout")),
        );
        assert_eq!(num(&sum, &["by_group_method", "up", "echo"]), 2, "{sum:#}");
    }
    assert_eq!(proxy.scrape("/ready"), "LIVE\n");
}

/// Multiplexed calls (`Service:method`) are routed by `service`, and `method` is the bare
/// method name; a call without a service name matches neither route.
#[test]
fn multiplexed_calls_routed_by_service() {
    common::python();
    let a = servers(
        BINARY_FRAMED,
        &["echo-svc"],
        &["--multiplexed", "EchoService"],
    );
    let b = servers(BINARY_FRAMED, &["admin-svc"], &["--multiplexed", "Admin"]);
    let routes = r#"      - name: echo-service
        match:
          attributes:
            service: { exact: EchoService }
        route: [{ cluster: echo-svc }]
      - name: admin-slow
        match:
          attributes:
            service: { exact: Admin }
            method: { exact: slow }
        route: [{ cluster: admin-svc }]
"#;
    let yaml = config(routes, &[("echo-svc", &[&a[0]]), ("admin-svc", &[&b[0]])]);
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("thrift-in").to_string();

    let sum = client(
        &target,
        BINARY_FRAMED,
        &[
            "--service",
            "EchoService",
            "--count",
            "20",
            "--connections",
            "2",
            "--method",
            "echo,slow",
        ],
    );
    assert_clean(&sum, 20, 20);
    assert_eq!(num(&sum, &["by_group", "echo-svc"]), 20, "{sum:#}");
    assert_eq!(num(&sum, &["mux_services", "EchoService"]), 20, "{sum:#}");
    assert_eq!(
        num(&sum, &["by_group_method", "echo-svc", "echo"]),
        10,
        "{sum:#}"
    );

    // Admin:slow is routed; Admin:echo matches no route.
    let sum = expect_local_replies(
        &proxy,
        "thrift-in",
        BINARY_FRAMED,
        &[
            "--service",
            "Admin",
            "--count",
            "10",
            "--method",
            "slow,echo",
        ],
        (10, 5),
        (UNKNOWN_METHOD, Some("no_route")),
    );
    assert_eq!(
        num(&sum, &["by_group_method", "admin-svc", "slow"]),
        5,
        "{sum:#}"
    );
    assert_eq!(num(&sum, &["mux_services", "Admin"]), 5, "{sum:#}");
    assert_eq!(route_count(&proxy, "echo-service"), 20);
    assert_eq!(route_count(&proxy, "admin-slow"), 5);
    // Not multiplexed: no service, no route (the 5 before and these 2).
    let sum = client(&target, BINARY_FRAMED, &["--count", "2"]);
    assert_clean(&sum, 2, 0);
    assert_eq!(
        errors(&sum, "TApplicationException", Some(UNKNOWN_METHOD)),
        2,
        "{sum:#}"
    );
    assert_eq!(
        proxy.counter(
            "metamesh_local_reply_total",
            &[("listener", "thrift-in"), ("reason", "no_route")]
        ),
        7
    );
}

/// A THeader call whose payload is zlib-compressed cannot be read by the proxy: the client
/// gets TApplicationException INVALID_TRANSFORM for each call with its own seqid, on a
/// connection that stays open, and nothing reaches the server.
#[test]
fn theader_zlib_transform_gets_invalid_transform() {
    common::python();
    let s = servers(HEADER_BINARY, &["echo"], &[]);
    let proxy = Proxy::start(&passthrough_config(&[&s[0]]), &[]);
    let target = proxy.listener("thrift-in").to_string();
    let sum = client(
        &target,
        HEADER_BINARY,
        &[
            "--zlib",
            "--count",
            "3",
            "--seqid-start",
            "40",
            "--header",
            "x-tenant=acme",
        ],
    );
    assert_clean(&sum, 3, 0);
    assert_eq!(
        errors(&sum, "TApplicationException", Some(INVALID_TRANSFORM)),
        3,
        "{sum:#}"
    );
    // The same client without the transform is served.
    let sum = client(
        &target,
        HEADER_BINARY,
        &["--count", "3", "--header", "x-tenant=acme"],
    );
    assert_clean(&sum, 3, 3);
    wait_server_log(&[&s[0]], " call ", 3);
}

/// Listener `protocol_options` limit what it accepts: a THeader compact client is served,
/// a framed binary and a THeader binary client are disconnected at their first call.
#[test]
fn listener_protocol_options_limit_the_wire_format() {
    common::python();
    let s = servers(HEADER_COMPACT, &["echo"], &[]);
    let yaml = config_with(
        ", protocol_options: { transport: header, protocol: compact }",
        "      - name: default\n        route: [{ cluster: echo }]\n",
        &[("echo", &[&s[0]])],
    );
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("thrift-in").to_string();
    let sum = client(&target, HEADER_COMPACT, &["--count", "3"]);
    assert_clean(&sum, 3, 3);
    // A framed frame read as THeader is malformed; a THeader binary frame is well formed
    // but of the wrong protocol.
    for (mode, reason) in [
        (BINARY_FRAMED, "bad_thrift_frame"),
        (HEADER_BINARY, "unsupported_protocol"),
    ] {
        let sum = client(&target, mode, &["--count", "2"]);
        assert_eq!(num(&sum, &["ok"]), 0, "{mode:?}: {sum:#}");
        assert_eq!(num(&sum, &["reconnects"]), 2, "{mode:?}: {sum:#}");
        assert_eq!(
            num(&sum, &["error_kinds", "TTransportException"]),
            2,
            "{mode:?}: {sum:#}"
        );
        let labels = [("listener", "thrift-in"), ("reason", reason)];
        assert_eq!(
            proxy.counter("metamesh_downstream_protocol_error_total", &labels),
            2,
            "{mode:?}"
        );
    }
    wait_server_log(&[&s[0]], " call ", 3);
}
