//! Mock datasets (the scientist's loop): a stand-in for each dataset a scenario grants, made
//! from the metadata its provider declared with the import, never from its values.

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use tidegate_policy::{SensitiveType, scan_value};
use tidegate_server::visitor_csv;

use crate::common::{ROWS, active_scenario, setup};

/// The mock's rows and its file's key-value metadata, as any Parquet reader sees them.
fn read(bytes: Vec<u8>) -> (Vec<RecordBatch>, Vec<(String, String)>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|kv| (kv.key, kv.value.unwrap_or_default()))
        .collect();
    let batches = builder
        .build()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (batches, metadata)
}

fn texts(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(column).unwrap().as_string::<i32>().clone();
            (0..c.len())
                .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_scientist_gets_a_mock_of_the_granted_columns_made_from_declared_metadata_only() {
    let (env, sid, _) = active_scenario();
    let bytes = env
        .world
        .scientist
        .mock_dataset(&sid, "visits", 2_000, 7)
        .unwrap();
    let (batches, metadata) = read(bytes.clone());
    assert!(
        metadata.contains(&("tidegate.mock".to_string(), "true".to_string())),
        "the file says it is a mock: {metadata:?}"
    );
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["resident_id", "spot", "visit_date", "spend"],
        "the granted columns (the entity key among them), never the mobile number"
    );
    assert_eq!(schema.field(2).data_type(), &DataType::Date32);
    assert_eq!(
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        2_000
    );

    // Identifiers are well formed, and none is a real one.
    let ids = texts(&batches, "resident_id");
    let real: BTreeSet<String> = visitor_csv(ROWS)
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().flatten().collect();
    assert!(
        distinct.len() <= 400 && distinct.len() > 100,
        "about the 400 subjects declared: {}",
        distinct.len()
    );
    for id in &ids {
        let id = id.as_ref().expect("an entity key is never NULL");
        assert!(
            scan_value(id)
                .iter()
                .any(|d| d.kind == SensitiveType::ResidentId && d.certain),
            "{id} is a well-formed resident ID with its check digit"
        );
        assert!(!real.contains(id), "a real resident ID in the mock");
    }
    // Categories and ranges as declared.
    let spots: BTreeSet<String> = texts(&batches, "spot").into_iter().flatten().collect();
    assert!(spots.len() > 5 && spots.iter().all(|s| s == "Moon Cave" || s.contains(' ')));
    let spend: Vec<Option<f64>> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("spend")
                .unwrap()
                .as_primitive::<Float64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(spend.iter().flatten().all(|v| (0.0..=800.0).contains(v)));
    let nulls = spend.iter().filter(|v| v.is_none()).count();
    assert!((10..=90).contains(&nulls), "about 2% NULL: {nulls}");

    // The same seed gives the same mock; another gives another.
    let again = env
        .world
        .scientist
        .mock_dataset(&sid, "visits", 2_000, 7)
        .unwrap();
    assert_eq!(again, bytes);
    let other = env
        .world
        .scientist
        .mock_dataset(&sid, "visits", 2_000, 8)
        .unwrap();
    assert_ne!(texts(&read(other).0, "resident_id"), ids);
}

#[test]
fn a_mock_is_for_the_scenarios_own_scientists_and_its_granted_datasets_only() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    // The provider is of another org than the scenario's unit.
    let e = w
        .provider
        .mock_dataset(&sid, "visits", 10, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(404)"), "{e}");
    // A dataset the scenario does not grant is not found, whether or not it exists.
    w.provider
        .import_dataset(
            json!({ "name": "parking", "level": "L2", "format": "csv",
                    "columns": [{ "name": "plate", "tags": ["entity"] }] }),
            b"plate,lot\nA1,north\nB2,south\n",
        )
        .unwrap();
    for dataset in ["parking", "nothing_here"] {
        let e = w
            .scientist
            .mock_dataset(&sid, dataset, 10, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(404)"), "{dataset}: {e}");
    }
    // Sizes within the policy's bounds.
    for rows in [0, 1_000_001] {
        let e = w
            .scientist
            .mock_dataset(&sid, "visits", rows, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(400)") && e.contains("1000000"), "{rows}: {e}");
    }
}

#[test]
fn an_import_refuses_mock_metadata_that_would_publish_identifiers_or_cannot_hold() {
    let env = setup(true);
    let w = &env.world;
    let import = |mock: serde_json::Value| {
        w.provider
            .import_dataset(
                json!({ "name": "people", "level": "L2", "format": "csv",
                        "columns": [
                            { "name": "resident_id", "tags": ["pii:resident_id", "entity"] },
                            mock,
                        ] }),
                b"resident_id,age\n11010519491231002X,70\n",
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let listed = w
        .provider
        .import_dataset(
            json!({ "name": "people", "level": "L2", "format": "csv",
                    "columns": [{ "name": "resident_id", "tags": ["pii:resident_id", "entity"],
                                  "mock": { "categories": ["11010519491231002X"] } }] }),
            b"resident_id,age\n11010519491231002X,70\n",
        )
        .unwrap_err()
        .to_string();
    assert!(
        listed.contains("(400)") && listed.contains("resident_id"),
        "{listed}"
    );
    let e = import(json!({ "name": "age", "mock": { "min": 90, "max": 10 } }));
    assert!(e.contains("(400)") && e.contains("age"), "{e}");
    let e = import(json!({ "name": "age", "mock": { "null_rate": 1.5 } }));
    assert!(e.contains("(400)") && e.contains("age"), "{e}");
    let e = import(json!({ "name": "age", "mock": { "colour": "red" } }));
    assert!(e.contains("(400)"), "{e}");
}
