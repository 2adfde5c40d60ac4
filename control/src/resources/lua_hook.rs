//! `LuaHook`: a Lua script run by the proxies on the requests of some services.

use serde::Deserialize;

use super::object::Object;

/// API versions a `LuaHook` may be written in.
pub const API_VERSIONS: &[&str] = &["metamesh.io/v1alpha1"];

/// A `LuaHook` resource.
pub type LuaHook = Object<LuaHookSpec>;

/// A hook and the services it runs for.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LuaHookSpec {
    /// ServiceEntry hosts whose requests the hook sees.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Lua 5.4 source defining `on_request(req)` and/or `on_response(resp, req)`.
    #[serde(default)]
    pub script: String,
    /// Memory cap of each Lua state, in bytes (default 8 MiB).
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// Lua instructions one call may run (default 1,000,000).
    #[serde(default)]
    pub instruction_limit: Option<u64>,
}
