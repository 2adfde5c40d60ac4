//! Bootstrap → xDS resources.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{
        common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig,
        LbPolicy as EnvoyLbPolicy, MaglevLbConfig, RingHashLbConfig,
    },
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, health_check, socket_address,
    AggregatedConfigSource, ApiVersion, ConfigSource, HealthCheck, Locality as EnvoyLocality,
    RoutingPriority, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment::Policy, lb_endpoint::HostIdentifier, ClusterLoadAssignment,
    Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use metamesh_core::config::{
    self, Bootstrap, HealthCheckKind, LbPolicy, Locality, RetryOn, RouteMatch, StringMatch,
    TokenBucket, TrafficDirection,
};
use metamesh_core::health::HealthCheckSettings;
use metamesh_core::snapshot::DEFAULT_CONNECT_TIMEOUT;

use super::metadata::{endpoint_metadata, ClusterExtras, HEARTBEAT_HEALTH_CHECKER};
use super::pb;
use super::wire::{duration, u32_value, u64_value};
use super::{EncodeError, EncodeErrors, XdsResources};

/// The xDS resources of a bootstrap's listeners, routes, clusters (with their
/// endpoints) and hooks. `node`, `admin` and `xds` are the proxy's own and are not
/// encoded. A bootstrap that passes [`Bootstrap::validate`] always encodes; otherwise
/// the values xDS cannot carry (an endpoint address that is not `ip:port`, a duration
/// beyond 10,000 years) are returned with their paths.
pub fn encode(b: &Bootstrap) -> Result<XdsResources, EncodeErrors> {
    let mut e = Encoder { errors: Vec::new() };
    let listeners = b
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| e.listener(&named("listeners", &l.name, i), l))
        .collect();
    let routes = b
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| e.route_configuration(&named("routes", &r.name, i), r))
        .collect();
    let mut clusters = Vec::with_capacity(b.clusters.len());
    let mut endpoints = Vec::with_capacity(b.clusters.len());
    for (i, c) in b.clusters.iter().enumerate() {
        let p = named("clusters", &c.name, i);
        clusters.push(e.cluster(&p, c));
        endpoints.push(e.load_assignment(&p, c));
    }
    let hooks = b.hooks.iter().map(hook).collect();
    if !e.errors.is_empty() {
        return Err(EncodeErrors(e.errors));
    }
    Ok(XdsResources {
        listeners,
        routes,
        clusters,
        endpoints,
        hooks,
    })
}

fn named(kind: &str, name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("{kind}[{index}]")
    } else {
        format!("{kind}[{name}]")
    }
}

fn hook(h: &config::Hook) -> pb::Hook {
    pb::Hook {
        name: h.name.clone(),
        script: h.script.clone(),
        memory_limit: h.memory_limit.map(|m| m as u64),
        instruction_limit: h.instruction_limit,
    }
}

fn route_match(m: &RouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        attributes: m
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), string_match(v)))
            .collect(),
    }
}

/// The first condition set, in the order exact, prefix, regex, present (a validated
/// bootstrap sets exactly one).
fn string_match(m: &StringMatch) -> pb::StringMatch {
    use pb::string_match::MatchSpecifier;
    let spec = if let Some(v) = &m.exact {
        Some(MatchSpecifier::Exact(v.clone()))
    } else if let Some(v) = &m.prefix {
        Some(MatchSpecifier::Prefix(v.clone()))
    } else if let Some(v) = &m.regex {
        Some(MatchSpecifier::Regex(v.clone()))
    } else {
        m.present.map(MatchSpecifier::Present)
    };
    pb::StringMatch {
        match_specifier: spec,
    }
}

fn retry_on(r: RetryOn) -> pb::RetryOn {
    match r {
        RetryOn::ConnectFailure => pb::RetryOn::ConnectFailure,
        RetryOn::Reset => pb::RetryOn::Reset,
        RetryOn::Timeout => pb::RetryOn::Timeout,
        RetryOn::ErrorStatus => pb::RetryOn::ErrorStatus,
    }
}

