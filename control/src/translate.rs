//! Translation of mesh resources into the configuration of one proxy (core's
//! [`Bootstrap`]), with Istio's and Aeraki's semantics. Locality decisions depend on the
//! proxy's own locality, which is why the translation takes its [`Node`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use metamesh_core::config::{
    Bootstrap, CircuitBreakers, Cluster, ConfigDuration, Destination, Endpoint, Hook,
    InterceptionMode, KeyValue, LbPolicy, Listener, LocalityLb, LocalityWeight, MaglevConfig,
    Mirror, Node, OutlierDetection, Retry, RingHashConfig, Route, RouteConfig, RouteMatch,
    StringMatch, TokenBucket, TrafficDirection,
};

use crate::error::{Location, ResourceError};
use crate::resources::destination_rule::{self as dr, SimpleLb};
use crate::resources::index::{cluster_name, host_attribute, Index, MetaPort, Policy, Service};
use crate::resources::meta_router::{self as mr, MetaRoute};
use crate::resources::validate::{hook_name, retry_on, route_name};
use crate::resources::MeshResources;
use crate::{duration, locality};

/// Where outbound listeners bind when the node does not say (`node.outbound_address`).
pub const DEFAULT_OUTBOUND_ADDRESS: &str = "127.0.0.1";

/// Local-origin failures in a row that eject an endpoint when Istio's
/// `splitExternalLocalOriginErrors` is on without a count (Envoy's default).
const DEFAULT_LOCAL_ORIGIN_FAILURES: u32 = 5;

/// The configuration one proxy gets from the mesh resources.
///
/// The resources are validated first; any problem (of the resources, or an unusable
/// `node.outbound_address`) is returned instead. The result passes
/// [`Bootstrap::validate`] with the proxy's protocols.
pub fn translate(mesh: &MeshResources, node: &Node) -> Result<Bootstrap, Vec<ResourceError>> {
    mesh.validated()?.translate(node)
}

/// Resources that passed [`MeshResources::validate`]: translated for any number of
/// proxies without being checked again.
#[derive(Clone, Copy, Debug)]
pub struct ValidatedMesh<'a> {
    mesh: &'a MeshResources,
}

impl MeshResources {
    /// Validates the resources once, for translating them for many proxies.
    pub fn validated(&self) -> Result<ValidatedMesh<'_>, Vec<ResourceError>> {
        self.validate()?;
        Ok(ValidatedMesh { mesh: self })
    }

    /// The resources as validated before, without checking them again: for a caller
    /// that already had [`MeshResources::validated`] succeed on this very set.
    pub(crate) fn already_validated(&self) -> ValidatedMesh<'_> {
        ValidatedMesh { mesh: self }
    }
}

impl<'a> ValidatedMesh<'a> {
    /// The resources.
    pub fn mesh(&self) -> &'a MeshResources {
        self.mesh
    }

    /// The configuration of the proxy `node`; fails only on an unusable
    /// `node.outbound_address`.
    pub fn translate(&self, node: &Node) -> Result<Bootstrap, Vec<ResourceError>> {
        translate_valid(self.mesh, node)
    }
}

