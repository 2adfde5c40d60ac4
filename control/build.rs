//! Generates the `metamesh.v1alpha1` protobuf types from `proto/` with a pure-Rust
//! protobuf compiler, so building needs no `protoc`. Well-known types
//! (`google.protobuf.*`) are those of `envoy-types`, so metamesh's messages and Envoy's
//! share one `Any` and one `Duration`.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/metamesh/v1alpha1/common.proto",
    "proto/metamesh/v1alpha1/listener.proto",
    "proto/metamesh/v1alpha1/route.proto",
    "proto/metamesh/v1alpha1/hook.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    prost_build::Config::new()
        .compile_well_known_types()
        .btree_map(["."])
        .extern_path(".google.protobuf", "::envoy_types::pb::google::protobuf")
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        .compile_fds(descriptors)?;
    Ok(())
}
