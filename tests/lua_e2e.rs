//! End-to-end tests of Lua hooks in the `metamesh` binary, with real third-party peers:
//! dubbo-py and dubbo-python as Dubbo2 consumers and dubbo-py providers (see
//! tests/peers/README.md), Debian's nginx as HTTP/1.1 servers with curl as the client, and
//! raw Dubbo frames from this crate where a peer cannot show something (response
//! attachments).
//!
//! Covered: listener and route hooks steering Dubbo routing (tagging, removing, `route_to`,
//! `reject`, `on_response`), the same on HTTP, the sandbox holding against hostile scripts
//! without slowing the proxy afterwards, and hot replacement of a hook by SIGHUP under load.
//!
//! The tests take turns (one lock): one of them compares throughput before and after
//! hostile traffic, which the other tests' load on a small machine would skew. Every wait
//! is on a condition with a deadline. Needs the peers installed once with
//! `scripts/setup-test-deps.sh`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::dubbo::{echo_of, RawClient, INTERFACE};
use common::nginx::{curl_i, header, Nginx};
use common::{
    assert_all_ok, assert_counts, assert_errors, endpoint_list, errors_of, json_u64, peak_rss_kib,
    reload, run_consumer, wait_for, Consumer, Provider, Proxy, Spawned, TempDir, TempFile,
};
use metamesh_protocols::dubbo::{build, status};
use serde_json::Value as Json;

static TURN: Mutex<()> = Mutex::new(());

/// Waits for the other tests of this file to finish (a failed one does not block the rest).
fn take_turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ------------------------------------------------------------------ helpers: config

/// One entry of the `hooks:` list: `limits` are extra lines (indented four spaces), the
/// script goes into a literal block.
fn hook(name: &str, limits: &str, script: &str) -> String {
    let body: String = script
        .trim_matches('\n')
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    format!("  - name: {name}\n{limits}    script: |\n{body}")
}

/// One Dubbo listener `dubbo-out` with listener hooks `hooks` and a single route to
/// cluster `user` over `provider`; `hooks_yaml` is the `hooks:` list.
fn single_route_yaml(hooks: &str, provider: &Provider, hooks_yaml: &str) -> String {
    format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: r, hooks: [{hooks}] }}
routes:
  - name: r
    routes:
      - name: default
        route: [{{ cluster: user }}]
clusters:
  - {{ name: user, endpoints: {endpoints} }}
hooks:
{hooks_yaml}"#,
        endpoints = endpoint_list([provider.addr()])
    )
}

// -------------------------------------------------------- helpers: consumer output

/// What a consumer reports of the replies of one provider group.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupCount {
    group: String,
    batchjob: u64,
    plain: u64,
    /// `("k=v", count)` for attachments the provider saw that the consumer did not send,
    /// sorted.
    added: Vec<(String, u64)>,
}

/// The `by_group` of a consumer summary, sorted by group.
fn groups(summary: &Json) -> Vec<GroupCount> {
    let Some(map) = summary["by_group"].as_object() else {
        panic!("by_group missing: {summary:#}")
    };
    let mut out: Vec<_> = map
        .iter()
        .map(|(g, c)| {
            let mut added: Vec<(String, u64)> = c["added_attachments"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            added.sort();
            GroupCount {
                group: g.clone(),
                batchjob: c["batchjob_requests"].as_u64().unwrap_or(0),
                plain: c["plain_requests"].as_u64().unwrap_or(0),
                added,
            }
        })
        .collect();
    out.sort();
    out
}

/// A [`GroupCount`] to compare with.
fn group(name: &str, batchjob: u64, plain: u64, added: &[(&str, u64)]) -> GroupCount {
    let mut added: Vec<(String, u64)> = added.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
    added.sort();
    GroupCount {
        group: name.to_owned(),
        batchjob,
        plain,
        added,
    }
}

fn rate(summary: &Json, what: &str) -> f64 {
    let elapsed = summary["elapsed_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: elapsed_s missing: {summary:#}"));
    json_u64(summary, "ok") as f64 / elapsed.max(0.001)
}

// ------------------------------------------------------------ helpers: the process

