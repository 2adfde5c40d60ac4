//! The Kubernetes API server as a configuration source: the mesh custom resources
//! (MetaRouter, LuaHook, Istio's DestinationRule and ServiceEntry) plus Services and
//! EndpointSlices turned into ServiceEntries, watched with kube-runtime (relists on
//! errors, `410 Gone` and reconnects) and published like a watched directory.

#[cfg(test)]
mod crds;
mod hosts;
mod services;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use crate::error::join_errors;
use crate::resources::{parse_object, MeshResources, Resource};
use crate::source::{checked, Publisher, Watched};

use services::{Cluster, Skip};

/// A custom resource kind the source watches.
#[derive(Clone, Copy, Debug)]
pub struct CustomKind {
    /// API group.
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name (the URL path segment).
    pub plural: &'static str,
    /// Versions to try, in order: the first one the API server serves is watched.
    pub versions: &'static [&'static str],
}

/// The custom resources read from the API server. A CRD serves the same objects under
/// each of its versions, so one version per kind is watched.
pub const CUSTOM_KINDS: &[CustomKind] = &[
    CustomKind {
        group: "metamesh.io",
        kind: "MetaRouter",
        plural: "metarouters",
        versions: &["v1alpha1"],
    },
    CustomKind {
        group: "metaprotocol.aeraki.io",
        kind: "MetaRouter",
        plural: "metarouters",
        versions: &["v1alpha1"],
    },
    CustomKind {
        group: "metamesh.io",
        kind: "LuaHook",
        plural: "luahooks",
        versions: &["v1alpha1"],
    },
    CustomKind {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        versions: &["v1", "v1beta1", "v1alpha3"],
    },
    CustomKind {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        versions: &["v1", "v1beta1", "v1alpha3"],
    },
];

/// How the source reads the API server.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Only this namespace (Nodes are read cluster-wide all the same); all when `None`.
    pub namespace: Option<String>,
    /// The cluster's DNS domain: Service hosts are `NAME.NAMESPACE.svc.DOMAIN`.
    pub domain: String,
    /// How long the objects must stay unchanged before a new set is built (at most ten
    /// times this after the first change of a burst).
    pub settle: Duration,
    /// How long to wait before looking again for a kind no version of which is served.
    pub retry: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            namespace: None,
            domain: "cluster.local".into(),
            settle: crate::source::DEFAULT_SETTLE_TIME,
            retry: Duration::from_secs(30),
        }
    }
}

/// An API server being watched.
pub struct KubeWatch;

/// Why the API server cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Neither a kubeconfig (`KUBECONFIG`, `~/.kube/config`) nor an in-cluster
    /// service account was found or usable.
    #[error("no Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The configuration does not make a client (bad TLS material, proxy, ...).
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

impl KubeWatch {
    /// Starts watching the API server the environment names: the kubeconfig
    /// (`KUBECONFIG` or `~/.kube/config`), else the in-cluster service account.
    pub async fn from_environment(options: KubeOptions) -> Result<Watched, ConnectError> {
        let config = kube::Config::infer().await?;
        let client = Client::try_from(config)?;
        Ok(KubeWatch::start(client, options))
    }

    /// Starts watching through `client`. The first set is published once every kind has
    /// been listed (or found missing).
    pub fn start(client: Client, options: KubeOptions) -> Watched {
        Watched::spawn(move |publisher| run(client, options, publisher))
    }
}

/// What one watch stream follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Custom(usize),
    Services,
    Slices,
    Pods,
    Nodes,
}

impl Slot {
    fn name(self) -> String {
        match self {
            Slot::Custom(i) => CUSTOM_KINDS
                .get(i)
                .map_or_else(String::new, |k| format!("{}.{}", k.plural, k.group)),
            Slot::Services => "services".into(),
            Slot::Slices => "endpointslices.discovery.k8s.io".into(),
            Slot::Pods => "pods".into(),
            Slot::Nodes => "nodes".into(),
        }
    }
}

enum Change {
    Custom(Event<DynamicObject>),
    Service(Box<Event<Service>>),
    Slice(Event<EndpointSlice>),
    Pod(Event<PartialObjectMeta<Pod>>),
    Node(Event<PartialObjectMeta<Node>>),
}

