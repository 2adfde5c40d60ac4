//! Translation tests: mesh resources in (`tests/fixtures/*.yaml`), the proxy configuration
//! out, compared with `tests/fixtures/*.expected.yaml`. Every translation must also pass
//! the proxy's own validation with the built-in protocols.
//!
//! After a deliberate change of the output, `METAMESH_BLESS=1 cargo test -p
//! metamesh-control --test translate` rewrites the expected files; review the diff.

use std::path::PathBuf;

use metamesh_control::{parse_file, translate, MeshResources, Resource, ResourceError};
use metamesh_core::config::{Bootstrap, InterceptionMode, Locality, Node, TrafficDirection};
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
    parse_file(name, text)
        .unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)))
}

fn load(names: &[&str]) -> MeshResources {
    MeshResources::from_resources(names.iter().flat_map(|n| parse(n, &read(n))))
}

/// The notes of translating one fixture, as text.
fn notes_of(fixture: &str) -> Vec<String> {
    load(&[fixture])
        .notes()
        .iter()
        .map(ToString::to_string)
        .collect()
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
        ..Node::default()
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
    let b = translate(mesh, node)
        .unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)));
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

    let notes = notes_of("dubbo-batchjob.yaml");
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
    assert!(dubbo
        .routes
        .iter()
        .all(|r| r.match_.attributes.contains_key("interface")));
    assert!(b.listeners[2].hooks.is_empty());
    assert_eq!(dubbo.routes[2].hooks, vec!["shop.audit"]);
    // A condition of one of the services on a shared port: only for that service.
    assert!(b.listeners[2].local_rate_limit.is_none());
    let bucket = &b.listeners[2].local_rate_limit_conditions[0];
    let m = bucket.match_.as_ref().expect("match");
    assert_eq!(
        m.attributes["interface"].exact.as_deref(),
        Some("com.example.Accounts")
    );
    assert_eq!(m.attributes["method"].exact.as_deref(), Some("delete"));

    let notes = notes_of("shared-ports.yaml");
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(notes[0].contains("ServiceEntry/shop/orders: spec.ports[1]: port 8080 skipped"));
    assert!(notes[1]
        .contains("spec.ports[2]: port 8081 skipped: protocol HTTP2 is not a meta protocol"));
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
        .map(|w| {
            (
                format!("{}/{}", w.locality.region, w.locality.zone),
                w.weight,
            )
        })
        .collect();
    assert_eq!(
        weights,
        vec![("bj/800002".to_owned(), 90), ("bj/800005".to_owned(), 10)]
    );
    // sh is not a destination of the rule: Istio leaves it out.
    assert_eq!(c.endpoints.len(), 2);

    // The other zone's proxy gets the mirror image.
    let b = translate_ok(
        &load(&["locality-distribute.yaml"]),
        &node("consumer-bj5", "bj/800005"),
    );
    let l = b.clusters[0].locality_lb.as_ref().expect("locality_lb");
    let w: Vec<u32> = l.locality_weights.iter().map(|w| w.weight).collect();
    assert_eq!(w, vec![10, 90]);

    // A proxy no rule is for gets no locality weighting and every endpoint.
    let b = translate_ok(
        &load(&["locality-distribute.yaml"]),
        &node("consumer-sh", "sh/300001"),
    );
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

