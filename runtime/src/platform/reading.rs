//! Reading the files users bring (CSV and Parquet) batch by batch, never whole: the file's
//! column types mapped onto the platform's, declared types applied, the quality report
//! counted as the batches pass, and the stored copy written as compressed Parquet straight
//! into its sealed object.

use std::io::{Read, Write};

use arrow::array::ArrayRef;
use arrow::datatypes::{SchemaRef, TimeUnit as ArrowUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tidegate_policy::TimeUnit;

use super::*;
use crate::crypto::{SealedReader, SealingWriter};

/// Rows per batch read from a file.
const READ_BATCH_ROWS: usize = 8192;
/// Rows per row group of a stored dataset: a unit of parallel scanning and of the writer's
/// memory (one row group's encoded pages are held until it is flushed).
const STORED_ROW_GROUP_ROWS: usize = 1 << 20;
/// Bytes per read of a sealed file read front to back.
const READ_AHEAD: usize = 1 << 20;

/// The bytes of a file being imported: in memory (a base64 body, a local file) or sealed in
/// the data directory as they arrived (a streamed upload), read range by range.
#[derive(Clone)]
pub(super) enum FileBytes {
    Memory(bytes::Bytes),
    Sealed(Arc<SealedReader>),
}

impl FileBytes {
    pub(super) fn len(&self) -> u64 {
        match self {
            FileBytes::Memory(b) => b.len() as u64,
            FileBytes::Sealed(r) => r.len(),
        }
    }

    fn range(&self, start: u64, length: usize) -> std::io::Result<bytes::Bytes> {
        let end = start
            .checked_add(length as u64)
            .filter(|e| *e <= self.len());
        let Some(end) = end else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        };
        match self {
            FileBytes::Memory(b) => Ok(b.slice(start as usize..end as usize)),
            FileBytes::Sealed(r) => r
                .read_at(start, length)
                .map(bytes::Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string())),
        }
    }

    /// The file from `start` to its end, as a reader.
    fn reader_from(&self, start: u64) -> FileReader {
        FileReader {
            file: self.clone(),
            at: start,
            buffer: bytes::Bytes::new(),
        }
    }
}

/// A file read front to back, a megabyte at a time.
pub(super) struct FileReader {
    file: FileBytes,
    at: u64,
    buffer: bytes::Bytes,
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buffer.is_empty() {
            let left = self.file.len().saturating_sub(self.at);
            if left == 0 {
                return Ok(0);
            }
            let take = left.min(READ_AHEAD as u64) as usize;
            self.buffer = self.file.range(self.at, take)?;
            self.at += take as u64;
        }
        let n = out.len().min(self.buffer.len());
        out[..n].copy_from_slice(&self.buffer[..n]);
        self.buffer = self.buffer.slice(n..);
        Ok(n)
    }
}

impl parquet::file::reader::Length for FileBytes {
    fn len(&self) -> u64 {
        FileBytes::len(self)
    }
}

