//! The ADS server: takes the current mesh from a watch channel, translates it for each
//! connected proxy, and serves the result over state-of-the-world and delta ADS streams.
//! Each node's resources are encoded once per mesh generation and versioned by a hash of
//! their core form, so a mesh change re-sends only the types that changed for that node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use metamesh_core::config::{Bootstrap, Node};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::node_from_proto;
use crate::error::join_errors;
use crate::source::Loaded;
use crate::xds::{self, ResourceKind};

/// How long the server waits after a mesh change before reading the mesh, so that a
/// burst of changes gives one push.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// Responses buffered per stream before the stream's task waits for the proxy to read.
const STREAM_BUFFER: usize = 16;

/// The wildcard resource name.
const WILDCARD: &str = "*";

fn slot(kind: ResourceKind) -> usize {
    match kind {
        ResourceKind::Cluster => 0,
        ResourceKind::ClusterLoadAssignment => 1,
        ResourceKind::Hook => 2,
        ResourceKind::RouteConfiguration => 3,
        ResourceKind::Listener => 4,
    }
}

/// What the server has done, per resource type; every field only grows except
/// `open_streams`.
#[derive(Debug, Default)]
pub struct AdsCounters {
    pushes: [AtomicU64; 5],
    acks: [AtomicU64; 5],
    nacks: [AtomicU64; 5],
    malformed: AtomicU64,
    open_streams: AtomicU64,
    last_nack: Mutex<Option<String>>,
}

impl AdsCounters {
    /// Responses sent with resources of `kind`.
    pub fn pushes(&self, kind: ResourceKind) -> u64 {
        self.pushes[slot(kind)].load(Ordering::Relaxed)
    }

    /// Responses of `kind` a proxy accepted.
    pub fn acks(&self, kind: ResourceKind) -> u64 {
        self.acks[slot(kind)].load(Ordering::Relaxed)
    }

    /// Responses of `kind` a proxy rejected.
    pub fn nacks(&self, kind: ResourceKind) -> u64 {
        self.nacks[slot(kind)].load(Ordering::Relaxed)
    }

    /// Requests refused or ignored: no node, unknown type URL.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u64 {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// The error text of the newest NACK.
    pub fn last_nack(&self) -> Option<String> {
        self.last_nack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(counters: &[AtomicU64; 5], kind: ResourceKind) {
        counters[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }
}

/// One resource as served: name, version, packed message.
#[derive(Debug)]
struct Entry {
    name: String,
    version: String,
    resource: Any,
}

/// The resources of one type for one node.
#[derive(Debug, Default)]
struct TypeResources {
    version: String,
    entries: Vec<Entry>,
}

/// One node's configuration for one mesh generation.
#[derive(Debug)]
struct NodeConfig {
    generation: u64,
    types: [TypeResources; 5],
}

fn hash_version(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(bytes, 0))
}

fn json_version(value: &Value) -> String {
    hash_version(value.to_string().as_bytes())
}

/// The core form of each resource by type and name, the input of its version: Envoy's
/// `Struct` maps are unordered, so protobuf bytes are not a stable version.
fn canonical(b: &Bootstrap) -> Result<[BTreeMap<String, Value>; 5], serde_json::Error> {
    let mut out: [BTreeMap<String, Value>; 5] = Default::default();
    for c in &b.clusters {
        let mut full = serde_json::to_value(c)?;
        let mut endpoints = serde_json::Map::new();
        if let Value::Object(map) = &mut full {
            for key in ["name", "locality_lb", "overprovisioning_factor"] {
                if let Some(v) = map.get(key) {
                    endpoints.insert(key.to_owned(), v.clone());
                }
            }
            if let Some(v) = map.remove("endpoints") {
                endpoints.insert("endpoints".to_owned(), v);
            }
        }
        out[slot(ResourceKind::Cluster)].insert(c.name.clone(), full);
        out[slot(ResourceKind::ClusterLoadAssignment)]
            .insert(c.name.clone(), Value::Object(endpoints));
    }
    for h in &b.hooks {
        out[slot(ResourceKind::Hook)].insert(h.name.clone(), serde_json::to_value(h)?);
    }
    for r in &b.routes {
        out[slot(ResourceKind::RouteConfiguration)]
            .insert(r.name.clone(), serde_json::to_value(r)?);
    }
    for l in &b.listeners {
        out[slot(ResourceKind::Listener)].insert(l.name.clone(), serde_json::to_value(l)?);
    }
    Ok(out)
}

impl NodeConfig {
    fn build(generation: u64, b: &Bootstrap) -> Result<NodeConfig, String> {
        let encoded = xds::encode(b).map_err(|e| e.to_string())?;
        let canon = canonical(b).map_err(|e| e.to_string())?;
        let mut types: [TypeResources; 5] = Default::default();
        for kind in ResourceKind::ALL {
            let i = slot(kind);
            let entries: Vec<Entry> = encoded
                .named_resources(kind)
                .into_iter()
                .map(|r| Entry {
                    version: canon[i]
                        .get(&r.name)
                        .map_or_else(|| hash_version(&r.resource.value), json_version),
                    name: r.name,
                    resource: r.resource,
                })
                .collect();
            let listed: Vec<(&str, &str)> = entries
                .iter()
                .map(|e| (e.name.as_str(), e.version.as_str()))
                .collect();
            let version = json_version(&serde_json::json!(listed));
            types[i] = TypeResources { version, entries };
        }
        Ok(NodeConfig { generation, types })
    }