#[test]
fn traffic_policies_merge_as_in_istio() {
    let b = golden(
        &["traffic-policy.yaml"],
        "traffic-policy.expected.yaml",
        &node("checkout-1", "bj/800002"),
    );
    let by_name = |n: &str| {
        b.clusters
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no cluster {n}"))
    };
    use metamesh_core::config::LbPolicy;
    let all = by_name("outbound|20880||payments.prod.svc");
    assert_eq!(all.lb_policy, LbPolicy::LeastRequest);
    let cb = all.circuit_breakers.as_ref().expect("circuit breakers");
    assert_eq!(
        (
            cb.max_connections,
            cb.max_pending_requests,
            cb.max_requests,
            cb.max_retries
        ),
        (Some(100), Some(10), Some(1000), Some(3))
    );
    assert_eq!(all.healthy_panic_threshold, Some(20));
    let od = all.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(od.consecutive_errors, Some(u32::MAX));
    assert_eq!(od.consecutive_local_origin_failures, Some(2));

    let v1 = by_name("outbound|20880|v1|payments.prod.svc");
    assert_eq!(v1.lb_policy, LbPolicy::RingHash);
    assert!(v1.circuit_breakers.is_some(), "inherited from the rule");
    let v2 = by_name("outbound|20880|v2|payments.prod.svc");
    assert_eq!(v2.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(v2.healthy_panic_threshold, Some(0));

    // Port-level settings replace load balancer, pool and outlier detection.
    let batch = by_name("outbound|20881||payments.prod.svc");
    assert_eq!(batch.lb_policy, LbPolicy::Random);
    assert!(batch.circuit_breakers.is_none() && batch.outlier_detection.is_none());
    assert_eq!(batch.endpoints[1].address, "10.9.0.2:30881");

    // Routes on each port go to that port's clusters; hash keys come from the subsets.
    let r20881 = &b.routes[1];
    assert_eq!(
        r20881.routes[0].route[0].cluster,
        "outbound|20881|v1|payments.prod.svc"
    );
    assert_eq!(r20881.routes[0].hash_policy, vec!["user-id"]);
    assert_eq!(r20881.routes[1].hash_policy, vec!["order-id"]);
    assert_eq!(b.routes[0].routes[2].route[1].weight, Some(1));

    let notes = notes_of("traffic-policy.yaml");
    assert_eq!(
        notes,
        vec!["traffic-policy.yaml: DestinationRule/prod/payments: spec.trafficPolicy.tls: ignored: upstream connections are plaintext"]
    );
}

#[test]
fn parse_errors_name_file_resource_and_field_for_every_kind() {
    let cases = [
        (
            "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: { name: demo }\nspec:\n  hosts: [a]\n  routes:\n    - route:\n        - destination: { host: a }\n          weight: x\n",
            "mesh/dubbo.yaml: MetaRouter/default/demo: spec.routes[0].route[0].weight: invalid type: string \"x\", expected u32",
        ),
        (
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: { name: dr, namespace: ns }\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer: { simple: FASTEST }\n",
            "mesh/dubbo.yaml: DestinationRule/ns/dr: spec.trafficPolicy.loadBalancer.simple: unknown variant `FASTEST`, expected one of `UNSPECIFIED`, `ROUND_ROBIN`, `LEAST_REQUEST`, `LEAST_CONN`, `RANDOM`, `PASSTHROUGH`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: se }\nspec:\n  hosts: [a]\n  ports: [{ number: twenty }]\n",
            "mesh/dubbo.yaml: ServiceEntry/default/se: spec.ports[0].number: invalid type: string \"twenty\", expected u32",
        ),
        (
            "apiVersion: metamesh.io/v1alpha1\nkind: LuaHook\nmetadata: { name: h }\nspec:\n  hosts: [a]\n  script: x\n  memoryLimt: 1\n",
            "mesh/dubbo.yaml: LuaHook/default/h: spec.memoryLimt: unknown field `memoryLimt`, expected one of `hosts`, `script`, `memoryLimit`, `instructionLimit`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: se }\nspec:\n  hosts: [a]\n  endpoints: [{ address: 10.0.0.1, labels: { version: [1] } }]\n",
            "mesh/dubbo.yaml: ServiceEntry/default/se: spec.endpoints[0].labels.version: invalid type: sequence, expected a string",
        ),
    ];
    for (text, want) in cases {
        let err = parse_file("mesh/dubbo.yaml", text).expect_err(want);
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].to_string(), want);
    }
}

const GOOD_SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: demo, namespace: ns }
spec:
  hosts: [demo.ns.svc]
  ports:
    - { number: 20880, name: tcp-metaprotocol-dubbo }
  endpoints:
    - { address: 10.0.0.1, labels: { version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: demo, namespace: ns }
spec:
  host: demo.ns.svc
  subsets:
    - { name: v1, labels: { version: v1 } }
"#;

fn all_errors(text: &str) -> Vec<ResourceError> {
    let mesh = mesh_from(text);
    let errors = errors_of(&mesh, &node("p", "bj/1"));
    assert_eq!(mesh.validate().err(), Some(errors.clone()));
    errors
}

fn assert_errors(errors: &[ResourceError], resource: &str, want: &[(&str, &str)]) {
    let text = metamesh_control::error::join_errors(errors);
    for (path, msg) in want {
        assert!(
            has_error(errors, resource, path, msg),
            "missing {resource}: {path}: ...{msg}... in:\n{text}"
        );
    }
}

#[test]
fn service_entry_problems_are_all_reported() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: bad, namespace: ns }
spec:
  hosts: ["*.wild", ok.ns.svc, ok.ns.svc]
  resolution: STATIK
  ports:
    - { number: 0, name: tcp-metaprotocol-dubbo }
    - { number: 20880, name: tcp-metaprotocol-dubbo-x, protocol: HTTP }
    - { number: 20880, name: other }
  endpoints:
    - address: provider.example
      ports: { nope: 1 }
      locality: a/b/c/d
