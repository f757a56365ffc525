//! `tidegate report`: an org's annual report, as JSON and as a readable page.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum ReportCommand {
    /// An org's annual report: JSON on stdout, and the readable page with --html FILE.
    Annual {
        #[arg(long)]
        org: String,
        #[arg(long)]
        year: i32,
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

pub(super) fn run(command: ReportCommand, remote: &Remote) -> Result<()> {
    let ReportCommand::Annual { org, year, html } = command;
    let report = remote.client()?.annual_report(&org, year)?;
    if let Some(path) = html {
        std::fs::write(&path, crate::report::annual_report_html(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report page: {}", path.display());
    }
    print(&report);
    Ok(())
}