    fn of(&self, kind: ResourceKind) -> &TypeResources {
        &self.types[slot(kind)]
    }
}

/// A node's cached configuration and how many streams use it.
#[derive(Default)]
struct CacheEntry {
    streams: usize,
    config: Option<Arc<NodeConfig>>,
}

struct Shared {
    mesh: watch::Receiver<Option<Arc<Loaded>>>,
    cache: Mutex<HashMap<String, CacheEntry>>,
    counters: Arc<AdsCounters>,
    shutdown: watch::Sender<bool>,
    next_nonce: AtomicU64,
    /// The generation of the mesh last validated (0: none).
    validated: AtomicU64,
}

impl Shared {
    fn nonce(&self) -> String {
        (self.next_nonce.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attach(&self, key: &str) {
        self.cache().entry(key.to_owned()).or_default().streams += 1;
    }

    fn detach(&self, key: &str) {
        let mut cache = self.cache();
        if let Some(e) = cache.get_mut(key) {
            e.streams = e.streams.saturating_sub(1);
            if e.streams == 0 {
                cache.remove(key);
            }
        }
    }

    /// The node's configuration for the current mesh; `None` until a mesh is loaded.
    fn config_for(&self, key: &str, node: &Node) -> Option<Result<Arc<NodeConfig>, String>> {
        let loaded = self.mesh.borrow().clone()?;
        if let Some(c) = self.cache().get(key).and_then(|e| e.config.clone()) {
            if c.generation == loaded.generation {
                return Some(Ok(c));
            }
        }
        // The mesh is validated once per generation, not once per proxy.
        let checked = self.validated.load(Ordering::Acquire) == loaded.generation;
        let valid = if checked {
            Ok(loaded.mesh.already_validated())
        } else {
            loaded.mesh.validated().inspect(|_| {
                self.validated.store(loaded.generation, Ordering::Release);
            })
        };
        let built = valid
            .and_then(|v| v.translate(node))
            .map_err(|e| join_errors(&e))
            .and_then(|b| NodeConfig::build(loaded.generation, &b))
            .map(Arc::new);
        if let Ok(c) = &built {
            if let Some(e) = self.cache().get_mut(key) {
                e.config = Some(c.clone());
            }
        }
        Some(built)
    }
}

/// The ADS server. Cheap to clone; all clones serve the same mesh and share counters.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    /// A server of the mesh published on `mesh` (as [`crate::source::DirWatch`] does),
    /// with [`DEFAULT_DEBOUNCE`]. Must be called inside a tokio runtime.
    pub fn new(mesh: watch::Receiver<Option<Arc<Loaded>>>) -> AdsServer {
        AdsServer::with_debounce(mesh, DEFAULT_DEBOUNCE)
    }

    /// A server that reads the mesh `debounce` after a change.
    pub fn with_debounce(
        mut mesh: watch::Receiver<Option<Arc<Loaded>>>,
        debounce: Duration,
    ) -> AdsServer {
        let (tx, rx) = watch::channel(mesh.borrow_and_update().clone());
        tokio::spawn(debounced(mesh, tx, debounce));
        let (shutdown, _) = watch::channel(false);
        AdsServer {
            shared: Arc::new(Shared {
                mesh: rx,
                cache: Mutex::new(HashMap::new()),
                counters: Arc::new(AdsCounters::default()),
                shutdown,
                next_nonce: AtomicU64::new(0),
                validated: AtomicU64::new(0),
            }),
        }
    }

    /// The server's counters.
    pub fn counters(&self) -> Arc<AdsCounters> {
        self.shared.counters.clone()
    }

    /// The server as a tonic service, for a caller that builds its own gRPC server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Ends every open stream and refuses new ones; proxies reconnect elsewhere.
    pub fn close_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Serves ADS on `listener` until `shutdown` completes; then ends every stream and
    /// returns once connections are closed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let shared = self.shared.clone();
        let signal = async move {
            shutdown.await;
            shared.shutdown.send_replace(true);
        };
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(self.into_service(), TcpIncoming::from(listener), signal)
            .await
    }
}

/// Republishes `input` on `output` once it has been quiet for `delay`.
async fn debounced(
    mut input: watch::Receiver<Option<Arc<Loaded>>>,
    output: watch::Sender<Option<Arc<Loaded>>>,
    delay: Duration,
) {
    loop {
        tokio::select! {
            changed = input.changed() => if changed.is_err() { return },
            _ = output.closed() => return,
        }
        tokio::time::sleep(delay).await;
        let latest = input.borrow_and_update().clone();
        output.send_replace(latest);
    }
}

/// Why a stream ends.
enum End {
    /// The proxy went away.
    Closed,
    /// The stream is refused with this status.
    Status(Status),
}

/// What every stream knows about its proxy.
struct Peer {
    shared: Arc<Shared>,
    node: Option<(Node, String)>,
    stream: &'static str,
}

impl Peer {
    fn new(shared: Arc<Shared>, stream: &'static str) -> Peer {
        shared.counters.open_streams.fetch_add(1, Ordering::Relaxed);
        Peer {
            shared,
            node: None,
            stream,
        }
    }

