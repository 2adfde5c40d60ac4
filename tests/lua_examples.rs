//! The Lua hooks of `examples/lua`, each loaded from its file into a bootstrap and shown
//! at work through the `metamesh` binary with real peers: dubbo-py providers and
//! consumers (tests/peers), nginx and curl. Also checks that `examples/lua/mesh.yaml`,
//! which wires all five together, validates and carries the same scripts as the files.
//!
//! Needs the peers installed once with `scripts/setup-test-deps.sh`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::nginx::{curl_i, Nginx};
use common::{
    assert_all_ok, assert_counts, errors_of, provider_endpoints, reload, run_consumer, wait_for,
    Consumer, Provider, Proxy, READY_TIMEOUT,
};
use serde_json::Value as Json;

const ROUTE_BY_BATCHJOB: &str = include_str!("../examples/lua/route_by_batchjob.lua");
const CANARY_BY_USER_HASH: &str = include_str!("../examples/lua/canary_by_user_hash.lua");
const REJECT_UNAUTHENTICATED: &str = include_str!("../examples/lua/reject_unauthenticated.lua");
const ADD_RESPONSE_ATTRIBUTE: &str = include_str!("../examples/lua/add_response_attribute.lua");
const COPY_HEADER_BETWEEN_PROTOCOLS: &str =
    include_str!("../examples/lua/copy_header_between_protocols.lua");

/// Every example: file name and source.
const EXAMPLES: [(&str, &str); 5] = [
    ("route_by_batchjob.lua", ROUTE_BY_BATCHJOB),
    ("canary_by_user_hash.lua", CANARY_BY_USER_HASH),
    ("reject_unauthenticated.lua", REJECT_UNAUTHENTICATED),
    ("add_response_attribute.lua", ADD_RESPONSE_ATTRIBUTE),
    (
        "copy_header_between_protocols.lua",
        COPY_HEADER_BETWEEN_PROTOCOLS,
    ),
];

