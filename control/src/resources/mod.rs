//! The mesh resource model: Kubernetes-style YAML (camelCase, Istio and Aeraki field
//! names) for `MetaRouter`, `DestinationRule`, `ServiceEntry` and `LuaHook`, how files of
//! them are read, and how a set of them is checked as a whole.

pub mod destination_rule;
pub(crate) mod index;
pub mod lua_hook;
pub mod meta_router;
mod notes;
pub mod object;
mod parse;
pub mod service_entry;
pub(crate) mod validate;

pub use destination_rule::DestinationRule;
pub use lua_hook::LuaHook;
pub use meta_router::MetaRouter;
pub use object::{Object, ObjectMeta};
pub use parse::{parse_file, parse_object};
pub use service_entry::ServiceEntry;

use crate::error::{Note, ResourceError, Source};

/// Protocols a port can name without further configuration (the proxy's built-ins).
pub const BUILTIN_PROTOCOLS: &[&str] = &["dubbo", "thrift", "http"];

/// One document read from a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A `MetaRouter`.
    MetaRouter(MetaRouter),
    /// A `DestinationRule`.
    DestinationRule(DestinationRule),
    /// A `ServiceEntry`.
    ServiceEntry(ServiceEntry),
    /// A `LuaHook`.
    LuaHook(LuaHook),
    /// A document of a kind the control plane does not handle (it becomes a note).
    Skipped(Skipped),
}

/// A document of a kind the control plane does not handle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Where it came from.
    pub source: Source,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its namespace, as written.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its path in the document (`items[3]` inside a `kind: List`), empty at the top.
    pub path: String,
}

/// A consistent set of mesh resources: what the control plane translates for proxies.
///
/// Resources are kept ordered by namespace and name, so the translation does not depend
/// on the order files were read in.
#[derive(Clone, Debug)]
pub struct MeshResources {
    meta_routers: Vec<MetaRouter>,
    destination_rules: Vec<DestinationRule>,
    service_entries: Vec<ServiceEntry>,
    lua_hooks: Vec<LuaHook>,
    skipped: Vec<Skipped>,
    protocols: Vec<String>,
}

impl Default for MeshResources {
    fn default() -> Self {
        MeshResources {
            meta_routers: Vec::new(),
            destination_rules: Vec::new(),
            service_entries: Vec::new(),
            lua_hooks: Vec::new(),
            skipped: Vec::new(),
            protocols: BUILTIN_PROTOCOLS.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

fn by_identity<S>(a: &Object<S>, b: &Object<S>) -> std::cmp::Ordering {
    (a.namespace(), a.metadata.name.as_str(), &a.source).cmp(&(
        b.namespace(),
        b.metadata.name.as_str(),
        &b.source,
    ))
}

impl MeshResources {
    /// An empty set that knows the built-in protocols.
    pub fn new() -> Self {
        Self::default()
    }

    /// Collects parsed resources (from any number of files).
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> Self {
        let mut mesh = Self::default();
        for r in resources {
            mesh.push(r);
        }
        mesh.sort();
        mesh
    }

    /// Adds one resource.
    pub fn add(&mut self, resource: Resource) {
        self.push(resource);
        self.sort();
    }

    /// Replaces the protocol names ports may declare (`tcp-metaprotocol-<name>` or
    /// `protocol: <name>`); by default the proxy's built-ins, [`BUILTIN_PROTOCOLS`]. A
    /// custom protocol must also be registered in the proxies.
    pub fn with_protocols<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.protocols = names
            .into_iter()
            .map(|n| n.into().to_ascii_lowercase())
            .collect();
        self
    }

    fn push(&mut self, resource: Resource) {
        match resource {
            Resource::MetaRouter(r) => self.meta_routers.push(r),
            Resource::DestinationRule(r) => self.destination_rules.push(r),
            Resource::ServiceEntry(r) => self.service_entries.push(r),
            Resource::LuaHook(r) => self.lua_hooks.push(r),
            Resource::Skipped(s) => self.skipped.push(s),
        }
    }

    fn sort(&mut self) {
        self.meta_routers.sort_by(by_identity);
        self.destination_rules.sort_by(by_identity);
        self.service_entries.sort_by(by_identity);
        self.lua_hooks.sort_by(by_identity);
        self.skipped.sort_by(|a, b| a.source.cmp(&b.source));
    }

    /// The protocol names ports may declare.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The MetaRouters, by namespace and name.
    pub fn meta_routers(&self) -> &[MetaRouter] {
        &self.meta_routers
    }

    /// The DestinationRules, by namespace and name.
    pub fn destination_rules(&self) -> &[DestinationRule] {
        &self.destination_rules
    }

    /// The ServiceEntries, by namespace and name.
    pub fn service_entries(&self) -> &[ServiceEntry] {
        &self.service_entries
    }

    /// The LuaHooks, by namespace and name.
    pub fn lua_hooks(&self) -> &[LuaHook] {
        &self.lua_hooks
    }

    /// Documents of kinds the control plane does not handle.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// True when there is no resource at all (skipped documents aside).
    pub fn is_empty(&self) -> bool {
        self.meta_routers.is_empty()
            && self.destination_rules.is_empty()
            && self.service_entries.is_empty()
            && self.lua_hooks.is_empty()
    }

    /// Checks the resources together (references between them, values, duplicates);
    /// returns every problem found, each with its file, resource and field path.
    pub fn validate(&self) -> Result<(), Vec<ResourceError>> {
        let errors = validate::check(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// What is accepted but not applied as written: skipped documents, ports that are not
    /// meta protocols, ignored fields.
    pub fn notes(&self) -> Vec<Note> {
        notes::collect(self)
    }
}
