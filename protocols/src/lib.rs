//! Built-in metamesh protocols.
#![forbid(unsafe_code)]
