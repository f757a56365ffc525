//! Guest table functions (whole-model jobs): a model that must see every row before it writes
//! one, called from SQL over a job's table, and the ways it can be misused.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, Error, GuestLimits, JobMeter, Sandbox, TableData, TableInput, run_query,
};
use tidegate_server::MODEL_UDF_WASM;

use crate::common::abi_module;

/// `rows` visits: a spend (every 10th NULL) and one of three spots, in 8,192-row batches.
fn visits(rows: usize) -> Vec<TableInput> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("spend", DataType::Float64, true),
        Field::new("spot", DataType::Utf8, true),
    ]));
    let batches = (0..rows)
        .collect::<Vec<_>>()
        .chunks(8_192)
        .map(|chunk| {
            let spend: Float64Array = chunk
                .iter()
                .map(|i| (i % 10 != 0).then_some((i % 200) as f64))
                .collect();
            let spot: StringArray = chunk
                .iter()
                .map(|i| Some(["West Lake", "Old Street", "Quiet Pond"][i % 3]))
                .collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(spend), Arc::new(spot)]).unwrap()
        })
        .collect();
    let col = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    };
    vec![TableInput {
        name: "visits".into(),
        columns: vec![col("spend", ColType::Float64), col("spot", ColType::Utf8)],
        data: TableData::Memory(batches),
    }]
}

