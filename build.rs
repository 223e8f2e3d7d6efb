//! Generates keycard's own gRPC APIs (admin and agent) from `proto/*.proto`.
//!
//! `protoc` and the well-known-type includes come from `protoc-bin-vendored`, so building
//! needs nothing installed on the machine. Each file has a `package` (`keycard.admin.v1`,
//! `keycard.agent.v1`); the code is included with `tonic::include_proto!`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    println!("cargo:rerun-if-changed=build.rs");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    if protos.is_empty() {
        return Ok(());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry a secret (a join token, a JWT-SVID) get a hand-written `Debug`
    // that redacts it (src/wire/debug.rs) instead of prost's, which prints every field.
    config.skip_debug([
        ".keycard.agent.v1.JoinTokenAttestation",
        ".keycard.agent.v1.NewJwtSvidResponse",
        ".keycard.admin.v1.GenerateJoinTokenResponse",
    ]);
    let includes = [proto_dir, protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