fn lb_policy(p: LbPolicy) -> EnvoyLbPolicy {
    match p {
        LbPolicy::RoundRobin => EnvoyLbPolicy::RoundRobin,
        LbPolicy::LeastRequest => EnvoyLbPolicy::LeastRequest,
        LbPolicy::Random => EnvoyLbPolicy::Random,
        LbPolicy::RingHash => EnvoyLbPolicy::RingHash,
        LbPolicy::Maglev => EnvoyLbPolicy::Maglev,
    }
}

pub(crate) fn envoy_locality(l: &Locality) -> EnvoyLocality {
    EnvoyLocality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.subzone.clone(),
    }
}

/// Circuit breaker limit standing for "unlimited" (as Istio writes it).
pub(crate) const UNLIMITED: u32 = u32::MAX;

struct Encoder {
    errors: Vec<EncodeError>,
}

impl Encoder {
    fn err(&mut self, path: String, message: impl Into<String>) {
        self.errors.push(EncodeError {
            path,
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        path: impl FnOnce() -> String,
        d: Duration,
    ) -> Option<envoy_types::pb::google::protobuf::Duration> {
        match duration(d) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(path(), e);
                None
            }
        }
    }

    fn bucket(&mut self, p: &str, tb: &TokenBucket) -> pb::LocalRateLimit {
        pb::LocalRateLimit {
            token_bucket: Some(pb::TokenBucket {
                max_tokens: tb.max_tokens,
                tokens_per_fill: tb.tokens_per_fill,
                fill_interval: self.duration(|| format!("{p}.fill_interval"), tb.fill_interval.0),
            }),
            r#match: tb.match_.as_ref().map(route_match),
        }
    }

    fn listener(&mut self, p: &str, l: &config::Listener) -> pb::Listener {
        pb::Listener {
            name: l.name.clone(),
            address: l.address.clone(),
            protocol: l.protocol.clone(),
            route_config: l.route_config.clone(),
            hooks: l.hooks.clone(),
            local_rate_limit: l
                .local_rate_limit
                .as_ref()
                .map(|tb| self.bucket(&format!("{p}.local_rate_limit"), tb)),
            local_rate_limit_conditions: l
                .local_rate_limit_conditions
                .iter()
                .enumerate()
                .map(|(k, tb)| self.bucket(&format!("{p}.local_rate_limit_conditions[{k}]"), tb))
                .collect(),
            max_frame_size: l.max_frame_size.map(|n| n as u64),
            protocol_options: l.protocol_options.clone(),
            bind_to_port: (!l.bind_to_port).then_some(false),
            traffic_direction: match l.traffic_direction {
                TrafficDirection::Unspecified => pb::TrafficDirection::Unspecified,
                TrafficDirection::Inbound => pb::TrafficDirection::Inbound,
                TrafficDirection::Outbound => pb::TrafficDirection::Outbound,
            } as i32,
        }
    }

