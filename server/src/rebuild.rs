//! Modules rebuilt from their source (issue 19, item 3). `tidegate module build` packs a crate
//! (with the path crates it builds on, its lock and the toolchain it selects) or one C file into
//! a source archive, then builds the module from that archive alone, in a fresh directory;
//! `tidegate module verify-source` builds the same archive again, anywhere, and compares the
//! bytes. Both builds are the same function, so what a scientist uploads is what a reviewer's
//! rebuild gives, byte for byte, on a machine with the same toolchain.
//!
//! What makes the bytes the same: the toolchain pinned by exact version (`RUSTUP_TOOLCHAIN`,
//! `rust-toolchain.toml`), `--locked` dependencies, Tidegate's own workspace and release profile
//! (the archive's packages bring their code, not their build settings), the build's directories
//! remapped out of the binary (`--remap-path-prefix`, `-ffile-prefix-map`), and no flags from
//! the environment (`RUSTFLAGS` and cargo's build overrides are removed).
//!
//! A rebuild runs on the reviewer's machine, so it refuses what would run an archive's code
//! there: a workspace manifest or toolchain file other than the ones `module build` writes
//! (`[patch]` could swap a dependency of the SDK's macros), a build script in any of the
//! archive's own crates, a procedural macro other than the SDK's, and an SDK whose files differ
//! from the one this `tidegate` was built with. Registry
//! dependencies pinned by the lock run as cargo runs them (see SECURITY.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tidegate_runtime::source::{
    BuildRecipe, SourceFile, read_source_archive, write_source_archive,
};

use crate::package_files::package_files;

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// The target every guest is built for.
pub const TARGET: &str = "wasm32-unknown-unknown";
/// The most bytes a rebuilt module may have.
const MAX_WASM_BYTES: u64 = 64 << 20;
/// The workspace a Rust module is built in: Tidegate's, whatever the archive's crates say.
const PROFILE: &str = "[profile.release]\nopt-level = 3\ndebug = false\nstrip = false\nlto = false\ncodegen-units = 1\nincremental = false\n";

/// A module built from its source: its bytes and the archive they were built from.
pub struct Built {
    pub wasm: Vec<u8>,
    pub source: Vec<u8>,
}

/// Packs the crate at `path` (a directory) or the C file at `path` (`*.c`) and builds the
/// module from the archive.
pub fn build_from_path(path: &Path) -> Result<Built> {
    let source = if path.extension().is_some_and(|e| e == "c") && path.is_file() {
        pack_c(path)?
    } else {
        pack_rust(path)?
    };
    let wasm = rebuild(&source)?;
    Ok(Built { wasm, source })
}

/// A cargo (or rustc) command with nothing of the environment that would change its output.
fn toolchain_command(program: &str, dir: &Path, toolchain: Option<&str>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let drop = key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "CARGO"
            || key == "CARGO_MAKEFLAGS"
            || key.starts_with("RUSTC")
            || key.starts_with("CARGO_ENCODED_")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_CFG_")
            || key == "RUSTUP_TOOLCHAIN";
        if drop {
            cmd.env_remove(key);
        }
    }
    if let Some(t) = toolchain {
        cmd.env("RUSTUP_TOOLCHAIN", t);
    }
    cmd
}

/// Runs a command; on failure, its last lines of error output.
fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed:\n{}", tail.join("\n"));
    }
    Ok(out)
}

/// The exact version (`1.95.0`) of the rustc that `dir` selects, or that `toolchain` names.
fn rustc_version(dir: &Path, toolchain: Option<&str>) -> Result<String> {
    let mut cmd = toolchain_command("rustc", dir, toolchain);
    cmd.arg("--version");
    let out = run(cmd, "rustc --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("rustc --version printed {text:?}"))
}

fn metadata(dir: &Path, toolchain: Option<&str>, locked: bool) -> Result<Value> {
    let mut cmd = toolchain_command("cargo", dir, toolchain);
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        TARGET,
    ]);
    cmd.arg("--manifest-path").arg(dir.join("Cargo.toml"));
    if locked {
        cmd.arg("--locked");
    }
    let out = run(cmd, "cargo metadata")?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A package of the source's own (a path dependency, not a registry crate).
struct LocalPackage {
    name: String,
    dir: PathBuf,
    kinds: Vec<String>,
}

