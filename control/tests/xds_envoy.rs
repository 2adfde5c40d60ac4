//! The encoded clusters and endpoints are what an Envoy user expects to read, and
//! clusters written the Envoy way (no metamesh metadata) decode with Envoy's meaning.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{
        common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, CommonLbConfig,
        DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy,
    },
    CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, health_check, socket_address, Address, Locality,
    RoutingPriority, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{value::Kind, Duration, UInt32Value, Value};
use metamesh_control::xds::{
    self, XdsResources, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL,
    HEARTBEAT_HEALTH_CHECKER, METADATA_NAMESPACE,
};
use metamesh_core::config::{Bootstrap, ConfigDuration, Node};
use prost::Name;

mod xds_common;
use xds_common::rich;

fn encoded() -> XdsResources {
    xds::encode(&rich()).expect("encode")
}

fn cluster<'a>(r: &'a XdsResources, name: &str) -> &'a Cluster {
    r.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn assignment<'a>(r: &'a XdsResources, name: &str) -> &'a ClusterLoadAssignment {
    r.endpoints
        .iter()
        .find(|c| c.cluster_name == name)
        .unwrap_or_else(|| panic!("no assignment {name}"))
}

fn secs(s: i64, ms: i32) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: ms * 1_000_000,
    })
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn meta(c: &Cluster) -> &HashMap<String, Value> {
    &c.metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE))
        .expect("metamesh metadata")
        .fields
}

