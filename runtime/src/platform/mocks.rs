//! Mock datasets: a stand-in for each dataset a scenario grants, made from the public metadata
//! its provider declared with the import (`tidegate_policy::mock_column`), never from its
//! values, so that a scientist can write and test a module against data they cannot see.

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
    TimestampSecondBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tidegate_policy::{MAX_MOCK_ROWS, MockSpec, MockValue, TimeUnit};

use super::*;

/// Mocks made at once by one platform.
const MOCKS_AT_ONCE: usize = 2;
/// The most values (rows times columns) of one mock.
const MAX_MOCK_CELLS: u64 = 20_000_000;

/// The key of a mock's file metadata that marks it as one (value `true`).
pub const MOCK_MARKER: &str = "tidegate.mock";

/// A mock as it is handed out: Parquet bytes and what they stand in for.
#[derive(Debug, Clone)]
pub struct MockFile {
    pub dataset: String,
    pub rows: u64,
    pub parquet: Vec<u8>,
}

impl Platform {
    /// A mock of `dataset` as scenario `scenario` grants it: the granted columns and the
    /// dataset's entity key, `rows` rows generated for `seed` from the provider's declared
    /// metadata (defaults where it declared none), as Parquet marked as a mock in its file
    /// metadata. For the trained scientists of the scenario's unit while it is active; audited.
    pub fn mock_dataset(
        &self,
        actor: &Principal,
        scenario: &str,
        dataset: &str,
        rows: u64,
        seed: u64,
    ) -> Result<MockFile> {
        if !(1..=MAX_MOCK_ROWS).contains(&rows) {
            return Err(Error::BadInput(format!(
                "a mock has from 1 to {MAX_MOCK_ROWS} rows"
            )));
        }
        let (d, columns, specs, scenario_id, version) = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let s = Self::scenario_row(&db, scenario)?;
            if actor.org != s.org {
                return Err(Error::NotFound(format!("scenario {scenario}")));
            }
            tidegate_policy::can_run_job(actor, &s.org, s.view.state, &[])?;
            let not_granted = || Error::NotFound(format!("dataset {dataset} in scenario {}", s.id));
            let d = Self::dataset_row(&db, dataset).map_err(|_| not_granted())?;
            let mut grant = None;
            for g in &s.grants {
                if Self::dataset_row(&db, &g.dataset)?.id == d.id {
                    grant = Some(g);
                }
            }
            let grant = grant.ok_or_else(not_granted)?;
            let granted = &grant.columns;
            // The version a job would read, with the same checks: a unit's own data awaiting
            // an admin, a sealed or destroyed version give no mock either.
            let version = Self::granted_version(&db, &d, grant.version)?.version;
            let columns: Vec<ColumnSpec> = d
                .columns
                .iter()
                .filter(|c| granted.contains(&c.name) || c.has_tag(ColumnTag::Entity))
                .cloned()
                .collect();
            let specs = Self::mock_specs(&db, &d.id)?;
            (d, columns, specs, s.id, version)
        };
        if rows.saturating_mul(columns.len().max(1) as u64) > MAX_MOCK_CELLS {
            return Err(Error::Limit(format!(
                "a mock holds at most {MAX_MOCK_CELLS} values (rows times columns); ask for fewer rows"
            )));
        }
        let _turn = MockTurn::take(&self.mocking)?;
        let n = usize::try_from(rows).map_err(|_| Error::BadInput("too many rows".into()))?;
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for c in &columns {
            let spec = specs.get(&c.name).cloned().unwrap_or_default();
            let values = tidegate_policy::mock_column(c, &spec, n, seed);
            let array = mock_array(&c.data_type, values)?;
            fields.push(Field::new(
                &c.name,
                reading::arrow_type(&c.data_type),
                !c.has_tag(ColumnTag::Entity),
            ));
            arrays.push(array);
        }
        let marks = [
            (MOCK_MARKER, "true".to_string()),
            ("tidegate.mock.dataset", d.name.clone()),
            ("tidegate.mock.scenario", scenario_id.clone()),
            ("tidegate.mock.seed", seed.to_string()),
            ("tidegate.mock.version", version.to_string()),
            (
                "tidegate.mock.notice",
                "generated from the provider's declared metadata; not real data".to_string(),
            ),
        ];
        let schema = Arc::new(
            Schema::new(fields).with_metadata(
                marks
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
        );
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)
            .map_err(|e| Error::Internal(format!("mock: {e}")))?;
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(
                marks
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.to_string(), v.clone()))
                    .collect(),
            ))
            .build();
        let mut parquet = Vec::new();
        let mut w = ArrowWriter::try_new(&mut parquet, schema, Some(props))
            .map_err(|e| Error::Internal(format!("mock: {e}")))?;
        w.write(&batch)
            .map_err(|e| Error::Internal(format!("mock: {e}")))?;
        w.close()
            .map_err(|e| Error::Internal(format!("mock: {e}")))?;
        self.audit.append_at(
            crate::now_rfc3339(),
            &actor.id,
            crate::audit::Action::DatasetMock,
            &d.id,
            crate::audited::DatasetMock {
                scenario: scenario_id.to_string(),
                rows,
                seed,
            }
            .to_value(),
        )?;
        Ok(MockFile {
            dataset: d.name,
            rows,
            parquet,
        })
    }

    /// The mock metadata a dataset's provider declared, by column.
    pub(super) fn mock_specs(db: &Connection, id: &str) -> Result<BTreeMap<String, MockSpec>> {
        let stored: String = db.query_row(
            "SELECT mock FROM datasets WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        from_json(&stored)
    }
}

