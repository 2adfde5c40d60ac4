//! In-process tests of Lua hooks on the request path, over real loopback sockets with the
//! test protocol: attributes set before the match steer routing, `route_to`, `reject`,
//! `on_response`, failures answered locally, and hot replacement.

use crate::config::Bootstrap;
use crate::message::MessageKind;
use crate::test_peers::{metric, start, upstream, who, Client, Mode};

fn yaml(a: &str, b: &str, script: &str) -> String {
    let script = script.replace('\n', "\n      ");
    format!(
        r#"
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: test, route_config: rc, hooks: [outer] }}
routes:
  - name: rc
    routes:
      - name: to-b
        match: {{ attributes: {{ tier: {{ exact: b }} }} }}
        route: [{{ cluster: b }}]
        hooks: [inner]
      - name: to-a
        match: {{ attributes: {{ tier: {{ exact: a }} }} }}
        route: [{{ cluster: a }}]
clusters:
  - {{ name: a, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{b}" }}] }}
  - {{ name: only-by-hook, endpoints: [{{ address: "{b}" }}] }}
hooks:
  - name: outer
    script: |
      {script}
  - name: inner
    script: |
      function on_request(req) req:set("inner", "ran") end
      function on_response(resp, req) resp:set("order", (resp:get("order") or "") .. "inner,") end
"#
    )
}

const OUTER: &str = r#"
function on_request(req)
  local user = req:get("user")
  if user == nil then return req:reject("no user") end
  if user == "crash" then error("boom") end
  if user == "vip" then req:route_to("b") return end
  if user == "hidden" then req:route_to("only-by-hook") return end
  if user == "lost" then req:route_to("nowhere") return end
  if user == "nomatch" then req:route_to("a") return end
  req:set("tier", user == "bob" and "b" or "a")
end
function on_response(resp, req)
  resp:set("order", (resp:get("order") or "") .. "outer,")
  resp:set("x-user", req:get("user"))
  if req:get("user") == "bad-response" then error("response boom") end
end
"#;

#[tokio::test]
async fn hooks_steer_routing_reject_and_see_responses() {
    let a = upstream("a", Mode::Echo).await;
    let b = upstream("b", Mode::Echo).await;
    let proxy = start(&yaml(&a.addr.to_string(), &b.addr.to_string(), OUTER)).await;
    let mut c = Client::connect(proxy.listener_addr("in").expect("listener")).await;

    // An attribute the listener hook sets before the match picks the route; the route's
    // own hook runs after it; responses pass the hooks inside out.
    let r = c.call(&[("user", "bob")]).await;
    assert_eq!(who(&r), "b");
    assert_eq!(
        r.metadata.get("tier"),
        Some("b"),
        "the upstream saw the hook's attribute"
    );
    assert_eq!(r.metadata.get("inner"), Some("ran"));
    assert_eq!(r.metadata.get("order"), Some("inner,outer,"));
    assert_eq!(r.metadata.get("x-user"), Some("bob"));
    let r = c.call(&[("user", "alice")]).await;
    assert_eq!(who(&r), "a");
    assert_eq!(r.metadata.get("order"), Some("outer,"));

    // route_to overrides the route's destination; without any match it still goes.
    let r = c.call(&[("user", "vip"), ("tier", "a")]).await;
    assert_eq!(who(&r), "b");
    let r = c.call(&[("user", "nomatch")]).await;
    assert_eq!(who(&r), "a", "route_to with no matching route");
    let r = c.call(&[("user", "hidden")]).await;
    assert_eq!(
        who(&r),
        "b",
        "a cluster no route names takes the listener's protocol"
    );

    // Rejections and failures are answered locally; the connection goes on.
    let r = c.call(&[]).await;
    assert_eq!(who(&r), "local:rejected");
    assert_eq!(crate::testing::payload(&r), b"no user");
    let r = c.call(&[("user", "crash")]).await;
    assert_eq!(who(&r), "local:hook_error");
    assert_eq!(
        crate::testing::payload(&r),
        b"hook outer failed",
        "the script's error text stays in the proxy's log"
    );
    let r = c.call(&[("user", "lost")]).await;
    assert_eq!(who(&r), "local:hook_error");
    let r = c.call(&[("user", "bad-response")]).await;
    assert_eq!(who(&r), "local:hook_error");
    assert_eq!(who(&c.call(&[("user", "bob")]).await), "b");

    assert_eq!(
        metric(&proxy, "metamesh_hook_rejected_total", "hook=\"outer\""),
        1
    );
    assert_eq!(
        metric(&proxy, "metamesh_hook_errors_total", "reason=\"error\""),
        2
    );
    assert_eq!(
        metric(
            &proxy,
            "metamesh_local_reply_total",
            "reason=\"hook_error\""
        ),
        3
    );
    assert_eq!(
        metric(&proxy, "metamesh_route_rq_total", "route=\"hook_route_to\""),
        3,
        "nomatch, hidden and lost went by the hook route"
    );
}

