//! `DestinationRule`: Istio's subsets and traffic policy of a service, with Istio's field
//! names.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::meta_router::PortSelector;
use super::object::Object;

/// API versions a `DestinationRule` may be written in.
pub const API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
    "metamesh.io/v1alpha1",
];

/// A `DestinationRule` resource.
pub type DestinationRule = Object<DestinationRuleSpec>;

/// Subsets and traffic policy of one service.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service: a ServiceEntry host, or `*.suffix` for every host under a domain.
    pub host: String,
    /// Policy of every cluster of the service.
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    /// Named groups of endpoints.
    pub subsets: Vec<Subset>,
    /// Visibility across namespaces: accepted and ignored.
    pub export_to: Vec<String>,
    /// Which proxies the rule applies to: accepted and ignored (noted).
    pub workload_selector: Option<IgnoredAny>,
}

/// A named group of a service's endpoints.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Name, referenced by MetaRouter destinations.
    pub name: String,
    /// Endpoints whose labels include all of these belong to the subset.
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's policy, field by field (`loadBalancer`, `connectionPool`,
    /// `outlierDetection`), as Istio merges them.
    pub traffic_policy: Option<Box<TrafficPolicy>>,
}

/// How traffic to a service (or subset) is balanced and protected.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS: accepted and ignored (noted unless `mode: DISABLE`).
    pub tls: Option<Value>,
    /// Per-port policies; a port's policy replaces the others for that port.
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Accepted and ignored (noted).
    pub tunnel: Option<IgnoredAny>,
    /// Accepted and ignored (noted).
    pub proxy_protocol: Option<IgnoredAny>,
}

/// The policy of one port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS: accepted and ignored (noted unless `mode: DISABLE`).
    pub tls: Option<Value>,
}

/// Load balancing settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// A standard policy.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHash>,
    /// Locality-aware balancing.
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Accepted and ignored (noted).
    pub warmup_duration_secs: Option<IgnoredAny>,
    /// Accepted and ignored (noted).
    pub warmup: Option<IgnoredAny>,
}

/// Istio's simple load balancing policies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// The default.
    Unspecified,
    /// Round robin.
    RoundRobin,
    /// Fewest requests in flight.
    LeastRequest,
    /// Old name of `LEAST_REQUEST`.
    LeastConn,
    /// Random.
    Random,
    /// To the original destination: not supported (an error).
    Passthrough,
}

/// Consistent-hash balancing.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    /// The request attribute hashed (Aeraki reads the header name as an attribute).
    pub http_header_name: Option<String>,
    /// Accepted and ignored (noted).
    pub http_cookie: Option<IgnoredAny>,
    /// Accepted and ignored (noted).
    pub use_source_ip: Option<bool>,
    /// Accepted and ignored (noted).
    pub http_query_parameter_name: Option<String>,
    /// Ring hash (the default algorithm).
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<Maglev>,
    /// Deprecated form of `ringHash.minimumRingSize`.
    pub minimum_ring_size: Option<u64>,
}

/// Ring hash settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    /// Fewest ring entries (default 1024).
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Maglev {
    /// Table size, a prime (default 65537).
    pub table_size: Option<u64>,
}

/// Istio's locality load balancing setting.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// Turns it off when false (default on).
    pub enabled: Option<bool>,
    /// Traffic shares by locality, per source locality.
    pub distribute: Vec<Distribute>,
    /// The region to fail over to, per source region.
    pub failover: Vec<Failover>,
    /// Label-based failover: accepted and ignored (noted).
    pub failover_priority: Vec<String>,
}

/// Where traffic from one locality goes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Distribute {
    /// Source locality, `region/zone/subzone`, with a trailing `*` wildcard allowed.
    pub from: String,
    /// Destination locality patterns and their weights (summing to 100).
    pub to: BTreeMap<String, u32>,
}

/// The region traffic from a region fails over to.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// Source region.
    pub from: String,
    /// Region next in line.
    pub to: String,
}

/// Outlier detection, Istio's fields.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: errors in a row before ejection (same as `consecutive5xxErrors`).
    pub consecutive_errors: Option<u32>,
    /// Error answers and failures in a row before ejection (0 disables).
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Gateway errors in a row before ejection (0 disables).
    pub consecutive_gateway_errors: Option<u32>,
    /// Local-origin failures in a row before ejection, with
    /// `splitExternalLocalOriginErrors`.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Counts local-origin failures apart from error answers.
    pub split_external_local_origin_errors: bool,
    /// Ejection sweep interval, e.g. `10s`.
    pub interval: Option<String>,
    /// Base ejection time, e.g. `30s`.
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: Option<u32>,
    /// Healthy share below which the cluster balances across all endpoints (default 0).
    pub min_health_percent: Option<u32>,
}

/// Connection pool settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// Connection settings.
    pub tcp: Option<TcpSettings>,
    /// Request settings.
    pub http: Option<HttpSettings>,
}

/// Connection settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    /// Upstream connections open at once.
    pub max_connections: Option<u32>,
    /// Connect timeout, e.g. `1s`.
    pub connect_timeout: Option<String>,
    /// Accepted and ignored.
    pub tcp_keepalive: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub max_connection_duration: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub idle_timeout: Option<IgnoredAny>,
}

/// Request settings (applied to every meta protocol).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    /// Requests waiting for a connection.
    pub http1_max_pending_requests: Option<u32>,
    /// Requests in flight.
    pub http2_max_requests: Option<u32>,
    /// Retries in flight.
    pub max_retries: Option<u32>,
    /// Accepted and ignored.
    pub max_requests_per_connection: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub idle_timeout: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub h2_upgrade_policy: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub use_client_protocol: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub max_concurrent_streams: Option<IgnoredAny>,
}
