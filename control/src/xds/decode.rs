//! xDS resources → Bootstrap. Every problem is reported with the resource and the field
//! path inside it, so an ADS client can NACK with the message. Envoy fields metamesh
//! cannot honour are errors unless they only concern statistics, DNS (which Envoy itself
//! ignores for EDS and static clusters) or start-up ordering; `docs/xds.md` lists them.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{
        common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, CommonLbConfig,
        DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy as EnvoyLbPolicy, LeastRequestLbConfig,
        MaglevLbConfig, RingHashLbConfig, RoundRobinLbConfig,
    },
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, health_check, socket_address, HealthCheck,
    HealthStatus, RoutingPriority, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment::Policy, lb_endpoint::HostIdentifier, ClusterLoadAssignment,
    Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{self as wkt, UInt32Value};
use metamesh_core::config::{
    self, Admin, Bootstrap, ConfigDuration, HealthCheckKind, LbPolicy, Locality, LocalityLb,
    LocalityWeight, Node, RetryOn, RouteMatch, StringMatch, TokenBucket,
};
use metamesh_core::health::HealthCheckSettings;
use metamesh_core::snapshot::DEFAULT_CONNECT_TIMEOUT;

use super::encode::{locality_weight, UNLIMITED};
use super::metadata::{endpoint_labels, ClusterExtras, HEARTBEAT_HEALTH_CHECKER, METADATA_PATH};
use super::pb;
use super::wire::std_duration;
use super::{DecodeError, DecodeErrors, ResourceKind, XdsResources};

/// Envoy's connect timeout when a cluster sets none.
const ENVOY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's circuit breaker limits when a cluster sets none: connections, pending
/// requests and requests.
const ENVOY_MAX_REQUESTS: u32 = 1024;
/// Envoy's limit on retries in flight when a cluster sets none.
const ENVOY_MAX_RETRIES: u32 = 3;
/// Envoy's default choice count of the least-request policy (metamesh's too).
const LEAST_REQUEST_CHOICES: u32 = 2;

/// The bootstrap described by `resources`, with the proxy's own `node` and `admin`
/// (`xds` is left unset). Every problem found in any resource is returned. A
/// `ClusterLoadAssignment` no cluster refers to is ignored (as Envoy ignores endpoints
/// it did not ask for); a cluster whose load assignment is missing has no endpoints.
/// The result still needs [`Bootstrap::validate`] for cross-references and values.
pub fn decode(
    resources: &XdsResources,
    node: &Node,
    admin: Option<&Admin>,
) -> Result<Bootstrap, DecodeErrors> {
    let mut errors = Vec::new();
    let mut assignments: HashMap<&str, &ClusterLoadAssignment> = HashMap::new();
    for cla in &resources.endpoints {
        if assignments.insert(&cla.cluster_name, cla).is_some() {
            errors.push(DecodeError {
                kind: Some(ResourceKind::ClusterLoadAssignment),
                name: cla.cluster_name.clone(),
                path: String::new(),
                message: "given more than once".into(),
            });
        }
    }
    let mut b = Bootstrap {
        node: node.clone(),
        admin: admin.cloned(),
        xds: None,
        ..Bootstrap::default()
    };
    for l in &resources.listeners {
        b.listeners.extend(keep(&mut errors, decode_listener(l)));
    }
    for r in &resources.routes {
        b.routes
            .extend(keep(&mut errors, decode_route_configuration(r)));
    }
    for c in &resources.clusters {
        let cla = assignments.get(load_assignment_name(c)).copied();
        b.clusters.extend(keep(&mut errors, decode_cluster(c, cla)));
    }
    for h in &resources.hooks {
        b.hooks.extend(keep(&mut errors, decode_hook(h)));
    }
    if errors.is_empty() {
        Ok(b)
    } else {
        Err(DecodeErrors(errors))
    }
}

fn keep<T>(errors: &mut Vec<DecodeError>, r: Result<T, DecodeErrors>) -> Option<T> {
    r.map_err(|e| errors.extend(e.0)).ok()
}

/// The name of the `ClusterLoadAssignment` an EDS cluster takes its endpoints from:
/// `eds_cluster_config.service_name`, or else the cluster's name.
pub fn load_assignment_name(c: &Cluster) -> &str {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(&c.name)
}

/// Collects the problems of one resource.
struct Ctx {
    kind: ResourceKind,
    name: String,
    errors: Vec<DecodeError>,
}

