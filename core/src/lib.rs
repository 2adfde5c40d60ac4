//! The metamesh MetaProtocol engine.
#![forbid(unsafe_code)]
