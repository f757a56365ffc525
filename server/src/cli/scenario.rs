//! `tidegate scenario`: applying for a scenario authorization, its approvals and its
//! lifecycle (submit, repin, suspend, resume, revoke).

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use tidegate_policy::ExportRules;
use tidegate_runtime::{GrantRequest, ScenarioView};

use super::list::{Column, ListArgs, print_page};
use super::{Remote, print};
use crate::wire::{ExportRulesText, ScenarioApplication};

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
        /// The query engine's memory for one job, in MiB (64 to 16384; 2048 when not named).
        /// The gate's work over larger inputs is written sealed to disk rather than failing.
        #[arg(long)]
        job_memory_mib: Option<u64>,
        /// At most this many jobs in any 24 hours (a quota approved with the scenario).
        #[arg(long)]
        jobs_per_day: Option<u64>,
        /// At most this many CPU seconds of jobs in any 24 hours (a quota approved with it).
        #[arg(long)]
        cpu_seconds_per_day: Option<u64>,
        /// At most this much guest fuel in any 24 hours, in units of 10^9 (about a second of
        /// guest work each).
        #[arg(long)]
        gigafuel_per_day: Option<u64>,
        /// At most this many MiB of job results kept at once (`job discard` frees room).
        #[arg(long)]
        storage_mib: Option<u64>,
        /// At most this many bytes per export (tighter than the platform's limit).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Publish the figures of the scenario's released products in the public record
        /// (signed, no sign-in), not only their titles: approved with the scenario, and each
        /// export's reviewers are told that approving it publishes its rows.
        #[arg(long)]
        public_figures: bool,
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
    /// The signed receipt of what was destroyed when the scenario closed (its term ended or
    /// it was revoked).
    Closing { id: String },
}

const SCENARIO_COLUMNS: &[Column<ScenarioView>] = &[
    ("scenario", |s| s.id.clone()),
    ("state", |s| s.state.as_str().to_string()),
    ("name", |s| s.name.clone()),
    ("org", |s| s.org.clone()),
    ("term end", |s| s.term_end.clone()),
    ("missing approvals", |s| s.missing_approvals.join(",")),
];

pub(super) fn run(command: ScenarioCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    match command {
        ScenarioCommand::List { list } => print_page(
            &c.list("/v1/scenarios", &list.query(false))?,
            SCENARIO_COLUMNS,
            &list,
        )?,
        ScenarioCommand::Queue { list } => print_page(
            &c.list("/v1/scenarios", &list.query(true))?,
            SCENARIO_COLUMNS,
            &list,
        )?,
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
            job_memory_mib,
            jobs_per_day,
            cpu_seconds_per_day,
            gigafuel_per_day,
            storage_mib,
            max_bytes,
            public_figures,
            draft,
        } => {
            // The rules go as written: the server parses them, and refuses a wrong one.
            let masking: BTreeMap<String, String> = masking
                .iter()
                .map(|m| {
                    let (col, rule) = m.split_once('=').ok_or_else(|| {
                        anyhow!("`{m}`: a masking rule is COLUMN=RULE (mask, redact, pseudonymize, round:N, band:W, month)")
                    })?;
                    Ok((col.to_string(), rule.to_string()))
                })
                .collect::<Result<_>>()?;
            let grants: Vec<GrantRequest> = grants
                .iter()
                .map(|g| {
                    let (ds, cols) = g
                        .split_once(':')
                        .ok_or_else(|| anyhow!("`{g}`: a grant is DATASET:COL1,COL2"))?;
                    Ok(GrantRequest {
                        dataset: ds.to_string(),
                        columns: cols.split(',').map(|c| c.trim().to_string()).collect(),
                        version: None,
                    })
                })
                .collect::<Result<_>>()?;
            let application = ScenarioApplication {
                name,
                key_area,
                purpose,
                public_interest,
                grants,
                term_start,
                term_end,
                k,
                planned_products: products,
                export_rules: ExportRulesText {
                    masking,
                    rules: ExportRules {
                        privacy_budget,
                        contribution_bound,
                        count_bound,
                        max_groups_per_subject,
                        max_rows,
                        max_bytes,
                        job_memory_mib,
                        jobs_per_day,
                        cpu_seconds_per_day,
                        gigafuel_per_day,
                        storage_mib,
                        public_figures,
                        ..ExportRules::default()
                    },
                },
                draft,
            };
            print(&c.apply_scenario(&application)?);
        }
        ScenarioCommand::Show { id } => print(&c.get_scenario(&id)?),
        ScenarioCommand::Approve { id } => print(&c.approve_scenario(&id)?),
        ScenarioCommand::Submit { id } => print(&c.change_scenario(&id, "submit")?),
        ScenarioCommand::Repin { id, dataset } => print(&c.repin_grant(&id, &dataset)?),
        ScenarioCommand::Suspend { id } => print(&c.change_scenario(&id, "suspend")?),
        ScenarioCommand::Resume { id } => print(&c.change_scenario(&id, "resume")?),
        ScenarioCommand::Revoke { id } => print(&c.change_scenario(&id, "revoke")?),
        ScenarioCommand::Closing { id } => print(&c.closing_receipt(&id)?),
    }
    Ok(())
}
