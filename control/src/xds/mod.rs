//! The xDS representation of a proxy's configuration (core's [`Bootstrap`]) and the
//! conversion both ways: clusters and endpoints as Envoy's own `Cluster` and
//! `ClusterLoadAssignment`, listeners, route configurations and hooks as metamesh's
//! `metamesh.v1alpha1` messages. `docs/xds.md` documents every field mapping.
//!
//! [`Bootstrap`]: metamesh_core::config::Bootstrap

mod decode;
mod encode;
mod metadata;
mod wire;

use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub use decode::{
    decode, decode_cluster, decode_hook, decode_listener, decode_route_configuration,
    load_assignment_name,
};
pub use encode::encode;
pub use metadata::{HEARTBEAT_HEALTH_CHECKER, METADATA_NAMESPACE};

/// The generated `metamesh.v1alpha1` messages (from `control/proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/metamesh.v1alpha1.rs"));
}

/// Type URL of metamesh's listener resource.
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/metamesh.v1alpha1.Listener";
/// Type URL of metamesh's route configuration resource.
pub const ROUTE_CONFIGURATION_TYPE_URL: &str =
    "type.googleapis.com/metamesh.v1alpha1.RouteConfiguration";
/// Type URL of metamesh's Lua hook resource.
pub const HOOK_TYPE_URL: &str = "type.googleapis.com/metamesh.v1alpha1.Hook";
/// Type URL of Envoy's cluster resource.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of Envoy's endpoint resource.
pub const CLUSTER_LOAD_ASSIGNMENT_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The five kinds of resource a proxy takes over xDS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// Envoy's `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// Envoy's `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    ClusterLoadAssignment,
    /// `metamesh.v1alpha1.Hook`.
    Hook,
    /// `metamesh.v1alpha1.RouteConfiguration`.
    RouteConfiguration,
    /// `metamesh.v1alpha1.Listener`.
    Listener,
}

impl ResourceKind {
    /// Every kind, in the order a server sends them so that nothing is referenced before
    /// it exists: clusters, their endpoints, hooks, route configurations, listeners.
    pub const ALL: [ResourceKind; 5] = [
        ResourceKind::Cluster,
        ResourceKind::ClusterLoadAssignment,
        ResourceKind::Hook,
        ResourceKind::RouteConfiguration,
        ResourceKind::Listener,
    ];

    /// The type URL of this kind.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceKind::Cluster => CLUSTER_TYPE_URL,
            ResourceKind::ClusterLoadAssignment => CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
            ResourceKind::Hook => HOOK_TYPE_URL,
            ResourceKind::RouteConfiguration => ROUTE_CONFIGURATION_TYPE_URL,
            ResourceKind::Listener => LISTENER_TYPE_URL,
        }
    }

    /// The kind with this type URL.
    pub fn from_type_url(url: &str) -> Option<ResourceKind> {
        ResourceKind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The message name, as used in error messages (`Cluster`, `Listener`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Cluster => "Cluster",
            ResourceKind::ClusterLoadAssignment => "ClusterLoadAssignment",
            ResourceKind::Hook => "Hook",
            ResourceKind::RouteConfiguration => "RouteConfiguration",
            ResourceKind::Listener => "Listener",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One proxy's configuration as xDS resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdsResources {
    /// Listeners (`metamesh.v1alpha1.Listener`).
    pub listeners: Vec<pb::Listener>,
    /// Route configurations (`metamesh.v1alpha1.RouteConfiguration`).
    pub routes: Vec<pb::RouteConfiguration>,
    /// Clusters (Envoy's `Cluster`, EDS type).
    pub clusters: Vec<Cluster>,
    /// The clusters' endpoints (Envoy's `ClusterLoadAssignment`), one per cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Lua hooks (`metamesh.v1alpha1.Hook`).
    pub hooks: Vec<pb::Hook>,
}

/// A resource packed for a discovery response, with its name.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedResource {
    /// What it is.
    pub kind: ResourceKind,
    /// The resource name (a cluster load assignment is named after its cluster).
    pub name: String,
    /// The packed message.
    pub resource: Any,
}

