//! The ADS client a proxy runs: one state-of-the-world stream subscribed to all five
//! resource types; once a consistent set has arrived (every cluster has its endpoints)
//! it is decoded into a [`Bootstrap`] and handed to the caller's `apply`. An applied set is
//! ACKed, a refused one NACKed with the reason, and the proxy keeps its last good
//! configuration. A lost stream is reopened with jittered exponential backoff and the
//! configuration fetched again from scratch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use metamesh_core::config::{Admin, Bootstrap, Node};
use metamesh_core::stats::Stats;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::node_to_proto;
use crate::xds::{self, ResourceKind, XdsResources};

/// First wait before reconnecting.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait before reconnecting.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an idle connection is probed, and how long a probe may go unanswered
/// before the connection counts as lost.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest discovery response accepted (a type's resources for this proxy), in bytes.
const MAX_RESPONSE_SIZE: usize = 64 << 20;

/// gRPC's `INVALID_ARGUMENT`, the code of a NACK's error detail.
const INVALID_ARGUMENT: i32 = 3;

/// Where to connect and who to say we are.
#[derive(Clone, Debug)]
pub struct AdsClientConfig {
    /// The server, `http://host:port`.
    pub address: String,
    /// This proxy; sent with every request.
    pub node: Node,
    /// Kept in every decoded bootstrap (xDS does not carry it).
    pub admin: Option<Admin>,
    /// First wait before reconnecting; doubled after each failed attempt.
    pub initial_backoff: Duration,
    /// Longest wait before reconnecting.
    pub max_backoff: Duration,
    /// Where to count stream state, ACKs, NACKs and the versions in force.
    pub stats: Option<Arc<Stats>>,
}

impl AdsClientConfig {
    /// A configuration with the default backoff and no admin endpoint.
    pub fn new(address: impl Into<String>, node: Node) -> AdsClientConfig {
        AdsClientConfig {
            address: address.into(),
            node,
            admin: None,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            stats: None,
        }
    }
}

/// A running ADS client; dropping it stops it.
pub struct AdsClient {
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdsClient {
    /// Starts the client. `apply` gets every new consistent configuration; its error text
    /// is sent to the server as the NACK's error detail. Must be called inside a tokio
    /// runtime.
    pub fn start<F, Fut>(config: AdsClientConfig, apply: F) -> AdsClient
    where
        F: Fn(Bootstrap) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, ready) = watch::channel(false);
        let task = tokio::spawn(run(config, apply, tx));
        AdsClient { ready, task }
    }

    /// Becomes true once the first configuration has been applied.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }
}

