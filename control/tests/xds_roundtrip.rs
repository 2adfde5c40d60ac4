//! A bootstrap survives the trip through xDS: `decode(encode(b)) == b`, compared as the
//! serialized bootstrap, for a bootstrap that sets every field and for every translation
//! golden file. Resources also survive being packed into `Any` and read back.

use std::path::PathBuf;

use metamesh_control::xds::{self, ResourceKind, XdsResources};
use metamesh_core::config::{Admin, Bootstrap};

mod xds_common;
use xds_common::rich;

fn json(b: &Bootstrap) -> serde_json::Value {
    serde_json::to_value(b).expect("bootstrap serializes")
}

fn round_trip(b: &Bootstrap) -> Bootstrap {
    let resources = xds::encode(b).unwrap_or_else(|e| panic!("encode: {e}"));
    let mut back = xds::decode(&resources, &b.node, b.admin.as_ref())
        .unwrap_or_else(|e| panic!("decode: {e}"));
    // Like node and admin, the capture section is the proxy's own bootstrap's.
    back.capture = b.capture.clone();
    back
}

#[test]
fn a_bootstrap_setting_every_field_round_trips() {
    let b = rich();
    let back = round_trip(&b);
    assert_eq!(json(&back), json(&b));
    back.validate(&metamesh_protocols::builtin())
        .expect("decoded bootstrap is valid");
}

#[test]
fn resources_round_trip_through_any() {
    let b = rich();
    let resources = xds::encode(&b).expect("encode");
    let packed = resources.all_named_resources();
    let kinds: Vec<ResourceKind> = packed.iter().map(|r| r.kind).collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(kinds, sorted, "kinds come in ResourceKind::ALL order");
    assert_eq!(
        packed.len(),
        b.listeners.len() + b.routes.len() + 2 * b.clusters.len() + b.hooks.len()
    );
    for r in &packed {
        assert_eq!(r.resource.type_url, r.kind.type_url());
    }
    let names: Vec<&str> = packed
        .iter()
        .filter(|r| r.kind == ResourceKind::ClusterLoadAssignment)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        b.clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
    );

    let unpacked = XdsResources::from_any(packed.iter().map(|r| &r.resource)).expect("unpack");
    assert_eq!(unpacked, resources);
    let mut back = xds::decode(&unpacked, &b.node, b.admin.as_ref()).expect("decode");
    back.capture = b.capture.clone();
    assert_eq!(json(&back), json(&b));
}

#[test]
fn node_and_admin_come_from_the_proxy() {
    let b = rich();
    let resources = xds::encode(&b).expect("encode");
    let mut node = b.node.clone();
    node.id = "other".into();
    let admin = Admin {
        address: "127.0.0.1:15001".into(),
        ..Admin::default()
    };
    let back = xds::decode(&resources, &node, Some(&admin)).expect("decode");
    assert_eq!(back.node.id, "other");
    assert_eq!(
        back.admin.map(|a| a.address).as_deref(),
        Some("127.0.0.1:15001")
    );
    assert!(back.xds.is_none());
}

#[test]
fn an_empty_bootstrap_round_trips() {
    let b = Bootstrap::default();
    let resources = xds::encode(&b).expect("encode");
    assert_eq!(resources, XdsResources::default());
    assert_eq!(json(&round_trip(&b)), json(&b));
}

/// Endpoints are grouped by locality and priority, as Envoy expects; the decoded order
/// is the grouped one (balancing does not depend on the order of the list).
#[test]
fn endpoints_come_back_grouped_by_locality_and_priority() {
    let b = Bootstrap::from_yaml(
        r#"
clusters:
  - name: c
    endpoints:
      - { address: 10.0.0.1:1, locality: { region: a } }
      - { address: 10.0.0.2:1, locality: { region: b } }
      - { address: 10.0.0.3:1, locality: { region: a } }
      - { address: 10.0.0.4:1, locality: { region: a }, priority: 1 }
"#,
    )
    .expect("yaml");
    let back = round_trip(&b);
    let order: Vec<&str> = back.clusters[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(
        order,
        ["10.0.0.1:1", "10.0.0.3:1", "10.0.0.2:1", "10.0.0.4:1"]
    );
}

/// Ring hash and Maglev settings of a cluster whose policy does not use them are inert
/// and are not carried.
#[test]
fn settings_of_another_policy_are_not_carried() {
    let b = Bootstrap::from_yaml(
        r#"
clusters:
  - name: c
    lb_policy: round_robin
    ring_hash: { minimum_ring_size: 10 }
    maglev: { table_size: 7 }
"#,
    )
    .expect("yaml");
    let back = round_trip(&b);
    assert!(back.clusters[0].ring_hash.is_none());
    assert!(back.clusters[0].maglev.is_none());
}

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".expected.yaml"))
        .collect();
    files.sort();
    files
}

/// What the control plane translates for a proxy reaches the proxy unchanged (up to the
/// grouping of endpoints by locality and priority).
#[test]
fn every_translation_golden_round_trips() {
    let files = fixtures();
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let b = Bootstrap::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let resources =
            xds::encode(&b).unwrap_or_else(|e| panic!("{}: encode: {e}", path.display()));
        let back = xds::decode(&resources, &b.node, b.admin.as_ref())
            .unwrap_or_else(|e| panic!("{}: decode: {e}", path.display()));
        let mut want = b.clone();
        // The proxy's own bootstrap decides capture; xDS carries listeners only.
        want.capture = None;
        for c in &mut want.clusters {
            let mut keys: Vec<(String, u32)> = Vec::new();
            for e in &c.endpoints {
                let k = (format!("{:?}", e.locality), e.priority);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            c.endpoints.sort_by_key(|e| {
                let k = (format!("{:?}", e.locality), e.priority);
                keys.iter().position(|x| *x == k)
            });
        }
        assert_eq!(json(&back), json(&want), "{}", path.display());
    }
}