impl parquet::file::reader::ChunkReader for FileBytes {
    type T = FileReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<FileReader> {
        Ok(self.reader_from(start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.range(start, length)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

/// A file opened for import: its schema in the platform's types, and its batches, read as
/// they are asked for.
pub(super) struct TableStream {
    pub(super) schema: SchemaRef,
    pub(super) batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
}

/// The Arrow type a column of the platform's type is stored as.
pub(super) fn arrow_type(t: &DataType) -> ArrowType {
    match t {
        DataType::Utf8 => ArrowType::Utf8,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Float64 => ArrowType::Float64,
        DataType::Boolean => ArrowType::Boolean,
        DataType::Date32 => ArrowType::Date32,
        DataType::Timestamp { unit, zone } => ArrowType::Timestamp(
            match unit {
                TimeUnit::Second => ArrowUnit::Second,
                TimeUnit::Millisecond => ArrowUnit::Millisecond,
                TimeUnit::Microsecond => ArrowUnit::Microsecond,
            },
            zone.as_deref().map(Into::into),
        ),
        DataType::Decimal { precision, scale } => ArrowType::Decimal128(*precision, *scale as i8),
    }
}

/// The platform's type for a column a file holds as `t`, when there is one: narrower
/// integers and floats are widened (no value changes), every kind of string becomes plain
/// UTF-8, nanosecond timestamps count microseconds, and every decimal of up to 38 digits is
/// kept with its precision and scale. Binary, nested and time-of-day columns have none.
pub(super) fn our_type(t: &ArrowType) -> Option<DataType> {
    Some(match t {
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View | ArrowType::Null => {
            DataType::Utf8
        }
        ArrowType::Dictionary(_, values)
            if matches!(
                values.as_ref(),
                ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
            ) =>
        {
            DataType::Utf8
        }
        ArrowType::Int8
        | ArrowType::Int16
        | ArrowType::Int32
        | ArrowType::UInt8
        | ArrowType::UInt16 => DataType::Int32,
        ArrowType::Int64 | ArrowType::UInt32 => DataType::Int64,
        ArrowType::Float16 | ArrowType::Float32 | ArrowType::Float64 => DataType::Float64,
        ArrowType::Boolean => DataType::Boolean,
        ArrowType::Date32 | ArrowType::Date64 => DataType::Date32,
        // A zone the platform would refuse when declared is refused from a file too.
        ArrowType::Timestamp(unit, zone) => DataType::timestamp(
            match unit {
                ArrowUnit::Second => TimeUnit::Second,
                ArrowUnit::Millisecond => TimeUnit::Millisecond,
                ArrowUnit::Microsecond | ArrowUnit::Nanosecond => TimeUnit::Microsecond,
            },
            zone.as_deref(),
        )
        .ok()?,
        ArrowType::Decimal32(p, s)
        | ArrowType::Decimal64(p, s)
        | ArrowType::Decimal128(p, s)
        | ArrowType::Decimal256(p, s)
            if *s >= 0 =>
        {
            DataType::decimal(*p, *s as u8).ok()?
        }
        _ => return None,
    })
}

/// What each column of `schema` is stored as: its declared type, or its own in the
/// platform's types.
fn target_schema(schema: &Schema, declared: &[ColumnInput]) -> Result<SchemaRef> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let ours = declared
                .iter()
                .find(|d| &d.name == f.name())
                .and_then(|d| d.data_type.clone())
                .or_else(|| our_type(f.data_type()))
                .ok_or_else(|| {
                    Error::BadInput(format!(
                        "column {} has the type {}, which the platform does not store \
                         (text, integers, floats, decimals, booleans, dates and timestamps; \
                         time zones as an offset or a name): declare it as one of them or \
                         leave it out of the file",
                        crate::text::defuse(f.name(), 80),
                        crate::text::defuse(&f.data_type().to_string(), 120)
                    ))
                })?;
            Ok(Field::new(f.name(), arrow_type(&ours), true))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Opens a CSV or Parquet file for reading batch by batch; declared column types override
/// what the file says or what is inferred from its first thousand records.
pub(super) fn open_table(
    format: &str,
    file: FileBytes,
    declared: &[ColumnInput],
) -> Result<TableStream> {
    match format {
        "csv" => {
            let format = arrow::csv::reader::Format::default().with_header(true);
            let (inferred, _) = format
                .infer_schema(
                    std::io::BufReader::with_capacity(READ_AHEAD, file.reader_from(0)),
                    Some(1000),
                )
                .map_err(|e| Error::BadInput(format!("the CSV cannot be read: {e}")))?;
            // The CSV reader parses each value straight into its stored type, except
            // decimals: read as text, then parsed strictly by `conform` (a value with more
            // places than its column keeps is refused, never rounded).
            // Times and dates are read to the nanosecond and then converted exactly (the
            // CSV reader itself would drop a fraction of a second, or a time of day, that its
            // column's type cannot hold). A timestamp inferred from the first records is
            // stored to the microsecond: a fraction further down still fits.
            let inferred = Schema::new(
                inferred
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        ArrowType::Timestamp(_, zone) => Field::new(
                            f.name(),
                            ArrowType::Timestamp(ArrowUnit::Microsecond, zone.clone()),
                            true,
                        ),
                        _ => f.as_ref().clone(),
                    })
                    .collect::<Vec<_>>(),
            );
            let schema = target_schema(&inferred, declared)?;
            let as_read = Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        ArrowType::Decimal128(..) => Field::new(f.name(), ArrowType::Utf8, true),
                        ArrowType::Timestamp(_, zone) => Field::new(
                            f.name(),
                            ArrowType::Timestamp(ArrowUnit::Nanosecond, zone.clone()),
                            true,
                        ),
                        ArrowType::Date32 => Field::new(
                            f.name(),
                            ArrowType::Timestamp(ArrowUnit::Nanosecond, None),
                            true,
                        ),
                        _ => f.as_ref().clone(),
                    })
                    .collect::<Vec<_>>(),
            ));
            let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&as_read))
                .with_header(true)
                .with_batch_size(READ_BATCH_ROWS)
                .build(std::io::BufReader::with_capacity(
                    READ_AHEAD,
                    file.reader_from(0),
                ))
                .map_err(|e| Error::BadInput(format!("the CSV cannot be read: {e}")))?;
            let target = Arc::clone(&schema);
            Ok(TableStream {
                schema,
                batches: Box::new(reader.map(move |b| {
                    let b = b.map_err(|e| csv_error(&e, &as_read))?;
                    conform(&b, &target)
                })),
            })
        }
        "parquet" => {
            let unreadable = || Error::BadInput("the Parquet file cannot be read".into());
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(|_| unreadable())?;
            let schema = target_schema(builder.schema(), declared)?;
            let reader = builder
                .with_batch_size(READ_BATCH_ROWS)
                .build()
                .map_err(|_| unreadable())?;
            let target = Arc::clone(&schema);
            Ok(TableStream {
                schema,
                batches: Box::new(reader.map(move |b| {
                    let b = b.map_err(|_| unreadable())?;
                    conform(&b, &target)
                })),
            })
        }
        other => Err(Error::BadInput(format!(
            "unknown format `{other}`: csv or parquet"
        ))),
    }
}

