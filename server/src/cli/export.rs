//! `tidegate export`: export requests through the gate, and the signed bundles of approved
//! ones (scientist); `tidegate verify` checks a bundle offline.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use tidegate_runtime::ExportSummary;

use super::list::{Column, ListArgs, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum ExportCommand {
    /// List your org's export requests (every org's for the authority), newest first.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Run the gate over a job's result and send it to review.
    Request {
        job: String,
        /// For a scenario with a privacy budget: the epsilon this release spends.
        #[arg(long)]
        epsilon: Option<f64>,
        /// The export a reviewer returned that this one answers (linked both ways).
        #[arg(long)]
        amends: Option<String>,
    },
    /// Show an export request: its state, gate report and review history.
    Show { id: String },
    /// Download an approved export's signed bundle.
    Download {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The columns of a list of export requests (also a reviewer's queue).
pub(super) const EXPORT_COLUMNS: &[Column<ExportSummary>] = &[
    ("export", |e| e.id.clone()),
    ("state", |e| e.state.to_string()),
    ("scenario", |e| e.scenario.clone()),
    ("org", |e| e.org.clone()),
    ("requested by", |e| e.requested_by.clone()),
    ("requested at", |e| e.requested_at.clone()),
    ("approvals", |e| e.approvals.to_string()),
    ("of", |e| e.required_approvals.to_string()),
    ("public", |e| {
        if e.public_figures { "yes" } else { "no" }.to_string()
    }),
];

pub(super) fn run(command: ExportCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    match command {
        ExportCommand::List { list } => print_page(
            &c.list("/v1/exports", &list.query(false))?,
            EXPORT_COLUMNS,
            &list,
        )?,
        ExportCommand::Request {
            job,
            epsilon,
            amends,
        } => print(&c.request_export_with(&job, epsilon, amends.as_deref())?),
        ExportCommand::Show { id } => print(&c.get_export(&id)?),
        ExportCommand::Download { id, out } => {
            c.download_bundle(&id, &out)?;
            println!("bundle: {}", out.display());
        }
    }
    Ok(())
}

/// Verifies a release bundle offline with the platform's public key.
pub(super) fn verify(bundle: &Path, key: &Path) -> Result<()> {
    let key = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let v = tidegate_runtime::verify_bundle(bundle, &key)?;
    println!(
        "bundle verified: signature valid; files {:?} match the signed manifest",
        v.files
    );
    println!(
        "export {}, scenario {}",
        v.manifest["export"], v.manifest["scenario"]["id"]
    );
    Ok(())
}
