//! The SQL surface of a job, as data: `tests/sql/*.slt` lists accepted and refused queries over
//! a granted schema with the refusal each must get.

use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use tidegate_policy::{ColumnSpec, ColumnTag, DataType as ColType, SensitiveType};
use tidegate_runtime::{EngineLimits, TableData, TableInput, run_query};

fn visits() -> Vec<TableInput> {
    let ids = [
        "11010519491231002X",
        "110105194912310021",
        "11010519491231002X",
    ];
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("resident_id", DataType::Utf8, true),
            Field::new("spot", DataType::Utf8, true),
            Field::new("spend", DataType::Float64, true),
            Field::new("__tg_entity", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(StringArray::from(vec![
                "West Lake",
                "Grand Canal",
                "West Lake",
            ])),
            Arc::new(Float64Array::from(vec![12.5, 30.0, 7.25])),
            Arc::new(StringArray::from(ids.to_vec())),
        ],
    )
    .unwrap();
    let spec = |name: &str, data_type, tags: Vec<ColumnTag>| ColumnSpec {
        name: name.into(),
        data_type,
        tags,
    };
    vec![TableInput {
        name: "visits".into(),
        columns: vec![
            spec(
                "resident_id",
                ColType::Utf8,
                vec![ColumnTag::Pii(SensitiveType::ResidentId), ColumnTag::Entity],
            ),
            spec("spot", ColType::Utf8, vec![ColumnTag::Dimension]),
            spec("spend", ColType::Float64, vec![ColumnTag::Sensitive]),
        ],
        data: TableData::Memory(vec![batch]),
    }]
}

#[test]
fn every_query_in_the_slt_files_gets_the_outcome_it_lists() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/confinement.slt"))
        .unwrap();
    let tables = visits();
    let mut checked = 0;
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let Some((head, sql)) = lines.split_first() else {
            continue;
        };
        let sql = sql.join("\n");
        let outcome = rt.block_on(run_query(&sql, &tables, vec![], EngineLimits::default()));
        match head.strip_prefix("query ") {
            Some("ok") => {
                assert!(
                    outcome.is_ok(),
                    "{sql}\nexpected to run, got: {}",
                    outcome.unwrap_err()
                );
            }
            Some(expect) if expect.starts_with("error ") => {
                let wanted = &expect["error ".len()..];
                let err = outcome.err().unwrap_or_else(|| {
                    panic!("{sql}\nexpected an error containing `{wanted}`, it ran")
                });
                assert!(
                    err.to_string().contains(wanted),
                    "{sql}\nexpected `{wanted}`, got: {err}"
                );
            }
            _ => panic!("a block starts with `query ok` or `query error TEXT`: {head}"),
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} queries were checked");
}