/// A batch in the stored types, column by column.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            // Built only when a value does not fit (not once per batch).
            let cannot = || {
                let ours = our_type(f.data_type())
                    .map_or_else(|| f.data_type().to_string(), |t| t.to_string());
                Error::BadInput(format!(
                    "column `{}` has a value that is not a {ours} as it stands (nothing is \
                     rounded, cut or overflowed on import: declare a type that holds it)",
                    crate::text::defuse(f.name(), 80),
                ))
            };
            if let ArrowType::Decimal128(precision, scale) = f.data_type() {
                // Also when the file says the same type: its values must fit its precision.
                exact_decimals(c, *precision, *scale).ok_or_else(cannot)
            } else if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                exact_cast(c, f.data_type()).ok_or_else(cannot)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::Internal(format!("batch: {e}")))
}

/// `c` as `target` when that changes no value: converted, then converted back and compared
/// with what it was (a fraction of a second, a time of day, a fraction of a number, digits
/// past a type's range all make it `None`; nulls must stay nulls).
fn exact_cast(c: &ArrayRef, target: &ArrowType) -> Option<ArrayRef> {
    let strict = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let converted = arrow::compute::cast_with_options(c, target, &strict).ok()?;
    if converted.null_count() != c.null_count() {
        return None;
    }
    // Anything becomes text as it is; text is compared in its own terms below.
    if matches!(target, ArrowType::Utf8) {
        return Some(converted);
    }
    let back = arrow::compute::cast_with_options(&converted, c.data_type(), &strict).ok()?;
    let changed = arrow::compute::kernels::cmp::distinct(c, &back).ok()?;
    (changed.true_count() == 0).then_some(converted)
}