    /// Takes the node from the first request; a first request without one is refused.
    fn identify(
        &mut self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<(), End> {
        if self.node.is_some() {
            return Ok(());
        }
        let Some(n) = node else {
            self.shared
                .counters
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = self.stream,
                "discovery request without a node; stream refused"
            );
            return Err(End::Status(Status::invalid_argument(
                "the first discovery request of a stream must carry the node",
            )));
        };
        let node = node_from_proto(n);
        let key = serde_json::to_string(&node).unwrap_or_else(|_| format!("{node:?}"));
        self.shared.attach(&key);
        tracing::info!(stream = self.stream, node = %node.id, cluster = %node.cluster, "proxy connected");
        self.node = Some((node, key));
        Ok(())
    }

    fn kind(&self, type_url: &str) -> Option<ResourceKind> {
        let kind = ResourceKind::from_type_url(type_url);
        if kind.is_none() {
            self.shared
                .counters
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = self.stream, node = %self.node_id(), type_url, "unknown resource type; request ignored");
        }
        kind
    }

    fn node_id(&self) -> &str {
        self.node.as_ref().map_or("", |(n, _)| n.id.as_str())
    }

    /// The configuration to serve, `Ok(None)` while no mesh is loaded.
    fn config(&self) -> Result<Option<Arc<NodeConfig>>, End> {
        let Some((node, key)) = &self.node else {
            return Ok(None);
        };
        match self.shared.config_for(key, node) {
            None => Ok(None),
            Some(Ok(c)) => Ok(Some(c)),
            Some(Err(e)) => {
                tracing::error!(stream = self.stream, node = %node.id, error = %e, "no configuration for this proxy");
                Err(End::Status(Status::failed_precondition(format!(
                    "no configuration for node {}: {e}",
                    node.id
                ))))
            }
        }
    }

