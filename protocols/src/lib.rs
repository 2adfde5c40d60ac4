//! Built-in metamesh protocols, each implementing core's codec contract on top of the
//! wire formats in `metamesh-codecs`, and a registry of them by name.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;

use metamesh_core::ProtocolRegistry;

pub mod dubbo;
pub mod http;
pub mod thrift;

/// A registry of every built-in protocol.
pub fn builtin() -> ProtocolRegistry {
    let mut r = ProtocolRegistry::new();
    r.register(Arc::new(dubbo::DubboProtocol));
    r.register(Arc::new(http::HttpProtocol));
    r.register(Arc::new(thrift::ThriftProtocol));
    r
}