"#;
    let errors = all_errors(text);
    assert_errors(
        &errors,
        "ServiceEntry/ns/bad",
        &[
            ("spec.hosts[0]", "wildcard host \"*.wild\" is not supported"),
            ("spec.hosts[2]", "listed twice"),
            ("spec.resolution", "unknown resolution \"STATIK\""),
            ("spec.ports[0].number", "must be between 1 and 65535"),
            ("spec.ports[1]", "says dubbo but protocol says HTTP"),
            ("spec.ports[2].number", "port 20880 is listed twice"),
            ("spec.endpoints[0].address", "is not an IP address"),
            ("spec.endpoints[0].ports.nope", "no port named \"nope\""),
            ("spec.endpoints[0].locality", "more than three parts"),
        ],
    );
    assert_eq!(
        errors.len(),
        9,
        "{}",
        metamesh_control::error::join_errors(&errors)
    );
}

#[test]
fn services_of_different_protocols_cannot_share_a_port() {
    let text = format!(
        "{GOOD_SE}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: thrift, namespace: ns }
spec:
  hosts: [zz.ns.svc, demo.ns.svc]
  ports: [{ number: 20880, name: tcp-metaprotocol-thrift }]
"#
    );
    let errors = all_errors(&text);
    assert_errors(
        &errors,
        "ServiceEntry/ns/thrift",
        &[
            ("spec.hosts[1]", "host \"demo.ns.svc\" is also defined by ServiceEntry/ns/demo"),
            (
                "spec.ports[0]",
                "port 20880 of \"zz.ns.svc\" speaks thrift, but port 20880 of \"demo.ns.svc\" (ServiceEntry/ns/demo) speaks dubbo",
            ),
        ],
    );
}

#[test]
fn destination_rule_problems_are_all_reported() {
    let text = format!(
        "{GOOD_SE}---\n{}",
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: { name: other, namespace: ns }
spec:
  host: demo.ns.svc
  trafficPolicy:
    loadBalancer:
      simple: PASSTHROUGH
      consistentHash:
        httpHeaderName: x
        useSourceIp: true
        maglev: { tableSize: 65536 }
      localityLbSetting:
        distribute:
          - from: "bj*"
            to: { "bj/1": 60, "bj/*": 30 }
        failover:
          - { from: bj, to: bj }
          - { from: sh/1, to: gz }
    outlierDetection:
      consecutiveErrors: 1
      consecutive5xxErrors: 2
      interval: 5 minutes
      maxEjectionPercent: 101
    connectionPool:
      tcp: { connectTimeout: 0s }
    portLevelSettings:
      - loadBalancer: { simple: RANDOM }
  subsets:
    - { name: v1 }
    - { name: v1 }
    - { name: "" }
"#
    );
    let errors = all_errors(&text);
    let lb = "spec.trafficPolicy.loadBalancer";
    assert_errors(
        &errors,
        "DestinationRule/ns/other",
        &[
            (
                "spec.host",
                "already has a DestinationRule: DestinationRule/ns/demo",
            ),
            (lb, "set simple or consistentHash, not both"),
            (&format!("{lb}.simple"), "PASSTHROUGH is not supported"),
            (
                &format!("{lb}.consistentHash"),
                "set only one of httpHeaderName",
            ),
            (
                &format!("{lb}.consistentHash.maglev.tableSize"),
                "must be a prime number",
            ),
            (
                &format!("{lb}.localityLbSetting"),
                "set distribute or failover, not both",
            ),
            (
                &format!("{lb}.localityLbSetting.distribute[0].from"),
                "wildcard",
            ),
            (
                &format!("{lb}.localityLbSetting.distribute[0].to.bj/1"),
                "overlaps \"bj/*\"",
            ),
            (
                &format!("{lb}.localityLbSetting.distribute[0].to"),
                "weights must sum to 100, not 90",
            ),
            (
                &format!("{lb}.localityLbSetting.failover[0]"),
                "must be different regions",
            ),
            (
                &format!("{lb}.localityLbSetting.failover[1].from"),
                "region only",
            ),
            (
                "spec.trafficPolicy.outlierDetection.consecutiveErrors",
                "not both",
            ),
            (
                "spec.trafficPolicy.outlierDetection.interval",
                "invalid duration \"5 minutes\"",
            ),
            (
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                "between 0 and 100",
            ),
            (
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
                "must be greater than 0",
            ),
            (
                "spec.trafficPolicy.portLevelSettings[0].port",
                "a port is required",
            ),
            ("spec.subsets[1].name", "subset \"v1\" is defined twice"),
            ("spec.subsets[2].name", "must not be empty"),
        ],
    );
}

