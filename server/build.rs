//! Builds the example UDF crate for `wasm32-unknown-unknown` so the demo and the tests can
//! embed it; guest modules are never committed as binaries.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("server/ is inside the workspace");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for path in [
        "udf-sdk/src",
        "udf-sdk/Cargo.toml",
        "examples/visitor-udf/src",
        "examples/visitor-udf/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let target_dir = out_dir.join("guest-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "tidegate-example-visitor-udf",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the example UDF for wasm32-unknown-unknown failed; is the target installed? \
         (`rustup target add wasm32-unknown-unknown`, or let rust-toolchain.toml do it)"
    );
    let wasm = target_dir.join("wasm32-unknown-unknown/release/tidegate_example_visitor_udf.wasm");
    std::fs::copy(&wasm, out_dir.join("visitor_udf.wasm")).expect("the example module was built");
}