async fn query(sql: &str, rows: usize) -> Result<Vec<RecordBatch>, Error> {
    let sandbox = Arc::new(Sandbox::new()?);
    let module = sandbox.load(MODEL_UDF_WASM)?;
    let meter = Arc::new(JobMeter::new(GuestLimits::default()));
    Ok(run_query(
        sql,
        &visits(rows),
        sandbox.udfs(&module, &meter),
        EngineLimits::default(),
    )
    .await?
    .batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_sees_every_row_before_it_writes_and_sql_aggregates_its_output() {
    let rows = 30_000;
    let out = query(
        "SELECT label, count(*) AS n, count(z) AS scored, avg(z) AS mean_z
         FROM standardize('visits', 'spend', 'spot') GROUP BY label ORDER BY label",
        rows,
    )
    .await
    .unwrap();
    let b = &out[0];
    let labels: Vec<&str> = b.column(0).as_string::<i32>().iter().flatten().collect();
    assert_eq!(labels, ["Old Street", "Quiet Pond", "West Lake"]);
    let n: i64 = b
        .column(1)
        .as_primitive::<Int64Type>()
        .iter()
        .flatten()
        .sum();
    let scored: i64 = b
        .column(2)
        .as_primitive::<Int64Type>()
        .iter()
        .flatten()
        .sum();
    assert_eq!(n, rows as i64, "one output row per input row");
    assert_eq!(
        scored,
        rows as i64 - rows as i64 / 10,
        "NULL spends stay NULL"
    );
    // z-scores over the whole table average to 0: the model saw all of it at once.
    let total: f64 = out
        .iter()
        .flat_map(|b| {
            let m = b.column(3).as_primitive::<Float64Type>().clone();
            let c = b.column(2).as_primitive::<Int64Type>().clone();
            (0..b.num_rows()).map(move |i| m.value(i) * c.value(i) as f64)
        })
        .sum();
    assert!(total.abs() < 1e-6, "{total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_function_reads_only_named_granted_columns_of_the_jobs_tables() {
    let cases = [
        (
            "SELECT * FROM standardize('visits', 'spend')",
            "takes 2 input column(s), 1 given",
        ),
        (
            "SELECT * FROM standardize('elsewhere', 'spend', 'spot')",
            "no table `elsewhere` in this job",
        ),
        (
            "SELECT * FROM standardize('visits', 'mobile', 'spot')",
            "has no granted column `mobile`",
        ),
        (
            "SELECT * FROM standardize('visits', '__tg_entity', 'spot')",
            "columns named __tg* are reserved",
        ),
        (
            "SELECT * FROM standardize('visits', spend, 'spot')",
            "every argument is a quoted name",
        ),
    ];
    for (sql, reason) in cases {
        let err = query(sql, 100).await.unwrap_err().to_string();
        assert!(err.contains(reason), "{sql}: {err}");
    }
}

/// A module whose only function is `table t(float64) -> (y float64)` with the given pull body.
fn hostile_pull(pull: &str) -> Vec<u8> {
    abi_module(
        "table t(float64) -> (y float64)",
        &format!(
            r#"(func (export "tg_table_open") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_push") (param i32 i32) (result i32) i32.const 1)
            (func (export "tg_table_close") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_pull") (param i32) (result i32) {pull})"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_function_that_lies_about_its_output_fails_the_job() {
    let run = |wasm: Vec<u8>| async move {
        let sandbox = Arc::new(Sandbox::new().unwrap());
        let module = sandbox.load(&wasm).unwrap();
        let meter = Arc::new(JobMeter::new(GuestLimits::default()));
        run_query(
            "SELECT * FROM t('visits', 'spend')",
            &visits(100),
            sandbox.udfs(&module, &meter),
            EngineLimits::default(),
        )
        .await
        .unwrap_err()
        .to_string()
    };
    // Two columns where one was declared.
    let err = run(hostile_pull(
        r#"(i32.store (i32.const 1048576) (i32.const 0))
           (i32.store (i32.const 1048580) (i32.const 2))
           i32.const 1048576"#,
    ))
    .await;
    assert!(err.contains("2 columns where it declared 1"), "{err}");
    // A billion rows at once.
    let err = run(hostile_pull(
        r#"(i32.store (i32.const 1048576) (i32.const 1000000000))
           (i32.store (i32.const 1048580) (i32.const 1))
           i32.const 1048576"#,
    ))
    .await;
    assert!(err.contains("at most 1048576 are read"), "{err}");
    // A descriptor pointing past the end of memory.
    let err = run(hostile_pull("i32.const 2621436")).await;
    assert!(err.contains("outside its memory"), "{err}");
}

/// `table echo(float64) -> (y float64)`: each pull returns the batch just pushed, as it came
/// (an input batch descriptor is an output one), then nothing.
fn echo() -> Vec<u8> {
    abi_module(
        "table echo(float64) -> (y float64)",
        r#"(global $b (mut i32) (i32.const 0))
        (func (export "tg_table_open") (param i32) (result i32) i32.const 1)
        (func (export "tg_table_push") (param i32 i32) (result i32)
            (global.set $b (local.get 1)) i32.const 1)
        (func (export "tg_table_close") (param i32) (result i32) i32.const 1)
        (func (export "tg_table_pull") (param i32) (result i32) (local $at i32)
            (if (i32.eqz (global.get $b)) (then
                (i32.store (i32.const 1048576) (i32.const 0))
                (i32.store (i32.const 1048580) (i32.const 1))
                (i32.store (i32.const 1048584) (i32.const 3))
                (return (i32.const 1048576))))
            (local.set $at (global.get $b))
            (global.set $b (i32.const 0))
            (local.get $at))"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_rows_stream_out_batch_by_batch() {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(&echo()).unwrap();
    let run = |sql: &'static str| {
        let sandbox = Arc::clone(&sandbox);
        let module = Arc::clone(&module);
        async move {
            let meter = Arc::new(JobMeter::new(GuestLimits::default()));
            run_query(
                sql,
                &visits(30_000),
                sandbox.udfs(&module, &meter),
                EngineLimits::default(),
            )
            .await
            .unwrap()
            .batches
        }
    };
    // Every pushed batch comes back through its pull: the rows and their NULLs, all of them.
    let all = run(
        "SELECT count(*) AS n, count(y) AS present, sum(y) AS total FROM echo('visits', 'spend')",
    )
    .await;
    let n = all[0].column(0).as_primitive::<Int64Type>().value(0);
    let present = all[0].column(1).as_primitive::<Int64Type>().value(0);
    let total = all[0].column(2).as_primitive::<Float64Type>().value(0);
    let expected: f64 = (0..30_000)
        .filter(|i| i % 10 != 0)
        .map(|i| (i % 200) as f64)
        .sum();
    assert_eq!((n, present), (30_000, 27_000));
    assert_eq!(total, expected);
    // A LIMIT stops reading early.
    let few = run("SELECT y FROM echo('visits', 'spend') LIMIT 5").await;
    assert_eq!(few.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
}