/// A column as decimals of `precision` and `scale`, when every value is one exactly: text
/// in plain decimal notation, integers, or decimals of at most `scale` places. Nothing is
/// rounded: a value with more places, or more digits, makes it `None`.
fn exact_decimals(c: &ArrayRef, precision: u8, scale: i8) -> Option<ArrayRef> {
    let target = ArrowType::Decimal128(precision, scale);
    let limit = 10i128.checked_pow(u32::from(precision))?;
    let fits = |v: i128| v.checked_abs().is_some_and(|a| a < limit);
    let array: ArrayRef = match c.data_type() {
        ArrowType::Utf8 => {
            let text = arrow::array::AsArray::as_string::<i32>(c);
            let parsed: arrow::array::Decimal128Array = text
                .iter()
                .map(|v| match v.map(str::trim) {
                    None | Some("") => Some(None),
                    Some(v) => parse_decimal(v, scale).map(Some),
                })
                .collect::<Option<_>>()?;
            Arc::new(parsed.with_data_type(target.clone()))
        }
        ArrowType::Decimal32(_, s)
        | ArrowType::Decimal64(_, s)
        | ArrowType::Decimal128(_, s)
        | ArrowType::Decimal256(_, s)
            if *s > scale =>
        {
            return None;
        }
        t if *t == target => Arc::clone(c),
        // Integers, decimals of fewer places, floats: only when the number is exactly a
        // decimal of this scale.
        _ => exact_cast(c, &target)?,
    };
    // Every value within the precision, also when the file says the same type.
    let values = arrow::array::AsArray::as_primitive::<arrow::datatypes::Decimal128Type>(&array);
    values.iter().flatten().all(fits).then_some(array)
}

/// `[+-]digits[.digits]` as a count of `10^-scale`; `None` when it has more places than
/// `scale` (other than trailing zeros) or is not a plain decimal.
fn parse_decimal(text: &str, scale: i8) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let fraction = fraction.trim_end_matches('0');
    let scale = usize::try_from(scale).ok()?;
    if fraction.len() > scale {
        return None;
    }
    let mut value: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        value = value.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    value = value.checked_mul(10i128.checked_pow((scale - fraction.len()) as u32)?)?;
    Some(if negative { -value } else { value })
}

/// Reads a local CSV or Parquet file (by its extension) as a table for `tidegate dev run`:
/// all columns, no tags.
pub fn local_table(name: &str, path: &Path) -> Result<TableInput> {
    let data = fs::read(path)
        .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", path.display())))?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") | Some("pq") => "parquet",
        _ => "csv",
    };
    let table = open_table(format, FileBytes::Memory(data.into()), &[])?;
    let batches = table.batches.collect::<Result<Vec<_>>>()?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(Error::BadInput(format!("{} holds no rows", path.display())));
    }
    Ok(TableInput {
        name: name.to_string(),
        columns: column_specs(&table.schema, &[])?,
        data: TableData::Memory(batches),
    })
}