type Watch = Pin<Box<dyn Stream<Item = Result<Change, watcher::Error>> + Send>>;

/// The objects of one kind, as last listed and watched.
struct Store<V> {
    items: BTreeMap<String, V>,
    /// Objects of a list in progress; they replace `items` when it completes.
    relist: Option<BTreeMap<String, V>>,
    status: Status,
}

/// How far a stream got.
#[derive(Default)]
struct Status {
    /// Listed at least once (or known to be missing).
    synced: bool,
    /// The last problem logged, so a retried failure is logged once.
    reported: Option<String>,
}

impl Status {
    /// Notes a failure; true when it is not the one noted last.
    fn report(&mut self, text: String) -> bool {
        if self.reported.as_ref() == Some(&text) {
            return false;
        }
        self.reported = Some(text);
        true
    }
}

impl<V> Default for Store<V> {
    fn default() -> Self {
        Store {
            items: BTreeMap::new(),
            relist: None,
            status: Status::default(),
        }
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn key<K: kube::Resource>(o: &K) -> String {
    match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}

impl<V> Store<V> {
    /// Applies one event; true when the visible set changed.
    fn apply<K: kube::Resource>(&mut self, event: Event<K>, value: impl Fn(K) -> V) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                let k = key(&o);
                match &mut self.relist {
                    Some(list) => list.insert(k, value(o)),
                    None => self.items.insert(k, value(o)),
                };
                false
            }
            Event::InitDone => {
                if let Some(list) = self.relist.take() {
                    self.items = list;
                }
                self.status = Status {
                    synced: true,
                    reported: None,
                };
                true
            }
            Event::Apply(o) => {
                self.items.insert(key(&o), value(o));
                true
            }
            Event::Delete(o) => self.items.remove(&key(&o)).is_some(),
        }
    }
}

/// The HTTP status of an API server error, if that is what failed.
fn api_status(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn api_resource(kind: &CustomKind, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group, version, kind.kind),
        kind.plural,
    )
}

