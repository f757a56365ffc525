//! `tidegate org`: the authority's directory of orgs, and an org's freeze and exit (admin).

use anyhow::Result;
use clap::Subcommand;
use tidegate_runtime::OrgView;

use super::list::{Column, ListArgs, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum OrgCommand {
    /// List every org (the authority's admins and auditors).
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Create an org of a kind: authority, provider or operator.
    Create {
        name: String,
        /// authority, provider or operator
        #[arg(long)]
        kind: String,
    },
    /// Freeze an org: every active scenario is suspended and its running jobs cancelled.
    Freeze { org: String },
    /// Lift a freeze: the scenarios it suspended run again.
    Unfreeze { org: String },
    /// End an org's authorization: revoke, close tokens, destroy its results and modules,
    /// and print the signed exit certificate.
    Exit {
        org: String,
        #[arg(long)]
        reason: String,
    },
}

const ORG_COLUMNS: &[Column<OrgView>] = &[
    ("org", |o| o.id.clone()),
    ("name", |o| o.name.clone()),
    ("kind", |o| o.kind.clone()),
];

pub(super) fn run(command: OrgCommand, remote: &Remote) -> Result<()> {
    match command {
        OrgCommand::List { list } => print_page(
            &remote.client()?.list("/v1/orgs", &list.query(false))?,
            ORG_COLUMNS,
            &list,
        )?,
        OrgCommand::Create { name, kind } => print(&remote.client()?.create_org(&name, &kind)?),
        OrgCommand::Freeze { org } => print(&remote.client()?.freeze_org(&org, true)?),
        OrgCommand::Unfreeze { org } => print(&remote.client()?.freeze_org(&org, false)?),
        OrgCommand::Exit { org, reason } => print(&remote.client()?.exit_org(&org, &reason)?),
    }
    Ok(())
}
