//! In-process tests of the whole engine over real loopback sockets, with the small test
//! protocol from [`crate::testing`] on both sides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{CodecOptions, EncodedFrame, Protocol, Side};
use crate::config::Bootstrap;
use crate::message::MessageKind;
use crate::proxy::{Proxy, ProxyBuilder};
use crate::test_peers::{upstream, Client, Mode};
use crate::testing::{frame, payload, registry, TestProtocol};

fn config(batch: SocketAddr, user: SocketAddr, extra: &str) -> Bootstrap {
    let yaml = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: test, route_config: rc, max_frame_size: 4096 }}
routes:
  - name: rc
    routes:
      - name: batchjob
        match: {{ attributes: {{ batchjob: {{ exact: "true" }} }} }}
        route: [{{ cluster: batch }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
        response_mutation: [{{ key: x-served-by, value: metamesh }}]
        timeout: 2s
      - name: nothing-here
        match: {{ attributes: {{ dead: {{ present: true }} }} }}
        route: [{{ cluster: dead }}]
      - name: default
        match: {{ attributes: {{ user: {{ prefix: "" }} }} }}
        route: [{{ cluster: user }}]
{extra}
clusters:
  - {{ name: batch, endpoints: [{{ address: "{batch}" }}] }}
  - {{ name: user, endpoints: [{{ address: "{user}" }}] }}
  - {{ name: dead, connect_timeout: 200ms, endpoints: [{{ address: "127.0.0.1:1" }}] }}
"#
    );
    Bootstrap::from_yaml(&yaml).expect("yaml")
}

async fn start(extra: &str) -> Proxy {
    let batch = upstream("batch", Mode::Echo).await.addr;
    let user = upstream("user", Mode::Echo).await.addr;
    ProxyBuilder::new()
        .protocols(&registry())
        .start(config(batch, user, extra))
        .await
        .expect("start")
}