    fn route_configuration(&mut self, p: &str, rc: &config::RouteConfig) -> pb::RouteConfiguration {
        pb::RouteConfiguration {
            name: rc.name.clone(),
            routes: rc
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| self.route(&format!("{p}.{}", named("routes", &r.name, i)), r))
                .collect(),
        }
    }

    fn route(&mut self, p: &str, r: &config::Route) -> pb::Route {
        let kv = |list: &[config::KeyValue]| {
            list.iter()
                .map(|kv| pb::KeyValue {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                })
                .collect()
        };
        pb::Route {
            name: r.name.clone(),
            r#match: (!r.match_.attributes.is_empty()).then(|| route_match(&r.match_)),
            route: r
                .route
                .iter()
                .map(|d| pb::Destination {
                    cluster: d.cluster.clone(),
                    weight: d.weight,
                })
                .collect(),
            request_mutation: kv(&r.request_mutation),
            response_mutation: kv(&r.response_mutation),
            mirror: r.mirror.as_ref().map(|m| pb::Mirror {
                cluster: m.cluster.clone(),
                percentage: m.percentage,
                max_in_flight: m.max_in_flight,
            }),
            timeout: r
                .timeout
                .and_then(|t| self.duration(|| format!("{p}.timeout"), t.0)),
            retry: r
                .retry
                .as_ref()
                .map(|rt| self.retry(&format!("{p}.retry"), rt)),
            hash_policy: r.hash_policy.clone(),
            local_rate_limit: r
                .local_rate_limit
                .as_ref()
                .map(|tb| self.bucket(&format!("{p}.local_rate_limit"), tb)),
            hooks: r.hooks.clone(),
        }
    }

    fn retry(&mut self, p: &str, r: &config::Retry) -> pb::RetryPolicy {
        let back_off =
            (r.base_interval.is_some() || r.max_interval.is_some()).then(|| pb::RetryBackOff {
                base_interval: r
                    .base_interval
                    .and_then(|d| self.duration(|| format!("{p}.base_interval"), d.0)),
                max_interval: r
                    .max_interval
                    .and_then(|d| self.duration(|| format!("{p}.max_interval"), d.0)),
            });
        pb::RetryPolicy {
            attempts: r.attempts,
            per_try_timeout: r
                .per_try_timeout
                .and_then(|d| self.duration(|| format!("{p}.per_try_timeout"), d.0)),
            retry_on: r.retry_on.as_ref().map(|list| pb::RetryOnList {
                conditions: list.iter().map(|on| retry_on(*on) as i32).collect(),
            }),
            idempotent: r.idempotent,
            back_off,
        }
    }

    fn cluster(&mut self, p: &str, c: &config::Cluster) -> Cluster {
        let mut defaulted = Vec::new();
        let connect_timeout = match c.connect_timeout {
            Some(d) => self.duration(|| format!("{p}.connect_timeout"), d.0),
            None => {
                defaulted.push("connect_timeout".to_owned());
                duration(DEFAULT_CONNECT_TIMEOUT).ok()
            }
        };
        let lb_config = match c.lb_policy {
            LbPolicy::RingHash => c.ring_hash.as_ref().map(|r| {
                LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: r.minimum_ring_size.map(u64_value),
                    hash_function: 0,
                    maximum_ring_size: r.maximum_ring_size.map(u64_value),
                })
            }),
            LbPolicy::Maglev => c.maglev.as_ref().map(|m| {
                LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: m.table_size.map(u64_value),
                })
            }),
            _ => None,
        };
        let weighted = c
            .locality_lb
            .as_ref()
            .is_some_and(|l| l.enabled && !l.locality_weights.is_empty());
        let common_lb_config =
            (c.healthy_panic_threshold.is_some() || weighted).then(|| CommonLbConfig {
                healthy_panic_threshold: c.healthy_panic_threshold.map(|v| Percent {
                    value: f64::from(v),
                }),
                locality_config_specifier: weighted.then_some(
                    LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {}),
                ),
                ..CommonLbConfig::default()
            });
        let health_checks = c
            .health_check
            .as_ref()
            .map(|h| self.health_check(p, h, &mut defaulted))
            .into_iter()
            .collect();
        let circuit_breakers = Some(circuit_breakers(
            c.circuit_breakers.as_ref(),
            &mut defaulted,
        ));
        let outlier_detection = c
            .outlier_detection
            .as_ref()
            .map(|o| self.outlier_detection(&format!("{p}.outlier_detection"), o));
        let extras = ClusterExtras {
            protocol: c.protocol.clone(),
            protocol_options: c.protocol_options.clone(),
            connections_per_endpoint: c.connections_per_endpoint,
            max_frame_size: c.max_frame_size,
            overprovisioning_factor: c.overprovisioning_factor,
            locality_lb: c.locality_lb.clone(),
            defaulted,
        };
        let metadata = match extras.to_metadata() {
            Ok(m) => m,
            Err(e) => {
                self.err(format!("{p}.max_frame_size"), e);
                None
            }
        };
        Cluster {
            name: c.name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    resource_api_version: ApiVersion::V3 as i32,
                    ..ConfigSource::default()
                }),
                service_name: String::new(),
            }),
            connect_timeout,
            lb_policy: lb_policy(c.lb_policy) as i32,
            lb_config,
            common_lb_config,
            health_checks,
            circuit_breakers,
            outlier_detection,
            metadata,
            ..Cluster::default()
        }
    }

    fn health_check(
        &mut self,
        p: &str,
        h: &config::HealthCheck,
        defaulted: &mut Vec<String>,
    ) -> HealthCheck {
        let defaults = HealthCheckSettings::new(&config::HealthCheck {
            kind: h.kind,
            interval: None,
            timeout: None,
            unhealthy_threshold: None,
            healthy_threshold: None,
        });
        let hp = format!("{p}.health_check");
        let mut time = |name: &str, value: Option<config::ConfigDuration>, default: Duration| {
            let d = value.map_or_else(
                || {
                    defaulted.push(format!("health_checks[0].{name}"));
                    default
                },
                |d| d.0,
            );
            (d, format!("{hp}.{name}"))
        };
        let (timeout, timeout_path) = time("timeout", h.timeout, defaults.timeout);
        let (interval, interval_path) = time("interval", h.interval, defaults.interval);
        let mut count = |name: &str, value: Option<u32>, default: u32| {
            Some(u32_value(value.unwrap_or_else(|| {
                defaulted.push(format!("health_checks[0].{name}"));
                default
            })))
        };
        let unhealthy_threshold = count(
            "unhealthy_threshold",
            h.unhealthy_threshold,
            defaults.unhealthy_threshold,
        );
        let healthy_threshold = count(
            "healthy_threshold",
            h.healthy_threshold,
            defaults.healthy_threshold,
        );
        let interval = self.duration(|| interval_path, interval);
        let health_checker = match h.kind {
            HealthCheckKind::Tcp => {
                health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
            }
            HealthCheckKind::Heartbeat => {
                health_check::HealthChecker::CustomHealthCheck(health_check::CustomHealthCheck {
                    name: HEARTBEAT_HEALTH_CHECKER.to_owned(),
                    config_type: None,
                })
            }
        };
        HealthCheck {
            timeout: self.duration(|| timeout_path, timeout),
            interval,
            // Envoy probes idle clusters every 60s by default; metamesh always probes
            // at `interval`.
            no_traffic_interval: interval,
            unhealthy_threshold,
            healthy_threshold,
            health_checker: Some(health_checker),
            ..HealthCheck::default()
        }
    }

    fn outlier_detection(&mut self, p: &str, o: &config::OutlierDetection) -> OutlierDetection {
        let mut time = |name: &str, d: Option<config::ConfigDuration>| {
            d.and_then(|d| self.duration(|| format!("{p}.{name}"), d.0))
        };
        OutlierDetection {
            consecutive_5xx: o.consecutive_errors.map(u32_value),
            split_external_local_origin_errors: o.consecutive_local_origin_failures.is_some(),
            consecutive_local_origin_failure: o.consecutive_local_origin_failures.map(u32_value),
            interval: time("interval", o.interval),
            base_ejection_time: time("base_ejection_time", o.base_ejection_time),
            max_ejection_time: time("max_ejection_time", o.max_ejection_time),
            max_ejection_percent: o.max_ejection_percent.map(u32_value),
            // Envoy ejects on success rate by default; metamesh does not.
            enforcing_success_rate: Some(u32_value(0)),
            enforcing_local_origin_success_rate: Some(u32_value(0)),
            ..OutlierDetection::default()
        }
    }

    fn load_assignment(&mut self, p: &str, c: &config::Cluster) -> ClusterLoadAssignment {
        let weights = c
            .locality_lb
            .as_ref()
            .filter(|l| l.enabled)
            .map(|l| l.locality_weights.as_slice())
            .unwrap_or_default();
        let mut groups: Vec<LocalityLbEndpoints> = Vec::new();
        let mut keys: Vec<(&Locality, u32)> = Vec::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let Some(address) = self.socket_address(&format!("{p}.endpoints[{i}].address"), e)
            else {
                continue;
            };
            let endpoint = LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                        address: Some(address::Address::SocketAddress(address)),
                    }),
                    ..EnvoyEndpoint::default()
                })),
                load_balancing_weight: e.weight.map(u32_value),
                metadata: endpoint_metadata(&e.labels),
                ..LbEndpoint::default()
            };
            let key = (&e.locality, e.priority);
            match keys.iter().position(|k| *k == key) {
                Some(g) => groups[g].lb_endpoints.push(endpoint),
                None => {
                    keys.push(key);
                    groups.push(LocalityLbEndpoints {
                        locality: Some(envoy_locality(&e.locality)),
                        lb_endpoints: vec![endpoint],
                        load_balancing_weight: locality_weight(weights, &e.locality),
                        priority: e.priority,
                        ..LocalityLbEndpoints::default()
                    });
                }
            }
        }
        ClusterLoadAssignment {
            cluster_name: c.name.clone(),
            endpoints: groups,
            policy: c.overprovisioning_factor.map(|f| Policy {
                overprovisioning_factor: Some(u32_value(f)),
                ..Policy::default()
            }),
            ..ClusterLoadAssignment::default()
        }
    }

    fn socket_address(&mut self, p: &str, e: &config::Endpoint) -> Option<SocketAddress> {
        match e.address.parse::<SocketAddr>() {
            Ok(a) => Some(SocketAddress {
                protocol: socket_address::Protocol::Tcp as i32,
                address: a.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    a.port(),
                ))),
                ..SocketAddress::default()
            }),
            Err(_) => {
                self.err(
                    p.to_owned(),
                    format!("{:?} is not an ip:port address", e.address),
                );
                None
            }
        }
    }
}

