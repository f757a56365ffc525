//! `tidegate dev run`: a job on local files with exactly the sandbox and limits of the
//! platform.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use tidegate_runtime::{EngineLimits, GuestLimits, JobMeter, Sandbox};

#[derive(Subcommand)]
pub(super) enum DevCommand {
    /// Run a query over local CSV or Parquet files, calling the given modules' functions.
    Run {
        /// A module whose functions the query may call (repeatable).
        #[arg(long = "module")]
        modules: Vec<PathBuf>,
        /// NAME=FILE: a table for the query (repeatable).
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
        #[arg(long)]
        sql: String,
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

pub(super) fn run(command: DevCommand) -> Result<()> {
    let DevCommand::Run {
        modules,
        tables,
        sql,
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
    dev_run(&modules, &tables, &sql, limits, show)
}

fn dev_run(
    modules: &[PathBuf],
    tables: &[String],
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
    let mut inputs = Vec::new();
    for t in tables {
        let (name, path) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("`{t}`: a table is NAME=FILE"))?;
        inputs.push(tidegate_runtime::local_table(name, Path::new(path))?);
    }
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    let out = rt.block_on(tidegate_runtime::run_query(
        sql,
        &inputs,
        udfs,
        EngineLimits::default(),
    ))?;
    let wall = started.elapsed();
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = show;
    for b in &out.batches {
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
    Ok(())
}
