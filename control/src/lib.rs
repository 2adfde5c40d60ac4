//! The metamesh control plane's model of the mesh: Kubernetes-style resources
//! (`MetaRouter`, `DestinationRule`, `ServiceEntry`, `LuaHook`) read from YAML, checked as
//! a whole, and translated into the configuration of one proxy ([`translate()`]). Serving
//! that configuration (xDS) is built on top of this API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ads;
pub mod duration;
pub mod error;
mod locality;
pub mod resources;
pub mod source;
pub mod translate;
pub mod xds;

pub use error::{Location, Note, ResourceError, Source};
pub use resources::{parse_file, MeshResources, Resource, BUILTIN_PROTOCOLS};
pub use translate::{translate, ValidatedMesh, DEFAULT_OUTBOUND_ADDRESS};
