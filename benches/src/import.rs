//! Workload (k): an import at scale. A Parquet file written by another tool (Snappy, row groups
//! of 64 Ki rows, a visitor key, a spot, a time, an exact decimal and an int8) is imported by the
//! platform as a provider streams it: staged sealed on disk, read batch by batch, written as
//! compressed Parquet into its sealed object. The baseline, in the same process, is arrow-rs
//! doing the file work alone: reading the same file and writing it as Parquet with the same
//! settings, no encryption, no staging, no quality report. Peak memory is the process's peak
//! resident set during the import alone (reset before it through `/proc/self/clear_refs`).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Decimal128Array, Int8Array, RecordBatch, RecordBatchReader, StringArray,
    TimestampSecondArray,
};
use arrow::datatypes::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidegate_policy::{Level, Role};
use tidegate_runtime::{ColumnInput, ImportRequest, Platform};

const GROUP: usize = 65_536;

/// Writes `rows` visits to `path` as another tool would, never holding more than one batch.
fn write_input(path: &Path, rows: usize) -> u64 {
    let schema = Arc::new(Schema::new(vec![
        Field::new("resident_id", arrow::datatypes::DataType::Utf8, false),
        Field::new("spot", arrow::datatypes::DataType::Utf8, false),
        Field::new(
            "visit_at",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Second, None),
            false,
        ),
        Field::new(
            "spend",
            arrow::datatypes::DataType::Decimal128(12, 2),
            false,
        ),
        Field::new("party", arrow::datatypes::DataType::Int8, false),
    ]));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(GROUP))
        .build();
    let file = std::fs::File::create(path).expect("input file");
    let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).expect("writer");
    let mut rng = StdRng::seed_from_u64(17);
    let subjects = (rows / 4).max(1) as u64;
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(GROUP);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| format!("p{:09}", rng.random_range(0..subjects))),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| format!("spot {}", rng.random_range(0..40))),
            )),
            Arc::new(TimestampSecondArray::from_iter_values(
                (0..n).map(|_| 1_767_225_600 + rng.random_range(0..31_536_000i64)),
            )),
            Arc::new(
                Decimal128Array::from_iter_values((0..n).map(|_| rng.random_range(0..50_000i128)))
                    .with_precision_and_scale(12, 2)
                    .expect("decimal"),
            ),
            Arc::new(Int8Array::from_iter_values(
                (0..n).map(|_| rng.random_range(1..6i8)),
            )),
        ];
        w.write(&RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch"))
            .expect("write");
        done += n;
    }
    w.close().expect("close");
    std::fs::metadata(path).expect("input").len()
}

/// Writes `rows` visits to `path` as CSV (about 100 bytes a row: a key, a spot, a time, a
/// decimal spend, a party size and a free-text note), a buffered line at a time.
fn write_csv_input(path: &Path, rows: usize) -> u64 {
    use std::io::Write;
    let file = std::fs::File::create(path).expect("input file");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(b"resident_id,spot,visit_at,spend,party,note\n")
        .expect("write");
    let mut rng = StdRng::seed_from_u64(19);
    let subjects = (rows / 4).max(1) as u64;
    let mut line = String::with_capacity(160);
    for _ in 0..rows {
        use std::fmt::Write as _;
        line.clear();
        let at = rng.random_range(0..31_536_000i64);
        let cents = rng.random_range(0..50_000u32);
        let _ = writeln!(
            line,
            "p{:09},spot {},2026-{:02}-{:02} {:02}:{:02}:{:02},{}.{:02},{},visitor note {:016x} {:016x}",
            rng.random_range(0..subjects),
            rng.random_range(0..40),
            1 + at / 2_678_400 % 12,
            1 + at / 86_400 % 28,
            at / 3_600 % 24,
            at / 60 % 60,
            at % 60,
            cents / 100,
            cents % 100,
            rng.random_range(1..6),
            rng.random::<u64>(),
            rng.random::<u64>()
        );
        out.write_all(line.as_bytes()).expect("write");
    }
    out.flush().expect("flush");
    std::fs::metadata(path).expect("input").len()
}

/// The declared types of the CSV (as a provider declares them).
fn csv_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("resident_id", arrow::datatypes::DataType::Utf8, true),
        Field::new("spot", arrow::datatypes::DataType::Utf8, true),
        Field::new(
            "visit_at",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Second, None),
            true,
        ),
        Field::new("spend", arrow::datatypes::DataType::Decimal128(12, 2), true),
        Field::new("party", arrow::datatypes::DataType::Int64, true),
        Field::new("note", arrow::datatypes::DataType::Utf8, true),
    ]))
}

/// arrow-rs reading the CSV with its declared types and writing it as the platform stores a
/// dataset.
fn csv_baseline(input: &Path, output: &Path) -> u64 {
    let file = std::fs::File::open(input).expect("input");
    let reader = arrow::csv::ReaderBuilder::new(csv_schema())
        .with_header(true)
        .with_batch_size(8192)
        .build(std::io::BufReader::with_capacity(1 << 20, file))
        .expect("reader");
    let out = std::fs::File::create(output).expect("output");
    let mut w = ArrowWriter::try_new(out, csv_schema(), Some(stored_props())).expect("writer");
    for b in reader {
        w.write(&b.expect("batch")).expect("write");
    }
    w.close().expect("close");
    std::fs::metadata(output).expect("output").len()
}

