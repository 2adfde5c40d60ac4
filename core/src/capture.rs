//! Transparent sidecar capture (Istio's model): the virtual outbound and inbound
//! listeners that iptables redirects a pod's TCP to. Each reads a connection's original
//! destination and hands it to the `bind_to_port: false` listener for it, passes it
//! through, or closes it. Nothing here runs without a `capture` section.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashSet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Bootstrap, ConfigDuration, ConfigError, TrafficDirection};
use crate::listener::ListenerContext;

/// Default address of the virtual outbound listener (Istio's 15001).
pub const DEFAULT_OUTBOUND_ADDRESS: &str = "0.0.0.0:15001";
/// Default address of the virtual inbound listener (Istio's 15006).
pub const DEFAULT_INBOUND_ADDRESS: &str = "0.0.0.0:15006";
/// Default connect timeout of a passthrough connection.
pub const DEFAULT_PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Name the virtual outbound listener has in metrics, logs and the listener list.
pub const VIRTUAL_OUTBOUND: &str = "virtual_outbound";
/// Name the virtual inbound listener has in metrics, logs and the listener list.
pub const VIRTUAL_INBOUND: &str = "virtual_inbound";

/// The bootstrap's `capture` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// The virtual outbound listener.
    #[serde(default)]
    pub outbound: CaptureOutbound,
    /// The virtual inbound listener.
    #[serde(default)]
    pub inbound: CaptureInbound,
}

/// The virtual outbound listener: the application's outbound connections.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureOutbound {
    /// False: no virtual outbound listener (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `ip:port` to bind (default `0.0.0.0:15001`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What happens to a connection no listener is configured for.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Deadline for connecting a passthrough connection (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<ConfigDuration>,
}

impl Default for CaptureOutbound {
    fn default() -> Self {
        Self {
            enabled: true,
            address: None,
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            connect_timeout: None,
        }
    }
}

/// The virtual inbound listener: connections from outside to the local application.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureInbound {
    /// False: no virtual inbound listener (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `ip:port` to bind (default `0.0.0.0:15006`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Where a connection no inbound listener is configured for goes.
    #[serde(default)]
    pub passthrough: InboundPassthrough,
    /// Deadline for connecting a passthrough connection (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<ConfigDuration>,
}

impl Default for CaptureInbound {
    fn default() -> Self {
        Self {
            enabled: true,
            address: None,
            passthrough: InboundPassthrough::default(),
            connect_timeout: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations are proxied as plain TCP to where the application sent them.
    #[default]
    AllowAny,
    /// Connections to unknown destinations are closed.
    RegistryOnly,
}

/// Where inbound passthrough connections go.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InboundPassthrough {
    /// The original destination (the pod's own address and the port called).
    #[default]
    OriginalDestination,
    /// `127.0.0.1` (or `::1`) and the port called, for applications listening on loopback.
    Localhost,
}

/// How the application's traffic reaches the proxy (Istio's `INTERCEPTION_MODE`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InterceptionMode {
    /// The application calls the proxy's listeners by their addresses.
    #[default]
    None,
    /// iptables `REDIRECT` to the capture listeners.
    Redirect,
}

impl InterceptionMode {
    /// True for the default.
    pub fn is_none(&self) -> bool {
        *self == InterceptionMode::None
    }

    /// The name Istio's node metadata uses (`NONE`, `REDIRECT`).
    pub fn as_metadata(self) -> &'static str {
        match self {
            InterceptionMode::None => "NONE",
            InterceptionMode::Redirect => "REDIRECT",
        }
    }

    /// Parses [`Self::as_metadata`] (case-insensitive).
    pub fn from_metadata(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("redirect") {
            Some(InterceptionMode::Redirect)
        } else if text.eq_ignore_ascii_case("none") {
            Some(InterceptionMode::None)
        } else {
            None
        }
    }
}

impl CaptureOutbound {
    fn address(&self) -> &str {
        self.address.as_deref().unwrap_or(DEFAULT_OUTBOUND_ADDRESS)
    }
}

impl CaptureInbound {
    fn address(&self) -> &str {
        self.address.as_deref().unwrap_or(DEFAULT_INBOUND_ADDRESS)
    }
}

