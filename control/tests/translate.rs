//! Translation tests: mesh resources in (`tests/fixtures/*.yaml`), the proxy configuration
//! out, compared with `tests/fixtures/*.expected.yaml`. Every translation must also pass
//! the proxy's own validation with the built-in protocols.
//!
//! After a deliberate change of the output, `METAMESH_BLESS=1 cargo test -p
//! metamesh-control --test translate` rewrites the expected files; review the diff.

use std::path::PathBuf;

use metamesh_control::{parse_file, translate, MeshResources, Resource, ResourceError};
use metamesh_core::config::{Bootstrap, Locality, Node};
use serde_yaml_ng::Value;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str, text: &str) -> Vec<Resource> {
    parse_file(name, text).unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)))
}

fn load(names: &[&str]) -> MeshResources {
    MeshResources::from_resources(names.iter().flat_map(|n| parse(n, &read(n))))
}

fn mesh_from(text: &str) -> MeshResources {
    MeshResources::from_resources(parse("inline.yaml", text))
}

fn node(id: &str, locality: &str) -> Node {
    let mut parts = locality.split('/').map(str::to_owned);
    Node {
        id: id.into(),
        cluster: "demo".into(),
        locality: Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        },
        outbound_address: None,
    }
}

/// Drops nulls and empty lists and maps, so expected files only say what matters.
fn strip(v: Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| (k, strip(v)))
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::String(s) => !s.is_empty(),
                    Value::Sequence(s) => !s.is_empty(),
                    Value::Mapping(m) => !m.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(strip).collect()),
        other => other,
    }
}

fn to_value(b: &Bootstrap) -> Value {
    strip(serde_yaml_ng::to_value(b).expect("serializes"))
}

fn translate_ok(mesh: &MeshResources, node: &Node) -> Bootstrap {
    let b = translate(mesh, node).unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)));
    if let Err(e) = b.validate(&metamesh_protocols::builtin()) {
        panic!(
            "translation does not validate:\n{e}\n{}",
            serde_yaml_ng::to_string(&b).unwrap_or_default()
        );
    }
    b
}

/// Translates the fixture for `node` and compares with `expected`.
fn golden(fixtures: &[&str], expected: &str, node: &Node) -> Bootstrap {
    let mesh = load(fixtures);
    let b = translate_ok(&mesh, node);
    let actual = to_value(&b);
    let path = fixture_path(expected);
    if std::env::var_os("METAMESH_BLESS").is_some() {
        let text = format!(
            "# Expected translation of {} for proxy {}; see tests/translate.rs.\n{}",
            fixtures.join(", "),
            node.id,
            serde_yaml_ng::to_string(&actual).expect("serializes")
        );
        std::fs::write(&path, text).expect("writes expected file");
        return b;
    }
    let want = Bootstrap::from_yaml(&read(expected)).unwrap_or_else(|e| panic!("{expected}: {e}"));
    let want = to_value(&want);
    if actual != want {
        panic!(
            "{expected} differs.\n--- expected\n{}\n--- actual\n{}",
            serde_yaml_ng::to_string(&want).unwrap_or_default(),
            serde_yaml_ng::to_string(&actual).unwrap_or_default()
        );
    }
    b
}

fn errors_of(mesh: &MeshResources, node: &Node) -> Vec<ResourceError> {
    match translate(mesh, node) {
        Ok(b) => panic!(
            "translation succeeded:\n{}",
            serde_yaml_ng::to_string(&b).unwrap_or_default()
        ),
        Err(e) => e,
    }
}

fn has_error(errors: &[ResourceError], resource: &str, path: &str, text: &str) -> bool {
    errors
        .iter()
        .any(|e| e.resource() == resource && e.path() == path && e.message.contains(text))
}

#[test]
fn dubbo_batchjob_routing() {
    let b = golden(
        &["dubbo-batchjob.yaml"],
        "dubbo-batchjob.expected.yaml",
        &node("consumer-1", "bj/800002"),
    );
    assert_eq!(b.listeners.len(), 1);
    assert_eq!(b.listeners[0].address, "127.0.0.1:20880");
    assert_eq!(b.listeners[0].hooks, vec!["meta-dubbo.tag-batchjob"]);
    let names: Vec<&str> = b.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "outbound|20880||org.apache.dubbo.samples.basic.api.demoservice",
            "outbound|20880|v1|org.apache.dubbo.samples.basic.api.demoservice",
            "outbound|20880|v2|org.apache.dubbo.samples.basic.api.demoservice",
        ]
    );

    let notes: Vec<String> = load(&["dubbo-batchjob.yaml"])
        .notes()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        notes,
        vec![
            "dubbo-batchjob.yaml: Deployment/meta-dubbo/dubbo-sample-consumer: kind Deployment \
             (apps/v1) is not a mesh resource of this control plane; skipped"
        ]
    );
}