fn translate_valid(mesh: &MeshResources, node: &Node) -> Result<Bootstrap, Vec<ResourceError>> {
    let outbound = node
        .outbound_address
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or(DEFAULT_OUTBOUND_ADDRESS);
    let Ok(outbound_ip) = outbound.parse::<IpAddr>() else {
        return Err(vec![ResourceError::new(
            Location {
                file: String::new(),
                resource: format!("node {}", node.id),
                path: "outbound_address".into(),
            },
            format!("{outbound:?} is not an IP address"),
        )]);
    };
    let mut t = Translator {
        index: Index::new(mesh),
        node,
        errors: Vec::new(),
    };
    let (listeners, routes, hook_names) = t.listeners(outbound_ip);
    let clusters = t.clusters();
    let hooks = mesh
        .lua_hooks()
        .iter()
        .filter(|h| hook_names.contains(&hook_name(h)))
        .map(|h| Hook {
            name: hook_name(h),
            script: h.spec.script.clone(),
            memory_limit: h.spec.memory_limit.and_then(|m| usize::try_from(m).ok()),
            instruction_limit: h.spec.instruction_limit,
        })
        .collect();
    if !t.errors.is_empty() {
        return Err(t.errors);
    }
    Ok(Bootstrap {
        node: node.clone(),
        admin: None,
        xds: None,
        listeners,
        routes,
        clusters,
        hooks,
        // Says the listeners above are reached through capture, so the translation
        // validates on its own; a proxy keeps the capture section of its bootstrap.
        capture: (node.interception_mode == InterceptionMode::Redirect)
            .then(metamesh_core::config::Capture::default),
        ..Bootstrap::default()
    })
}

struct Translator<'a> {
    index: Index<'a>,
    node: &'a Node,
    errors: Vec<ResourceError>,
}

/// A duration that validation already accepted.
fn config_duration(text: &str) -> Option<ConfigDuration> {
    duration::parse(text).ok().map(ConfigDuration)
}

fn string_match(cond: &Option<mr::StringMatch>) -> StringMatch {
    let present = StringMatch {
        present: Some(true),
        ..StringMatch::default()
    };
    match cond {
        None => present,
        Some(c) if c.regex.as_deref() == Some("*") => present,
        Some(c) if c.exact.is_none() && c.prefix.is_none() && c.regex.is_none() => present,
        Some(c) => StringMatch {
            exact: c.exact.clone(),
            prefix: c.prefix.clone(),
            regex: c.regex.clone(),
            present: None,
        },
    }
}

