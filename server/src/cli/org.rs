//! `tidegate org`: the authority's directory of orgs, and an org's freeze, exit and term of
//! authorization (admin); the lifecycle sweep on demand.

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
    /// Set the last day of an org's authorization (YYYY-MM-DD): the platform's sweep exits it
    /// the day after, as `org exit` does. `--until none` lifts the end.
    Authorize {
        org: String,
        #[arg(long)]
        until: String,
    },
    /// Run the lifecycle sweep now (admin): close the scenarios that are over and exit the
    /// orgs whose authorization ran out. The server runs it at start and hourly.
    Sweep,
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
        OrgCommand::Authorize { org, until } => {
            let until = (until != "none").then_some(until);
            print(
                &remote
                    .client()?
                    .set_org_authorization(&org, until.as_deref())?,
            )
        }
        OrgCommand::Sweep => print(&remote.client()?.sweep()?),
    }
    Ok(())
}
