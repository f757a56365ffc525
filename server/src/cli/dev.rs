//! `tidegate dev run`: a job on local files with exactly the sandbox and limits of the
//! platform; with `--scenario` (its mocks and policy) or `--tags` (local files and their tags),
//! also the plan analysis, per-subject work and export gate a scenario's job goes through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::RecordBatch;
use clap::Subcommand;
use serde::Deserialize;
use tidegate_policy::{ColumnSpec, ColumnTag, ExportRules, Level};
use tidegate_runtime::{
    DatasetView, EngineLimits, GuestLimits, JobMeter, LocalScenario, Sandbox, ScenarioView,
    TableInput,
};

use super::Remote;
use crate::client::decode;

#[derive(Subcommand)]
pub(super) enum DevCommand {
    /// Run a query over local CSV or Parquet files, or over a scenario's mocks, calling the
    /// given modules' functions.
    Run {
        /// A module whose functions the query may call (repeatable).
        #[arg(long = "module")]
        modules: Vec<PathBuf>,
        /// NAME=FILE: a table for the query (repeatable).
        #[arg(long = "table", required_unless_present = "scenario")]
        tables: Vec<String>,
        #[arg(long)]
        sql: String,
        /// Run as a job of this scenario runs on the platform: over mocks of the datasets it
        /// grants (made from their providers' declared metadata), with its level, threshold
        /// and export rules, through the export gate (needs --url and --token).
        #[arg(long, conflicts_with_all = ["tables", "tags"])]
        scenario: Option<String>,
        /// With --table: a JSON file of the tables' tags and the rules to apply, e.g.
        /// {"level": "L2", "k": 10, "export_rules": {}, "tables": {"visits":
        /// {"resident_id": ["pii:resident_id", "entity"], "spot": ["dimension"]}}}
        #[arg(long)]
        tags: Option<PathBuf>,
        /// Rows of each mock, with --scenario.
        #[arg(long, default_value_t = 10_000)]
        mock_rows: u64,
        /// The mocks' seed, with --scenario.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// What the release would spend of a private scenario's budget: its noise is drawn
        /// and added as the platform would.
        #[arg(long)]
        epsilon: Option<f64>,
        /// Fuel budget of the job's guests.
        #[arg(long, default_value_t = GuestLimits::default().fuel)]
        fuel: u64,
        /// Memory cap per guest instance, in MiB.
        #[arg(long, default_value_t = GuestLimits::default().memory_bytes >> 20)]
        memory_mb: usize,
        /// Time limit of one guest call, in milliseconds.
        #[arg(long, default_value_t = GuestLimits::default().call_timeout_ms)]
        call_timeout_ms: u64,
        /// Memory of all the job's guest instances together, in MiB.
        #[arg(long, default_value_t = GuestLimits::default().job_memory_bytes >> 20)]
        job_memory_mb: usize,
        /// Rows of the result to print.
        #[arg(long, default_value_t = 50)]
        show: usize,
    },
}

/// A tag file: the tables' tags and the scenario's rules a local run applies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagFile {
    level: Level,
    /// The threshold; at least the level's default, as a scenario's is.
    #[serde(default)]
    k: Option<u64>,
    #[serde(default)]
    export_rules: ExportRules,
    /// By table, by column: its tags.
    tables: BTreeMap<String, BTreeMap<String, Vec<ColumnTag>>>,
}

pub(super) fn run(command: DevCommand, remote: &Remote) -> Result<()> {
    let DevCommand::Run {
        modules,
        tables,
        sql,
        scenario,
        tags,
        mock_rows,
        seed,
        epsilon,
        fuel,
        memory_mb,
        call_timeout_ms,
        job_memory_mb,
        show,
    } = command;
    let limits = GuestLimits {
        fuel,
        memory_bytes: memory_mb << 20,
        call_timeout_ms,
        job_memory_bytes: job_memory_mb << 20,
        ..GuestLimits::default()
    };
    let (inputs, mut scenario) = match (scenario, tags) {
        (Some(id), _) => {
            let (inputs, scenario) = scenario_mocks(remote, &id, mock_rows, seed)?;
            (inputs, Some(scenario))
        }
        (None, Some(tags)) => {
            let (inputs, scenario) = tagged_files(&tables, &tags)?;
            (inputs, Some(scenario))
        }
        (None, None) => (plain_files(&tables)?, None),
    };
    match scenario.as_mut() {
        Some(s) => s.epsilon = epsilon,
        None if epsilon.is_some() => bail!("--epsilon takes --scenario or --tags"),
        None => {}
    }
    dev_run(&modules, inputs, scenario, &sql, limits, show)
}

