//! `tidegate report`: an org's annual report and a provider's contribution report, as JSON
//! and as readable pages; the authority's evaluation.

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
    /// A provider's contribution report (S18): per dataset its use, its quality and the fees
    /// its data earned, by category (its provider, the authority's admins and auditors). JSON
    /// on stdout, and the readable page with --html FILE.
    Contribution {
        #[arg(long)]
        org: String,
        #[arg(long)]
        year: i32,
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Write the authority's evaluation of an operating unit's year (admin; once per org and
    /// year; signed, and carried by the annual report). `--may-reapply false` bars the unit
    /// from applying for new scenarios.
    Evaluate {
        #[arg(long)]
        org: String,
        #[arg(long)]
        year: i32,
        /// How the unit kept its agreement.
        #[arg(long)]
        compliance: String,
        /// The products released and their effect.
        #[arg(long)]
        products: String,
        #[arg(long, action = clap::ArgAction::Set)]
        may_reapply: bool,
    },
}

pub(super) fn run(command: ReportCommand, remote: &Remote) -> Result<()> {
    match command {
        ReportCommand::Annual { org, year, html } => print_report(
            &remote.client()?.annual_report(&org, year)?,
            html,
            crate::report::annual_report_html,
        )?,
        ReportCommand::Contribution { org, year, html } => print_report(
            &remote.client()?.contribution_report(&org, year)?,
            html,
            crate::report::contribution_html,
        )?,
        ReportCommand::Evaluate {
            org,
            year,
            compliance,
            products,
            may_reapply,
        } => print(
            &remote
                .client()?
                .evaluate_org(&tidegate_runtime::EvaluationRequest {
                    org,
                    year,
                    compliance,
                    products,
                    may_reapply,
                })?,
        ),
    }
    Ok(())
}

/// Prints a report as JSON, and writes its page to `html` when named.
fn print_report<T: serde::Serialize>(
    report: &T,
    html: Option<PathBuf>,
    page: fn(&T) -> String,
) -> Result<()> {
    if let Some(path) = html {
        std::fs::write(&path, page(report))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report page: {}", path.display());
    }
    print(report);
    Ok(())
}
