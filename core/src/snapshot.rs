//! Immutable configuration snapshots and the store that swaps them atomically. A request
//! takes the snapshot current when it starts and keeps it to the end, so it never sees
//! half of a change. Endpoint pools outlive snapshots: a new snapshot reuses the pool (and
//! its open connections) of every endpoint that is still there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::codec::{Protocol, ProtocolRegistry, DEFAULT_MAX_FRAME_SIZE};
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors};
use crate::health::{ClusterShared, HealthCheckSettings, Outcome, OutlierSettings};
use crate::lb::{ClusterLb, HostInfo, LbSettings, LocalityMode};
use crate::lua::HookProgram;
use crate::observe::AccessLogger;
use crate::ratelimit::ListenerLimits;
use crate::router::RouteTable;
use crate::stats::{ClusterStats, Stats};
use crate::upstream::{EndpointPool, PoolSettings};

/// Default connect timeout of a cluster.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One endpoint of a compiled cluster.
pub struct EndpointRuntime {
    /// The configuration it came from.
    pub config: config::Endpoint,
    /// Its connections.
    pub pool: Arc<EndpointPool>,
}

/// A compiled cluster.
pub struct ClusterRuntime {
    /// Cluster name.
    pub name: String,
    /// Protocol spoken to its endpoints, when known.
    pub protocol: Option<Arc<dyn Protocol>>,
    /// Endpoints.
    pub endpoints: Vec<EndpointRuntime>,
    /// Metric handles.
    pub stats: ClusterStats,
    /// Health version and circuit breakers, shared with later snapshots.
    pub shared: Arc<ClusterShared>,
    lb_settings: LbSettings,
    outlier: Option<OutlierSettings>,
    lb: ArcSwap<LbState>,
    rebuilding: Mutex<()>,
}

/// A load balancer built for one health version of a cluster.
pub struct LbState {
    /// The health version it was built for.
    pub version: u64,
    /// The balancer.
    pub lb: ClusterLb,
}

impl ClusterRuntime {
    fn new(
        name: String,
        protocol: Option<Arc<dyn Protocol>>,
        endpoints: Vec<EndpointRuntime>,
        shared: Arc<ClusterShared>,
        lb_settings: LbSettings,
        outlier: Option<OutlierSettings>,
    ) -> Self {
        let version = shared.version();
        let lb = build_lb(&endpoints, &lb_settings);
        let stats = shared.stats().clone();
        stats.healthy.set(healthy_count(&endpoints));
        Self {
            name,
            protocol,
            endpoints,
            stats,
            shared,
            lb_settings,
            outlier,
            lb: ArcSwap::from_pointee(LbState { version, lb }),
            rebuilding: Mutex::new(()),
        }
    }

    /// Picks an endpoint with the cluster's load balancer: `hash` for consistent hashing,
    /// `exclude` an endpoint to avoid when another can take the request (a retry).
    /// Returns the endpoint's index and the endpoint.
    pub fn pick(
        &self,
        hash: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<(usize, &EndpointRuntime)> {
        let version = self.shared.version();
        let mut state = self.lb.load();
        if state.version != version {
            self.rebuild(version);
            state = self.lb.load();
        }
        let i = state.lb.pick(hash, exclude, |i| {
            self.endpoints
                .get(i)
                .map_or(0, |e| e.pool.active_requests())
        })?;
        self.endpoints.get(i).map(|e| (i, e))
    }

    /// The current load balancer (for the admin page).
    pub fn lb_state(&self) -> arc_swap::Guard<Arc<LbState>> {
        let version = self.shared.version();
        if self.lb.load().version != version {
            self.rebuild(version);
        }
        self.lb.load()
    }

    /// Rebuilds the balancer for the endpoints' current health. One caller rebuilds;
    /// the others keep picking from the previous balancer meanwhile.
    fn rebuild(&self, version: u64) {
        let Ok(_one) = self.rebuilding.try_lock() else {
            return;
        };
        if self.lb.load().version == version {
            return;
        }
        let lb = build_lb(&self.endpoints, &self.lb_settings);
        self.stats.healthy.set(healthy_count(&self.endpoints));
        self.lb.store(Arc::new(LbState { version, lb }));
    }

    /// Reports what became of a request sent to endpoint `index`, for outlier detection.
    pub fn report(&self, index: usize, outcome: Outcome) {
        let (Some(od), Some(ep)) = (&self.outlier, self.endpoints.get(index)) else {
            return;
        };
        if !ep.pool.health().record(outcome, od) {
            return;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.pool.health().is_ejected())
            .count();
        if ejected >= od.max_ejected(self.endpoints.len()) {
            tracing::debug!(cluster = %self.name, endpoint = %ep.config.address, "outlier not ejected: max_ejection_percent reached");
            return;
        }
        let now = tokio::time::Instant::now();
        let Some(duration) = ep.pool.health().eject(od, now) else {
            return;
        };
        tracing::warn!(cluster = %self.name, endpoint = %ep.config.address, ?duration, "outlier ejected");
        self.stats.ejections.inc();
        self.stats.ejected.inc();
        self.shared.health_changed();
        let pool = Arc::downgrade(&ep.pool);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if let Some(pool) = pool.upgrade() {
                pool.health().uneject(tokio::time::Instant::now());
                tracing::info!(cluster = shared.stats().name(), endpoint = %pool.address(), "outlier ejection ended");
            }
            shared.stats().ejected.dec();
            shared.health_changed();
        });
    }
}

