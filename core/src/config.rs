//! The proxy bootstrap: the YAML model (snake_case, as in DESIGN.md), parsing with field
//! paths in every error, and validation against the registered protocols. The runtime
//! never sees this model directly: [`crate::snapshot::Snapshot`] compiles it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::capture::{
    Capture, CaptureInbound, CaptureOutbound, InboundPassthrough, InterceptionMode,
    OutboundTrafficPolicy,
};
use crate::codec::{ProtocolRegistry, DEFAULT_MAX_FRAME_SIZE};

/// The whole bootstrap file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Who this proxy is.
    #[serde(default)]
    pub node: Node,
    /// The admin endpoint.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// An xDS server to take dynamic resources from.
    #[serde(default)]
    pub xds: Option<Xds>,
    /// Listeners to bind.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Route configurations, referenced by listeners.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Upstream clusters.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Lua hooks, referenced by listeners.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// The access log, for every listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Request ids and trace context, for every listener.
    #[serde(default, skip_serializing_if = "Tracing::is_default")]
    pub tracing: Tracing,
    /// Transparent sidecar capture: the virtual listeners iptables redirects to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::capture::Capture>,
}

/// Identity and placement of this proxy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique id of this proxy.
    #[serde(default)]
    pub id: String,
    /// The service cluster this proxy belongs to.
    #[serde(default)]
    pub cluster: String,
    /// Where this proxy runs.
    #[serde(default)]
    pub locality: Locality,
    /// Address outbound listeners created from xDS bind to (default 127.0.0.1).
    #[serde(default)]
    pub outbound_address: Option<String>,
    /// How the application's traffic reaches this proxy; with `redirect` the control
    /// plane makes outbound listeners that bind no socket (Istio's `INTERCEPTION_MODE`).
    #[serde(
        default,
        skip_serializing_if = "crate::capture::InterceptionMode::is_none"
    )]
    pub interception_mode: crate::capture::InterceptionMode,
}

/// A region/zone/subzone triple.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    /// Region, e.g. `bj`.
    #[serde(default)]
    pub region: String,
    /// Zone within the region.
    #[serde(default)]
    pub zone: String,
    /// Subzone within the zone.
    #[serde(default)]
    pub subzone: String,
}

/// The admin endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to bind. Must be a loopback address unless `allow_remote` is set: the
    /// endpoint changes log levels and shows the whole configuration.
    pub address: String,
    /// Allow a non-loopback `address`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote: bool,
}

/// The access log: one line per request, written by a thread of its own.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// File to append to; `/dev/stdout` and `/dev/stderr` name the process's streams.
    pub path: String,
    /// `json` (one object per line, the default) or `text`.
    #[serde(default)]
    pub format: AccessLogFormat,
    /// The line for `format: text`, with `%OPERATOR%` fields (see docs/observability.md);
    /// the default resembles Envoy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// Request metadata keys whose values are logged (`metadata` object in JSON,
    /// `%REQ(key)%` in text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<String>,
}

/// How access log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// A line built from `text_format`.
    Text,
}

/// Request ids and trace context.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Give a request without an `x-request-id` one (a random UUID), carried upstream
    /// in its metadata.
    #[serde(default = "yes")]
    pub request_id: bool,
    /// Give a request that carries a W3C `traceparent` a new span id (the proxy's span,
    /// a child of the caller's), keeping its trace id and flags.
    #[serde(default = "yes")]
    pub traceparent: bool,
}

fn yes() -> bool {
    true
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            request_id: true,
            traceparent: true,
        }
    }
}

impl Tracing {
    fn is_default(&self) -> bool {
        *self == Tracing::default()
    }
}

/// The xDS server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Xds {
    /// gRPC address, e.g. `http://127.0.0.1:15010`.
    pub address: String,
}

/// A listener: an address, the protocol spoken on it and the routes it uses.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// `ip:port` to bind (port 0 picks a free one).
    pub address: String,
    /// Registered protocol name.
    pub protocol: String,
    /// Name of the route configuration.
    pub route_config: String,
    /// Names of hooks to run on every request.
    #[serde(default)]
    pub hooks: Vec<String>,
    /// A token bucket for the listener's requests (with conditions: for those that
    /// match none of them).
    #[serde(default)]
    pub local_rate_limit: Option<TokenBucket>,
    /// Token buckets for requests with given attributes, tried in order: a request takes
    /// its token from the first whose `match` it meets, and from no other bucket (as
    /// Aeraki's `localRateLimit.conditions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_rate_limit_conditions: Vec<TokenBucket>,
    /// Largest frame accepted from clients, in bytes (default 8 MiB).
    #[serde(default)]
    pub max_frame_size: Option<usize>,
    /// Protocol-specific settings (for example Thrift's `transport` and `protocol`);
    /// each protocol documents and checks its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protocol_options: BTreeMap<String, String>,
    /// False: the listener binds no socket and serves only the connections a capture
    /// listener hands it by original destination (Envoy's `bind_to_port`; default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bind_to_port: bool,
    /// Which capture listener hands an unbound listener its connections (Envoy's
    /// `traffic_direction`); unspecified means outbound.
    #[serde(default, skip_serializing_if = "TrafficDirection::is_unspecified")]
    pub traffic_direction: TrafficDirection,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The direction of a listener's traffic, as Envoy's `traffic_direction`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    /// Not said; an unbound listener of this kind is outbound.
    #[default]
    Unspecified,
    /// Calls into the local application (the virtual inbound listener's targets).
    Inbound,
    /// Calls the local application makes (the virtual outbound listener's targets).
    Outbound,
}

impl TrafficDirection {
    /// True for the default.
    pub fn is_unspecified(&self) -> bool {
        *self == TrafficDirection::Unspecified
    }

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficDirection::Unspecified => "unspecified",
            TrafficDirection::Inbound => "inbound",
            TrafficDirection::Outbound => "outbound",
        }
    }
}