impl Ctx {
    fn new(kind: ResourceKind, name: &str) -> Self {
        Ctx {
            kind,
            name: name.to_owned(),
            errors: Vec::new(),
        }
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(DecodeError {
            kind: Some(self.kind),
            name: self.name.clone(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn unsupported(&mut self, path: impl Into<String>) {
        self.err(path, "not supported by metamesh");
    }

    fn finish<T>(self, value: T) -> Result<T, DecodeErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(DecodeErrors(self.errors))
        }
    }

    fn duration(&mut self, path: &str, d: &wkt::Duration) -> Option<ConfigDuration> {
        match std_duration(d) {
            Ok(d) => Some(ConfigDuration(d)),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn opt_duration(&mut self, path: &str, d: Option<&wkt::Duration>) -> Option<ConfigDuration> {
        d.and_then(|d| self.duration(path, d))
    }

    fn usize(&mut self, path: &str, n: u64) -> Option<usize> {
        match usize::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(path, format!("{n} does not fit this platform's usize"));
                None
            }
        }
    }

    fn required<T>(&mut self, path: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.err(path, "required");
        }
        v
    }
}

fn is_set<T: Default + PartialEq>(v: &T) -> bool {
    *v != T::default()
}

/// Reports each listed field that is set (differs from its protobuf default).
macro_rules! reject_set {
    ($cx:expr, $prefix:expr, $($field:ident),+ $(,)?) => {
        $(
            if is_set($field) {
                $cx.unsupported(format!("{}{}", $prefix, stringify!($field)));
            }
        )+
    };
}

/// The metamesh listener.
pub fn decode_listener(l: &pb::Listener) -> Result<config::Listener, DecodeErrors> {
    let mut cx = Ctx::new(ResourceKind::Listener, &l.name);
    let local_rate_limit_conditions = l
        .local_rate_limit_conditions
        .iter()
        .enumerate()
        .filter_map(|(k, r)| {
            local_rate_limit(&mut cx, &format!("local_rate_limit_conditions[{k}]"), r)
        })
        .collect();
    let local_rate_limit = l
        .local_rate_limit
        .as_ref()
        .and_then(|r| local_rate_limit(&mut cx, "local_rate_limit", r));
    let max_frame_size = l.max_frame_size.and_then(|n| cx.usize("max_frame_size", n));
    let traffic_direction = match pb::TrafficDirection::try_from(l.traffic_direction) {
        Ok(pb::TrafficDirection::Unspecified) => config::TrafficDirection::Unspecified,
        Ok(pb::TrafficDirection::Inbound) => config::TrafficDirection::Inbound,
        Ok(pb::TrafficDirection::Outbound) => config::TrafficDirection::Outbound,
        Err(_) => {
            cx.err(
                "traffic_direction",
                format!("unknown traffic direction {}", l.traffic_direction),
            );
            config::TrafficDirection::Unspecified
        }
    };
    cx.finish(config::Listener {
        name: l.name.clone(),
        address: l.address.clone(),
        protocol: l.protocol.clone(),
        route_config: l.route_config.clone(),
        hooks: l.hooks.clone(),
        local_rate_limit,
        local_rate_limit_conditions,
        max_frame_size,
        protocol_options: l.protocol_options.clone(),
        bind_to_port: l.bind_to_port.unwrap_or(true),
        traffic_direction,
    })
}

/// The metamesh hook.
pub fn decode_hook(h: &pb::Hook) -> Result<config::Hook, DecodeErrors> {
    let mut cx = Ctx::new(ResourceKind::Hook, &h.name);
    let memory_limit = h.memory_limit.and_then(|n| cx.usize("memory_limit", n));
    cx.finish(config::Hook {
        name: h.name.clone(),
        script: h.script.clone(),
        memory_limit,
        instruction_limit: h.instruction_limit,
    })
}

/// The metamesh route configuration.
pub fn decode_route_configuration(
    rc: &pb::RouteConfiguration,
) -> Result<config::RouteConfig, DecodeErrors> {
    let mut cx = Ctx::new(ResourceKind::RouteConfiguration, &rc.name);
    let routes = rc
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(&mut cx, &format!("routes[{i}]"), r))
        .collect();
    cx.finish(config::RouteConfig {
        name: rc.name.clone(),
        routes,
    })
}

fn route_match(cx: &mut Ctx, p: &str, m: &pb::RouteMatch) -> RouteMatch {
    use pb::string_match::MatchSpecifier;
    let mut attributes = std::collections::BTreeMap::new();
    for (key, sm) in &m.attributes {
        let mut out = StringMatch::default();
        match &sm.match_specifier {
            Some(MatchSpecifier::Exact(v)) => out.exact = Some(v.clone()),
            Some(MatchSpecifier::Prefix(v)) => out.prefix = Some(v.clone()),
            Some(MatchSpecifier::Regex(v)) => out.regex = Some(v.clone()),
            Some(MatchSpecifier::Present(v)) => out.present = Some(*v),
            None => cx.err(
                format!("{p}.attributes.{key}"),
                "one of exact, prefix, regex, present is required",
            ),
        }
        attributes.insert(key.clone(), out);
    }
    RouteMatch { attributes }
}

fn local_rate_limit(cx: &mut Ctx, p: &str, r: &pb::LocalRateLimit) -> Option<TokenBucket> {
    let tb = cx.required(&format!("{p}.token_bucket"), r.token_bucket.as_ref());
    let match_ = r
        .r#match
        .as_ref()
        .map(|m| route_match(cx, &format!("{p}.match"), m));
    let tb = tb?;
    let fill = cx.required(
        &format!("{p}.token_bucket.fill_interval"),
        tb.fill_interval.as_ref(),
    )?;
    let fill_interval = cx.duration(&format!("{p}.token_bucket.fill_interval"), fill)?;
    Some(TokenBucket {
        max_tokens: tb.max_tokens,
        tokens_per_fill: tb.tokens_per_fill,
        fill_interval,
        match_,
    })
}

