//! Observability end to end, with the `metamesh proxy` binary and real peers: curl and
//! Debian's nginx for HTTP, dubbo-py providers and consumers for Dubbo. After real
//! traffic the tests scrape `/stats/prometheus` and check that every counter moved as it
//! should, one local reply of each reason included; read the JSON access log; follow the
//! request id and the W3C trace context to the servers; and change the log level at
//! runtime through `/logging`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::dubbo::INTERFACE;
use common::nginx::{curl_i, Nginx};
use common::{
    assert_all_ok, counter, free_ports, metamesh_bin, run_consumer, scrape, wait_for, Provider,
    Proxy, TempDir,
};
use serde_json::Value as Json;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A server that accepts connections and never answers: requests to it time out.
fn silent_server() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
            if held.len() > 16 {
                break;
            }
        }
    });
    (addr, t)
}

/// Reads the access log until it has `n` lines, each a JSON object.
fn log_lines(path: &std::path::Path, n: usize) -> Vec<Json> {
    wait_for(Duration::from_secs(10), "access log lines", || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        (lines.len() >= n).then(|| {
            lines
                .iter()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}"))
                })
                .collect()
        })
    })
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// One HTTP request written by hand, the answer's status code.
fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[test]
fn http_metrics_access_log_and_trace_context_follow_real_traffic() {
    let nginx = Nginx::start("nginx-obs", &[], 1, |ports, _| {
        format!(
            r#"
    server {{
        listen 127.0.0.1:{};
        location /site/missing {{ return 404 "missing\n"; }}
        location / {{
            return 200 "rid=$http_x_request_id tp=$http_traceparent tier=$http_x_tier\n";
        }}
    }}"#,
            ports[0]
        )
    });
    let (silent, _silent) = silent_server();
    let dead = free_ports(1)[0];
    let dir = TempDir::new("obs-http");
    let log = dir.0.join("access.log");
    let web = format!("127.0.0.1:{}", nginx.ports[0]);
    let proxy = Proxy::start(
        &format!(
            r#"admin: {{ address: 127.0.0.1:0 }}
access_log: {{ path: {log}, metadata: [x-tier] }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web, hooks: [gate] }}
hooks:
  - name: gate
    script: |
      function on_request(req)
        local h = req:get("x-hook")
        if h == "reject" then req:reject("no entry") end
        if h == "error" then error("boom") end
      end
routes:
  - name: web
    routes:
      - name: limited
        match: {{ attributes: {{ ":path": {{ prefix: /limited }} }} }}
        route: [{{ cluster: web }}]
        local_rate_limit: {{ max_tokens: 1, fill_interval: 1h }}
      - name: slow
        match: {{ attributes: {{ ":path": {{ prefix: /slow }} }} }}
        route: [{{ cluster: silent }}]
        timeout: 200ms
      - name: dead
        match: {{ attributes: {{ ":path": {{ prefix: /dead }} }} }}
        route: [{{ cluster: dead }}]
      - name: empty
        match: {{ attributes: {{ ":path": {{ prefix: /empty }} }} }}
        route: [{{ cluster: empty }}]
      - name: full
        match: {{ attributes: {{ ":path": {{ prefix: /full }} }} }}
        route: [{{ cluster: full }}]
      - name: site
        match: {{ attributes: {{ ":path": {{ prefix: /site }} }} }}
        route: [{{ cluster: web }}]
        request_mutation: [{{ key: x-tier, value: gold }}]
clusters:
  - {{ name: web, endpoints: [{{ address: "{web}" }}] }}
  - {{ name: silent, endpoints: [{{ address: "{silent}" }}] }}
  - {{ name: dead, endpoints: [{{ address: "127.0.0.1:{dead}" }}] }}
  - {{ name: empty, protocol: http, endpoints: [] }}
  - name: full
    circuit_breakers: {{ max_requests: 0 }}
    endpoints: [{{ address: "{web}" }}]
"#,
            log = log.display(),
        ),
        &[],
    );
    let addr = proxy.listener("web");
    let url = |path: &str| format!("http://{addr}{path}");

    // Forwarded: a request id is made up for each, a given one is kept, and a trace
    // context gets the proxy's span.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (code, _, body) = curl_i(&url("/site/a"), &[]);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("tier=gold"), "{body}");
        let rid = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rid="))
            .unwrap_or_default()
            .to_owned();
        assert!(is_uuid(&rid), "{body}");
        ids.push(rid);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let (code, _, body) = curl_i(&url("/site/kept"), &["-H", "x-request-id: given-1"]);
    assert_eq!((code, body.contains("rid=given-1 ")), (200, true), "{body}");
    let (code, _, body) = curl_i(
        &url("/site/traced"),
        &["-H", &format!("traceparent: {PARENT}")],
    );
    assert_eq!(code, 200, "{body}");
    let tp = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tp="))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(tp.len(), 55, "{body}");
    assert_eq!(&tp[..36], &PARENT[..36], "same version and trace id: {tp}");
    assert_eq!(&tp[52..], "-01", "same flags: {tp}");
    assert_ne!(&tp[36..52], &PARENT[36..52], "a new span id: {tp}");
    let (code, _, _) = curl_i(&url("/site/missing"), &[]);
    assert_eq!(code, 404);

    // One local reply of each reason.
    let replies = [
        ("/nothing", &[][..], 404, "no_route"),
        ("/limited", &[][..], 200, ""),
        ("/limited", &[][..], 429, "rate_limited"),
        ("/slow", &[][..], 504, "timeout"),
        ("/dead", &[][..], 503, "upstream_connect_failure"),
        ("/empty", &[][..], 503, "no_healthy_upstream"),
        ("/full", &[][..], 503, "overloaded"),
        ("/site/x", &["-H", "x-hook: reject"][..], 403, "rejected"),
        ("/site/x", &["-H", "x-hook: error"][..], 500, "hook_error"),
    ];
    for (path, extra, want, reason) in replies {
        let (code, _, body) = curl_i(&url(path), extra);
        assert_eq!(code, want, "{path} {extra:?} ({reason}): {body}");
    }
    let bad = raw_status(addr, b"NOT-HTTP\x01\x02 garbage\r\n\r\n");
    assert_eq!(bad, 400);

    let text = proxy.scrape("/stats/prometheus");
    let m = |name: &str, labels: &[(&str, &str)]| counter(&text, name, labels);
    let web_l = [("listener", "web")];
    for reason in [
        "no_route",
        "rate_limited",
        "timeout",
        "upstream_connect_failure",
        "no_healthy_upstream",
        "overloaded",
        "rejected",
        "hook_error",
        "bad_request",
    ] {
        assert_eq!(
            m(
                "metamesh_local_reply_total",
                &[("listener", "web"), ("reason", reason)]
            ),
            1,
            "{reason}\n{text}"
        );
    }
    // 6 answered by nginx with 200 (3 + kept + traced + limited), one 404 from nginx;
    // local replies: 404, 429, 403 (4xx) and 504, 503 x3, 500 (5xx).
    let class = |c: &str| {
        m(
            "metamesh_downstream_response_total",
            &[("listener", "web"), ("class", c)],
        )
    };
    assert_eq!(
        (class("2xx"), class("4xx"), class("5xx")),
        (6, 4, 5),
        "{text}"
    );
    let upstream = |c: &str| {
        m(
            "metamesh_upstream_response_total",
            &[("cluster", "web"), ("class", c)],
        )
    };
    assert_eq!((upstream("2xx"), upstream("4xx")), (6, 1), "{text}");
    assert_eq!(
        m(
            "metamesh_upstream_endpoint_response_total",
            &[("cluster", "web"), ("endpoint", &web), ("class", "2xx")]
        ),
        6,
        "{text}"
    );
    assert_eq!(
        m(
            "metamesh_route_response_total",
            &[("route", "site"), ("class", "2xx")]
        ),
        5,
        "{text}"
    );
    // Every decoded request is timed; the garbage never became one.
    assert_eq!(
        m("metamesh_downstream_rq_duration_seconds_count", &web_l),
        15,
        "{text}"
    );
    assert_eq!(
        m(
            "metamesh_upstream_rq_duration_seconds_count",
            &[("cluster", "web")]
        ),
        7,
        "{text}"
    );
    // The timed-out request took at least the route's 200 ms.
    assert!(
        m(
            "metamesh_downstream_rq_duration_seconds_bucket",
            &[("listener", "web"), ("le", "0.1")]
        ) <= 14,
        "{text}"
    );
    assert!(
        m("metamesh_downstream_rx_bytes_total", &web_l) > 15 * 40,
        "{text}"
    );
    assert!(
        m("metamesh_downstream_tx_bytes_total", &web_l) > 15 * 40,
        "{text}"
    );
    assert!(
        m("metamesh_upstream_tx_bytes_total", &[("cluster", "web")]) > 7 * 40,
        "{text}"
    );
    assert!(
        m("metamesh_upstream_rx_bytes_total", &[("cluster", "web")]) > 7 * 40,
        "{text}"
    );
    assert_eq!(m("metamesh_downstream_rq_active", &web_l), 0, "{text}");
    assert_eq!(
        m("metamesh_upstream_rq_active", &[("cluster", "web")]),
        0,
        "{text}"
    );
    assert!(
        m("metamesh_upstream_cx_active", &[("cluster", "web")]) >= 1,
        "pooled: {text}"
    );
    // The hooks answer before the route match: 6 requests matched `site`.
    assert_eq!(
        m("metamesh_route_rq_total", &[("route", "site")]),
        6,
        "{text}"
    );

    // The access log: one JSON line per decoded request.
    let lines = log_lines(&log, 15);
    assert_eq!(lines.len(), 15);
    let first = &lines[0];
    assert_eq!(first["protocol"], "http", "{first}");
    assert_eq!(first["method"], "GET", "{first}");
    assert_eq!(first["path"], "/site/a", "{first}");
    assert_eq!(first["service"], addr.to_string(), "{first}");
    assert_eq!(first["route"], "site", "{first}");
    assert_eq!(first["upstream_cluster"], "web", "{first}");
    assert_eq!(first["upstream_host"], web, "{first}");
    assert_eq!(first["response_code"], 200, "{first}");
    assert_eq!(first["response_class"], "2xx", "{first}");
    assert_eq!(first["attempts"], 1, "{first}");
    assert_eq!(first["request_id"], ids[0], "{first}");
    assert_eq!(first["metadata"]["x-tier"], "gold", "{first}");
    assert!(first["bytes_sent"].as_u64().unwrap_or(0) > 0, "{first}");
    assert!(first.get("local_reply").is_none(), "{first}");
    let traced = &lines[4];
    assert_eq!(traced["trace_id"], &PARENT[3..35], "{traced}");
    assert_eq!(traced["span_id"], &tp[36..52], "{traced}");
    let slow = lines
        .iter()
        .find(|l| l["path"] == "/slow")
        .expect("the /slow line");
    assert_eq!(slow["local_reply"], "timeout", "{slow}");
    assert_eq!(slow["response_code"], 504, "{slow}");
    assert_eq!(slow["upstream_host"], silent.to_string(), "{slow}");
    assert!(
        slow["duration_ms"].as_f64().unwrap_or(0.0) >= 200.0,
        "{slow}"
    );
    let no_route = lines
        .iter()
        .find(|l| l["path"] == "/nothing")
        .expect("the /nothing line");
    assert_eq!(no_route["local_reply"], "no_route", "{no_route}");
    assert!(no_route.get("route").is_none(), "{no_route}");
    assert_eq!(
        m("metamesh_access_log_total", &[("result", "written")]),
        15,
        "{}",
        proxy.scrape("/stats/prometheus")
    );
}