#[test]
fn meta_router_problems_are_all_reported() {
    let text = format!(
        "{GOOD_SE}---\n{}",
        r#"
apiVersion: metamesh.io/v1alpha1
kind: MetaRouter
metadata: { name: first, namespace: ns }
spec:
  hosts: [demo.ns.svc]
---
apiVersion: metamesh.io/v1alpha1
kind: MetaRouter
metadata: { name: second, namespace: ns }
spec:
  hosts: [demo.ns.svc, nowhere.ns.svc]
  localRateLimit:
    tokenBucket: { maxTokens: 0, fillInterval: 0s }
    conditions:
      - match: { attributes: { method: { exact: a } } }
        tokenBucket: { maxTokens: 1, fillInterval: 1s }
  routes:
    - name: r
      match:
        attributes:
          method: { exact: a, prefix: b }
          group: { regex: "(" }
      route:
        - destination: { host: ghost.ns.svc }
        - destination: { host: demo.ns.svc, subset: v9 }
          weight: 0
        - destination: { host: demo.ns.svc, port: { number: 1234 } }
          weight: 0
      mirror: { host: demo.ns.svc, subset: v1 }
      mirrorPercentage: { value: 150 }
      timeout: soon
      retries:
        attempts: 11
        retryOn: "reset,teapot"
      requestMutation: [{ key: "", value: v }]
    - name: r
      route: []
"#
    );
    let errors = all_errors(&text);
    let r = "spec.routes[0]";
    assert_errors(
        &errors,
        "MetaRouter/ns/second",
        &[
            ("spec.hosts[0]", "already routed by MetaRouter/ns/first"),
            (
                "spec.hosts[1]",
                "no ServiceEntry defines host \"nowhere.ns.svc\"",
            ),
            (
                "spec.localRateLimit.tokenBucket.maxTokens",
                "must be greater than 0",
            ),
            (
                "spec.localRateLimit.tokenBucket.fillInterval",
                "must be greater than 0",
            ),
            (
                &format!("{r}.match.attributes.method"),
                "set only one of exact, prefix, regex",
            ),
            (
                &format!("{r}.match.attributes.group.regex"),
                "invalid regex",
            ),
            (
                &format!("{r}.route[0].destination"),
                "no ServiceEntry defines host \"ghost.ns.svc\"",
            ),
            (
                &format!("{r}.route[1].destination"),
                "subset \"v9\" is not defined by DestinationRule/ns/demo (subsets: v1)",
            ),
            (
                &format!("{r}.route[2].destination"),
                "host \"demo.ns.svc\" has no meta-protocol port 1234",
            ),
            (&format!("{r}.route"), "weights must not all be 0"),
            (&format!("{r}.mirrorPercentage.value"), "between 0 and 100"),
            (&format!("{r}.timeout"), "invalid duration \"soon\""),
            (&format!("{r}.retries.attempts"), "at most 10"),
            (&format!("{r}.retries.retryOn[0]"), "set `idempotent: true`"),
            (
                &format!("{r}.retries.retryOn[1]"),
                "unknown retry condition \"teapot\"",
            ),
            (&format!("{r}.requestMutation[0].key"), "must not be empty"),
            ("spec.routes[1].name", "route \"r\" is defined twice"),
            (
                "spec.routes[1].route",
                "at least one destination is required",
            ),
        ],
    );
}