/// A top-level `hooks:` section with one hook per `(name, script)`, each script as a
/// YAML block scalar.
fn hooks_yaml(hooks: &[(&str, &str)]) -> String {
    let mut out = String::from("hooks:\n");
    for (name, script) in hooks {
        out.push_str(&format!("  - name: {name}\n    script: |\n"));
        for line in script.lines() {
            if !line.is_empty() {
                out.push_str("      ");
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Starts a consumer of `count` requests over two connections, each request with the
/// attachments of the JSON object `raw`.
fn spawn_raw(target: &str, count: &str, raw: &str) -> Consumer {
    Consumer::spawn(&[
        "--target",
        target,
        "--count",
        count,
        "--connections",
        "2",
        "--raw-attachments",
        raw,
    ])
}

/// A consumer summary's `by_group` as `group -> (batchjob requests, plain requests,
/// added attachments "k=v" -> count)`.
type Groups = BTreeMap<String, (u64, u64, BTreeMap<String, u64>)>;

fn groups(summary: &Json) -> Groups {
    let Some(by_group) = summary["by_group"].as_object() else {
        panic!("no by_group in {summary:#}")
    };
    by_group
        .iter()
        .map(|(g, v)| {
            let added = v["added_attachments"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            (
                g.clone(),
                (n("batchjob_requests"), n("plain_requests"), added),
            )
        })
        .collect()
}

/// What one group of a consumer summary should hold: `(group, batchjob requests, plain
/// requests, added attachments "k=v" with their counts)`.
type GroupWant<'a> = (&'a str, u64, u64, &'a [(&'a str, u64)]);

/// The [`Groups`] that `entries` describe.
fn want(entries: &[GroupWant]) -> Groups {
    entries
        .iter()
        .map(|(g, b, p, added)| {
            let added = added.iter().map(|(k, n)| (k.to_string(), *n)).collect();
            (g.to_string(), (*b, *p, added))
        })
        .collect()
}

/// [`curl_i`] with the headers in a map.
fn get(url: &str, extra: &[&str]) -> (u16, BTreeMap<String, String>, String) {
    let (status, headers, body) = curl_i(url, extra);
    (status, headers.into_iter().collect(), body)
}

// ------------------------------------------------------------------ route_by_batchjob

/// Batch-job calls (every 3rd) are tagged `x-tier=batch` by the listener hook, which picks
/// the `batch` route; a client's own `x-tier` on other calls is taken away.
#[test]
fn route_by_batchjob_sends_batch_jobs_to_the_batch_cluster() {
    common::python();
    let providers = Provider::start_all(&["batchjob", "user"], &[]);
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
    hooks: [tag-batchjob]
routes:
  - name: dubbo-routes
    routes:
      - name: batch
        match: {{ attributes: {{ x-tier: {{ exact: batch }} }} }}
        route: [{{ cluster: demo-batchjob }}]
      - name: default
        route: [{{ cluster: demo-user }}]
clusters:
  - {{ name: demo-batchjob, endpoints: {} }}
  - {{ name: demo-user, endpoints: {} }}
{}"#,
        provider_endpoints(&[&providers[0]]),
        provider_endpoints(&[&providers[1]]),
        hooks_yaml(&[("tag-batchjob", ROUTE_BY_BATCHJOB)])
    );
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out").to_string();

    let summary = run_consumer(&[
        "--target",
        &target,
        "--count",
        "60",
        "--connections",
        "4",
        "--batchjob-every",
        "3",
    ]);
    assert_all_ok(&summary, 60, "route_by_batchjob");
    assert_eq!(
        groups(&summary),
        want(&[
            ("batchjob", 20, 0, &[("x-tier=batch", 20)]),
            ("user", 0, 40, &[]),
        ]),
        "{summary:#}"
    );
    let route = |r: &str| proxy.counter("metamesh_route_rq_total", &[("route", r)]);
    assert_eq!((route("batch"), route("default")), (20, 40));
    assert_eq!(
        proxy.counter("metamesh_hook_calls_total", &[("hook", "tag-batchjob")]),
        60,
        "one on_request call per request, no on_response"
    );

    // Every call now claims x-tier=batch: only the batch jobs keep it.
    let summary = run_consumer(&[
        "--target",
        &target,
        "--count",
        "30",
        "--connections",
        "2",
        "--batchjob-every",
        "3",
        "--raw-attachments",
        r#"{"x-tier": "batch"}"#,
    ]);
    assert_counts(
        &summary,
        "every call claiming x-tier=batch",
        &[("ok", 10), ("attachment_errors", 20), ("mismatched", 0)],
    );
    for e in errors_of(&summary) {
        assert!(e.contains(r#""x-tier": ["batch", null]"#), "{e}");
    }
    assert_eq!(
        groups(&summary),
        want(&[("batchjob", 10, 0, &[]), ("user", 0, 20, &[])]),
        "{summary:#}"
    );
}

// ---------------------------------------------------------------- canary_by_user_hash

/// The share of users the script sends to the canary (its `CANARY_PERCENT`).
fn canary_percent(script: &str) -> i64 {
    script
        .lines()
        .find_map(|l| l.strip_prefix("local CANARY_PERCENT = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the script sets CANARY_PERCENT")
}

/// The script with another `CANARY_PERCENT`.
fn with_canary_percent(script: &str, percent: i64) -> String {
    let lines: Vec<String> = script
        .lines()
        .map(|l| match l.strip_prefix("local CANARY_PERCENT = ") {
            Some(_) => format!("local CANARY_PERCENT = {percent}"),
            None => l.to_owned(),
        })
        .collect();
    lines.join("\n") + "\n"
}

/// `hash(user) % 100` as the script computes it: the proxy's xxh64 of the value, shifted
/// to be non-negative.
fn bucket(user: &str) -> i64 {
    (metamesh_core::lb::hash_values([user]) >> 1) as i64 % 100
}

fn canary_yaml(canary: &Provider, stable: &Provider, script: &str) -> String {
    format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
    hooks: [canary]
routes:
  - name: dubbo-routes
    routes:
      - name: default
        route: [{{ cluster: stable }}]
clusters:
  - {{ name: stable, endpoints: {} }}
  - {{ name: canary, protocol: dubbo, endpoints: {} }}
{}"#,
        provider_endpoints(&[stable]),
        provider_endpoints(&[canary]),
        hooks_yaml(&[("canary", script)])
    )
}

/// Runs one consumer per user at once (`None`: no `user-id`), 8 requests over 2
/// connections each, and returns their summaries.
fn run_users(target: &str, users: &[Option<String>]) -> Vec<Json> {
    let consumers: Vec<Consumer> = users
        .iter()
        .map(|u| {
            let raw = match u {
                Some(u) => format!(r#"{{"user-id": "{u}"}}"#),
                None => "{}".to_owned(),
            };
            Consumer::spawn(&[
                "--target",
                target,
                "--count",
                "8",
                "--connections",
                "2",
                "--raw-attachments",
                &raw,
            ])
        })
        .collect();
    consumers.into_iter().map(Consumer::finish).collect()
}

/// Each user's requests all land on the side `hash(user-id) % 100` picks; raising the
/// percentage with a SIGHUP reload moves the other users over, and a script that does not
/// compile is refused while the running one carries on.
#[test]
fn canary_by_user_hash_keeps_each_user_on_one_side() {
    common::python();
    let providers = Provider::start_all(&["canary", "stable"], &[]);
    let (canary, stable) = (&providers[0], &providers[1]);
    let percent = canary_percent(CANARY_BY_USER_HASH);
    assert!((1..100).contains(&percent), "{percent}");
    let (mut to_canary, mut to_stable) = (Vec::new(), Vec::new());
    for u in (1..).map(|i| format!("user-{i}")) {
        if bucket(&u) < percent {
            if to_canary.len() < 3 {
                to_canary.push(u);
            }
        } else if to_stable.len() < 3 {
            to_stable.push(u);
        }
        if to_canary.len() == 3 && to_stable.len() == 3 {
            break;
        }
    }
    let mut proxy = Proxy::start(&canary_yaml(canary, stable, CANARY_BY_USER_HASH), &[]);
    let target = proxy.listener("dubbo-out").to_string();

    let users: Vec<Option<String>> = to_canary
        .iter()
        .chain(&to_stable)
        .cloned()
        .map(Some)
        .chain([None])
        .collect();
    let summaries = run_users(&target, &users);
    for (user, s) in users.iter().zip(&summaries) {
        assert_all_ok(s, 8, &format!("user {user:?}"));
        let expected = match user {
            Some(u) if to_canary.contains(u) => want(&[("canary", 0, 8, &[("x-canary=true", 8)])]),
            _ => want(&[("stable", 0, 8, &[])]),
        };
        assert_eq!(groups(s), expected, "user {user:?}: {s:#}");
    }
    let upstream = |c: &str| proxy.counter("metamesh_upstream_rq_total", &[("cluster", c)]);
    assert_eq!((upstream("canary"), upstream("stable")), (24, 32));
    assert_eq!(
        proxy.counter("metamesh_route_rq_total", &[("route", "default")]),
        56,
        "route_to changes the destination, not the route"
    );

    // Everyone to the canary, without a restart.
    let all = with_canary_percent(CANARY_BY_USER_HASH, 100);
    let event = reload(&mut proxy, &canary_yaml(canary, stable, &all));
    assert_eq!(event["event"], "reloaded", "{event}");
    let stable_users: Vec<Option<String>> = to_stable.iter().cloned().map(Some).collect();
    for (user, s) in stable_users.iter().zip(run_users(&target, &stable_users)) {
        assert_all_ok(&s, 8, &format!("user {user:?} after the reload"));
        assert_eq!(
            groups(&s),
            want(&[("canary", 0, 8, &[("x-canary=true", 8)])]),
            "user {user:?} after the reload: {s:#}"
        );
    }

    // A broken script is refused with the Lua error; the running one stays.
    let broken = all.replace("then\n    req:route_to", "\n    req:route_to");
    assert_ne!(broken, all);
    let event = reload(&mut proxy, &canary_yaml(canary, stable, &broken));
    assert_eq!(event["event"], "reload_failed", "{event}");
    let error = event["error"].as_str().unwrap_or_default();
    assert!(error.contains("hooks[canary].script: "), "{error}");
    assert!(
        error.contains("canary:"),
        "the Lua error names the line: {error}"
    );
    let s = &run_users(&target, &stable_users[..1])[0];
    assert_all_ok(s, 8, "after the broken script was refused");
    assert_eq!(
        groups(s),
        want(&[("canary", 0, 8, &[("x-canary=true", 8)])]),
        "{s:#}"
    );
}

// ------------------------------------------------------------- reject_unauthenticated

/// Calls with a listed bearer token or Dubbo `token` reach the provider with the token's
/// principal; every other call gets Dubbo status 70 with the script's text and never
/// leaves the proxy.
#[test]
fn reject_unauthenticated_answers_calls_without_a_valid_token() {
    common::python();
    let spawned = Provider::spawn("secure", &["--log-requests"]);
    let nginx = start_nginx(&["web"], |_| {
        "        location / { return 200 \"principal=$http_x_auth_principal\\n\"; }\n".to_owned()
    });
    let provider = Provider::ready("secure", spawned);
    let provider = &provider;
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
    hooks: [authenticate]
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web-routes, hooks: [authenticate] }}
routes:
  - name: dubbo-routes
    routes:
      - name: default
        route: [{{ cluster: secure }}]
  - name: web-routes
    routes:
      - name: default
        route: [{{ cluster: web }}]
clusters:
  - {{ name: secure, endpoints: {} }}
  - {{ name: web, endpoints: [{{ address: "127.0.0.1:{}" }}] }}
{}"#,
        provider_endpoints(&[provider]),
        nginx.ports[0],
        hooks_yaml(&[("authenticate", REJECT_UNAUTHENTICATED)])
    );
    let proxy = Proxy::start(&yaml, &[]);
    let target = proxy.listener("dubbo-out");

    // (attachments, the principal the provider sees, or the rejection text)
    let cases: [(&str, Result<&str, &str>); 5] = [
        (
            r#"{"authorization": "Bearer s3cr3t-reporting"}"#,
            Ok("reporting"),
        ),
        (r#"{"token": "s3cr3t-billing"}"#, Ok("billing")),
        ("{}", Err("unauthenticated: no authorization or token")),
        (
            r#"{"authorization": "Bearer guess", "x-auth-principal": "billing"}"#,
            Err("unauthenticated: unknown token"),
        ),
        (
            r#"{"authorization": "Basic cmVwb3J0aW5nOnMzY3IzdA=="}"#,
            Err("unauthenticated: authorization is not a bearer token"),
        ),
    ];
    let consumers: Vec<Consumer> = cases
        .iter()
        .map(|(raw, _)| spawn_raw(&target.to_string(), "10", raw))
        .collect();
    for ((raw, expected), consumer) in cases.iter().zip(consumers) {
        let s = consumer.finish();
        match expected {
            Ok(principal) => {
                assert_all_ok(&s, 10, raw);
                let added = format!("x-auth-principal={principal}");
                assert_eq!(
                    groups(&s),
                    want(&[("secure", 0, 10, &[(&added, 10)])]),
                    "{raw}: {s:#}"
                );
            }
            Err(text) => {
                assert_counts(&s, raw, &[("ok", 0), ("error_count", 10), ("timeouts", 0)]);
                let errors = errors_of(&s);
                assert_eq!(errors.len(), 10, "{s:#}");
                for e in errors {
                    assert!(e.ends_with(&format!("status 70: {text}")), "{raw}: {e}");
                }
            }
        }
    }

    // Only the 20 authenticated calls reached the provider, each with its principal.
    let served = wait_for(READY_TIMEOUT, "the provider's request log", || {
        let served = provider.served();
        (served.len() >= 20).then_some(served)
    });
    assert_eq!(served.len(), 20);
    for echo in &served {
        let principal = echo["attachments"]["x-auth-principal"].as_str();
        assert!(
            matches!(principal, Some("reporting" | "billing")),
            "{echo:#}"
        );
    }
    assert_eq!(
        proxy.counter("metamesh_hook_rejected_total", &[("hook", "authenticate")]),
        30
    );
    assert_eq!(
        proxy.counter(
            "metamesh_local_reply_total",
            &[("listener", "dubbo-out"), ("reason", "rejected")]
        ),
        30
    );

    // The same hook on HTTP: 403 with the script's text.
    let url = format!("http://{}/report", proxy.listener("web"));
    let (status, h, body) = get(&url, &["-H", "authorization: Bearer s3cr3t-billing"]);
    assert_eq!(
        (status, body.as_str()),
        (200, "principal=billing\n"),
        "{h:?}"
    );
    let (status, h, body) = get(
        &url,
        &[
            "-H",
            "token: s3cr3t-reporting",
            "-H",
            "x-auth-principal: billing",
        ],
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "principal=reporting\n"),
        "{h:?}"
    );
    let (status, h, body) = get(&url, &[]);
    assert_eq!(
        (status, body.as_str()),
        (403, "unauthenticated: no authorization or token\n")
    );
    assert_eq!(
        h.get("x-metamesh-local-reply").map(String::as_str),
        Some("rejected")
    );
    assert_eq!(
        proxy.counter("metamesh_hook_rejected_total", &[("hook", "authenticate")]),
        31
    );
    assert_eq!(
        proxy.counter("metamesh_upstream_rq_total", &[("cluster", "secure")]),
        20
    );
    assert_eq!(
        proxy.counter("metamesh_hook_errors_total", &[("hook", "authenticate")]),
        0
    );
}

// ------------------------------------------------------------- add_response_attribute

/// One nginx process with a server per entry of `groups` (on `ports[i]`), each with the
/// `location` directives `locations(group)` gives.
fn start_nginx(groups: &[&str], locations: impl Fn(&str) -> String) -> Nginx {
    Nginx::start("nginx-lua", &[], groups.len(), |ports, _| {
        groups
            .iter()
            .zip(ports)
            .map(|(group, port)| {
                format!(
                    "\n    server {{\n        listen 127.0.0.1:{port};\n{}    }}\n",
                    locations(group)
                )
            })
            .collect()
    })
}

/// Two nginx servers, `a` and `b`, that echo the `x-tier` they received; `/missing`
/// answers 404 from nginx itself.
fn start_tier_nginx() -> Nginx {
    start_nginx(&["a", "b"], |group| {
        format!(
            r#"        location / {{ return 200 "group={group} tier=$http_x_tier\n"; }}
        location /missing {{ return 404 "group={group} missing\n"; }}
"#
        )
    })
}

/// Every upstream answer, success or not, carries `x-served-by` and the tier its request
/// was routed with; local replies do not pass through `on_response`.
#[test]
fn add_response_attribute_stamps_every_upstream_answer() {
    let nginx = start_tier_nginx();
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web, hooks: [served-by] }}
routes:
  - name: web
    routes:
      - name: batch
        match: {{ attributes: {{ x-group: {{ exact: b }} }} }}
        route: [{{ cluster: b }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
      - name: dead
        match: {{ attributes: {{ ":path": {{ prefix: /dead }} }} }}
        route: [{{ cluster: dead }}]
      - name: default
        route: [{{ cluster: a }}]
clusters:
  - {{ name: a, endpoints: [{{ address: "127.0.0.1:{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "127.0.0.1:{b}" }}] }}
  - {{ name: dead, connect_timeout: 300ms, endpoints: [{{ address: "127.0.0.1:{closed}" }}] }}
{hooks}"#,
        a = nginx.ports[0],
        b = nginx.ports[1],
        closed = common::closed_port(),
        hooks = hooks_yaml(&[("served-by", ADD_RESPONSE_ATTRIBUTE)])
    );
    let proxy = Proxy::start(&yaml, &[]);
    let base = format!("http://{}", proxy.listener("web"));
    let header = |h: &BTreeMap<String, String>, k: &str| h.get(k).cloned();

    let (status, h, body) = get(&format!("{base}/hello"), &[]);
    assert_eq!((status, body.as_str()), (200, "group=a tier=\n"));
    assert_eq!(header(&h, "x-served-by").as_deref(), Some("metamesh"));
    assert_eq!(header(&h, "x-tier").as_deref(), Some("standard"));

    let (status, h, body) = get(&format!("{base}/hello"), &["-H", "x-group: b"]);
    assert_eq!((status, body.as_str()), (200, "group=b tier=batch\n"));
    assert_eq!(header(&h, "x-served-by").as_deref(), Some("metamesh"));
    assert_eq!(
        header(&h, "x-tier").as_deref(),
        Some("batch"),
        "the request as it went upstream, after request_mutation"
    );

    // An upstream's own error answer passes the hook too.
    let (status, h, body) = get(&format!("{base}/missing"), &[]);
    assert_eq!((status, body.as_str()), (404, "group=a missing\n"));
    assert_eq!(header(&h, "x-served-by").as_deref(), Some("metamesh"));

    // A local reply does not.
    let (status, h, _) = get(&format!("{base}/dead"), &[]);
    assert_eq!(status, 503);
    assert_eq!(
        header(&h, "x-metamesh-local-reply").as_deref(),
        Some("upstream_connect_failure")
    );
    assert_eq!(header(&h, "x-served-by"), None, "{h:?}");
    assert_eq!(header(&h, "x-tier"), None, "{h:?}");

    assert_eq!(
        proxy.counter("metamesh_hook_calls_total", &[("hook", "served-by")]),
        3,
        "one on_response call per upstream answer"
    );
}

// ------------------------------------------------------ copy_header_between_protocols

/// The same hook on a Dubbo and an HTTP listener: both route on `x-user-id`, whichever
/// name the client used, and both upstreams receive both names.
#[test]
fn copy_header_between_protocols_gives_a_mixed_mesh_one_name() {
    common::python();
    let spawned = [
        Provider::spawn("users", &[]),
        Provider::spawn("anonymous", &[]),
    ];
    let nginx = start_nginx(&["users", "anonymous"], |group| {
        format!(
            r#"        location / {{
            return 200 "group={group} x-user-id=$http_x_user_id userId=$http_userid\n";
        }}
"#
        )
    });
    let [users, anonymous] = spawned;
    let users = Provider::ready("users", users);
    let anonymous = Provider::ready("anonymous", anonymous);
    let yaml = format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: dubbo-out, address: 127.0.0.1:0, protocol: dubbo, route_config: dubbo-routes, hooks: [copy-user-id] }}
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web-routes, hooks: [copy-user-id] }}
routes:
  - name: dubbo-routes
    routes:
      - name: users
        match: {{ attributes: {{ x-user-id: {{ present: true }} }} }}
        route: [{{ cluster: dubbo-users }}]
      - name: anonymous
        route: [{{ cluster: dubbo-anonymous }}]
  - name: web-routes
    routes:
      - name: users
        match: {{ attributes: {{ x-user-id: {{ present: true }} }} }}
        route: [{{ cluster: web-users }}]
      - name: anonymous
        route: [{{ cluster: web-anonymous }}]
