//! Real tables: date-times and exact decimals, from CSV and from Parquet, through import, a job
//! with a module's functions, the gate and the signed bundle, with their types kept.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, DictionaryArray, Float32Array, Int8Array,
    RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
use serde_json::{Value, json};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{TableData, TableInput, verify_bundle};
use tidegate_server::VISITOR_UDF_WASM;

use crate::common::{Env, OUT_DATA, run_module, scalar_module, setup};

/// Three spots, 200 payers, three payments each: a price to the cent and a time to the second.
fn payments_csv() -> (String, [i128; 3]) {
    let mut csv = String::from("payer,spot,paid_at,price\n");
    let mut totals = [0i128; 3];
    for i in 0..600 {
        let payer = i % 200;
        let spot = payer % 3;
        let cents = 1_000 + (i as i128 * 37) % 9_000;
        totals[spot] += cents;
        csv.push_str(&format!(
            "P{payer:04},{},2026-05-{:02}T{:02}:{:02}:00,{}.{:02}\n",
            ["West Lake", "Old Street", "Quiet Pond"][spot],
            1 + i % 28,
            8 + i % 12,
            i % 60,
            cents / 100,
            cents % 100
        ));
    }
    (csv, totals)
}

/// The same kind of table as a Parquet file written by another tool: nanosecond times in
/// +08:00, a dictionary-encoded spot, a decimal(12,2) price, an int8 party size and a float32
/// rating.
fn tickets_parquet() -> Vec<u8> {
    let n = 600usize;
    let spots = StringArray::from(vec!["West Lake", "Old Street", "Quiet Pond"]);
    let keys: arrow::array::Int32Array = (0..n).map(|i| Some(((i % 200) % 3) as i32)).collect();
    let spot = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(spots)).unwrap();
    let payer: StringArray = (0..n).map(|i| Some(format!("T{:04}", i % 200))).collect();
    let at = TimestampNanosecondArray::from(
        (0..n)
            .map(|i| 1_779_013_425_000_000_000 + i as i64 * 3_600_000_001_000)
            .collect::<Vec<_>>(),
    )
    .with_timezone("+08:00");
    let price = Decimal128Array::from(
        (0..n)
            .map(|i| 1_000 + (i as i128 * 37) % 9_000)
            .collect::<Vec<_>>(),
    )
    .with_precision_and_scale(12, 2)
    .unwrap();
    let party: Int8Array = (0..n).map(|i| Some((1 + i % 5) as i8)).collect();
    let rating: Float32Array = (0..n).map(|i| Some((i % 5) as f32 + 0.5)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(payer),
        Arc::new(spot),
        Arc::new(at),
        Arc::new(price),
        Arc::new(party),
        Arc::new(rating),
    ];
    let schema = Arc::new(Schema::new(
        ["payer", "spot", "paid_at", "price", "party", "rating"]
            .iter()
            .zip(&columns)
            .map(|(name, c)| Field::new(*name, c.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

fn types_of(dataset: &Value) -> Vec<(String, String)> {
    dataset["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["data_type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Imports both tables, opens a scenario over them whose export rules round `rounded` to
/// whole units, and approves the visitor module.
fn world_with_tables() -> (Env, String, String, [i128; 3]) {
    let env = setup(true);
    let w = &env.world;
    let (csv, totals) = payments_csv();
    let payments = w
        .provider
        .import_dataset(
            json!({
                "name": "payments", "level": "L2", "format": "csv",
                "columns": [
                    { "name": "payer", "tags": ["entity"] },
                    { "name": "spot", "tags": ["dimension"] },
                    { "name": "price", "data_type": "decimal(12,2)", "tags": ["sensitive"] },
                ],
            }),
            csv.as_bytes(),
        )
        .unwrap();
    assert_eq!(
        types_of(&payments),
        pairs(&[
            ("payer", "utf8"),
            ("spot", "utf8"),
            // Inferred from whole seconds, stored to the microsecond: a fraction further down
            // the file still fits.
            ("paid_at", "timestamp(us)"),
            ("price", "decimal(12,2)"),
        ])
    );
    let tickets = w
        .provider
        .upload_dataset(
            &json!({
                "name": "tickets", "level": "L2", "format": "parquet",
                "columns": [
                    { "name": "payer", "tags": ["entity"] },
                    { "name": "spot", "tags": ["dimension"] },
                    { "name": "paid_at", "tags": ["dimension"] },
                ],
            }),
            &mut std::io::Cursor::new(tickets_parquet()),
        )
        .unwrap();
    assert_eq!(
        types_of(&tickets),
        pairs(&[
            ("payer", "utf8"),
            ("spot", "utf8"),
            ("paid_at", "timestamptz(us, +08:00)"),
            ("price", "decimal(12,2)"),
            ("party", "int32"),
            ("rating", "float64"),
        ])
    );
    let today = time::OffsetDateTime::now_utc().date();
    let applied = w
        .scientist
        .apply_scenario(&json!({
            "name": "Ticket revenue",
            "key_area": "culture and tourism",
            "purpose": "revenue and busy hours per scenic spot",
            "public_interest": true,
            "grants": [
                { "dataset": "payments", "columns": ["payer", "spot", "paid_at", "price"] },
                { "dataset": "tickets", "columns": ["payer", "spot", "paid_at", "price", "party"] },
            ],
            "term_start": (today - time::Duration::days(1)).to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
            "planned_products": ["revenue per spot"],
            "export_rules": { "masking": { "rounded": "round:0" } },
        }))
        .unwrap();
    let sid = applied["id"].as_str().unwrap().to_string();
    w.admin.approve_scenario(&sid).unwrap();
    let active = w.provider.approve_scenario(&sid).unwrap();
    assert_eq!(active["state"], "active", "{active}");
    let (module, _) = w.publish_module(&sid, VISITOR_UDF_WASM).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    (env, sid, hash, totals)
}

/// Runs `sql`, has the export approved and downloads its bundle; the bundle's Parquet.
fn released_parquet(env: &Env, sid: &str, sql: &str, modules: &[String]) -> Vec<RecordBatch> {
    let job = env.world.scientist.submit_job(sid, sql, modules).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    let export = env
        .world
        .scientist
        .request_export(job["id"].as_str().unwrap())
        .unwrap();
    let eid = export["id"].as_str().unwrap();
    let reviewed = env
        .world
        .reviewer
        .review_export(eid, "approve", "types kept")
        .unwrap();
    assert_eq!(reviewed["state"], "approved", "{reviewed}");
    let dir = env.dir.path().join(format!("bundle-{eid}"));
    env.world.scientist.download_bundle(eid, &dir).unwrap();
    let public_key = std::fs::read(env.data_dir().join(tidegate_runtime::PUBLIC_KEY_FILE)).unwrap();
    verify_bundle(&dir, &public_key).unwrap();
    let parquet = std::fs::read(dir.join("result.parquet")).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(
        parquet,
    ))
    .unwrap()
    .build()
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
}

fn column<'a>(batches: &'a [RecordBatch], name: &str) -> &'a ArrayRef {
    batches[0]
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

#[test]
fn a_csv_with_times_and_decimals_runs_a_module_passes_the_gate_and_leaves_with_its_types() {
    let (env, sid, hash, totals) = world_with_tables();
    let out = released_parquet(
        &env,
        &sid,
        "SELECT spot, count(*) AS n, sum(price) AS total, sum(off_season(price)) AS discounted, \
         sum(price) AS rounded, avg(visit_hour(paid_at)) AS hour \
         FROM payments GROUP BY spot ORDER BY spot",
        std::slice::from_ref(&hash),
    );
    let spots = arrow::compute::cast(column(&out, "spot"), &DataType::Utf8).unwrap();
    let spots: Vec<&str> = spots.as_string::<i32>().iter().flatten().collect();
    assert_eq!(spots, ["Old Street", "Quiet Pond", "West Lake"]);
    // Sums of decimal(12,2) are exact decimals of 22 digits, to the cent.
    let total = column(&out, "total");
    assert_eq!(total.data_type(), &DataType::Decimal128(22, 2));
    let total = total.as_primitive::<arrow::datatypes::Decimal128Type>();
    let expected = [totals[1], totals[2], totals[0]];
    assert_eq!(total.values().to_vec(), expected.to_vec());
    // The module's exact discount, summed in the module's millionths.
    let discounted = column(&out, "discounted");
    assert_eq!(discounted.data_type(), &DataType::Decimal128(38, 6));
    let discounted = discounted.as_primitive::<arrow::datatypes::Decimal128Type>();
    assert!(discounted.value(0) < total.value(0) * 10_000);
    assert!(discounted.value(0) > total.value(0) * 8_900);
    // Rounded by the scenario's export rule, and still the decimal it was.
    let rounded = column(&out, "rounded");
    assert_eq!(rounded.data_type(), &DataType::Decimal128(22, 2));
    let rounded = rounded.as_primitive::<arrow::datatypes::Decimal128Type>();
    for (r, t) in rounded.values().iter().zip(total.values()) {
        assert_eq!(r % 100, 0, "{r}");
        assert!((r - t).abs() <= 50, "{r} from {t}");
    }
    // Hours read from the times by the module: between 8 and 19.
    let hour = column(&out, "hour").as_primitive::<arrow::datatypes::Float64Type>();
    assert!(
        hour.values().iter().all(|h| (8.0..=19.0).contains(h)),
        "{hour:?}"
    );
}

#[test]
fn a_parquet_file_of_another_tool_keeps_its_zone_and_decimals_through_a_release() {
    let (env, sid, hash, _) = world_with_tables();
    let out = released_parquet(
        &env,
        &sid,
        "SELECT spot, count(*) AS n, sum(price) AS total, sum(party) AS people, \
         avg(visit_hour(paid_at)) AS hour \
         FROM tickets GROUP BY spot ORDER BY spot",
        std::slice::from_ref(&hash),
    );
    assert_eq!(
        column(&out, "total").data_type(),
        &DataType::Decimal128(22, 2)
    );
    let n: i64 = column(&out, "n")
        .as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .flatten()
        .sum();
    assert_eq!(n, 600);
    // A time in +08:00 is the same instant: the module reads its UTC hour.
    let hour = column(&out, "hour").as_primitive::<arrow::datatypes::Float64Type>();
    assert!(hour.values().iter().all(|h| (0.0..24.0).contains(h)));

    // Times leave as times, in their zone: tickets per month of sale.
    let out = released_parquet(
        &env,
        &sid,
        "SELECT date_trunc('month', paid_at) AS month, count(*) AS n, sum(price) AS total \
         FROM tickets GROUP BY date_trunc('month', paid_at) ORDER BY month",
        &[],
    );
    assert_eq!(
        column(&out, "month").data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+08:00".into()))
    );
    assert_eq!(
        column(&out, "total").data_type(),
        &DataType::Decimal128(22, 2)
    );
}

#[test]
fn declared_types_are_checked_and_a_value_that_does_not_fit_names_its_column_not_its_value() {
    let env = setup(true);
    let import = |columns: Value, csv: &str| {
        env.world.provider.import_dataset(
            json!({ "name": "fees", "level": "L1", "format": "csv", "columns": columns }),
            csv.as_bytes(),
        )
    };
    let csv = "payer,fee\nP1,12.345\nP2,7.5\n";
    for (declared, reason) in [
        ("decimal(40,2)", "a decimal has 1 to 38 digits"),
        ("decimal(4,5)", "at most 4 after the point"),
        ("timestamp(ns)", "nanoseconds are read as us"),
        ("timestamptz(us, Mars Base)", "a time zone is an offset"),
        ("money", "unknown column type"),
    ] {
        let err = import(json!([{ "name": "fee", "data_type": declared }]), csv)
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{declared}: {err}");
    }
    // 12.345 has more places than decimal(6,2) keeps: refused, the value never quoted.
    let err = import(json!([{ "name": "fee", "data_type": "decimal(6,2)" }]), csv)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`fee`"), "{err}");
    assert!(!err.contains("12.345"), "{err}");
    let fine = import(json!([{ "name": "fee", "data_type": "decimal(6,3)" }]), csv).unwrap();
    assert_eq!(fine["columns"][1]["data_type"], "decimal(6,3)");
}

/// A one-column table of decimals of `scale` places.
fn decimals(scale: i8) -> Vec<TableInput> {
    let x = Decimal128Array::from(vec![12_345i128, -5])
        .with_precision_and_scale(20, scale)
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "x",
        x.data_type().clone(),
        true,
    )]));
    vec![TableInput {
        name: "t".into(),
        columns: vec![ColumnSpec {
            name: "x".into(),
            data_type: ColType::decimal(20, scale as u8).unwrap(),
            tags: vec![],
        }],
        data: TableData::Memory(vec![
            RecordBatch::try_new(schema, vec![Arc::new(x)]).unwrap(),
        ]),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_gets_decimals_exactly_or_not_at_all() {
    // Two places go to the module's six exactly: 123.45 less 10% is 111.105, 111.11 to the cent.
    let out = run_module(
        VISITOR_UDF_WASM,
        "SELECT off_season(x) AS y FROM t",
        &decimals(2),
    )
    .await
    .unwrap();
    let y = out[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Decimal128Type>();
    assert_eq!(y.value(0), 111_110_000);
    // -0.05 less 10% is -0.045: to the cent, halves away from zero, -0.05.
    assert_eq!(y.value(1), -50_000);
    // Eight places would be rounded on the way in: refused instead.
    let err = run_module(
        VISITOR_UDF_WASM,
        "SELECT off_season(x) FROM t",
        &decimals(8),
    )
    .await
    .unwrap_err();
    assert!(err.contains("round it first"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_returning_a_decimal_of_39_digits_fails_the_job() {
    // Every row i128::MAX, which has 39 digits.
    let wasm = scalar_module(
        "f",
        "decimal) -> decimal",
        &format!(
            r#"(local.set $n (call $rows (local.get $b)))
            (block $done (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                (i64.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 16))) (i64.const -1))
                (i64.store (i32.add (i32.const {hi}) (i32.mul (local.get $i) (i32.const 16))) (i64.const 0x7fffffffffffffff))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))
            (call $desc (i32.const 8) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 16)))"#,
            hi = OUT_DATA + 8
        ),
        "",
    );
    let err = run_module(&wasm, "SELECT f(x) FROM t", &decimals(2))
        .await
        .unwrap_err();
    assert!(err.contains("more than 38 digits"), "{err}");
}

#[test]
fn a_timestamp_column_is_a_quasi_identifier_to_propose_and_a_month_to_generalize() {
    use tidegate_policy::Masking;
    assert_eq!(
        Masking::Month
            .generalize("2026-05-17T10:23:45+08:00")
            .as_deref(),
        Some("2026-05")
    );
    assert!(
        ColType::timestamp(tidegate_policy::TimeUnit::Second, None)
            .unwrap()
            .is_temporal()
    );
    assert_eq!(
        "timestamptz(ms, Asia/Shanghai)"
            .parse::<ColType>()
            .unwrap()
            .to_string(),
        "timestamptz(ms, Asia/Shanghai)"
    );
    assert_eq!(
        serde_json::to_value("decimal( 12 , 2 )".parse::<ColType>().unwrap()).unwrap(),
        "decimal(12,2)"
    );
}
