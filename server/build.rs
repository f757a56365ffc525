//! Builds the example UDF crates for `wasm32-unknown-unknown` so the demo, the tests and the
//! benchmarks can embed them; guest modules are never committed as binaries.

use std::env;
use std::path::PathBuf;
use std::process::Command;

#[path = "src/package_files.rs"]
mod package_files;

/// (crate, file name in OUT_DIR) of every guest this build embeds.
const GUESTS: [(&str, &str); 4] = [
    ("tidegate-example-visitor-udf", "visitor_udf.wasm"),
    ("tidegate-example-bench-udf", "bench_udf.wasm"),
    ("tidegate-example-aggregate-udf", "aggregate_udf.wasm"),
    ("tidegate-example-model-udf", "model_udf.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("server/ is inside the workspace");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for path in [
        "udf-sdk",
        "examples/visitor-udf",
        "examples/bench-udf",
        "examples/aggregate-udf",
        "examples/model-udf",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    embed_sdk(root, &out_dir);
    ensure_wasm_target(root);
    let target_dir = out_dir.join("guest-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for (krate, _) in GUESTS {
        cmd.args(["-p", krate]);
    }
    let status = cmd
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the example UDFs for wasm32-unknown-unknown failed; is the target installed? \
         (`rustup target add wasm32-unknown-unknown`, or let rust-toolchain.toml do it)"
    );
    for (krate, file) in GUESTS {
        let wasm = target_dir
            .join("wasm32-unknown-unknown/release")
            .join(format!("{}.wasm", krate.replace('-', "_")));
        std::fs::copy(&wasm, out_dir.join(file)).expect("the example module was built");
    }
}

/// The guests need the standard library for `wasm32-unknown-unknown`. rustup installs the
/// targets `rust-toolchain.toml` lists only when it installs the toolchain itself; on a machine
/// whose toolchain was already there, the target is missing. Add it (rustup makes that a no-op
/// when it is installed), so that every command that builds the server works on a fresh clone.
fn ensure_wasm_target(root: &std::path::Path) {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let installed = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/wasm32-unknown-unknown")
                .exists()
        })
        .unwrap_or(false);
    if installed {
        return;
    }
    println!("cargo:warning=installing the wasm32-unknown-unknown target with rustup (once)");
    let added = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", "wasm32-unknown-unknown"])
        .status();
    if !added.is_ok_and(|s| s.success()) {
        println!(
            "cargo:warning=`rustup target add wasm32-unknown-unknown` failed; install the target by hand"
        );
    }
}

/// The guest SDK's files, embedded in the binary: a rebuild of a module from its source checks
/// that the archive's SDK is this one (its macros run at build time on the reviewer's machine).
fn embed_sdk(root: &std::path::Path, out_dir: &std::path::Path) {
    let manifest =
        std::fs::read_to_string(root.join("udf-sdk/Cargo.toml")).expect("the SDK's manifest");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("the SDK's manifest names its version")
        .trim_matches('"');
    let mut code = format!(
        "/// The guest SDK's version this build embeds.\n\
         pub(crate) const SDK_VERSION: &str = {version:?};\n\
         /// One file of the SDK: (path in its package, bytes).\n\
         pub(crate) type SdkFile = (&'static str, &'static [u8]);\n\
         /// The guest SDK's packages this build embeds: (name, files).\n\
         pub(crate) const SDK_PACKAGES: &[(&str, &[SdkFile])] = &[\n"
    );
    for (name, dir) in [
        ("tidegate-udf-sdk", "udf-sdk"),
        ("tidegate-udf-macros", "udf-sdk/macros"),
    ] {
        code.push_str(&format!("    ({name:?}, &[\n"));
        for (path, _) in
            package_files::package_files(&root.join(dir)).expect("the SDK's files read")
        {
            let file = root.join(dir).join(&path).display().to_string();
            code.push_str(&format!("        ({path:?}, include_bytes!({file:?})),\n"));
        }
        code.push_str("    ]),\n");
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("sdk_files.rs"), code).expect("OUT_DIR is writable");
}
