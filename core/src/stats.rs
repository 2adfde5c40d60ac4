//! Proxy metrics through prometheus-client. Families are created once; listeners and
//! clusters resolve their labelled handles when they are built, so the request path only
//! increments atomics.
//!
//! The metrics a request moves ([`Counter`], [`ActiveGauge`], [`LatencyHistogram`]) keep
//! one cache line per worker thread and are summed when read: two workers counting the
//! same requests never write to the same line, so neither waits for the other's core to
//! hand it over (on a busy proxy, that wait costs more than the count).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::message::{LocalReplyKind, ResponseClass};

/// Labels of per-listener metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Labels of per-listener metrics with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// Listener name.
    pub listener: String,
    /// Why.
    pub reason: String,
}

/// Labels of per-cluster metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Cluster name.
    pub cluster: String,
}

/// Labels of per-cluster metrics with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    /// Cluster name.
    pub cluster: String,
    /// Why.
    pub reason: String,
}

/// Labels of per-endpoint metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Cluster name.
    pub cluster: String,
    /// Endpoint address.
    pub endpoint: String,
}

/// Labels of per-cluster resource metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterResourceLabels {
    /// Cluster name.
    pub cluster: String,
    /// Which limit: connections, pending, requests, retries.
    pub resource: String,
}

/// Labels of per-cluster results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterResultLabels {
    /// Cluster name.
    pub cluster: String,
    /// Outcome.
    pub result: String,
}

/// Labels of per-route results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResultLabels {
    /// Route configuration name.
    pub route_config: String,
    /// Route name.
    pub route: String,
    /// Outcome.
    pub result: String,
}

/// Labels of per-hook metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// Hook name.
    pub hook: String,
}

/// Labels of per-hook metrics with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookReasonLabels {
    /// Hook name.
    pub hook: String,
    /// Why.
    pub reason: String,
}

/// Labels of per-route metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route configuration name.
    pub route_config: String,
    /// Route name.
    pub route: String,
}

/// Labels of per-listener responses by class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerClassLabels {
    /// Listener name.
    pub listener: String,
    /// Response class (`2xx`, `5xx`, `success`, `error`, ...).
    pub class: String,
}

/// Labels of per-route responses by class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClassLabels {
    /// Route configuration name.
    pub route_config: String,
    /// Route name.
    pub route: String,
    /// Response class.
    pub class: String,
}

/// Labels of per-cluster responses by class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterClassLabels {
    /// Cluster name.
    pub cluster: String,
    /// Response class.
    pub class: String,
}

/// Labels of per-endpoint responses by class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointClassLabels {
    /// Cluster name.
    pub cluster: String,
    /// Endpoint address.
    pub endpoint: String,
    /// Response class.
    pub class: String,
}

/// Labels of per-resource-type xDS results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsResultLabels {
    /// Resource type (the last part of its type URL, e.g. `Cluster`).
    pub r#type: String,
    /// `ack` or `nack`.
    pub result: String,
}

/// Labels of the applied-version info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsVersionLabels {
    /// Resource type.
    pub r#type: String,
    /// Version string the server gave the applied resources.
    pub version: String,
}