/// The platform's settings for a stored dataset: zstd level 1, row groups of 1 Mi rows.
fn stored_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level")))
        .set_max_row_group_row_count(Some(1 << 20))
        .build()
}

/// arrow-rs reading `input` and writing it as the platform stores a dataset.
fn baseline(input: &Path, output: &Path) -> u64 {
    let file = std::fs::File::open(input).expect("input");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("reader")
        .with_batch_size(8192)
        .build()
        .expect("reader");
    let out = std::fs::File::create(output).expect("output");
    let mut w = ArrowWriter::try_new(out, reader.schema(), Some(stored_props())).expect("writer");
    for b in reader {
        w.write(&b.expect("batch")).expect("write");
    }
    w.close().expect("close");
    std::fs::metadata(output).expect("output").len()
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb >> 10)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn total_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        total_size(&path)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) fn import_workload(rows: usize, csv: bool) {
    let work = tempfile::tempdir().expect("tempdir");
    let input = work
        .path()
        .join(if csv { "visits.csv" } else { "visits.parquet" });
    let started = Instant::now();
    let input_bytes = if csv {
        write_csv_input(&input, rows)
    } else {
        write_input(&input, rows)
    };
    println!(
        "(k) import of {rows} rows: input {:.1} MiB of {}, written in {:.1} s",
        input_bytes as f64 / 1048576.0,
        if csv { "CSV" } else { "Snappy Parquet" },
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let baseline_bytes = if csv {
        csv_baseline(&input, &work.path().join("baseline.parquet"))
    } else {
        baseline(&input, &work.path().join("baseline.parquet"))
    };
    let baseline_s = started.elapsed().as_secs_f64();
    std::fs::remove_file(work.path().join("baseline.parquet")).expect("remove");

    let (platform, token) = Platform::init(
        &work.path().join("data"),
        &work.path().join("keys/master.key"),
        "admin",
    )
    .expect("init");
    let admin = platform.authenticate(&token).expect("admin");
    let org = platform
        .create_org(&admin, "Bureau of Culture and Tourism", "provider")
        .expect("org");
    let provider = platform
        .create_principal(&admin, "provider", &org.id, &[Role::Provider])
        .expect("principal");
    platform
        .record_training(&admin, &provider.id, "data handling")
        .expect("training");
    let provider = platform
        .authenticate(provider.token.as_deref().expect("token"))
        .expect("provider");

    let (_, rss_before) = memory();
    // Peak resident memory from here on (Linux: 5 resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let mut upload = platform
        .stage_upload(&provider, Level::L2)
        .expect("staging");
    let mut file = std::fs::File::open(&input).expect("input");
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).expect("read");
        if n == 0 {
            break;
        }
        upload.write(&chunk[..n]).expect("stage");
    }
    let staged_s = started.elapsed().as_secs_f64();
    let column = |name: &str, tags: &str| ColumnInput {
        mock: None,
        name: name.into(),
        data_type: None,
        tags: tidegate_policy::parse_tags(tags).expect("tags"),
    };
    let typed = |name: &str, data_type: &str, tags: &str| ColumnInput {
        mock: None,
        data_type: Some(data_type.parse().expect("type")),
        ..column(name, tags)
    };
    let view = platform
        .import_staged(
            &provider,
            ImportRequest {
                name: "visits".into(),
                level: Level::L2,
                format: if csv { "csv" } else { "parquet" }.into(),
                columns: if csv {
                    vec![
                        column("resident_id", "entity"),
                        column("spot", "dimension"),
                        typed("visit_at", "timestamp(s)", ""),
                        typed("spend", "decimal(12,2)", "sensitive"),
                        typed("party", "int64", ""),
                    ]
                } else {
                    vec![
                        column("resident_id", "entity"),
                        column("spot", "dimension"),
                        column("spend", "sensitive"),
                    ]
                },
                approvers: vec![],
                data_base64: String::new(),
                quality_rules: None,
            },
            upload,
        )
        .expect("import");
    let import_s = started.elapsed().as_secs_f64();
    let (peak, rss_after) = memory();
    let stored = total_size(&work.path().join("data/objects/datasets"));
    assert_eq!(view.rows, Some(rows as i64));
    println!(
        "    baseline (arrow-rs reads the file with its types, writes zstd Parquet): {baseline_s:.2} s, {:.1} MiB",
        baseline_bytes as f64 / 1048576.0
    );
    println!(
        "    platform import (stage sealed {staged_s:.2} s + read, check, write, seal): {import_s:.2} s = {:.2}x the baseline",
        import_s / baseline_s
    );
    println!(
        "    import rate {:.0} MiB/s of input, {:.2} M rows/s",
        input_bytes as f64 / 1048576.0 / import_s,
        rows as f64 / 1e6 / import_s
    );
    println!(
        "    peak resident memory during the import: {peak} MiB (before {rss_before} MiB, after {rss_after} MiB)"
    );
    println!(
        "    stored object {:.1} MiB = {:.2}x the input file; quality {}",
        stored as f64 / 1048576.0,
        stored as f64 / input_bytes as f64,
        view.quality.unwrap_or_default()
    );
}
