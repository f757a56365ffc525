//! `tidegate principal`: principals, their tokens and training records (admin).

use anyhow::Result;
use clap::Subcommand;
use tidegate_runtime::PrincipalView;

use super::list::{Column, ListArgs, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum PrincipalCommand {
    /// List every principal, without secrets (the authority's admins and auditors).
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Create a principal; prints its token once.
    Create {
        name: String,
        #[arg(long)]
        org: String,
        /// scientist, admin, reviewer, provider or auditor (repeatable)
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Record that a principal passed training.
    Train {
        id: String,
        #[arg(long)]
        course: String,
        /// The training's last day (YYYY-MM-DD); a year from today when not named. After it
        /// the principal can do nothing but read their own training state.
        #[arg(long)]
        until: Option<String>,
    },
    /// Close a principal's token and print a new one (admin: anyone's; anyone: their own).
    Token { id: String },
}

const PRINCIPAL_COLUMNS: &[Column<PrincipalView>] = &[
    ("principal", |p| p.id.clone()),
    ("name", |p| p.name.clone()),
    ("org", |p| p.org.clone()),
    ("roles", |p| {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        roles.join(",")
    }),
    ("trained", |p| p.trained.to_string()),
];

pub(super) fn run(command: PrincipalCommand, remote: &Remote) -> Result<()> {
    match command {
        PrincipalCommand::List { list } => print_page(
            &remote
                .client()?
                .list("/v1/principals", &list.query(false))?,
            PRINCIPAL_COLUMNS,
            &list,
        )?,
        PrincipalCommand::Create { name, org, roles } => {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            print(&remote.client()?.create_principal(&name, &org, &roles)?);
        }
        PrincipalCommand::Token { id } => print(&remote.client()?.rotate_token(&id)?),
        PrincipalCommand::Train { id, course, until } => print(
            &remote
                .client()?
                .record_training_until(&id, &course, until.as_deref())?,
        ),
    }
    Ok(())
}