/// The local files as they are: no tags, so no gate.
fn plain_files(tables: &[String]) -> Result<Vec<TableInput>> {
    tables
        .iter()
        .map(|t| {
            let (name, path) = t
                .split_once('=')
                .ok_or_else(|| anyhow!("`{t}`: a table is NAME=FILE"))?;
            Ok(tidegate_runtime::local_table(name, Path::new(path))?)
        })
        .collect()
}

/// The local files with the tags and rules of a tag file.
fn tagged_files(tables: &[String], tags: &Path) -> Result<(Vec<TableInput>, LocalScenario)> {
    let text =
        std::fs::read_to_string(tags).with_context(|| format!("cannot read {}", tags.display()))?;
    let file: TagFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a tag file", tags.display()))?;
    let mut inputs = Vec::new();
    for t in plain_files(tables)? {
        let declared = file
            .tables
            .get(&t.name)
            .ok_or_else(|| anyhow!("{} names no tags for table {}", tags.display(), t.name))?;
        for column in declared.keys() {
            if !t.columns.iter().any(|c| &c.name == column) {
                bail!("table {} has no column {column}", t.name);
            }
        }
        let columns: Vec<ColumnSpec> = t
            .columns
            .iter()
            .map(|c| ColumnSpec {
                tags: declared.get(&c.name).cloned().unwrap_or_default(),
                ..c.clone()
            })
            .collect();
        let entity = columns
            .iter()
            .find(|c| c.has_tag(ColumnTag::Entity))
            .map(|c| c.name.clone());
        let tidegate_runtime::TableData::Memory(batches) = t.data else {
            bail!("table {} is not in memory", t.name);
        };
        inputs.push(tidegate_runtime::gated_table(
            &t.name,
            columns,
            entity.as_deref(),
            batches,
        )?);
    }
    let scenario = LocalScenario {
        level: file.level,
        k: tidegate_policy::scenario_threshold(file.k, file.level),
        rules: file.export_rules,
        epsilon: None,
    };
    Ok((inputs, scenario))
}