#[test]
fn services_sharing_a_port_share_a_listener() {
    let b = golden(
        &["shared-ports.yaml"],
        "shared-ports.expected.yaml",
        &node("frontend-1", ""),
    );
    let ports: Vec<&str> = b.listeners.iter().map(|l| l.address.as_str()).collect();
    assert_eq!(
        ports,
        vec!["127.0.0.1:80", "127.0.0.1:9090", "127.0.0.1:20880"]
    );
    // The shared Dubbo listener: every route is bound to its service, hooks run on the
    // routes of the service they are for, the rate limit only counts its service.
    let dubbo = &b.routes[2];
    assert_eq!(dubbo.name, "outbound_20880");
    let names: Vec<&str> = dubbo.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "accounts.shop.svc/writes",
            "accounts.shop.svc/everything",
            "orders.shop.svc/default"
        ]
    );
    assert!(dubbo.routes.iter().all(|r| r.match_.attributes.contains_key("interface")));
    assert!(b.listeners[2].hooks.is_empty());
    assert_eq!(dubbo.routes[2].hooks, vec!["shop.audit"]);
    let bucket = b.listeners[2].local_rate_limit.as_ref().expect("bucket");
    let m = bucket.match_.as_ref().expect("match");
    assert_eq!(m.attributes["interface"].exact.as_deref(), Some("com.example.Accounts"));
    assert_eq!(m.attributes["method"].exact.as_deref(), Some("delete"));

    let notes: Vec<String> = load(&["shared-ports.yaml"])
        .notes()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(notes[0].contains("ServiceEntry/shop/orders: spec.ports[1]: port 8080 skipped"));
    assert!(notes[1].contains("spec.ports[2]: port 8081 skipped: protocol HTTP2 is not a meta protocol"));
}

fn priorities(b: &Bootstrap) -> Vec<(String, u32)> {
    b.clusters[0]
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.priority))
        .collect()
}

#[test]
fn locality_failover_is_left_to_the_proxy() {
    let b = golden(
        &["locality-failover.yaml"],
        "locality-failover.expected.yaml",
        &node("consumer-bj", "bj/800002"),
    );
    let c = &b.clusters[0];
    let l = c.locality_lb.as_ref().expect("locality_lb");
    assert!(l.enabled && l.locality_weights.is_empty());
    assert_eq!(c.healthy_panic_threshold, Some(0));
    assert!(priorities(&b).iter().all(|(_, p)| *p == 0));
}

#[test]
fn locality_distribute_follows_the_proxy_locality() {
    let b = golden(
        &["locality-distribute.yaml"],
        "locality-distribute.expected.yaml",
        &node("consumer-bj", "bj/800002"),
    );
    let c = &b.clusters[0];
    let l = c.locality_lb.as_ref().expect("locality_lb");
    let weights: Vec<(String, u32)> = l
        .locality_weights
        .iter()
        .map(|w| (format!("{}/{}", w.locality.region, w.locality.zone), w.weight))
        .collect();
    assert_eq!(
        weights,
        vec![("bj/800002".to_owned(), 90), ("bj/800005".to_owned(), 10)]
    );
    // sh is not a destination of the rule: Istio leaves it out.
    assert_eq!(c.endpoints.len(), 2);

    // The other zone's proxy gets the mirror image.
    let b = translate_ok(&load(&["locality-distribute.yaml"]), &node("consumer-bj5", "bj/800005"));
    let l = b.clusters[0].locality_lb.as_ref().expect("locality_lb");
    let w: Vec<u32> = l.locality_weights.iter().map(|w| w.weight).collect();
    assert_eq!(w, vec![10, 90]);

    // A proxy no rule is for gets no locality weighting and every endpoint.
    let b = translate_ok(&load(&["locality-distribute.yaml"]), &node("consumer-sh", "sh/300001"));
    assert!(b.clusters[0].locality_lb.is_none());
    assert_eq!(b.clusters[0].endpoints.len(), 3);
}

#[test]
fn locality_failover_across_regions_sets_priorities_per_proxy() {
    let b = golden(
        &["locality-regions.yaml"],
        "locality-regions.bj.expected.yaml",
        &node("consumer-bj", "bj/800002"),
    );
    let l = b.clusters[0].locality_lb.as_ref().expect("locality_lb");
    assert!(!l.enabled);
    assert_eq!(
        priorities(&b),
        vec![
            ("10.0.0.1:20880".to_owned(), 0),
            ("10.0.0.2:20880".to_owned(), 1),
            ("10.1.0.1:20880".to_owned(), 2),
            ("10.2.0.1:20880".to_owned(), 3),
        ]
    );
    let b = golden(
        &["locality-regions.yaml"],
        "locality-regions.sh.expected.yaml",
        &node("consumer-sh", "sh/300001"),
    );
    assert_eq!(
        priorities(&b),
        vec![
            ("10.0.0.1:20880".to_owned(), 2),
            ("10.0.0.2:20880".to_owned(), 2),
            ("10.1.0.1:20880".to_owned(), 0),
            ("10.2.0.1:20880".to_owned(), 1),
        ]
    );
}
