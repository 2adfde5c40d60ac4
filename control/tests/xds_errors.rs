//! Decoding errors name the resource and the field path (an ADS client NACKs with them);
//! settings metamesh cannot honour are errors, not silently dropped. Encoding errors
//! name the bootstrap path.

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::{thresholds::RetryBudget, Thresholds},
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, LbConfig, LbPolicy, RoundRobinLbConfig,
    },
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, health_check, socket_address, Address, HealthCheck, HealthStatus, SocketAddress,
    TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{value::Kind, Any, Duration, UInt32Value, Value};
use metamesh_control::xds::{
    self, pb, DecodeErrors, ResourceKind, XdsResources, METADATA_NAMESPACE,
};
use metamesh_core::config::{Bootstrap, Node};

mod xds_common;
use xds_common::rich;

const NAME: &str = "outbound|20880||demo.svc";

fn encoded() -> XdsResources {
    xds::encode(&rich()).expect("encode")
}

fn decode_err(r: &XdsResources) -> DecodeErrors {
    match xds::decode(r, &Node::default(), None) {
        Ok(_) => panic!("decoding should fail"),
        Err(e) => e,
    }
}

fn lines(e: &DecodeErrors) -> Vec<String> {
    e.to_string().lines().map(str::to_owned).collect()
}

fn assert_has(e: &DecodeErrors, want: &str) {
    assert!(
        lines(e).iter().any(|l| l == want),
        "missing {want:?} in:\n{e}"
    );
}

fn assert_has_prefix(e: &DecodeErrors, prefix: &str) {
    assert!(
        lines(e).iter().any(|l| l.starts_with(prefix)),
        "missing {prefix:?}… in:\n{e}"
    );
}

/// A cluster as metamesh encodes it, renamed.
fn metamesh_cluster(name: &str) -> (Cluster, ClusterLoadAssignment) {
    let r = encoded();
    let i = r
        .clusters
        .iter()
        .position(|c| c.name == "demo-batchjob")
        .expect("cluster");
    let mut c = r.clusters[i].clone();
    let mut cla = r.endpoints[i].clone();
    c.name = name.into();
    cla.cluster_name = name.into();
    (c, cla)
}

fn one(c: Cluster, cla: Option<ClusterLoadAssignment>) -> XdsResources {
    XdsResources {
        clusters: vec![c],
        endpoints: cla.into_iter().collect(),
        ..XdsResources::default()
    }
}

#[test]
fn cluster_errors_name_the_cluster_and_the_field() {
    let (mut c, cla) = metamesh_cluster(NAME);
    let t = &mut c.circuit_breakers.as_mut().expect("breakers").thresholds[0];
    t.retry_budget = Some(RetryBudget::default());
    c.transport_socket = Some(TransportSocket::default());
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    let od = c.outlier_detection.as_mut().expect("outlier detection");
    od.enforcing_success_rate = Some(UInt32Value { value: 100 });
    od.max_ejection_time = Some(Duration {
        seconds: -1,
        nanos: 0,
    });
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 12.5 }),
        ..c.common_lb_config.clone().unwrap_or_default()
    });
    let e = decode_err(&one(c, Some(cla)));
    assert_has(
        &e,
        &format!("Cluster {NAME}: circuit_breakers.thresholds[0].retry_budget: not supported by metamesh"),
    );
    assert_has(
        &e,
        &format!("Cluster {NAME}: transport_socket: not supported by metamesh"),
    );
    assert_has(
        &e,
        &format!("Cluster {NAME}: lb_policy: CLUSTER_PROVIDED is not supported by metamesh"),
    );
    assert_has(
        &e,
        &format!(
            "Cluster {NAME}: outlier_detection.enforcing_success_rate: must be 0: \
             success-rate ejection is not supported"
        ),
    );
    assert_has(
        &e,
        &format!("Cluster {NAME}: outlier_detection.max_ejection_time: must not be negative"),
    );
    assert_has(
        &e,
        &format!(
            "Cluster {NAME}: common_lb_config.healthy_panic_threshold: 12.5 is not a whole \
             percentage from 0 to 100"
        ),
    );
    assert_eq!(e.0.len(), 6, "{e}");
    assert!(e
        .0
        .iter()
        .all(|x| x.kind == Some(ResourceKind::Cluster) && x.name == NAME));
}

#[test]
fn a_defaulted_field_must_hold_the_default() {
    let r = encoded();
    let mut c = r
        .clusters
        .iter()
        .find(|c| c.name == "demo-user")
        .expect("cluster")
        .clone();
    c.name = NAME.into();
    c.circuit_breakers.as_mut().expect("breakers").thresholds[0].max_connections =
        Some(UInt32Value { value: 5 });
    let e = decode_err(&one(c, None));
    assert_has(
        &e,
        &format!(
            "Cluster {NAME}: circuit_breakers.thresholds[0].max_connections: listed in \
             metadata.filter_metadata.metamesh.defaulted but holds 5, not metamesh's default \
             4294967295"
        ),
    );
}