/// The weight Envoy gives a locality: the first entry for it, none (no traffic) when it
/// is not listed or weighs 0.
pub(crate) fn locality_weight(
    weights: &[config::LocalityWeight],
    locality: &Locality,
) -> Option<envoy_types::pb::google::protobuf::UInt32Value> {
    weights
        .iter()
        .find(|w| w.locality == *locality)
        .map(|w| w.weight)
        .filter(|w| *w > 0)
        .map(u32_value)
}

/// Default-priority thresholds; limits metamesh leaves unset are written as
/// [`UNLIMITED`] (Envoy's own default is 1024) and listed as defaulted.
fn circuit_breakers(
    cb: Option<&config::CircuitBreakers>,
    defaulted: &mut Vec<String>,
) -> CircuitBreakers {
    let whole = cb.is_none();
    if whole {
        defaulted.push("circuit_breakers".to_owned());
    }
    let cb = cb.cloned().unwrap_or_default();
    let mut limit = |name: &str, v: Option<u32>| {
        Some(u32_value(v.unwrap_or_else(|| {
            if !whole {
                defaulted.push(format!("circuit_breakers.thresholds[0].{name}"));
            }
            UNLIMITED
        })))
    };
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: limit("max_connections", cb.max_connections),
            max_pending_requests: limit("max_pending_requests", cb.max_pending_requests),
            max_requests: limit("max_requests", cb.max_requests),
            max_retries: limit("max_retries", cb.max_retries),
            ..Thresholds::default()
        }],
        per_host_thresholds: Vec::new(),
    }
}