fn route_match(m: Option<&mr::MetaRouteMatch>) -> RouteMatch {
    RouteMatch {
        attributes: m
            .map(|m| {
                m.attributes
                    .iter()
                    .map(|(k, c)| (k.clone(), string_match(c)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn token_bucket(tb: &mr::TokenBucket, m: Option<&mr::MetaRouteMatch>) -> Option<TokenBucket> {
    Some(TokenBucket {
        max_tokens: tb.max_tokens,
        tokens_per_fill: Some(tb.tokens_per_fill.unwrap_or(1)),
        fill_interval: config_duration(&tb.fill_interval)?,
        match_: m.map(|m| route_match(Some(m))),
    })
}

/// Adds the condition naming a service to a match, unless the match already conditions
/// that attribute (the user's own condition is kept).
fn add_condition(m: &mut RouteMatch, cond: &(String, StringMatch)) {
    if !m.attributes.keys().any(|k| k.eq_ignore_ascii_case(&cond.0)) {
        m.attributes.insert(cond.0.clone(), cond.1.clone());
    }
}

/// The condition telling a service's requests apart on a port several services share:
/// Dubbo's `interface` (the ServiceEntry's `interface` annotation, else the host compared
/// case-insensitively), Thrift's `service` and HTTP's `:authority` (host, any port).
fn host_condition(svc: &Service<'_>, protocol: &str) -> Option<(String, StringMatch)> {
    let attr = host_attribute(protocol)?;
    if protocol == "dubbo" && svc.entry.spec.hosts.len() == 1 {
        if let Some(iface) = svc
            .entry
            .metadata
            .annotations
            .get("interface")
            .filter(|i| !i.is_empty())
        {
            return Some((
                attr.to_owned(),
                StringMatch {
                    exact: Some(iface.clone()),
                    ..StringMatch::default()
                },
            ));
        }
    }
    let host = regex::escape(svc.host);
    let re = if protocol == "http" {
        format!("(?i){host}(:[0-9]+)?")
    } else {
        format!("(?i){host}")
    };
    Some((
        attr.to_owned(),
        StringMatch {
            regex: Some(re),
            ..StringMatch::default()
        },
    ))
}

impl<'a> Translator<'a> {
    fn fail(&mut self, obj_id: String, file: &str, path: String, message: String) {
        self.errors.push(ResourceError::new(
            Location {
                file: file.to_owned(),
                resource: obj_id,
                path,
            },
            message,
        ));
    }

    /// One outbound listener per port; services sharing a port share its listener. A
    /// proxy whose traffic is redirected to it (`node.interception_mode: redirect`) gets
    /// them on the wildcard address without a socket of their own: its virtual outbound
    /// listener hands them the connections by original destination (Istio's
    /// `0.0.0.0_PORT` listeners with `bind_to_port: false`).
    fn listeners(&mut self, ip: IpAddr) -> (Vec<Listener>, Vec<RouteConfig>, BTreeSet<String>) {
        let mut by_port: BTreeMap<u16, Vec<(Service<'a>, MetaPort<'a>)>> = BTreeMap::new();
        for svc in self.index.services.values() {
            for p in &svc.ports {
                by_port
                    .entry(p.number)
                    .or_default()
                    .push((svc.clone(), p.clone()));
            }
        }
        let mut listeners = Vec::new();
        let mut configs = Vec::new();
        let mut used_hooks = BTreeSet::new();
        for (port, group) in by_port {
            let Some(protocol) = group.first().map(|(_, p)| p.protocol.clone()) else {
                continue;
            };
            let name = format!("outbound_{port}");
            let shared = group.len() > 1;
            let mut routes = Vec::new();
            let mut listener_hooks = Vec::new();
            let mut rate_limit = None;
            let mut rate_conditions = Vec::new();
            for (svc, mp) in &group {
                let cond = if shared {
                    host_condition(svc, &protocol)
                } else {
                    None
                };
                let hooks: Vec<String> = self
                    .index
                    .hooks(svc.host)
                    .iter()
                    .map(|h| hook_name(h))
                    .collect();
                used_hooks.extend(hooks.iter().cloned());
                let router = self.index.router(svc.host);
                let mut host_routes = match router {
                    Some(r) if !r.spec.routes.is_empty() => r
                        .spec
                        .routes
                        .iter()
                        .enumerate()
                        .filter_map(|(i, route)| self.route(r, i, route, mp.number, &protocol))
                        .collect(),
                    _ => vec![self.default_route(svc, mp)],
                };
                if let Some(rl) = router.and_then(|r| r.spec.local_rate_limit.as_ref()) {
                    // Aeraki's conditions, in order; then the bucket of the others.
                    let mut buckets: Vec<_> = rl
                        .conditions
                        .iter()
                        .filter_map(|c| token_bucket(&c.token_bucket, Some(&c.match_)))
                        .collect();
                    let mut rest = rl
                        .token_bucket
                        .as_ref()
                        .and_then(|tb| token_bucket(tb, None));
                    if let Some(c) = &cond {
                        // A port other services share: every bucket of this service is for
                        // its own requests, its default one included.
                        buckets.extend(rest.take());
                        for b in &mut buckets {
                            add_condition(b.match_.get_or_insert_with(RouteMatch::default), c);
                        }
                    }
                    rate_conditions.extend(buckets);
                    if rest.is_some() {
                        rate_limit = rest;
                    }
                }
                if shared {
                    for r in &mut host_routes {
                        r.name = format!("{}/{}", svc.host, r.name);
                        if let Some(c) = &cond {
                            add_condition(&mut r.match_, c);
                        }
                        r.hooks = hooks.clone();
                    }
                } else {
                    listener_hooks = hooks;
                }
                routes.extend(host_routes);
            }
            let captured = self.node.interception_mode == InterceptionMode::Redirect;
            let ip = if captured {
                match ip {
                    IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                }
            } else {
                ip
            };
            listeners.push(Listener {
                name: name.clone(),
                address: SocketAddr::new(ip, port).to_string(),
                protocol,
                route_config: name.clone(),
                hooks: listener_hooks,
                local_rate_limit: rate_limit,
                local_rate_limit_conditions: rate_conditions,
                max_frame_size: None,
                protocol_options: BTreeMap::new(),
                bind_to_port: !captured,
                traffic_direction: if captured {
                    TrafficDirection::Outbound
                } else {
                    TrafficDirection::Unspecified
                },
            });
            configs.push(RouteConfig { name, routes });
        }
        (listeners, configs, used_hooks)
    }

    fn default_route(&self, svc: &Service<'a>, mp: &MetaPort<'a>) -> Route {
        let rule = self.index.rule(svc.host);
        let hash = Policy::of(rule, mp.number, None).hash_attribute();
        Route {
            name: "default".into(),
            match_: RouteMatch::default(),
            route: vec![Destination {
                cluster: cluster_name(mp.number, "", svc.host),
                weight: None,
            }],
            request_mutation: Vec::new(),
            response_mutation: Vec::new(),
            mirror: None,
            timeout: None,
            retry: None,
            hash_policy: hash.map(str::to_owned).into_iter().collect(),
            local_rate_limit: None,
            hooks: Vec::new(),
        }
    }

    fn route(
        &mut self,
        router: &mr::MetaRouter,
        index: usize,
        r: &MetaRoute,
        port: u16,
        protocol: &str,
    ) -> Option<Route> {
        let p = format!("spec.routes[{index}]");
        let weighted = r.route.len() > 1 && r.route.iter().any(|d| d.weight.is_some());
        let mut route = Vec::new();
        let mut hash_policy: Vec<String> = r.hash_policy.clone();
        let derive_hash = hash_policy.is_empty();
        for (j, d) in r.route.iter().enumerate() {
            match self.index.resolve(&d.destination, port, protocol) {
                Ok(res) => {
                    if derive_hash {
                        if let Some(h) = Policy::of(res.rule, res.port, res.subset).hash_attribute()
                        {
                            if !hash_policy.iter().any(|x| x == h) {
                                hash_policy.push(h.to_owned());
                            }
                        }
                    }
                    route.push(Destination {
                        cluster: res.cluster,
                        weight: weighted.then(|| d.weight.unwrap_or(0)),
                    });
                }
                Err(e) => self.fail(
                    router.id(),
                    &router.source.file,
                    format!("{p}.route[{j}].destination"),
                    e,
                ),
            }
        }
        let mirror = match &r.mirror {
            None => None,
            Some(m) => match self.index.resolve(m, port, protocol) {
                Ok(res) => Some(Mirror {
                    cluster: res.cluster,
                    percentage: r.mirror_percentage.as_ref().map(|p| p.value),
                    max_in_flight: None,
                }),
                Err(e) => {
                    self.fail(router.id(), &router.source.file, format!("{p}.mirror"), e);
                    None
                }
            },
        };
        let kv = |list: &[mr::KeyValue]| {
            list.iter()
                .map(|kv| KeyValue {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                })
                .collect()
        };
        let retry = r.retries.as_ref().map(|rt| Retry {
            attempts: rt.attempts,
            per_try_timeout: rt.per_try_timeout.as_deref().and_then(config_duration),
            retry_on: rt
                .retry_on
                .as_ref()
                .map(|o| o.items().iter().filter_map(|i| retry_on(i)).collect()),
            idempotent: rt.idempotent,
            base_interval: None,
            max_interval: None,
        });
        Some(Route {
            name: route_name(r, index),
            match_: route_match(r.match_.as_ref()),
            route,
            request_mutation: kv(&r.request_mutation),
            response_mutation: kv(&r.response_mutation),
            mirror,
            timeout: r.timeout.as_deref().and_then(config_duration),
            retry,
            hash_policy,
            local_rate_limit: None,
            hooks: Vec::new(),
        })
    }

    /// For every service port: the cluster of all its endpoints, then one per subset.
    fn clusters(&self) -> Vec<Cluster> {
        let mut out = Vec::new();
        for svc in self.index.services.values() {
            let rule = self.index.rule(svc.host);
            for mp in &svc.ports {
                out.push(self.cluster(
                    cluster_name(mp.number, "", svc.host),
                    svc,
                    mp,
                    Policy::of(rule, mp.number, None),
                    None,
                ));
                for subset in rule.iter().flat_map(|r| r.spec.subsets.iter()) {
                    out.push(self.cluster(
                        cluster_name(mp.number, &subset.name, svc.host),
                        svc,
                        mp,
                        Policy::of(rule, mp.number, Some(subset)),
                        Some(&subset.labels),
                    ));
                }
            }
        }
        out
    }

    fn cluster(
        &self,
        name: String,
        svc: &Service<'a>,
        mp: &MetaPort<'a>,
        policy: Policy<'a>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Cluster {
        let mut endpoints: Vec<Endpoint> = svc
            .entry
            .spec
            .endpoints
            .iter()
            .filter(|ep| {
                labels.is_none_or(|want| want.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
            })
            .filter_map(|ep| {
                let ip: IpAddr = ep.address.parse().ok()?;
                let port = (!mp.name.is_empty())
                    .then(|| ep.ports.get(mp.name))
                    .flatten()
                    .copied()
                    .or(mp.spec.target_port)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(mp.number);
                Some(Endpoint {
                    address: SocketAddr::new(ip, port).to_string(),
                    locality: ep
                        .locality
                        .as_deref()
                        .and_then(|l| locality::parse(l).ok())
                        .unwrap_or_default(),
                    weight: ep.weight.filter(|w| *w > 0),
                    priority: 0,
                    labels: ep.labels.clone(),
                })
            })
            .collect();

        let lb = policy.load_balancer;
        let mut lb_policy = LbPolicy::RoundRobin;
        let mut ring_hash = None;
        let mut maglev = None;
        if let Some(lb) = lb {
            match lb.simple {
                Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => {
                    lb_policy = LbPolicy::LeastRequest
                }
                Some(SimpleLb::Random) => lb_policy = LbPolicy::Random,
                _ => {}
            }
            if let Some(ch) = &lb.consistent_hash {
                if let Some(m) = &ch.maglev {
                    lb_policy = LbPolicy::Maglev;
                    maglev = m.table_size.filter(|s| *s != 0).map(|s| MaglevConfig {
                        table_size: Some(s),
                    });
                } else {
                    lb_policy = LbPolicy::RingHash;
                    ring_hash = ch
                        .ring_hash
                        .as_ref()
                        .and_then(|r| r.minimum_ring_size)
                        .or(ch.minimum_ring_size)
                        .filter(|s| *s != 0)
                        .map(|s| RingHashConfig {
                            minimum_ring_size: Some(s),
                            maximum_ring_size: None,
                        });
                }
            }
        }

        let outlier_detection = policy.outlier_detection.map(outlier);
        // Istio turns Envoy's panic threshold into `minHealthPercent` (default 0: off)
        // whenever outlier detection is on.
        let healthy_panic_threshold = policy
            .outlier_detection
            .map(|o| o.min_health_percent.unwrap_or(0));

        let pool = policy.connection_pool;
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        let nonzero = |v: Option<u32>| v.filter(|v| *v > 0);
        let breakers = CircuitBreakers {
            max_connections: nonzero(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: nonzero(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: nonzero(http.and_then(|h| h.http2_max_requests)),
            max_retries: nonzero(http.and_then(|h| h.max_retries)),
        };
        let circuit_breakers = (breakers.max_connections.is_some()
            || breakers.max_pending_requests.is_some()
            || breakers.max_requests.is_some()
            || breakers.max_retries.is_some())
        .then_some(breakers);
        let connect_timeout = tcp
            .and_then(|t| t.connect_timeout.as_deref())
            .and_then(config_duration);

        let locality_lb = self.locality(&policy, &mut endpoints);

        Cluster {
            name,
            protocol: Some(mp.protocol.clone()),
            lb_policy,
            locality_lb,
            connect_timeout,
            connections_per_endpoint: None,
            max_frame_size: None,
            protocol_options: BTreeMap::new(),
            outlier_detection,
            health_check: None,
            circuit_breakers,
            overprovisioning_factor: None,
            healthy_panic_threshold,
            ring_hash,
            maglev,
            endpoints,
        }
    }

    /// Istio's locality load balancing for this proxy (see docs/resources.md):
    /// `distribute` → locality weights (uncovered localities dropped); otherwise, with
    /// outlier detection, `failover` rules → priorities computed here, or no rules → the
    /// proxy's own ranking by its locality.
    fn locality(&self, policy: &Policy<'a>, endpoints: &mut Vec<Endpoint>) -> Option<LocalityLb> {
        let setting = policy
            .load_balancer
            .and_then(|lb| lb.locality_lb_setting.as_ref());
        if setting.is_some_and(|s| s.enabled == Some(false)) {
            return None;
        }
        let node = &self.node.locality;
        if let Some(s) = setting.filter(|s| !s.distribute.is_empty()) {
            let eps: Vec<_> = endpoints
                .iter()
                .map(|e| (e.locality.clone(), e.weight.unwrap_or(1)))
                .collect();
            let d = locality::distribute(node, &s.distribute, &eps)?;
            let mut keep = d.keep.into_iter();
            endpoints.retain(|_| keep.next().unwrap_or(false));
            let weights: Vec<LocalityWeight> = d
                .weights
                .into_iter()
                .filter(|(l, _)| !l.region.is_empty())
                .map(|(locality, weight)| LocalityWeight { locality, weight })
                .collect();
            if weights.is_empty() {
                return None;
            }
            return Some(LocalityLb {
                enabled: true,
                locality_weights: weights,
            });
        }
        // Failover needs outlier detection, as in Istio: without it no endpoint would ever
        // be seen unhealthy and traffic would never leave the proxy's locality.
        policy.outlier_detection?;
        let failover: &[dr::Failover] = setting.map_or(&[], |s| s.failover.as_slice());
        if failover.is_empty() {
            return Some(LocalityLb {
                enabled: true,
                locality_weights: Vec::new(),
            });
        }
        let localities: Vec<_> = endpoints.iter().map(|e| e.locality.clone()).collect();
        let priorities = locality::failover_priorities(node, failover, &localities);
        for (e, p) in endpoints.iter_mut().zip(priorities) {
            e.priority = p;
        }
        Some(LocalityLb {
            enabled: false,
            locality_weights: Vec::new(),
        })
    }
}

/// Istio's outlier detection in the proxy's terms.
fn outlier(o: &dr::OutlierDetection) -> OutlierDetection {
    // 0 disables error counting in Istio; the proxy needs a threshold, so it gets one
    // that is never reached.
    let errors =
        o.consecutive_5xx_errors
            .or(o.consecutive_errors)
            .map(|v| if v == 0 { u32::MAX } else { v });
    let local = o.split_external_local_origin_errors.then(|| {
        o.consecutive_local_origin_failures
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_LOCAL_ORIGIN_FAILURES)
    });
    // Gateway errors are the failures the proxy itself sees: connect failures, resets
    // and timeouts.
    let gateway = o.consecutive_gateway_errors.filter(|v| *v > 0);
    let local = match (local, gateway) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    OutlierDetection {
        consecutive_errors: errors,
        consecutive_local_origin_failures: local,
        interval: o.interval.as_deref().and_then(config_duration),
        base_ejection_time: o.base_ejection_time.as_deref().and_then(config_duration),
        max_ejection_time: None,
        max_ejection_percent: o.max_ejection_percent.filter(|v| *v > 0),
    }
}