#[test]
fn metadata_errors_name_the_key() {
    let (mut c, cla) = metamesh_cluster(NAME);
    let ns = c
        .metadata
        .as_mut()
        .and_then(|m| m.filter_metadata.get_mut(METADATA_NAMESPACE))
        .expect("metadata");
    ns.fields.insert(
        "colour".into(),
        Value {
            kind: Some(Kind::StringValue("red".into())),
        },
    );
    ns.fields.insert(
        "connections_per_endpoint".into(),
        Value {
            kind: Some(Kind::NumberValue(1.5)),
        },
    );
    ns.fields.insert(
        "protocol".into(),
        Value {
            kind: Some(Kind::BoolValue(true)),
        },
    );
    let e = decode_err(&one(c, Some(cla)));
    assert_has_prefix(
        &e,
        &format!("Cluster {NAME}: metadata.filter_metadata.metamesh.colour: unknown key"),
    );
    assert_has(
        &e,
        &format!(
            "Cluster {NAME}: metadata.filter_metadata.metamesh.connections_per_endpoint: 1.5 \
             is not a whole non-negative number"
        ),
    );
    assert_has(
        &e,
        &format!(
            "Cluster {NAME}: metadata.filter_metadata.metamesh.protocol: expected a string, \
             found a boolean"
        ),
    );
}

#[test]
fn locality_weights_must_agree_with_the_metadata() {
    let (c, mut cla) = metamesh_cluster(NAME);
    cla.endpoints[1].load_balancing_weight = Some(UInt32Value { value: 21 });
    cla.policy.as_mut().expect("policy").overprovisioning_factor = Some(UInt32Value { value: 150 });
    let e = decode_err(&one(c, Some(cla)));
    assert_has(
        &e,
        &format!(
            "ClusterLoadAssignment {NAME}: endpoints[1].load_balancing_weight: Some(21) \
             disagrees with the cluster's metadata.filter_metadata.metamesh.locality_lb \
             (Some(20))"
        ),
    );
    assert_has(
        &e,
        &format!(
            "ClusterLoadAssignment {NAME}: policy.overprovisioning_factor: 150 disagrees with \
             the cluster's metadata.filter_metadata.metamesh.overprovisioning_factor (200)"
        ),
    );
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    })
}

#[test]
fn endpoint_errors_name_the_assignment_and_the_endpoint() {
    let c = Cluster {
        name: NAME.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Cluster::default()
    };
    let ep = |address| LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address,
            ..Endpoint::default()
        })),
        ..LbEndpoint::default()
    };
    let mut unhealthy = ep(socket("10.0.0.4", 80));
    unhealthy.health_status = HealthStatus::Draining as i32;
    let cla = ClusterLoadAssignment {
        cluster_name: NAME.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![
                ep(socket("localhost", 80)),
                ep(socket("10.0.0.2", 70000)),
                ep(None),
                unhealthy,
            ],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    };
    let e = decode_err(&one(c, Some(cla)));
    let p = format!("ClusterLoadAssignment {NAME}: endpoints[0].lb_endpoints");
    assert_has(
        &e,
        &format!(
            "{p}[0].endpoint.address.socket_address.address: \"localhost\" is not an IP address"
        ),
    );
    assert_has(
        &e,
        &format!("{p}[1].endpoint.address.socket_address.port_value: 70000 is not a port"),
    );
    assert_has(&e, &format!("{p}[2].endpoint.address: required"));
    assert_has_prefix(
        &e,
        &format!("{p}[3].health_status: DRAINING endpoints are not supported"),
    );
}