    fn ack_or_nack(&self, kind: ResourceKind, version: &str, error: Option<&rpc::Status>) {
        let c = &self.shared.counters;
        match error {
            Some(e) => {
                AdsCounters::count(&c.nacks, kind);
                tracing::warn!(stream = self.stream, node = %self.node_id(), %kind, version, error = %e.message, "configuration rejected by the proxy (NACK); it keeps its last good one");
                *c.last_nack.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(e.message.clone());
            }
            None => {
                AdsCounters::count(&c.acks, kind);
                tracing::debug!(stream = self.stream, node = %self.node_id(), %kind, version, "configuration accepted (ACK)");
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shared
            .counters
            .open_streams
            .fetch_sub(1, Ordering::Relaxed);
        if let Some((node, key)) = &self.node {
            tracing::info!(stream = self.stream, node = %node.id, "proxy disconnected");
            self.shared.detach(key);
        }
    }
}

/// Runs one stream: requests in, responses out, and a push on every mesh change.
async fn run_stream<Req, Resp, S>(
    shared: Arc<Shared>,
    mut requests: Streaming<Req>,
    tx: mpsc::Sender<Result<Resp, Status>>,
    mut state: S,
) where
    S: StreamState<Req, Resp>,
{
    let mut mesh = shared.mesh.clone();
    mesh.borrow_and_update();
    let mut shutdown = shared.shutdown.subscribe();
    let mut mesh_open = true;
    let mut peer = Peer::new(shared, S::NAME);
    let end = loop {
        let step = tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => break End::Closed,
            msg = requests.message() => match msg {
                Ok(Some(req)) => state.on_request(&mut peer, req, &tx).await,
                Ok(None) => break End::Closed,
                Err(status) => {
                    tracing::debug!(stream = S::NAME, node = %peer.node_id(), %status, "stream ended");
                    break End::Closed;
                }
            },
            changed = mesh.changed(), if mesh_open => {
                if changed.is_err() {
                    mesh_open = false;
                    continue;
                }
                state.push(&peer, None, &tx).await
            }
        };
        if let Err(e) = step {
            break e;
        }
    };
    if let End::Status(status) = end {
        let _ = tx.send(Err(status)).await;
    }
}

/// The per-stream protocol: state of the world or delta.
trait StreamState<Req, Resp>: Send {
    const NAME: &'static str;

    /// Handles one request from the proxy.
    fn on_request(
        &mut self,
        peer: &mut Peer,
        req: Req,
        tx: &mpsc::Sender<Result<Resp, Status>>,
    ) -> impl Future<Output = Result<(), End>> + Send;

    /// Sends what changed for the subscribed types, in [`ResourceKind::ALL`] order, and
    /// `force`'s type even when unchanged.
    fn push(
        &mut self,
        peer: &Peer,
        force: Option<ResourceKind>,
        tx: &mpsc::Sender<Result<Resp, Status>>,
    ) -> impl Future<Output = Result<(), End>> + Send;
}

/// A state-of-the-world subscription to one type.
#[derive(Default)]
struct SotwSub {
    /// Names asked for; empty means every resource.
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

#[derive(Default)]
struct Sotw {
    subs: BTreeMap<ResourceKind, SotwSub>,
}

impl StreamState<DiscoveryRequest, DiscoveryResponse> for Sotw {
    const NAME: &'static str = "sotw";

