//! Building and running a proxy: register protocols, hand over a bootstrap, bind the
//! listeners and the admin endpoint, and shut down by draining in-flight requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, LogControl};
use crate::capture::{CaptureRuntime, Table, Target};
use crate::codec::{Protocol, ProtocolRegistry};
use crate::config::{Bootstrap, ConfigErrors, Listener as ListenerConfig, TrafficDirection};
use crate::listener::{self, ListenerContext};
use crate::snapshot::ConfigStore;
use crate::stats::Stats;
use crate::worker::Workers;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// An address could not be bound.
    #[error("{path}: cannot bind {address}: {source}")]
    Bind {
        /// Field path of the address.
        path: String,
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker threads could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// Assembles a proxy.
#[derive(Default)]
pub struct ProxyBuilder {
    protocols: ProtocolRegistry,
    hold_ready: bool,
    log_control: Option<Arc<dyn LogControl>>,
    concurrency: Option<usize>,
}

impl ProxyBuilder {
    /// A builder with no protocols.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a protocol; listeners name it by [`Protocol::name`].
    pub fn protocol(mut self, protocol: Arc<dyn Protocol>) -> Self {
        self.protocols.register(protocol);
        self
    }

    /// Registers every protocol of `registry`.
    pub fn protocols(mut self, registry: &ProtocolRegistry) -> Self {
        for name in registry.names() {
            if let Some(p) = registry.get(name) {
                self.protocols.register(p.clone());
            }
        }
        self
    }

    /// Keeps `/ready` false after start until [`Proxy::set_ready`] says otherwise (a
    /// proxy that waits for its first configuration from a control plane).
    pub fn hold_ready(mut self) -> Self {
        self.hold_ready = true;
        self
    }

    /// Runs `workers` worker threads (at least one); by default one per CPU. Each serves
    /// the connections handed to it on a single-threaded runtime.
    pub fn concurrency(mut self, workers: usize) -> Self {
        self.concurrency = Some(workers.max(1));
        self
    }

    /// Lets the admin endpoint's `/logging` read and change the log filter.
    pub fn log_control(mut self, control: Arc<dyn LogControl>) -> Self {
        self.log_control = Some(control);
        self
    }

    /// The protocols registered so far.
    pub fn registry(&self) -> &ProtocolRegistry {
        &self.protocols
    }

    /// Validates `bootstrap`, binds every listener and the admin endpoint, and starts
    /// serving. Must run inside a tokio runtime.
    pub async fn start(self, bootstrap: Bootstrap) -> Result<Proxy, StartError> {
        let stats = Arc::new(Stats::new());
        let store = Arc::new(ConfigStore::new(bootstrap, self.protocols, stats.clone())?);
        let snap = store.load();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let workers = Workers::start(
            self.concurrency
                .unwrap_or_else(crate::worker::default_concurrency),
        )
        .map_err(StartError::Workers)?;
        let admin_listener = match &snap.bootstrap.admin {
            Some(a) => Some(bind("admin.address", &a.address).await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let admin_state = Arc::new(AdminState {
            store: store.clone(),
            log: self.log_control.clone(),
            ready: false.into(),
        });
        let proxy = Proxy {
            store,
            listeners: Mutex::new(BTreeMap::new()),
            capture: CaptureRuntime::default(),
            reconciling: tokio::sync::Mutex::new(()),
            admin_addr,
            admin_state: admin_state.clone(),
            shutdown,
            admin_shutdown: CancellationToken::new(),
            tracker,
            workers: Arc::new(workers),
        };
        proxy.reconcile().await?;
        if let Some(l) = admin_listener {
            tracing::info!(address = ?admin_addr, "admin listening");
            tokio::spawn(admin::serve(
                l,
                admin_state.clone(),
                proxy.admin_shutdown.clone(),
            ));
        }
        admin_state.ready.store(!self.hold_ready, Ordering::Release);
        Ok(proxy)
    }
}

/// A listener that is accepting connections.
struct RunningListener {
    /// Everything of its configuration the running listener depends on.
    shape: String,
    /// The configured address (`127.0.0.1:0` stays what it was bound to).
    address: String,
    /// None for a listener that binds no socket (it serves captured connections).
    socket: Option<Arc<TcpListener>>,
    /// The bound address, or the configured one of a listener that binds no socket.
    bound: SocketAddr,
    direction: TrafficDirection,
    ctx: Arc<ListenerContext>,
    /// Stops accepting and drains the listener's connections.
    stop: CancellationToken,
}

/// What of a listener's configuration its running accept loop depends on.
fn shape(l: &ListenerConfig) -> String {
    format!(
        "{} {} {} {} {:?} {} {:?}",
        l.address,
        l.protocol,
        l.route_config,
        l.max_frame_size(),
        l.protocol_options,
        l.bind_to_port,
        l.traffic_direction
    )
}

async fn bind(path: &str, address: &str) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind {
        path: path.to_owned(),
        address: address.to_owned(),
        source,
    };
    let addr: SocketAddr = address
        .parse()
        .map_err(|_| err(std::io::Error::other("not an ip:port address")))?;
    TcpListener::bind(addr).await.map_err(err)
}

/// A running proxy.
pub struct Proxy {
    store: Arc<ConfigStore>,
    listeners: Mutex<BTreeMap<String, RunningListener>>,
    /// The capture listeners and the listeners they hand connections to.
    pub(crate) capture: CaptureRuntime,
    /// Serializes configuration updates.
    reconciling: tokio::sync::Mutex<()>,
    admin_addr: Option<SocketAddr>,
    admin_state: Arc<AdminState>,
    shutdown: CancellationToken,
    admin_shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: Arc<Workers>,
}

impl Proxy {
    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let bound = self.running().get(name).map(|l| l.bound);
        bound.or_else(|| {
            self.capture
                .listeners()
                .into_iter()
                .find_map(|(n, a)| (n == name).then_some(a))
        })
    }

    /// Every listener with its bound address (a listener that binds no socket: its
    /// configured one), by name, then the capture listeners.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut all: Vec<(String, SocketAddr)> = self
            .running()
            .iter()
            .map(|(n, l)| (n.clone(), l.bound))
            .collect();
        all.extend(self.capture.listeners());
        all
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunningListener>> {
        // The map holds plain data; a panic elsewhere leaves it usable.
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the running listeners in line with the current snapshot: binds new ones,
    /// restarts changed ones (on the same socket when the address stayed), and stops
    /// removed ones, whose connections finish the requests they already read and close.
    /// Every listener that could be bound is serving when this returns; the first bind
    /// failure is the error.
    async fn reconcile(&self) -> Result<(), StartError> {
        let _one = self.reconciling.lock().await;
        let snap = self.store.load();
        let mut first_error = None;
        let desired: Vec<&ListenerConfig> = snap.bootstrap.listeners.iter().collect();
        let removed: Vec<String> = self
            .running()
            .keys()
            .filter(|n| !desired.iter().any(|l| &l.name == *n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(old) = self.running().remove(&name) {
                tracing::info!(listener = %name, address = %old.bound, "listener removed: draining");
                old.stop.cancel();
            }
        }
        for l in desired {
            let want = shape(l);
            let current = self.running().get(&l.name).map(|r| {
                (
                    r.shape.clone(),
                    r.address.clone(),
                    r.socket.clone(),
                    r.bound,
                )
            });
            let (socket, bound) = match current {
                Some((have, _, _, _)) if have == want => continue,
                // Served through capture: nothing to bind.
                _ if !l.bind_to_port => match l.address.parse::<SocketAddr>() {
                    Ok(a) => (None, a),
                    Err(_) => continue, // validation reported it
                },
                // Same address: keep the socket, so no connection attempt is refused.
                Some((_, address, Some(socket), bound))
                    if address == l.address || l.address.parse() == Ok(bound) =>
                {
                    (Some(socket), bound)
                }
                _ => {
                    let path = format!("listeners[{}].address", l.name);
                    match bind(&path, &l.address).await {
                        Ok(tcp) => match tcp.local_addr() {
                            Ok(bound) => (Some(Arc::new(tcp)), bound),
                            Err(source) => {
                                first_error.get_or_insert(StartError::Bind {
                                    path,
                                    address: l.address.clone(),
                                    source,
                                });
                                continue;
                            }
                        },
                        Err(e) => {
                            tracing::error!(listener = %l.name, error = %e, "listener not started");
                            first_error.get_or_insert(e);
                            continue;
                        }
                    }
                }
            };
            let Some(protocol) = self.store.protocols().get(&l.protocol).cloned() else {
                first_error.get_or_insert(StartError::Config(ConfigErrors(vec![
                    crate::config::ConfigError {
                        path: format!("listeners[{}].protocol", l.name),
                        message: format!("unknown protocol {:?}", l.protocol),
                    },
                ])));
                continue;
            };
            let ctx = Arc::new(ListenerContext {
                name: Arc::from(l.name.as_str()),
                protocol,
                route_config: l.route_config.clone(),
                store: self.store.clone(),
                stats: self.store.stats().listener(&l.name),
                max_frame_size: l.max_frame_size(),
                protocol_options: Arc::new(l.protocol_options.clone()),
            });
            let stop = self.shutdown.child_token();
            if let Some(socket) = &socket {
                tracing::info!(listener = %l.name, addr = %bound, protocol = ctx.protocol.name(), "listening");
                tokio::spawn(listener::serve(
                    socket.clone(),
                    ctx.clone(),
                    stop.clone(),
                    (self.tracker.clone(), self.workers.clone()),
                ));
            } else {
                tracing::info!(listener = %l.name, addr = %bound, protocol = ctx.protocol.name(),
                    direction = l.traffic_direction.as_str(), "serving captured connections");
            }
            let replaced = self.running().insert(
                l.name.clone(),
                RunningListener {
                    shape: want,
                    address: l.address.clone(),
                    socket,
                    bound,
                    direction: l.traffic_direction,
                    ctx,
                    stop,
                },
            );
            if let Some(old) = replaced {
                // Its connections drain; new ones reach the new accept loop.
                old.stop.cancel();
            }
        }
        self.reconcile_capture(&snap.bootstrap, &mut first_error)
            .await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Publishes the listeners that bind no socket to the capture listeners, and starts,
    /// changes or stops those.
    async fn reconcile_capture(&self, b: &Bootstrap, first_error: &mut Option<StartError>) {
        if b.capture.is_none() && !self.running().values().any(|r| r.socket.is_none()) {
            self.capture.clear();
            self.capture.publish(Table::default());
            return;
        }
        let stats = self.store.stats();
        let mut table = Table::default();
        for r in self.running().values().filter(|r| r.socket.is_none()) {
            let target = Target::new(stats.capture(), r.direction, r.ctx.clone(), r.stop.clone());
            table.insert(r.direction, r.bound, Arc::new(target));
        }
        self.capture.publish(table);
        let result = self
            .capture
            .reconcile(
                b.capture.as_ref(),
                stats,
                &self.shutdown,
                (&self.tracker, &self.workers),
            )
            .await;
        if let Err(e) = result {
            first_error.get_or_insert(StartError::Bind {
                path: e.path,
                address: e.address,
                source: e.source,
            });
        }
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Sets what the admin endpoint's `/ready` answers.
    pub fn set_ready(&self, ready: bool) {
        self.admin_state.ready.store(ready, Ordering::Release);
    }

    /// The configuration store (current snapshot, metrics).
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Swaps in a new configuration: routes, clusters and hooks at once, then listeners
    /// (added ones bound, removed ones drained, changed ones restarted). In-flight
    /// requests finish on the snapshot they started with. An invalid configuration
    /// changes nothing; a listener that cannot be bound is the error, with the rest of
    /// the update in force.
    pub async fn update(&self, bootstrap: Bootstrap) -> Result<u64, StartError> {
        let version = self.store.update(bootstrap)?;
        self.reconcile().await?;
        Ok(version)
    }

    /// Stops accepting, lets connections finish the requests they already read, and
    /// returns when all are done or `drain_timeout` passed. Returns true when everything
    /// drained in time.
    pub fn shutdown(
        &self,
        drain_timeout: Duration,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        self.admin_state.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        // Close the sockets: nothing more is accepted, not even into the backlog.
        self.running().clear();
        self.capture.clear();
        self.tracker.close();
        let tracker = self.tracker.clone();
        let admin_shutdown = self.admin_shutdown.clone();
        async move {
            let drained = tokio::time::timeout(drain_timeout, tracker.wait())
                .await
                .is_ok();
            admin_shutdown.cancel();
            drained
        }
    }
}
