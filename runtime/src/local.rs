//! A job run on this machine as the platform runs it for a scenario (`tidegate dev run
//! --scenario`): the same engine limits, plan analysis and per-subject work, then the same
//! export gate with the scenario's threshold, dominance rule, masking, size limits and privacy
//! settings, over local tables (a scenario's mocks, or files with their tags). What the
//! platform knows and this run does not: the scenario's earlier releases (the gate's memory
//! and the differencing check start empty here) and its approvals (provenance says so).

use std::sync::Arc;

use tidegate_policy::{CheckOutcome, ExportRules, Ledger, Level};

use crate::error::Result;
use crate::gate::{self, GateInput, GateOutcome};
use crate::job::{self, EngineLimits, JobOutput};
use crate::sandbox::Functions;
use crate::tables::TableInput;

/// What a local run takes of a scenario: its tables' level, its threshold and its rules.
#[derive(Debug, Clone)]
pub struct LocalScenario {
    pub level: Level,
    pub k: u64,
    pub rules: ExportRules,
    /// What the release would spend of a private scenario's budget (its noise is drawn and
    /// added as the platform would).
    pub epsilon: Option<f64>,
}

/// A local run's result and the gate's verdict on it.
#[derive(Debug)]
pub struct LocalRun {
    pub output: JobOutput,
    pub gate: GateOutcome,
}

/// Runs `sql` over `tables` as a job of `scenario` would run, and puts its result through the
/// export gate as a first export request of the scenario would be.
pub async fn run_as_scenario(
    sql: &str,
    tables: &[TableInput],
    udfs: Functions,
    scenario: &LocalScenario,
) -> Result<LocalRun> {
    tidegate_policy::check_epsilon(scenario.epsilon, scenario.rules.privacy_budget.is_some())
        .map_err(|r| crate::error::Error::BadInput(r.reason))?;
    let root = crate::crypto::DataKey::generate();
    let subjects = root.subject_key();
    let seed = subjects.seed();
    let pseudonyms = root.pseudonym_key("dev-run");
    let limits = EngineLimits {
        spill_dir: Some(std::env::temp_dir().join("tidegate-dev-spill")),
        ..job::scenario_limits(&scenario.rules, scenario.k, scenario.level, subjects)
    };
    let output = job::run_query(sql, tables, udfs, limits).await?;
    let may_dominate = output.batches.iter().any(|b| {
        b.column_by_name(crate::hidden::DOMINATED)
            .and_then(|c| arrow::array::AsArray::as_boolean_opt(c))
            .is_some_and(|c| c.true_count() > 0)
    });
    let memories: Option<Vec<gate::DatasetMemory>> = output.subject_sets.as_ref().map(|sets| {
        sets.iter()
            .map(|(table, rows)| gate::DatasetMemory {
                dataset: tables[*table].name.clone(),
                ledger: Arc::new(Ledger::new(seed)),
                value_ledger: may_dominate.then(|| Arc::new(Ledger::new(seed))),
                rows: rows.clone(),
            })
            .collect()
    });
    let rules = &scenario.rules;
    let outcome = gate::evaluate(
        &GateInput {
            level: scenario.level,
            threshold_k: scenario.k,
            shape: &output.shape,
            provenance: CheckOutcome::Pass(
                "a local run: the platform checks the scenario, its approvals and the modules' review"
                    .into(),
            ),
            max_rows: rules.max_rows.unwrap_or(crate::platform::EXPORT_MAX_ROWS),
            max_bytes: rules.max_bytes.unwrap_or(crate::platform::EXPORT_MAX_BYTES),
            masking: &rules.masking,
            privacy: rules.privacy_budget.map(|budget| gate::PrivacySpend {
                budget,
                spent: 0.0,
                epsilon: scenario.epsilon,
            }),
            earlier: &[],
            pseudonyms: Some(&pseudonyms),
            dominance: rules.dominance_rule(),
            memory: memories.as_ref().map(|datasets| gate::Memory {
                origin: "local",
                datasets,
            }),
        },
        &output.batches,
    )?;
    Ok(LocalRun {
        output,
        gate: outcome,
    })
}

/// A local table as a job of a scenario sees it: `columns` (with their tags) under their own
/// names, and the `entity` column's values as the hidden entity key, from `batches` that hold
/// at least those columns.
pub fn gated_table(
    name: &str,
    columns: Vec<tidegate_policy::ColumnSpec>,
    entity: Option<&str>,
    batches: Vec<arrow::array::RecordBatch>,
) -> Result<TableInput> {
    use arrow::datatypes::{Field, Schema};
    let missing =
        |c: &str| crate::error::Error::BadInput(format!("table {name} has no column {c}"));
    let mut shown = Vec::new();
    for b in &batches {
        let schema = b.schema();
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for c in &columns {
            let at = schema.index_of(&c.name).map_err(|_| missing(&c.name))?;
            fields.push(schema.field(at).clone());
            arrays.push(Arc::clone(b.column(at)));
        }
        if let Some(e) = entity {
            let at = schema.index_of(e).map_err(|_| missing(e))?;
            fields.push(Field::new(
                crate::hidden::ENTITY,
                schema.field(at).data_type().clone(),
                true,
            ));
            arrays.push(Arc::clone(b.column(at)));
        }
        shown.push(
            arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
                .map_err(|e| crate::error::Error::BadInput(format!("table {name}: {e}")))?,
        );
    }
    if shown.iter().all(|b| b.num_rows() == 0) {
        return Err(crate::error::Error::BadInput(format!(
            "table {name} holds no rows"
        )));
    }
    Ok(TableInput {
        name: name.to_string(),
        columns,
        data: crate::tables::TableData::Memory(shown),
    })
}
