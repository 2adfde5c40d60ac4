//! The kv protocol through a whole proxy, in process: `ProxyBuilder` with the built-in
//! protocols plus kv, a YAML bootstrap with a `protocol: kv` listener, and groups of real
//! kv servers on loopback sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kv_protocol::peer::{Client, Frame, Server, SERVED_BY};
use kv_protocol::{Kind, KvProtocol, HEAD_LEN};
use metamesh_core::{Bootstrap, Proxy, ProxyBuilder};

/// Every group of servers a test routes to.
struct Servers {
    batch: [Server; 2],
    user: Server,
    stable: Server,
    canary: Server,
}

impl Servers {
    async fn start() -> Servers {
        async fn one(name: &str) -> Server {
            Server::bind(name, "127.0.0.1:0").await.expect("bind")
        }
        Servers {
            batch: [one("batch-1").await, one("batch-2").await],
            user: one("user-1").await,
            stable: one("stable").await,
            canary: one("canary").await,
        }
    }
}

/// The shape of the README's Dubbo tour, with kv clusters and a weighted split.
fn bootstrap(s: &Servers) -> Bootstrap {
    let yaml = format!(
        r#"
listeners:
  - name: kv-in
    address: 127.0.0.1:0
    protocol: kv
    route_config: kv-routes
    max_frame_size: 4096
    protocol_options: {{ max_headers: "16" }}
routes:
  - name: kv-routes
    routes:
      - name: batchjob
        match:
          attributes:
            batchjob: {{ exact: "true" }}
        route: [{{ cluster: kv-batchjob }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
        response_mutation: [{{ key: x-served-by, value: metamesh }}]
        timeout: 2s
      - name: canary
        match: {{ attributes: {{ method: {{ exact: release }} }} }}
        route: [{{ cluster: kv-stable, weight: 50 }}, {{ cluster: kv-canary, weight: 50 }}]
      - name: default
        match: {{ attributes: {{ method: {{ present: true }} }} }}
        route: [{{ cluster: kv-user }}]
clusters:
  - name: kv-batchjob
    lb_policy: round_robin
    endpoints: [{{ address: "{b1}" }}, {{ address: "{b2}" }}]
  - name: kv-user
    endpoints: [{{ address: "{user}" }}]
  - name: kv-stable
    endpoints: [{{ address: "{stable}" }}]
  - name: kv-canary
    endpoints: [{{ address: "{canary}" }}]
"#,
        b1 = s.batch[0].addr(),
        b2 = s.batch[1].addr(),
        user = s.user.addr(),
        stable = s.stable.addr(),
        canary = s.canary.addr(),
    );
    Bootstrap::from_yaml(&yaml).expect("yaml")
}

async fn start(bootstrap: Bootstrap) -> (Proxy, SocketAddr) {
    let proxy = ProxyBuilder::new()
        .protocols(&metamesh_protocols::builtin())
        .protocol(KvProtocol::shared())
        .start(bootstrap)
        .await
        .expect("proxy starts");
    let (_, addr) = proxy.listeners()[0];
    (proxy, addr)
}

async fn stop(proxy: Proxy) {
    assert!(proxy.shutdown(Duration::from_secs(5)).await, "drained");
}

/// Servers, a proxy routing to them with [`bootstrap`], and a client of the proxy.
async fn setup() -> (Servers, Proxy, Client) {
    let servers = Servers::start().await;
    let (proxy, addr) = start(bootstrap(&servers)).await;
    let client = Client::connect(addr).await.expect("connect");
    (servers, proxy, client)
}

/// How many answers each server name gave.
fn tally(answers: &[Frame]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for a in answers {
        *t.entry(a.header(SERVED_BY).unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    t
}

/// Sends `n` requests with `headers` and tallies who answered.
async fn tally_calls(
    client: &mut Client,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        answers.push(client.call(headers, b"").await.expect("call"));
    }
    tally(&answers)
}

#[tokio::test]
async fn routes_by_header_and_applies_both_mutations() {
    let (servers, proxy, mut client) = setup().await;

    let batch = client
        .call(&[("method", "put"), ("batchjob", "true")], b"k=v")
        .await
        .expect("batch call");
    assert_eq!(batch.kind, Kind::Response);
    assert!(batch
        .header(SERVED_BY)
        .is_some_and(|s| s.starts_with("batch-")));
    assert_eq!(
        batch.header("x-tier"),
        Some("batch"),
        "echoed by the server"
    );
    assert_eq!(
        batch.header("x-served-by"),
        Some("metamesh"),
        "response mutation"
    );
    assert_eq!(&batch.body[..], b"k=v");

    let seen = servers
        .batch
        .iter()
        .flat_map(Server::received)
        .collect::<Vec<_>>();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-tier"), Some("batch"), "the server saw it");
    assert_eq!(seen[0].header("batchjob"), Some("true"));

    let user = client
        .call(&[("method", "get"), ("batchjob", "false")], b"k")
        .await
        .expect("user call");
    assert_eq!(user.header(SERVED_BY), Some("user-1"));
    assert_eq!(user.header("x-tier"), None);
    assert_eq!(user.header("x-served-by"), None);
    assert_eq!(servers.user.received()[0].header("x-tier"), None);
    stop(proxy).await;
}

#[tokio::test]
async fn round_robin_spreads_a_cluster_over_both_endpoints() {
    let (_servers, proxy, mut client) = setup().await;
    let t = tally_calls(&mut client, 10, &[("batchjob", "true")]).await;
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["batch-1", "batch-2"],
        "{t:?}"
    );
    assert_eq!(t.values().sum::<usize>(), 10);
    stop(proxy).await;
}

#[tokio::test]
async fn a_weighted_split_reaches_both_clusters() {
    let (_servers, proxy, mut client) = setup().await;
    // 50/50 over 100 requests: both sides are all but certain to get some.
    let t = tally_calls(&mut client, 100, &[("method", "release")]).await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["canary", "stable"], "{t:?}");
    assert_eq!(t.values().sum::<usize>(), 100);
    stop(proxy).await;
}

#[tokio::test]
async fn no_route_is_a_kv_error_frame_and_the_connection_goes_on() {
    let (_servers, proxy, mut client) = setup().await;
    let reply = client
        .call(&[("nothing", "matches")], b"")
        .await
        .expect("answered");
    assert_eq!(reply.kind, Kind::Error);
    assert_eq!(reply.header("reason"), Some("no_route"));
    assert!(!reply.body.is_empty(), "a message for the client");
    let next = client.call(&[("method", "get")], b"").await.expect("next");
    assert_eq!(next.header(SERVED_BY), Some("user-1"));
    stop(proxy).await;
}

#[tokio::test]
async fn pings_get_pongs_from_the_proxy() {
    let (servers, proxy, mut client) = setup().await;
    for _ in 0..3 {
        let id = client.next_id();
        client.send(Kind::Ping, id, &[], b"").await.expect("ping");
        let pong = client.recv().await.expect("read").expect("a pong");
        assert_eq!((pong.kind, pong.id), (Kind::Pong, id));
    }
    assert_eq!(client.ping().await.expect("ping").kind, Kind::Pong);
    stop(proxy).await;
    assert!(servers.user.received().is_empty(), "never routed");
}

#[tokio::test]
async fn error_responses_and_oneway_requests_pass_through() {
    let (servers, proxy, mut client) = setup().await;
    let failed = client
        .call(&[("method", "get"), ("fail", "not_found")], b"k")
        .await
        .expect("answered");
    assert_eq!(failed.kind, Kind::Error);
    assert_eq!(failed.header("reason"), Some("not_found"));
    assert_eq!(&failed.body[..], b"user-1 failed the request on purpose");

    client
        .oneway(&[("method", "log"), ("line", "hello")], b"audit")
        .await
        .expect("oneway");
    let seen = servers.user.wait_received(2).await;
    assert_eq!(seen[1].kind, Kind::Oneway);
    assert_eq!(seen[1].header("line"), Some("hello"));
    assert_eq!(&seen[1].body[..], b"audit");
    stop(proxy).await;
}

#[tokio::test]
async fn clients_with_the_same_ids_share_upstream_connections() {
    let servers = Servers::start().await;
    let (proxy, addr) = start(bootstrap(&servers)).await;
    let mut tasks = Vec::new();
    for c in 0..8 {
        tasks.push(tokio::spawn(async move {
            // Every client numbers its requests 1, 2, 3, ...: the proxy rewrites them
            // on the shared upstream connection and back on the way out.
            let mut client = Client::connect(addr).await.expect("connect");
            let who = format!("client-{c}");
            for i in 0..20 {
                let body = format!("{who}/{i}");
                let reply = client
                    .call(&[("method", "get"), ("who", &who)], body.as_bytes())
                    .await
                    .expect("call");
                assert_eq!(reply.header("who"), Some(who.as_str()));
                assert_eq!(&reply.body[..], body.as_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(servers.user.received().len(), 160);
    stop(proxy).await;
}

#[tokio::test]
async fn bad_frames_get_kv_answers() {
    let servers = Servers::start().await;
    let (proxy, addr) = start(bootstrap(&servers)).await;

    // A repeated header: answered with `bad_request`, and the connection stays usable.
    let mut client = Client::connect(addr).await.expect("connect");
    let dup = b"\x00\x01a\x00\x011\x00\x01a\x00\x012";
    let mut raw = b"KV\x01\x01".to_vec();
    raw.extend_from_slice(&9u32.to_be_bytes());
    raw.extend_from_slice(&(dup.len() as u32).to_be_bytes());
    raw.extend_from_slice(&(dup.len() as u32).to_be_bytes());
    raw.extend_from_slice(dup);
    client.send_raw(&raw).await.expect("send");
    let reply = client.recv().await.expect("read").expect("an answer");
    assert_eq!((reply.kind, reply.id), (Kind::Error, 9));
    assert_eq!(reply.header("reason"), Some("bad_request"));
    let next = client.call(&[("method", "get")], b"").await.expect("next");
    assert_eq!(next.header(SERVED_BY), Some("user-1"));

    // A head announcing more than the listener's 4096 bytes: answered, then closed.
    let mut client = Client::connect(addr).await.expect("connect");
    let mut head = b"KV\x01\x01".to_vec();
    head.extend_from_slice(&10u32.to_be_bytes());
    head.extend_from_slice(&100_000u32.to_be_bytes());
    head.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(head.len(), HEAD_LEN);
    client.send_raw(&head).await.expect("send");
    let reply = client.recv().await.expect("read").expect("an answer");
    assert_eq!((reply.kind, reply.id), (Kind::Error, 10));
    assert_eq!(reply.header("reason"), Some("frame_too_large"));
    assert!(client.recv().await.expect("read").is_none(), "closed");
    stop(proxy).await;
}

/// The README's Dubbo tour, unchanged but for the listener's protocol and the endpoint
/// addresses, routes kv requests the same way: by the `interface` and `batchjob`
/// attributes, which for kv are ordinary headers.
#[tokio::test]
async fn the_dubbo_tour_config_routes_kv_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dubbo-batchjob.yaml");
    let text = std::fs::read_to_string(path).expect("the Dubbo example");
    let mut b = Bootstrap::from_yaml(&text).expect("yaml");
    assert_eq!(b.listeners[0].protocol, "dubbo");
    b.listeners[0].protocol = "kv".into();
    b.listeners[0].address = "127.0.0.1:0".into();
    b.admin = None;
    let batch = [
        Server::bind("batch-1", "127.0.0.1:0").await.expect("bind"),
        Server::bind("batch-2", "127.0.0.1:0").await.expect("bind"),
    ];
    let user = [
        Server::bind("user-1", "127.0.0.1:0").await.expect("bind"),
        Server::bind("user-2", "127.0.0.1:0").await.expect("bind"),
    ];
    for c in &mut b.clusters {
        let group = match c.name.as_str() {
            "demo-batchjob" => &batch,
            "demo-user" => &user,
            other => panic!("unexpected cluster {other}"),
        };
        assert_eq!(c.endpoints.len(), group.len());
        for (e, s) in c.endpoints.iter_mut().zip(group) {
            e.address = s.addr().to_string();
        }
    }
    let (proxy, addr) = start(b).await;
    let mut client = Client::connect(addr).await.expect("connect");
    let demo = ("interface", "org.apache.dubbo.samples.DemoService");
    let mut answers = Vec::new();
    for i in 0..12 {
        let batchjob = if i % 3 == 0 { "true" } else { "false" };
        let reply = client
            .call(&[demo, ("method", "sayHello"), ("batchjob", batchjob)], b"")
            .await
            .expect("call");
        let served_by = reply.header(SERVED_BY).unwrap_or_default();
        assert_eq!(
            served_by.starts_with("batch-"),
            batchjob == "true",
            "{reply:?}"
        );
        assert_eq!(reply.header("x-tier").is_some(), batchjob == "true");
        assert_eq!(reply.header("x-served-by").is_some(), batchjob == "true");
        answers.push(reply);
    }
    let t = tally(&answers);
    assert_eq!(
        t,
        BTreeMap::from([
            ("batch-1".to_owned(), 2),
            ("batch-2".to_owned(), 2),
            ("user-1".to_owned(), 4),
            ("user-2".to_owned(), 4),
        ])
    );
    stop(proxy).await;
}

/// Traffic policies are the core's, so a protocol from outside the project gets them
/// with no code of its own: consistent hashing on a header, retries past a dead
/// endpoint and a route rate limit.
#[tokio::test]
async fn traffic_policies_apply_to_a_custom_protocol() {
    let servers = Servers::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let yaml = format!(
        r#"
listeners:
  - {{ name: kv-in, address: 127.0.0.1:0, protocol: kv, route_config: r }}
routes:
  - name: r
    routes:
      - name: limited
        match: {{ attributes: {{ method: {{ exact: export }} }} }}
        route: [{{ cluster: kv-user }}]
        local_rate_limit: {{ max_tokens: 2, fill_interval: 1h }}
      - name: by-user
        route: [{{ cluster: kv-batchjob }}]
        hash_policy: [user-id]
        retry: {{ attempts: 2, base_interval: 1ms }}
clusters:
  - name: kv-batchjob
    lb_policy: ring_hash
    endpoints: [{{ address: "{dead}" }}, {{ address: "{b1}" }}, {{ address: "{b2}" }}]
  - name: kv-user
    endpoints: [{{ address: "{user}" }}]
"#,
        b1 = servers.batch[0].addr(),
        b2 = servers.batch[1].addr(),
        user = servers.user.addr(),
    );
    let (proxy, addr) = start(Bootstrap::from_yaml(&yaml).expect("yaml")).await;
    let mut client = Client::connect(addr).await.expect("connect");

    let mut owner = BTreeMap::new();
    for round in 0..3 {
        for u in 0..40 {
            let user = format!("user-{u}");
            let answer = client
                .call(&[("method", "get"), ("user-id", &user)], b"")
                .await
                .expect("call");
            let who = answer.header(SERVED_BY).unwrap_or("-").to_owned();
            assert!(who.starts_with("batch-"), "{user}: {answer:?}");
            let first = owner.entry(user.clone()).or_insert_with(|| who.clone());
            assert_eq!(*first, who, "{user} moved in round {round}");
        }
    }
    let spread: std::collections::BTreeSet<_> = owner.values().collect();
    assert_eq!(spread.len(), 2, "users spread over both live servers");

    let t = tally_calls(&mut client, 3, &[("method", "export")]).await;
    assert_eq!(t.get("user-1"), Some(&2), "{t:?}");
    assert_eq!(
        t.get("-"),
        Some(&1),
        "the third export is rate limited: {t:?}"
    );
    stop(proxy).await;
}
