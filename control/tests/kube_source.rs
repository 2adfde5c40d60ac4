//! The Kubernetes source against a fake API server serving real API payloads: the first
//! list gives the mesh, watch events publish new sets, bad objects keep the last good
//! set, missing CRDs do not block, and an expired watch leads to a new list.

#[path = "kube/fake_api.rs"]
mod fake_api;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fake_api::{fixture, FakeApi};
use metamesh_control::kubernetes::{KubeOptions, KubeWatch};
use metamesh_control::source::{Loaded, Watched};
use serde_json::{json, Value};
use tokio::sync::watch;

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const NODES: &str = "/api/v1/nodes";
const AERAKI_ROUTERS: &str = "/apis/metaprotocol.aeraki.io/v1alpha1/metarouters";
const ROUTERS: &str = "/apis/metamesh.io/v1alpha1/metarouters";
const RULES: &str = "/apis/networking.istio.io/v1beta1/destinationrules";
const ENTRIES: &str = "/apis/networking.istio.io/v1/serviceentries";

const DUBBO_HOST: &str = "dubbo-sample-provider.meta-dubbo.svc.cluster.local";
const THRIFT_HOST: &str = "thrift-sample-server.meta-thrift.svc.cluster.local";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube")
}

/// The cluster of the fixtures: LuaHooks are not installed and DestinationRules are
/// served as `v1beta1` only (an Istio older than 1.22).
async fn cluster() -> FakeApi {
    let d = fixtures();
    FakeApi::start(vec![
        (SERVICES, fixture(&d, "services.json")),
        (SLICES, fixture(&d, "endpointslices.json")),
        (PODS, fixture(&d, "pods.json")),
        (NODES, fixture(&d, "nodes.json")),
        (AERAKI_ROUTERS, fixture(&d, "metarouters-aeraki.json")),
        (ROUTERS, fixture(&d, "metarouters-metamesh.json")),
        (RULES, fixture(&d, "destinationrules-v1beta1.json")),
        (ENTRIES, fixture(&d, "serviceentries.json")),
    ])
    .await
}

fn source(api: &FakeApi, namespace: Option<&str>) -> Watched {
    let url = api.url().parse().expect("URL");
    let config = kube::Config::new(url);
    let client = kube::Client::try_from(config).expect("client");
    KubeWatch::start(
        client,
        KubeOptions {
            namespace: namespace.map(str::to_owned),
            ..KubeOptions::default()
        },
    )
}

async fn next_within(
    rx: &mut watch::Receiver<Option<Arc<Loaded>>>,
    limit: Duration,
) -> Arc<Loaded> {
    tokio::time::timeout(limit, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no new set within {limit:?}"))
        .expect("source alive");
    rx.borrow().clone().expect("a set")
}

async fn first(w: &Watched) -> (watch::Receiver<Option<Arc<Loaded>>>, Arc<Loaded>) {
    let mut rx = w.subscribe();
    let current = rx.borrow_and_update().clone();
    let loaded = match current {
        Some(l) => l,
        None => {
            let waited = tokio::time::timeout(Duration::from_secs(10), rx.changed()).await;
            let errors = w.errors().borrow().clone();
            assert!(
                matches!(waited, Ok(Ok(()))),
                "no first set within 10 s; errors: {errors:?}"
            );
            rx.borrow().clone().expect("a set")
        }
    };
    (rx, loaded)
}

fn entry<'a>(l: &'a Loaded, host: &str) -> &'a metamesh_control::resources::ServiceEntry {
    l.mesh
        .service_entries()
        .iter()
        .find(|e| e.spec.hosts.iter().any(|h| h == host))
        .unwrap_or_else(|| panic!("no ServiceEntry for {host}"))
}

/// Every ServiceEntry host, sorted.
fn hosts(l: &Loaded) -> Vec<&str> {
    let mut hosts: Vec<&str> = l
        .mesh
        .service_entries()
        .iter()
        .flat_map(|e| e.spec.hosts.iter().map(String::as_str))
        .collect();
    hosts.sort_unstable();
    hosts
}