fn healthy_count(endpoints: &[EndpointRuntime]) -> i64 {
    endpoints
        .iter()
        .filter(|e| e.pool.health().healthy())
        .count() as i64
}

fn build_lb(endpoints: &[EndpointRuntime], settings: &LbSettings) -> ClusterLb {
    let hosts: Vec<HostInfo> = endpoints
        .iter()
        .map(|e| HostInfo {
            key: e.config.address.clone(),
            weight: e.config.weight.unwrap_or(1).max(1),
            priority: e.config.priority,
            locality: e.config.locality.clone(),
            healthy: e.pool.health().healthy(),
        })
        .collect();
    ClusterLb::build(&hosts, settings)
}

fn lb_settings(c: &config::Cluster, node: &config::Node) -> LbSettings {
    let defaults = LbSettings::default();
    LbSettings {
        policy: c.lb_policy,
        locality: match &c.locality_lb {
            Some(l) if l.enabled && l.locality_weights.is_empty() => LocalityMode::Failover {
                node: node.locality.clone(),
            },
            Some(l) if l.enabled => LocalityMode::Weighted {
                weights: l
                    .locality_weights
                    .iter()
                    .map(|w| (w.locality.clone(), w.weight))
                    .collect(),
            },
            _ => LocalityMode::Off,
        },
        overprovisioning_factor: c
            .overprovisioning_factor
            .unwrap_or(defaults.overprovisioning_factor),
        panic_threshold: c
            .healthy_panic_threshold
            .unwrap_or(defaults.panic_threshold),
        ring_min_size: c
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .map_or(defaults.ring_min_size, |v| v as usize),
        ring_max_size: c
            .ring_hash
            .as_ref()
            .and_then(|r| r.maximum_ring_size)
            .map_or(defaults.ring_max_size, |v| v as usize),
        maglev_table_size: c
            .maglev
            .as_ref()
            .and_then(|m| m.table_size)
            .map_or(defaults.maglev_table_size, |v| v as usize),
    }
}

/// A table looked up per request by a name from the configuration, never by text from a
/// peer: foldhash (fast, and not built to resist keys chosen to collide, which these
/// cannot be) serves where SipHash took some 150 instructions a lookup.
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Everything a request needs, compiled from one bootstrap.
pub struct Snapshot {
    /// Increases with every update.
    pub version: u64,
    /// The configuration this was compiled from.
    pub bootstrap: Arc<Bootstrap>,
    route_tables: ByName<Arc<RouteTable>>,
    clusters: Vec<ClusterRuntime>,
    cluster_index: ByName<usize>,
    listener_limits: ByName<ListenerLimits>,
    listener_hooks: ByName<Vec<Arc<HookProgram>>>,
    /// Where request entries go, when the access log is on.
    pub access_log: Option<Arc<AccessLogger>>,
}

impl Snapshot {
    /// The hooks of listener `name`, in order.
    pub fn listener_hooks(&self, name: &str) -> &[Arc<HookProgram>] {
        if self.listener_hooks.is_empty() {
            return &[];
        }
        self.listener_hooks.get(name).map_or(&[], Vec::as_slice)
    }

    /// The index of the cluster called `name`.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.cluster_index.get(name).copied()
    }

    /// The token bucket of listener `name`, when it has one.
    pub fn listener_limit(&self, name: &str) -> Option<&ListenerLimits> {
        // Most configurations limit no listener: skip hashing the name per request.
        if self.listener_limits.is_empty() {
            return None;
        }
        self.listener_limits.get(name)
    }

    /// The route configuration called `name`.
    pub fn route_table(&self, name: &str) -> Option<&RouteTable> {
        self.route_tables.get(name).map(|t| &**t)
    }

    /// The cluster at `index` (as route destinations refer to them).
    pub fn cluster(&self, index: usize) -> Option<&ClusterRuntime> {
        self.clusters.get(index)
    }

    /// All clusters.
    pub fn clusters(&self) -> &[ClusterRuntime] {
        &self.clusters
    }
}

