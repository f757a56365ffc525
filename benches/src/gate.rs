//! Workloads (i) and (j): what the gate's analysis costs. (i) planning, analysis, running and
//! gating the demo's query and a 10-table join over small tables, against plain DataFusion
//! running the same SQL; (j) the demo's aggregate over a stored table with a quarter as many
//! subjects as rows, with the full gate machinery (units carried up the plan, each subject's
//! contributions, dominance and the gate) against plain DataFusion over the plaintext file,
//! and against plain DataFusion doing the same per-subject work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidegate_policy::{CheckOutcome, ColumnSpec, ColumnTag, DataType as ColType, Level};
use tidegate_runtime::{
    DataKey, EngineLimits, GateInput, SealedSource, SealedStore, TableData, TableInput,
    evaluate_gate, run_query,
};

const PARTITIONS: usize = 2;

fn context() -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(PARTITIONS))
}

fn spec(name: &str, data_type: ColType, tags: Vec<ColumnTag>) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        data_type,
        tags,
    }
}

fn l2() -> EngineLimits {
    EngineLimits {
        level: Level::L2,
        memory_bytes: 8 << 30,
        output_rows: usize::MAX,
        ..EngineLimits::default()
    }
}

/// Runs the gate over a job's output, as an export does.
fn gate(output: &tidegate_runtime::JobOutput) -> usize {
    let masking = BTreeMap::new();
    let outcome = evaluate_gate(
        &GateInput {
            level: Level::L2,
            threshold_k: 10,
            shape: &output.shape,
            provenance: CheckOutcome::Pass("bench".into()),
            max_rows: u64::MAX,
            max_bytes: u64::MAX,
            masking: &masking,
            privacy: None,
            earlier: &[],
            pseudonyms: None,
            dominance: Default::default(),
            memory: None,
        },
        &output.batches,
    )
    .expect("the gate runs");
    assert!(
        outcome
            .report
            .check("aggregation")
            .is_some_and(|c| c.passed),
        "{:?}",
        outcome.report
    );
    outcome.released.iter().map(RecordBatch::num_rows).sum()
}

/// `n` tables `t0..` of `rows` rows each: a key shared by all (1:1 joins), a group, a value
/// and a subject.
fn small_tables(n: usize, rows: usize) -> Vec<TableInput> {
    let mut rng = StdRng::seed_from_u64(5);
    (0..n)
        .map(|i| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("key", DataType::Int64, false),
                Field::new("g", DataType::Utf8, false),
                Field::new("x", DataType::Float64, false),
                Field::new("__tg_entity", DataType::Utf8, false),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                    Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|r| format!("g{}", r % 4)),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        (0..rows).map(|_| rng.random_range(0.0..100.0)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|r| format!("p{r}")),
                    )),
                ],
            )
            .expect("batch");
            TableInput {
                name: format!("t{i}"),
                columns: vec![
                    spec("key", ColType::Int64, vec![]),
                    spec("g", ColType::Utf8, vec![ColumnTag::Dimension]),
                    spec("x", ColType::Float64, vec![ColumnTag::Sensitive]),
                ],
                data: TableData::Memory(vec![batch]),
            }
        })
        .collect()
}

/// The same tables for plain DataFusion (the entity key as a plain column).
fn plain_context(tables: &[TableInput]) -> SessionContext {
    let ctx = context();
    for t in tables {
        let TableData::Memory(batches) = &t.data else {
            unreachable!("small tables are in memory")
        };
        let table = MemTable::try_new(batches[0].schema(), vec![batches.clone()]).expect("table");
        ctx.register_table(t.name.as_str(), Arc::new(table))
            .expect("register");
    }
    ctx
}

pub(crate) struct Fixed {
    pub(crate) name: &'static str,
    pub(crate) plain: Duration,
    pub(crate) gated: Duration,
}

/// (i): the whole job (plan, analysis, run, contributions, gate) over small tables, against
/// plain DataFusion's plan and run of the same SQL.
pub(crate) fn fixed_cost(rt: &tokio::runtime::Runtime, reps: usize) -> Vec<Fixed> {
    let joins: String = (1..10)
        .map(|i| format!(" JOIN t{i} ON t0.key = t{i}.key"))
        .collect();
    let cases: [(&'static str, usize, String); 2] = [
        (
            "demo query",
            1,
            "SELECT g, count(*) AS n, avg(x) AS a, sum(x) AS s FROM t0 GROUP BY g ORDER BY g"
                .into(),
        ),
        (
            "10-table join",
            10,
            format!(
                "SELECT t0.g, count(*) AS n, sum(t0.x + t9.x) AS s FROM t0{joins} GROUP BY t0.g"
            ),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, n, sql)| {
            let tables = small_tables(n, 1_000);
            let ctx = plain_context(&tables);
            let mut plain = Duration::MAX;
            let mut gated = Duration::MAX;
            for _ in 0..reps.max(5) {
                let started = Instant::now();
                let rows = rt.block_on(async {
                    ctx.sql(&sql)
                        .await
                        .expect("plan")
                        .collect()
                        .await
                        .expect("run")
                });
                plain = plain.min(started.elapsed());
                assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 4);
                let started = Instant::now();
                let output = rt
                    .block_on(run_query(&sql, &tables, vec![], l2()))
                    .expect("the job runs");
                assert_eq!(gate(&output), 4);
                gated = gated.min(started.elapsed());
            }
            Fixed { name, plain, gated }
        })
        .collect()
}

