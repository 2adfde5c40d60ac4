//! metamesh-bench: a load generator (closed and open loop, HdrHistogram latencies, JSON
//! reports with the CPU and memory of the proxy under test) and echo backends for Dubbo,
//! Thrift and HTTP/1.1. `bench/side-by-side.sh` drives it against metamesh, haproxy and
//! nginx.

#![forbid(unsafe_code)]

pub mod echo;
pub mod load;
pub mod procstat;
pub mod proto;