/// The root package (found by `is_root`) and every local package it builds on (itself
/// included), following normal and build dependencies.
fn local_closure(meta: &Value, is_root: impl Fn(&Value) -> bool) -> Result<Vec<LocalPackage>> {
    let packages = meta["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata gave no packages"))?;
    let root = packages
        .iter()
        .find(|p| is_root(p))
        .ok_or_else(|| anyhow!("the crate to build is not in cargo's metadata"))?;
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut seen = vec![root["id"].as_str().unwrap_or_default().to_string()];
    let mut next = seen.clone();
    while let Some(id) = next.pop() {
        let Some(node) = nodes.iter().find(|n| n["id"] == id.as_str()) else {
            continue;
        };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let not_dev_only = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].as_str() != Some("dev"));
            let pkg = dep["pkg"].as_str().unwrap_or_default().to_string();
            if not_dev_only && !seen.contains(&pkg) {
                seen.push(pkg.clone());
                next.push(pkg);
            }
        }
    }
    let mut out = Vec::new();
    for p in packages {
        let id = p["id"].as_str().unwrap_or_default();
        if !seen.iter().any(|s| s == id) || !p["source"].is_null() {
            continue;
        }
        let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default());
        out.push(LocalPackage {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            dir: manifest
                .parent()
                .ok_or_else(|| anyhow!("a package without a directory"))?
                .to_path_buf(),
            kinds: p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| t["kind"].as_array().cloned().unwrap_or_default())
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
        });
    }
    Ok(out)
}

/// The guest SDK's version this build embeds (and checks archives against).
pub fn sdk_version() -> &'static str {
    SDK_VERSION
}

/// Refuses what a rebuild must not run, and an SDK that is not this build's.
fn check_locals(root: &str, locals: &[LocalPackage]) -> Result<()> {
    for p in locals {
        if p.kinds.iter().any(|k| k == "custom-build") {
            bail!(
                "the crate {} has a build script; a module's own crates may not (a rebuild would run it on the reviewer's machine)",
                p.name
            );
        }
        let sdk = SDK_PACKAGES.iter().find(|(name, _)| *name == p.name);
        if p.kinds.iter().any(|k| k == "proc-macro") && sdk.is_none() {
            bail!(
                "the crate {} is a procedural macro; a module's own crates may use the SDK's macros only",
                p.name
            );
        }
        if let Some((_, known)) = sdk {
            let files =
                package_files(&p.dir).with_context(|| format!("reading {}", p.dir.display()))?;
            let same = files.len() == known.len()
                && files
                    .iter()
                    .zip(known.iter())
                    .all(|((path, bytes), (kpath, kbytes))| path == kpath && bytes == kbytes);
            if !same {
                bail!(
                    "the crate {} is not the guest SDK this tidegate was built with (tidegate-udf-sdk {}): build and verify with the same SDK",
                    p.name,
                    sdk_version()
                );
            }
        }
    }
    let root_pkg = locals
        .iter()
        .find(|p| p.name == root)
        .ok_or_else(|| anyhow!("the crate {root} is not among its own packages"))?;
    if !root_pkg.kinds.iter().any(|k| k == "cdylib") {
        bail!("the crate {root} must build a cdylib (`crate-type = [\"cdylib\"]` in its [lib])");
    }
    Ok(())
}

/// The deepest directory holding every one of `dirs`, strictly above each of them.
fn common_base(dirs: &[&Path]) -> Result<PathBuf> {
    let mut base = dirs
        .first()
        .ok_or_else(|| anyhow!("no package to pack"))?
        .to_path_buf();
    while !dirs.iter().all(|d| d.starts_with(&base) && *d != base) {
        base = base
            .parent()
            .ok_or_else(|| anyhow!("the packages share no directory"))?
            .to_path_buf();
    }
    Ok(base)
}

fn relative(path: &Path, base: &Path) -> Result<String> {
    let rel = path.strip_prefix(base)?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
        })
        .collect::<Result<_>>()?;
    Ok(parts.join("/"))
}

/// Writes the archive's files under `dir` (created; every path already checked).
fn write_tree(dir: &Path, files: &[SourceFile]) -> Result<()> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut w| w.write_all(&f.bytes))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn workspace_manifest(member: &str) -> String {
    format!(
        "# Written by `tidegate module build`: the workspace a module is built and rebuilt in.\n\
         [workspace]\nresolver = \"3\"\nmembers = [{member:?}]\n\n{PROFILE}"
    )
}