type PoolKey = (String, SocketAddr, String);

/// Holds the current snapshot and builds new ones.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    protocols: ProtocolRegistry,
    stats: Arc<Stats>,
    pools: Mutex<HashMap<PoolKey, Arc<EndpointPool>>>,
    shared: Mutex<HashMap<String, Arc<ClusterShared>>>,
    hooks: Mutex<HashMap<String, Arc<HookProgram>>>,
    version: AtomicU64,
    update_lock: Mutex<()>,
}

impl ConfigStore {
    /// A store holding the compiled `bootstrap`.
    pub fn new(
        bootstrap: Bootstrap,
        protocols: ProtocolRegistry,
        stats: Arc<Stats>,
    ) -> Result<Self, ConfigErrors> {
        let store = Self {
            current: ArcSwap::from_pointee(Snapshot {
                version: 0,
                bootstrap: Arc::new(Bootstrap::default()),
                route_tables: ByName::default(),
                clusters: Vec::new(),
                cluster_index: ByName::default(),
                listener_limits: ByName::default(),
                listener_hooks: ByName::default(),
                access_log: None,
            }),
            protocols,
            stats,
            pools: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            hooks: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            update_lock: Mutex::new(()),
        };
        store.update(bootstrap)?;
        Ok(store)
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The protocols known to this store.
    pub fn protocols(&self) -> &ProtocolRegistry {
        &self.protocols
    }

    /// The metrics.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Validates and compiles `bootstrap`, then swaps it in. On error the current
    /// snapshot stays.
    pub fn update(&self, bootstrap: Bootstrap) -> Result<u64, ConfigErrors> {
        if let Err(e) = bootstrap.validate(&self.protocols) {
            self.stats.config_update(false, self.load().version);
            return Err(e);
        }
        let _serial = self.update_lock.lock().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: "configuration store is poisoned".into(),
            }])
        })?;
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = match self.compile(bootstrap, version) {
            Ok(s) => s,
            Err(e) => {
                self.stats.config_update(false, self.load().version);
                return Err(e);
            }
        };
        self.current.store(Arc::new(snapshot));
        self.stats.config_update(true, version);
        Ok(version)
    }

    fn compile(&self, b: Bootstrap, version: u64) -> Result<Snapshot, ConfigErrors> {
        // A cluster speaks its own protocol, or that of the listeners routing to it.
        let mut cluster_protocol: HashMap<&str, &str> = HashMap::new();
        let mut errors = Vec::new();
        for l in &b.listeners {
            let Some(rc) = b.routes.iter().find(|r| r.name == l.route_config) else {
                continue;
            };
            let used = rc.routes.iter().flat_map(|r| {
                r.route
                    .iter()
                    .map(|d| d.cluster.as_str())
                    .chain(r.mirror.iter().map(|m| m.cluster.as_str()))
            });
            for d in used {
                let explicit = b
                    .clusters
                    .iter()
                    .find(|c| c.name == d)
                    .and_then(|c| c.protocol.as_deref());
                if explicit.is_some() {
                    continue;
                }
                match cluster_protocol.insert(d, &l.protocol) {
                    Some(p) if p != l.protocol => errors.push(ConfigError {
                        path: format!("clusters[{d}].protocol"),
                        message: format!(
                            "used by listeners of protocols {p:?} and {:?}: set the protocol explicitly",
                            l.protocol
                        ),
                    }),
                    _ => {}
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // A cluster no route names (one a hook reaches with `route_to`) speaks the
        // listeners' protocol when they all speak the same one.
        let mut listener_protocols = b.listeners.iter().map(|l| l.protocol.as_str());
        if let Some(only) = listener_protocols.next() {
            if listener_protocols.all(|p| p == only) {
                for c in &b.clusters {
                    if c.protocol.is_none() {
                        cluster_protocol.entry(c.name.as_str()).or_insert(only);
                    }
                }
            }
        }

        let mut pools = self.pools.lock().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: "configuration store is poisoned".into(),
            }])
        })?;
        let mut shared_map = self.shared.lock().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: "configuration store is poisoned".into(),
            }])
        })?;
        let mut kept: HashMap<PoolKey, Arc<EndpointPool>> = HashMap::new();
        let mut kept_shared: HashMap<String, Arc<ClusterShared>> = HashMap::new();
        let mut new_pools = Vec::new();
        let mut clusters = Vec::with_capacity(b.clusters.len());
        for c in &b.clusters {
            let proto_name = c
                .protocol
                .as_deref()
                .or_else(|| cluster_protocol.get(c.name.as_str()).copied());
            let protocol = proto_name.and_then(|n| self.protocols.get(n)).cloned();
            let shared = shared_map
                .get(&c.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(ClusterShared::new(self.stats.cluster(&c.name))));
            shared.set_limits(c.circuit_breakers.as_ref());
            kept_shared.insert(c.name.clone(), shared.clone());
            let settings = PoolSettings {
                connect_timeout: c.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
                connections: c.connections_per_endpoint.unwrap_or(1) as usize,
                max_frame_size: c.max_frame_size.unwrap_or(DEFAULT_MAX_FRAME_SIZE),
                protocol_options: Arc::new(c.protocol_options.clone()),
                health_check: c.health_check.as_ref().map(HealthCheckSettings::new),
            };
            let mut endpoints = Vec::new();
            if let (Some(protocol), Some(pname)) = (&protocol, proto_name) {
                for e in &c.endpoints {
                    let Ok(addr) = e.address.parse::<SocketAddr>() else {
                        continue; // rejected by validation already
                    };
                    let key = (c.name.clone(), addr, pname.to_owned());
                    let pool = match pools.get(&key).filter(|p| same_settings(p, &settings)) {
                        Some(p) => p.clone(),
                        None => {
                            let p = Arc::new(EndpointPool::new(
                                addr,
                                protocol.clone(),
                                settings.clone(),
                                shared.clone(),
                            ));
                            new_pools.push(p.clone());
                            p
                        }
                    };
                    kept.insert(key, pool.clone());
                    endpoints.push(EndpointRuntime {
                        config: e.clone(),
                        pool,
                    });
                }
            }
            clusters.push(ClusterRuntime::new(
                c.name.clone(),
                protocol,
                endpoints,
                shared,
                lb_settings(c, &b.node),
                c.outlier_detection.as_ref().map(OutlierSettings::new),
            ));
        }

        let index: HashMap<&str, usize> = b
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        // Hooks: an unchanged hook keeps its program, so workers keep their warm states.
        let mut hook_map = self.hooks.lock().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: "configuration store is poisoned".into(),
            }])
        })?;
        let mut programs: HashMap<String, Arc<HookProgram>> = HashMap::new();
        for h in &b.hooks {
            let kept = hook_map.get(&h.name).filter(|p| p.same_config(h)).cloned();
            let program = match kept {
                Some(p) => p,
                None => match HookProgram::compile(h, &self.stats) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(ConfigError {
                            path: format!("hooks[{}].script", h.name),
                            message: e,
                        });
                        continue;
                    }
                },
            };
            programs.insert(h.name.clone(), program);
        }
        let mut listener_hooks = ByName::default();
        for l in &b.listeners {
            let list: Vec<Arc<HookProgram>> = l
                .hooks
                .iter()
                .filter_map(|n| programs.get(n).cloned())
                .collect();
            if !list.is_empty() {
                listener_hooks.insert(l.name.clone(), list);
            }
        }

        let mut route_tables = ByName::default();
        for rc in &b.routes {
            match RouteTable::compile(
                rc,
                |n| index.get(n).copied(),
                |n| programs.get(n).cloned(),
                &self.stats,
            ) {
                Ok(t) => {
                    route_tables.insert(rc.name.clone(), Arc::new(t));
                }
                Err(e) => errors.push(e),
            }
        }
        // The writer of an unchanged access log carries over (and so does its file).
        let access_log = match &b.access_log {
            None => None,
            Some(cfg) => match self.load().access_log.clone().filter(|l| l.is_for(cfg)) {
                Some(same) => Some(same),
                None => match AccessLogger::start(cfg, &self.stats) {
                    Ok(l) => Some(l),
                    Err(message) => {
                        errors.push(ConfigError {
                            path: "access_log.path".into(),
                            message,
                        });
                        None
                    }
                },
            },
        };
        let mut listener_limits = ByName::default();
        for l in &b.listeners {
            match ListenerLimits::new(l) {
                Ok(Some(limits)) => {
                    listener_limits.insert(l.name.clone(), limits);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        *pools = kept;
        *shared_map = kept_shared;
        *hook_map = programs;
        let cluster_index = index.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for p in new_pools {
            p.start_health_check();
        }
        Ok(Snapshot {
            version,
            bootstrap: Arc::new(b),
            route_tables,
            clusters,
            cluster_index,
            listener_limits,
            listener_hooks,
            access_log,
        })
    }
}

fn same_settings(pool: &EndpointPool, settings: &PoolSettings) -> bool {
    pool.settings().connect_timeout == settings.connect_timeout
        && pool.settings().connections == settings.connections
        && pool.settings().max_frame_size == settings.max_frame_size
        && pool.settings().protocol_options == settings.protocol_options
        && pool.settings().health_check == settings.health_check
}
