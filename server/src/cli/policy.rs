//! `tidegate policy`: policy as code; the scenarios' rules and prices exported as one
//! document, and a changed document applied as a new version (admin).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum PolicyCommand {
    /// Write the current policy document (JSON) to stdout or --out.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show the difference a document makes and apply it as one new version.
    Apply {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
}

pub(super) fn run(command: PolicyCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    match command {
        PolicyCommand::Export { out } => {
            let doc = c.export_policy()?;
            match out {
                Some(path) => {
                    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!(
                        "policy version {} written to {}",
                        doc.version,
                        path.display()
                    );
                }
                None => print(&doc),
            }
        }
        PolicyCommand::Apply { file, dry_run } => {
            let doc: tidegate_runtime::PolicyDocument = serde_json::from_slice(
                &std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
            )
            .context("the file is not a policy document (tidegate-policy-v1, no unknown field)")?;
            print(&c.apply_policy(&doc, dry_run)?);
        }
    }
    Ok(())
}
