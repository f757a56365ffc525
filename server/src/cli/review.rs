//! `tidegate review`: the export requests awaiting a reviewer's decision, and decisions.

use anyhow::Result;
use clap::Subcommand;

use super::export::EXPORT_COLUMNS;
use super::list::{ListArgs, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum ReviewCommand {
    /// The export requests in review that you may decide now, oldest first.
    Queue {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Approve an export request (its result hash is bound to the approval).
    Approve {
        export: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// Approve its rows for the public record too: needed when its scenario publishes
        /// its figures (`export show` says `public_figures`).
        #[arg(long)]
        publish: bool,
    },
    /// Return an export request to its scientist, with what to change.
    Return {
        export: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject an export request.
    Reject {
        export: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

pub(super) fn run(command: ReviewCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    let mut publish = false;
    let (decision, export, comment) = match command {
        ReviewCommand::Queue { list } => {
            let page = c.list("/v1/exports", &list.query(true))?;
            print_page(&page, EXPORT_COLUMNS, &list)?;
            return Ok(());
        }
        ReviewCommand::Approve {
            export,
            comment,
            publish: p,
        } => {
            publish = p;
            ("approve", export, comment)
        }
        ReviewCommand::Return { export, comment } => ("return", export, comment),
        ReviewCommand::Reject { export, comment } => ("reject", export, comment),
    };
    print(&c.review_export_publishing(&export, decision, &comment, publish)?);
    Ok(())
}