#[tokio::test]
async fn a_new_script_takes_over_without_failing_requests_in_flight() {
    let a = upstream("a", Mode::Echo).await;
    let b = upstream("b", Mode::Echo).await;
    let (a, b) = (a.addr.to_string(), b.addr.to_string());
    let v1 = r#"
function on_request(req) req:set("tier", "a") req:set("version", "1") end
function on_response(resp, req) resp:set("seen-by", "v1") end
"#;
    let v2 = r#"
function on_request(req) req:set("tier", "b") req:set("version", "2") end
function on_response(resp, req) resp:set("seen-by", "v2") end
"#;
    let proxy = start(&yaml(&a, &b, v1)).await;
    let addr = proxy.listener_addr("in").expect("listener");
    let mut c = Client::connect(addr).await;
    assert_eq!(who(&c.call(&[]).await), "a");

    // A slow request starts under v1 ...
    let mut slow = Client::connect(addr).await;
    let in_flight = tokio::spawn(async move { slow.call(&[("delay-ms", "500")]).await });
    // The first call ran on_request and on_response; the slow one's on_request is third.
    while metric(&proxy, "metamesh_hook_calls_total", "hook=\"outer\"") < 3 {
        tokio::task::yield_now().await;
    }
    // ... v2 replaces it ...
    let store = proxy.store().clone();
    store
        .update(Bootstrap::from_yaml(&yaml(&a, &b, v2)).expect("yaml"))
        .expect("v2 compiles");
    let r = c.call(&[]).await;
    assert_eq!(
        (who(&r), r.metadata.get("seen-by")),
        ("b".into(), Some("v2"))
    );
    // ... and the request that started under v1 ends under v1.
    let r = in_flight.await.expect("join");
    assert_eq!(r.metadata.get("version"), Some("1"));
    assert_eq!(r.metadata.get("seen-by"), Some("v1"));

    // A script that does not compile is refused with the Lua error; v2 stays.
    let broken = yaml(&a, &b, "function on_request(req)\n  req:set(\"x\"\nend");
    let err = store
        .update(Bootstrap::from_yaml(&broken).expect("yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("hooks[outer].script:"), "{err}");
    assert!(err.contains("outer:3:"), "{err}");
    let r = c.call(&[]).await;
    assert_eq!(r.metadata.get("seen-by"), Some("v2"));
}

#[tokio::test]
async fn a_runaway_hook_fails_its_request_and_others_carry_on() {
    let a = upstream("a", Mode::Echo).await;
    let b = upstream("b", Mode::Echo).await;
    let script = r#"
function on_request(req)
  local kind = req:get("kind")
  if kind == "loop" then while true do end end
  if kind == "bomb" then local s = string.rep("x", 1 << 30) end
  if kind == "deep" then local function f(n) return f(n + 1) + 1 end f(1) end
  req:set("tier", "a")
end
"#;
    let proxy = start(&yaml(&a.addr.to_string(), &b.addr.to_string(), script)).await;
    let mut c = Client::connect(proxy.listener_addr("in").expect("listener")).await;
    for kind in ["loop", "bomb", "deep"] {
        let r = c.call(&[("kind", kind)]).await;
        assert_eq!(who(&r), "local:hook_error", "{kind}");
        for _ in 0..20 {
            assert_eq!(who(&c.call(&[("kind", "fine")]).await), "a", "after {kind}");
        }
    }
    assert_eq!(
        metric(&proxy, "metamesh_hook_errors_total", "reason=\"budget\""),
        1
    );
    assert!(metric(&proxy, "metamesh_hook_errors_total", "reason=\"memory\"") >= 1);
    assert_eq!(
        c.call(&[("kind", "fine")]).await.kind,
        MessageKind::Response
    );
}