/// A token bucket (Envoy's local rate limit): requests take a token each; a request that
/// finds the bucket empty is answered with the protocol's "over limit" reply.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size (and the tokens it starts with).
    pub max_tokens: u32,
    /// Tokens added per fill (default: `max_tokens`).
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    /// Time between fills.
    pub fill_interval: ConfigDuration,
    /// Only requests with these attributes take tokens; others pass untouched.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RouteMatch>,
}

/// A named, ordered list of routes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, referenced by listeners.
    pub name: String,
    /// Routes in match order: the first that matches wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One route: a match and what to do with matching requests.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name, unique within its route configuration.
    pub name: String,
    /// Conditions; an absent match matches every request.
    #[serde(default, rename = "match")]
    pub match_: RouteMatch,
    /// Destination clusters; several entries with weights split traffic.
    pub route: Vec<Destination>,
    /// Attributes set on the request before it goes upstream.
    #[serde(default)]
    pub request_mutation: Vec<KeyValue>,
    /// Attributes set on the response before it goes back to the client.
    #[serde(default)]
    pub response_mutation: Vec<KeyValue>,
    /// A shadow copy of the traffic.
    #[serde(default)]
    pub mirror: Option<Mirror>,
    /// Deadline for the whole request.
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Attributes hashed for consistent-hash load balancing.
    #[serde(default)]
    pub hash_policy: Vec<String>,
    /// A token bucket for the requests this route matches.
    #[serde(default)]
    pub local_rate_limit: Option<TokenBucket>,
    /// Names of hooks run on the requests this route matches, after the listener's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
}

/// Conditions on request attributes, all of which must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Attribute name (case-insensitive) to condition.
    #[serde(default)]
    pub attributes: BTreeMap<String, StringMatch>,
}

/// A condition on one attribute value: exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// The value equals this (case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The attribute is present (true) or absent (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A weighted destination cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Cluster name.
    pub cluster: String,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// An attribute to set.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// Attribute name.
    pub key: String,
    /// Attribute value.
    pub value: String,
}

/// Traffic mirroring: a copy of matching requests, after the request mutation, goes to
/// the shadow cluster; its response is dropped.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The shadow cluster.
    pub cluster: String,
    /// Share of requests copied, 0 to 100 (default 100).
    #[serde(default)]
    pub percentage: Option<f64>,
    /// Copies in flight at most; past this a copy is dropped (and counted) instead of
    /// queued (default 128).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// Default bound on a route's mirror copies in flight.
pub const DEFAULT_MIRROR_IN_FLIGHT: u32 = 128;

/// Retry policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// Deadline of each attempt (default: the route timeout).
    #[serde(default)]
    pub per_try_timeout: Option<ConfigDuration>,
    /// Failures that are retried. `connect_failure` is always safe (the request never
    /// left the proxy); `reset`, `timeout` and `error_status` may follow a request the
    /// upstream already applied, so they need `idempotent: true`. Default:
    /// `[connect_failure]`, or `[connect_failure, reset, timeout]` on idempotent routes.
    #[serde(default)]
    pub retry_on: Option<Vec<RetryOn>>,
    /// The route's requests are safe to apply more than once.
    #[serde(default)]
    pub idempotent: bool,
    /// Wait before each retry: grows from this (default 25ms), jittered.
    #[serde(default)]
    pub base_interval: Option<ConfigDuration>,
    /// Longest wait before a retry (default 10 × `base_interval`).
    #[serde(default)]
    pub max_interval: Option<ConfigDuration>,
}

/// A failure a retry policy can retry.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The upstream connection could not be established.
    ConnectFailure,
    /// The upstream connection closed before the response.
    Reset,
    /// The attempt's deadline passed.
    Timeout,
    /// The upstream answered with a protocol error status (Dubbo non-OK status, Thrift
    /// `TApplicationException`, HTTP 5xx).
    ErrorStatus,
}

impl RetryOn {
    /// True when the failure means the request may have been applied upstream.
    pub fn may_have_been_applied(self) -> bool {
        !matches!(self, RetryOn::ConnectFailure)
    }

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect_failure",
            RetryOn::Reset => "reset",
            RetryOn::Timeout => "timeout",
            RetryOn::ErrorStatus => "error_status",
        }
    }
}

impl Retry {
    /// The failures this policy retries.
    pub fn conditions(&self) -> Vec<RetryOn> {
        match &self.retry_on {
            Some(list) => list.clone(),
            None if self.idempotent => {
                vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Timeout]
            }
            None => vec![RetryOn::ConnectFailure],
        }
    }
}

/// Load balancing policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Fewest active requests among two random picks.
    LeastRequest,
    /// Uniformly random.
    Random,
    /// Consistent hashing on a ring.
    RingHash,
    /// Consistent hashing with Maglev tables.
    Maglev,
}