/// Dubbo through the proxy: each request gets a request id, a caller's trace context
/// gets the proxy's span, the counters move per route, cluster and endpoint, and the
/// access log names interface, method, route and provider.
#[test]
fn dubbo_requests_are_counted_logged_and_traced() {
    let providers = Provider::start_all(&["user", "batchjob"], &["--log-requests"]);
    let (user, batch) = (&providers[0], &providers[1]);
    let dir = TempDir::new("obs-dubbo");
    let log = dir.0.join("access.log");
    let proxy = Proxy::start(
        &format!(
            r#"admin: {{ address: 127.0.0.1:0 }}
access_log: {{ path: {log}, metadata: [batchjob] }}
listeners:
  - {{ name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
routes:
  - name: r
    routes:
      - name: batchjob
        match: {{ attributes: {{ batchjob: {{ exact: "true" }} }} }}
        route: [{{ cluster: batch }}]
      - name: default
        route: [{{ cluster: user }}]
clusters:
  - {{ name: user, endpoints: [{{ address: "{user}" }}] }}
  - {{ name: batch, endpoints: [{{ address: "{batch}" }}] }}
"#,
            log = log.display(),
            user = user.addr(),
            batch = batch.addr(),
        ),
        &[],
    );
    let target = proxy.listener("dubbo-out").to_string();
    let raw = format!(r#"{{"traceparent": "{PARENT}"}}"#);
    let summary = run_consumer(&[
        "--target",
        &target,
        "--count",
        "90",
        "--connections",
        "3",
        "--batchjob-every",
        "3",
        "--raw-attachments",
        &raw,
    ]);
    assert_all_ok(&summary, 90, "through the proxy");
    assert_eq!(summary["request_ids"], 90, "{summary:#}");
    assert_eq!(summary["distinct_request_ids"], 90, "{summary:#}");
    assert_eq!(summary["traceparent_children"], 90, "{summary:#}");

    let text = proxy.scrape("/stats/prometheus");
    let m = |name: &str, labels: &[(&str, &str)]| counter(&text, name, labels);
    assert_eq!(
        m(
            "metamesh_downstream_response_total",
            &[("listener", "dubbo-out"), ("class", "success")]
        ),
        90,
        "{text}"
    );
    assert_eq!(
        m(
            "metamesh_upstream_response_total",
            &[("cluster", "batch"), ("class", "success")]
        ),
        30,
        "{text}"
    );
    assert_eq!(
        m(
            "metamesh_upstream_endpoint_response_total",
            &[("endpoint", &user.addr()), ("class", "success")]
        ),
        60,
        "{text}"
    );
    assert_eq!(
        m(
            "metamesh_route_response_total",
            &[("route", "batchjob"), ("class", "success")]
        ),
        30,
        "{text}"
    );
    assert_eq!(
        m(
            "metamesh_downstream_rq_duration_seconds_count",
            &[("listener", "dubbo-out")]
        ),
        90,
        "{text}"
    );
    assert_eq!(
        m("metamesh_upstream_rq_duration_seconds_count", &[]),
        90,
        "{text}"
    );

    let lines = log_lines(&log, 90);
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 90, "a request id per line");
    let batch_lines: Vec<&Json> = lines.iter().filter(|l| l["route"] == "batchjob").collect();
    assert_eq!(batch_lines.len(), 30);
    for l in &batch_lines {
        assert_eq!(l["protocol"], "dubbo", "{l}");
        assert_eq!(l["service"], INTERFACE, "{l}");
        assert_eq!(l["method"], "sayHello", "{l}");
        assert_eq!(l["upstream_host"], batch.addr(), "{l}");
        assert_eq!(l["response_class"], "success", "{l}");
        assert_eq!(l["metadata"]["batchjob"], "true", "{l}");
        assert_eq!(l["trace_id"], &PARENT[3..35], "{l}");
        assert_ne!(l["span_id"], &PARENT[36..52], "{l}");
    }
    // The providers saw the same ids the log has.
    let seen: Vec<String> = batch
        .served()
        .iter()
        .filter_map(|s| s["attachments"]["x-request-id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(seen.len(), 30);
    for id in &seen {
        assert!(ids.binary_search(&id.as_str()).is_ok(), "{id} not logged");
    }
}

/// `/logging` shows and changes the log filter; the admin endpoint refuses a public
/// address unless told otherwise.
#[test]
fn the_log_level_changes_at_runtime_and_admin_stays_on_loopback() {
    let proxy = Proxy::start("admin: { address: 127.0.0.1:0 }\n", &[]);
    let admin = proxy.admin;
    assert!(scrape(admin, "/logging").contains("info"));
    let post = |query: &str| {
        let mut s = TcpStream::connect(admin).expect("connect");
        s.write_all(
            format!("POST /logging?{query} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let set = post("level=debug");
    assert!(set.starts_with("HTTP/1.1 200"), "{set}");
    assert!(
        scrape(admin, "/logging").trim() == "debug",
        "{}",
        scrape(admin, "/logging")
    );
    // The new level is in force: debug lines appear on the next admin request.
    let _ = scrape(admin, "/ready");
    let set = post("filter=metamesh_core%3Dtrace%2Cwarn");
    assert!(set.starts_with("HTTP/1.1 200"), "{set}");
    assert!(scrape(admin, "/logging").contains("metamesh_core=trace"));
    assert!(post("level=loud").starts_with("HTTP/1.1 400"));
    assert!(post("filter=metamesh_core%3Dloud").starts_with("HTTP/1.1 400"));
    assert!(
        scrape(admin, "/logging").contains("metamesh_core=trace"),
        "unchanged"
    );

    let dir = TempDir::new("obs-admin");
    let file = dir.0.join("public-admin.yaml");
    std::fs::write(&file, "admin: { address: 0.0.0.0:15000 }\n").expect("write");
    let out = Command::new(metamesh_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("admin.address") && err.contains("allow_remote"),
        "{err}"
    );
    std::fs::write(
        &file,
        "admin: { address: 0.0.0.0:15000, allow_remote: true }\n",
    )
    .expect("write");
    let out = Command::new(metamesh_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