/// GET `/ready` on the admin endpoint, giving up after `timeout`; the answer's first
/// line, or why there was none.
fn ready_within(admin: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&admin, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {timeout:?}")
        }
        _ => format!("read: {e}"),
    })?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Waits until `provider` has logged exactly `want` served requests (failing when it logs
/// more, or fewer within 10 s), and returns them.
fn served_exactly(provider: &Provider, want: usize) -> Vec<Json> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = provider.served();
        if served.len() == want {
            return served;
        }
        assert!(
            served.len() < want && Instant::now() < deadline,
            "provider[{}] served {} requests, want exactly {want}",
            provider.group,
            served.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------ 1: Dubbo hooks

const TAG: &str = r#"
function on_request(req)
  if req:get("caller") == nil then
    return req:reject("no caller attachment on " .. req:get("method"))
  end
  if req:get("batchjob") == "true" then req:set("x-tier", "batch") end
  req:remove("x-secret")
  if req:get("pin") == "user" then req:route_to("user") end
end
function on_response(resp, req)
  resp:set("x-served-by", "metamesh")
  resp:set("x-caller", req:get("caller"))
  resp:set("x-status", resp:status())
end
"#;

const INNER: &str = r#"
function on_request(req) req:set("x-route-hook", req:protocol()) end
"#;

/// A listener hook tags `batchjob=true` calls with `x-tier=batch`, which steers them to
/// the batch route (whose route hook adds `x-route-hook`); it removes `x-secret`, sends
/// calls with `pin=user` to the user cluster whatever route they match (even none), and
/// rejects calls without `caller` before anything reaches a provider. Its `on_response`
/// adds response attachments, which reach a Dubbo 2.0.2 client and are left out for
/// clients that cannot read them (dubbo-py's 2.5.3).
#[test]
fn dubbo_hooks_tag_remove_route_reject_and_answer() {
    let _turn = take_turn();
    common::python();
    let providers = Provider::start_all(&["batchjob", "user"], &["--log-requests"]);
    let (batch, user) = (&providers[0], &providers[1]);
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: r, hooks: [tag] }}
routes:
  - name: r
    routes:
      - name: batch
        match: {{ attributes: {{ x-tier: {{ exact: batch }} }} }}
        route: [{{ cluster: batch }}]
        hooks: [inner]
      - name: default
        match: {{ attributes: {{ interface: {{ exact: {INTERFACE} }} }} }}
        route: [{{ cluster: user }}]
clusters:
  - {{ name: batch, endpoints: {batch_eps} }}
  - {{ name: user, endpoints: {user_eps} }}
hooks:
{tag}{inner}"#,
        batch_eps = endpoint_list([batch.addr()]),
        user_eps = endpoint_list([user.addr()]),
        tag = hook("tag", "", TAG),
        inner = hook("inner", "", INNER),
    );
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out").to_string();
    let caller = r#"{"caller": "e2e"}"#;

    // (a) Tagging steers routing: every 3rd call carries batchjob=true.
    let main = run_consumer(&[
        "--target",
        &target,
        "--count",
        "300",
        "--connections",
        "4",
        "--batchjob-every",
        "3",
        "--raw-attachments",
        caller,
    ]);
    // dubbo-py sends Dubbo 2.5.3, so the response attachments of on_response must not
    // reach it (it would read the value as None and report a mismatch).
    assert_all_ok(&main, 300, "tagged run");
    assert_eq!(
        groups(&main),
        [
            group(
                "batchjob",
                100,
                0,
                &[("x-route-hook=dubbo", 100), ("x-tier=batch", 100)]
            ),
            group("user", 0, 200, &[]),
        ],
        "{main:#}"
    );

    // (c) route_to wins over the matched batch route, and works when no route matches.
    let pinned = run_consumer(&[
        "--target",
        &target,
        "--count",
        "30",
        "--connections",
        "2",
        "--batchjob-every",
        "1",
        "--raw-attachments",
        r#"{"caller": "e2e", "pin": "user"}"#,
    ]);
    assert_all_ok(&pinned, 30, "pinned batchjob run");
    assert_eq!(
        groups(&pinned),
        [group(
            "user",
            30,
            0,
            &[("x-route-hook=dubbo", 30), ("x-tier=batch", 30)]
        )],
        "{pinned:#}"
    );
    let unrouted = "org.example.Unrouted";
    let pinned_unrouted = run_consumer(&[
        "--target",
        &target,
        "--count",
        "5",
        "--interface",
        unrouted,
        "--raw-attachments",
        r#"{"caller": "e2e", "pin": "user"}"#,
    ]);
    assert_all_ok(&pinned_unrouted, 5, "pinned call no route matches");
    assert_eq!(groups(&pinned_unrouted), [group("user", 0, 5, &[])]);
    let no_route = run_consumer(&[
        "--target",
        &target,
        "--count",
        "3",
        "--interface",
        unrouted,
        "--raw-attachments",
        caller,
    ]);
    assert_errors(
        &no_route,
        3,
        &["status 60", "no route matched the request"],
        "unpinned call no route matches",
    );

    // (b) x-secret is removed: the consumer sees exactly that attachment missing.
    let removed = run_consumer(&[
        "--target",
        &target,
        "--count",
        "20",
        "--connections",
        "2",
        "--raw-attachments",
        r#"{"caller": "e2e", "x-secret": "hunter2"}"#,
    ]);
    assert_counts(
        &removed,
        "x-secret removed",
        &[
            ("attachment_errors", 20),
            ("error_count", 20),
            ("mismatched", 0),
        ],
    );
    for e in errors_of(&removed) {
        assert!(
            e.ends_with(r#"(sent, received): {"x-secret": ["hunter2", null]}"#),
            "only x-secret may be missing: {e}"
        );
    }
    assert_eq!(groups(&removed), [group("user", 0, 20, &[])]);

    // (d) No caller: rejected with status 70 and the script's message, for both client
    // libraries.
    let rejected_py = run_consumer(&["--target", &target, "--count", "10", "--connections", "2"]);
    assert_errors(
        &rejected_py,
        10,
        &["status 70", "no caller attachment on sayHello"],
        "dubbo-py without caller",
    );
    let rejected_dp = run_consumer(&[
        "--target",
        &target,
        "--count",
        "3",
        "--client",
        "dubbo-python",
        "--version",
        "2.4.10",
    ]);
    assert_errors(
        &rejected_dp,
        3,
        &["no caller attachment on sayHello"],
        "dubbo-python without caller",
    );

    // (e) Response attachments reach a client of Dubbo 2.0.2 only.
    let mut raw = RawClient::new(proxy.listener("dubbo-out"));
    let reply = raw.call_version(
        "2.0.2",
        "raw-batch",
        &[("caller", "raw"), ("batchjob", "true")],
    );
    let echo = echo_of(&reply, "raw batchjob call");
    assert_eq!(echo["group"], "batchjob", "{echo:#}");
    assert_eq!(echo["attachments"]["x-tier"], "batch", "{echo:#}");
    for (k, v) in [
        ("x-served-by", "metamesh"),
        ("x-caller", "raw"),
        ("x-status", "20"),
    ] {
        assert_eq!(
            reply.metadata.get(k),
            Some(v),
            "response attachment {k}: {reply:?}"
        );
    }
    let reply = raw.call_version("2.5.3", "raw-old", &[("caller", "raw")]);
    assert_eq!(echo_of(&reply, "raw 2.5.3 call")["group"], "user");
    assert_eq!(
        reply.metadata.get("x-served-by"),
        None,
        "a 2.5.3 client cannot read response attachments: {reply:?}"
    );
    let reply = raw.call_version("2.0.2", "raw-anonymous", &[]);
    assert_eq!(
        reply.status,
        Some(u32::from(status::SERVICE_ERROR)),
        "{reply:?}"
    );
    assert_eq!(
        build::response_value(&reply).expect_err("an error reply"),
        "no caller attachment on sayHello"
    );

    // Nothing rejected reached a provider: each served exactly what was routed to it.
    let batch_served = served_exactly(batch, 100 + 1);
    let user_served = served_exactly(user, 200 + 30 + 5 + 20 + 1);
    for echo in batch_served.iter().chain(&user_served) {
        let att = &echo["attachments"];
        assert!(att.get("x-secret").is_none(), "x-secret arrived: {echo:#}");
        assert!(
            att.get("caller").is_some(),
            "a call without caller arrived: {echo:#}"
        );
    }

    let rejected = 10 + 3 + 1;
    let counter = |name: &str, labels: &[(&str, &str)]| proxy.counter(name, labels);
    assert_eq!(
        counter("metamesh_hook_rejected_total", &[("hook", "tag")]),
        rejected
    );
    let local = |reason: &str| {
        counter(
            "metamesh_local_reply_total",
            &[("listener", "dubbo-out"), ("reason", reason)],
        )
    };
    assert_eq!(local("rejected"), rejected);
    assert_eq!(local("no_route"), 3);
    assert_eq!(local("hook_error"), 0);
    let route = |r: &str| counter("metamesh_route_rq_total", &[("route", r)]);
    assert_eq!(route("batch"), 100 + 30 + 1);
    assert_eq!(route("default"), 200 + 20 + 1);
    assert_eq!(route("hook_route_to"), 5);
    assert_eq!(
        counter("metamesh_upstream_rq_total", &[("cluster", "batch")]),
        101
    );
    assert_eq!(
        counter("metamesh_upstream_rq_total", &[("cluster", "user")]),
        256
    );
    // on_request for every call, on_response for every call a provider answered.
    let requests = 300 + 30 + 5 + 3 + 20 + 10 + 3 + 3;
    let answered = 101 + 256;
    assert_eq!(
        counter("metamesh_hook_calls_total", &[("hook", "tag")]),
        requests + answered
    );
    assert_eq!(
        counter("metamesh_hook_calls_total", &[("hook", "inner")]),
        131,
        "the route hook runs on the batch route only"
    );
    assert_eq!(counter("metamesh_hook_errors_total", &[("hook", "tag")]), 0);
}