/// Starts `stream` after `delay`.
fn delayed(delay: Duration, stream: Watch) -> Watch {
    if delay.is_zero() {
        return stream;
    }
    Box::pin(
        futures_util::stream::once(async move {
            tokio::time::sleep(delay).await;
            stream
        })
        .flatten(),
    )
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Everything the source knows, and the streams it follows.
struct State {
    client: Client,
    options: KubeOptions,
    /// The version watched per custom kind (index into its `versions`).
    versions: Vec<usize>,
    custom: Vec<Store<serde_json::Value>>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<BTreeMap<String, String>>,
    nodes: Store<BTreeMap<String, String>>,
    /// Services already logged as skipped.
    skipped: BTreeSet<String>,
}

impl State {
    fn custom_watch(&self, i: usize, delay: Duration) -> Watch {
        let (Some(kind), Some(v)) = (CUSTOM_KINDS.get(i), self.versions.get(i)) else {
            return Box::pin(futures_util::stream::pending());
        };
        let version = kind.versions.get(*v).copied().unwrap_or("v1");
        let ar = api_resource(kind, version);
        let api: Api<DynamicObject> = match &self.options.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let s = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map_ok(Change::Custom);
        delayed(delay, Box::pin(s))
    }

    fn watches(&self) -> StreamMap<Slot, Watch> {
        let ns = self.options.namespace.as_deref();
        let config = watcher::Config::default;
        let mut map: StreamMap<Slot, Watch> = StreamMap::new();
        for i in 0..CUSTOM_KINDS.len() {
            map.insert(Slot::Custom(i), self.custom_watch(i, Duration::ZERO));
        }
        let c = &self.client;
        map.insert(
            Slot::Services,
            Box::pin(
                watcher::watcher(api::<Service>(c, ns), config())
                    .default_backoff()
                    .map_ok(|e| Change::Service(Box::new(e))),
            ),
        );
        map.insert(
            Slot::Slices,
            Box::pin(
                watcher::watcher(api::<EndpointSlice>(c, ns), config())
                    .default_backoff()
                    .map_ok(Change::Slice),
            ),
        );
        map.insert(
            Slot::Pods,
            Box::pin(
                watcher::watcher(api::<PartialObjectMeta<Pod>>(c, ns), config())
                    .default_backoff()
                    .map_ok(Change::Pod),
            ),
        );
        map.insert(
            Slot::Nodes,
            Box::pin(
                watcher::watcher(Api::<PartialObjectMeta<Node>>::all(c.clone()), config())
                    .default_backoff()
                    .map_ok(Change::Node),
            ),
        );
        map
    }

    fn labels<K>(o: PartialObjectMeta<K>) -> BTreeMap<String, String> {
        o.metadata.labels.unwrap_or_default()
    }

    /// Applies a change; true when the visible objects changed.
    fn apply(&mut self, slot: Slot, change: Change) -> bool {
        match (slot, change) {
            (Slot::Custom(i), Change::Custom(event)) => {
                let kind = CUSTOM_KINDS.get(i);
                let version = self.versions.get(i).copied().unwrap_or(0);
                let Some(store) = self.custom.get_mut(i) else {
                    return false;
                };
                let (kind_name, api_version) = kind.map_or_else(Default::default, |k| {
                    let v = k.versions.get(version).copied().unwrap_or("v1");
                    (k.kind.to_owned(), format!("{}/{v}", k.group))
                });
                store.apply(event, |o| object_json(o, &api_version, &kind_name))
            }
            (_, Change::Service(e)) => self.services.apply(*e, |o| o),
            (_, Change::Slice(e)) => self.slices.apply(e, |o| o),
            (_, Change::Pod(e)) => self.pods.apply(e, Self::labels),
            (_, Change::Node(e)) => self.nodes.apply(e, Self::labels),
            (_, Change::Custom(_)) => false,
        }
    }

    fn status(&mut self, slot: Slot) -> Option<&mut Status> {
        Some(match slot {
            Slot::Custom(i) => &mut self.custom.get_mut(i)?.status,
            Slot::Services => &mut self.services.status,
            Slot::Slices => &mut self.slices.status,
            Slot::Pods => &mut self.pods.status,
            Slot::Nodes => &mut self.nodes.status,
        })
    }

    /// Handles a failed list or watch; returns whether the visible objects changed and
    /// the stream that replaces the slot's, if any.
    fn failed(&mut self, slot: Slot, error: &watcher::Error) -> (bool, Option<Watch>) {
        let name = slot.name();
        let status = api_status(error);
        let text = error.to_string();
        if let (Slot::Custom(i), Some(404)) = (slot, status) {
            // This version is not served: try the next one, or give up for a while.
            let Some(kind) = CUSTOM_KINDS.get(i) else {
                return (false, None);
            };
            let current = self.versions.get(i).copied().unwrap_or(0);
            if current + 1 < kind.versions.len() {
                if let Some(v) = self.versions.get_mut(i) {
                    *v = current + 1;
                }
                tracing::debug!(resource = %name, version = kind.versions[current], "version not served; trying the next one");
                return (false, Some(self.custom_watch(i, Duration::ZERO)));
            }
            if let Some(v) = self.versions.get_mut(i) {
                *v = 0;
            }
            let retry = self.options.retry;
            let Some(store) = self.custom.get_mut(i) else {
                return (false, None);
            };
            if store.status.report(text) {
                tracing::warn!(resource = %name, versions = ?kind.versions, "not served by the API server (CRD not installed?); carrying on without it");
            }
            let changed = !store.status.synced || !store.items.is_empty();
            store.items.clear();
            store.relist = None;
            store.status.synced = true;
            return (changed, Some(self.custom_watch(i, retry)));
        }
        let Some(st) = self.status(slot) else {
            return (false, None);
        };
        let new = st.report(text.clone());
        match status {
            // Not allowed or not there: carry on without it rather than serve nothing.
            Some(403 | 404) => {
                if new {
                    tracing::warn!(resource = %name, error = %text, "cannot read; carrying on without it");
                }
                let changed = !st.synced;
                st.synced = true;
                (changed, None)
            }
            Some(410) => {
                tracing::info!(resource = %name, "watch expired (410 Gone); listing again");
                (false, None)
            }
            _ => {
                if new {
                    tracing::warn!(resource = %name, error = %text, "watch failed; retrying");
                }
                (false, None)
            }
        }
    }

    fn synced(&self) -> bool {
        self.custom.iter().all(|s| s.status.synced)
            && self.services.status.synced
            && self.slices.status.synced
            && self.pods.status.synced
            && self.nodes.status.synced
    }

    /// Builds and checks the mesh from the current objects.
    fn build(&mut self) -> Result<(MeshResources, Vec<String>), String> {
        let mut resources: Vec<Resource> = Vec::new();
        let mut errors = Vec::new();
        let mut names = Vec::new();
        for (i, store) in self.custom.iter().enumerate() {
            let Some(kind) = CUSTOM_KINDS.get(i) else {
                continue;
            };
            let version = self
                .versions
                .get(i)
                .and_then(|v| kind.versions.get(*v))
                .copied()
                .unwrap_or("v1");
            let location = format!("kubernetes:{}/{version}", kind.group);
            for (k, object) in &store.items {
                match parse_object(&location, object) {
                    Ok(mut r) => resources.append(&mut r),
                    Err(mut e) => errors.append(&mut e),
                }
                names.push(format!("{location}: {}/{k}", kind.kind));
            }
        }
        let protocols = MeshResources::new().protocols().to_vec();
        let cluster = Cluster {
            domain: &self.options.domain,
            protocols: &protocols,
            slices: services::slices_by_service(self.slices.items.values()),
            pods: &self.pods.items,
            nodes: &self.nodes.items,
        };
        for (k, svc) in &self.services.items {
            match cluster.service_entry(svc) {
                Ok(se) => {
                    resources.push(Resource::ServiceEntry(se));
                    names.push(format!("kubernetes:v1: Service/{k}"));
                }
                Err(Skip::ExternalName) => {
                    if self.skipped.insert(k.clone()) {
                        tracing::info!(service = %k, "ExternalName service skipped: it has no endpoints to balance over");
                    }
                }
                Err(Skip::NoMetaPort) => {}
            }
        }
        for r in &mut resources {
            hosts::expand(r, &self.options.domain);
        }
        for id in hosts::mesh_only(&mut resources, &protocols) {
            if self.skipped.insert(id.clone()) {
                tracing::info!(resource = %id, "left out: not about a service with a meta-protocol port");
            }
        }
        let mesh = checked(MeshResources::from_resources(resources), errors)
            .map_err(|e| join_errors(&e))?;
        Ok((mesh, names))
    }
}

/// The object as the API server wrote it, with `apiVersion` and `kind` filled in when
/// a list left them out.
fn object_json(o: DynamicObject, api_version: &str, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(&o).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        m.entry("apiVersion")
            .or_insert_with(|| api_version.to_owned().into());
        m.entry("kind").or_insert_with(|| kind.to_owned().into());
    }
    v
}

