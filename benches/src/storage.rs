//! Workload (e): a GROUP BY aggregate over a table stored encrypted by the platform, against
//! the same rows as a plaintext Parquet file scanned by plain DataFusion, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    DataKey, EngineLimits, SealedSource, SealedStore, TableData, TableInput, run_query,
};

const SQL: &str = "SELECT spot, count(*) AS visits, sum(spend) AS total, avg(spend) AS mean \
                   FROM t GROUP BY spot";
const PARTITIONS: usize = 2;

/// The rows: a visitor key, one of 40 spots, a spend; written as Parquet with the writer's
/// defaults, as the platform writes an import.
fn parquet_file(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("resident_id", DataType::Utf8, false),
        Field::new("spot", DataType::Utf8, false),
        Field::new("spend", DataType::Float64, false),
    ]));
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), None).expect("writer");
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(65_536);
        let ids = StringArray::from_iter_values(
            (0..n).map(|_| format!("p{:07}", rng.random_range(0..2_000_000))),
        );
        let spots = StringArray::from_iter_values(
            (0..n).map(|_| format!("spot {}", rng.random_range(0..40))),
        );
        let spend = Float64Array::from_iter_values((0..n).map(|_| rng.random_range(0.0..500.0)));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(ids), Arc::new(spots), Arc::new(spend)],
        )
        .expect("batch");
        w.write(&batch).expect("write");
        done += n;
    }
    w.close().expect("close");
    out
}

fn spec(name: &str, data_type: ColType) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    }
}

fn context() -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(PARTITIONS))
}

/// Times the same aggregate over plaintext Parquet (plain DataFusion) and over the encrypted
/// object as a job reads it (the job's confined session scanning the sealed store: only the
/// column chunks the query reads are decrypted); returns the best of `reps` for each.
pub(crate) fn measure(rt: &tokio::runtime::Runtime, rows: usize, reps: usize) -> Measured {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plain_path = dir.path().join("t.parquet");
    let sealed_path = dir.path().join("t.tge");
    let parquet = parquet_file(rows);
    std::fs::write(&plain_path, &parquet).expect("write plaintext");
    let key = DataKey::generate();
    let context_name = "datasets/bench/v1";
    std::fs::write(&sealed_path, key.seal_object(context_name, &parquet)).expect("write sealed");
    let size = parquet.len();
    drop(parquet);

    let mut plain = Duration::MAX;
    let mut sealed = Duration::MAX;
    let mut answers = Vec::new();
    let mut decrypted = 0;
    for _ in 0..reps {
        let started = Instant::now();
        let ctx = context();
        let rows_plain = rt.block_on(async {
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
        plain = plain.min(started.elapsed());

        let started = Instant::now();
        let file = std::fs::File::open(&sealed_path).expect("open sealed");
        let source = SealedSource::new(key.reader(context_name, file).expect("a sealed object"));
        let mut store = SealedStore::default();
        store.insert("datasets/bench/v1.parquet", source.clone());
        let table = TableInput {
            name: "t".into(),
            columns: vec![spec("spot", ColType::Utf8), spec("spend", ColType::Float64)],
            data: TableData::Sealed {
                store: Arc::new(store),
                object: "datasets/bench/v1.parquet".into(),
                entity: None,
            },
        };
        let rows_sealed = rt
            .block_on(run_query(SQL, &[table], vec![], EngineLimits::default()))
            .expect("the job runs")
            .batches;
        sealed = sealed.min(started.elapsed());
        decrypted = source.bytes_decrypted();
        let count = |r: &[RecordBatch]| r.iter().map(RecordBatch::num_rows).sum::<usize>();
        answers.push((count(&rows_plain), count(&rows_sealed)));
    }
    assert!(
        answers.iter().all(|(a, b)| a == b && *a == 40.min(rows)),
        "both paths give the same groups: {answers:?}"
    );
    Measured {
        plain,
        sealed,
        size,
        decrypted,
    }
}

pub(crate) struct Measured {
    pub(crate) plain: Duration,
    pub(crate) sealed: Duration,
    /// The Parquet file's size, and how much of it the encrypted scan decrypted.
    pub(crate) size: usize,
    pub(crate) decrypted: u64,
}