fn route(cx: &mut Ctx, p: &str, r: &pb::Route) -> config::Route {
    let kv = |list: &[pb::KeyValue]| {
        list.iter()
            .map(|kv| config::KeyValue {
                key: kv.key.clone(),
                value: kv.value.clone(),
            })
            .collect()
    };
    config::Route {
        name: r.name.clone(),
        match_: r
            .r#match
            .as_ref()
            .map(|m| route_match(cx, &format!("{p}.match"), m))
            .unwrap_or_default(),
        route: r
            .route
            .iter()
            .map(|d| config::Destination {
                cluster: d.cluster.clone(),
                weight: d.weight,
            })
            .collect(),
        request_mutation: kv(&r.request_mutation),
        response_mutation: kv(&r.response_mutation),
        mirror: r.mirror.as_ref().map(|m| config::Mirror {
            cluster: m.cluster.clone(),
            percentage: m.percentage,
            max_in_flight: m.max_in_flight,
        }),
        timeout: cx.opt_duration(&format!("{p}.timeout"), r.timeout.as_ref()),
        retry: r
            .retry
            .as_ref()
            .map(|rt| retry(cx, &format!("{p}.retry"), rt)),
        hash_policy: r.hash_policy.clone(),
        local_rate_limit: r
            .local_rate_limit
            .as_ref()
            .and_then(|l| local_rate_limit(cx, &format!("{p}.local_rate_limit"), l)),
        hooks: r.hooks.clone(),
    }
}

fn retry(cx: &mut Ctx, p: &str, r: &pb::RetryPolicy) -> config::Retry {
    let retry_on = r.retry_on.as_ref().map(|list| {
        list.conditions
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let on = match pb::RetryOn::try_from(*v) {
                    Ok(pb::RetryOn::ConnectFailure) => Some(RetryOn::ConnectFailure),
                    Ok(pb::RetryOn::Reset) => Some(RetryOn::Reset),
                    Ok(pb::RetryOn::Timeout) => Some(RetryOn::Timeout),
                    Ok(pb::RetryOn::ErrorStatus) => Some(RetryOn::ErrorStatus),
                    Ok(pb::RetryOn::Unspecified) | Err(_) => None,
                };
                if on.is_none() {
                    cx.err(
                        format!("{p}.retry_on.conditions[{i}]"),
                        format!("unknown retry condition {v}"),
                    );
                }
                on
            })
            .collect()
    });
    let back_off = r.back_off.as_ref();
    config::Retry {
        attempts: r.attempts,
        per_try_timeout: cx
            .opt_duration(&format!("{p}.per_try_timeout"), r.per_try_timeout.as_ref()),
        retry_on,
        idempotent: r.idempotent,
        base_interval: cx.opt_duration(
            &format!("{p}.back_off.base_interval"),
            back_off.and_then(|b| b.base_interval.as_ref()),
        ),
        max_interval: cx.opt_duration(
            &format!("{p}.back_off.max_interval"),
            back_off.and_then(|b| b.max_interval.as_ref()),
        ),
    }
}

/// Fields metamesh writes with its own default when the bootstrap leaves them unset.
const DEFAULTABLE: &[&str] = &[
    "connect_timeout",
    "health_checks[0].timeout",
    "health_checks[0].interval",
    "health_checks[0].unhealthy_threshold",
    "health_checks[0].healthy_threshold",
    "circuit_breakers",
    "circuit_breakers.thresholds[0].max_connections",
    "circuit_breakers.thresholds[0].max_pending_requests",
    "circuit_breakers.thresholds[0].max_requests",
    "circuit_breakers.thresholds[0].max_retries",
];

/// Decodes a field metamesh may have written with its default: listed as defaulted, it
/// must hold that default and decodes as unset; otherwise it decodes as itself, or as
/// Envoy's default when absent.
struct Defaulted {
    set: BTreeSet<String>,
}

impl Defaulted {
    fn get<T: PartialEq + std::fmt::Debug>(
        &self,
        cx: &mut Ctx,
        path: &str,
        value: Option<T>,
        metamesh_default: T,
        envoy_default: Option<T>,
    ) -> Option<T> {
        if !self.set.contains(path) {
            return value.or(envoy_default);
        }
        if let Some(v) = value {
            if v != metamesh_default {
                cx.err(
                    path,
                    format!(
                        "listed in {METADATA_PATH}.defaulted but holds {v:?}, \
                         not metamesh's default {metamesh_default:?}"
                    ),
                );
            }
        }
        None
    }
}