impl Drop for AdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<F, Fut>(config: AdsClientConfig, apply: F, ready: watch::Sender<bool>)
where
    F: Fn(Bootstrap) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut backoff = config.initial_backoff;
    loop {
        let (progressed, why) = session(&config, &apply, &ready).await;
        if let Some(stats) = &config.stats {
            stats.xds_connected(false);
        }
        if progressed {
            backoff = config.initial_backoff;
        }
        let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        tracing::warn!(server = %config.address, reason = %why, retry_in = ?wait, "ADS stream lost; reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// One response of a type, as received.
#[derive(Clone, Debug)]
struct Received {
    version: String,
    nonce: String,
    resources: Vec<Any>,
}

/// What one stream has received: the last applied set per type, and responses not yet
/// applied.
#[derive(Default)]
struct Resources {
    good: BTreeMap<ResourceKind, Received>,
    pending: BTreeMap<ResourceKind, Received>,
}

impl Resources {
    /// The newest resources of every type, or `None` while a type has not arrived.
    fn current(&self) -> Option<Vec<&Any>> {
        let mut out = Vec::new();
        for kind in ResourceKind::ALL {
            let r = self.pending.get(&kind).or_else(|| self.good.get(&kind))?;
            out.extend(r.resources.iter());
        }
        Some(out)
    }
}

/// Runs one stream until it ends; returns whether anything was received, and why it
/// ended.
async fn session<F, Fut>(
    config: &AdsClientConfig,
    apply: &F,
    ready: &watch::Sender<bool>,
) -> (bool, String)
where
    F: Fn(Bootstrap) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let endpoint = match Endpoint::from_shared(config.address.clone()) {
        Ok(e) => e
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT),
        Err(e) => return (false, format!("bad server address: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot connect: {e}")),
    };
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_SIZE);
    let node = node_to_proto(&config.node);
    let (tx, rx) = mpsc::channel(ResourceKind::ALL.len() * 2);
    for kind in ResourceKind::ALL {
        let subscribe = DiscoveryRequest {
            node: Some(node.clone()),
            type_url: kind.type_url().to_owned(),
            ..DiscoveryRequest::default()
        };
        if tx.send(subscribe).await.is_err() {
            return (false, "request channel closed".into());
        }
    }
    let mut responses = match client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return (false, format!("stream refused: {status}")),
    };
    tracing::info!(server = %config.address, node = %config.node.id, "ADS stream open");
    if let Some(stats) = &config.stats {
        stats.xds_connected(true);
    }
    let mut state = Resources::default();
    let mut progressed = false;
    // A set that does not apply is held for a moment before it is NACKed: the server
    // sends one type at a time, so a new route can arrive before the cluster it names,
    // or a cluster's removal before the route that stops using it.
    let mut held: Option<(tokio::time::Instant, String)> = None;
    loop {
        let response = tokio::select! {
            r = responses.message() => match r {
                Ok(Some(r)) => r,
                Ok(None) => return (progressed, "stream ended by the server".into()),
                Err(status) => return (progressed, format!("stream failed: {status}")),
            },
            _ = hold_expiry(held.as_ref().map(|h| h.0)) => {
                if let Some((_, error)) = held.take() {
                    if let Err(why) = answer(config, &node, &tx, &mut state, Err(error)).await {
                        return (progressed, why);
                    }
                }
                continue;
            }
        };
        progressed = true;
        let Some(kind) = ResourceKind::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "response of an unknown resource type ignored");
            continue;
        };
        state.pending.insert(
            kind,
            Received {
                version: response.version_info,
                nonce: response.nonce,
                resources: response.resources,
            },
        );
        let Some(current) = state.current() else {
            continue;
        };
        let outcome = match XdsResources::from_any(current) {
            Err(e) => Err(e.to_string()),
            Ok(r) => match missing_endpoints(&r) {
                Some(cluster) => Err(format!("cluster {cluster:?} has no ClusterLoadAssignment")),
                None => match xds::decode(&r, &config.node, config.admin.as_ref()) {
                    Err(e) => Err(e.to_string()),
                    Ok(b) => apply(b).await,
                },
            },
        };
        match outcome {
            Ok(()) => {
                held = None;
                if let Err(why) = answer(config, &node, &tx, &mut state, Ok(())).await {
                    return (progressed, why);
                }
                ready.send_replace(true);
            }
            Err(e) => {
                tracing::debug!(%kind, error = %e, "configuration does not apply yet; waiting for the rest of the update");
                let since =
                    held.map_or_else(|| tokio::time::Instant::now() + HOLD_INVALID, |h| h.0);
                held = Some((since, e));
            }
        }
    }
}

/// How long a set that does not apply waits for more responses before it is NACKed.
const HOLD_INVALID: Duration = Duration::from_secs(1);

/// Resolves at `at`, or never.
async fn hold_expiry(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A cluster without its load assignment, if any.
fn missing_endpoints(r: &XdsResources) -> Option<&str> {
    r.clusters
        .iter()
        .find(|c| !r.endpoints.iter().any(|e| e.cluster_name == c.name))
        .map(|c| c.name.as_str())
}

/// ACKs (on `Ok`) or NACKs every unanswered response; an ACKed one becomes the type's
/// last good set, a NACKed one is dropped. Returns why the stream broke, if it did.
async fn answer(
    config: &AdsClientConfig,
    node: &envoy_types::pb::envoy::config::core::v3::Node,
    tx: &mpsc::Sender<DiscoveryRequest>,
    state: &mut Resources,
    outcome: Result<(), String>,
) -> Result<(), String> {
    for (kind, received) in std::mem::take(&mut state.pending) {
        let request = match &outcome {
            Ok(()) => {
                tracing::debug!(%kind, version = %received.version, "configuration applied (ACK)");
                DiscoveryRequest {
                    version_info: received.version.clone(),
                    ..reply(node, kind, &received.nonce)
                }
            }
            Err(e) => {
                tracing::warn!(%kind, version = %received.version, error = %e, "configuration refused (NACK); keeping the last good one");
                DiscoveryRequest {
                    version_info: state
                        .good
                        .get(&kind)
                        .map(|g| g.version.clone())
                        .unwrap_or_default(),
                    error_detail: Some(rpc::Status {
                        code: INVALID_ARGUMENT,
                        message: e.clone(),
                        details: Vec::new(),
                    }),
                    ..reply(node, kind, &received.nonce)
                }
            }
        };
        if let Some(stats) = &config.stats {
            stats.xds_update(kind.as_str(), &received.version, outcome.is_ok());
        }
        if outcome.is_ok() {
            state.good.insert(kind, received);
        }
        if tx.send(request).await.is_err() {
            return Err("request channel closed".into());
        }
    }
    Ok(())
}

fn reply(
    node: &envoy_types::pb::envoy::config::core::v3::Node,
    kind: ResourceKind,
    nonce: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node.clone()),
        type_url: kind.type_url().to_owned(),
        response_nonce: nonce.to_owned(),
        ..DiscoveryRequest::default()
    }
}
