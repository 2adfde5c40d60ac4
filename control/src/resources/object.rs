//! The Kubernetes envelope shared by every kind: `apiVersion`, `kind`, `metadata`, `spec`.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::Source;

/// Namespace of a resource that does not name one (as in Kubernetes).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A resource: the Kubernetes envelope around a kind's `spec`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    bound(deserialize = "S: Deserialize<'de> + Default")
)]
pub struct Object<S> {
    /// `group/version`, e.g. `networking.istio.io/v1`.
    pub api_version: String,
    /// The kind, e.g. `ServiceEntry`.
    pub kind: String,
    /// Name, namespace, labels and annotations.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The kind's specification.
    #[serde(default)]
    pub spec: S,
    /// Written by an API server; accepted and ignored.
    #[serde(default)]
    pub status: Option<IgnoredAny>,
    /// Where the resource was read from.
    #[serde(skip)]
    pub source: Source,
}

impl<S> Object<S> {
    /// The namespace, `default` when none is given.
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// `Kind/namespace/name`, as errors and notes name the resource.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace(), self.metadata.name)
    }
}

/// Kubernetes object metadata. Only `name`, `namespace`, `labels` and `annotations` mean
/// anything here; the fields an API server fills in are accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name, unique per kind and namespace.
    #[serde(default)]
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations. A ServiceEntry's `interface` annotation names its Dubbo interface.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Ignored.
    #[serde(default)]
    pub uid: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub resource_version: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub generation: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub creation_timestamp: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub deletion_timestamp: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub managed_fields: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub finalizers: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub owner_references: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub self_link: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    pub generate_name: Option<IgnoredAny>,
}