/// The cluster, with its endpoints from `assignment` (for an EDS cluster: the load
/// assignment named by [`load_assignment_name`]) or from its inline `load_assignment`
/// (a STATIC cluster).
#[allow(deprecated)]
pub fn decode_cluster(
    cluster: &Cluster,
    assignment: Option<&ClusterLoadAssignment>,
) -> Result<config::Cluster, DecodeErrors> {
    let mut cx = Ctx::new(ResourceKind::Cluster, &cluster.name);
    let Cluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name: _,
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate: _,
        dns_jitter: _,
        dns_failure_refresh_rate: _,
        respect_dns_ttl: _,
        dns_lookup_family: _,
        dns_resolvers: _,
        use_tcp_for_dns_lookups: _,
        dns_resolution_config: _,
        typed_dns_resolver_config: _,
        wait_for_warm_on_init: _,
        outlier_detection,
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server: _,
        lrs_report_endpoint_metrics: _,
        track_timeout_budgets: _,
        upstream_config,
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = cluster;
    reject_set!(
        cx,
        "",
        transport_socket_matches,
        transport_socket_matcher,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        max_requests_per_connection,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        upstream_bind_config,
        lb_subset_config,
        transport_socket,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        upstream_config,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
    );

    let (extras, meta_errors) = ClusterExtras::from_metadata(metadata.as_ref());
    for (path, message) in meta_errors {
        cx.err(path, message);
    }
    for (i, p) in extras.defaulted.iter().enumerate() {
        if !DEFAULTABLE.contains(&p.as_str()) {
            cx.err(
                format!("{METADATA_PATH}.defaulted[{i}]"),
                format!("{p:?} is not a field metamesh fills with its default"),
            );
        }
    }
    let defaulted = Defaulted {
        set: extras.defaulted.iter().cloned().collect(),
    };

    // Where the endpoints come from.
    let mut cla_cx = None;
    let endpoints_source = match cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => {
            if let Some(eds) = eds_cluster_config {
                eds_config(&mut cx, eds);
            }
            assignment.map(|cla| {
                let ctx = cla_cx.insert(Ctx::new(
                    ResourceKind::ClusterLoadAssignment,
                    &cla.cluster_name,
                ));
                load_assignment_endpoints(ctx, "", cla)
            })
        }
        None => load_assignment
            .as_ref()
            .map(|cla| load_assignment_endpoints(&mut cx, "load_assignment.", cla)),
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Static as i32 => {
            load_assignment
                .as_ref()
                .map(|cla| load_assignment_endpoints(&mut cx, "load_assignment.", cla))
        }
        Some(ClusterDiscoveryType::Type(t)) => {
            let kind = DiscoveryType::try_from(*t)
                .map_or_else(|_| t.to_string(), |k| k.as_str_name().to_owned());
            cx.err(
                "type",
                format!("{kind} clusters are not supported: use EDS (or STATIC)"),
            );
            None
        }
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            cx.unsupported("cluster_type");
            None
        }
    }
    .unwrap_or_default();

    let lb_policy = decode_lb_policy(&mut cx, *lb_policy);
    let (ring_hash, maglev) = decode_lb_config(&mut cx, lb_policy, lb_config.as_ref());

    let connect_timeout = {
        let value = connect_timeout
            .as_ref()
            .and_then(|d| cx.duration("connect_timeout", d));
        defaulted.get(
            &mut cx,
            "connect_timeout",
            value,
            ConfigDuration(DEFAULT_CONNECT_TIMEOUT),
            Some(ConfigDuration(ENVOY_CONNECT_TIMEOUT)),
        )
    };

    let health_check = match health_checks.as_slice() {
        [] => None,
        [h] => decode_health_check(&mut cx, &defaulted, h),
        _ => {
            cx.err("health_checks", "at most one health check is supported");
            None
        }
    };
    let circuit_breakers = decode_circuit_breakers(&mut cx, &defaulted, circuit_breakers.as_ref());
    let outlier_detection = outlier_detection
        .as_ref()
        .map(|o| decode_outlier_detection(&mut cx, o));
    let (healthy_panic_threshold, weighted) = match common_lb_config {
        Some(c) => decode_common_lb_config(&mut cx, c),
        None => (None, false),
    };

    // Locality-aware balancing: metamesh's own setting, or Envoy's locality weights.
    let locality_lb = match extras.locality_lb {
        Some(l) => {
            let metamesh_weighted = l.enabled && !l.locality_weights.is_empty();
            if metamesh_weighted != weighted {
                cx.err(
                    "common_lb_config.locality_weighted_lb_config",
                    format!(
                        "must be set exactly when {METADATA_PATH}.locality_lb is enabled \
                         with locality_weights"
                    ),
                );
            } else if weighted {
                let ctx = cla_cx.as_mut().unwrap_or(&mut cx);
                for (i, (locality, weight)) in endpoints_source.localities.iter().enumerate() {
                    let want = locality_weight(&l.locality_weights, locality).map(|w| w.value);
                    if *weight != want {
                        ctx.err(
                            format!(
                                "{}endpoints[{i}].load_balancing_weight",
                                endpoints_source.prefix
                            ),
                            format!(
                                "{weight:?} disagrees with the cluster's \
                                 {METADATA_PATH}.locality_lb ({want:?})"
                            ),
                        );
                    }
                }
            }
            Some(l)
        }
        None if weighted => {
            let mut weights: Vec<LocalityWeight> = Vec::new();
            for (locality, weight) in &endpoints_source.localities {
                if let Some(w) = weight {
                    if !weights.iter().any(|x| x.locality == *locality) {
                        weights.push(LocalityWeight {
                            locality: locality.clone(),
                            weight: *w,
                        });
                    }
                }
            }
            if weights.is_empty() && !endpoints_source.endpoints.is_empty() {
                cx.err(
                    "common_lb_config.locality_weighted_lb_config",
                    "set, but no locality of the endpoints has a load_balancing_weight",
                );
            }
            Some(LocalityLb {
                enabled: true,
                locality_weights: weights,
            })
        }
        None => None,
    };

    let overprovisioning_factor = match (
        endpoints_source.overprovisioning_factor,
        extras.overprovisioning_factor,
    ) {
        (Some(a), Some(b)) if a != b => {
            let ctx = cla_cx.as_mut().unwrap_or(&mut cx);
            ctx.err(
                format!("{}policy.overprovisioning_factor", endpoints_source.prefix),
                format!("{a} disagrees with the cluster's {METADATA_PATH}.overprovisioning_factor ({b})"),
            );
            Some(a)
        }
        (a, b) => a.or(b),
    };

    let out = config::Cluster {
        name: name.clone(),
        protocol: extras.protocol,
        lb_policy,
        locality_lb,
        connect_timeout,
        connections_per_endpoint: extras.connections_per_endpoint,
        max_frame_size: extras.max_frame_size,
        protocol_options: extras.protocol_options,
        outlier_detection,
        health_check,
        circuit_breakers,
        overprovisioning_factor,
        healthy_panic_threshold,
        ring_hash,
        maglev,
        endpoints: endpoints_source.endpoints,
    };
    let mut errors = cx.errors;
    if let Some(c) = cla_cx {
        errors.extend(c.errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DecodeErrors(errors))
    }
}