/// Labels of configuration update results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// All metric families of one proxy.
pub struct Stats {
    registry: Registry,
    downstream_cx_total: Family<ListenerLabels, Counter>,
    downstream_cx_active: Family<ListenerLabels, Gauge>,
    downstream_rq_total: Family<ListenerLabels, Counter>,
    downstream_protocol_error_total: Family<ListenerReasonLabels, Counter>,
    local_reply_total: Family<ListenerReasonLabels, Counter>,
    heartbeat_total: Family<ListenerLabels, Counter>,
    route_rq_total: Family<RouteLabels, Counter>,
    upstream_rq_total: Family<ClusterLabels, Counter>,
    upstream_rq_error_total: Family<ClusterReasonLabels, Counter>,
    upstream_cx_total: Family<ClusterLabels, Counter>,
    upstream_cx_connect_fail_total: Family<ClusterLabels, Counter>,
    upstream_protocol_error_total: Family<ClusterReasonLabels, Counter>,
    upstream_endpoint_rq_total: Family<EndpointLabels, Counter>,
    upstream_rq_retry_total: Family<ClusterLabels, Counter>,
    upstream_overflow_total: Family<ClusterResourceLabels, Counter>,
    outlier_ejections_total: Family<ClusterLabels, Counter>,
    outlier_ejected: Family<ClusterLabels, Gauge>,
    health_check_total: Family<ClusterResultLabels, Counter>,
    endpoints_healthy: Family<ClusterLabels, Gauge>,
    mirror_total: Family<RouteResultLabels, Counter>,
    hook_calls_total: Family<HookLabels, Counter>,
    hook_errors_total: Family<HookReasonLabels, Counter>,
    hook_rejected_total: Family<HookLabels, Counter>,
    downstream_rq_active: Family<ListenerLabels, ActiveGauge>,
    downstream_rq_duration: Family<ListenerLabels, LatencyHistogram>,
    downstream_response_total: Family<ListenerClassLabels, Counter>,
    downstream_rx_bytes_total: Family<ListenerLabels, Counter>,
    downstream_tx_bytes_total: Family<ListenerLabels, Counter>,
    route_response_total: Family<RouteClassLabels, Counter>,
    upstream_rq_active: Family<ClusterLabels, ActiveGauge>,
    upstream_cx_active: Family<ClusterLabels, Gauge>,
    upstream_rq_duration: Family<ClusterLabels, LatencyHistogram>,
    upstream_response_total: Family<ClusterClassLabels, Counter>,
    upstream_rx_bytes_total: Family<ClusterLabels, Counter>,
    upstream_tx_bytes_total: Family<ClusterLabels, Counter>,
    upstream_endpoint_response_total: Family<EndpointClassLabels, Counter>,
    access_log_total: Family<ResultLabels, Counter>,
    config_version: Gauge,
    config_update_total: Family<ResultLabels, Counter>,
    xds_connected: Gauge,
    xds_update_total: Family<XdsResultLabels, Counter>,
    xds_config_info: Family<XdsVersionLabels, Gauge>,
    xds_versions: std::sync::Mutex<std::collections::HashMap<String, String>>,
    capture: crate::capture::CaptureStats,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("metamesh");
        macro_rules! family {
            ($name:literal, $help:literal) => {{
                let f = Family::default();
                registry.register($name, $help, f.clone());
                f
            }};
        }
        macro_rules! metric {
            ($name:literal, $help:literal) => {{
                let m = Gauge::default();
                registry.register($name, $help, m.clone());
                m
            }};
        }
        Self {
            downstream_cx_total: family!("downstream_cx", "Downstream connections accepted"),
            downstream_cx_active: family!("downstream_cx_active", "Open downstream connections"),
            downstream_rq_total: family!("downstream_rq", "Downstream requests decoded"),
            downstream_protocol_error_total: family!(
                "downstream_protocol_error",
                "Downstream frames that could not be decoded, by reason"
            ),
            local_reply_total: family!(
                "local_reply",
                "Requests answered by the proxy itself, by reason"
            ),
            heartbeat_total: family!("downstream_heartbeat", "Heartbeats answered locally"),
            route_rq_total: family!("route_rq", "Requests matched per route"),
            upstream_rq_total: family!("upstream_rq", "Requests sent to a cluster"),
            upstream_rq_error_total: family!(
                "upstream_rq_error",
                "Upstream requests that got no response, by reason"
            ),
            upstream_cx_total: family!("upstream_cx", "Upstream connections established"),
            upstream_cx_connect_fail_total: family!(
                "upstream_cx_connect_fail",
                "Upstream connection attempts that failed"
            ),
            upstream_protocol_error_total: family!(
                "upstream_protocol_error",
                "Upstream frames that could not be decoded, by reason"
            ),
            upstream_endpoint_rq_total: family!(
                "upstream_endpoint_rq",
                "Requests sent to each endpoint"
            ),
            upstream_rq_retry_total: family!("upstream_rq_retry", "Retried upstream requests"),
            upstream_overflow_total: family!(
                "upstream_overflow",
                "Requests refused by a cluster's circuit breakers, by resource"
            ),
            outlier_ejections_total: family!(
                "outlier_ejections",
                "Endpoints ejected by outlier detection"
            ),
            outlier_ejected: family!("outlier_ejected", "Endpoints ejected now"),
            health_check_total: family!("health_check", "Active health check probes, by result"),
            endpoints_healthy: family!(
                "cluster_endpoints_healthy",
                "Endpoints that take traffic (not ejected, passing health checks)"
            ),
            mirror_total: family!(
                "mirror",
                "Mirrored request copies, by result (sent, dropped, failed)"
            ),
            hook_calls_total: family!("hook_calls", "Lua hook calls"),
            hook_errors_total: family!(
                "hook_errors",
                "Lua hook calls that failed, by reason (error, budget, memory)"
            ),
            hook_rejected_total: family!("hook_rejected", "Requests a Lua hook rejected"),
            downstream_rq_active: family!(
                "downstream_rq_active",
                "Downstream requests being handled"
            ),
            downstream_rq_duration: family!(
                "downstream_rq_duration_seconds",
                "Time from a request's decoding to its answer being handed to the connection"
            ),
            downstream_response_total: family!(
                "downstream_response",
                "Answers to downstream requests (forwarded or local), by class"
            ),
            downstream_rx_bytes_total: family!(
                "downstream_rx_bytes",
                "Request bytes received from clients (heads and bodies)"
            ),
            downstream_tx_bytes_total: family!(
                "downstream_tx_bytes",
                "Response bytes sent to clients (heads and bodies)"
            ),
            route_response_total: family!("route_response", "Answers per route, by class"),
            upstream_rq_active: family!("upstream_rq_active", "Upstream requests in flight"),
            upstream_cx_active: family!("upstream_cx_active", "Open upstream connections"),
            upstream_rq_duration: family!(
                "upstream_rq_duration_seconds",
                "Time from sending a request to an endpoint to its response head"
            ),
            upstream_response_total: family!(
                "upstream_response",
                "Responses received from a cluster's endpoints, by class"
            ),
            upstream_rx_bytes_total: family!(
                "upstream_rx_bytes",
                "Response bytes received from a cluster's endpoints"
            ),
            upstream_tx_bytes_total: family!(
                "upstream_tx_bytes",
                "Request bytes sent to a cluster's endpoints"
            ),
            upstream_endpoint_response_total: family!(
                "upstream_endpoint_response",
                "Responses received from each endpoint, by class"
            ),
            access_log_total: family!(
                "access_log",
                "Access log entries, by result (written, dropped, failed)"
            ),
            config_version: metric!(
                "config_version",
                "Number of the configuration in force (counts applied updates)"
            ),
            config_update_total: family!(
                "config_update",
                "Configuration updates, by result (success, failure)"
            ),
            xds_connected: metric!(
                "xds_connected",
                "1 while the ADS stream to the control plane is open"
            ),
            xds_update_total: family!(
                "xds_update",
                "xDS responses answered, by resource type and result (ack, nack)"
            ),
            xds_config_info: family!(
                "xds_config_info",
                "The version of each resource type in force (value always 1)"
            ),
            xds_versions: Default::default(),
            capture: crate::capture::CaptureStats::register(&mut registry),
            registry,
        }
    }

    /// Renders the OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics of the capture listeners.
    pub fn capture(&self) -> &crate::capture::CaptureStats {
        &self.capture
    }

    /// Handles for one listener.
    pub fn listener(self: &Arc<Self>, name: &str) -> ListenerStats {
        let l = ListenerLabels {
            listener: name.to_owned(),
        };
        let local_replies = LocalReplyKind::ALL.map(|k| {
            self.local_reply_total
                .get_or_create(&ListenerReasonLabels {
                    listener: name.to_owned(),
                    reason: k.as_str().to_owned(),
                })
                .clone()
        });
        let responses = {
            let (family, listener) = (self.downstream_response_total.clone(), name.to_owned());
            ByClass::new(move |class| {
                family
                    .get_or_create(&ListenerClassLabels {
                        listener: listener.clone(),
                        class: class.to_owned(),
                    })
                    .clone()
            })
        };
        ListenerStats {
            name: name.into(),
            rq_active: self.downstream_rq_active.get_or_create(&l).clone(),
            rq_duration: self.downstream_rq_duration.get_or_create(&l).clone(),
            responses,
            rx_bytes: self.downstream_rx_bytes_total.get_or_create(&l).clone(),
            tx_bytes: self.downstream_tx_bytes_total.get_or_create(&l).clone(),
            cx_total: self.downstream_cx_total.get_or_create(&l).clone(),
            cx_active: self.downstream_cx_active.get_or_create(&l).clone(),
            rq_total: self.downstream_rq_total.get_or_create(&l).clone(),
            heartbeats: self.heartbeat_total.get_or_create(&l).clone(),
            local_replies,
            stats: self.clone(),
        }
    }

    /// Handles for one cluster.
    pub fn cluster(self: &Arc<Self>, name: &str) -> ClusterStats {
        let l = ClusterLabels {
            cluster: name.to_owned(),
        };
        let result = |r: &str| {
            self.health_check_total
                .get_or_create(&ClusterResultLabels {
                    cluster: name.to_owned(),
                    result: r.to_owned(),
                })
                .clone()
        };
        let responses = {
            let (family, cluster) = (self.upstream_response_total.clone(), name.to_owned());
            ByClass::new(move |class| {
                family
                    .get_or_create(&ClusterClassLabels {
                        cluster: cluster.clone(),
                        class: class.to_owned(),
                    })
                    .clone()
            })
        };
        ClusterStats {
            name: name.into(),
            rq_active: self.upstream_rq_active.get_or_create(&l).clone(),
            cx_active: self.upstream_cx_active.get_or_create(&l).clone(),
            rq_duration: self.upstream_rq_duration.get_or_create(&l).clone(),
            responses,
            rx_bytes: self.upstream_rx_bytes_total.get_or_create(&l).clone(),
            tx_bytes: self.upstream_tx_bytes_total.get_or_create(&l).clone(),
            retries: self.upstream_rq_retry_total.get_or_create(&l).clone(),
            ejections: self.outlier_ejections_total.get_or_create(&l).clone(),
            ejected: self.outlier_ejected.get_or_create(&l).clone(),
            healthy: self.endpoints_healthy.get_or_create(&l).clone(),
            hc_success: result("success"),
            hc_failure: result("failure"),
            rq_total: self.upstream_rq_total.get_or_create(&l).clone(),
            cx_total: self.upstream_cx_total.get_or_create(&l).clone(),
            cx_connect_fail: self
                .upstream_cx_connect_fail_total
                .get_or_create(&l)
                .clone(),
            stats: self.clone(),
        }
    }

    /// The request counter of one endpoint.
    pub fn endpoint(&self, cluster: &str, endpoint: &str) -> Counter {
        self.upstream_endpoint_rq_total
            .get_or_create(&EndpointLabels {
                cluster: cluster.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .clone()
    }

    /// Response counters of one endpoint, by class.
    pub fn endpoint_responses(&self, cluster: &str, endpoint: &str) -> ByClass {
        let family = self.upstream_endpoint_response_total.clone();
        let (cluster, endpoint) = (cluster.to_owned(), endpoint.to_owned());
        ByClass::new(move |class| {
            family
                .get_or_create(&EndpointClassLabels {
                    cluster: cluster.clone(),
                    endpoint: endpoint.clone(),
                    class: class.to_owned(),
                })
                .clone()
        })
    }

    /// Response counters of one route, by class.
    pub fn route_responses(&self, route_config: &str, route: &str) -> ByClass {
        let family = self.route_response_total.clone();
        let (route_config, route) = (route_config.to_owned(), route.to_owned());
        ByClass::new(move |class| {
            family
                .get_or_create(&RouteClassLabels {
                    route_config: route_config.clone(),
                    route: route.clone(),
                    class: class.to_owned(),
                })
                .clone()
        })
    }

    /// The access log counter of `result` (`written`, `dropped`, `failed`).
    pub fn access_log(&self, result: &str) -> Counter {
        self.access_log_total
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .clone()
    }

    /// Counters of one hook.
    pub fn hook(&self, name: &str) -> crate::lua::HookStats {
        let l = HookLabels {
            hook: name.to_owned(),
        };
        let error = |reason: &str| {
            self.hook_errors_total
                .get_or_create(&HookReasonLabels {
                    hook: name.to_owned(),
                    reason: reason.to_owned(),
                })
                .clone()
        };
        crate::lua::HookStats {
            calls: self.hook_calls_total.get_or_create(&l).clone(),
            errors: error("error"),
            budget_exceeded: error("budget"),
            memory_exceeded: error("memory"),
            rejected: self.hook_rejected_total.get_or_create(&l).clone(),
        }
    }

    /// Mirror counters of one route.
    pub fn mirror(&self, route_config: &str, route: &str) -> MirrorStats {
        let c = |result: &str| {
            self.mirror_total
                .get_or_create(&RouteResultLabels {
                    route_config: route_config.to_owned(),
                    route: route.to_owned(),
                    result: result.to_owned(),
                })
                .clone()
        };
        MirrorStats {
            sent: c("sent"),
            dropped: c("dropped"),
            failed: c("failed"),
        }
    }

    /// Records the outcome of a configuration update; `version` is the number of the
    /// configuration in force after it.
    pub fn config_update(&self, ok: bool, version: u64) {
        let result = if ok { "success" } else { "failure" };
        self.config_update_total
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Marks the ADS stream open or closed.
    pub fn xds_connected(&self, connected: bool) {
        self.xds_connected.set(i64::from(connected));
    }

    /// Records an ACK (`accepted`) or a NACK of one resource type. An accepted
    /// `version` replaces the type's previous one in `xds_config_info`.
    pub fn xds_update(&self, kind: &str, version: &str, accepted: bool) {
        let result = if accepted { "ack" } else { "nack" };
        self.xds_update_total
            .get_or_create(&XdsResultLabels {
                r#type: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if !accepted {
            return;
        }
        // A family cannot be iterated; the version in force per type is kept beside it.
        let previous = self
            .xds_versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kind.to_owned(), version.to_owned());
        if let Some(old) = previous.filter(|old| old != version) {
            self.xds_config_info.remove(&XdsVersionLabels {
                r#type: kind.to_owned(),
                version: old,
            });
        }
        self.xds_config_info
            .get_or_create(&XdsVersionLabels {
                r#type: kind.to_owned(),
                version: version.to_owned(),
            })
            .set(1);
    }

    /// The per-route request counter.
    pub fn route(&self, route_config: &str, route: &str) -> Counter {
        self.route_rq_total
            .get_or_create(&RouteLabels {
                route_config: route_config.to_owned(),
                route: route.to_owned(),
            })
            .clone()
    }
}

/// Metric handles of one listener.
#[derive(Clone)]
pub struct ListenerStats {
    name: Arc<str>,
    /// Requests being handled.
    pub rq_active: ActiveGauge,
    /// Request durations.
    pub rq_duration: LatencyHistogram,
    /// Answers by class.
    pub responses: ByClass,
    /// Request bytes received.
    pub rx_bytes: Counter,
    /// Response bytes sent.
    pub tx_bytes: Counter,
    /// Connections accepted.
    pub cx_total: Counter,
    /// Connections open.
    pub cx_active: Gauge,
    /// Requests decoded.
    pub rq_total: Counter,
    /// Heartbeats answered.
    pub heartbeats: Counter,
    local_replies: [Counter; LocalReplyKind::ALL.len()],
    stats: Arc<Stats>,
}

impl ListenerStats {
    /// Counts a local reply.
    pub fn local_reply(&self, kind: LocalReplyKind) {
        let i = LocalReplyKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.local_replies[i].inc();
    }

    /// Counts a frame that could not be decoded.
    pub fn protocol_error(&self, reason: &str) {
        self.stats
            .downstream_protocol_error_total
            .get_or_create(&ListenerReasonLabels {
                listener: self.name.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Mirror counters of one route.
#[derive(Clone, Debug)]
pub struct MirrorStats {
    /// Copies sent to the shadow.
    pub sent: Counter,
    /// Copies not sent: too many in flight, or a request whose body streams.
    pub dropped: Counter,
    /// Copies that got no response from the shadow.
    pub failed: Counter,
}

/// Metric handles of one cluster.
#[derive(Clone)]
pub struct ClusterStats {
    name: Arc<str>,
    /// Requests in flight.
    pub rq_active: ActiveGauge,
    /// Open connections.
    pub cx_active: Gauge,
    /// Time to the response head, per attempt.
    pub rq_duration: LatencyHistogram,
    /// Responses by class.
    pub responses: ByClass,
    /// Response bytes received.
    pub rx_bytes: Counter,
    /// Request bytes sent.
    pub tx_bytes: Counter,
    /// Retries.
    pub retries: Counter,
    /// Outlier ejections.
    pub ejections: Counter,
    /// Endpoints ejected now.
    pub ejected: Gauge,
    /// Endpoints taking traffic.
    pub healthy: Gauge,
    /// Passed health check probes.
    pub hc_success: Counter,
    /// Failed health check probes.
    pub hc_failure: Counter,
    /// Requests sent.
    pub rq_total: Counter,
    /// Connections established.
    pub cx_total: Counter,
    /// Connection attempts that failed.
    pub cx_connect_fail: Counter,
    stats: Arc<Stats>,
}

impl ClusterStats {
    /// Counts an upstream request that got no response.
    pub fn rq_error(&self, reason: &str) {
        self.stats
            .upstream_rq_error_total
            .get_or_create(&ClusterReasonLabels {
                cluster: self.name.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a request refused by a circuit breaker.
    pub fn overflow(&self, resource: &str) {
        self.stats
            .upstream_overflow_total
            .get_or_create(&ClusterResourceLabels {
                cluster: self.name.to_string(),
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// The cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The request counter of one of the cluster's endpoints.
    pub fn endpoint(&self, address: &str) -> Counter {
        self.stats.endpoint(&self.name, address)
    }

    /// The response counters of one of the cluster's endpoints.
    pub fn endpoint_responses(&self, address: &str) -> ByClass {
        self.stats.endpoint_responses(&self.name, address)
    }

    /// Counts an upstream frame that could not be decoded.
    pub fn protocol_error(&self, reason: &str) {
        self.stats
            .upstream_protocol_error_total
            .get_or_create(&ClusterReasonLabels {
                cluster: self.name.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Counters of one subject by response class, each created (and so shown) on first use.
#[derive(Clone)]
pub struct ByClass(Arc<ByClassInner>);

struct ByClassInner {
    slots: [OnceLock<Counter>; ResponseClass::ALL.len()],
    make: Box<dyn Fn(&'static str) -> Counter + Send + Sync>,
}

impl ByClass {
    fn new(make: impl Fn(&'static str) -> Counter + Send + Sync + 'static) -> ByClass {
        ByClass(Arc::new(ByClassInner {
            slots: Default::default(),
            make: Box::new(make),
        }))
    }

    /// Counts one response of `class`.
    pub fn inc(&self, class: ResponseClass) {
        self.0.slots[class.index()]
            .get_or_init(|| (self.0.make)(class.as_str()))
            .inc();
    }
}

impl std::fmt::Debug for ByClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByClass").finish_non_exhaustive()
    }
}

/// Upper bounds of the latency buckets, in nanoseconds: 25 µs to 10 s.
const LATENCY_BOUNDS_NS: [u64; 18] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A cache line of its own for one worker's share of a metric.
#[derive(Default)]
#[repr(align(64))]
struct Line<T>(T);

/// One share per worker thread, and one for every other thread.
fn shares<T: Default>() -> Arc<[Line<T>]> {
    (0..crate::worker::stats_shares())
        .map(|_| Line::default())
        .collect()
}

/// The calling thread's share of `lines` (the first when it is not a worker's). `None`
/// only for no shares at all, which [`shares`] never makes.
#[inline]
fn share<T>(lines: &[Line<T>]) -> Option<&T> {
    lines
        .get(crate::worker::stats_share())
        .or_else(|| lines.first())
        .map(|l| &l.0)
}

/// A number kept in per-worker shares of wrapping additions, summed when read.
#[derive(Clone)]
struct Shares(Arc<[Line<AtomicU64>]>);

impl Default for Shares {
    fn default() -> Self {
        Shares(shares())
    }
}

impl Shares {
    #[inline]
    fn add(&self, v: u64) {
        if let Some(n) = share(&self.0) {
            n.fetch_add(v, Ordering::Relaxed);
        }
    }

    fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |n, l| n.wrapping_add(l.0.load(Ordering::Relaxed)))
    }
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.sum().fmt(f)
    }
}

/// A monotonic counter, kept per worker thread and summed when read.
#[derive(Clone, Default, Debug)]
pub struct Counter(Shares);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.add(1);
    }

    /// Adds `v`.
    #[inline]
    pub fn inc_by(&self, v: u64) {
        self.0.add(v);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.sum()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge of things in progress (requests being handled), moved only up and down by one,
/// kept per worker thread and summed when read. A thing may end on another thread than
/// the one it started on: a share may go below zero, and the sum is still right (the
/// shares add up in two's complement).
#[derive(Clone, Default, Debug)]
pub struct ActiveGauge(Shares);

impl ActiveGauge {
    /// One more in progress.
    #[inline]
    pub fn inc(&self) {
        self.0.add(1);
    }

    /// One fewer in progress.
    #[inline]
    pub fn dec(&self) {
        self.0.add(u64::MAX);
    }

    /// In progress now.
    pub fn get(&self) -> i64 {
        self.0.sum() as i64
    }
}

impl TypedMetric for ActiveGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ActiveGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A latency histogram with fixed buckets (25 µs to 10 s) that records with three
/// relaxed atomic additions to the calling worker's share, and no lock. Rendered in
/// seconds.
#[derive(Clone)]
pub struct LatencyHistogram(Arc<[Line<HistogramShare>]>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(shares())
    }
}

#[derive(Default)]
struct HistogramShare {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        let Some(share) = share(&self.0) else { return };
        if let Some(bucket) = share.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        share.count.fetch_add(1, Ordering::Relaxed);
        share.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |n, l| {
            n.wrapping_add(l.0.count.load(Ordering::Relaxed))
        })
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; LATENCY_BOUNDS_NS.len() + 1];
        let mut sum_ns = 0u64;
        for line in self.0.iter() {
            for (n, b) in counts.iter_mut().zip(&line.0.buckets) {
                *n = n.wrapping_add(b.load(Ordering::Relaxed));
            }
            sum_ns = sum_ns.wrapping_add(line.0.sum_ns.load(Ordering::Relaxed));
        }
        let count = counts.iter().sum();
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = LATENCY_BOUNDS_NS
                    .get(i)
                    .map_or(f64::MAX, |ns| *ns as f64 / 1e9);
                (bound, *n)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::Workers;
    use tokio_util::task::TaskTracker;

    /// Which shares of `lines` hold something.
    fn written<T>(lines: &[Line<T>], nonzero: impl Fn(&T) -> bool) -> Vec<usize> {
        (0..lines.len()).filter(|i| nonzero(&lines[*i].0)).collect()
    }

    #[tokio::test]
    async fn each_worker_counts_in_its_own_share_and_reads_sum_them() {
        let counter = Counter::default();
        let gauge = ActiveGauge::default();
        let histogram = LatencyHistogram::default();
        assert_eq!(counter.0 .0.len(), crate::worker::connection_groups() + 1);
        // A thread that is not a worker's writes the first share.
        counter.inc_by(5);
        gauge.inc();
        gauge.inc();
        histogram.observe(Duration::from_micros(30));
        assert_eq!(
            written(&counter.0 .0, |n| n.load(Ordering::Relaxed) > 0),
            [0]
        );

        let workers = Workers::start(2).unwrap();
        let tracker = TaskTracker::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..2 {
            let (counter, gauge, histogram, tx) = (
                counter.clone(),
                gauge.clone(),
                histogram.clone(),
                tx.clone(),
            );
            workers.spawn(&tracker, async move {
                counter.inc();
                counter.inc_by(10);
                // A request that started on another thread ends on this one: this
                // worker's share goes below zero.
                gauge.dec();
                histogram.observe(Duration::from_millis(2));
                let _ = tx.send(());
            });
        }
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();

        assert_eq!(counter.get(), 5 + 2 * 11);
        assert_eq!(gauge.get(), 0);
        gauge.inc();
        assert_eq!(gauge.get(), 1);
        assert_eq!(histogram.count(), 3);
        let shares = written(&counter.0 .0, |n| n.load(Ordering::Relaxed) > 0);
        if crate::worker::connection_groups() >= 2 {
            // The two workers wrote apart from each other and from the first share.
            assert_eq!(shares, [0, 1, 2]);
        } else {
            assert_eq!(shares, [0, 1]);
        }
        // Shares are a cache line apart.
        assert!(std::mem::align_of::<Line<HistogramShare>>() >= 64);

        let mut registry = Registry::default();
        registry.register("requests", "", counter.clone());
        registry.register("active", "", gauge.clone());
        registry.register("latency_seconds", "", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("requests_total 27\n"), "{text}");
        assert!(text.contains("active 1\n"), "{text}");
        assert!(text.contains("latency_seconds_count 3\n"), "{text}");
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.0025\"} 3\n"),
            "{text}"
        );
    }
}