/// Checks the `capture` section and the listeners that depend on it.
pub(crate) fn validate(b: &Bootstrap) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    let (outbound_on, inbound_on) = match &b.capture {
        Some(c) => (c.outbound.enabled, c.inbound.enabled),
        None => (false, false),
    };
    if let Some(c) = &b.capture {
        let out = c.outbound.address().parse::<SocketAddr>();
        let inb = c.inbound.address().parse::<SocketAddr>();
        if out.is_err() {
            err(
                "capture.outbound.address".into(),
                format!("{:?} is not an ip:port address", c.outbound.address()),
            );
        }
        if inb.is_err() {
            err(
                "capture.inbound.address".into(),
                format!("{:?} is not an ip:port address", c.inbound.address()),
            );
        }
        if let (Ok(o), Ok(i)) = (out, inb) {
            if outbound_on && inbound_on && o == i && o.port() != 0 {
                err(
                    "capture.inbound.address".into(),
                    format!("{i} is the outbound capture address too"),
                );
            }
        }
        for (p, t) in [
            (
                "capture.outbound.connect_timeout",
                c.outbound.connect_timeout,
            ),
            ("capture.inbound.connect_timeout", c.inbound.connect_timeout),
        ] {
            if t.is_some_and(|t| t.0.is_zero()) {
                err(p.into(), "must be greater than 0".into());
            }
        }
        for l in &b.listeners {
            if l.name == VIRTUAL_OUTBOUND || l.name == VIRTUAL_INBOUND {
                err(
                    format!("listeners[{}].name", l.name),
                    "is the name of a capture listener".into(),
                );
            }
        }
    }
    let mut seen: HashMap<(bool, SocketAddr), &str> = HashMap::new();
    for l in b.listeners.iter().filter(|l| !l.bind_to_port) {
        let p = format!("listeners[{}]", l.name);
        let inbound = l.traffic_direction == TrafficDirection::Inbound;
        let (on, section) = if inbound {
            (inbound_on, "capture.inbound")
        } else {
            (outbound_on, "capture.outbound")
        };
        if !on {
            err(
                format!("{p}.bind_to_port"),
                format!(
                    "a {} listener that binds no socket needs {section} (enabled), \
                     which hands it its connections",
                    if inbound { "inbound" } else { "outbound" }
                ),
            );
        }
        let Ok(addr) = l.address.parse::<SocketAddr>() else {
            continue; // reported with the other listener checks
        };
        if addr.port() == 0 {
            err(
                format!("{p}.address"),
                "a listener that binds no socket needs a port other than 0".into(),
            );
        } else if let Some(other) = seen.insert((inbound, normalize(addr)), &l.name) {
            err(
                format!("{p}.address"),
                format!("listener {other:?} already takes captured connections for {addr}"),
            );
        }
    }
    errors
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The original destination of a redirected connection (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` on IPv6 sockets). A connection nothing redirected has none,
/// or (with conntrack) its own local address.
#[cfg(target_os = "linux")]
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let v6 = match stream.local_addr()? {
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
        SocketAddr::V4(_) => false,
    };
    let addr = if v6 {
        sock.original_dst_v6()?
    } else {
        sock.original_dst_v4()?
    };
    addr.as_socket()
        .map(normalize)
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}

/// The original destination of a redirected connection: only Linux has one.
#[cfg(not(target_os = "linux"))]
pub fn original_dst(_stream: &TcpStream) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "original destinations need Linux",
    ))
}

/// Listeners that take captured connections, by the address they are configured with.
pub(crate) struct Table<T> {
    outbound: HashMap<SocketAddr, T>,
    inbound: HashMap<SocketAddr, T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            outbound: HashMap::new(),
            inbound: HashMap::new(),
        }
    }
}

impl<T> Table<T> {
    /// Adds a listener configured with `address` for `direction`.
    pub(crate) fn insert(&mut self, direction: TrafficDirection, address: SocketAddr, t: T) {
        let map = match direction {
            TrafficDirection::Inbound => &mut self.inbound,
            _ => &mut self.outbound,
        };
        map.insert(normalize(address), t);
    }

    /// The listener for original destination `dst`: the one configured with exactly
    /// that `ip:port`, else the one on the wildcard address of its family and that port
    /// (Envoy's `use_original_dst`).
    pub(crate) fn find(&self, inbound: bool, dst: SocketAddr) -> Option<&T> {
        let map = if inbound {
            &self.inbound
        } else {
            &self.outbound
        };
        let dst = normalize(dst);
        let any = match dst {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        map.get(&dst)
            .or_else(|| map.get(&SocketAddr::new(any, dst.port())))
    }
}

/// What a capture listener does with one accepted connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision<T> {
    /// Hand it to this listener.
    Listener(T),
    /// Proxy it as plain TCP to this address.
    Passthrough(SocketAddr),
    /// Close it: an unknown destination under `registry_only`.
    Blocked,
    /// Close it: it did not come through a redirect, or it is the proxy's own
    /// passthrough connection coming back (the proxy is not running as the uid the
    /// rules exclude), and serving it would loop.
    Loop,
}

/// How a capture listener treats connections no listener is configured for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unknown {
    /// Outbound: pass through, or close.
    Outbound(OutboundTrafficPolicy),
    /// Inbound: pass through to the original destination or to localhost.
    Inbound(InboundPassthrough),
}

/// Decides what happens to a connection accepted on `local` from `peer` whose original
/// destination is `dst`; `own` says whether an address is the source of one of the
/// proxy's own passthrough connections.
pub(crate) fn decide<T>(
    table: &Table<T>,
    unknown: Unknown,
    dst: SocketAddr,
    local: SocketAddr,
    peer: SocketAddr,
    own: impl Fn(&SocketAddr) -> bool,
) -> Decision<&T> {
    let dst = normalize(dst);
    if dst == normalize(local) || own(&normalize(peer)) {
        return Decision::Loop;
    }
    let inbound = matches!(unknown, Unknown::Inbound(_));
    if let Some(t) = table.find(inbound, dst) {
        return Decision::Listener(t);
    }
    match unknown {
        Unknown::Outbound(OutboundTrafficPolicy::AllowAny) => Decision::Passthrough(dst),
        Unknown::Outbound(OutboundTrafficPolicy::RegistryOnly) => Decision::Blocked,
        Unknown::Inbound(InboundPassthrough::OriginalDestination) => Decision::Passthrough(dst),
        Unknown::Inbound(InboundPassthrough::Localhost) => {
            let lo = match dst {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            Decision::Passthrough(SocketAddr::new(lo, dst.port()))
        }
    }
}

/// Labels of capture metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    /// The capture listener (`virtual_outbound`, `virtual_inbound`).
    pub listener: String,
}

/// Labels of capture metrics with the listener a connection went to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureTargetLabels {
    /// The capture listener.
    pub listener: String,
    /// The listener that served the connection.
    pub target: String,
}

/// Labels of capture metrics with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureReasonLabels {
    /// The capture listener.
    pub listener: String,
    /// Why.
    pub reason: String,
}

/// Capture metric families.
pub struct CaptureStats {
    cx_total: Family<CaptureTargetLabels, Counter>,
    passthrough_total: Family<CaptureLabels, Counter>,
    blocked_total: Family<CaptureLabels, Counter>,
    error_total: Family<CaptureReasonLabels, Counter>,
}

impl CaptureStats {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let s = Self {
            cx_total: Family::default(),
            passthrough_total: Family::default(),
            blocked_total: Family::default(),
            error_total: Family::default(),
        };
        registry.register(
            "capture_cx",
            "Captured connections handed to a listener, by capture listener and target",
            s.cx_total.clone(),
        );
        registry.register(
            "capture_passthrough_cx",
            "Captured connections proxied as plain TCP to their original destination",
            s.passthrough_total.clone(),
        );
        registry.register(
            "capture_blocked_cx",
            "Captured connections to unknown destinations closed (registry_only)",
            s.blocked_total.clone(),
        );
        registry.register(
            "capture_error",
            "Captured connections that could not be served, by reason \
             (no_original_dst, loop, connect_failed)",
            s.error_total.clone(),
        );
        s
    }

    fn target(&self, listener: &str, target: &str) -> Counter {
        self.cx_total
            .get_or_create(&CaptureTargetLabels {
                listener: listener.to_owned(),
                target: target.to_owned(),
            })
            .clone()
    }

    fn error(&self, listener: &str, reason: &str) {
        self.error_total
            .get_or_create(&CaptureReasonLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn passthrough(&self, listener: &str) -> Counter {
        self.passthrough_total
            .get_or_create(&CaptureLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    fn blocked(&self, listener: &str) -> Counter {
        self.blocked_total
            .get_or_create(&CaptureLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }
}

/// A listener that takes captured connections.
pub(crate) struct Target {
    pub(crate) ctx: Arc<ListenerContext>,
    /// Cancelled when the listener is removed or replaced: its connections drain.
    pub(crate) stop: CancellationToken,
    /// `capture_cx` of the virtual outbound or inbound listener and this target.
    captured: Counter,
}

impl Target {
    /// A target whose counter is resolved now, off the connection path.
    pub(crate) fn new(
        stats: &CaptureStats,
        direction: TrafficDirection,
        ctx: Arc<ListenerContext>,
        stop: CancellationToken,
    ) -> Self {
        let virt = match direction {
            TrafficDirection::Inbound => VIRTUAL_INBOUND,
            _ => VIRTUAL_OUTBOUND,
        };
        let captured = stats.target(virt, &ctx.name);
        Self {
            ctx,
            stop,
            captured,
        }
    }
}

/// A running capture listener.
struct Running {
    shape: String,
    address: String,
    socket: Arc<TcpListener>,
    bound: SocketAddr,
    stop: CancellationToken,
}

/// The capture listeners of a proxy and the table they look targets up in.
pub(crate) struct CaptureRuntime {
    table: Arc<ArcSwap<Table<Arc<Target>>>>,
    running: Mutex<BTreeMap<&'static str, Running>>,
    /// Local addresses of the proxy's own passthrough connections.
    own: Arc<DashSet<SocketAddr>>,
}

impl Default for CaptureRuntime {
    fn default() -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            running: Mutex::new(BTreeMap::new()),
            own: Arc::new(DashSet::new()),
        }
    }
}

/// Why a capture listener could not be started.
pub(crate) struct BindFailure {
    pub(crate) path: String,
    pub(crate) address: String,
    pub(crate) source: io::Error,
}

impl CaptureRuntime {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Running>> {
        // The map holds plain data; a panic elsewhere leaves it usable.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the listeners that take captured connections.
    pub(crate) fn publish(&self, table: Table<Arc<Target>>) {
        self.table.store(Arc::new(table));
    }

    /// The capture listeners with their bound addresses.
    pub(crate) fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.running()
            .iter()
            .map(|(n, r)| ((*n).to_owned(), r.bound))
            .collect()
    }

    /// Stops every capture listener and closes its socket.
    pub(crate) fn clear(&self) {
        for (_, r) in std::mem::take(&mut *self.running()) {
            r.stop.cancel();
        }
    }

    /// Brings the capture listeners in line with `capture`: binds, restarts (on the same
    /// socket when the address stayed) or stops them. Connections already handed on
    /// are not affected.
    pub(crate) async fn reconcile(
        &self,
        capture: Option<&Capture>,
        stats: &Arc<crate::stats::Stats>,
        shutdown: &CancellationToken,
        (tracker, workers): (&TaskTracker, &Arc<crate::worker::Workers>),
    ) -> Result<(), BindFailure> {
        let mut wanted: Vec<(&'static str, String, Unknown, Duration)> = Vec::new();
        if let Some(c) = capture {
            if c.outbound.enabled {
                wanted.push((
                    VIRTUAL_OUTBOUND,
                    c.outbound.address().to_owned(),
                    Unknown::Outbound(c.outbound.outbound_traffic_policy),
                    c.outbound
                        .connect_timeout
                        .map_or(DEFAULT_PASSTHROUGH_CONNECT_TIMEOUT, |d| d.0),
                ));
            }
            if c.inbound.enabled {
                wanted.push((
                    VIRTUAL_INBOUND,
                    c.inbound.address().to_owned(),
                    Unknown::Inbound(c.inbound.passthrough),
                    c.inbound
                        .connect_timeout
                        .map_or(DEFAULT_PASSTHROUGH_CONNECT_TIMEOUT, |d| d.0),
                ));
            }
        }
        let stale: Vec<&'static str> = self
            .running()
            .keys()
            .filter(|n| !wanted.iter().any(|w| w.0 == **n))
            .copied()
            .collect();
        for name in stale {
            if let Some(old) = self.running().remove(name) {
                tracing::info!(listener = name, address = %old.bound, "capture listener removed");
                old.stop.cancel();
            }
        }
        let mut first_error = None;
        for (name, address, unknown, connect_timeout) in wanted {
            let shape = format!("{address} {unknown:?} {connect_timeout:?}");
            let current = self.running().get(name).map(|r| {
                (
                    r.shape.clone(),
                    r.address.clone(),
                    r.socket.clone(),
                    r.bound,
                )
            });
            let (socket, bound) = match current {
                Some((have, ..)) if have == shape => continue,
                Some((_, a, socket, bound)) if a == address => (socket, bound),
                _ => match bind(&address).await {
                    Ok(pair) => pair,
                    Err(source) => {
                        let path = match name {
                            VIRTUAL_INBOUND => "capture.inbound.address",
                            _ => "capture.outbound.address",
                        };
                        tracing::error!(listener = name, error = %source, "capture listener not started");
                        first_error.get_or_insert(BindFailure {
                            path: path.into(),
                            address: address.clone(),
                            source,
                        });
                        continue;
                    }
                },
            };
            let stop = shutdown.child_token();
            let accept = Accept {
                name,
                unknown,
                connect_timeout,
                table: self.table.clone(),
                own: self.own.clone(),
                stats: stats.clone(),
                passthrough: stats.capture().passthrough(name),
                blocked: stats.capture().blocked(name),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                workers: workers.clone(),
            };
            tracing::info!(listener = name, addr = %bound, "capture listening");
            tokio::spawn(accept.run(socket.clone(), stop.clone()));
            let old = self.running().insert(
                name,
                Running {
                    shape,
                    address,
                    socket,
                    bound,
                    stop,
                },
            );
            if let Some(old) = old {
                old.stop.cancel();
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

async fn bind(address: &str) -> io::Result<(Arc<TcpListener>, SocketAddr)> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|_| io::Error::other("not an ip:port address"))?;
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((Arc::new(l), bound))
}

/// The accept loop of one capture listener.
struct Accept {
    name: &'static str,
    unknown: Unknown,
    connect_timeout: Duration,
    table: Arc<ArcSwap<Table<Arc<Target>>>>,
    own: Arc<DashSet<SocketAddr>>,
    stats: Arc<crate::stats::Stats>,
    /// `capture_passthrough_cx` of this listener.
    passthrough: Counter,
    /// `capture_blocked_cx` of this listener.
    blocked: Counter,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: Arc<crate::worker::Workers>,
}

impl Accept {
    async fn run(self, socket: Arc<TcpListener>, stop: CancellationToken) {
        let this = Arc::new(self);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = socket.accept() => match accepted {
                    Ok((stream, peer)) => this.clone().handle(stream, peer),
                    Err(e) => {
                        tracing::warn!(listener = this.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let stats = self.stats.capture();
        let (dst, local) = match original_dst(&stream).and_then(|d| Ok((d, stream.local_addr()?))) {
            Ok(pair) => pair,
            Err(e) => {
                stats.error(self.name, "no_original_dst");
                tracing::info!(listener = self.name, %peer, error = %e, "no original destination; closed");
                return;
            }
        };
        let table = self.table.load();
        match decide(&table, self.unknown, dst, local, peer, |a| {
            self.own.contains(a)
        }) {
            Decision::Listener(t) => {
                t.captured.inc();
                let _ = stream.set_nodelay(true);
                tracing::debug!(listener = self.name, target = %t.ctx.name, %peer, %dst, "captured");
                let (ctx, stop) = (t.ctx.clone(), t.stop.clone());
                self.workers.hand_off(&self.tracker, stream, move |s| {
                    crate::listener::serve_connection(s, ctx, stop)
                });
            }
            Decision::Passthrough(to) => {
                self.passthrough.inc();
                tracing::debug!(listener = self.name, %peer, %dst, %to, "passthrough");
                let this = self.clone();
                self.tracker
                    .spawn(async move { this.passthrough(stream, to).await });
            }
            Decision::Blocked => {
                self.blocked.inc();
                tracing::debug!(listener = self.name, %peer, %dst, "unknown destination blocked (registry_only)");
            }
            Decision::Loop => {
                stats.error(self.name, "loop");
                tracing::warn!(listener = self.name, %peer, %dst,
                    "connection was not redirected, or the proxy's own connection came back \
                     (is the proxy running as the uid the iptables rules exclude?); closed");
            }
        }
    }

    /// Proxies `downstream` as plain TCP to `to` until either side closes or the proxy
    /// shuts down.
    async fn passthrough(&self, mut downstream: TcpStream, to: SocketAddr) {
        let connect = tokio::time::timeout(self.connect_timeout, TcpStream::connect(to)).await;
        let mut upstream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats.capture().error(self.name, "connect_failed");
                tracing::info!(listener = self.name, %to, error = %e, "passthrough connect failed");
                return;
            }
            Err(_) => {
                self.stats.capture().error(self.name, "connect_failed");
                tracing::info!(listener = self.name, %to, "passthrough connect timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let _ = downstream.set_nodelay(true);
        let source = upstream.local_addr().ok().map(normalize);
        if let Some(s) = source {
            self.own.insert(s);
        }
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
        }
        if let Some(s) = source {
            self.own.remove(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::registry;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| panic!("bad address {s}"))
    }

    fn table() -> Table<&'static str> {
        let mut t = Table::default();
        t.insert(
            TrafficDirection::Unspecified,
            sa("0.0.0.0:20880"),
            "any-20880",
        );
        t.insert(TrafficDirection::Outbound, sa("10.0.0.5:20880"), "svc-a");
        t.insert(TrafficDirection::Outbound, sa("[::]:9090"), "v6-any");
        t.insert(TrafficDirection::Inbound, sa("0.0.0.0:20880"), "in-20880");
        t
    }

    #[test]
    fn exact_destination_wins_over_the_wildcard_of_its_port() {
        let t = table();
        assert_eq!(t.find(false, sa("10.0.0.5:20880")), Some(&"svc-a"));
        assert_eq!(t.find(false, sa("10.0.0.6:20880")), Some(&"any-20880"));
        assert_eq!(t.find(false, sa("[::ffff:10.0.0.5]:20880")), Some(&"svc-a"));
        assert_eq!(t.find(false, sa("10.0.0.5:20881")), None);
        // IPv6 destinations match the IPv6 wildcard only.
        assert_eq!(t.find(false, sa("[fd00::1]:9090")), Some(&"v6-any"));
        assert_eq!(t.find(false, sa("10.0.0.1:9090")), None);
        assert_eq!(t.find(false, sa("[fd00::1]:20880")), None);
        // Inbound and outbound listeners on one port are kept apart.
        assert_eq!(t.find(true, sa("10.0.0.5:20880")), Some(&"in-20880"));
        assert_eq!(t.find(true, sa("10.0.0.5:9090")), None);
    }

    #[test]
    fn unknown_destinations_follow_the_policy() {
        let t = table();
        let local = sa("10.0.0.9:15001");
        let peer = sa("10.0.0.9:40000");
        let never = |_: &SocketAddr| false;
        let allow = Unknown::Outbound(OutboundTrafficPolicy::AllowAny);
        let registry_only = Unknown::Outbound(OutboundTrafficPolicy::RegistryOnly);
        let dst = sa("10.1.2.3:8080");
        assert_eq!(
            decide(&t, allow, dst, local, peer, never),
            Decision::Passthrough(dst)
        );
        assert_eq!(
            decide(&t, registry_only, dst, local, peer, never),
            Decision::Blocked
        );
        assert_eq!(
            decide(&t, registry_only, sa("10.1.2.3:20880"), local, peer, never),
            Decision::Listener(&"any-20880")
        );
        let inbound_local = sa("10.0.0.9:15006");
        let orig = Unknown::Inbound(InboundPassthrough::OriginalDestination);
        let lo = Unknown::Inbound(InboundPassthrough::Localhost);
        let called = sa("10.0.0.9:8080");
        assert_eq!(
            decide(&t, orig, called, inbound_local, peer, never),
            Decision::Passthrough(called)
        );
        assert_eq!(
            decide(&t, lo, called, inbound_local, peer, never),
            Decision::Passthrough(sa("127.0.0.1:8080"))
        );
        assert_eq!(
            decide(&t, lo, sa("[fd00::9]:8080"), inbound_local, peer, never),
            Decision::Passthrough(sa("[::1]:8080"))
        );
        assert_eq!(
            decide(&t, orig, sa("10.0.0.9:20880"), inbound_local, peer, never),
            Decision::Listener(&"in-20880")
        );
    }

    #[test]
    fn connections_that_would_loop_are_refused() {
        let t = table();
        let allow = Unknown::Outbound(OutboundTrafficPolicy::AllowAny);
        let local = sa("10.0.0.9:15001");
        // Not redirected: conntrack reports the connection's own local address.
        assert_eq!(
            decide(&t, allow, local, local, sa("10.0.0.9:40000"), |_| false),
            Decision::Loop
        );
        // The proxy's own passthrough connection, captured again.
        let own = sa("10.0.0.9:40001");
        assert_eq!(
            decide(&t, allow, sa("10.1.2.3:80"), local, own, |a| *a == own),
            Decision::Loop
        );
    }

    fn errors(yaml: &str) -> Vec<String> {
        match Bootstrap::from_yaml(yaml).map(|b| b.validate(&registry())) {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(e)) | Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const BASE: &str = r#"
routes: [{ name: rc, routes: [{ name: all, route: [{ cluster: c }] }] }]
clusters: [{ name: c, endpoints: [{ address: "127.0.0.1:1" }] }]
"#;

    #[test]
    fn the_capture_section_parses_with_defaults() {
        let yaml = format!(
            "{BASE}capture: {{ outbound: {{ outbound_traffic_policy: registry_only }} }}\n\
             listeners:\n  - {{ name: out, address: 0.0.0.0:20880, protocol: test, \
             route_config: rc, bind_to_port: false }}\n  - {{ name: in, address: 0.0.0.0:20880, \
             protocol: test, route_config: rc, bind_to_port: false, traffic_direction: inbound }}\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
        let b = Bootstrap::from_yaml(&yaml).unwrap_or_default();
        let c = b.capture.unwrap_or_default();
        assert!(c.outbound.enabled && c.inbound.enabled);
        assert_eq!(c.outbound.address(), DEFAULT_OUTBOUND_ADDRESS);
        assert_eq!(c.inbound.address(), DEFAULT_INBOUND_ADDRESS);
        assert_eq!(
            c.outbound.outbound_traffic_policy,
            OutboundTrafficPolicy::RegistryOnly
        );
        assert_eq!(
            c.inbound.passthrough,
            InboundPassthrough::OriginalDestination
        );
    }

    #[test]
    fn capture_errors_name_their_fields() {
        let yaml = format!(
            "{BASE}capture:\n  outbound: {{ address: 0.0.0.0:15001, connect_timeout: 0s }}\n  \
             inbound: {{ enabled: false, address: nowhere }}\n\
             listeners:\n  - {{ name: a, address: 0.0.0.0:20880, protocol: test, route_config: rc, \
             bind_to_port: false }}\n  - {{ name: b, address: 0.0.0.0:20880, protocol: test, \
             route_config: rc, bind_to_port: false, traffic_direction: outbound }}\n  - {{ name: c, \
             address: 0.0.0.0:0, protocol: test, route_config: rc, bind_to_port: false }}\n  - {{ \
             name: d, address: 10.0.0.1:80, protocol: test, route_config: rc, bind_to_port: false, \
             traffic_direction: inbound }}\n  - {{ name: virtual_inbound, address: 127.0.0.1:0, \
             protocol: test, route_config: rc }}\n"
        );
        let got = errors(&yaml);
        let want = [
            "capture.inbound.address: \"nowhere\" is not an ip:port address",
            "capture.outbound.connect_timeout: must be greater than 0",
            "listeners[virtual_inbound].name: is the name of a capture listener",
            "listeners[b].address: listener \"a\" already takes captured connections for 0.0.0.0:20880",
            "listeners[c].address: a listener that binds no socket needs a port other than 0",
            "listeners[d].bind_to_port: a inbound listener that binds no socket needs capture.inbound (enabled), which hands it its connections",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");

        let yaml = format!(
            "{BASE}listeners:\n  - {{ name: a, address: 0.0.0.0:20880, protocol: test, \
             route_config: rc, bind_to_port: false }}\n"
        );
        assert_eq!(
            errors(&yaml),
            [
                "listeners[a].bind_to_port: a outbound listener that binds no socket needs \
              capture.outbound (enabled), which hands it its connections"
            ]
        );
        let yaml = format!("{BASE}capture: {{ outbound: {{ outbound_traffic_policy: deny }} }}\n");
        let got = errors(&yaml);
        assert!(
            got.len() == 1
                && got[0].starts_with("capture.outbound.outbound_traffic_policy: ")
                && got[0].contains("unknown variant `deny`"),
            "{got:?}"
        );
    }

    /// A connection made straight to a capture listener (no redirect) is closed and
    /// counted, never served or passed through to itself.
    #[tokio::test]
    async fn a_connection_that_was_not_redirected_is_closed_and_counted() {
        use tokio::io::AsyncReadExt;
        let yaml = format!(
            "{BASE}capture: {{ outbound: {{ address: 127.0.0.1:0 }}, inbound: {{ address: 127.0.0.1:0 }} }}\n"
        );
        let b = Bootstrap::from_yaml(&yaml).unwrap_or_default();
        let proxy = match crate::ProxyBuilder::new()
            .protocols(&registry())
            .start(b)
            .await
        {
            Ok(p) => p,
            Err(e) => panic!("start: {e}"),
        };
        let addrs: HashMap<String, SocketAddr> = proxy.listeners().into_iter().collect();
        for name in [VIRTUAL_OUTBOUND, VIRTUAL_INBOUND] {
            let Some(addr) = addrs.get(name) else {
                panic!("{name} not listed in {addrs:?}");
            };
            let Ok(mut s) = TcpStream::connect(addr).await else {
                panic!("cannot connect to {name}");
            };
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "{name} kept the connection open: {read:?}"
            );
        }
        let text = proxy.store().stats().encode();
        for name in [VIRTUAL_OUTBOUND, VIRTUAL_INBOUND] {
            let counted: u64 = ["loop", "no_original_dst"]
                .iter()
                .filter_map(|r| {
                    let line = format!(
                        "metamesh_capture_error_total{{listener=\"{name}\",reason=\"{r}\"}} "
                    );
                    text.lines()
                        .find_map(|l| l.strip_prefix(line.as_str()))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .sum();
            assert_eq!(counted, 1, "{name}:\n{text}");
        }
        let _ = proxy.shutdown(Duration::from_secs(1)).await;
    }

    /// Runtime updates: a listener switched to `bind_to_port: false` gives its port
    /// back (an application in the pod can bind it), is listed with its configured
    /// address, and takes captured connections; turning capture off stops the capture
    /// listeners; an update that would leave an unbound listener without them is refused
    /// and changes nothing.
    #[tokio::test]
    async fn listeners_move_in_and_out_of_capture_at_runtime() {
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a.port(),
            Err(e) => panic!("no free port: {e}"),
        };
        let yaml = |bind: bool, capture: bool| {
            let mut y = format!(
                "{BASE}listeners:\n  - {{ name: app, address: 127.0.0.1:{port}, protocol: test, \
                 route_config: rc, bind_to_port: {bind} }}\n"
            );
            if capture {
                y.push_str(
                    "capture: { outbound: { address: 127.0.0.1:0 }, inbound: { enabled: false } }\n",
                );
            }
            Bootstrap::from_yaml(&y).unwrap_or_default()
        };
        let proxy = match crate::ProxyBuilder::new()
            .protocols(&registry())
            .start(yaml(true, false))
            .await
        {
            Ok(p) => p,
            Err(e) => panic!("start: {e}"),
        };
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_ok());

        if let Err(e) = proxy.update(yaml(false, true)).await {
            panic!("update: {e}");
        }
        let names: HashMap<String, SocketAddr> = proxy.listeners().into_iter().collect();
        assert_eq!(names.get("app"), Some(&sa(&format!("127.0.0.1:{port}"))));
        assert_eq!(
            names.get(VIRTUAL_OUTBOUND).copied(),
            proxy.listener_addr(VIRTUAL_OUTBOUND)
        );
        assert!(names.contains_key(VIRTUAL_OUTBOUND), "{names:?}");
        assert!(!names.contains_key(VIRTUAL_INBOUND), "{names:?}");
        // The old socket closes once its accept loop has seen the update.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut freed = None;
        while freed.is_none() && tokio::time::Instant::now() < deadline {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => freed = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        assert!(freed.is_some(), "port {port} still bound by the proxy");
        drop(freed);
        let table = proxy.capture.table.load();
        assert_eq!(
            table
                .find(false, sa(&format!("10.9.9.9:{port}")))
                .map(|t| &*t.ctx.name),
            None,
            "only the configured address matches"
        );
        assert_eq!(
            table
                .find(false, sa(&format!("127.0.0.1:{port}")))
                .map(|t| t.ctx.name.to_string()),
            Some("app".to_owned())
        );

        // Without capture the unbound listener has nobody to feed it: refused.
        match proxy.update(yaml(false, false)).await {
            Err(crate::StartError::Config(e)) => {
                assert!(e.to_string().contains("listeners[app].bind_to_port"), "{e}")
            }
            other => panic!(
                "expected a configuration error, got {:?}",
                other.map(|_| ())
            ),
        }
        assert!(proxy.listeners().iter().any(|(n, _)| n == VIRTUAL_OUTBOUND));

        // Bound again, capture off: the capture listener is gone, the port serves.
        if let Err(e) = proxy.update(yaml(true, false)).await {
            panic!("update: {e}");
        }
        let names: Vec<String> = proxy.listeners().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["app"]);
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_ok());
        assert!(proxy
            .capture
            .table
            .load()
            .find(false, sa(&format!("127.0.0.1:{port}")))
            .is_none());
        let _ = proxy.shutdown(Duration::from_secs(1)).await;
    }
}