fn string(v: &Value) -> &str {
    match &v.kind {
        Some(Kind::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn number(v: &Value) -> f64 {
    match &v.kind {
        Some(Kind::NumberValue(n)) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match &v.kind {
        Some(Kind::ListValue(l)) => l.values.iter().map(|v| string(v).to_owned()).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

#[test]
fn envoy_type_urls_are_the_messages_own() {
    assert_eq!(Cluster::type_url(), CLUSTER_TYPE_URL);
    assert_eq!(
        ClusterLoadAssignment::type_url(),
        CLUSTER_LOAD_ASSIGNMENT_TYPE_URL
    );
}

#[test]
fn a_cluster_is_an_eds_cluster_over_ads_with_envoy_fields_set() {
    let r = encoded();
    let c = cluster(&r, "demo-batchjob");
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    let eds = c.eds_cluster_config.as_ref().expect("eds config");
    assert!(matches!(
        eds.eds_config
            .as_ref()
            .and_then(|s| s.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(
        eds.service_name, "",
        "the assignment is named after the cluster"
    );
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
    assert_eq!(c.connect_timeout, secs(0, 250));

    let cb = c.circuit_breakers.as_ref().expect("circuit breakers");
    assert_eq!(cb.thresholds.len(), 1);
    let t = &cb.thresholds[0];
    assert_eq!(t.priority, RoutingPriority::Default as i32);
    assert_eq!(t.max_connections, u32v(10));
    assert_eq!(t.max_pending_requests, u32v(20));
    assert_eq!(t.max_requests, u32v(100));
    assert_eq!(t.max_retries, u32v(5));

    let od = c.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(od.consecutive_5xx, u32v(7));
    assert!(od.split_external_local_origin_errors);
    assert_eq!(od.consecutive_local_origin_failure, u32v(3));
    assert_eq!(od.interval, secs(5, 0));
    assert_eq!(od.base_ejection_time, secs(15, 0));
    assert_eq!(od.max_ejection_time, secs(120, 0));
    assert_eq!(od.max_ejection_percent, u32v(50));
    assert_eq!(
        od.enforcing_success_rate,
        u32v(0),
        "Envoy would eject on success rate"
    );

    assert_eq!(c.health_checks.len(), 1);
    let h = &c.health_checks[0];
    assert_eq!(h.timeout, secs(0, 300));
    assert_eq!(h.interval, secs(2, 0));
    assert_eq!(h.no_traffic_interval, secs(2, 0));
    assert_eq!(h.unhealthy_threshold, u32v(4));
    assert_eq!(h.healthy_threshold, u32v(2));
    match &h.health_checker {
        Some(health_check::HealthChecker::CustomHealthCheck(c)) => {
            assert_eq!(c.name, HEARTBEAT_HEALTH_CHECKER)
        }
        other => panic!("heartbeat check expected, got {other:?}"),
    }

    let common = c.common_lb_config.as_ref().expect("common lb config");
    assert_eq!(common.healthy_panic_threshold.map(|p| p.value), Some(0.0));
    assert!(matches!(
        common.locality_config_specifier,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ));

    let m = meta(c);
    assert_eq!(string(&m["protocol"]), "dubbo");
    assert_eq!(number(&m["connections_per_endpoint"]), 4.0);
    assert_eq!(number(&m["max_frame_size"]), 4_194_304.0);
    assert_eq!(number(&m["overprovisioning_factor"]), 200.0);
    assert!(m.contains_key("locality_lb"));
    assert!(!m.contains_key("defaulted"), "everything was set: {m:?}");
}

#[test]
fn endpoints_are_grouped_by_locality_and_priority_with_weights() {
    let r = encoded();
    let cla = assignment(&r, "demo-batchjob");
    assert_eq!(
        cla.policy.as_ref().and_then(|p| p.overprovisioning_factor),
        u32v(200)
    );
    type Group<'a> = (&'a str, &'a str, &'a str, u32, Option<u32>, usize);
    let groups: Vec<Group> = cla
        .endpoints
        .iter()
        .map(|g| {
            let l = g.locality.as_ref().expect("locality");
            (
                l.region.as_str(),
                l.zone.as_str(),
                l.sub_zone.as_str(),
                g.priority,
                g.load_balancing_weight.map(|w| w.value),
                g.lb_endpoints.len(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("bj", "800002", "", 0, Some(80), 2),
            ("bj", "800005", "s2", 0, Some(20), 1),
            ("sh", "900001", "", 1, None, 1),
        ]
    );
    let first = &cla.endpoints[0].lb_endpoints[0];
    assert_eq!(first.load_balancing_weight, u32v(3));
    assert_eq!(cla.endpoints[0].lb_endpoints[1].load_balancing_weight, None);
    let Some(HostIdentifier::Endpoint(ep)) = &first.host_identifier else {
        panic!("endpoint expected");
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        panic!("socket address expected");
    };
    assert_eq!(sa.address, "10.0.0.1");
    assert_eq!(
        sa.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(20880))
    );
    let labels = &first
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE))
        .expect("endpoint metadata")
        .fields["labels"];
    let Some(Kind::StructValue(labels)) = &labels.kind else {
        panic!("labels struct expected");
    };
    assert_eq!(string(&labels.fields["service_group"]), "batchjob");
    assert_eq!(string(&labels.fields["version"]), "v1");

    let user = assignment(&r, "demo-user");
    let v6 = &user.endpoints[1].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(ep)) = &v6.host_identifier else {
        panic!("endpoint expected");
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        panic!("socket address expected");
    };
    assert_eq!(sa.address, "fd00::1");
}

#[test]
fn unset_settings_are_written_with_metamesh_defaults_and_listed() {
    let r = encoded();
    let user = cluster(&r, "demo-user");
    assert_eq!(
        user.connect_timeout,
        secs(1, 0),
        "metamesh's 1s, not Envoy's 5s"
    );
    let t = &user.circuit_breakers.as_ref().expect("breakers").thresholds[0];
    assert_eq!(t.max_requests, u32v(u32::MAX));
    assert_eq!(
        t.max_connections,
        u32v(u32::MAX),
        "unset is unlimited, not 1024"
    );
    let h = &user.health_checks[0];
    assert!(matches!(
        h.health_checker,
        Some(health_check::HealthChecker::TcpHealthCheck(_))
    ));
    assert_eq!(h.timeout, secs(1, 0));
    assert_eq!(h.interval, secs(5, 0));
    assert_eq!(h.unhealthy_threshold, u32v(3));
    assert_eq!(h.healthy_threshold, u32v(1));
    let defaulted = strings(&meta(user)["defaulted"]);
    assert_eq!(
        defaulted,
        [
            "connect_timeout",
            "health_checks[0].timeout",
            "health_checks[0].interval",
            "health_checks[0].unhealthy_threshold",
            "health_checks[0].healthy_threshold",
            "circuit_breakers.thresholds[0].max_connections",
            "circuit_breakers.thresholds[0].max_pending_requests",
            "circuit_breakers.thresholds[0].max_retries",
        ]
    );
    // Failover by the proxy's own locality has no Envoy field.
    assert!(user
        .common_lb_config
        .as_ref()
        .is_none_or(|c| c.locality_config_specifier.is_none()));
    assert!(meta(user).contains_key("locality_lb"));

    let shadow = cluster(&r, "demo-shadow");
    assert!(strings(&meta(shadow)["defaulted"]).contains(&"circuit_breakers".to_owned()));
    assert_eq!(
        shadow
            .common_lb_config
            .as_ref()
            .and_then(|c| c.healthy_panic_threshold)
            .map(|p| p.value),
        Some(30.0)
    );
}

#[test]
fn consistent_hash_settings_use_envoy_lb_configs() {
    let r = encoded();
    let ring = cluster(&r, "demo-ring");
    assert_eq!(ring.lb_policy, LbPolicy::RingHash as i32);
    let Some(LbConfig::RingHashLbConfig(cfg)) = &ring.lb_config else {
        panic!("ring hash config expected");
    };
    assert_eq!(cfg.minimum_ring_size.map(|v| v.value), Some(2048));
    assert_eq!(cfg.maximum_ring_size.map(|v| v.value), Some(65536));
    let maglev = cluster(&r, "thrift-maglev");
    assert_eq!(maglev.lb_policy, LbPolicy::Maglev as i32);
    let Some(LbConfig::MaglevLbConfig(cfg)) = &maglev.lb_config else {
        panic!("maglev config expected");
    };
    assert_eq!(cfg.table_size.map(|v| v.value), Some(65537));
    let m = meta(maglev);
    let Some(Kind::StructValue(opts)) = &m["protocol_options"].kind else {
        panic!("protocol options struct expected");
    };
    assert_eq!(string(&opts.fields["protocol"]), "compact");
    assert_eq!(
        cluster(&r, "demo-shadow").lb_policy,
        LbPolicy::Random as i32
    );
}

fn lb_endpoint(ip: &str, port: u32, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..SocketAddress::default()
                })),
            }),
            ..Endpoint::default()
        })),
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..LbEndpoint::default()
    }
}