/// A Rust source's workspace manifest and toolchain file must be the ones `pack_rust` writes:
/// the root manifest is where `[patch]`, `[replace]` and profiles live, which would swap a
/// dependency of the SDK's macros (code run at build time) or change the build's settings.
fn check_generated(files: &[SourceFile], toolchain: &str) -> Result<()> {
    let find = |p: &str| {
        files
            .iter()
            .find(|f| f.path == p)
            .map(|f| f.bytes.as_slice())
    };
    let manifest = find("Cargo.toml").unwrap_or_default();
    let member = std::str::from_utf8(manifest)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("members = [")?.strip_suffix(']'))
        })
        .and_then(|m| serde_json::from_str::<String>(m).ok());
    if member
        .map(|m| workspace_manifest(&m).into_bytes())
        .as_deref()
        != Some(manifest)
    {
        bail!(
            "the source's workspace manifest (Cargo.toml at its root) is not the one `tidegate module build` writes; a rebuild uses no other"
        );
    }
    if find("rust-toolchain.toml") != Some(toolchain_file(toolchain).as_bytes()) {
        bail!(
            "the source's rust-toolchain.toml is not the one `tidegate module build` writes for its recipe"
        );
    }
    Ok(())
}

fn toolchain_file(toolchain: &str) -> String {
    format!("[toolchain]\nchannel = {toolchain:?}\ntargets = [{TARGET:?}]\nprofile = \"minimal\"\n")
}

/// Packs a crate directory: the crate and its path dependencies, a workspace of Tidegate's, the
/// lock (pruned from the crate's own workspace's, so versions do not move), and the toolchain
/// the directory selects.
pub fn pack_rust(dir: &Path) -> Result<Vec<u8>> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open the crate {}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} holds no Cargo.toml", dir.display());
    }
    let toolchain = rustc_version(&dir, None)?;
    let meta = metadata(&dir, None, false)?;
    let locals = local_closure(&meta, |p| {
        p["manifest_path"]
            .as_str()
            .is_some_and(|m| Path::new(m) == manifest)
    })?;
    let root = locals
        .iter()
        .find(|p| p.dir == dir)
        .map(|p| p.name.clone())
        .ok_or_else(|| anyhow!("{} is not a package", dir.display()))?;
    check_locals(&root, &locals)?;
    let dirs: Vec<&Path> = locals.iter().map(|p| p.dir.as_path()).collect();
    let base = common_base(&dirs)?;
    let mut files = Vec::new();
    for p in &locals {
        let prefix = relative(&p.dir, &base)?;
        for (path, bytes) in
            package_files(&p.dir).with_context(|| format!("reading {}", p.dir.display()))?
        {
            files.push(SourceFile {
                path: format!("{prefix}/{path}"),
                bytes,
            });
        }
    }
    let member = relative(&dir, &base)?;
    files.push(SourceFile {
        path: "Cargo.toml".into(),
        bytes: workspace_manifest(&member).into_bytes(),
    });
    files.push(SourceFile {
        path: "rust-toolchain.toml".into(),
        bytes: toolchain_file(&toolchain).into_bytes(),
    });
    // The lock: the crate's workspace's, pruned to what this workspace uses.
    let stage = tempfile::Builder::new()
        .prefix("tidegate-pack-")
        .tempdir()?;
    write_tree(stage.path(), &files)?;
    let lock = Path::new(meta["workspace_root"].as_str().unwrap_or_default()).join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, stage.path().join("Cargo.lock"))?;
    }
    metadata(stage.path(), Some(&toolchain), false)?;
    files.push(SourceFile {
        path: "Cargo.lock".into(),
        bytes: std::fs::read(stage.path().join("Cargo.lock"))
            .context("cargo wrote no Cargo.lock")?,
    });
    Ok(write_source_archive(
        &BuildRecipe::Rust {
            package: root,
            toolchain,
        },
        &files,
    )?)
}

/// zig, as `TIDEGATE_ZIG` names it or as `scripts/build-c-udf` installs it from PyPI.
fn zig_command(dir: &Path) -> Result<Command> {
    if let Some(zig) = std::env::var_os("TIDEGATE_ZIG") {
        let mut cmd = Command::new(zig);
        cmd.current_dir(dir);
        return Ok(cmd);
    }
    let tools = std::env::var_os("TIDEGATE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tidegate-tools"))
        })
        .ok_or_else(|| anyhow!("no HOME to find zig under"))?;
    let zig = tools.join("zig");
    if !zig.join("ziglang").is_dir() {
        bail!(
            "building a C module needs zig: run scripts/build-c-udf once (it installs zig from PyPI into {}), or set TIDEGATE_ZIG",
            zig.display()
        );
    }
    let mut cmd = Command::new("python3");
    cmd.current_dir(dir)
        .env("PYTHONPATH", zig)
        .args(["-m", "ziglang"]);
    Ok(cmd)
}