fn addresses(l: &Loaded, host: &str) -> Vec<String> {
    entry(l, host)
        .spec
        .endpoints
        .iter()
        .map(|e| e.address.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_list_gives_the_mesh() {
    let api = cluster().await;
    let w = source(&api, None);
    let (_rx, l) = first(&w).await;
    assert_eq!(l.generation, 1);

    // `kubernetes` has no meta-protocol port; `legacy-registry` is an ExternalName;
    // `httpbin-ext` is resolved by DNS.
    assert_eq!(
        hosts(&l),
        [DUBBO_HOST, "legacy-dubbo.example.com", THRIFT_HOST]
    );

    let dubbo = entry(&l, DUBBO_HOST);
    assert_eq!(dubbo.id(), "ServiceEntry/meta-dubbo/dubbo-sample-provider");
    assert_eq!(dubbo.spec.ports.len(), 1);
    assert_eq!(dubbo.spec.ports[0].number, 20880);
    assert_eq!(
        dubbo.spec.ports[0].name.as_deref(),
        Some("tcp-metaprotocol-dubbo")
    );
    assert_eq!(dubbo.spec.ports[0].target_port, Some(20880));
    // The not-ready endpoint is left out.
    assert_eq!(addresses(&l, DUBBO_HOST), ["10.244.1.5", "10.244.2.7"]);
    let v1 = &dubbo.spec.endpoints[0];
    assert_eq!(v1.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(v1.locality.as_deref(), Some("us-east-1/us-east-1a/rack-1"));
    assert_eq!(v1.ports.get("tcp-metaprotocol-dubbo"), Some(&20880));
    let v2 = &dubbo.spec.endpoints[1];
    assert_eq!(
        v2.labels.get("service_group").map(String::as_str),
        Some("batchjob")
    );
    assert_eq!(v2.locality.as_deref(), Some("us-east-1/us-east-1b"));

    // `appProtocol` names the protocol; the named target port comes from the slice;
    // the zone the Node does not label comes from the endpoint.
    let thrift = entry(&l, THRIFT_HOST);
    assert_eq!(thrift.spec.ports[0].protocol.as_deref(), Some("thrift"));
    assert_eq!(thrift.spec.ports[0].target_port, Some(9091));
    assert_eq!(
        thrift.spec.endpoints[0].locality.as_deref(),
        Some("us-east-1/us-east-1c")
    );

    // The CRD objects, DestinationRules read as v1beta1 after v1 was not served.
    assert_eq!(l.mesh.meta_routers().len(), 1);
    assert_eq!(
        l.mesh.meta_routers()[0].id(),
        "MetaRouter/meta-dubbo/test-metaprotocol-dubbo-route"
    );
    assert_eq!(l.mesh.destination_rules().len(), 1);
    assert_eq!(l.mesh.destination_rules()[0].spec.subsets.len(), 3);
    assert!(l.mesh.lua_hooks().is_empty());

    // And it all translates: the subset clusters have their endpoints.
    let config = metamesh_control::translate(&l.mesh, &metamesh_core::config::Node::default())
        .expect("translates");
    let v1_cluster = config
        .clusters
        .iter()
        .find(|c| c.name == format!("outbound|20880|v1|{DUBBO_HOST}"))
        .expect("v1 subset cluster");
    assert_eq!(v1_cluster.endpoints.len(), 1);
    assert_eq!(v1_cluster.endpoints[0].address, "10.244.1.5:20880");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_publish_a_new_set_within_a_second() {
    let api = cluster().await;
    let w = source(&api, None);
    let (mut rx, l) = first(&w).await;
    let g = l.generation;

    // An endpoint stops being ready.
    let mut slice = api.get(SLICES, "meta-dubbo/dubbo-sample-provider-x7k2p");
    slice["endpoints"][1]["conditions"] =
        json!({ "ready": false, "serving": true, "terminating": true });
    api.apply(SLICES, slice);
    let l = next_within(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(l.generation, g + 1);
    assert_eq!(addresses(&l, DUBBO_HOST), ["10.244.1.5"]);

    // A MetaRouter is modified.
    let key = "meta-dubbo/test-metaprotocol-dubbo-route";
    let mut router = api.get(AERAKI_ROUTERS, key);
    router["spec"]["routes"][0]["route"][0]["destination"]["subset"] = json!("v2");
    api.apply(AERAKI_ROUTERS, router);
    let l = next_within(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(l.generation, g + 2);
    let route = &l.mesh.meta_routers()[0].spec.routes[0].route[0];
    assert_eq!(route.destination.subset.as_deref(), Some("v2"));

    // A Service is deleted.
    api.delete(SERVICES, "meta-thrift/thrift-sample-server");
    let l = next_within(&mut rx, Duration::from_secs(1)).await;
    assert!(!hosts(&l).contains(&THRIFT_HOST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_keeps_the_last_good_set() {
    let api = cluster().await;
    let w = source(&api, None);
    let (mut rx, l) = first(&w).await;
    let g = l.generation;
    let mut errors = w.errors();

    let key = "meta-dubbo/test-metaprotocol-dubbo-route";
    let good = api.get(AERAKI_ROUTERS, key);
    let mut bad = good.clone();
    bad["spec"]["routes"][0]["route"][0]["weight"] = json!("heavy");
    api.apply(AERAKI_ROUTERS, bad);
    tokio::time::timeout(Duration::from_secs(2), errors.changed())
        .await
        .expect("an error within 2 s")
        .expect("alive");
    let text = errors.borrow().clone().expect("error text");
    assert!(
        text.contains("MetaRouter/meta-dubbo/test-metaprotocol-dubbo-route"),
        "{text}"
    );
    assert!(text.contains("spec.routes[0].route[0].weight"), "{text}");
    assert!(text.contains("metaprotocol.aeraki.io/v1alpha1"), "{text}");
    assert_eq!(rx.borrow().as_ref().map(|l| l.generation), Some(g));

    // A subset no DestinationRule defines fails validation of the whole set.
    let mut unknown = good.clone();
    unknown["spec"]["routes"][0]["route"][0]["destination"]["subset"] = json!("v9");
    api.apply(AERAKI_ROUTERS, unknown);
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            errors.changed().await.expect("alive");
            if errors.borrow().as_deref().is_some_and(|t| t.contains("v9")) {
                break;
            }
        }
    })
    .await
    .expect("a validation error within 2 s");
    assert_eq!(rx.borrow().as_ref().map(|l| l.generation), Some(g));

    // Fixed: a new set, and the error clears.
    api.apply(AERAKI_ROUTERS, good);
    let l = next_within(&mut rx, Duration::from_secs(2)).await;
    assert_eq!(l.generation, g + 1);
    assert!(errors.borrow().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_lists_again() {
    let api = cluster().await;
    let w = source(&api, None);
    let (mut rx, l) = first(&w).await;
    assert_eq!(l.mesh.service_entries().len(), 3);
    let lists = api.lists(PODS);

    // A change the watch never tells of, then the watch expires: only a new list shows
    // the change.
    let key = "meta-dubbo/dubbo-sample-provider-v1-6d9c7b8f4d-2xq8r";
    let mut pod: Value = api.get(PODS, key);
    pod["metadata"]["labels"]["service_group"] = json!("online");
    api.apply_unwatched(PODS, pod);
    api.expire_watches(PODS);
    let l = next_within(&mut rx, Duration::from_secs(10)).await;
    assert!(api.lists(PODS) > lists);
    let v1 = &entry(&l, DUBBO_HOST).spec.endpoints[0];
    assert_eq!(
        v1.labels.get("service_group").map(String::as_str),
        Some("online")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_restricts_what_is_read_and_missing_crds_do_not_block() {
    // Nothing but Services, EndpointSlices, Pods and Nodes: no CRD at all.
    let d = fixtures();
    let api = FakeApi::start(vec![
        (SERVICES, fixture(&d, "services.json")),
        (SLICES, fixture(&d, "endpointslices.json")),
        (PODS, fixture(&d, "pods.json")),
        (NODES, fixture(&d, "nodes.json")),
    ])
    .await;
    let w = source(&api, Some("meta-thrift"));
    let (_rx, l) = first(&w).await;
    assert_eq!(hosts(&l), [THRIFT_HOST]);
    assert!(l.mesh.meta_routers().is_empty());
    assert!(w.errors().borrow().is_none());
}
