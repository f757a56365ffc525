//! Lists and queues: which page, filtered how, and a page printed as a table.

use anyhow::Result;
use clap::Args;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tidegate_runtime::Listing;

use super::print;
use crate::client::decode;

/// Which page of a list, filtered how.
#[derive(Args, Clone)]
pub(super) struct ListArgs {
    /// Only items in this state (an export: in_review, returned, approved, rejected,
    /// released; a job: queued, running, succeeded, failed, cancelled; a module: awaiting,
    /// approved; a scenario: draft, pending_approvals, active, suspended, ...).
    #[arg(long)]
    state: Option<String>,
    /// Only items of this scenario.
    #[arg(long)]
    scenario: Option<String>,
    /// Items per page (1 to 200; 50 by default).
    #[arg(long)]
    limit: Option<usize>,
    /// The cursor a page before printed, for the next page.
    #[arg(long)]
    after: Option<String>,
    /// Print the page as JSON.
    #[arg(long)]
    json: bool,
}

impl ListArgs {
    pub(super) fn query(&self, queue: bool) -> tidegate_runtime::ListQuery {
        tidegate_runtime::ListQuery {
            state: self.state.clone(),
            scenario: self.scenario.clone(),
            queue,
            limit: self.limit,
            after: self.after.clone(),
        }
    }
}

/// A column of a list's table: its header, and how an item shows in it.
pub(super) type Column<T> = (&'static str, fn(&T) -> String);

/// Prints a page of a list: a table of `columns`, or the JSON as the server gave it with
/// `--json`, and how to ask for the next page.
pub(super) fn print_page<T: DeserializeOwned>(
    page: &Value,
    columns: &[Column<T>],
    args: &ListArgs,
) -> Result<()> {
    if args.json {
        print(page);
        return Ok(());
    }
    let page: Listing<T> = decode(page, "a page of a list")?;
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|item| columns.iter().map(|(_, cell)| cell(item)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|(h, _)| h.to_string()).collect())
    );
    if rows.is_empty() {
        println!("(nothing)");
    }
    for row in rows {
        println!("{}", line(row));
    }
    if let Some(next) = page.next {
        println!("more: --after {next}");
    }
    Ok(())
}

/// A cell of what may be absent: `-` when it is.
pub(super) fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}