const SQL: &str = "SELECT spot, count(*) AS visits, sum(spend) AS total, avg(spend) AS mean \
                   FROM t GROUP BY spot";
/// What an exact gate needs besides the query, written by hand for plain DataFusion: each
/// subject's rows and sums per group.
const PER_SUBJECT_SQL: &str = "SELECT spot, resident_id, count(*) AS n, sum(abs(spend)) AS s \
                               FROM t GROUP BY spot, resident_id";

/// The visits of (e), with a quarter as many visitors as rows.
fn parquet_file(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("resident_id", DataType::Utf8, false),
        Field::new("spot", DataType::Utf8, false),
        Field::new("spend", DataType::Float64, false),
    ]));
    let mut rng = StdRng::seed_from_u64(13);
    let visitors = (rows / 4).max(1);
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), None).expect("writer");
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(65_536);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|_| format!("p{:08}", rng.random_range(0..visitors))),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|_| format!("spot {}", rng.random_range(0..40))),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|_| rng.random_range(0.0..500.0)),
                )),
            ],
        )
        .expect("batch");
        w.write(&batch).expect("write");
        done += n;
    }
    w.close().expect("close");
    out
}

pub(crate) struct AtScale {
    pub(crate) plain: Duration,
    pub(crate) plain_with_subjects: Duration,
    pub(crate) gated: Duration,
    pub(crate) peak_engine_memory: u64,
}

/// (j): the job with the full gate machinery over the encrypted table, against plain
/// DataFusion over the plaintext file running the query alone, and running the query and the
/// per-subject aggregate an exact gate needs.
pub(crate) fn at_scale(rt: &tokio::runtime::Runtime, rows: usize, reps: usize) -> AtScale {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plain_path = dir.path().join("t.parquet");
    let sealed_path = dir.path().join("t.tge");
    let parquet = parquet_file(rows);
    std::fs::write(&plain_path, &parquet).expect("write plaintext");
    let key = DataKey::generate();
    let context_name = "datasets/gate/v1";
    std::fs::write(&sealed_path, key.seal_object(context_name, &parquet)).expect("write sealed");
    drop(parquet);
    let mut m = AtScale {
        plain: Duration::MAX,
        plain_with_subjects: Duration::MAX,
        gated: Duration::MAX,
        peak_engine_memory: 0,
    };
    for _ in 0..reps {
        let ctx = context();
        let started = Instant::now();
        rt.block_on(async {
            ctx.register_parquet(
                "t",
                plain_path.to_str().expect("utf-8 path"),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
            ctx.sql(SQL)
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run")
        });
        m.plain = m.plain.min(started.elapsed());
        let ctx = context();
        let started = Instant::now();
        rt.block_on(async {
            ctx.register_parquet(
                "t",
                plain_path.to_str().expect("utf-8 path"),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
            for sql in [SQL, PER_SUBJECT_SQL] {
                ctx.sql(sql)
                    .await
                    .expect("plan")
                    .collect()
                    .await
                    .expect("run");
            }
        });
        m.plain_with_subjects = m.plain_with_subjects.min(started.elapsed());

        let started = Instant::now();
        let file = std::fs::File::open(&sealed_path).expect("open sealed");
        let source = SealedSource::new(key.reader(context_name, file).expect("a sealed object"));
        let mut store = SealedStore::default();
        store.insert("datasets/gate/v1.parquet", source);
        let table = TableInput {
            name: "t".into(),
            columns: vec![
                spec("spot", ColType::Utf8, vec![ColumnTag::Dimension]),
                spec("spend", ColType::Float64, vec![ColumnTag::Sensitive]),
            ],
            data: TableData::Sealed {
                store: Arc::new(store),
                object: "datasets/gate/v1.parquet".into(),
                entity: Some("resident_id".into()),
            },
        };
        let output = rt
            .block_on(run_query(SQL, &[table], vec![], l2()))
            .expect("the job runs");
        let released = gate(&output);
        m.gated = m.gated.min(started.elapsed());
        m.peak_engine_memory = m.peak_engine_memory.max(output.peak_engine_memory_bytes);
        assert!(released > 0, "the gate released nothing at {rows} rows");
    }
    m
}
