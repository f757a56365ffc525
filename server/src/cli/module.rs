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
    /// Upload a module for a scenario (validated at once; runs on data once approved).
    Upload {
        file: PathBuf,
        #[arg(long)]
        scenario: String,
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
            let bytes = c()?.module_bytes(&scenario, &hash)?;
            // The bytes are the approved hash's, or nothing is written.
            if tidegate_runtime::sha256_hex(&bytes) != hash {
                return Err(anyhow!("the server's bytes do not have the hash {hash}"));
            }
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
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
        ModuleCommand::Upload { file, scenario } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            print(&c()?.upload_module(&scenario, &wasm)?);
        }
        ModuleCommand::Approve {
            hash,
            scenario,
            note,
        } => print(&c()?.approve_module(&scenario, &hash, &note)?),
    }
    Ok(())
}

fn inspect(file: &Path) -> Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
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