fn eds_config(cx: &mut Ctx, eds: &EdsClusterConfig) {
    let Some(source) = &eds.eds_config else {
        return;
    };
    match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) | None => {}
        Some(_) => cx.err(
            "eds_cluster_config.eds_config",
            "endpoints come over the ADS stream: use `ads` (or leave eds_config unset)",
        ),
    }
    if !source.authorities.is_empty() {
        cx.unsupported("eds_cluster_config.eds_config.authorities");
    }
}

fn decode_lb_policy(cx: &mut Ctx, v: i32) -> LbPolicy {
    match EnvoyLbPolicy::try_from(v) {
        Ok(EnvoyLbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(EnvoyLbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(EnvoyLbPolicy::Random) => LbPolicy::Random,
        Ok(EnvoyLbPolicy::RingHash) => LbPolicy::RingHash,
        Ok(EnvoyLbPolicy::Maglev) => LbPolicy::Maglev,
        Ok(other) => {
            cx.err(
                "lb_policy",
                format!("{} is not supported by metamesh", other.as_str_name()),
            );
            LbPolicy::RoundRobin
        }
        Err(_) => {
            cx.err("lb_policy", format!("unknown value {v}"));
            LbPolicy::RoundRobin
        }
    }
}

fn decode_lb_config(
    cx: &mut Ctx,
    policy: LbPolicy,
    lb_config: Option<&LbConfig>,
) -> (Option<config::RingHashConfig>, Option<config::MaglevConfig>) {
    let Some(lb_config) = lb_config else {
        return (None, None);
    };
    match (policy, lb_config) {
        (LbPolicy::RoundRobin, LbConfig::RoundRobinLbConfig(c)) => {
            let RoundRobinLbConfig { slow_start_config } = c;
            reject_set!(cx, "round_robin_lb_config.", slow_start_config);
            (None, None)
        }
        (LbPolicy::LeastRequest, LbConfig::LeastRequestLbConfig(c)) => {
            let LeastRequestLbConfig {
                choice_count,
                active_request_bias,
                slow_start_config,
            } = c;
            if choice_count.is_some_and(|c| c.value != LEAST_REQUEST_CHOICES) {
                cx.err(
                    "least_request_lb_config.choice_count",
                    format!("metamesh picks the least loaded of {LEAST_REQUEST_CHOICES}"),
                );
            }
            reject_set!(
                cx,
                "least_request_lb_config.",
                active_request_bias,
                slow_start_config
            );
            (None, None)
        }
        (LbPolicy::RingHash, LbConfig::RingHashLbConfig(c)) => {
            let RingHashLbConfig {
                minimum_ring_size,
                hash_function,
                maximum_ring_size,
            } = c;
            if *hash_function != 0 {
                cx.err(
                    "ring_hash_lb_config.hash_function",
                    "metamesh hashes with XX_HASH only",
                );
            }
            let ring = config::RingHashConfig {
                minimum_ring_size: minimum_ring_size.map(|v| v.value),
                maximum_ring_size: maximum_ring_size.map(|v| v.value),
            };
            (Some(ring), None)
        }
        (LbPolicy::Maglev, LbConfig::MaglevLbConfig(c)) => {
            let MaglevLbConfig { table_size } = c;
            let maglev = config::MaglevConfig {
                table_size: table_size.map(|v| v.value),
            };
            (None, Some(maglev))
        }
        (_, other) => {
            let name = match other {
                LbConfig::RingHashLbConfig(_) => "ring_hash_lb_config",
                LbConfig::MaglevLbConfig(_) => "maglev_lb_config",
                LbConfig::OriginalDstLbConfig(_) => "original_dst_lb_config",
                LbConfig::LeastRequestLbConfig(_) => "least_request_lb_config",
                LbConfig::RoundRobinLbConfig(_) => "round_robin_lb_config",
            };
            cx.err(name, "does not match lb_policy");
            (None, None)
        }
    }
}

#[allow(deprecated)]
fn decode_health_check(
    cx: &mut Ctx,
    defaulted: &Defaulted,
    h: &HealthCheck,
) -> Option<config::HealthCheck> {
    let p = "health_checks[0].";
    let HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection: _,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path: _,
        event_logger: _,
        event_service: _,
        always_log_health_check_failures: _,
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = h;
    reject_set!(
        cx,
        p,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        alt_port,
        no_traffic_healthy_interval,
        tls_options,
        transport_socket_match_criteria,
    );
    // Envoy's other intervals default to `interval`; metamesh has only that one.
    for (name, v) in [
        ("no_traffic_interval", no_traffic_interval),
        ("unhealthy_interval", unhealthy_interval),
        ("unhealthy_edge_interval", unhealthy_edge_interval),
        ("healthy_edge_interval", healthy_edge_interval),
    ] {
        if v.is_some() && v != interval {
            cx.err(
                format!("{p}{name}"),
                "metamesh probes at `interval` only: leave unset or equal to interval",
            );
        }
    }
    let kind = match health_checker {
        Some(health_check::HealthChecker::TcpHealthCheck(t)) => {
            let health_check::TcpHealthCheck {
                send,
                receive,
                proxy_protocol_config,
            } = t;
            reject_set!(
                cx,
                "health_checks[0].tcp_health_check.",
                send,
                receive,
                proxy_protocol_config
            );
            HealthCheckKind::Tcp
        }
        Some(health_check::HealthChecker::CustomHealthCheck(c))
            if c.name == HEARTBEAT_HEALTH_CHECKER =>
        {
            if c.config_type.is_some() {
                cx.err(
                    format!("{p}custom_health_check.typed_config"),
                    "the heartbeat check takes no configuration",
                );
            }
            HealthCheckKind::Heartbeat
        }
        Some(health_check::HealthChecker::CustomHealthCheck(c)) => {
            cx.err(
                format!("{p}custom_health_check.name"),
                format!(
                    "unknown health checker {:?} (metamesh knows {HEARTBEAT_HEALTH_CHECKER})",
                    c.name
                ),
            );
            HealthCheckKind::Tcp
        }
        Some(health_check::HealthChecker::HttpHealthCheck(_)) => {
            cx.unsupported(format!("{p}http_health_check"));
            HealthCheckKind::Tcp
        }
        Some(health_check::HealthChecker::GrpcHealthCheck(_)) => {
            cx.unsupported(format!("{p}grpc_health_check"));
            HealthCheckKind::Tcp
        }
        None => {
            cx.err(
                format!("{p}health_checker"),
                "required: tcp_health_check or the heartbeat custom_health_check",
            );
            HealthCheckKind::Tcp
        }
    };
    let defaults = HealthCheckSettings::new(&config::HealthCheck {
        kind,
        interval: None,
        timeout: None,
        unhealthy_threshold: None,
        healthy_threshold: None,
    });
    let time = |cx: &mut Ctx, name: &str, v: Option<&wkt::Duration>, default: Duration| {
        let path = format!("{p}{name}");
        if v.is_none() && !defaulted.set.contains(&path) {
            cx.err(&path, "required");
        }
        let value = v.and_then(|d| cx.duration(&path, d));
        defaulted.get(cx, &path, value, ConfigDuration(default), None)
    };
    let timeout = time(cx, "timeout", timeout.as_ref(), defaults.timeout);
    let interval = time(cx, "interval", interval.as_ref(), defaults.interval);
    let count = |cx: &mut Ctx, name: &str, v: Option<&UInt32Value>, default: u32| {
        let path = format!("{p}{name}");
        if v.is_none() && !defaulted.set.contains(&path) {
            cx.err(&path, "required");
        }
        defaulted.get(cx, &path, v.map(|v| v.value), default, None)
    };
    let unhealthy_threshold = count(
        cx,
        "unhealthy_threshold",
        unhealthy_threshold.as_ref(),
        defaults.unhealthy_threshold,
    );
    let healthy_threshold = count(
        cx,
        "healthy_threshold",
        healthy_threshold.as_ref(),
        defaults.healthy_threshold,
    );
    Some(config::HealthCheck {
        kind,
        interval,
        timeout,
        unhealthy_threshold,
        healthy_threshold,
    })
}

fn decode_circuit_breakers(
    cx: &mut Ctx,
    defaulted: &Defaulted,
    cb: Option<&CircuitBreakers>,
) -> Option<config::CircuitBreakers> {
    let mut default_thresholds: Option<(usize, &Thresholds)> = None;
    if let Some(CircuitBreakers {
        thresholds,
        per_host_thresholds,
    }) = cb
    {
        reject_set!(cx, "circuit_breakers.", per_host_thresholds);
        for (i, t) in thresholds.iter().enumerate() {
            let p = format!("circuit_breakers.thresholds[{i}].");
            let Thresholds {
                priority,
                max_connections: _,
                max_pending_requests: _,
                max_requests: _,
                max_retries: _,
                retry_budget,
                track_remaining: _,
                max_connection_pools,
            } = t;
            match RoutingPriority::try_from(*priority) {
                Ok(RoutingPriority::Default) => {
                    reject_set!(cx, p, retry_budget, max_connection_pools);
                    if default_thresholds.is_some() {
                        cx.err(
                            format!("{p}priority"),
                            "DEFAULT thresholds given more than once",
                        );
                    } else {
                        default_thresholds = Some((i, t));
                    }
                }
                // Every metamesh request has the default priority.
                Ok(RoutingPriority::High) => {}
                Err(_) => cx.err(format!("{p}priority"), format!("unknown value {priority}")),
            }
        }
    }
    let whole = defaulted.set.contains("circuit_breakers");
    let (index, t) = default_thresholds.map_or((0, None), |(i, t)| (i, Some(t)));
    let mut limit = |name: &str, v: Option<&UInt32Value>, envoy_default: u32| {
        let path = format!("circuit_breakers.thresholds[{index}].{name}");
        let value = v.map(|v| v.value);
        if whole {
            if value.is_some_and(|v| v != UNLIMITED) {
                cx.err(
                    &path,
                    format!("circuit_breakers is listed in {METADATA_PATH}.defaulted but this is not unlimited"),
                );
            }
            return None;
        }
        defaulted.get(cx, &path, value, UNLIMITED, Some(envoy_default))
    };
    let out = config::CircuitBreakers {
        max_connections: limit(
            "max_connections",
            t.and_then(|t| t.max_connections.as_ref()),
            ENVOY_MAX_REQUESTS,
        ),
        max_pending_requests: limit(
            "max_pending_requests",
            t.and_then(|t| t.max_pending_requests.as_ref()),
            ENVOY_MAX_REQUESTS,
        ),
        max_requests: limit(
            "max_requests",
            t.and_then(|t| t.max_requests.as_ref()),
            ENVOY_MAX_REQUESTS,
        ),
        max_retries: limit(
            "max_retries",
            t.and_then(|t| t.max_retries.as_ref()),
            ENVOY_MAX_RETRIES,
        ),
    };
    (!whole).then_some(out)
}

fn decode_outlier_detection(cx: &mut Ctx, o: &OutlierDetection) -> config::OutlierDetection {
    let p = "outlier_detection.";
    let OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts: _,
        success_rate_request_volume: _,
        success_rate_stdev_factor: _,
        consecutive_gateway_failure: _,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold: _,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts: _,
        failure_percentage_request_volume: _,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host: _,
        detect_degraded_hosts,
    } = o;
    let mut enforcing = |name: &str, v: &Option<UInt32Value>, allowed: u32, what: &str| {
        if v.as_ref().is_some_and(|v| v.value != allowed) {
            cx.err(format!("{p}{name}"), format!("must be {allowed}: {what}"));
        }
    };
    enforcing(
        "enforcing_consecutive_5xx",
        enforcing_consecutive_5xx,
        100,
        "metamesh always ejects on consecutive errors",
    );
    enforcing(
        "enforcing_success_rate",
        enforcing_success_rate,
        0,
        "success-rate ejection is not supported",
    );
    enforcing(
        "enforcing_consecutive_gateway_failure",
        enforcing_consecutive_gateway_failure,
        0,
        "gateway-failure ejection is not supported",
    );
    enforcing(
        "enforcing_failure_percentage",
        enforcing_failure_percentage,
        0,
        "failure-percentage ejection is not supported",
    );
    enforcing(
        "enforcing_failure_percentage_local_origin",
        enforcing_failure_percentage_local_origin,
        0,
        "failure-percentage ejection is not supported",
    );
    if *split_external_local_origin_errors {
        enforcing(
            "enforcing_consecutive_local_origin_failure",
            enforcing_consecutive_local_origin_failure,
            100,
            "metamesh always ejects on consecutive local-origin failures",
        );
        enforcing(
            "enforcing_local_origin_success_rate",
            enforcing_local_origin_success_rate,
            0,
            "success-rate ejection is not supported",
        );
    }
    if max_ejection_time_jitter
        .as_ref()
        .is_some_and(|d| d.seconds != 0 || d.nanos != 0)
    {
        cx.unsupported(format!("{p}max_ejection_time_jitter"));
    }
    if successful_active_health_check_uneject_host
        .as_ref()
        .is_some_and(|b| b.value)
    {
        cx.unsupported(format!("{p}successful_active_health_check_uneject_host"));
    }
    if detect_degraded_hosts.as_ref().is_some_and(|b| b.value) {
        cx.unsupported(format!("{p}detect_degraded_hosts"));
    }
    reject_set!(cx, p, monitors);
    let mut time =
        |name: &str, d: &Option<wkt::Duration>| cx.opt_duration(&format!("{p}{name}"), d.as_ref());
    config::OutlierDetection {
        consecutive_errors: consecutive_5xx.map(|v| v.value),
        // Envoy counts local-origin failures apart only when split, 5 in a row by default.
        consecutive_local_origin_failures: split_external_local_origin_errors
            .then(|| consecutive_local_origin_failure.map_or(5, |v| v.value)),
        interval: time("interval", interval),
        base_ejection_time: time("base_ejection_time", base_ejection_time),
        max_ejection_time: time("max_ejection_time", max_ejection_time),
        max_ejection_percent: max_ejection_percent.map(|v| v.value),
    }
}

/// The panic threshold and whether locality-weighted balancing is on.
fn decode_common_lb_config(cx: &mut Ctx, c: &CommonLbConfig) -> (Option<u32>, bool) {
    let p = "common_lb_config.";
    let CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window: _,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = c;
    reject_set!(
        cx,
        p,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
    );
    let threshold = healthy_panic_threshold.as_ref().and_then(|pct| {
        let v = pct.value;
        if v.is_finite() && v.fract() == 0.0 && (0.0..=100.0).contains(&v) {
            Some(v as u32)
        } else {
            cx.err(
                format!("{p}healthy_panic_threshold"),
                format!("{v} is not a whole percentage from 0 to 100"),
            );
            None
        }
    });
    let weighted = match locality_config_specifier {
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => true,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            cx.err(
                format!("{p}zone_aware_lb_config"),
                format!(
                    "not supported: metamesh ranks endpoints by the proxy's own locality \
                     when {METADATA_PATH}.locality_lb is enabled"
                ),
            );
            false
        }
        None => false,
    };
    (threshold, weighted)
}

