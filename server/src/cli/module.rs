//! `tidegate module`: a module validated locally (`inspect`), uploaded for a scenario
//! (scientist), read, approved and revoked (reviewer).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use tidegate_runtime::{ModuleSummary, Sandbox};

use super::list::{Column, ListArgs, or_dash, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum ModuleCommand {
    /// List the modules you may open (your org's; every org's for the authority).
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// The modules awaiting an algorithm review that you may give (reviewer), oldest first.
    Queue {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Validate a module locally: prints the report and its functions; fails if invalid.
    Inspect { file: PathBuf },
    /// Build a module reproducibly from a crate directory (or a `.c` file): writes the module
    /// and its source archive, which a reviewer rebuilds to the same bytes.
    Build {
        /// A crate directory (its Cargo.toml), or one C file.
        path: PathBuf,
        /// Where the module goes; its source archive goes beside it (`*.source.tar`).
        #[arg(long)]
        out: PathBuf,
        /// Where the source archive goes instead.
        #[arg(long)]
        source_out: Option<PathBuf>,
    },
    /// Upload a module for a scenario (validated at once; runs on data once approved).
    Upload {
        file: PathBuf,
        #[arg(long)]
        scenario: String,
        /// Its source archive (from `tidegate module build`), for its reviewer to read and
        /// rebuild.
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Download a module's source archive.
    Source {
        hash: String,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild a module from its source and say whether the bytes match. Either local files
    /// (MODULE SOURCE), or `--hash` with `--scenario` to fetch both from the server; with
    /// `--scenario`, the verdict is recorded on the module's review (reviewer). Fails unless
    /// the bytes match.
    VerifySource {
        module: Option<PathBuf>,
        source: Option<PathBuf>,
        #[arg(long)]
        hash: Option<String>,
        #[arg(long)]
        scenario: Option<String>,
    },
    /// Show a module as its reviewer reads it: functions, structure, state, jobs and exports.
    Show {
        hash: String,
        #[arg(long)]
        scenario: String,
    },
    /// Download a module's bytes to read them.
    Download {
        hash: String,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a module's approval (the authority's reviewers and admins): its jobs stop and
    /// the exports computed with it are flagged.
    Revoke {
        hash: String,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        reason: String,
    },
    /// Approve a module's hash for a scenario after reading it (reviewer of another org).
    Approve {
        hash: String,
        #[arg(long)]
        scenario: String,
        /// What the functions compute.
        #[arg(long)]
        note: String,
    },
}

const MODULE_COLUMNS: &[Column<ModuleSummary>] = &[
    ("hash", |m| m.hash.clone()),
    ("scenario", |m| m.scenario.clone()),
    ("org", |m| m.org.clone()),
    ("uploaded by", |m| m.uploaded_by.clone()),
    ("functions", |m| m.functions.to_string()),
    ("approved by", |m| or_dash(&m.approved_by)),
    ("uploaded at", |m| m.uploaded_at.clone()),
];

pub(super) fn run(command: ModuleCommand, remote: &Remote) -> Result<()> {
    let c = || remote.client();
    match command {
        ModuleCommand::Inspect { file } => inspect(&file)?,
        ModuleCommand::Show { hash, scenario } => {
            print(&c()?.get_module(&scenario, &hash)?);
        }
        ModuleCommand::Download {
            hash,
            scenario,
            out,
        } => {
            // The bytes are the approved hash's, or nothing is written.
            let bytes = module_of_hash(&c()?, &scenario, &hash)?;
            write_file(&out, &bytes)?;
            println!("{} bytes: {}", bytes.len(), out.display());
        }
        ModuleCommand::Revoke {
            hash,
            scenario,
            reason,
        } => print(&c()?.revoke_module(&scenario, &hash, &reason)?),
        ModuleCommand::List { list } => print_page(
            &c()?.list("/v1/modules", &list.query(false))?,
            MODULE_COLUMNS,
            &list,
        )?,
        ModuleCommand::Queue { list } => print_page(
            &c()?.list("/v1/modules", &list.query(true))?,
            MODULE_COLUMNS,
            &list,
        )?,
        ModuleCommand::Upload {
            file,
            scenario,
            source,
        } => {
            let wasm = read_file(&file)?;
            let source = source.as_deref().map(read_file).transpose()?;
            print(&c()?.upload_module_with_source(&scenario, &wasm, source.as_deref())?);
        }
        ModuleCommand::Build {
            path,
            out,
            source_out,
        } => build(&path, &out, source_out)?,
        ModuleCommand::Source {
            hash,
            scenario,
            out,
        } => {
            let bytes = c()?.module_source(&scenario, &hash)?;
            write_file(&out, &bytes)?;
            println!("{} bytes: {}", bytes.len(), out.display());
        }
        ModuleCommand::VerifySource {
            module,
            source,
            hash,
            scenario,
        } => verify_source(remote, module, source, hash, scenario)?,
        ModuleCommand::Approve {
            hash,
            scenario,
            note,
        } => print(&c()?.approve_module(&scenario, &hash, &note)?),
    }
    Ok(())
}

fn inspect(file: &Path) -> Result<()> {
    let wasm = read_file(file)?;
    let sandbox = Sandbox::new()?;
    let module = sandbox
        .load(&wasm)
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    println!("{}: valid Tidegate module (ABI version 1)", file.display());
    println!("sha256: {}", module.hash);
    println!("size: {} bytes", wasm.len());
    println!("imports: none");
    println!("functions:");
    for f in &module.functions {
        let args: Vec<String> = f
            .args
            .iter()
            .map(|a| format!("{a:?}").to_ascii_lowercase())
            .collect();
        // What the function gives: a value (and an aggregate's state), or a table's rows.
        let gives = if f.columns.is_empty() {
            let state: Vec<&str> = f.state.iter().map(|t| t.name()).collect();
            let state = if state.is_empty() {
                String::new()
            } else {
                format!(" (state: {})", state.join(", "))
            };
            format!("{}{state}", f.ret.name())
        } else {
            let cols: Vec<String> = f
                .columns
                .iter()
                .map(|(n, t)| format!("{n} {}", t.name()))
                .collect();
            format!("({})", cols.join(", "))
        };
        println!("  {} {}({}) -> {gives}", f.kind, f.name, args.join(", "));
    }
    Ok(())
}

fn build(path: &Path, out: &Path, source_out: Option<PathBuf>) -> Result<()> {
    let source_out = source_out.unwrap_or_else(|| out.with_extension("source.tar"));
    eprintln!(
        "building {} reproducibly (a fresh directory, locked dependencies)...",
        path.display()
    );
    let built = crate::rebuild::build_from_path(path)?;
    write_file(out, &built.wasm)?;
    write_file(&source_out, &built.source)?;
    let with = tidegate_runtime::source::built_with(&built.wasm);
    println!("module: {} ({} bytes)", out.display(), built.wasm.len());
    println!("sha256: {}", tidegate_runtime::sha256_hex(&built.wasm));
    println!(
        "source: {} ({} bytes)",
        source_out.display(),
        built.source.len()
    );
    println!("built with: {}", or_unknown(&with.toolchain));
    println!("sdk: {}", or_unknown(&with.sdk));
    Ok(())
}

fn or_unknown(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(not recorded)")
}

fn verify_source(
    remote: &Remote,
    module: Option<PathBuf>,
    source: Option<PathBuf>,
    hash: Option<String>,
    scenario: Option<String>,
) -> Result<()> {
    let (wasm, source) = match (module, source, &hash, &scenario) {
        (Some(m), Some(s), None, _) => (read_file(&m)?, read_file(&s)?),
        (None, None, Some(hash), Some(scenario)) => {
            let c = remote.client()?;
            (
                module_of_hash(&c, scenario, hash)?,
                c.module_source(scenario, hash)?,
            )
        }
        _ => {
            return Err(anyhow!(
                "give MODULE SOURCE (local files), or --hash HASH --scenario ID (from the server)"
            ));
        }
    };
    let hash = tidegate_runtime::sha256_hex(&wasm);
    let archive = tidegate_runtime::source::read_source_archive(&source)?;
    eprintln!(
        "rebuilding from {} ({})...",
        archive.sha256,
        archive.recipe.toolchain()
    );
    let rebuilt = crate::rebuild::rebuild(&source)?;
    let rebuilt_hash = tidegate_runtime::sha256_hex(&rebuilt);
    let matches = rebuilt_hash == hash;
    if matches {
        println!("rebuilt: bytes match (sha256 {hash})");
    } else {
        println!("rebuilt: bytes differ (module {hash}, rebuilt {rebuilt_hash})");
    }
    if let Some(scenario) = scenario {
        remote.client()?.record_source_check(
            &scenario,
            &hash,
            &archive.sha256,
            &rebuilt_hash,
            &archive.recipe.toolchain(),
        )?;
        println!("recorded on module {hash} in scenario {scenario}");
    }
    if !matches {
        return Err(anyhow!("the source does not build to this module"));
    }
    Ok(())
}

/// A module's bytes from the server, checked to be those of `hash`.
fn module_of_hash(c: &crate::client::Client, scenario: &str, hash: &str) -> Result<Vec<u8>> {
    let bytes = c.module_bytes(scenario, hash)?;
    if tidegate_runtime::sha256_hex(&bytes) != hash {
        return Err(anyhow!("the server's bytes do not have the hash {hash}"));
    }
    Ok(bytes)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
