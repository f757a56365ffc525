//! Lists and queues: which page, filtered how, and a page printed as a table.

use clap::Args;
use serde_json::Value;

use super::print;

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

/// Prints a page of a list: a table of `columns` (header, field), or the JSON with `--json`,
/// and how to ask for the next page.
pub(super) fn print_page(page: &Value, columns: &[(&str, &str)], args: &ListArgs) {
    if args.json {
        print(page);
        return;
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let cell = |item: &Value, field: &str| match &item[field] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(a) => a.len().to_string(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|(h, f)| {
            items
                .iter()
                .map(|i| cell(i, f).chars().count())
                .chain([h.len()])
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
    for item in &items {
        println!(
            "{}",
            line(columns.iter().map(|(_, f)| cell(item, f)).collect())
        );
    }
    if items.is_empty() {
        println!("(nothing)");
    }
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
}

pub(super) const SCENARIO_COLUMNS: &[(&str, &str)] = &[
    ("scenario", "id"),
    ("state", "state"),
    ("name", "name"),
    ("org", "org"),
    ("term end", "term_end"),
    ("missing approvals", "missing_approvals"),
];

pub(super) const MODULE_COLUMNS: &[(&str, &str)] = &[
    ("hash", "hash"),
    ("scenario", "scenario"),
    ("org", "org"),
    ("uploaded by", "uploaded_by"),
    ("functions", "functions"),
    ("approved by", "approved_by"),
    ("uploaded at", "uploaded_at"),
];

pub(super) const EXPORT_COLUMNS: &[(&str, &str)] = &[
    ("export", "id"),
    ("state", "state"),
    ("scenario", "scenario"),
    ("org", "org"),
    ("requested by", "requested_by"),
    ("requested at", "requested_at"),
    ("approvals", "approvals"),
    ("of", "required_approvals"),
];
