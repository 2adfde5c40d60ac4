//! The metamesh MetaProtocol engine: the codec contract every protocol implements, the
//! protocol-neutral [`Message`], and the generic proxy built on them (configuration,
//! routing, mutation, upstream pools, listeners, admin and metrics). Nothing here knows a
//! particular protocol.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
pub mod capture;
pub mod codec;
pub mod config;
#[cfg(any(test, feature = "testkit"))]
pub mod conformance;
mod exchange;
pub mod health;
mod io;
pub mod lb;
pub mod listener;
pub mod lua;
mod lua_pattern;
pub mod message;
mod mirror;
pub mod observe;
pub mod proxy;
pub mod ratelimit;
mod request_set;
pub mod router;
mod shutdown;
pub mod snapshot;
pub mod stats;
pub mod upstream;
mod worker;

#[cfg(test)]
mod hook_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod test_peers;
#[cfg(any(test, feature = "testkit"))]
pub mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod traffic_tests;

pub use admin::LogControl;
pub use codec::{
    Codec, CodecOptions, DecodeError, EncodeError, EncodedFrame, ErrorAction, OptionError,
    Protocol, ProtocolOptions, ProtocolRegistry, Scratch, Side, DEFAULT_MAX_FRAME_SIZE,
    TRUNCATED_FRAME,
};
pub use config::{Bootstrap, ConfigError, ConfigErrors};
pub use message::{
    KnownText, LocalReply, LocalReplyKind, Message, MessageKind, Metadata, Operation,
    ResponseClass, StreamState,
};
pub use proxy::{Proxy, ProxyBuilder, StartError};
pub use worker::default_concurrency;
