//! Pure wire formats used by metamesh protocols. Nothing here does I/O or knows about
//! the proxy: each module turns bytes into values and values back into bytes.
#![forbid(unsafe_code)]

pub mod hessian2;
pub mod http1;
pub mod thrift;