/// A load assignment's endpoints, with what the cluster needs to check against them.
#[derive(Default)]
struct DecodedEndpoints {
    endpoints: Vec<config::Endpoint>,
    /// Locality and Envoy weight of each `LocalityLbEndpoints`, in order.
    localities: Vec<(Locality, Option<u32>)>,
    overprovisioning_factor: Option<u32>,
    /// Path prefix of the load assignment inside its resource.
    prefix: &'static str,
}

#[allow(deprecated)]
fn load_assignment_endpoints(
    cx: &mut Ctx,
    prefix: &'static str,
    cla: &ClusterLoadAssignment,
) -> DecodedEndpoints {
    let ClusterLoadAssignment {
        cluster_name: _,
        endpoints,
        named_endpoints,
        policy,
    } = cla;
    reject_set!(cx, prefix, named_endpoints);
    let mut out = DecodedEndpoints {
        prefix,
        ..DecodedEndpoints::default()
    };
    if let Some(policy) = policy {
        let pp = format!("{prefix}policy.");
        let Policy {
            drop_overloads,
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = policy;
        reject_set!(
            cx,
            pp,
            drop_overloads,
            endpoint_stale_after,
            weighted_priority_health
        );
        out.overprovisioning_factor = overprovisioning_factor.map(|v| v.value);
    }
    for (i, group) in endpoints.iter().enumerate() {
        let gp = format!("{prefix}endpoints[{i}].");
        let LocalityLbEndpoints {
            locality,
            metadata: _,
            lb_endpoints,
            load_balancing_weight,
            priority,
            proximity: _,
            lb_config,
        } = group;
        reject_set!(cx, gp, lb_config);
        let locality = locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        out.localities
            .push((locality.clone(), load_balancing_weight.map(|w| w.value)));
        for (j, e) in lb_endpoints.iter().enumerate() {
            let ep = format!("{gp}lb_endpoints[{j}].");
            if let Some(e) = lb_endpoint(cx, &ep, e, &locality, *priority) {
                out.endpoints.push(e);
            }
        }
    }
    out
}

fn lb_endpoint(
    cx: &mut Ctx,
    p: &str,
    e: &LbEndpoint,
    locality: &Locality,
    priority: u32,
) -> Option<config::Endpoint> {
    let LbEndpoint {
        health_status,
        metadata,
        load_balancing_weight,
        host_identifier,
    } = e;
    match HealthStatus::try_from(*health_status) {
        Ok(HealthStatus::Unknown) | Ok(HealthStatus::Healthy) => {}
        Ok(other) => cx.err(
            format!("{p}health_status"),
            format!(
                "{} endpoints are not supported: leave them out of the assignment",
                other.as_str_name()
            ),
        ),
        Err(_) => cx.err(
            format!("{p}health_status"),
            format!("unknown value {health_status}"),
        ),
    }
    let mut label_errors = Vec::new();
    let labels = endpoint_labels(metadata.as_ref(), &mut label_errors);
    for (path, message) in label_errors {
        cx.err(format!("{p}{path}"), message);
    }
    let endpoint = match host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        Some(HostIdentifier::EndpointName(_)) => {
            cx.unsupported(format!("{p}endpoint_name"));
            return None;
        }
        None => {
            cx.err(format!("{p}endpoint"), "required");
            return None;
        }
    };
    let EnvoyEndpoint {
        address,
        health_check_config,
        hostname: _,
        additional_addresses,
        observability_name: _,
    } = endpoint;
    let ep = format!("{p}endpoint.");
    reject_set!(cx, ep, health_check_config, additional_addresses);
    let address = match address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => {
            socket_address(cx, &format!("{ep}address.socket_address."), sa)?
        }
        Some(_) => {
            cx.err(
                format!("{ep}address"),
                "only socket addresses are supported",
            );
            return None;
        }
        None => {
            cx.err(format!("{ep}address"), "required");
            return None;
        }
    };
    Some(config::Endpoint {
        address,
        locality: locality.clone(),
        weight: load_balancing_weight.map(|w| w.value),
        priority,
        labels,
    })
}

fn socket_address(cx: &mut Ctx, p: &str, sa: &SocketAddress) -> Option<String> {
    let SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat: _,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    if *protocol != socket_address::Protocol::Tcp as i32 {
        cx.err(format!("{p}protocol"), "only TCP is supported");
    }
    reject_set!(cx, p, resolver_name, network_namespace_filepath);
    let ip = match address.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            cx.err(
                format!("{p}address"),
                format!("{address:?} is not an IP address"),
            );
            None
        }
    };
    let port = match port_specifier {
        Some(socket_address::PortSpecifier::PortValue(v)) => match u16::try_from(*v) {
            Ok(port) => Some(port),
            Err(_) => {
                cx.err(format!("{p}port_value"), format!("{v} is not a port"));
                None
            }
        },
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            cx.unsupported(format!("{p}named_port"));
            None
        }
        None => {
            cx.err(format!("{p}port_value"), "required");
            None
        }
    };
    Some(SocketAddr::new(ip?, port?).to_string())
}