/// One of the few mocks made at once; its place is given back when dropped.
struct MockTurn<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> MockTurn<'a> {
    fn take(making: &'a std::sync::atomic::AtomicUsize) -> Result<MockTurn<'a>> {
        use std::sync::atomic::Ordering;
        if making.fetch_add(1, Ordering::SeqCst) >= MOCKS_AT_ONCE {
            making.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Limit(format!(
                "the platform makes {MOCKS_AT_ONCE} mocks at once; try again in a moment"
            )));
        }
        Ok(MockTurn(making))
    }
}

impl Drop for MockTurn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Mock metadata kept from an earlier version, checked again against the new version's
/// columns: what no longer holds (a column gone, retagged as an identifier) is dropped.
pub(super) fn still_holding(
    kept: BTreeMap<String, MockSpec>,
    columns: &[ColumnSpec],
) -> BTreeMap<String, MockSpec> {
    kept.into_iter()
        .filter(|(name, spec)| {
            columns
                .iter()
                .find(|c| &c.name == name)
                .is_some_and(|c| tidegate_policy::check_mock_spec(c, spec).is_ok())
        })
        .collect()
}

/// Checks the mock metadata an import declares, and gives it by column.
pub(super) fn declared_mocks(
    columns: &[ColumnSpec],
    declared: &[ColumnInput],
) -> Result<BTreeMap<String, MockSpec>> {
    let mut out = BTreeMap::new();
    for d in declared {
        let Some(spec) = &d.mock else { continue };
        let column = columns
            .iter()
            .find(|c| c.name == d.name)
            .ok_or_else(|| Error::BadInput(format!("the file has no column {}", d.name)))?;
        tidegate_policy::check_mock_spec(column, spec).map_err(Error::BadInput)?;
        out.insert(d.name.clone(), spec.clone());
    }
    Ok(out)
}

/// A column of generated values as Arrow stores the platform's type.
fn mock_array(t: &DataType, values: Vec<MockValue>) -> Result<ArrayRef> {
    let mismatch = || Error::Internal(format!("mock: a value does not fit a {t:?} column"));
    macro_rules! build {
        ($builder:expr, $($variant:ident($v:ident) => $e:expr),+) => {{
            let mut b = $builder;
            for value in values {
                match value {
                    MockValue::Null => b.append_null(),
                    $(MockValue::$variant($v) => b.append_value($e),)+
                    _ => return Err(mismatch()),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match t {
        DataType::Utf8 => build!(StringBuilder::new(), Text(v) => v),
        DataType::Int32 => build!(
            Int32Builder::new(),
            Int(v) => i32::try_from(v).map_err(|_| mismatch())?
        ),
        DataType::Int64 => build!(Int64Builder::new(), Int(v) => v),
        DataType::Float64 => build!(Float64Builder::new(), Float(v) => v),
        DataType::Boolean => build!(BooleanBuilder::new(), Bool(v) => v),
        DataType::Date32 => build!(Date32Builder::new(), Date(v) => v),
        DataType::Timestamp { unit, zone } => {
            let zone: Option<Arc<str>> = zone.as_deref().map(Into::into);
            match unit {
                TimeUnit::Second => build!(
                    TimestampSecondBuilder::new().with_timezone_opt(zone),
                    Timestamp(v) => v
                ),
                TimeUnit::Millisecond => build!(
                    TimestampMillisecondBuilder::new().with_timezone_opt(zone),
                    Timestamp(v) => v
                ),
                TimeUnit::Microsecond => build!(
                    TimestampMicrosecondBuilder::new().with_timezone_opt(zone),
                    Timestamp(v) => v
                ),
            }
        }
        DataType::Decimal { precision, scale } => build!(
            Decimal128Builder::new()
                .with_precision_and_scale(*precision, *scale as i8)
                .map_err(|e| Error::Internal(format!("mock: {e}")))?,
            Decimal(v) => v
        ),
    })
}
