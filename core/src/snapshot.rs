//! Immutable configuration snapshots and the store that swaps them atomically. A request
//! takes the snapshot current when it starts and keeps it to the end, so it never sees
//! half of a change. Endpoint pools outlive snapshots: a new snapshot reuses the pool (and
//! its open connections) of every endpoint that is still there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::codec::{Protocol, ProtocolRegistry, DEFAULT_MAX_FRAME_SIZE};
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors};
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
    next: AtomicUsize,
    /// Metric handles.
    pub stats: ClusterStats,
}

impl ClusterRuntime {
    /// Picks an endpoint, round robin.
    pub fn pick(&self) -> Option<&EndpointRuntime> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => self
                .endpoints
                .get(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

/// Everything a request needs, compiled from one bootstrap.
pub struct Snapshot {
    /// Increases with every update.
    pub version: u64,
    /// The configuration this was compiled from.
    pub bootstrap: Arc<Bootstrap>,
    route_tables: HashMap<String, Arc<RouteTable>>,
    clusters: Vec<ClusterRuntime>,
}

impl Snapshot {
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
                route_tables: HashMap::new(),
                clusters: Vec::new(),
            }),
            protocols,
            stats,
            pools: Mutex::new(HashMap::new()),
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
        bootstrap.validate(&self.protocols)?;
        let _serial = self.update_lock.lock().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: "configuration store is poisoned".into(),
            }])
        })?;
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = self.compile(bootstrap, version)?;
        self.current.store(Arc::new(snapshot));
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
            for d in rc.routes.iter().flat_map(|r| r.route.iter()) {
                let explicit = b
                    .clusters
                    .iter()
                    .find(|c| c.name == d.cluster)
                    .and_then(|c| c.protocol.as_deref());
                if explicit.is_some() {
                    continue;
                }
                match cluster_protocol.insert(&d.cluster, &l.protocol) {
                    Some(p) if p != l.protocol => errors.push(ConfigError {
                        path: format!("clusters[{}].protocol", d.cluster),
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

        let mut pools = self.pools.lock().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: "configuration store is poisoned".into(),
            }])
        })?;
        let mut kept: HashMap<PoolKey, Arc<EndpointPool>> = HashMap::new();
        let mut clusters = Vec::with_capacity(b.clusters.len());
        for c in &b.clusters {
            let proto_name = c
                .protocol
                .as_deref()
                .or_else(|| cluster_protocol.get(c.name.as_str()).copied());
            let protocol = proto_name.and_then(|n| self.protocols.get(n)).cloned();
            let stats = self.stats.cluster(&c.name);
            let settings = PoolSettings {
                connect_timeout: c.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
                connections: c.connections_per_endpoint.unwrap_or(1) as usize,
                max_frame_size: c.max_frame_size.unwrap_or(DEFAULT_MAX_FRAME_SIZE),
                protocol_options: Arc::new(c.protocol_options.clone()),
            };
            let mut endpoints = Vec::new();
            if let (Some(protocol), Some(pname)) = (&protocol, proto_name) {
                for e in &c.endpoints {
                    let Ok(addr) = e.address.parse::<SocketAddr>() else {
                        continue; // rejected by validation already
                    };
                    let key = (c.name.clone(), addr, pname.to_owned());
                    let pool = pools
                        .get(&key)
                        .filter(|p| same_settings(p, &settings))
                        .cloned()
                        .unwrap_or_else(|| {
                            Arc::new(EndpointPool::new(
                                addr,
                                protocol.clone(),
                                settings.clone(),
                                stats.clone(),
                            ))
                        });
                    kept.insert(key, pool.clone());
                    endpoints.push(EndpointRuntime {
                        config: e.clone(),
                        pool,
                    });
                }
            }
            clusters.push(ClusterRuntime {
                name: c.name.clone(),
                protocol,
                endpoints,
                next: AtomicUsize::new(0),
                stats,
            });
        }

        let index: HashMap<&str, usize> = b
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut route_tables = HashMap::new();
        for rc in &b.routes {
            match RouteTable::compile(rc, |n| index.get(n).copied(), &self.stats) {
                Ok(t) => {
                    route_tables.insert(rc.name.clone(), Arc::new(t));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        *pools = kept;
        Ok(Snapshot {
            version,
            bootstrap: Arc::new(b),
            route_tables,
            clusters,
        })
    }
}

fn same_settings(pool: &EndpointPool, settings: &PoolSettings) -> bool {
    pool.settings().connect_timeout == settings.connect_timeout
        && pool.settings().connections == settings.connections
        && pool.settings().max_frame_size == settings.max_frame_size
        && pool.settings().protocol_options == settings.protocol_options
}
