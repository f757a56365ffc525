//! A UDF written in C (examples/c-udf), built with zig's C compiler by `scripts/build-c-udf`:
//! the ABI is all a guest needs, whatever its language.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, GuestLimits, JobMeter, Sandbox, TableData, TableInput, run_query,
};
use tidegate_server::BENCH_UDF_WASM;

/// The C module, or None where it was not built (a plain `cargo test`); `scripts/test` builds
/// it and requires it.
fn c_module() -> Option<Vec<u8>> {
    match std::env::var("TIDEGATE_C_UDF_WASM") {
        Ok(path) => Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))),
        Err(_) if std::env::var_os("TIDEGATE_REQUIRE_C_UDF").is_some() => {
            panic!("TIDEGATE_C_UDF_WASM is not set: run scripts/build-c-udf")
        }
        Err(_) => {
            eprintln!("the C example is not built here: run scripts/test (or scripts/build-c-udf)");
            None
        }
    }
}

fn mobiles(rows: usize) -> Vec<TableInput> {
    let schema = Arc::new(Schema::new(vec![Field::new("m", DataType::Utf8, true)]));
    let batches = (0..rows)
        .collect::<Vec<_>>()
        .chunks(8_192)
        .map(|chunk| {
            let m: StringArray = chunk
                .iter()
                .map(|i| match i % 13 {
                    0 => None,
                    1 => Some("12345".to_string()),
                    2 => Some("1381234567x".to_string()),
                    _ => Some(format!("1{}{:09}", 3 + i % 7, (i * 7_919) % 1_000_000_000)),
                })
                .collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(m)]).unwrap()
        })
        .collect();
    vec![TableInput {
        name: "t".into(),
        columns: vec![ColumnSpec {
            name: "m".into(),
            data_type: ColType::Utf8,
            tags: vec![],
        }],
        data: TableData::Memory(batches),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udf_written_in_c_answers_like_the_same_function_in_rust() {
    let Some(c) = c_module() else { return };
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let c = sandbox.load(&c).unwrap();
    assert_eq!(c.functions[0].name, "c_mask_mobile");
    let rust = sandbox.load(BENCH_UDF_WASM).unwrap();
    let meter = Arc::new(JobMeter::new(GuestLimits::default()));
    let mut udfs = sandbox.udfs(&c, &meter);
    udfs.extend(sandbox.udfs(&rust, &meter));
    let out = run_query(
        "SELECT c_mask_mobile(m) AS c, mask_mobile(m) AS r FROM t",
        &mobiles(30_000),
        udfs,
        EngineLimits::default(),
    )
    .await
    .unwrap();
    let (mut rows, mut masked) = (0, 0);
    for b in &out.batches {
        let (c, r) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            // The Rust function masks any 11 ASCII characters; the C one only digits: they
            // agree wherever the Rust one sees digits.
            let digits = r.is_valid(i) && !r.value(i).contains('x');
            if digits {
                assert_eq!(c.value(i), r.value(i));
                masked += 1;
            } else {
                assert!(c.is_null(i), "row {i}");
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 30_000);
    assert!(masked > 20_000, "{masked}");
}