// ------------------------------------------------------------------- 2: HTTP hooks

const EDGE: &str = r#"
function on_request(req)
  if req:get(":path") == "/api/admin" then return req:reject("admin is closed") end
  if req:get("x-crash") ~= nil then error("crashing on purpose") end
  req:set("x-tier", req:get(":method") == "POST" and "write" or "read")
  req:remove("x-secret")
  if req:get("x-pin") == "b" then req:route_to("b") end
end
function on_response(resp, req)
  resp:set("x-served-by", "metamesh-lua")
  resp:set("x-upstream-status", resp:status())
  resp:set("x-request-path", req:get(":path"))
end
"#;

fn echo_server(group: &str, port: u16, dir: &Path) -> String {
    let log = dir.join(format!("{group}.log"));
    format!(
        r#"
    server {{
        listen 127.0.0.1:{port};
        access_log {log};
        add_header x-group {group} always;
        location / {{
            return 200 "group={group} method=$request_method uri=$request_uri tier=$http_x_tier secret=$http_x_secret\n";
        }}
    }}"#,
        log = log.display()
    )
}

/// Requests nginx server `group` logged.
fn nginx_log(nginx: &Nginx, group: &str) -> usize {
    std::fs::read_to_string(nginx.dir().join(format!("{group}.log")))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// An HTTP listener hook sets a header nginx sees, removes one, sends requests to a
/// second server with `route_to` (also when no route matches), rejects with 403, fails
/// with 500, and adds response headers curl sees.
#[test]
fn http_hooks_set_remove_route_reject_and_answer() {
    let _turn = take_turn();
    let nginx = Nginx::start("lua-nginx", &[], 2, |ports, dir| {
        format!(
            "{}\n{}",
            echo_server("a", ports[0], dir),
            echo_server("b", ports[1], dir)
        )
    });
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web, hooks: [edge] }}
routes:
  - name: web
    routes:
      - name: api
        match: {{ attributes: {{ ":path": {{ prefix: /api/ }} }} }}
        route: [{{ cluster: a }}]
