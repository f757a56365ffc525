//! Guest aggregate functions: called from SQL by name, grouped, merged across partitions, and
//! as hostile as any other guest code.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, Error, GuestLimits, JobMeter, Sandbox, TableData, TableInput, run_query,
};
use tidegate_server::AGGREGATE_UDF_WASM;

use crate::common::abi_module;

/// `rows` rows of (k utf8, x float64, n int64) in batches of 8,192: 7 groups, x from 0.5 up.
fn table(rows: usize) -> Vec<TableInput> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("x", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let batches = (0..rows)
        .collect::<Vec<_>>()
        .chunks(8_192)
        .map(|chunk| {
            let k: StringArray = chunk.iter().map(|i| Some(format!("g{}", i % 7))).collect();
            // Every 11th value is NULL: aggregates skip it.
            let x: Float64Array = chunk
                .iter()
                .map(|i| (i % 11 != 0).then_some(0.5 + (i % 97) as f64))
                .collect();
            let n: Int64Array = chunk
                .iter()
                .map(|i| Some((*i as i64 * 37) % 1_001))
                .collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(x), Arc::new(n)])
                .unwrap()
        })
        .collect();
    let col = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    };
    vec![TableInput {
        name: "t".into(),
        columns: vec![
            col("k", ColType::Utf8),
            col("x", ColType::Float64),
            col("n", ColType::Int64),
        ],
        data: TableData::Memory(batches),
    }]
}

fn limits() -> GuestLimits {
    GuestLimits {
        fuel: 20_000_000_000,
        call_timeout_ms: 1_000,
        ..GuestLimits::default()
    }
}

async fn query(wasm: &[u8], sql: &str, rows: usize) -> Result<Vec<RecordBatch>, Error> {
    let sandbox = Arc::new(Sandbox::new()?);
    let module = sandbox.load(wasm)?;
    let meter = Arc::new(JobMeter::new(limits()));
    let out = run_query(
        sql,
        &table(rows),
        sandbox.udfs(&module, &meter),
        EngineLimits::default(),
    )
    .await?;
    Ok(out.batches)
}