fn pack<M: Message>(kind: ResourceKind, name: &str, message: &M) -> NamedResource {
    NamedResource {
        kind,
        name: name.to_owned(),
        resource: Any {
            type_url: kind.type_url().to_owned(),
            value: message.encode_to_vec(),
        },
    }
}

impl XdsResources {
    /// The resources of one kind, packed, in order.
    pub fn named_resources(&self, kind: ResourceKind) -> Vec<NamedResource> {
        match kind {
            ResourceKind::Cluster => self
                .clusters
                .iter()
                .map(|c| pack(kind, &c.name, c))
                .collect(),
            ResourceKind::ClusterLoadAssignment => self
                .endpoints
                .iter()
                .map(|c| pack(kind, &c.cluster_name, c))
                .collect(),
            ResourceKind::Hook => self.hooks.iter().map(|h| pack(kind, &h.name, h)).collect(),
            ResourceKind::RouteConfiguration => {
                self.routes.iter().map(|r| pack(kind, &r.name, r)).collect()
            }
            ResourceKind::Listener => self
                .listeners
                .iter()
                .map(|l| pack(kind, &l.name, l))
                .collect(),
        }
    }

    /// Every resource, packed, kinds in [`ResourceKind::ALL`] order.
    pub fn all_named_resources(&self) -> Vec<NamedResource> {
        ResourceKind::ALL
            .into_iter()
            .flat_map(|k| self.named_resources(k))
            .collect()
    }

    /// Unpacks one resource from a discovery response and adds it; returns its kind.
    pub fn insert_any(&mut self, any: &Any) -> Result<ResourceKind, DecodeError> {
        let Some(kind) = ResourceKind::from_type_url(&any.type_url) else {
            return Err(DecodeError {
                kind: None,
                name: String::new(),
                path: String::new(),
                message: format!("unknown resource type {:?}", any.type_url),
            });
        };
        let bad = |e: prost::DecodeError| DecodeError {
            kind: Some(kind),
            name: String::new(),
            path: String::new(),
            message: format!("malformed message: {e}"),
        };
        let bytes = any.value.as_slice();
        match kind {
            ResourceKind::Cluster => self.clusters.push(Cluster::decode(bytes).map_err(bad)?),
            ResourceKind::ClusterLoadAssignment => self
                .endpoints
                .push(ClusterLoadAssignment::decode(bytes).map_err(bad)?),
            ResourceKind::Hook => self.hooks.push(pb::Hook::decode(bytes).map_err(bad)?),
            ResourceKind::RouteConfiguration => self
                .routes
                .push(pb::RouteConfiguration::decode(bytes).map_err(bad)?),
            ResourceKind::Listener => self
                .listeners
                .push(pb::Listener::decode(bytes).map_err(bad)?),
        }
        Ok(kind)
    }

    /// Unpacks resources of any of the five kinds; returns every problem found.
    pub fn from_any<'a>(
        resources: impl IntoIterator<Item = &'a Any>,
    ) -> Result<Self, DecodeErrors> {
        let mut out = XdsResources::default();
        let mut errors = Vec::new();
        for any in resources {
            if let Err(e) = out.insert_any(any) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(DecodeErrors(errors))
        }
    }
}

/// A problem with one xDS resource: which resource, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The kind of resource (none when the type URL is unknown).
    pub kind: Option<ResourceKind>,
    /// The resource name (empty when the message could not be read).
    pub name: String,
    /// Field path inside the resource, in the message's own field names, e.g.
    /// `circuit_breakers.thresholds[0].max_requests`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.name.is_empty()) {
            (Some(k), false) => write!(f, "{k} {}: ", self.name)?,
            (Some(k), true) => write!(f, "{k}: ")?,
            (None, _) => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Writes `items` one per line.
fn one_per_line<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str("\n")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

/// Every problem found while decoding; displayed one per line (a NACK's error detail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DecodeErrors(pub Vec<DecodeError>);

impl fmt::Display for DecodeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        one_per_line(f, &self.0)
    }
}

/// A bootstrap value xDS cannot carry, with the bootstrap field path
/// (`clusters[demo].endpoints[0].address`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct EncodeError {
    /// Field path in the bootstrap.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every value of a bootstrap xDS cannot carry; displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct EncodeErrors(pub Vec<EncodeError>);

impl fmt::Display for EncodeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        one_per_line(f, &self.0)
    }
}
