//! Generates the gRPC code from `proto/` with protox (a protobuf compiler in
//! Rust), so building needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "strato/v1/compute.proto",
        "strato/v1/job.proto",
        "strato/v1/agent.proto",
        "strato/v1/identity.proto",
        "strato/v1/datastore.proto",
        "strato/v1/registry.proto",
        "strato/v1/access.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC server reflection.
    std::fs::write(
        out.join("strato_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Holds a registry password: its Debug (below, in lib.rs) redacts it.
        .skip_debug(["strato.v1.RegistryLogin"])
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
