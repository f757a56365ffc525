//! The SQL surface of a job, as data: every `tests/sql/*.slt` is a sqllogictest file, read and
//! run by the `sqllogictest` crate over the platform's job runner (`run_query` with the tables
//! a file's setting grants), each query with the outcome it must get:
//!
//! - `statement error <regex>` or `query error <regex>`: refused, with an error matching the
//!   regex (anywhere in the message);
//! - `query <types> rowsort`, then `----` and the rows: it runs and returns those rows, sorted
//!   (types: `T` text, `I` integer, `R` floating point, `?` any other; a null is `NULL`, an
//!   empty string `(empty)`). The rows are the query's own columns: the runtime's hidden ones
//!   (`__tg*`, the subjects the gate counts) are left out, as every release leaves them out.
//!   A query that returns no row has no batch to tell its columns' types: each returns one.
//!
//! A file's name picks its setting in [`setting`]: `confinement.slt` runs each query as a job
//! over a granted table; `gate.slt` over L2 data with subjects, through the export gate, so
//! that a group the gate suppresses is missing from the rows and a release it refuses is an
//! error naming the failed check.
//!
//! To write the expected outcomes after changing a query or the data, run the test with
//! `TIDEGATE_SLT_COMPLETE=1` (`TIDEGATE_SLT_COMPLETE=1 cargo test -p tidegate-tests --test it
//! sql::`): every file is rewritten with the actual rows and types, and with the actual error
//! of a refusal whose regex no longer matches; then review the change with `git diff`. A new
//! query can be written as `query T rowsort` with no rows, or `query error TODO`, and
//! completed so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{
    AsyncDB, DBOutput, DefaultColumnType, Record, Runner, default_normalizer, default_validator,
    strict_column_validator,
};
use tidegate_policy::{
    CheckOutcome, ColumnSpec, ColumnTag, DataType as ColType, DominanceRule, Level, SensitiveType,
};
use tidegate_runtime::{
    EngineLimits, Error, GateInput, TableData, TableInput, evaluate_gate, run_query,
};

/// Where the `.slt` files are.
const SLT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");

/// Set to `1` to rewrite the `.slt` files with the actual outcomes.
const COMPLETE: &str = "TIDEGATE_SLT_COMPLETE";

/// The gate's k for `gate.slt`.
const K: u64 = 3;

/// A visit: the resident, the spot, the spend.
type Visit = (&'static str, &'static str, f64);

/// `confinement.slt`: three visits by two residents.
const FEW_VISITS: [Visit; 3] = [
    ("11010519491231002X", "West Lake", 12.5),
    ("110105194912310021", "Grand Canal", 30.0),
    ("11010519491231002X", "West Lake", 7.25),
];

/// `gate.slt`: eight residents (r1 to r8 in the comments). West Lake has five of them and
/// Grand Canal four; Lingyin Temple three, one of whom spends a fortune there; Leifeng Pagoda
/// two.
const CROWD_VISITS: [Visit; 14] = [
    ("110105199001010011", "West Lake", 10.0),
    ("110105199001010022", "West Lake", 12.0),
    ("110105199001010033", "West Lake", 9.0),
    ("110105199001010044", "West Lake", 11.0),
    ("110105199001010055", "West Lake", 14.0),
    ("110105199001010011", "Grand Canal", 20.0),
    ("110105199001010022", "Grand Canal", 25.0),
    ("110105199001010033", "Grand Canal", 30.0),
    ("110105199001010066", "Grand Canal", 15.0),
    ("110105199001010044", "Lingyin Temple", 10.0),
    ("110105199001010077", "Lingyin Temple", 12.0),
    ("110105199001010088", "Lingyin Temple", 5000.0),
    ("110105199001010055", "Leifeng Pagoda", 8.0),
    ("110105199001010066", "Leifeng Pagoda", 9.0),
];