fn counter(proxy: &Proxy, metric: &str, labels: &str) -> u64 {
    let text = proxy.store().stats().encode();
    text.lines()
        .find(|l| l.starts_with(metric) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until some request is in flight to an upstream.
async fn wait_in_flight(proxy: &Proxy) {
    loop {
        let snap = proxy.store().load();
        let busy = snap
            .clusters()
            .iter()
            .any(|c| c.endpoints.iter().any(|e| e.pool.active_requests() > 0));
        if busy {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn routes_by_attribute_and_mutates_both_ways() {
    let proxy = start("").await;
    let mut c = Client::connect(proxy.listener_addr("in").expect("listener")).await;

    let r = c.call_id(7, &[("batchjob", "true"), ("user", "u1")]).await;
    assert_eq!(r.kind, MessageKind::Response);
    assert_eq!(r.request_id, 7, "the client's own id comes back");
    assert_eq!(r.metadata.get("served-by"), Some("batch"));
    assert_eq!(
        r.metadata.get("x-tier"),
        Some("batch"),
        "request mutation reached upstream"
    );
    assert_eq!(
        r.metadata.get("x-served-by"),
        Some("metamesh"),
        "response mutation applied"
    );
    assert_eq!(r.metadata.get("batchjob"), Some("true"));
    assert_eq!(payload(&r), b"ping");

    let r = c.call_id(8, &[("user", "u2")]).await;
    assert_eq!(r.metadata.get("served-by"), Some("user"));
    assert_eq!(r.metadata.get("x-tier"), None);
    assert_eq!(r.metadata.get("x-served-by"), None);
    assert_eq!(
        counter(&proxy, "metamesh_route_rq_total", "route=\"batchjob\""),
        1
    );
    assert_eq!(
        counter(&proxy, "metamesh_route_rq_total", "route=\"default\""),
        1
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}

/// The sum of every series of `metric` (a histogram's `_sum`, say).
fn metric_sum(proxy: &Proxy, metric: &str) -> f64 {
    let text = proxy.store().stats().encode();
    text.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn durations_count_from_the_read_to_the_answer() {
    // The recorded durations span the upstream's delay, and requests answered at once
    // add next to nothing.
    let proxy = start("").await;
    let mut c = Client::connect(proxy.listener_addr("in").expect("listener")).await;
    for id in 1..=20 {
        let r = c.call_id(id, &[("user", "quick")]).await;
        assert_eq!(r.kind, MessageKind::Response);
    }
    let quick = metric_sum(&proxy, "metamesh_downstream_rq_duration_seconds_sum");
    assert!(quick < 10.0, "20 quick requests took {quick} s in all");
    let started = std::time::Instant::now();
    let r = c
        .call_id(21, &[("user", "slow"), ("delay-ms", "150")])
        .await;
    let waited = started.elapsed().as_secs_f64();
    assert_eq!(r.kind, MessageKind::Response);
    let down = metric_sum(&proxy, "metamesh_downstream_rq_duration_seconds_sum") - quick;
    let up = metric_sum(&proxy, "metamesh_upstream_rq_duration_seconds_sum");
    assert!(
        (0.15..=waited).contains(&down),
        "downstream {down} s, client waited {waited} s"
    );
    assert!(
        up >= 0.15 && up <= quick + waited,
        "upstream {up} s, client waited {waited} s"
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn local_replies_for_no_route_connect_failure_and_timeout() {
    let proxy = start("").await;
    let mut c = Client::connect(proxy.listener_addr("in").expect("listener")).await;

    let r = c.call_id(1, &[]).await;
    assert_eq!(r.kind, MessageKind::Error);
    assert_eq!(r.request_id, 1);
    assert_eq!(r.metadata.get("reason"), Some("no_route"));

    let r = c.call_id(2, &[("dead", "1")]).await;
    assert_eq!(r.metadata.get("reason"), Some("upstream_connect_failure"));

    let r = c
        .call_id(3, &[("batchjob", "true"), ("delay-ms", "20000")])
        .await;
    assert_eq!(r.request_id, 3);
    assert_eq!(r.metadata.get("reason"), Some("timeout"));
    assert!(String::from_utf8_lossy(payload(&r)).contains("timeout after 2000ms"));

    // The connection is still usable after local replies.
    let r = c.call_id(4, &[("user", "u")]).await;
    assert_eq!(r.metadata.get("served-by"), Some("user"));

    assert_eq!(
        counter(&proxy, "metamesh_local_reply_total", "reason=\"no_route\""),
        1
    );
    assert_eq!(
        counter(&proxy, "metamesh_local_reply_total", "reason=\"timeout\""),
        1
    );
    assert_eq!(
        counter(
            &proxy,
            "metamesh_local_reply_total",
            "reason=\"upstream_connect_failure\""
        ),
        1
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn many_clients_share_upstream_connections_without_crossed_replies() {
    let proxy = start("").await;
    let addr = proxy.listener_addr("in").expect("listener");
    let mut tasks = Vec::new();
    for conn in 0..16u64 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            // Every client uses the same ids 0..N; the proxy must keep them apart.
            let n = 64u64;
            for i in 0..n {
                let key = format!("{conn}-{i}");
                let delay = ((i * 7 + conn) % 5).to_string();
                let batch = if i % 3 == 0 { "true" } else { "false" };
                c.send(
                    i,
                    &[("user", &key), ("batchjob", batch), ("delay-ms", &delay)],
                    key.as_bytes(),
                )
                .await;
            }
            let mut seen = HashMap::new();
            for _ in 0..n {
                let r = c.recv().await.expect("reply");
                assert_eq!(r.kind, MessageKind::Response, "{:?}", r.metadata);
                let key = String::from_utf8(payload(&r).to_vec()).expect("utf8");
                assert_eq!(
                    key,
                    format!("{conn}-{}", r.request_id),
                    "reply matches its request"
                );
                assert_eq!(r.metadata.get("user"), Some(key.as_str()));
                let want = if r.request_id % 3 == 0 {
                    "batch"
                } else {
                    "user"
                };
                assert_eq!(r.metadata.get("served-by"), Some(want));
                seen.insert(r.request_id, ());
            }
            assert_eq!(seen.len() as u64, n);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let clusters = proxy.store().load();
    for c in clusters.clusters().iter().filter(|c| c.name != "dead") {
        for e in &c.endpoints {
            // Each worker keeps its own connection per endpoint, shared by its clients.
            let workers = crate::worker::default_concurrency();
            let n = e.pool.connections();
            assert!(
                (1..=workers).contains(&n),
                "16 clients share {n} upstream connections, {workers} workers"
            );
        }
    }
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_frames_close_only_that_connection_and_are_counted() {
    let proxy = start("").await;
    let addr = proxy.listener_addr("in").expect("listener");
    let mut good = Client::connect(addr).await;

    // A length over the listener's 4096-byte limit.
    let mut bad = TcpStream::connect(addr).await.expect("connect");
    bad.write_all(&[0, 1, 0, 0, 1, 2, 3]).await.expect("write");
    let mut sink = Vec::new();
    let n = bad.read_to_end(&mut sink).await.expect("closed cleanly");
    assert_eq!(n, 0, "connection closed without a reply");

    // A frame with an unknown kind.
    let mut bad = TcpStream::connect(addr).await.expect("connect");
    let mut f = frame(MessageKind::Request, 1, 0, &[], b"").to_vec();
    f[12] = 99;
    bad.write_all(&f).await.expect("write");
    assert_eq!(bad.read_to_end(&mut sink).await.expect("closed"), 0);

    // A truncated frame followed by EOF.
    let mut bad = TcpStream::connect(addr).await.expect("connect");
    bad.write_all(&frame(MessageKind::Request, 1, 0, &[], b"xyz")[..10])
        .await
        .expect("write");
    bad.shutdown().await.expect("shutdown");
    assert_eq!(bad.read_to_end(&mut sink).await.expect("closed"), 0);

    let r = good.call_id(5, &[("user", "still-here")]).await;
    assert_eq!(r.metadata.get("served-by"), Some("user"));
    assert_eq!(
        counter(
            &proxy,
            "metamesh_downstream_protocol_error_total",
            "frame_too_large"
        ),
        1
    );
    assert_eq!(
        counter(
            &proxy,
            "metamesh_downstream_protocol_error_total",
            "malformed_frame"
        ),
        1
    );
    // The truncated connection's counter is bumped just before it closes; wait on the close
    // above, which happened after the count.
    assert_eq!(
        counter(
            &proxy,
            "metamesh_downstream_protocol_error_total",
            "truncated_frame"
        ),
        1
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn config_update_swaps_routes_and_keeps_in_flight_requests() {
    let batch = upstream("batch", Mode::Echo).await.addr;
    let user = upstream("user", Mode::Echo).await.addr;
    let proxy = ProxyBuilder::new()
        .protocols(&registry())
        .start(config(batch, user, ""))
        .await
        .expect("start");
    let addr = proxy.listener_addr("in").expect("listener");
    let mut slow = Client::connect(addr).await;
    slow.send(1, &[("user", "slow"), ("delay-ms", "300")], b"x")
        .await;
    wait_in_flight(&proxy).await;

    // Send user traffic to the batch cluster from now on.
    let mut swapped = config(batch, user, "");
    swapped.routes[0].routes[2].route[0].cluster = "batch".into();
    let v = proxy.update(swapped).await.expect("valid update");
    assert_eq!(v, 2);

    let mut c = Client::connect(addr).await;
    let r = c.call_id(2, &[("user", "after")]).await;
    assert_eq!(r.metadata.get("served-by"), Some("batch"));
    let r = slow.recv().await.expect("in-flight reply");
    assert_eq!(
        r.metadata.get("served-by"),
        Some("user"),
        "in-flight request kept its route"
    );

    // An invalid update is refused and the old snapshot stays.
    let mut invalid = config(batch, user, "");
    invalid.routes[0].routes[0].route[0].cluster = "missing".into();
    let err = proxy.update(invalid).await.expect_err("invalid");
    assert!(
        err.to_string()
            .contains("routes[rc].routes[batchjob].route[0].cluster"),
        "{err}"
    );
    let r = c.call_id(3, &[("user", "again")]).await;
    assert_eq!(r.metadata.get("served-by"), Some("batch"));
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn listeners_come_and_go_with_the_configuration() {
    let batch = upstream("batch", Mode::Echo).await;
    let user = upstream("user", Mode::Echo).await;
    let proxy = ProxyBuilder::new()
        .protocols(&registry())
        .start(config(batch.addr, user.addr, ""))
        .await
        .expect("start");
    let first = proxy.listener_addr("in").expect("listener");

    // A second listener appears; the first keeps its socket and its connections.
    let mut kept = Client::connect(first).await;
    assert_eq!(
        kept.call_id(1, &[("user", "u")])
            .await
            .metadata
            .get("served-by"),
        Some("user")
    );
    let mut two = config(batch.addr, user.addr, "");
    let mut extra = two.listeners[0].clone();
    extra.name = "second".into();
    two.listeners.push(extra);
    proxy.update(two.clone()).await.expect("update");
    let second = proxy.listener_addr("second").expect("bound");
    assert_ne!(second, first);
    assert_eq!(
        proxy.listener_addr("in"),
        Some(first),
        "unchanged listener kept"
    );
    let mut c2 = Client::connect(second).await;
    assert_eq!(
        c2.call_id(1, &[("batchjob", "true")])
            .await
            .metadata
            .get("served-by"),
        Some("batch")
    );
    assert_eq!(
        kept.call_id(2, &[("user", "u")])
            .await
            .metadata
            .get("served-by"),
        Some("user"),
        "connections of an unchanged listener are untouched"
    );

    // The second listener goes: a request it already read is answered, then its
    // connection closes and nothing accepts on its address any more.
    c2.send(2, &[("user", "slow"), ("delay-ms", "300")], b"x")
        .await;
    wait_in_flight(&proxy).await;
    proxy
        .update(config(batch.addr, user.addr, ""))
        .await
        .expect("update");
    let r = c2.recv().await.expect("the request in flight is answered");
    assert_eq!(r.metadata.get("served-by"), Some("user"));
    assert!(c2.recv().await.is_none(), "then the connection closes");
    assert!(
        TcpStream::connect(second).await.is_err(),
        "no longer accepting"
    );
    assert_eq!(proxy.listener_addr("second"), None);

    // A listener whose settings change on the same address keeps its socket.
    let mut changed = config(batch.addr, user.addr, "");
    changed.listeners[0].max_frame_size = Some(8192);
    changed.listeners[0].address = first.to_string();
    proxy.update(changed).await.expect("update");
    assert_eq!(proxy.listener_addr("in"), Some(first));
    let mut c = Client::connect(first).await;
    assert_eq!(
        c.call_id(1, &[("user", "u")])
            .await
            .metadata
            .get("served-by"),
        Some("user")
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let proxy = start("").await;
    let addr = proxy.listener_addr("in").expect("listener");
    let mut c = Client::connect(addr).await;
    c.send(9, &[("user", "u"), ("delay-ms", "200")], b"x").await;
    wait_in_flight(&proxy).await;
    let done = tokio::spawn(proxy.shutdown(Duration::from_secs(5)));
    let r = c.recv().await.expect("drained reply");
    assert_eq!(r.request_id, 9);
    assert_eq!(r.metadata.get("served-by"), Some("user"));
    assert!(c.recv().await.is_none(), "connection closed after draining");
    assert!(done.await.expect("join"), "drained in time");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn admin_endpoint_serves_ready_stats_and_clusters() {
    let proxy = start("").await;
    let admin = proxy.admin_addr().expect("admin");
    let get = |path: &'static str| async move {
        let mut s = TcpStream::connect(admin).await.expect("admin connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(get("/ready").await.starts_with("HTTP/1.1 200"));
    let stats = get("/stats/prometheus").await;
    assert!(stats.contains("metamesh_downstream_cx_total"), "{stats}");
    let clusters = get("/clusters").await;
    assert!(clusters.contains("batch::127.0.0.1:"), "{clusters}");
    let dump = get("/config_dump").await;
    assert!(dump.contains("\"route_config\":\"rc\""), "{dump}");
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn encode_is_zero_copy_when_nothing_changed() {
    let f = frame(MessageKind::Request, 5, 0, &[("a", "b")], b"body");
    let mut codec = TestProtocol.codec(&CodecOptions::new(Side::Downstream));
    let msg = codec
        .decode(&mut BytesMut::from(&f[..]))
        .expect("ok")
        .expect("frame");
    let mut out = EncodedFrame::new();
    codec.encode(&msg, 5, &mut out).expect("encode");
    assert_eq!(out.parts().len(), 1);
    assert_eq!(
        out.parts()[0].as_ptr(),
        msg.frame.as_ptr(),
        "the original buffer is reused"
    );
}

#[tokio::test]
async fn a_connection_has_a_bounded_number_of_requests_in_flight() {
    use crate::listener::MAX_IN_FLIGHT_PER_CONNECTION as CAP;
    let proxy = start("").await;
    let mut c = Client::connect(proxy.listener_addr("in").expect("listener")).await;
    let total = CAP as u64 + 100;
    for i in 0..total {
        c.send(i, &[("user", "u"), ("delay-ms", "400")], b"x").await;
    }
    let pool = proxy.store().load().clusters()[1].endpoints[0].pool.clone();
    // The cap is reached, and while the first batch is held upstream it is not exceeded.
    while pool.active_requests() < CAP {
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        assert!(pool.active_requests() <= CAP, "{}", pool.active_requests());
        tokio::task::yield_now().await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..total {
        let r = c.recv().await.expect("reply");
        assert_eq!(r.metadata.get("served-by"), Some("user"));
        seen.insert(r.request_id);
    }
    assert_eq!(seen.len() as u64, total, "every request was answered once");
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_response_that_cannot_be_encoded_becomes_an_internal_local_reply() {
    let extra = r#"      - name: broken
        match: { attributes: { broken: { present: true } } }
        route: [{ cluster: user }]
        response_mutation: [{ key: unencodable, value: "yes" }]"#;
    let proxy = start(extra).await;
    let addr = proxy.listener_addr("in").expect("listener");
    let mut c = Client::connect(addr).await;
    let r = c.call_id(9, &[("broken", "1")]).await;
    assert_eq!(r.kind, MessageKind::Error);
    assert_eq!(r.request_id, 9);
    assert_eq!(r.metadata.get("reason"), Some("internal"));
    // The connection carries on.
    let r = c.call_id(10, &[("user", "u")]).await;
    assert_eq!(r.kind, MessageKind::Response);
    assert_eq!(
        counter(&proxy, "metamesh_local_reply_total", "reason=\"internal\""),
        1
    );
}