#[test]
fn lua_hook_problems_are_all_reported() {
    let text = format!(
        "{GOOD_SE}---\n{}",
        r#"
apiVersion: metamesh.io/v1alpha1
kind: LuaHook
metadata: { name: broken, namespace: ns }
spec:
  hosts: [demo.ns.svc]
  script: "function on_request(req) req:set('a', 'b')"
---
apiVersion: metamesh.io/v1alpha1
kind: LuaHook
metadata: { name: small, namespace: ns }
spec:
  script: "function on_request(req) end"
  memoryLimit: 1000
---
apiVersion: metamesh.io/v1alpha1
kind: LuaHook
metadata: { name: small, namespace: ns }
spec:
  hosts: [demo.ns.svc]
  script: "function on_request(req) end"
"#
    );
    let errors = all_errors(&text);
    assert_errors(
        &errors,
        "LuaHook/ns/broken",
        &[("spec.script", "'end' expected")],
    );
    assert_errors(
        &errors,
        "LuaHook/ns/small",
        &[
            ("spec.hosts", "at least one host is required"),
            ("spec.memoryLimit", "must be at least 262144 bytes"),
            (
                "metadata.name",
                "LuaHook/ns/small is defined twice (also in inline.yaml document",
            ),
        ],
    );
}

#[test]
fn destination_ports_follow_the_listener() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: multi, namespace: ns }
spec:
  hosts: [multi.ns.svc]
  ports:
    - { number: 20880, name: tcp-metaprotocol-dubbo-a }
    - { number: 20881, name: tcp-metaprotocol-dubbo-b }
    - { number: 9090, name: tcp-metaprotocol-thrift }
  endpoints: [{ address: 10.0.0.1 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: other, namespace: ns }
spec:
  hosts: [other.ns.svc]
  ports:
    - { number: 30001, name: tcp-metaprotocol-dubbo-a }
    - { number: 30002, name: tcp-metaprotocol-dubbo-b }
  endpoints: [{ address: 10.0.0.2 }]
---
apiVersion: metamesh.io/v1alpha1
kind: MetaRouter
metadata: { name: multi, namespace: ns }
spec:
  hosts: [multi.ns.svc]
  routes:
    - name: to-other
      match: { attributes: { method: { exact: x } } }
      route: [{ destination: { host: other.ns.svc } }]
    - name: to-thrift
      route: [{ destination: { host: multi.ns.svc, port: { number: 9090 } } }]
"#;
    let errors = all_errors(text);
    assert_errors(
        &errors,
        "MetaRouter/ns/multi",
        &[
            (
                "spec.routes[0].route[0].destination",
                "host \"other.ns.svc\" has several dubbo ports (30001, 30002): set port.number",
            ),
            (
                "spec.routes[0].route[0].destination",
                "host \"other.ns.svc\" has no thrift port",
            ),
            (
                "spec.routes[1].route[0].destination",
                "port 9090 of \"multi.ns.svc\" speaks thrift, but this route serves dubbo traffic (port 20880)",
            ),
        ],
    );
}

#[test]
fn outbound_address_comes_from_the_node() {
    let mesh = mesh_from(GOOD_SE);
    let mut n = node("p", "");
    n.outbound_address = Some("::1".into());
    let b = translate_ok(&mesh, &n);
    assert_eq!(b.listeners[0].address, "[::1]:20880");
    n.outbound_address = Some("localhost".into());
    let errors = errors_of(&mesh, &n);
    assert_eq!(
        errors[0].to_string(),
        "node p: outbound_address: \"localhost\" is not an IP address"
    );
}

#[test]
fn a_redirected_proxy_gets_outbound_listeners_without_sockets() {
    let mut n = node("frontend-1", "");
    n.interception_mode = InterceptionMode::Redirect;
    let b = golden(
        &["shared-ports.yaml"],
        "shared-ports.redirect.expected.yaml",
        &n,
    );
    let listeners: Vec<(&str, &str, bool, TrafficDirection)> = b
        .listeners
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.address.as_str(),
                l.bind_to_port,
                l.traffic_direction,
            )
        })
        .collect();
    let out = TrafficDirection::Outbound;
    assert_eq!(
        listeners,
        [
            ("outbound_80", "0.0.0.0:80", false, out),
            ("outbound_9090", "0.0.0.0:9090", false, out),
            ("outbound_20880", "0.0.0.0:20880", false, out),
        ]
    );
    // Everything else is what the same proxy gets without capture.
    let plain = translate_ok(&load(&["shared-ports.yaml"]), &node("frontend-1", ""));
    assert_eq!(b.routes.len(), plain.routes.len());
    assert_eq!(to_value(&b)["clusters"], to_value(&plain)["clusters"]);
    assert_eq!(to_value(&b)["routes"], to_value(&plain)["routes"]);
}