clusters:
  - {{ name: a, endpoints: [{{ address: "127.0.0.1:{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "127.0.0.1:{b}" }}] }}
hooks:
{edge}"#,
        a = nginx.ports[0],
        b = nginx.ports[1],
        edge = hook("edge", "", EDGE),
    );
    let proxy = Proxy::start(&yaml, &[]);
    let base = format!("http://{}", proxy.listener("web"));

    // A header set, one removed, response headers added.
    let (status, h, body) = curl_i(&format!("{base}/api/hello"), &["-H", "x-secret: hunter2"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body, "group=a method=GET uri=/api/hello tier=read secret=\n",
        "nginx saw the hook's x-tier and no x-secret"
    );
    assert_eq!(header(&h, "x-group"), Some("a"));
    assert_eq!(header(&h, "x-served-by"), Some("metamesh-lua"));
    assert_eq!(header(&h, "x-upstream-status"), Some("200"));
    assert_eq!(header(&h, "x-request-path"), Some("/api/hello"));

    // No route matches: the no-route reply.
    let (status, h, _) = curl_i(&format!("{base}/elsewhere"), &[]);
    assert_eq!(status, 404);
    assert_eq!(header(&h, "x-metamesh-local-reply"), Some("no_route"));

    // reject: 403 with the script's message, no upstream, no on_response.
    let (status, h, body) = curl_i(&format!("{base}/api/admin"), &[]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(header(&h, "x-metamesh-local-reply"), Some("rejected"));
    assert!(body.contains("admin is closed"), "{body:?}");
    assert_eq!(header(&h, "x-served-by"), None);

    // A failing hook: 500 naming the hook, not the script's error text.
    let (status, h, body) = curl_i(&format!("{base}/api/hello"), &["-H", "x-crash: 1"]);
    assert_eq!(status, 500, "{body}");
    assert_eq!(header(&h, "x-metamesh-local-reply"), Some("hook_error"));
    assert!(body.contains("hook edge failed"), "{body:?}");
    assert!(!body.contains("crashing on purpose"), "{body:?}");

    let counter = |name: &str, labels: &[(&str, &str)]| proxy.counter(name, labels);
    assert_eq!(
        counter("metamesh_hook_rejected_total", &[("hook", "edge")]),
        1
    );
    assert_eq!(
        counter(
            "metamesh_hook_errors_total",
            &[("hook", "edge"), ("reason", "error")]
        ),
        1
    );
    let local = |reason: &str| {
        counter(
            "metamesh_local_reply_total",
            &[("listener", "web"), ("reason", reason)],
        )
    };
    assert_eq!(local("rejected"), 1);
    assert_eq!(local("hook_error"), 1);
    assert_eq!(local("no_route"), 1);

    // route_to a second server block, with a body: cluster b, which only the hook
    // routes to (no route names it).
    let (status, h, body) = curl_i(
        &format!("{base}/api/orders"),
        &["-H", "x-pin: b", "--data-binary", "order=1"],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "group=b method=POST uri=/api/orders tier=write secret=\n"
    );
    assert_eq!(header(&h, "x-group"), Some("b"));
    assert_eq!(header(&h, "x-served-by"), Some("metamesh-lua"));

    // route_to where no route matches.
    let (status, _, body) = curl_i(&format!("{base}/elsewhere"), &["-H", "x-pin: b"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "group=b method=GET uri=/elsewhere tier=read secret=\n"
    );

    // nginx saw exactly the three routed requests (a: 1, b: 2).
    wait_for(Duration::from_secs(10), "nginx access logs", || {
        (nginx_log(&nginx, "a") == 1 && nginx_log(&nginx, "b") == 2).then_some(())
    });
    assert_eq!(
        counter("metamesh_route_rq_total", &[("route", "hook_route_to")]),
        1
    );
}

// ---------------------------------------------------------------- 3: the sandbox

fn sandbox_script(marker: &Path) -> String {
    let marker = marker.display();
    format!(
        r#"
local marker = "{marker}"
function on_request(req)
  local abuse = req:get("abuse")
  if abuse == nil then return end
  if abuse == "os" then
    os.execute("touch " .. marker .. ".os")
  elseif abuse == "io" then
    io.open(marker .. ".io", "w"):write("escaped")
  elseif abuse == "require" then
    require("os").execute("touch " .. marker .. ".require")
  elseif abuse == "bytecode" then
    local f, err = load("\27Lua\84\0\25\147\r\n\26\n", "chunk", "b")
    req:set("x-load", tostring(f) .. " / " .. tostring(err))
    req:set("x-text-load", load("return 6 * 7")())
  elseif abuse == "bomb" then
    local s = string.rep("x", 64 * 1024 * 1024)
    req:set("x-bomb", #s)
  elseif abuse == "loop" then
    while true do end
  elseif abuse == "deep" then
    local function f(n) return f(n + 1) + 1 end
    f(1)
  end
end
function on_response(resp, req)
  if req:get("abuse") == "late-loop" then while true do end end
end
"#
    )
}

/// Hostile hook code through the real binary: no `os`, `io` or `require` (and nothing
/// they would have done happens), `load` refuses bytecode, a memory bomb, an endless loop
/// in `on_request` and in `on_response`, and deep recursion each fail only their own
/// request with the right counter; afterwards plain traffic through the same hook runs at
/// the rate it ran before, without errors.
#[test]
fn the_sandbox_contains_hostile_scripts_and_the_proxy_keeps_its_pace() {
    let _turn = take_turn();
    common::python();
    let dir = TempDir::new("lua-sandbox");
    let marker = dir.0.join("escaped");
    let providers = Provider::start_all(&["user"], &["--log-requests"]);
    let user = &providers[0];
    let hooks = hook(
        "sandbox",
        "    memory_limit: 1048576\n",
        &sandbox_script(&marker),
    );
    let proxy = Proxy::start(&single_route_yaml("sandbox", user, &hooks), &[]);
    let target = proxy.listener("dubbo-out").to_string();
    // The better of two runs, so that a moment of outside load on the machine does not
    // count as the proxy's pace.
    const PLAIN: u64 = 2000;
    let plain_rate = |what: &str| {
        let rates: Vec<f64> = (0..2)
            .map(|_| {
                let summary = run_consumer(&[
                    "--target",
                    &target,
                    "--count",
                    &PLAIN.to_string(),
                    "--connections",
                    "4",
                ]);
                assert_all_ok(&summary, PLAIN, what);
                rate(&summary, what)
            })
            .collect();
        rates.into_iter().fold(0.0, f64::max)
    };
    let warm = run_consumer(&["--target", &target, "--count", "200", "--connections", "4"]);
    assert_all_ok(&warm, 200, "warm-up");
    let r_before = plain_rate("plain traffic before the abuse");
    let rss_before = peak_rss_kib(proxy.proc.pid());

    let errors = |reason: &str| {
        proxy.counter(
            "metamesh_hook_errors_total",
            &[("hook", "sandbox"), ("reason", reason)],
        )
    };
    let reasons = ["error", "budget", "memory"];
    const N: u64 = 6;
    let mut served = 200 + 2 * PLAIN as usize;
    for (abuse, moved) in [
        ("os", &["error"][..]),
        ("io", &["error"]),
        ("require", &["error"]),
        ("bomb", &["memory"]),
        ("loop", &["budget"]),
        ("late-loop", &["budget"]),
        ("deep", &["error", "memory"]),
    ] {
        let was: Vec<u64> = reasons.iter().map(|r| errors(r)).collect();
        let summary = run_consumer(&[
            "--target",
            &target,
            "--count",
            &N.to_string(),
            "--connections",
            "2",
            "--raw-attachments",
            &format!(r#"{{"abuse": "{abuse}"}}"#),
        ]);
        assert_errors(
            &summary,
            N,
            &["status 80", "hook sandbox failed"],
            &format!("abuse {abuse}"),
        );
        let delta: Vec<u64> = reasons
            .iter()
            .zip(&was)
            .map(|(r, w)| errors(r) - w)
            .collect();
        eprintln!("abuse {abuse}: errors by reason {reasons:?} moved by {delta:?}");
        let in_moved: u64 = reasons
            .iter()
            .zip(&delta)
            .filter(|(r, _)| moved.contains(r))
            .map(|(_, d)| d)
            .sum();
        assert_eq!(
            in_moved, N,
            "abuse {abuse}: errors by reason {reasons:?} moved by {delta:?}, want {N} in {moved:?}"
        );
        assert_eq!(
            delta.iter().sum::<u64>(),
            N,
            "abuse {abuse}: errors by reason {reasons:?} moved by {delta:?}"
        );
        if abuse == "late-loop" {
            // on_response runs on the provider's answer.
            served += N as usize;
        }
    }
    for suffix in ["os", "io", "require"] {
        let path = marker.with_extension(suffix);
        assert!(!path.exists(), "{} was created", path.display());
    }

    // Bytecode: load hands the script nil and an error; text still loads.
    let bytecode = run_consumer(&[
        "--target",
        &target,
        "--count",
        &N.to_string(),
        "--raw-attachments",
        r#"{"abuse": "bytecode"}"#,
    ]);
    assert_all_ok(&bytecode, N, "bytecode");
    let added = groups(&bytecode);
    assert_eq!(added.len(), 1, "{bytecode:#}");
    let GroupCount {
        plain: plain_requests,
        added,
        ..
    } = &added[0];
    assert_eq!(*plain_requests, N);
    assert_eq!(added.len(), 2, "{bytecode:#}");
    assert!(
        added[0].0.starts_with("x-load=nil / ")
            && added[0].0.contains("binary chunk")
            && added[0].1 == N,
        "{bytecode:#}"
    );
    assert_eq!(added[1], ("x-text-load=42".to_owned(), N), "{bytecode:#}");
    served += N as usize;

    let r_after = plain_rate("plain traffic after the abuse");
    served += 2 * PLAIN as usize;
    eprintln!("plain traffic: {r_before:.0} requests/s before the abuse, {r_after:.0} after");
    assert!(
        r_after >= 0.7 * r_before,
        "{r_after:.0} requests/s after the abuse, {r_before:.0} before"
    );
    let rss_after = peak_rss_kib(proxy.proc.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "the proxy's peak memory grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Only the late loop (and the plain and bytecode calls) reached the provider.
    served_exactly(user, served);
    let abusive = 7 * N;
    assert_eq!(
        proxy.counter(
            "metamesh_local_reply_total",
            &[("listener", "dubbo-out"), ("reason", "hook_error")]
        ),
        abusive
    );
    assert_eq!(proxy.scrape("/ready"), "LIVE\n");
}

/// A script that catches the instruction budget's error with `pcall` and loops on: the
/// budget must still end the call (a hook_error reply), and the proxy must go on serving.
#[test]
fn the_instruction_budget_holds_against_pcall() {
    runaway_is_contained(
        "pcall",
        "while true do pcall(function() while true do end end) end",
        &["budget"],
    );
}

/// A pattern that backtracks for ages inside one `string.find` call (Lua's matcher is C
/// code, which runs no VM instructions): the call must still end with a hook_error
/// reply, and the proxy must go on serving.
#[test]
fn a_backtracking_pattern_match_is_contained() {
    runaway_is_contained(
        "pattern",
        r#"local s = string.rep("a", 5000) req:set("x-found", tostring(s:find(".-.-.-.-b")))"#,
        &["budget", "error"],
    );
}

/// A hook whose `on_request` runs `body` for requests carrying `abuse`: the abusive call
/// must be answered with hook_error within 5 s, counted under one of `reasons`, and plain
/// calls must still be served.
fn runaway_is_contained(name: &str, body: &str, reasons: &[&str]) {
    let _turn = take_turn();
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let script = format!(
        "function on_request(req)\n  if req:get(\"abuse\") == nil then return end\n  {body}\nend\n"
    );
    let hooks = hook(name, "", &script);
    let proxy = Proxy::start(&single_route_yaml(name, &providers[0], &hooks), &[]);
    let target = proxy.listener("dubbo-out").to_string();
    assert_all_ok(
        &run_consumer(&["--target", &target, "--count", "10"]),
        10,
        "before the abuse",
    );
    let abused = run_consumer(&[
        "--target",
        &target,
        "--count",
        "1",
        "--timeout",
        "5",
        "--raw-attachments",
        r#"{"abuse": "yes"}"#,
    ]);
    let admin = ready_within(proxy.admin, Duration::from_secs(3));
    assert!(
        json_u64(&abused, "timeouts") == 0,
        "the {name} hook was never stopped: the call timed out after 5 s ({:?}); \
         admin /ready then: {admin:?}",
        errors_of(&abused)
    );
    assert_errors(
        &abused,
        1,
        &["status 80", &format!("hook {name} failed")],
        name,
    );
    let counted: u64 = reasons
        .iter()
        .map(|r| {
            proxy.counter(
                "metamesh_hook_errors_total",
                &[("hook", name), ("reason", r)],
            )
        })
        .sum();
    assert_eq!(counted, 1, "{name}: one error counted under {reasons:?}");
    assert_eq!(
        proxy.counter("metamesh_hook_errors_total", &[("hook", name)]),
        1
    );
    assert_all_ok(
        &run_consumer(&["--target", &target, "--count", "10", "--timeout", "5"]),
        10,
        "after the abuse",
    );
}

// ---------------------------------------------------------- 4: hot replacement

fn versioned(version: &str) -> String {
    format!(
        r#"
function on_request(req) req:set("x-version", "{version}") end
function on_response(resp, req) resp:set("x-version", "{version}") end
"#
    )
}

/// A consumer runs under load while the hook is replaced by SIGHUP: not one call fails,
/// calls before carry v1 and calls after v2; a script that does not compile is refused
/// with its Lua error and v2 stays.
#[test]
fn sighup_replaces_a_hook_under_load() {
    let _turn = take_turn();
    common::python();
    let providers = Provider::start_all(&["user"], &[]);
    let user = &providers[0];
    let config = |script: &str| single_route_yaml("version", user, &hook("version", "", script));
    let mut proxy = Proxy::start(&config(&versioned("1")), &[]);
    let addr = proxy.listener("dubbo-out");
    let target = addr.to_string();
    let mut raw = RawClient::new(addr);
    let version_of = |raw: &mut RawClient, what: &str| {
        let reply = raw.call_version("2.0.2", what, &[]);
        let echo = echo_of(&reply, what);
        (
            echo["attachments"]["x-version"]
                .as_str()
                .unwrap_or("none")
                .to_owned(),
            reply.metadata.get("x-version").unwrap_or("none").to_owned(),
        )
    };
    assert_eq!(version_of(&mut raw, "v1 call"), ("1".into(), "1".into()));

    const COUNT: u64 = 4000;
    let consumer = Consumer::spawn(&[
        "--target",
        &target,
        "--count",
        &COUNT.to_string(),
        "--connections",
        "4",
    ]);
    wait_for(Duration::from_secs(30), "the consumer under way", || {
        (proxy.counter("metamesh_downstream_rq_total", &[("listener", "dubbo-out")]) >= 300)
            .then_some(())
    });
    let outcome = reload(&mut proxy, &config(&versioned("2")));
    assert_eq!(outcome["event"], "reloaded", "{outcome}");
    assert_eq!(outcome["version"], 2, "{outcome}");
    let at_reload = proxy.counter("metamesh_downstream_rq_total", &[("listener", "dubbo-out")]);
    assert_eq!(version_of(&mut raw, "v2 call"), ("2".into(), "2".into()));

    let summary = consumer.finish();
    assert_all_ok(&summary, COUNT, "the consumer running through the reload");
    let by_group = groups(&summary);
    assert_eq!(by_group.len(), 1, "{summary:#}");
    let added = &by_group[0].added;
    let count = |v: &str| {
        added
            .iter()
            .find(|(k, _)| k == &format!("x-version={v}"))
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        added.len(),
        2,
        "only x-version=1 and x-version=2 are added: {summary:#}"
    );
    eprintln!(
        "reload at {at_reload} requests: {} calls carried v1, {} v2",
        count("1"),
        count("2")
    );
    assert_eq!(count("1") + count("2"), COUNT, "{summary:#}");
    assert!(
        count("1") > 0 && count("2") > 0,
        "the reload (at {at_reload} requests) happened during the run: {summary:#}"
    );

    // A script that does not compile: refused with the Lua error and its line; v2 stays.
    let broken = "function on_request(req)\n  req:set(\"x-version\", \"3\"\nend\n";
    let outcome = reload(&mut proxy, &config(broken));
    assert_eq!(outcome["event"], "reload_failed", "{outcome}");
    let error = outcome["error"].as_str().unwrap_or_default();
    assert!(error.contains("hooks[version].script: "), "{error}");
    assert!(error.contains("version:3:"), "the Lua line: {error}");
    assert_eq!(
        version_of(&mut raw, "call after the refused reload"),
        ("2".into(), "2".into())
    );
    assert_all_ok(
        &run_consumer(&["--target", &target, "--count", "20", "--connections", "2"]),
        20,
        "after the refused reload",
    );
}

/// A SIGHUP sent as soon as the proxy announced readiness is a reload, not the signal's
/// default action (which ends the process).
#[test]
fn sighup_right_after_ready_reloads() {
    let _turn = take_turn();
    let config = TempFile::new(
        "lua-hup",
        r#"admin: { address: 127.0.0.1:0 }
listeners:
  - { name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: r, hooks: [h] }
routes:
  - name: r
    routes:
      - name: default
        route: [{ cluster: user }]
clusters:
  - { name: user, endpoints: [{ address: "127.0.0.1:1" }] }
hooks:
  - name: h
    script: |
      function on_request(req) req:set("x", "1") end
"#,
    );
    // The signal has to follow the ready line closely: a shell started beforehand sends
    // it the moment the test reads that line. Several times, as the window is short.
    for attempt in 1..=20 {
        let mut cmd = Command::new(common::metamesh_bin());
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config.path)
            .env("RUST_LOG", "info");
        let mut proc = Spawned::start("metamesh proxy", cmd);
        let mut trigger = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ && kill -HUP {}", proc.pid()))
            .stdin(Stdio::piped())
            .spawn()
            .expect("start sh");
        let ready = proc.next_line(common::READY_TIMEOUT);
        assert!(ready.contains(r#""event":"ready""#), "{ready}");
        let mut go = trigger.stdin.take().expect("piped stdin");
        go.write_all(b"go\n").expect("write to sh");
        drop(go);
        assert!(
            trigger.wait().expect("wait for sh").success(),
            "kill -HUP failed"
        );
        let line = proc.next_line(Duration::from_secs(30));
        let outcome: Json = serde_json::from_str(&line).expect("reload line is JSON");
        assert_eq!(outcome["event"], "reloaded", "attempt {attempt}: {outcome}");
    }
}

/// `print` in a hook goes to the log: stdout carries only the proxy's own lines, even
/// when a script prints at its top level (which runs at every configuration check).
#[test]
fn print_in_a_hook_never_reaches_stdout() {
    let config = TempFile::new(
        "lua-hook-output",
        r#"
listeners:
  - { name: l, address: 127.0.0.1:0, protocol: dubbo, route_config: r, hooks: [h] }
routes:
  - { name: r, routes: [{ name: d, route: [{ cluster: c }] }] }
clusters:
  - { name: c, endpoints: [{ address: "127.0.0.1:1" }] }
hooks:
  - name: h
    script: |
      print("top-level print")
      function on_request(req) print("request print") end
"#,
    );
    let out = common::validate(&config.path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("top-level print"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}