#[test]
fn unsupported_cluster_kinds_and_checks_are_errors() {
    let base = Cluster {
        name: NAME.into(),
        ..Cluster::default()
    };
    let dns = Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        ..base.clone()
    };
    assert_has(
        &decode_err(&one(dns, None)),
        &format!(
            "Cluster {NAME}: type: STRICT_DNS clusters are not supported: use EDS (or STATIC)"
        ),
    );

    let http_check = Cluster {
        health_checks: vec![HealthCheck {
            timeout: Some(Duration::default()),
            interval: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            unhealthy_threshold: Some(UInt32Value { value: 1 }),
            healthy_threshold: Some(UInt32Value { value: 1 }),
            health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                health_check::HttpHealthCheck::default(),
            )),
            ..HealthCheck::default()
        }],
        ..base.clone()
    };
    assert_has(
        &decode_err(&one(http_check, None)),
        &format!("Cluster {NAME}: health_checks[0].http_health_check: not supported by metamesh"),
    );

    let no_timeout = Cluster {
        health_checks: vec![HealthCheck {
            health_checker: Some(health_check::HealthChecker::TcpHealthCheck(
                health_check::TcpHealthCheck::default(),
            )),
            ..HealthCheck::default()
        }],
        ..base.clone()
    };
    let e = decode_err(&one(no_timeout, None));
    assert_has(
        &e,
        &format!("Cluster {NAME}: health_checks[0].timeout: required"),
    );
    assert_has(
        &e,
        &format!("Cluster {NAME}: health_checks[0].interval: required"),
    );

    let mismatched = Cluster {
        lb_policy: LbPolicy::Maglev as i32,
        lb_config: Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig::default())),
        ..base.clone()
    };
    assert_has(
        &decode_err(&one(mismatched, None)),
        &format!("Cluster {NAME}: round_robin_lb_config: does not match lb_policy"),
    );

    let per_host = Cluster {
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds::default(), Thresholds::default()],
            per_host_thresholds: vec![Thresholds::default()],
        }),
        outlier_detection: Some(OutlierDetection {
            enforcing_consecutive_5xx: Some(UInt32Value { value: 50 }),
            ..OutlierDetection::default()
        }),
        ..base
    };
    let e = decode_err(&one(per_host, None));
    assert_has(
        &e,
        &format!("Cluster {NAME}: circuit_breakers.per_host_thresholds: not supported by metamesh"),
    );
    assert_has(
        &e,
        &format!(
            "Cluster {NAME}: circuit_breakers.thresholds[1].priority: DEFAULT thresholds given \
             more than once"
        ),
    );
    assert_has_prefix(
        &e,
        &format!("Cluster {NAME}: outlier_detection.enforcing_consecutive_5xx: must be 100"),
    );
}

#[test]
fn metamesh_resource_errors_name_the_resource_and_the_field() {
    let mut r = encoded();
    r.listeners[0].local_rate_limit = Some(pb::LocalRateLimit {
        token_bucket: Some(pb::TokenBucket {
            max_tokens: 1,
            tokens_per_fill: None,
            fill_interval: None,
        }),
        r#match: None,
    });
    r.listeners[1].local_rate_limit = Some(pb::LocalRateLimit::default());
    let route = &mut r.routes[0].routes[0];
    route
        .r#match
        .as_mut()
        .expect("match")
        .attributes
        .insert("tier".into(), pb::StringMatch::default());
    route.retry.as_mut().expect("retry").retry_on = Some(pb::RetryOnList {
        conditions: vec![1, 0, 9],
    });
    route.timeout = Some(Duration {
        seconds: 1,
        nanos: 1_000_000_000,
    });
    let e = decode_err(&r);
    assert_has(
        &e,
        "Listener dubbo-out: local_rate_limit.token_bucket.fill_interval: required",
    );
    assert_has(
        &e,
        "Listener thrift-out: local_rate_limit.token_bucket: required",
    );
    let rp = "RouteConfiguration dubbo-routes: routes[0]";
    assert_has(
        &e,
        &format!("{rp}.match.attributes.tier: one of exact, prefix, regex, present is required"),
    );
    assert_has(
        &e,
        &format!("{rp}.retry.retry_on.conditions[1]: unknown retry condition 0"),
    );
    assert_has(
        &e,
        &format!("{rp}.retry.retry_on.conditions[2]: unknown retry condition 9"),
    );
    assert_has(&e, &format!("{rp}.timeout: nanos 1000000000 out of range"));
    assert_eq!(e.0.len(), 6, "{e}");
}

#[test]
fn unknown_or_malformed_resources_are_reported() {
    let unknown = Any {
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
        value: Vec::new(),
    };
    let garbage = Any {
        type_url: xds::CLUSTER_TYPE_URL.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let e = XdsResources::from_any([&unknown, &garbage]).expect_err("must fail");
    let text = e.to_string();
    assert!(
        text.contains(
            "unknown resource type \"type.googleapis.com/envoy.config.listener.v3.Listener\""
        ),
        "{text}"
    );
    assert!(text.contains("Cluster: malformed message"), "{text}");
}

#[test]
fn a_load_assignment_given_twice_is_an_error() {
    let mut r = encoded();
    let dup = r.endpoints[0].clone();
    r.endpoints.push(dup);
    let e = decode_err(&r);
    assert_has(
        &e,
        "ClusterLoadAssignment demo-batchjob: given more than once",
    );
}

#[test]
fn encode_errors_name_the_bootstrap_path() {
    let b = Bootstrap::from_yaml(
        r#"
clusters:
  - name: c
    endpoints: [{ address: 10.0.0.1:80 }, { address: "localhost:80" }]
"#,
    )
    .expect("yaml");
    let e = xds::encode(&b).expect_err("must fail");
    assert_eq!(
        e.to_string(),
        "clusters[c].endpoints[1].address: \"localhost:80\" is not an ip:port address"
    );
}
