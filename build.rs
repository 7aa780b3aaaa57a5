//! Compiles `proto/kv/v1/kv.proto` (our wire contract, client and server) and
//! `proto/etcd/kv.proto` (the part of etcd's API the etcd backend uses, client only) into Rust
//! with tonic-prost-build.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs nothing but Rust. The
//! file descriptor set of `kv.v1` is kept for gRPC server reflection
//! (`grpcurl -plaintext ADDR list`).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("kv_descriptor.bin"))
        .compile_protos(&["proto/kv/v1/kv.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        // Values travel as `Bytes`: a Txn cloned for another member shares its (up to 1 MiB) value.
        .bytes(".etcdserverpb.PutRequest.value")
        .compile_protos(&["proto/etcd/kv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