/// An upstream cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name.
    pub name: String,
    /// Protocol spoken to the endpoints (default: that of the listener the request came in on).
    #[serde(default)]
    pub protocol: Option<String>,
    /// How endpoints are chosen.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Locality-aware balancing.
    #[serde(default)]
    pub locality_lb: Option<LocalityLb>,
    /// Deadline for establishing an upstream connection (default 1s).
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// Connections each endpoint's pool keeps for multiplexing protocols (default 1).
    #[serde(default)]
    pub connections_per_endpoint: Option<u32>,
    /// Largest frame accepted from endpoints, in bytes (default 8 MiB).
    #[serde(default)]
    pub max_frame_size: Option<usize>,
    /// Protocol-specific settings for the connections to the endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protocol_options: BTreeMap<String, String>,
    /// Passive health checking.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checking.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Limits on the cluster's connections and requests.
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Capacity headroom, in percent, before traffic spills to the next priority level
    /// (Envoy's overprovisioning factor; default 140).
    #[serde(default)]
    pub overprovisioning_factor: Option<u32>,
    /// Healthy percentage of a priority level below which it balances across all of its
    /// endpoints, healthy or not (Envoy's panic threshold; default 50, 0 disables).
    #[serde(default)]
    pub healthy_panic_threshold: Option<u32>,
    /// Ring hash settings.
    #[serde(default)]
    pub ring_hash: Option<RingHashConfig>,
    /// Maglev settings.
    #[serde(default)]
    pub maglev: Option<MaglevConfig>,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// Locality-aware balancing. With no `locality_weights`, a proxy that knows its own
/// locality (`node.locality`) prefers endpoints in its own zone, then its region, then
/// anywhere, failing over as health drops (Istio's `failover`). With `locality_weights`,
/// each priority level splits traffic between localities by weight (Istio's
/// `distribute`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLb {
    /// Turns it on.
    #[serde(default)]
    pub enabled: bool,
    /// Traffic share of each locality; localities not listed get none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locality_weights: Vec<LocalityWeight>,
}

/// The weight of one locality.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityWeight {
    /// The locality (all three fields compared).
    pub locality: Locality,
    /// Relative weight.
    pub weight: u32,
}

/// Outlier detection (passive health checking), as Envoy's.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Errors in a row (error responses and, unless `consecutive_local_origin_failures`
    /// is set, connect failures, resets and timeouts) that eject an endpoint (default 5).
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    /// Connect failures, resets and timeouts in a row that eject an endpoint; setting it
    /// counts them apart from error responses.
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    /// An ejected endpoint's ejection count drops by one for each interval it stays
    /// healthy (default 10s).
    #[serde(default)]
    pub interval: Option<ConfigDuration>,
    /// Ejection time, multiplied by the number of times the endpoint was ejected
    /// (default 30s).
    #[serde(default)]
    pub base_ejection_time: Option<ConfigDuration>,
    /// Longest ejection (default 300s).
    #[serde(default)]
    pub max_ejection_time: Option<ConfigDuration>,
    /// Most endpoints of the cluster ejected at once, in percent (default 10; one
    /// endpoint can always be ejected).
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// Active health checking: each endpoint is probed on its own connection.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// How to probe.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// Time between probes (default 5s).
    #[serde(default)]
    pub interval: Option<ConfigDuration>,
    /// Deadline of one probe (default 1s).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Failed probes in a row that mark an endpoint unhealthy (default 3).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Passed probes in a row that mark it healthy again (default 1).
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
}

/// How an active health check probes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// The protocol's own keep-alive probe (Dubbo heartbeat) on a kept connection.
    Heartbeat,
}

/// Per-cluster limits (Envoy's circuit breaker thresholds); a request over a limit is
/// answered with the protocol's overload reply. Unset limits are unlimited, as in Istio.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Upstream connections open at once.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    #[serde(default)]
    pub max_requests: Option<u32>,
    /// Retries in flight.
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// Ring hash settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashConfig {
    /// Fewest ring entries (default 1024).
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
    /// Most ring entries (default 8M).
    #[serde(default)]
    pub maximum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevConfig {
    /// Lookup table size, a prime (default 65537).
    #[serde(default)]
    pub table_size: Option<u64>,
}

/// One upstream endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port`.
    pub address: String,
    /// Where the endpoint runs.
    #[serde(default)]
    pub locality: Locality,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Priority level, 0 is the highest.
    #[serde(default)]
    pub priority: u32,
    /// Free-form labels (subsets are built from these by the control plane).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A Lua hook.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Unique name.
    pub name: String,
    /// Lua source defining `on_request(req)` and/or `on_response(resp, req)`.
    pub script: String,
    /// Memory cap of each of the hook's Lua states, in bytes (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<usize>,
    /// Lua VM instructions one call may run (default 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_limit: Option<u64>,
}

/// Smallest memory cap a hook may have (a Lua state needs some to start).
pub const MIN_HOOK_MEMORY: usize = 256 * 1024;

/// Lowest priority an endpoint may have.
pub const MAX_PRIORITY: u32 = 127;

/// Most retries a route may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Largest ring a ring-hash cluster may build.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Largest Maglev table.
pub const MAX_MAGLEV_TABLE: u64 = 5_000_011;

/// True when `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// A duration written as `2s`, `500ms`, `1m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(ConfigDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// One configuration problem, with the path of the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, e.g. `routes[dubbo-routes].routes[batchjob].route[0].cluster`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl Bootstrap {
    /// Parses YAML; errors name the field path and the line.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let path = if path == "." { String::new() } else { path };
            ConfigErrors::single(path, inner.to_string())
        })
    }

    /// Checks cross-references and values; returns every problem found.
    pub fn validate(&self, protocols: &ProtocolRegistry) -> Result<(), ConfigErrors> {
        let mut v = Validator::default();
        v.check(self, protocols);
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    /// Parses and validates.
    pub fn load(text: &str, protocols: &ProtocolRegistry) -> Result<Self, ConfigErrors> {
        let b = Self::from_yaml(text)?;
        b.validate(protocols)?;
        Ok(b)
    }
}

impl Listener {
    /// The frame limit in force.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size.unwrap_or(DEFAULT_MAX_FRAME_SIZE)
    }
}

/// Compiles a [`StringMatch`] regex the way routes use it: anchored at both ends.
pub(crate) fn compile_full_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