fn floats(batches: &[RecordBatch], col: usize) -> Vec<Option<f64>> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(col)
                .as_primitive::<Float64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn close(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
            (None, None) => true,
            _ => false,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_aggregate_gives_per_group_what_the_native_query_gives() {
    let rows = 50_000;
    let guest = query(
        AGGREGATE_UDF_WASM,
        "SELECT k, sum_sq(x) AS s, geo_mean(x) AS g, sum_sq(x) FILTER (WHERE n > 500) AS f,
                weighted_mean(x, n) AS w
         FROM t GROUP BY k ORDER BY k",
        rows,
    )
    .await
    .unwrap();
    let native = query(
        AGGREGATE_UDF_WASM,
        "SELECT k, sum(x * x) AS s, exp(avg(ln(x))) AS g, sum(x * x) FILTER (WHERE n > 500) AS f,
                sum(x * n) / sum(CASE WHEN x IS NOT NULL THEN n END) AS w
         FROM t GROUP BY k ORDER BY k",
        rows,
    )
    .await
    .unwrap();
    assert_eq!(guest.iter().map(RecordBatch::num_rows).sum::<usize>(), 7);
    for col in 1..=4 {
        assert!(
            close(&floats(&guest, col), &floats(&native, col)),
            "column {col}: {:?} vs {:?}",
            floats(&guest, col),
            floats(&native, col)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_aggregate_without_group_by_and_beside_a_guest_scalar() {
    let guest = query(
        AGGREGATE_UDF_WASM,
        "SELECT sum_sq(double(x)) AS s, largest(n) AS m FROM t",
        20_000,
    )
    .await
    .unwrap();
    let native = query(
        AGGREGATE_UDF_WASM,
        "SELECT sum((2 * x) * (2 * x)) AS s, max(n) AS m FROM t",
        20_000,
    )
    .await
    .unwrap();
    assert!(close(&floats(&guest, 0), &floats(&native, 0)));
    let ints = |b: &[RecordBatch]| b[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!(ints(&guest), ints(&native));
    // An empty input still has one group: the function's value for no rows.
    let empty = query(
        AGGREGATE_UDF_WASM,
        "SELECT sum_sq(x) AS s, largest(n) AS m FROM t WHERE n < 0",
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(floats(&empty, 0), vec![Some(0.0)]);
    assert!(empty[0].column(1).is_null(0));
}

/// An aggregate-only module whose `tg_agg_*` bodies are given; the manifest declares
/// `aggregate f(float64) -> float64 state(float64)`.
fn hostile(update: &str, state: &str, evaluate: &str) -> Vec<u8> {
    abi_module(
        "aggregate f(float64) -> float64 state(float64)",
        &format!(
            r#"(func (export "tg_agg_update") (param $fn i32) (param $b i32) (param $g i32) (param $total i32) (result i32) {update})
            (func (export "tg_agg_merge") (param i32 i32 i32 i32) (result i32) i32.const 1)
            (func (export "tg_agg_state") (param i32) (result i32) {state})
            (func (export "tg_agg_evaluate") (param i32) (result i32) {evaluate})
            (func (export "tg_agg_reset") (param i32) (result i32) i32.const 1)"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_aggregates_fail_with_a_clear_error_and_nothing_of_theirs_is_used() {
    let sql = "SELECT k, f(x) AS y FROM t GROUP BY k";
    // A state of one group where there are seven: refused before any value is used.
    // (Whether DataFusion asks for the state depends on its plan: both answers are short.)
    let short = hostile(
        "i32.const 1",
        // n_rows 1, n_cols 1, then a float64 column descriptor of 1 row at 2 MiB.
        r#"(i32.store (i32.const 1048576) (i32.const 1))
           (i32.store (i32.const 1048580) (i32.const 1))
           (i32.store (i32.const 1048584) (i32.const 3))
           (i32.store (i32.const 1048588) (i32.const 1))
           (i32.store (i32.const 1048604) (i32.const 2097152))
           (i32.store (i32.const 1048608) (i32.const 8))
           i32.const 1048576"#,
        r#"(i32.store (i32.const 1048584) (i32.const 3))
           (i32.store (i32.const 1048588) (i32.const 1))
           (i32.store (i32.const 1048604) (i32.const 2097152))
           (i32.store (i32.const 1048608) (i32.const 8))
           i32.const 1048584"#,
    );
    let err = query(&short, sql, 10_000).await.unwrap_err().to_string();
    assert!(
        err.contains("returned a state of 1 groups and 1 columns where 7 and 1 were due")
            || err.contains("returned 1 rows for a batch of 7"),
        "{err}"
    );
    // An evaluate whose data pointer runs off the end of memory.
    let wild = hostile(
        "i32.const 1",
        // One group whose float64 lies 4 bytes before the end of the 2.5 MiB memory.
        r#"(i32.store (i32.const 1048576) (i32.const 1))
           (i32.store (i32.const 1048580) (i32.const 1))
           (i32.store (i32.const 1048584) (i32.const 3))
           (i32.store (i32.const 1048588) (i32.const 1))
           (i32.store (i32.const 1048604) (i32.const 2621436))
           (i32.store (i32.const 1048608) (i32.const 8))
           i32.const 1048576"#,
        r#"(i32.store (i32.const 1048584) (i32.const 3))
           (i32.store (i32.const 1048588) (i32.const 1))
           (i32.store (i32.const 1048604) (i32.const 2621436))
           (i32.store (i32.const 1048608) (i32.const 8))
           i32.const 1048584"#,
    );
    let err = query(&wild, "SELECT f(x) FROM t", 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the guest returned a buffer outside its memory"),
        "{err}"
    );
    // A trap halfway through an update, and an endless loop: the job fails, the host lives.
    let trap = hostile("unreachable", "i32.const 0", "i32.const 0");
    let err = query(&trap, sql, 10_000).await.unwrap_err().to_string();
    assert!(err.contains("trapped"), "{err}");
    let spin = hostile(
        "(loop $l (br $l)) i32.const 1",
        "i32.const 0",
        "i32.const 0",
    );
    let err = query(&spin, sql, 10_000).await.unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    // An error reported by the guest is not quoted: its text could carry data.
    let refuses = hostile("i32.const 0", "i32.const 0", "i32.const 0");
    let err = query(&refuses, sql, 10_000).await.unwrap_err().to_string();
    assert!(err.contains("function `f` reported an error"), "{err}");
    // And the good module still answers.
    let good = query(
        AGGREGATE_UDF_WASM,
        "SELECT k, sum_sq(x) FROM t GROUP BY k",
        10_000,
    )
    .await
    .unwrap();
    assert_eq!(good.iter().map(RecordBatch::num_rows).sum::<usize>(), 7);
}

#[test]
fn a_module_declaring_aggregates_must_export_the_aggregate_abi() {
    let wasm = abi_module("aggregate f(float64) -> float64 state(float64)", "");
    let err = Sandbox::new().unwrap().load(&wasm).unwrap_err().to_string();
    assert!(
        err.contains("required export `tg_agg_update` is missing"),
        "{err}"
    );
}