    async fn on_request(
        &mut self,
        peer: &mut Peer,
        req: DiscoveryRequest,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), End> {
        peer.identify(req.node.as_ref())?;
        let Some(kind) = peer.kind(&req.type_url) else {
            return Ok(());
        };
        let first = !self.subs.contains_key(&kind);
        let sub = self.subs.entry(kind).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != sub.nonce {
                tracing::debug!(stream = Self::NAME, node = %peer.node_id(), %kind, nonce = %req.response_nonce, "stale nonce; request ignored");
                return Ok(());
            }
            peer.ack_or_nack(kind, &req.version_info, req.error_detail.as_ref());
        }
        let names: BTreeSet<String> = if req.resource_names.iter().any(|n| n == WILDCARD) {
            BTreeSet::new()
        } else {
            req.resource_names.into_iter().collect()
        };
        let renamed = names != sub.names;
        sub.names = names;
        if first || renamed {
            self.push(peer, Some(kind), tx).await?;
        }
        Ok(())
    }

    async fn push(
        &mut self,
        peer: &Peer,
        force: Option<ResourceKind>,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), End> {
        let Some(config) = peer.config()? else {
            return Ok(());
        };
        for kind in ResourceKind::ALL {
            let Some(sub) = self.subs.get_mut(&kind) else {
                continue;
            };
            let t = config.of(kind);
            if force != Some(kind) && sub.sent_version.as_deref() == Some(t.version.as_str()) {
                continue;
            }
            let nonce = peer.shared.nonce();
            let resources: Vec<Any> = t
                .entries
                .iter()
                .filter(|e| sub.names.is_empty() || sub.names.contains(&e.name))
                .map(|e| e.resource.clone())
                .collect();
            tracing::debug!(stream = Self::NAME, node = %peer.node_id(), %kind, version = %t.version, nonce, resources = resources.len(), "push");
            let response = DiscoveryResponse {
                version_info: t.version.clone(),
                resources,
                type_url: kind.type_url().to_owned(),
                nonce: nonce.clone(),
                ..DiscoveryResponse::default()
            };
            AdsCounters::count(&peer.shared.counters.pushes, kind);
            tx.send(Ok(response)).await.map_err(|_| End::Closed)?;
            sub.sent_version = Some(t.version.clone());
            sub.nonce = nonce;
        }
        Ok(())
    }
}

/// A delta subscription to one type.
#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy has: name → version.
    known: HashMap<String, String>,
    nonce: String,
}

#[derive(Default)]
struct Delta {
    subs: BTreeMap<ResourceKind, DeltaSub>,
}

impl StreamState<DeltaDiscoveryRequest, DeltaDiscoveryResponse> for Delta {
    const NAME: &'static str = "delta";

    async fn on_request(
        &mut self,
        peer: &mut Peer,
        req: DeltaDiscoveryRequest,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), End> {
        peer.identify(req.node.as_ref())?;
        let Some(kind) = peer.kind(&req.type_url) else {
            return Ok(());
        };
        let first = !self.subs.contains_key(&kind);
        let sub = self.subs.entry(kind).or_default();
        if first {
            sub.known = req.initial_resource_versions;
            // A first request that names nothing subscribes to everything.
            sub.wildcard = req.resource_names_subscribe.is_empty();
        }
        if !req.response_nonce.is_empty() {
            if req.response_nonce == sub.nonce {
                peer.ack_or_nack(kind, "", req.error_detail.as_ref());
            } else {
                tracing::debug!(stream = Self::NAME, node = %peer.node_id(), %kind, nonce = %req.response_nonce, "stale nonce");
            }
        }
        let mut changed = false;
        for n in req.resource_names_subscribe {
            if n == WILDCARD {
                changed |= !sub.wildcard;
                sub.wildcard = true;
            } else {
                changed |= sub.names.insert(n);
            }
        }
        for n in req.resource_names_unsubscribe {
            if n == WILDCARD {
                changed |= sub.wildcard;
                sub.wildcard = false;
            } else {
                changed |= sub.names.remove(&n);
            }
            sub.known.remove(&n);
        }
        if first || changed {
            self.push(peer, if first { Some(kind) } else { None }, tx)
                .await?;
        }
        Ok(())
    }

