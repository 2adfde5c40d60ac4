//! The metamesh control plane's model of the mesh: Kubernetes-style resources
//! (`MetaRouter`, `DestinationRule`, `ServiceEntry`, `LuaHook`) read from YAML, checked as
//! a whole, and translated into the configuration of one proxy ([`translate()`]). [`xds`]
//! turns that configuration into xDS resources and back, and [`ads`] serves it to proxies
//! and takes it from a server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ads;
pub mod duration;
pub mod error;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
mod locality;
pub mod resources;
pub mod source;
pub mod translate;
pub mod xds;

pub use error::{Location, Note, ResourceError, Source};
pub use resources::{parse_file, parse_object, MeshResources, Resource, BUILTIN_PROTOCOLS};
pub use translate::{translate, ValidatedMesh, DEFAULT_OUTBOUND_ADDRESS};