clusters:
  - {{ name: dubbo-users, endpoints: {} }}
  - {{ name: dubbo-anonymous, endpoints: {} }}
  - {{ name: web-users, endpoints: [{{ address: "127.0.0.1:{}" }}] }}
  - {{ name: web-anonymous, endpoints: [{{ address: "127.0.0.1:{}" }}] }}
{}"#,
        provider_endpoints(&[&users]),
        provider_endpoints(&[&anonymous]),
        nginx.ports[0],
        nginx.ports[1],
        hooks_yaml(&[("copy-user-id", COPY_HEADER_BETWEEN_PROTOCOLS)])
    );
    let proxy = Proxy::start(&yaml, &[]);

    // Dubbo: the attachment `userId` (or `x-user-id`) arrives under both names.
    let target = proxy.listener("dubbo-out").to_string();
    let cases: [(&str, Groups); 3] = [
        (
            r#"{"userId": "d-1"}"#,
            want(&[("users", 0, 6, &[("x-user-id=d-1", 6)])]),
        ),
        (
            r#"{"x-user-id": "d-2"}"#,
            want(&[("users", 0, 6, &[("userId=d-2", 6)])]),
        ),
        ("{}", want(&[("anonymous", 0, 6, &[])])),
    ];
    let consumers: Vec<Consumer> = cases
        .iter()
        .map(|(raw, _)| spawn_raw(&target, "6", raw))
        .collect();
    for ((raw, expected), consumer) in cases.iter().zip(consumers) {
        let s = consumer.finish();
        assert_all_ok(&s, 6, raw);
        assert_eq!(&groups(&s), expected, "{raw}: {s:#}");
    }

    // HTTP: the header `x-user-id` (or `userId`) arrives under both names.
    let url = format!("http://{}/profile", proxy.listener("web"));
    for (extra, body) in [
        (
            &["-H", "x-user-id: h-1"][..],
            "group=users x-user-id=h-1 userId=h-1\n",
        ),
        (
            &["-H", "userId: h-2"][..],
            "group=users x-user-id=h-2 userId=h-2\n",
        ),
        (
            &["-H", "x-user-id: h-3", "-H", "userId: stale"][..],
            "group=users x-user-id=h-3 userId=h-3\n",
        ),
        (&[][..], "group=anonymous x-user-id= userId=\n"),
    ] {
        let (status, _, got) = get(&url, extra);
        assert_eq!((status, got.as_str()), (200, body), "{extra:?}");
    }
    let route = |rc: &str, r: &str| {
        proxy.counter(
            "metamesh_route_rq_total",
            &[("route_config", rc), ("route", r)],
        )
    };
    assert_eq!(route("dubbo-routes", "users"), 12);
    assert_eq!(route("web-routes", "users"), 3);
}