fn zig_version(dir: &Path) -> Result<String> {
    let mut cmd = zig_command(dir)?;
    cmd.arg("version");
    let out = run(cmd, "zig version")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Packs one C file with the zig version that builds it.
pub fn pack_c(file: &Path) -> Result<Vec<u8>> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no UTF-8 file name", file.display()))?
        .to_string();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let zig = zig_version(dir)?;
    Ok(write_source_archive(
        &BuildRecipe::C {
            file: name.clone(),
            zig,
        },
        &[SourceFile { path: name, bytes }],
    )?)
}

/// Builds a module from a source archive, in a fresh directory of its own, and gives its bytes.
pub fn rebuild(source: &[u8]) -> Result<Vec<u8>> {
    let archive = read_source_archive(source)?;
    let work = tempfile::Builder::new()
        .prefix("tidegate-rebuild-")
        .tempdir()?;
    let root = work.path().canonicalize()?;
    let dir = root.join("source");
    std::fs::create_dir(&dir)?;
    write_tree(&dir, &archive.files)?;
    let out = root.join("target");
    let wasm = match &archive.recipe {
        BuildRecipe::Rust { package, toolchain } => {
            check_generated(&archive.files, toolchain)?;
            let active = rustc_version(&dir, Some(toolchain))?;
            if active != *toolchain {
                bail!(
                    "the source pins rustc {toolchain}; this machine's is {active} (`rustup toolchain install {toolchain} --target {TARGET}`)"
                );
            }
            // Idempotent; a machine without rustup has the target or fails the build below.
            let _ = Command::new("rustup")
                .args(["target", "add", TARGET, "--toolchain", toolchain])
                .output();
            let meta = metadata(&dir, Some(toolchain), true)?;
            let canonical = dir.clone();
            let locals = local_closure(&meta, |p| {
                p["name"].as_str() == Some(package.as_str())
                    && p["source"].is_null()
                    && p["manifest_path"]
                        .as_str()
                        .is_some_and(|m| Path::new(m).starts_with(&canonical))
            })?;
            check_locals(package, &locals)?;
            let cargo_home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .unwrap_or_default();
            let remap = [
                format!(
                    "--remap-path-prefix={}=/tidegate/source",
                    canonical.display()
                ),
                format!("--remap-path-prefix={}=/tidegate/target", out.display()),
                format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
            ];
            let mut cmd = toolchain_command("cargo", &dir, Some(toolchain));
            cmd.args(["build", "--locked", "--release", "--target", TARGET, "-p"])
                .arg(package)
                .arg("--target-dir")
                .arg(&out)
                .env("CARGO_ENCODED_RUSTFLAGS", remap.join("\u{1f}"))
                .env("CARGO_INCREMENTAL", "0");
            run(cmd, "the module's build")?;
            out.join(TARGET)
                .join("release")
                .join(format!("{}.wasm", package.replace('-', "_")))
        }
        BuildRecipe::C { file, zig } => {
            let active = zig_version(&dir)?;
            if active != *zig {
                bail!("the source pins zig {zig}; this machine's is {active}");
            }
            std::fs::create_dir(&out)?;
            let wasm = out.join("module.wasm");
            let mut cmd = zig_command(&dir)?;
            cmd.args([
                "cc",
                "--target=wasm32-freestanding",
                "-O2",
                "-nostdlib",
                "-Wl,--no-entry",
            ])
            .arg(format!(
                "-ffile-prefix-map={}=/tidegate/source",
                dir.display()
            ))
            .arg("-o")
            .arg(&wasm)
            .arg(file)
            .env("ZIG_LOCAL_CACHE_DIR", root.join("zig-cache"))
            .env("ZIG_GLOBAL_CACHE_DIR", root.join("zig-global-cache"));
            run(cmd, "the module's build")?;
            wasm
        }
    };
    let size = std::fs::metadata(&wasm)
        .with_context(|| format!("the build wrote no {}", wasm.display()))?
        .len();
    if size > MAX_WASM_BYTES {
        bail!("the rebuilt module has {size} bytes, over {MAX_WASM_BYTES}");
    }
    Ok(std::fs::read(&wasm)?)
}