#[test]
fn an_empty_mesh_translates_to_an_empty_proxy() {
    let b = translate_ok(&MeshResources::new(), &node("p", "bj/1"));
    assert!(b.listeners.is_empty() && b.clusters.is_empty() && b.routes.is_empty());
}

#[test]
fn custom_protocols_can_be_declared() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: rpc, namespace: ns }
spec:
  hosts: [rpc.ns.svc]
  ports: [{ number: 8000, name: tcp-metaprotocol-trpc-main }]
  endpoints: [{ address: 10.0.0.1 }]
"#;
    let builtin = mesh_from(text);
    assert!(translate(&builtin, &node("p", ""))
        .expect("translates")
        .listeners
        .is_empty());
    assert!(builtin.notes()[0]
        .message
        .contains("meta protocol \"trpc\" is not known"));

    let custom = mesh_from(text).with_protocols(["dubbo", "trpc"]);
    let b = translate(&custom, &node("p", "")).expect("translates");
    assert_eq!(b.listeners[0].protocol, "trpc");
    assert_eq!(b.clusters[0].protocol.as_deref(), Some("trpc"));
    assert!(custom.notes().is_empty());
}

/// Every fixture with one line removed, or cut short, must give a translation or errors,
/// never a panic; and whatever translates must pass the proxy's validation.
#[test]
fn mangled_fixtures_never_panic() {
    let registry = metamesh_protocols::builtin();
    let mut translated = 0;
    for name in [
        "dubbo-batchjob.yaml",
        "shared-ports.yaml",
        "locality-failover.yaml",
        "locality-distribute.yaml",
        "locality-regions.yaml",
        "traffic-policy.yaml",
    ] {
        let text = read(name);
        let lines: Vec<&str> = text.lines().collect();
        let mut variants = Vec::new();
        for i in 0..lines.len() {
            let mut v = lines.clone();
            v.remove(i);
            variants.push(v.join("\n"));
            variants.push(lines[..i].join("\n"));
            let mut v = lines.clone();
            v[i] = "  x: [";
            variants.push(v.join("\n"));
        }
        for v in variants {
            let Ok(resources) = parse_file(name, &v) else {
                continue;
            };
            let mesh = MeshResources::from_resources(resources);
            let _ = mesh.notes();
            for n in [
                node("a", "bj/800002"),
                node("b", "sh/300001/x"),
                node("c", ""),
            ] {
                if let Ok(b) = translate(&mesh, &n) {
                    translated += 1;
                    if let Err(e) = b.validate(&registry) {
                        panic!("{name}: a translation does not validate: {e}\n--- input\n{v}");
                    }
                }
            }
        }
    }
    assert!(translated > 100, "only {translated} variants translated");
}

#[test]
fn aeraki_demo_resources() {
    let b = golden(
        &["aeraki-demo.yaml"],
        "aeraki-demo.expected.yaml",
        &node("consumer", "bj/800002"),
    );
    // Consistent hashing on the `method` attribute reaches the routes (Aeraki's reading
    // of httpHeaderName).
    assert!(b.routes[1]
        .routes
        .iter()
        .all(|r| r.hash_policy == vec!["method"]));
    // A rate limit without routes keeps the default route.
    assert_eq!(b.routes[0].routes[0].name, "default");
    assert_eq!(
        b.listeners[0]
            .local_rate_limit
            .as_ref()
            .map(|t| t.tokens_per_fill),
        Some(Some(2))
    );
    let notes = notes_of("aeraki-demo.yaml");
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(notes[0].contains("Deployment/meta-thrift/thrift-sample-server-v1"));
    assert!(notes[1]
        .contains("ServiceEntry/meta-dubbo/dubbo-demoservice: spec.workloadSelector: ignored"));
}

#[test]
fn a_validated_mesh_translates_for_many_proxies() {
    let mesh = load(&["locality-regions.yaml"]);
    let valid = mesh.validated().expect("valid");
    for n in [
        node("a", "bj/800002"),
        node("b", "sh/300001"),
        node("c", "gz/500001/x"),
    ] {
        let once = valid.translate(&n).expect("translates");
        let checked = translate(&mesh, &n).expect("translates");
        assert_eq!(to_value(&once), to_value(&checked));
    }
    let bad = mesh_from("apiVersion: metamesh.io/v1alpha1\nkind: LuaHook\nmetadata: { name: x }\n");
    assert!(bad.validated().is_err());
}