// ------------------------------------------------------------------------ mesh.yaml

/// `examples/lua/mesh.yaml` validates, carries every example file verbatim as a hook
/// script, and uses each hook; the README lists every example.
#[test]
fn mesh_yaml_wires_every_example_and_validates() {
    let dir = common::repo().join("examples/lua");
    let mesh = dir.join("mesh.yaml");
    let out = common::validate(&mesh);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("{}: ok (", mesh.display())),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&mesh).expect("read mesh.yaml");
    let b = metamesh_core::Bootstrap::from_yaml(&text).expect("mesh.yaml parses");
    let used: Vec<&str> = b
        .listeners
        .iter()
        .flat_map(|l| &l.hooks)
        .chain(
            b.routes
                .iter()
                .flat_map(|rc| &rc.routes)
                .flat_map(|r| &r.hooks),
        )
        .map(String::as_str)
        .collect();
    for (file, source) in EXAMPLES {
        let hook = b
            .hooks
            .iter()
            .find(|h| h.script == source)
            .unwrap_or_else(|| panic!("no hook in mesh.yaml has the script of {file}"));
        assert!(
            used.contains(&hook.name.as_str()),
            "hook {} ({file}) is not used",
            hook.name
        );
    }
    assert_eq!(b.hooks.len(), EXAMPLES.len());

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read examples/lua")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "lua"))
        .collect();
    files.sort();
    let mut known: Vec<String> = EXAMPLES.iter().map(|(f, _)| f.to_string()).collect();
    known.sort();
    assert_eq!(files, known, "every example has a test here");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("read README.md");
    let guide = std::fs::read_to_string(common::repo().join("docs/lua.md")).expect("read lua.md");
    for (file, source) in EXAMPLES {
        assert!(readme.contains(file), "README.md does not list {file}");
        assert!(guide.contains(file), "docs/lua.md does not show {file}");
        // The guide shows the code after the header comment, under `script: |`.
        let code = source
            .lines()
            .skip_while(|l| l.is_empty() || l.starts_with("--"))
            .filter(|l| !l.is_empty());
        for line in code {
            assert!(
                guide.contains(&format!("      {line}\n")),
                "docs/lua.md's copy of {file} lacks the line {line:?}"
            );
        }
    }
}