/// The granted table `visits(resident_id, spot, spend)`: the resident is the subject.
fn visits(rows: &[Visit]) -> Vec<TableInput> {
    let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("resident_id", DataType::Utf8, true),
            Field::new("spot", DataType::Utf8, true),
            Field::new("spend", DataType::Float64, true),
            Field::new("__tg_entity", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from(ids)),
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

/// What a file's queries run over, and how.
#[derive(Clone)]
struct Setting {
    tables: Vec<TableInput>,
    /// `Some(k)`: the data is L2 and each result goes through the export gate with this k, as
    /// an export request's does; `None`: the job's result as it is (L1).
    gate: Option<u64>,
}

/// The setting of `tests/sql/{name}.slt`.
fn setting(name: &str) -> Setting {
    match name {
        "confinement" => Setting {
            tables: visits(&FEW_VISITS),
            gate: None,
        },
        "gate" => Setting {
            tables: visits(&CROWD_VISITS),
            gate: Some(K),
        },
        other => panic!("tests/sql/{other}.slt has no setting: give it one in sql.rs's `setting`"),
    }
}

/// The platform's job runner as a sqllogictest database.
struct Job(Setting);

#[async_trait::async_trait]
impl AsyncDB for Job {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let Setting { tables, gate } = &self.0;
        let limits = match gate {
            None => EngineLimits::default(),
            Some(k) => EngineLimits {
                level: Level::L2,
                threshold: *k,
                ..EngineLimits::default()
            },
        };
        let output = run_query(sql, tables, vec![], limits).await?;
        let batches: Vec<RecordBatch> = match gate {
            None => output.batches.iter().map(without_hidden).collect(),
            Some(k) => through_the_gate(*k, &output)?,
        };
        if batches.is_empty() {
            // An empty result may come without a batch, and so without the types of its
            // columns, which a `query` record names.
            return Err(Error::BadInput(
                "the result has no batch to tell its columns' types: give the query a row".into(),
            ));
        }
        Ok(rows(&batches))
    }

    async fn shutdown(&mut self) {}
}

/// The result as the gate would release it, or the gate's refusal naming its failed checks.
fn through_the_gate(
    k: u64,
    output: &tidegate_runtime::JobOutput,
) -> Result<Vec<RecordBatch>, Error> {
    let masking = BTreeMap::new();
    let gate = evaluate_gate(
        &GateInput {
            level: Level::L2,
            threshold_k: k,
            shape: &output.shape,
            provenance: CheckOutcome::Pass("the query calls no module".into()),
            max_rows: 1000,
            max_bytes: 1 << 20,
            masking: &masking,
            privacy: None,
            earlier: &[],
            pseudonyms: None,
            dominance: DominanceRule::default(),
            memory: None,
        },
        &output.batches,
    )?;
    let failed: Vec<String> = gate
        .report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if failed.is_empty() {
        Ok(gate.released)
    } else {
        Err(Error::Refused(format!(
            "the gate refuses the release: {}",
            failed.join("; ")
        )))
    }
}

/// The batch without the runtime's hidden columns.
fn without_hidden(batch: &RecordBatch) -> RecordBatch {
    let shown: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !batch.schema().field(i).name().starts_with("__tg"))
        .collect();
    batch.project(&shown).unwrap()
}

/// The batches as sqllogictest rows of text.
fn rows(batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let types = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect();
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<(&ArrayRef, ArrayFormatter<'_>)> = batch
            .columns()
            .iter()
            .map(|c| {
                let options = FormatOptions::default().with_null("NULL");
                (c, ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            })
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|(c, f)| match c.as_string_opt::<i32>() {
                        Some(s) if s.is_valid(row) && s.value(row).is_empty() => {
                            "(empty)".to_string()
                        }
                        _ => f.value(row).to_string(),
                    })
                    .collect(),
            );
        }
    }
    DBOutput::Rows { types, rows }
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating()
            || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
        {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

/// Every `.slt` file of `tests/sql`, by name.
fn slt_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(SLT_DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt file in {SLT_DIR}");
    files
}

fn runner(path: &Path) -> Runner<Job, impl sqllogictest::MakeConnection<Conn = Job>> {
    let setting = setting(path.file_stem().unwrap().to_str().unwrap());
    let mut runner = Runner::new(move || {
        let setting = setting.clone();
        async move { Ok(Job(setting)) }
    });
    runner.with_column_validator(strict_column_validator);
    runner
}

#[test]
fn every_query_in_the_slt_files_gets_the_outcome_it_lists() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = slt_files();
    if std::env::var_os(COMPLETE).is_some_and(|v| v == "1") {
        for path in &files {
            rt.block_on(runner(path).update_test_file(
                path,
                " ",
                default_validator,
                default_normalizer,
                strict_column_validator,
            ))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    let mut failures = Vec::new();
    for path in &files {
        let records = sqllogictest::parse_file::<DefaultColumnType>(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let queries = records
            .iter()
            .filter(|r| matches!(r, Record::Query { .. } | Record::Statement { .. }))
            .count();
        assert!(queries > 0, "{} holds no query", path.display());
        let mut runner = runner(path);
        for record in records {
            if let Err(e) = rt.block_on(runner.run_async(record)) {
                failures.push(e.display(false).to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} outcomes in the .slt files differ from the listed ones (to rewrite them with the actual ones, run with {COMPLETE}=1):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