    async fn push(
        &mut self,
        peer: &Peer,
        force: Option<ResourceKind>,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), End> {
        let Some(config) = peer.config()? else {
            return Ok(());
        };
        for kind in ResourceKind::ALL {
            let Some(sub) = self.subs.get_mut(&kind) else {
                continue;
            };
            let t = config.of(kind);
            let wanted: Vec<&Entry> = t
                .entries
                .iter()
                .filter(|e| sub.wildcard || sub.names.contains(&e.name))
                .collect();
            let resources: Vec<Resource> = wanted
                .iter()
                .filter(|e| sub.known.get(&e.name) != Some(&e.version))
                .map(|e| Resource {
                    name: e.name.clone(),
                    version: e.version.clone(),
                    resource: Some(e.resource.clone()),
                    ..Resource::default()
                })
                .collect();
            let mut removed: Vec<String> = sub
                .known
                .keys()
                .filter(|n| !wanted.iter().any(|e| &e.name == *n))
                .cloned()
                .collect();
            removed.sort();
            if resources.is_empty() && removed.is_empty() && force != Some(kind) {
                continue;
            }
            let nonce = peer.shared.nonce();
            tracing::debug!(stream = Self::NAME, node = %peer.node_id(), %kind, version = %t.version, nonce, updated = resources.len(), removed = removed.len(), "push");
            for n in &removed {
                sub.known.remove(n);
            }
            for r in &resources {
                sub.known.insert(r.name.clone(), r.version.clone());
            }
            let response = DeltaDiscoveryResponse {
                system_version_info: t.version.clone(),
                resources,
                type_url: kind.type_url().to_owned(),
                removed_resources: removed,
                nonce: nonce.clone(),
                ..DeltaDiscoveryResponse::default()
            };
            AdsCounters::count(&peer.shared.counters.pushes, kind);
            tx.send(Ok(response)).await.map_err(|_| End::Closed)?;
            sub.nonce = nonce;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream(
            self.shared.clone(),
            request.into_inner(),
            tx,
            Sotw::default(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream(
            self.shared.clone(),
            request.into_inner(),
            tx,
            Delta::default(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_file, translate, MeshResources};

    fn bootstrap(edit: impl Fn(String) -> String) -> Bootstrap {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/aeraki-demo.yaml");
        let text = edit(std::fs::read_to_string(path).expect("fixture"));
        let mesh = MeshResources::from_resources(
            parse_file("aeraki-demo.yaml", &text).expect("fixture parses"),
        );
        translate(&mesh, &Node::default()).expect("fixture translates")
    }

    fn versions(c: &NodeConfig) -> Vec<(String, Vec<String>)> {
        c.types
            .iter()
            .map(|t| {
                (
                    t.version.clone(),
                    t.entries.iter().map(|e| e.version.clone()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn versions_follow_the_content_not_the_encoding() {
        let b = bootstrap(|t| t);
        let one = NodeConfig::build(1, &b).expect("builds");
        let two = NodeConfig::build(2, &b).expect("builds");
        assert_eq!(versions(&one), versions(&two));
        assert!(one.of(ResourceKind::Cluster).entries.len() > 1);

        let moved = bootstrap(|t| t.replace("172.17.0.41", "172.17.0.42"));
        let three = NodeConfig::build(3, &moved).expect("builds");
        let changed: Vec<ResourceKind> = ResourceKind::ALL
            .into_iter()
            .filter(|k| one.of(*k).version != three.of(*k).version)
            .collect();
        assert_eq!(changed, [ResourceKind::ClusterLoadAssignment]);
        let entries_changed = one
            .of(ResourceKind::ClusterLoadAssignment)
            .entries
            .iter()
            .zip(&three.of(ResourceKind::ClusterLoadAssignment).entries)
            .filter(|(a, b)| a.version != b.version)
            .count();
        assert_eq!(entries_changed, 1, "only the Thrift service's endpoints");
    }

    #[test]
    fn every_kind_has_its_own_slot() {
        let mut slots: Vec<usize> = ResourceKind::ALL.into_iter().map(slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2, 3, 4]);
    }
}