fn locality(region: &str, zone: &str) -> Option<Locality> {
    Some(Locality {
        region: region.into(),
        zone: zone.into(),
        sub_zone: String::new(),
    })
}

/// A cluster as any Envoy control plane writes it: no metamesh metadata. Absent
/// settings take Envoy's defaults, which the decoded bootstrap spells out.
#[test]
fn an_envoy_native_cluster_decodes_with_envoy_defaults() {
    let cluster = Cluster {
        name: "native".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: None,
            service_name: "native-endpoints".into(),
        }),
        common_lb_config: Some(CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            )),
            ..CommonLbConfig::default()
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![
                Thresholds {
                    priority: RoutingPriority::High as i32,
                    max_requests: u32v(1),
                    ..Thresholds::default()
                },
                Thresholds {
                    max_requests: u32v(50),
                    ..Thresholds::default()
                },
            ],
            per_host_thresholds: Vec::new(),
        }),
        ..Cluster::default()
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "native-endpoints".into(),
        endpoints: vec![
            LocalityLbEndpoints {
                locality: locality("bj", "z1"),
                lb_endpoints: vec![lb_endpoint("10.1.0.1", 80, Some(2))],
                load_balancing_weight: u32v(70),
                ..LocalityLbEndpoints::default()
            },
            LocalityLbEndpoints {
                locality: locality("bj", "z2"),
                lb_endpoints: vec![lb_endpoint("10.1.0.2", 80, None)],
                load_balancing_weight: u32v(30),
                priority: 1,
                ..LocalityLbEndpoints::default()
            },
        ],
        ..ClusterLoadAssignment::default()
    };
    let resources = XdsResources {
        clusters: vec![cluster],
        endpoints: vec![cla],
        ..XdsResources::default()
    };
    let b = xds::decode(&resources, &Node::default(), None).expect("decode");
    let c = &b.clusters[0];
    assert_eq!(
        c.connect_timeout,
        Some(ConfigDuration(std::time::Duration::from_secs(5)))
    );
    let cb = c.circuit_breakers.as_ref().expect("Envoy's default limits");
    assert_eq!(
        (
            cb.max_connections,
            cb.max_pending_requests,
            cb.max_requests,
            cb.max_retries
        ),
        (Some(1024), Some(1024), Some(50), Some(3))
    );
    let l = c.locality_lb.as_ref().expect("locality weighted");
    assert!(l.enabled);
    let weights: Vec<(&str, u32)> = l
        .locality_weights
        .iter()
        .map(|w| (w.locality.zone.as_str(), w.weight))
        .collect();
    assert_eq!(weights, [("z1", 70), ("z2", 30)]);
    let eps: Vec<(&str, Option<u32>, u32)> = c
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight, e.priority))
        .collect();
    assert_eq!(eps, [("10.1.0.1:80", Some(2), 0), ("10.1.0.2:80", None, 1)]);
    assert!(c.protocol.is_none());
    b.validate(&metamesh_protocols::builtin()).expect("valid");
}

/// A STATIC cluster carries its endpoints inline.
#[test]
fn a_static_cluster_takes_its_inline_endpoints() {
    let cluster = Cluster {
        name: "static".into(),
        connect_timeout: secs(2, 0),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "static".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("127.0.0.1", 9000, None)],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    };
    let resources = XdsResources {
        clusters: vec![cluster],
        ..XdsResources::default()
    };
    let b: Bootstrap = xds::decode(&resources, &Node::default(), None).expect("decode");
    assert_eq!(b.clusters[0].endpoints[0].address, "127.0.0.1:9000");
}
