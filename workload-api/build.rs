//! Generates the SPIFFE Workload API messages and gRPC stubs from `proto/workload.proto`.
//!
//! `protoc` and the well-known-type includes come from `protoc-bin-vendored`, so building
//! needs nothing installed on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let proto_file = proto_dir.join("workload.proto");
    // `compile_with_config` does not emit rerun directives itself.
    println!("cargo:rerun-if-changed={}", proto_file.display());
    println!("cargo:rerun-if-changed=build.rs");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known_includes = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Messages that carry a secret (a private key, a JWT-SVID) get a hand-written `Debug`
    // that redacts it (src/proto/debug.rs) instead of prost's, which prints every field.
    config.skip_debug([".X509SVID", ".JWTSVID", ".ValidateJWTSVIDRequest"]);
    // `google.protobuf.*` types map to `::prost_types` (prost-build's default; setting it
    // again is rejected as a duplicate), so `claims` is a `prost_types::Struct`.

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // A stable name for `src/proto.rs` to include. Without a proto `package` it pulls in
        // `_.rs`; should a package ever appear, its items move into nested modules and the
        // crate stops compiling instead of silently including a stale file.
        .include_file("workload_api.rs")
        .compile_with_config(config, &[proto_file], &[proto_dir, well_known_includes])?;
    Ok(())
}