/// CSV parse errors quote the offending value; report only where it is.
/// A CSV value that does not parse as its column's type, named by column and line; the value
/// itself and the row around it are never quoted (they are data).
fn csv_error(e: &arrow::error::ArrowError, schema: &Schema) -> Error {
    let text = e.to_string();
    let number_after = |marker: &str| -> Option<usize> {
        let at = text.find(marker)? + marker.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let column = number_after("for column ")
        .and_then(|i| schema.fields().get(i))
        .map(|f| format!(" `{}`", crate::text::defuse(f.name(), 80)))
        .unwrap_or_default();
    // Arrow counts data records from 1; the file's first line is its header.
    let line = number_after("at line ")
        .map(|l| format!(" at line {} of the file", l + 1))
        .unwrap_or_default();
    Error::BadInput(format!(
        "the CSV has a value that does not parse as its column{column}'s type{line}"
    ))
}

pub(super) fn column_specs(schema: &Schema, declared: &[ColumnInput]) -> Result<Vec<ColumnSpec>> {
    tidegate_policy::check_column_names(schema.fields().iter().map(|f| f.name().as_str()))
        .map_err(|r| Error::BadInput(r.reason))?;
    // Every column of the file, declared or not: `__tg*` names are the runtime's (the hidden
    // entity key, subject counts, group keys), in any case.
    if let Some(f) = schema
        .fields()
        .iter()
        .find(|f| crate::hidden::is_reserved(f.name()))
    {
        return Err(Error::BadInput(format!(
            "the file's column `{}` starts with __tg: such names are reserved for the runtime",
            crate::text::defuse(f.name(), 80)
        )));
    }
    for d in declared {
        if schema.field_with_name(&d.name).is_err() {
            return Err(Error::BadInput(format!(
                "the file has no column {}",
                d.name
            )));
        }
        if crate::hidden::is_reserved(&d.name) {
            return Err(Error::BadInput(
                "column names starting with __tg are reserved".into(),
            ));
        }
    }
    let specs = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(ColumnSpec {
                name: f.name().clone(),
                data_type: our_type(f.data_type()).ok_or_else(|| {
                    Error::Internal(format!("column {} was not conformed", f.name()))
                })?,
                tags: declared
                    .iter()
                    .find(|d| &d.name == f.name())
                    .map(|d| d.tags.clone())
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<ColumnSpec>>>()?;
    if specs
        .iter()
        .filter(|c| c.has_tag(ColumnTag::Entity))
        .count()
        > 1
    {
        return Err(Error::BadInput(
            "at most one column is the `entity` key".into(),
        ));
    }
    Ok(specs)
}

/// R-IMPORT's data quality report, counted batch by batch: rows, nulls per column, and rows
/// that repeat an entity key. Keys are counted exactly up to [`Quality::EXACT_KEYS`] distinct
/// ones, then estimated by adaptive sampling of their hashes (the report says so), so the
/// count's memory is bounded whatever the file's size.
pub(super) struct Quality {
    names: Vec<String>,
    nulls: Vec<usize>,
    rows: usize,
    entity: Option<usize>,
    keys: DistinctKeys,
    /// S17: the provider's rules, each with what it has counted so far.
    rules: Vec<RuleCount>,
}

/// One quality rule as an import counts it, batch by batch.
struct RuleCount {
    rule: tidegate_policy::QualityRule,
    column: usize,
    kind: Option<tidegate_policy::SensitiveType>,
    /// Values that broke it (for not-null: missing ones).
    failing: u64,
    /// For uniqueness: present values, and their distinct count.
    present: u64,
    distinct: Option<DistinctKeys>,
    /// For freshness: the newest date seen (`YYYY-MM-DD`).
    newest: Option<String>,
}

impl Quality {
    /// Distinct entity keys counted exactly (64-bit hashes: about 128 MiB at most).
    const EXACT_KEYS: usize = 1 << 23;

    /// A count over `columns` (the stored order) checking `rules` (already validated against
    /// them: a rule naming no column is skipped, never guessed).
    pub(super) fn new(columns: &[ColumnSpec], rules: &[tidegate_policy::QualityRule]) -> Quality {
        let rules = rules
            .iter()
            .filter_map(|r| {
                let column = columns.iter().position(|c| c.name == r.column)?;
                Some(RuleCount {
                    kind: tidegate_policy::check_digit_type(&columns[column]),
                    column,
                    failing: 0,
                    present: 0,
                    distinct: matches!(r.check, tidegate_policy::QualityCheck::Unique)
                        .then(|| DistinctKeys::new(Self::EXACT_KEYS)),
                    newest: None,
                    rule: r.clone(),
                })
            })
            .collect();
        Quality {
            names: columns.iter().map(|c| c.name.clone()).collect(),
            nulls: vec![0; columns.len()],
            rows: 0,
            entity: columns.iter().position(|c| c.has_tag(ColumnTag::Entity)),
            keys: DistinctKeys::new(Self::EXACT_KEYS),
            rules,
        }
    }

    /// S17: each rule with the rows that broke it, and what an import that broke it becomes.
    pub(super) fn rule_results(&self) -> Vec<(Value, Option<tidegate_policy::OnFail>)> {
        use tidegate_policy::QualityCheck;
        self.rules
            .iter()
            .map(|r| {
                let failing = match &r.rule.check {
                    QualityCheck::Unique => r
                        .distinct
                        .as_ref()
                        .map_or(0, |d| r.present.saturating_sub(d.count().0.min(r.present))),
                    QualityCheck::Fresh { within_days } => {
                        let oldest_allowed =
                            (today() - time::Duration::days(i64::from(*within_days))).to_string();
                        u64::from(
                            r.newest
                                .as_deref()
                                .is_none_or(|n| n < oldest_allowed.as_str()),
                        )
                    }
                    _ => r.failing,
                };
                let mut shown = json!({
                    "column": r.rule.column,
                    "rule": r.rule.check,
                    "on_fail": r.rule.on_fail,
                    "failing_rows": failing,
                    "passed": failing == 0,
                });
                if let QualityCheck::Fresh { .. } = r.rule.check {
                    shown["newest"] = json!(r.newest);
                    if let Some(o) = shown.as_object_mut() {
                        o.remove("failing_rows");
                    }
                }
                (shown, (failing > 0).then_some(r.rule.on_fail))
            })
            .collect()
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        use tidegate_policy::QualityCheck;
        for r in &mut self.rules {
            let column = batch.column(r.column);
            if let QualityCheck::NotNull = r.rule.check {
                r.failing += column.null_count() as u64;
                continue;
            }
            let text = arrow::compute::cast(column, &ArrowType::Utf8)
                .map_err(|e| Error::Internal(format!("a quality rule's column as text: {e}")))?;
            let text = arrow::array::AsArray::as_string::<i32>(&text);
            for v in text.iter().flatten() {
                match &r.rule.check {
                    QualityCheck::Unique => {
                        r.present += 1;
                        if let Some(d) = r.distinct.as_mut() {
                            d.insert(v.as_bytes());
                        }
                    }
                    QualityCheck::Fresh { .. } => {
                        let day = v.get(..10).unwrap_or(v);
                        if parse_date(day).is_ok() && r.newest.as_deref().is_none_or(|n| day > n) {
                            r.newest = Some(day.to_string());
                        }
                    }
                    check => {
                        if !tidegate_policy::value_keeps(check, r.kind, v) {
                            r.failing += 1;
                        }
                    }
                }
            }
        }
        self.rows += batch.num_rows();
        for (n, c) in self.nulls.iter_mut().zip(batch.columns()) {
            *n += c.null_count();
        }
        if let Some(i) = self.entity {
            let text = arrow::compute::cast(batch.column(i), &ArrowType::Utf8)
                .map_err(|e| Error::Internal(format!("entity key as text: {e}")))?;
            let text = arrow::array::AsArray::as_string::<i32>(&text);
            for v in text.iter() {
                // A missing key counts as one key of its own, as the gate counts it.
                self.keys.insert(v.map_or(&[0xff][..], str::as_bytes));
            }
        }
        Ok(())
    }

    pub(super) fn report(&self) -> Value {
        let nulls: BTreeMap<&str, usize> = self
            .names
            .iter()
            .map(String::as_str)
            .zip(self.nulls.iter().copied())
            .collect();
        let mut report = json!({ "rows": self.rows, "nulls": nulls });
        if !self.rules.is_empty() {
            let results = self.rule_results();
            let passed = results.iter().filter(|(_, f)| f.is_none()).count();
            report["rules"] = json!(results.into_iter().map(|(r, _)| r).collect::<Vec<_>>());
            // The share of the declared rules the version keeps.
            report["score"] = json!(passed as f64 / self.rules.len() as f64);
        }
        if self.entity.is_some() {
            let (distinct, estimated) = self.keys.count();
            report["entity_duplicate_rows"] = json!((self.rows as u64).saturating_sub(distinct));
            if estimated {
                report["entity_duplicate_rows_estimated"] = json!(true);
            }
        }
        report
    }
}

/// Counts distinct values by their 64-bit hashes: exactly while at most `cap` are kept, then
/// by adaptive sampling (Wegman): only hashes with `level` leading zero bits are kept, and
/// each one kept stands for `2^level` values.
struct DistinctKeys {
    kept: HashSet<u64, foldhash::quality::FixedState>,
    level: u32,
    cap: usize,
    hasher: foldhash::quality::FixedState,
}

impl DistinctKeys {
    fn new(cap: usize) -> DistinctKeys {
        DistinctKeys {
            kept: HashSet::with_hasher(foldhash::quality::FixedState::with_seed(1)),
            level: 0,
            cap,
            hasher: foldhash::quality::FixedState::with_seed(0x7469_6465_6761_7465),
        }
    }

    fn insert(&mut self, value: &[u8]) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(value);
        if h.leading_zeros() < self.level {
            return;
        }
        self.kept.insert(h);
        while self.kept.len() > self.cap {
            self.level += 1;
            let level = self.level;
            self.kept.retain(|h| h.leading_zeros() >= level);
        }
    }

    /// How many distinct values were inserted, and whether that is an estimate.
    fn count(&self) -> (u64, bool) {
        ((self.kept.len() as u64) << self.level, self.level > 0)
    }
}

/// A stored object written as it is produced: sealed chunk by chunk into a temporary file of
/// its directory, hashed as it goes (unless [`ObjectSink::unhashed`]), and renamed into place
/// only by [`ObjectSink::commit`] or [`ObjectSink::place`]; dropped before that, the temporary
/// file goes.
pub(super) struct ObjectSink {
    writer: Option<SealingWriter>,
    hash: Option<ring::digest::Context>,
    written: u64,
    tmp: PathBuf,
    path: PathBuf,
}

impl ObjectSink {
    pub(super) fn create(path: &Path, key: &DataKey, context: &str) -> Result<ObjectSink> {
        let dir = path
            .parent()
            .ok_or_else(|| Error::Internal("an object path has no directory".into()))?;
        fs::create_dir_all(dir)?;
        let tmp = crate::crypto::temporary_path(path);
        let writer = SealingWriter::create(&tmp, key, context)?;
        Ok(ObjectSink {
            writer: Some(writer),
            hash: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            written: 0,
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The same sink, not hashing what it is given (for an object whose hash nobody reads).
    pub(super) fn unhashed(mut self) -> ObjectSink {
        self.hash = None;
        self
    }

    /// The same sink, writing its object out behind it ([`SealingWriter::behind`]).
    pub(super) fn behind(mut self) -> ObjectSink {
        self.writer = self.writer.take().map(SealingWriter::behind);
        self
    }

    /// Seals the last chunk, syncs, and moves the object into place; returns the SHA-256 of
    /// its plaintext and its length.
    pub(super) fn commit(mut self) -> Result<(String, u64)> {
        let hash = self
            .hash
            .take()
            .ok_or_else(|| Error::Internal("the object was not hashed".into()))?;
        let written = self.written;
        self.place()?;
        Ok((hex::encode(hash.finish().as_ref()), written))
    }

    /// Seals the last chunk, syncs, and moves the object into place.
    pub(super) fn place(mut self) -> Result<()> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::Internal("the object is already committed".into()))?;
        writer.finish()?;
        fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Write for ObjectSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the object is already committed"))?;
        writer
            .write(buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(hash) = &mut self.hash {
            hash.update(buf);
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Batches in flight between the stages of [`pipeline`].
const IN_FLIGHT: usize = 4;

/// Reads `batches` into `writer` and counts them for the quality report, in three stages on
/// their own threads (decoding the file, encoding and sealing the stored Parquet, counting),
/// joined by channels of a few batches: memory stays bounded and the machine's cores share
/// the work. The first error stops every stage; a stage that panics is an error, never a
/// silently shorter table.
pub(super) fn pipeline(
    batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    mut writer: ArrowWriter<ObjectSink>,
    columns: &[ColumnSpec],
    rules: &[tidegate_policy::QualityRule],
) -> Result<(ObjectSink, Quality)> {
    use std::sync::mpsc::sync_channel;
    let panicked = |stage: &str| Error::Internal(format!("the import's {stage} stage panicked"));
    std::thread::scope(|s| {
        let (read_tx, read_rx) = sync_channel::<Result<RecordBatch>>(IN_FLIGHT);
        let reader = s.spawn(move || {
            for batch in batches {
                let last = batch.is_err();
                if read_tx.send(batch).is_err() || last {
                    break;
                }
            }
        });
        let (count_tx, count_rx) = sync_channel::<RecordBatch>(IN_FLIGHT);
        let counter = s.spawn(move || -> Result<Quality> {
            let mut quality = Quality::new(columns, rules);
            for batch in count_rx {
                quality.add(&batch)?;
            }
            Ok(quality)
        });
        let written = (|| -> Result<ObjectSink> {
            for batch in read_rx {
                let batch = batch?;
                // A closed counter has failed: its error is reported below.
                let _ = count_tx.send(batch.clone());
                writer
                    .write(&crate::tables::with_row_ids(&batch)?)
                    .map_err(|e| Error::Internal(format!("parquet: {e}")))?;
            }
            writer
                .into_inner()
                .map_err(|e| Error::Internal(format!("parquet: {e}")))
        })();
        drop(count_tx);
        let counted = counter.join().map_err(|_| panicked("counting"));
        let read = reader.join().map_err(|_| panicked("reading"));
        let sink = written?;
        read?;
        Ok((sink, counted??))
    })
}

/// The stored form of a dataset: Parquet, zstd-compressed, in row groups of a million rows,
/// the declared columns followed by each row's identity ([`crate::hidden::ROW`]).
pub(super) fn stored_parquet_writer(
    sink: ObjectSink,
    schema: SchemaRef,
) -> Result<ArrowWriter<ObjectSink>> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(crate::hidden::ROW, ArrowType::UInt64, false));
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).map_err(|e| Error::Internal(format!("zstd: {e}")))?,
        ))
        .set_max_row_group_row_count(Some(STORED_ROW_GROUP_ROWS))
        .build();
    ArrowWriter::try_new(sink, schema, Some(props))
        .map_err(|e| Error::Internal(format!("parquet: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_is_read_exactly_or_not_at_all() {
        assert_eq!(parse_decimal("12.30", 2), Some(1230));
        assert_eq!(parse_decimal("12.300000", 2), Some(1230));
        assert_eq!(parse_decimal("-0.5", 1), Some(-5));
        assert_eq!(parse_decimal("+7", 0), Some(7));
        assert_eq!(parse_decimal(".5", 1), Some(5));
        assert_eq!(parse_decimal("12.345", 2), None, "rounding would change it");
        for bad in ["", "-", ".", "1e5", "1,5", "0x10", "1.2.3", " 1"] {
            assert_eq!(parse_decimal(bad, 2), None, "{bad:?}");
        }
        assert_eq!(parse_decimal(&"9".repeat(40), 0), None, "past i128");
    }

    #[test]
    fn distinct_keys_are_exact_under_the_cap_and_estimated_within_a_few_percent_over_it() {
        let mut exact = DistinctKeys::new(1 << 20);
        let mut sampled = DistinctKeys::new(4_096);
        for round in 0..2 {
            for i in 0..200_000u32 {
                exact.insert(&i.to_le_bytes());
                sampled.insert(&i.to_le_bytes());
            }
            assert_eq!(exact.count(), (200_000, false), "round {round}");
        }
        let (estimate, estimated) = sampled.count();
        assert!(estimated);
        let error = (estimate as f64 - 200_000.0).abs() / 200_000.0;
        assert!(error < 0.06, "{estimate}");
        assert!(sampled.kept.len() <= 4_096);
    }
}
