//! Building and running a proxy: register protocols, hand over a bootstrap, bind the
//! listeners and the admin endpoint, and shut down by draining in-flight requests.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::codec::{Protocol, ProtocolRegistry};
use crate::config::{Bootstrap, ConfigErrors};
use crate::listener::{self, ListenerContext};
use crate::snapshot::ConfigStore;
use crate::stats::Stats;

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
}

/// Assembles a proxy.
#[derive(Default)]
pub struct ProxyBuilder {
    protocols: ProtocolRegistry,
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

        let mut bound = Vec::new();
        for l in &snap.bootstrap.listeners {
            let path = format!("listeners[{}].address", l.name);
            let tcp = bind(&path, &l.address).await?;
            let addr = tcp.local_addr().map_err(|source| StartError::Bind {
                path: path.clone(),
                address: l.address.clone(),
                source,
            })?;
            let protocol = store.protocols().get(&l.protocol).cloned().ok_or_else(|| {
                StartError::Config(ConfigErrors(vec![crate::config::ConfigError {
                    path: format!("listeners[{}].protocol", l.name),
                    message: format!("unknown protocol {:?}", l.protocol),
                }]))
            })?;
            let ctx = Arc::new(ListenerContext {
                name: Arc::from(l.name.as_str()),
                protocol,
                route_config: l.route_config.clone(),
                store: store.clone(),
                stats: stats.listener(&l.name),
                max_frame_size: l.max_frame_size(),
                protocol_options: Arc::new(l.protocol_options.clone()),
            });
            bound.push((l.name.clone(), addr, tcp, ctx));
        }
        let admin_listener = match &snap.bootstrap.admin {
            Some(a) => Some(bind("admin.address", &a.address).await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let mut listeners = Vec::new();
        for (name, addr, tcp, ctx) in bound {
            tracing::info!(listener = %name, %addr, protocol = ctx.protocol.name(), "listening");
            tokio::spawn(listener::serve(tcp, ctx, shutdown.clone(), tracker.clone()));
            listeners.push((name, addr));
        }
        let admin_state = Arc::new(AdminState {
            store: store.clone(),
            ready: false.into(),
        });
        let admin_shutdown = CancellationToken::new();
        if let Some(l) = admin_listener {
            tracing::info!(address = ?admin_addr, "admin listening");
            tokio::spawn(admin::serve(l, admin_state.clone(), admin_shutdown.clone()));
        }
        admin_state.ready.store(true, Ordering::Release);
        Ok(Proxy {
            store,
            listeners,
            admin_addr,
            admin_state,
            shutdown,
            admin_shutdown,
            tracker,
        })
    }
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
    listeners: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    admin_state: Arc<AdminState>,
    shutdown: CancellationToken,
    admin_shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Proxy {
    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Every listener with its bound address.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The configuration store (current snapshot, metrics).
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Swaps in new routes and clusters; listeners stay as they are. In-flight requests
    /// finish on the snapshot they started with.
    pub fn update(&self, bootstrap: Bootstrap) -> Result<u64, ConfigErrors> {
        self.store.update(bootstrap)
    }

    /// Stops accepting, lets connections finish the requests they already read, and
    /// returns when all are done or `drain_timeout` passed. Returns true when everything
    /// drained in time.
    pub async fn shutdown(self, drain_timeout: Duration) -> bool {
        self.admin_state.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(drain_timeout, self.tracker.wait())
            .await
            .is_ok();
        self.admin_shutdown.cancel();
        drained
    }
}
