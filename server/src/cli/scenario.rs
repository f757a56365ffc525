//! `tidegate scenario`: applying for a scenario authorization, its approvals and its
//! lifecycle (submit, repin, suspend, resume, revoke).

use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};

use super::list::{ListArgs, SCENARIO_COLUMNS, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub(super) enum ScenarioCommand {
    /// List the scenarios you may open.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// The scenarios pending approvals that you may approve now (admin, provider), oldest
    /// first.
    Queue {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Apply for a scenario.
    Apply {
        #[arg(long)]
        name: String,
        #[arg(long)]
        key_area: String,
        #[arg(long)]
        purpose: String,
        /// DATASET:COL1,COL2 (repeatable)
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        #[arg(long)]
        term_start: String,
        #[arg(long)]
        term_end: String,
        #[arg(long)]
        public_interest: bool,
        #[arg(long)]
        k: Option<u64>,
        #[arg(long = "product")]
        products: Vec<String>,
        /// COLUMN=RULE: how the gate desensitizes an output column (repeatable). RULE is mask,
        /// redact, pseudonymize, or a generalization: round:DECIMALS, band:WIDTH (30-39),
        /// month (YYYY-MM). Jobs can call `tg_pseudonym(x)` for the same keyed pseudonyms.
        #[arg(long = "mask")]
        masking: Vec<String>,
        /// Total differential privacy budget (epsilon) of the scenario's releases.
        #[arg(long)]
        privacy_budget: Option<f64>,
        /// With a privacy budget: each subject's contribution to a sum in one group is
        /// clamped to [-B, B] (sums are not released without it).
        #[arg(long)]
        contribution_bound: Option<f64>,
        /// With a privacy budget: a subject's rows counted per group (default 1).
        #[arg(long)]
        count_bound: Option<u64>,
        /// With a privacy budget: the groups of one result a subject counts in (default 1).
        #[arg(long)]
        max_groups_per_subject: Option<u64>,
        /// At most this many rows per export (tighter than the platform's limit).
        #[arg(long)]
        max_rows: Option<u64>,
        /// At most this many bytes per export (tighter than the platform's limit).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Keep it as a draft; `scenario submit` asks for the approvals.
        #[arg(long)]
        draft: bool,
    },
    /// Show a scenario: its grants, term, rules, approvals and state.
    Show { id: String },
    /// Submit a draft for approval (its org's scientist).
    Submit { id: String },
    /// Move the scenario's grant of a dataset to its newest version (the dataset's provider).
    Repin {
        id: String,
        #[arg(long)]
        dataset: String,
    },
    /// Approve as the admin or as a provider of a requested dataset.
    Approve { id: String },
    /// Risk stop (admin): the scenario runs and exports nothing; running jobs are cancelled.
    Suspend { id: String },
    /// Lift a suspension (admin).
    Resume { id: String },
    /// End the authorization for good (admin).
    Revoke { id: String },
}

pub(super) fn run(command: ScenarioCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    match command {
        ScenarioCommand::List { list } => print_page(
            &c.list("/v1/scenarios", &list.query(false))?,
            SCENARIO_COLUMNS,
            &list,
        ),
        ScenarioCommand::Queue { list } => print_page(
            &c.list("/v1/scenarios", &list.query(true))?,
            SCENARIO_COLUMNS,
            &list,
        ),
        ScenarioCommand::Apply {
            name,
            key_area,
            purpose,
            grants,
            term_start,
            term_end,
            public_interest,
            k,
            products,
            masking,
            privacy_budget,
            contribution_bound,
            count_bound,
            max_groups_per_subject,
            max_rows,
            max_bytes,
            draft,
        } => {
            let mut rules = serde_json::Map::new();
            let masks: serde_json::Map<String, Value> = masking
                .iter()
                .map(|m| {
                    let (col, rule) = m.split_once('=').ok_or_else(|| {
                        anyhow!("`{m}`: a masking rule is COLUMN=RULE (mask, redact, pseudonymize, round:N, band:W, month)")
                    })?;
                    Ok((col.to_string(), json!(rule)))
                })
                .collect::<Result<_>>()?;
            if !masks.is_empty() {
                rules.insert("masking".into(), Value::Object(masks));
            }
            for (key, value) in [
                ("privacy_budget", json!(privacy_budget)),
                ("contribution_bound", json!(contribution_bound)),
                ("count_bound", json!(count_bound)),
                ("max_groups_per_subject", json!(max_groups_per_subject)),
                ("max_rows", json!(max_rows)),
                ("max_bytes", json!(max_bytes)),
            ] {
                if !value.is_null() {
                    rules.insert(key.into(), value);
                }
            }
            let grants: Vec<Value> = grants
                .iter()
                .map(|g| {
                    let (ds, cols) = g.split_once(':').ok_or_else(|| anyhow!("`{g}`: a grant is DATASET:COL1,COL2"))?;
                    Ok(json!({ "dataset": ds, "columns": cols.split(',').map(str::trim).collect::<Vec<_>>() }))
                })
                .collect::<Result<_>>()?;
            print(&c.apply_scenario(&json!({
                "name": name, "key_area": key_area, "purpose": purpose, "public_interest": public_interest,
                "grants": grants, "term_start": term_start, "term_end": term_end, "k": k, "planned_products": products,
                "export_rules": rules, "draft": draft,
            }))?);
        }
        ScenarioCommand::Show { id } => {
            print(&c.ok("GET", &format!("/v1/scenarios/{id}"), None)?)
        }
        ScenarioCommand::Approve { id } => print(&c.approve_scenario(&id)?),
        ScenarioCommand::Submit { id } => print(&c.change_scenario(&id, "submit")?),
        ScenarioCommand::Repin { id, dataset } => print(&c.repin_grant(&id, &dataset)?),
        ScenarioCommand::Suspend { id } => print(&c.change_scenario(&id, "suspend")?),
        ScenarioCommand::Resume { id } => print(&c.change_scenario(&id, "resume")?),
        ScenarioCommand::Revoke { id } => print(&c.change_scenario(&id, "revoke")?),
    }
    Ok(())
}