async fn run(client: Client, options: KubeOptions, mut publisher: Publisher) {
    let settle = options.settle;
    let mut state = State {
        client,
        options,
        versions: vec![0; CUSTOM_KINDS.len()],
        custom: CUSTOM_KINDS.iter().map(|_| Store::default()).collect(),
        services: Store::default(),
        slices: Store::default(),
        pods: Store::default(),
        nodes: Store::default(),
        skipped: BTreeSet::new(),
    };
    let mut streams = state.watches();
    // (first change of the burst, last change) while a change waits to be built.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let deadline = pending.map(|(first, last)| (last + settle).min(first + settle * 10));
        tokio::select! {
            next = streams.next() => {
                let Some((slot, item)) = next else { return };
                let changed = match item {
                    Ok(change) => state.apply(slot, change),
                    Err(e) => {
                        let (changed, replace) = state.failed(slot, &e);
                        if let Some(s) = replace {
                            streams.insert(slot, s);
                        }
                        changed
                    }
                };
                if changed {
                    let now = Instant::now();
                    pending = Some(pending.map_or((now, now), |(first, _)| (first, now)));
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                pending = None;
                if !state.synced() {
                    continue;
                }
                match state.build() {
                    Ok((mesh, files)) => {
                        let count = files.len();
                        let generation = publisher.publish(mesh, files);
                        tracing::info!(generation, objects = count, "mesh resources loaded from Kubernetes");
                    }
                    Err(text) => {
                        tracing::error!(errors = %text, "mesh resources refused; keeping the last good set");
                        publisher.refuse(text);
                    }
                }
            }
        }
    }
}