fn named(kind: &str, name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("{kind}[{index}]")
    } else {
        format!("{kind}[{name}]")
    }
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn unique<'a>(&mut self, kind: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        for (i, n) in names.enumerate() {
            if n.is_empty() {
                self.err(format!("{kind}[{i}].name"), "must not be empty");
            } else if !seen.insert(n) {
                self.err(format!("{kind}[{n}].name"), format!("duplicate name {n:?}"));
            }
        }
    }

    fn check(&mut self, b: &Bootstrap, protocols: &ProtocolRegistry) {
        self.unique("listeners", b.listeners.iter().map(|l| l.name.as_str()));
        self.unique("routes", b.routes.iter().map(|r| r.name.as_str()));
        self.unique("clusters", b.clusters.iter().map(|c| c.name.as_str()));
        self.unique("hooks", b.hooks.iter().map(|h| h.name.as_str()));
        let route_names: HashSet<&str> = b.routes.iter().map(|r| r.name.as_str()).collect();
        let cluster_names: HashSet<&str> = b.clusters.iter().map(|c| c.name.as_str()).collect();

        if let Some(admin) = &b.admin {
            match admin.address.parse::<SocketAddr>() {
                Err(_) => self.err(
                    "admin.address",
                    format!("{:?} is not an ip:port address", admin.address),
                ),
                Ok(a) if !a.ip().is_loopback() && !admin.allow_remote => self.err(
                    "admin.address",
                    format!(
                        "{a} is not a loopback address; the admin endpoint changes log levels and shows the configuration, so set allow_remote: true to expose it"
                    ),
                ),
                Ok(_) => {}
            }
        }
        if let Some(log) = &b.access_log {
            if log.path.trim().is_empty() {
                self.err("access_log.path", "must not be empty");
            }
            if let Some(f) = &log.text_format {
                if log.format != AccessLogFormat::Text {
                    self.err("access_log.text_format", "only used with format: text");
                }
                if let Err(e) = crate::observe::LineFormat::parse(f) {
                    self.err("access_log.text_format", e);
                }
            }
            for (i, k) in log.metadata.iter().enumerate() {
                if k.is_empty() {
                    self.err(format!("access_log.metadata[{i}]"), "must not be empty");
                }
            }
        }
        if let Some(x) = &b.xds {
            let rest = x
                .address
                .strip_prefix("http://")
                .or_else(|| x.address.strip_prefix("https://"));
            let host_port = rest.map(|r| r.trim_end_matches('/'));
            if !host_port.is_some_and(|hp| {
                hp.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            }) {
                self.err(
                    "xds.address",
                    format!("{:?} is not an http://host:port address", x.address),
                );
            }
        }
        for (i, h) in b.hooks.iter().enumerate() {
            let p = named("hooks", &h.name, i);
            if h.memory_limit.is_some_and(|m| m < MIN_HOOK_MEMORY) {
                self.err(
                    format!("{p}.memory_limit"),
                    format!("must be at least {MIN_HOOK_MEMORY} bytes"),
                );
            } else if h.instruction_limit == Some(0) {
                self.err(format!("{p}.instruction_limit"), "must be greater than 0");
            } else if let Err(e) = crate::lua::HookProgram::check(h) {
                self.err(format!("{p}.script"), e);
            }
        }
        let hook_names: HashSet<&str> = b.hooks.iter().map(|h| h.name.as_str()).collect();

        for (i, l) in b.listeners.iter().enumerate() {
            let p = named("listeners", &l.name, i);
            if l.address.parse::<SocketAddr>().is_err() {
                self.err(
                    format!("{p}.address"),
                    format!("{:?} is not an ip:port address", l.address),
                );
            }
            if let Some(proto) = protocols.get(&l.protocol) {
                if let Err(e) = proto.validate_options(&l.protocol_options) {
                    self.err(format!("{p}.protocol_options.{}", e.key), e.message);
                }
            } else {
                self.err(
                    format!("{p}.protocol"),
                    format!(
                        "unknown protocol {:?} (registered: {})",
                        l.protocol,
                        protocols.names().join(", ")
                    ),
                );
            }
            if !route_names.contains(l.route_config.as_str()) {
                self.err(
                    format!("{p}.route_config"),
                    format!("no route configuration named {:?}", l.route_config),
                );
            }
            self.check_hook_names(&format!("{p}.hooks"), &l.hooks, &hook_names);
            if let Some(tb) = &l.local_rate_limit {
                self.check_bucket(&format!("{p}.local_rate_limit"), tb);
            }
            for (k, tb) in l.local_rate_limit_conditions.iter().enumerate() {
                let cp = format!("{p}.local_rate_limit_conditions[{k}]");
                if tb.match_.is_none() {
                    self.err(format!("{cp}.match"), "a condition needs a match");
                }
                self.check_bucket(&cp, tb);
            }
            if l.max_frame_size == Some(0) {
                self.err(format!("{p}.max_frame_size"), "must be greater than 0");
            }
        }
        for e in crate::capture::validate(b) {
            self.errors.push(e);
        }

        for (i, rc) in b.routes.iter().enumerate() {
            let p = named("routes", &rc.name, i);
            let mut seen = HashSet::new();
            for (j, r) in rc.routes.iter().enumerate() {
                let rp = format!("{p}.{}", named("routes", &r.name, j));
                if r.name.is_empty() {
                    self.err(format!("{rp}.name"), "must not be empty");
                } else if !seen.insert(r.name.as_str()) {
                    self.err(
                        format!("{rp}.name"),
                        format!("duplicate route {:?}", r.name),
                    );
                }
                self.check_route(&rp, r, &cluster_names);
                self.check_hook_names(&format!("{rp}.hooks"), &r.hooks, &hook_names);
            }
        }

        for (i, c) in b.clusters.iter().enumerate() {
            let p = named("clusters", &c.name, i);
            if let Some(proto) = &c.protocol {
                if let Some(pr) = protocols.get(proto) {
                    if let Err(e) = pr.validate_options(&c.protocol_options) {
                        self.err(format!("{p}.protocol_options.{}", e.key), e.message);
                    }
                } else {
                    self.err(
                        format!("{p}.protocol"),
                        format!("unknown protocol {proto:?}"),
                    );
                }
            } else if !c.protocol_options.is_empty() {
                // The cluster speaks the protocol of the listeners routing to it.
                let inferred: HashSet<&str> = b
                    .listeners
                    .iter()
                    .filter(|l| {
                        b.routes.iter().any(|rc| {
                            rc.name == l.route_config
                                && rc
                                    .routes
                                    .iter()
                                    .flat_map(|r| r.route.iter())
                                    .any(|d| d.cluster == c.name)
                        })
                    })
                    .map(|l| l.protocol.as_str())
                    .collect();
                let mut inferred: Vec<&str> = inferred.into_iter().collect();
                inferred.sort_unstable();
                match inferred.as_slice() {
                    [one] => {
                        if let Some(Err(e)) = protocols
                            .get(one)
                            .map(|pr| pr.validate_options(&c.protocol_options))
                        {
                            self.err(format!("{p}.protocol_options.{}", e.key), e.message);
                        }
                    }
                    _ => self.err(
                        format!("{p}.protocol_options"),
                        "set `protocol` on the cluster so its options can be checked",
                    ),
                }
            }
            self.check_cluster_policies(&p, c, protocols);
            if c.connect_timeout.is_some_and(|d| d.0.is_zero()) {
                self.err(format!("{p}.connect_timeout"), "must be greater than 0");
            }
            if c.connections_per_endpoint == Some(0) {
                self.err(
                    format!("{p}.connections_per_endpoint"),
                    "must be greater than 0",
                );
            }
            if c.max_frame_size == Some(0) {
                self.err(format!("{p}.max_frame_size"), "must be greater than 0");
            }
            for (j, e) in c.endpoints.iter().enumerate() {
                let ep = format!("{p}.endpoints[{j}]");
                if e.address.parse::<SocketAddr>().is_err() {
                    self.err(
                        format!("{ep}.address"),
                        format!("{:?} is not an ip:port address", e.address),
                    );
                }
                if e.weight == Some(0) {
                    self.err(format!("{ep}.weight"), "must be greater than 0");
                }
                if e.priority > MAX_PRIORITY {
                    self.err(
                        format!("{ep}.priority"),
                        format!("must be at most {MAX_PRIORITY}"),
                    );
                }
            }
        }
    }

    fn check_route(&mut self, rp: &str, r: &Route, clusters: &HashSet<&str>) {
        self.check_match(&format!("{rp}.match"), &r.match_);
        self.check_destinations(rp, r, clusters);
    }

    fn check_match(&mut self, p: &str, rm: &RouteMatch) {
        let mut keys = HashSet::new();
        for (key, m) in &rm.attributes {
            let mp = format!("{p}.attributes.{key}");
            if key.is_empty() {
                self.err(mp.clone(), "attribute name must not be empty");
            }
            if !keys.insert(key.to_ascii_lowercase()) {
                self.err(
                    mp.clone(),
                    "attribute given twice (names are case-insensitive)",
                );
            }
            let set = [
                m.exact.is_some(),
                m.prefix.is_some(),
                m.regex.is_some(),
                m.present.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if set != 1 {
                self.err(
                    mp.clone(),
                    "exactly one of exact, prefix, regex, present must be set",
                );
            }
            if let Some(re) = &m.regex {
                if let Err(e) = compile_full_regex(re) {
                    self.err(format!("{mp}.regex"), format!("invalid regex: {e}"));
                }
            }
        }
    }

    fn check_destinations(&mut self, rp: &str, r: &Route, clusters: &HashSet<&str>) {
        if r.route.is_empty() {
            self.err(
                format!("{rp}.route"),
                "at least one destination is required",
            );
        }
        for (k, d) in r.route.iter().enumerate() {
            if !clusters.contains(d.cluster.as_str()) {
                self.err(
                    format!("{rp}.route[{k}].cluster"),
                    format!("no cluster named {:?}", d.cluster),
                );
            }
            if d.weight == Some(0) && r.route.len() == 1 {
                self.err(format!("{rp}.route[{k}].weight"), "must be greater than 0");
            }
        }
        if r.route.len() > 1 && r.route.iter().all(|d| d.weight == Some(0)) {
            self.err(format!("{rp}.route"), "weights must not all be 0");
        }
        for (k, kv) in r.request_mutation.iter().enumerate() {
            if kv.key.is_empty() {
                self.err(
                    format!("{rp}.request_mutation[{k}].key"),
                    "must not be empty",
                );
            }
        }
        for (k, kv) in r.response_mutation.iter().enumerate() {
            if kv.key.is_empty() {
                self.err(
                    format!("{rp}.response_mutation[{k}].key"),
                    "must not be empty",
                );
            }
        }
        if r.timeout.is_some_and(|t| t.0.is_zero()) {
            self.err(format!("{rp}.timeout"), "must be greater than 0");
        }
        if let Some(m) = &r.mirror {
            if !clusters.contains(m.cluster.as_str()) {
                self.err(
                    format!("{rp}.mirror.cluster"),
                    format!("no cluster named {:?}", m.cluster),
                );
            }
            if let Some(pct) = m.percentage {
                if !(0.0..=100.0).contains(&pct) {
                    self.err(
                        format!("{rp}.mirror.percentage"),
                        "must be between 0 and 100",
                    );
                }
            }
            if m.max_in_flight == Some(0) {
                self.err(
                    format!("{rp}.mirror.max_in_flight"),
                    "must be greater than 0",
                );
            }
        }
        if let Some(retry) = &r.retry {
            let p = format!("{rp}.retry");
            if retry.attempts > MAX_RETRY_ATTEMPTS {
                self.err(
                    format!("{p}.attempts"),
                    format!("must be at most {MAX_RETRY_ATTEMPTS}"),
                );
            }
            if retry.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
                self.err(format!("{p}.per_try_timeout"), "must be greater than 0");
            }
            if retry.base_interval.is_some_and(|t| t.0.is_zero()) {
                self.err(format!("{p}.base_interval"), "must be greater than 0");
            }
            if let (Some(b), Some(m)) = (retry.base_interval, retry.max_interval) {
                if m.0 < b.0 {
                    self.err(
                        format!("{p}.max_interval"),
                        "must not be shorter than base_interval",
                    );
                }
            }
            if !retry.idempotent {
                for (k, on) in retry.retry_on.iter().flatten().enumerate() {
                    if on.may_have_been_applied() {
                        self.err(
                            format!("{p}.retry_on[{k}]"),
                            format!(
                                "{} may follow a request the upstream already applied: \
                                 set `idempotent: true` if the route's requests are safe to repeat",
                                on.as_str()
                            ),
                        );
                    }
                }
            }
        }
        for (k, key) in r.hash_policy.iter().enumerate() {
            if key.is_empty() {
                self.err(format!("{rp}.hash_policy[{k}]"), "must not be empty");
            }
        }
        if let Some(tb) = &r.local_rate_limit {
            self.check_bucket(&format!("{rp}.local_rate_limit"), tb);
        }
    }

    fn check_hook_names(&mut self, p: &str, names: &[String], hooks: &HashSet<&str>) {
        for (k, n) in names.iter().enumerate() {
            if !hooks.contains(n.as_str()) {
                self.err(format!("{p}[{k}]"), format!("no hook named {n:?}"));
            }
        }
    }

    fn check_bucket(&mut self, p: &str, tb: &TokenBucket) {
        if tb.max_tokens == 0 {
            self.err(format!("{p}.max_tokens"), "must be greater than 0");
        }
        if tb.tokens_per_fill == Some(0) {
            self.err(format!("{p}.tokens_per_fill"), "must be greater than 0");
        }
        if tb.fill_interval.0 < Duration::from_millis(1) {
            self.err(format!("{p}.fill_interval"), "must be at least 1ms");
        }
        if let Some(m) = &tb.match_ {
            self.check_match(&format!("{p}.match"), m);
        }
    }

    fn check_cluster_policies(&mut self, p: &str, c: &Cluster, protocols: &ProtocolRegistry) {
        if let Some(l) = &c.locality_lb {
            for (k, w) in l.locality_weights.iter().enumerate() {
                if w.locality.region.is_empty() {
                    self.err(
                        format!("{p}.locality_lb.locality_weights[{k}].locality.region"),
                        "must not be empty",
                    );
                }
            }
            if !l.enabled && !l.locality_weights.is_empty() {
                self.err(
                    format!("{p}.locality_lb.enabled"),
                    "locality_weights are given but locality-aware balancing is not enabled",
                );
            }
        }
        if let Some(o) = &c.outlier_detection {
            let op = format!("{p}.outlier_detection");
            if o.consecutive_errors == Some(0) {
                self.err(format!("{op}.consecutive_errors"), "must be greater than 0");
            }
            if o.consecutive_local_origin_failures == Some(0) {
                self.err(
                    format!("{op}.consecutive_local_origin_failures"),
                    "must be greater than 0",
                );
            }
            for (name, d) in [
                ("interval", o.interval),
                ("base_ejection_time", o.base_ejection_time),
                ("max_ejection_time", o.max_ejection_time),
            ] {
                if d.is_some_and(|d| d.0.is_zero()) {
                    self.err(format!("{op}.{name}"), "must be greater than 0");
                }
            }
            if o.max_ejection_percent.is_some_and(|v| v > 100) {
                self.err(
                    format!("{op}.max_ejection_percent"),
                    "must be between 0 and 100",
                );
            }
        }
        if let Some(h) = &c.health_check {
            let hp = format!("{p}.health_check");
            for (name, d) in [("interval", h.interval), ("timeout", h.timeout)] {
                if d.is_some_and(|d| d.0.is_zero()) {
                    self.err(format!("{hp}.{name}"), "must be greater than 0");
                }
            }
            for (name, v) in [
                ("unhealthy_threshold", h.unhealthy_threshold),
                ("healthy_threshold", h.healthy_threshold),
            ] {
                if v == Some(0) {
                    self.err(format!("{hp}.{name}"), "must be greater than 0");
                }
            }
            if h.kind == HealthCheckKind::Heartbeat {
                let probe = c
                    .protocol
                    .as_deref()
                    .and_then(|n| protocols.get(n))
                    .map(|pr| pr.heartbeat_request().is_some());
                match (c.protocol.as_deref(), probe) {
                    (None, _) => self.err(
                        format!("{hp}.type"),
                        "heartbeat checks need `protocol` set on the cluster",
                    ),
                    (Some(name), Some(false)) => self.err(
                        format!("{hp}.type"),
                        format!("protocol {name} has no heartbeat: use `type: tcp`"),
                    ),
                    _ => {}
                }
            }
        }
        if c.overprovisioning_factor == Some(0) {
            self.err(
                format!("{p}.overprovisioning_factor"),
                "must be greater than 0 (percent; 140 is Envoy's default)",
            );
        }
        if c.healthy_panic_threshold.is_some_and(|v| v > 100) {
            self.err(
                format!("{p}.healthy_panic_threshold"),
                "must be between 0 and 100",
            );
        }
        if let Some(r) = &c.ring_hash {
            let min = r.minimum_ring_size.unwrap_or(1024);
            let max = r.maximum_ring_size.unwrap_or(MAX_RING_SIZE);
            if min == 0 {
                self.err(
                    format!("{p}.ring_hash.minimum_ring_size"),
                    "must be greater than 0",
                );
            }
            if max > MAX_RING_SIZE {
                self.err(
                    format!("{p}.ring_hash.maximum_ring_size"),
                    format!("must be at most {MAX_RING_SIZE}"),
                );
            }
            if max < min {
                self.err(
                    format!("{p}.ring_hash.maximum_ring_size"),
                    "must not be below minimum_ring_size",
                );
            }
        }
        if let Some(size) = c.maglev.as_ref().and_then(|m| m.table_size) {
            if !(2..=MAX_MAGLEV_TABLE).contains(&size) || !is_prime(size) {
                self.err(
                    format!("{p}.maglev.table_size"),
                    format!("must be a prime number up to {MAX_MAGLEV_TABLE}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node: { id: consumer-1, cluster: demo, locality: { region: bj, zone: "800002" } }
admin: { address: 127.0.0.1:15000 }
listeners:
  - name: dubbo-out
    address: 127.0.0.1:20880
    protocol: test
    route_config: dubbo-routes
routes:
  - name: dubbo-routes
    routes:
      - name: batchjob
        match:
          attributes:
            interface: { exact: org.apache.dubbo.samples.DemoService }
            batchjob: { exact: "true" }
        route: [{ cluster: demo-batchjob }]
        request_mutation: [{ key: x-tier, value: batch }]
        response_mutation: [{ key: x-served-by, value: metamesh }]
        timeout: 2s
      - name: default
        route: [{ cluster: demo-user, weight: 3 }, { cluster: demo-batchjob, weight: 1 }]
clusters:
  - name: demo-batchjob
    connect_timeout: 250ms
    endpoints:
      - address: 127.0.0.1:20881
        locality: { region: bj, zone: "800002" }
        labels: { service_group: batchjob }
  - name: demo-user
    endpoints: [{ address: 127.0.0.1:20882 }]
"#;

    fn registry() -> ProtocolRegistry {
        crate::testing::registry()
    }

    #[test]
    fn parses_and_validates_the_design_example() {
        let b = Bootstrap::load(GOOD, &registry()).expect("valid");
        assert_eq!(b.listeners[0].name, "dubbo-out");
        let r = &b.routes[0].routes[0];
        assert_eq!(r.timeout, Some(ConfigDuration(Duration::from_secs(2))));
        assert_eq!(
            r.match_.attributes["batchjob"].exact.as_deref(),
            Some("true")
        );
        assert_eq!(
            b.clusters[0].connect_timeout,
            Some(ConfigDuration(Duration::from_millis(250)))
        );
    }

    #[test]
    fn parse_errors_name_the_field_path() {
        let bad = GOOD.replace("timeout: 2s", "timeout: soon");
        let err = Bootstrap::from_yaml(&bad).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("routes[0].routes[0].timeout:"), "{text}");
        assert!(text.contains("invalid duration"), "{text}");

        let bad = GOOD.replace("connect_timeout", "connect_timout");
        let text = Bootstrap::from_yaml(&bad).unwrap_err().to_string();
        assert!(text.contains("clusters[0]"), "{text}");
        assert!(text.contains("connect_timout"), "{text}");
    }

    #[test]
    fn validation_collects_every_problem_with_paths() {
        let bad = GOOD
            .replace("protocol: test", "protocol: smtp")
            .replace(
                "cluster: demo-user, weight: 3",
                "cluster: nowhere, weight: 3",
            )
            .replace("{ exact: \"true\" }", "{ regex: \"(\" }")
            .replace("127.0.0.1:20882", "localhost");
        let err = Bootstrap::load(&bad, &registry()).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"listeners[dubbo-out].protocol"), "{err}");
        assert!(
            paths.contains(&"routes[dubbo-routes].routes[default].route[0].cluster"),
            "{err}"
        );
        assert!(
            paths
                .contains(&"routes[dubbo-routes].routes[batchjob].match.attributes.batchjob.regex"),
            "{err}"
        );
        assert!(
            paths.contains(&"clusters[demo-user].endpoints[0].address"),
            "{err}"
        );
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn match_needs_exactly_one_kind_and_unique_keys() {
        let bad = GOOD.replace(
            "batchjob: { exact: \"true\" }",
            "batchjob: { exact: \"true\", prefix: t }\n            BatchJob: { present: true }",
        );
        let err = Bootstrap::load(&bad, &registry()).unwrap_err().to_string();
        assert!(err.contains("exactly one of exact"), "{err}");
        assert!(err.contains("attribute given twice"), "{err}");
    }

    #[test]
    fn duplicate_names_and_bad_xds_addresses_are_reported() {
        let bad = GOOD.replace("name: default", "name: batchjob").replace(
            "admin: { address: 127.0.0.1:15000 }",
            "admin: { address: 127.0.0.1:15000 }\nxds: { address: 127.0.0.1:15010 }",
        );
        let err = Bootstrap::load(&bad, &registry()).unwrap_err().to_string();
        assert!(err.contains("duplicate route \"batchjob\""), "{err}");
        assert!(
            err.contains("xds.address: \"127.0.0.1:15010\" is not an http://host:port"),
            "{err}"
        );
        let good = GOOD.replace(
            "admin: { address: 127.0.0.1:15000 }",
            "admin: { address: 127.0.0.1:15000 }\nxds: { address: http://127.0.0.1:15010 }",
        );
        Bootstrap::load(&good, &registry()).expect("an xds server is accepted");
    }

    #[test]
    fn hooks_are_compiled_and_referenced_by_name() {
        let good = GOOD
            .replace(
                "    route_config: dubbo-routes\n",
                "    route_config: dubbo-routes\n    hooks: [tag]\n",
            )
            .replace("        timeout: 2s\n", "        timeout: 2s\n        hooks: [tag]\n")
            + "hooks:\n  - name: tag\n    script: |\n      function on_request(req) req:set(\"x\", \"1\") end\n";
        Bootstrap::load(&good, &registry()).expect("valid");

        let bad = good
            .replace("hooks: [tag]\n    ", "hooks: [tga]\n    ")
            .replace("req:set(\"x\", \"1\") end", "req:set(\"x\", \"1\")")
            + "  - name: small\n    script: 'function on_request() end'\n    memory_limit: 1000\n";
        let err = Bootstrap::load(&bad, &registry()).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"routes[dubbo-routes].routes[batchjob].hooks[0]"),
            "{err}"
        );
        assert!(paths.contains(&"hooks[tag].script"), "{err}");
        assert!(paths.contains(&"hooks[small].memory_limit"), "{err}");
        assert!(err.to_string().contains("'end' expected"), "{err}");
    }

    #[test]
    fn traffic_policies_parse_and_validate() {
        let good = GOOD
            .replace(
                "timeout: 2s",
                "timeout: 2s
        mirror: { cluster: demo-user, percentage: 10 }
        retry: { attempts: 2, per_try_timeout: 500ms, idempotent: true, retry_on: [reset, error_status] }
        hash_policy: [user-id]
        local_rate_limit: { max_tokens: 10, fill_interval: 1s, match: { attributes: { tier: { exact: gold } } } }",
            )
            .replace(
                "    connect_timeout: 250ms\n",
                "    connect_timeout: 250ms
    lb_policy: maglev
    locality_lb: { enabled: true, locality_weights: [{ locality: { region: bj, zone: \"800002\" }, weight: 90 }] }
    outlier_detection: { consecutive_errors: 5, consecutive_local_origin_failures: 2, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100 }
    health_check: { type: tcp, interval: 1s, timeout: 200ms, unhealthy_threshold: 2 }
    circuit_breakers: { max_connections: 10, max_requests: 100 }
    overprovisioning_factor: 140
    healthy_panic_threshold: 0
    maglev: { table_size: 65537 }
",
            );
        let b = Bootstrap::load(&good, &registry()).expect("valid");
        let r = &b.routes[0].routes[0];
        assert_eq!(
            r.retry.as_ref().map(Retry::conditions),
            Some(vec![RetryOn::Reset, RetryOn::ErrorStatus])
        );
        assert_eq!(b.clusters[0].lb_policy, LbPolicy::Maglev);

        // The design example's retry, without idempotent, retries connect failures only.
        let r: Retry = serde_yaml_ng::from_str("{ attempts: 2 }").expect("yaml");
        assert_eq!(r.conditions(), vec![RetryOn::ConnectFailure]);
    }

    #[test]
    fn traffic_policy_errors_name_their_fields() {
        let bad = GOOD
            .replace(
                "timeout: 2s",
                "timeout: 2s
        mirror: { cluster: shadow, percentage: 150 }
        retry: { attempts: 2, retry_on: [connect_failure, timeout] }
        local_rate_limit: { max_tokens: 0, fill_interval: 0s }",
            )
            .replace(
                "    route_config: dubbo-routes\n",
                "    route_config: dubbo-routes
    local_rate_limit_conditions: [{ max_tokens: 1, fill_interval: 1s }]\n",
            )
            .replace(
                "    connect_timeout: 250ms\n",
                "    connect_timeout: 250ms
    outlier_detection: { consecutive_errors: 0, max_ejection_percent: 101 }
    health_check: { type: heartbeat }
    maglev: { table_size: 65536 }
    locality_lb: { enabled: false, locality_weights: [{ locality: { zone: z }, weight: 1 }] }
",
            );
        let err = Bootstrap::load(&bad, &registry()).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
        let route = "routes[dubbo-routes].routes[batchjob]";
        for want in [
            format!("{route}.mirror.cluster"),
            format!("{route}.mirror.percentage"),
            format!("{route}.retry.retry_on[1]"),
            format!("{route}.local_rate_limit.max_tokens"),
            format!("{route}.local_rate_limit.fill_interval"),
            "listeners[dubbo-out].local_rate_limit_conditions[0].match".into(),
            "clusters[demo-batchjob].outlier_detection.consecutive_errors".into(),
            "clusters[demo-batchjob].outlier_detection.max_ejection_percent".into(),
            "clusters[demo-batchjob].health_check.type".into(),
            "clusters[demo-batchjob].maglev.table_size".into(),
            "clusters[demo-batchjob].locality_lb.locality_weights[0].locality.region".into(),
            "clusters[demo-batchjob].locality_lb.enabled".into(),
        ] {
            assert!(
                paths.contains(&want.as_str()),
                "{want} missing from:\n{err}"
            );
        }
        assert!(err.to_string().contains("set `idempotent: true`"), "{err}");
    }

    #[test]
    fn protocol_options_are_checked_by_the_protocol_even_when_inherited() {
        let bad = GOOD
            .replace(
                "    route_config: dubbo-routes\n",
                "    route_config: dubbo-routes\n    protocol_options: { speed: fast }\n",
            )
            .replace(
                "  - name: demo-user\n",
                "  - name: demo-user\n    protocol_options: { colour: red }\n",
            );
        let err = Bootstrap::load(&bad, &registry()).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"listeners[dubbo-out].protocol_options.speed"),
            "{err}"
        );
        assert!(
            paths.contains(&"clusters[demo-user].protocol_options.colour"),
            "{err}"
        );
        assert!(
            err.to_string().contains("protocol test has no options"),
            "{err}"
        );
    }
}
