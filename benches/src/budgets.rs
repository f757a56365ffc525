//! The sandbox's per-job budgets, measured: how soon a spinning guest ends its job under the
//! default limits, and what a job's CPU time costs per unit of fuel it is charged, for plain
//! guest work and for the host's work around guests (a window query that gives each of many
//! partitions an instance of its own). Equal costs per fuel mean no work goes unmetered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, GuestLimits, JobMeter, Sandbox, TableData, TableInput, ValidatedModule,
    run_query, run_query_isolated,
};

/// A guest whose one function spins forever.
fn spinning_module() -> Vec<u8> {
    let manifest = "scalar spin(int64) -> int64";
    wat::parse_str(format!(
        r#"(module (memory (export "memory") 40)
            (data (i32.const 16) "\20\00\00\00\{len:02x}\00\00\00")
            (data (i32.const 32) "{manifest}")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const 65536)
            (func (export "tg_error") (result i32) i32.const 16)
            (func (export "tg_scalar") (param i32 i32) (result i32) (loop (br 0)) i32.const 0))"#,
        len = manifest.len()
    ))
    .expect("the spinning module is valid text")
}

/// How a job with a spinning guest ended, and after how long.
pub(crate) struct Spin {
    pub elapsed: Duration,
    pub error: String,
    pub fuel: u64,
}

pub(crate) fn spinning_guest(rt: &tokio::runtime::Runtime, sandbox: &Arc<Sandbox>) -> Spin {
    let module = sandbox
        .load(&spinning_module())
        .expect("the spinning module loads");
    let meter = Arc::new(JobMeter::new(GuestLimits::default()));
    let started = Instant::now();
    let error = rt
        .block_on(run_query(
            "SELECT spin(k) FROM t",
            &partitions(10_000, 100),
            sandbox.udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .expect_err("a spinning guest fails its job")
        .to_string();
    Spin {
        elapsed: started.elapsed(),
        error,
        fuel: meter.fuel_used(),
    }
}

/// `rows` rows of (k int64, x float64, a int64, b int64): `distinct` values of k.
pub(crate) fn partitions(rows: usize, distinct: usize) -> Vec<TableInput> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
    ]));
    let batches = (0..rows)
        .step_by(8_192)
        .map(|start| {
            let end = (start + 8_192).min(rows);
            let k = Int64Array::from_iter_values((start..end).map(|i| (i % distinct) as i64));
            let x = Float64Array::from_iter_values((start..end).map(|i| (i % 97) as f64));
            let a = Int64Array::from_iter_values((start..end).map(|i| (i as i64) * 7_919));
            let b = Int64Array::from_iter_values((start..end).map(|i| (i as i64) * 104_729 + 1));
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(k), Arc::new(x), Arc::new(a), Arc::new(b)],
            )
            .expect("columns match the schema")
        })
        .collect();
    let spec = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    };
    vec![TableInput {
        name: "t".into(),
        columns: vec![
            spec("k", ColType::Int64),
            spec("x", ColType::Float64),
            spec("a", ColType::Int64),
            spec("b", ColType::Int64),
        ],
        data: TableData::Memory(batches),
    }]
}

/// One job's CPU time and the fuel it was charged.
pub(crate) struct PerFuel {
    pub cpu_ms: u64,
    pub fuel: u64,
    pub instances: u32,
}

impl PerFuel {
    pub(crate) fn ns_per_fuel(&self) -> f64 {
        self.cpu_ms as f64 * 1e6 / self.fuel.max(1) as f64
    }
}

/// Runs `sql` as a job on threads of its own and reports its CPU time against its fuel.
pub(crate) fn cpu_per_fuel(
    rt: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
    module: &Arc<ValidatedModule>,
    sql: &str,
    tables: Vec<TableInput>,
) -> PerFuel {
    let meter = Arc::new(JobMeter::new(GuestLimits {
        fuel: u64::MAX / 2,
        max_instances: u32::MAX,
        ..GuestLimits::default()
    }));
    let (out, cost) = rt.block_on(run_query_isolated(
        sql.to_string(),
        tables,
        sandbox.udfs(module, &meter),
        EngineLimits {
            output_rows: usize::MAX,
            ..EngineLimits::default()
        },
        std::future::pending(),
    ));
    out.expect("the benchmark job runs");
    PerFuel {
        cpu_ms: cost.cpu_ms,
        fuel: meter.fuel_used(),
        instances: meter.instances_created(),
    }
}