/// A scenario's granted datasets as mocks, and its policy, from the server.
fn scenario_mocks(
    remote: &Remote,
    id: &str,
    rows: u64,
    seed: u64,
) -> Result<(Vec<TableInput>, LocalScenario)> {
    let client = remote.client()?;
    let scenario: ScenarioView = decode(&client.get_scenario(id)?, "a scenario")?;
    let datasets: Vec<DatasetView> = decode(&client.list_datasets()?, "the datasets")?;
    let mut level = Level::L1;
    let mut inputs = Vec::new();
    for grant in &scenario.grants {
        let d = datasets
            .iter()
            .find(|d| d.name == grant.dataset || d.id == grant.dataset)
            .ok_or_else(|| anyhow!("dataset {} is not visible to you", grant.dataset))?;
        level = level.max(d.level);
        let bytes = client.mock_dataset(id, &d.name, rows, seed)?;
        let batches: Vec<RecordBatch> = tidegate_runtime::read_parquet(bytes.into(), None)?;
        let columns: Vec<ColumnSpec> = d
            .columns
            .iter()
            .filter(|c| grant.columns.contains(&c.name))
            .cloned()
            .collect();
        let entity = d
            .columns
            .iter()
            .find(|c| c.has_tag(ColumnTag::Entity))
            .map(|c| c.name.clone());
        inputs.push(tidegate_runtime::gated_table(
            &d.name,
            columns,
            entity.as_deref(),
            batches,
        )?);
    }
    eprintln!(
        "running as a job of scenario {} over mocks of {} ({rows} rows each, seed {seed}): not real data",
        scenario.id,
        inputs
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((
        inputs,
        LocalScenario {
            level,
            k: scenario.k,
            rules: scenario.export_rules,
            epsilon: None,
        },
    ))
}

fn dev_run(
    modules: &[PathBuf],
    inputs: Vec<TableInput>,
    scenario: Option<LocalScenario>,
    sql: &str,
    limits: GuestLimits,
    show: usize,
) -> Result<()> {
    let sandbox = Arc::new(Sandbox::new()?);
    let meter = Arc::new(JobMeter::new(limits));
    let mut udfs = tidegate_runtime::Functions::default();
    for m in modules {
        let wasm = std::fs::read(m).with_context(|| format!("cannot read {}", m.display()))?;
        let module = sandbox
            .load(&wasm)
            .map_err(|e| anyhow!("{}: {e}", m.display()))?;
        udfs.extend(sandbox.udfs(&module, &meter));
    }
    // The runtime's own functions exist here too: a job is a job wherever it runs. Local
    // pseudonyms use a key made for this run alone.
    udfs.scalars
        .extend(tidegate_runtime::desensitization_udfs());
    udfs.scalars.push(tidegate_runtime::pseudonym_udf(
        tidegate_runtime::DataKey::generate().pseudonym_key("dev-run"),
    ));
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    let (batches, gate) = match &scenario {
        Some(s) => {
            let run = rt.block_on(tidegate_runtime::run_as_scenario(sql, &inputs, udfs, s))?;
            (run.output.batches, Some(run.gate))
        }
        None => {
            let out = rt.block_on(tidegate_runtime::run_query(
                sql,
                &inputs,
                udfs,
                EngineLimits::default(),
            ))?;
            (out.batches, None)
        }
    };
    let wall = started.elapsed();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = show;
    for b in &batches {
        if left == 0 {
            break;
        }
        let keep: Vec<usize> = (0..b.num_columns())
            .filter(|i| !tidegate_policy::hidden::is_reserved(b.schema().field(*i).name()))
            .collect();
        let b = b.project(&keep)?;
        let take = left.min(b.num_rows());
        shown.push(b.slice(0, take));
        left -= take;
    }
    // Values a module computed are its text: written out, never obeyed by the terminal.
    let table = arrow::util::pretty::pretty_format_batches(&shown)?.to_string();
    for line in table.lines() {
        println!("{}", tidegate_runtime::defuse(line, 1 << 20));
    }
    println!("rows: {rows} (showing {})", rows.min(show));
    println!(
        "resources: fuel {}, guest calls {}, peak guest memory {} bytes, guest output {} bytes, wall {} ms",
        meter.fuel_used(),
        meter.calls(),
        meter.peak_memory(),
        meter.output_bytes(),
        wall.as_millis()
    );
    if let Some(gate) = gate {
        let r = &gate.report;
        println!(
            "export gate: {} (threshold k = {}, {} of {} groups suppressed, {} rows would be released)",
            if r.passed() { "PASSED" } else { "REFUSED" },
            r.threshold_k,
            r.groups_suppressed,
            r.groups_total,
            r.rows_released
        );
        for c in &r.checks {
            let verdict = match (c.passed, c.flagged) {
                (true, false) => "pass",
                (true, true) => "flag",
                (false, _) => "FAIL",
            };
            println!(
                "  {verdict:4}  {}: {}",
                c.name,
                tidegate_runtime::defuse(&c.detail, 1 << 12)
            );
        }
        println!("what the release would hold:");
        let released = arrow::util::pretty::pretty_format_batches(&gate.released)?.to_string();
        for line in released.lines().take(show + 4) {
            println!("{}", tidegate_runtime::defuse(line, 1 << 20));
        }
    }
    Ok(())
}
