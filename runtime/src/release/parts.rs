//! Each subject's parts in each cell, computed by the tally itself from a group of subjects'
//! rows: a worker takes each row once with everything the tally reads of it (its cell, its
//! subject's names, its element for the gate's memory, which parts count it and its values);
//! the tally sorts them by (cell, subject) and takes each run in one pass, the gate's memory's
//! elements with it. It gives what the engine's aggregation of the same rows gives
//! (`Contributions::over`): the same counts, and the same sums of doubles, added in the same
//! order (the rows' own), and the same counts of distinct values. Two subjects are told apart by
//! two 64-bit keyed hashes of their keys (the gate memory's name, and a second under a key drawn
//! for the job): they are taken for one only if both collide; two values of a distinct count, by
//! a 64-bit hash under a key of its own. A part it does not compute so (a source that is not a
//! double, more than eight sums and distinct counts, a FILTER whose column is missing) leaves
//! the job's groups to the engine.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Float64Type, Schema};

use super::{Contributions, PartExpr, TABLE_SHIFT, Tally, arrow_error, unaliased};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::logical_expr::Expr;

use crate::error::{Error, Result};
use crate::hidden::{ARGUMENT_PREFIX, FILTER_PREFIX, SOURCE_PREFIX};

/// How one part is computed from a row.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Every row.
    Rows,
    /// The rows whose column is not NULL.
    Count,
    /// A sum of the column's values as doubles (every sum's argument is cast to `Float64`,
    /// and every source is one).
    Double,
    /// A count of the column's distinct values that are not NULL (each value kept as a keyed
    /// hash of its bytes in Arrow's row format, which tells apart what the engine's distinct
    /// count tells apart: the values' bits).
    Distinct,
}

/// One part: how, over which column (by index in the rows' schema), with which FILTER.
#[derive(Debug, Clone, Copy)]
struct Part {
    kind: Kind,
    column: Option<usize>,
    filter: Option<usize>,
}

/// The parts of a job's contributions as the tally computes them, resolved against its rows'
/// schema, in the order of the contribution's columns.
#[derive(Clone)]
pub(crate) struct NativeParts {
    parts: Vec<Part>,
    /// How many of the parts are sums or distinct counts (a value per row).
    values: usize,
}

impl Contributions {
    /// Its parts as the tally computes them over rows of `schema`, or `None` when one of them
    /// needs the engine.
    pub(crate) fn native(&self, schema: &Schema) -> Option<NativeParts> {
        let index = |name: String| schema.index_of(self.carrier(&name)).ok();
        let filter_column = |j: usize| -> std::result::Result<Option<usize>, ()> {
            match index(format!("{FILTER_PREFIX}{j}")) {
                None => Ok(None),
                Some(i) if schema.field(i).data_type() == &DataType::Boolean => Ok(Some(i)),
                Some(_) => Err(()),
            }
        };
        let mut parts = Vec::with_capacity(self.parts.len());
        for (i, (_, p)) in self.parts.iter().enumerate() {
            // A part whose aggregate has a FILTER has that column, or the tally has no part.
            let filtered = matches!(
                self.aggregates.get(i).map(unaliased),
                Some(Expr::AggregateFunction(f)) if f.params.filter.is_some()
            );
            let filter = |j: usize| match filter_column(j) {
                Ok(None) if filtered => Err(()),
                other => other,
            };
            parts.push(match *p {
                PartExpr::Rows => Part {
                    kind: Kind::Rows,
                    column: None,
                    filter: None,
                },
                PartExpr::Subjects(j) => {
                    let column = index(format!("{ARGUMENT_PREFIX}{j}"))?;
                    // A type Arrow's row format cannot hold is the engine's to count.
                    let field =
                        arrow::row::SortField::new(schema.field(column).data_type().clone());
                    if !arrow::row::RowConverter::supports_fields(&[field]) {
                        return None;
                    }
                    Part {
                        kind: Kind::Distinct,
                        column: Some(column),
                        filter: filter(j).ok()?,
                    }
                }
                PartExpr::Count(j) => Part {
                    kind: Kind::Count,
                    column: Some(index(format!("{ARGUMENT_PREFIX}{j}"))?),
                    filter: filter(j).ok()?,
                },
                PartExpr::Sum(j) => {
                    let column = index(format!("{ARGUMENT_PREFIX}{j}"))?;
                    // The engine casts the argument to a double first: exact the same for a
                    // number, whichever casts it.
                    if !schema.field(column).data_type().is_numeric() {
                        return None;
                    }
                    Part {
                        kind: Kind::Double,
                        column: Some(column),
                        filter: filter(j).ok()?,
                    }
                }
                PartExpr::Source(j, n) => {
                    let column = index(format!("{SOURCE_PREFIX}{n}"))?;
                    // A source is a double (the analysis casts it); anything else is the
                    // engine's to sum.
                    if schema.field(column).data_type() != &DataType::Float64 {
                        return None;
                    }
                    Part {
                        kind: Kind::Double,
                        column: Some(column),
                        filter: filter(j).ok()?,
                    }
                }
            });
        }
        let values = parts
            .iter()
            .filter(|p| !matches!(p.kind, Kind::Rows | Kind::Count))
            .count();
        if values > MAX_VALUES || parts.len() > MAX_PARTS {
            return None;
        }
        Some(NativeParts { values, parts })
    }
}

/// One part's column in one batch.
enum Values {
    Rows,
    Count(Option<NullBuffer>),
    Double(arrow::array::Float64Array),
    /// Each row's value as a keyed hash, and which are NULL.
    Distinct(Vec<u64>, Option<NullBuffer>),
}

/// One batch of a group, ready for random access by row.
struct Batch {
    subject: arrow::array::StringArray,
    values: Vec<(Values, Option<BooleanArray>)>,
    elements: Option<arrow::array::FixedSizeBinaryArray>,
}

impl Batch {
    fn new(
        b: &RecordBatch,
        native: &NativeParts,
        elements: bool,
        value_key: &[u8; 16],
    ) -> Result<Batch> {
        let cast = |c: &ArrayRef, t: &DataType| arrow::compute::cast(c, t).map_err(arrow_error);
        let subject = super::subjects_of(b)?.as_string::<i32>().clone();
        let values = native
            .parts
            .iter()
            .map(|p| {
                let column = p.column.map(|i| b.column(i));
                let values = match (p.kind, column) {
                    (Kind::Rows, _) => Values::Rows,
                    (Kind::Count, Some(c)) => Values::Count(c.logical_nulls()),
                    (Kind::Double, Some(c)) => Values::Double(
                        cast(c, &DataType::Float64)?
                            .as_primitive::<Float64Type>()
                            .clone(),
                    ),
                    (Kind::Distinct, Some(c)) => {
                        let converter =
                            arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
                                c.data_type().clone(),
                            )])
                            .map_err(arrow_error)?;
                        let rows = converter
                            .convert_columns(std::slice::from_ref(c))
                            .map_err(arrow_error)?;
                        let hashes = (0..rows.num_rows())
                            .map(|r| keyed(value_key, rows.row(r).as_ref()))
                            .collect();
                        Values::Distinct(hashes, c.logical_nulls())
                    }
                    _ => return Err(Error::Internal("gate columns: a part's column".into())),
                };
                let filter = match p.filter {
                    Some(i) => Some(
                        b.column(i)
                            .as_boolean_opt()
                            .ok_or_else(|| Error::Internal("gate columns: a FILTER".into()))?
                            .clone(),
                    ),
                    None => None,
                };
                Ok((values, filter))
            })
            .collect::<Result<Vec<_>>>()?;
        let elements = match elements {
            true => Some(super::elements_of(b)?.clone()),
            false => None,
        };
        Ok(Batch {
            subject,
            values,
            elements,
        })
    }
}

/// The most value columns (sums) a contribution may have for the tally to compute its parts,
/// and the most parts.
const MAX_VALUES: usize = 8;
const MAX_PARTS: usize = 64;

/// One row of a group as the tally sorts it: its cell, its place in the group (the engine
/// adds a subject's rows in this order), its subject's name in the gate's memory and a second
/// hash of it under a key of the job's own (two subjects are told apart unless both collide),
/// its element for the gate's memory, which parts count it, and its values.
#[derive(Clone, Copy)]
struct Row<const V: usize> {
    cell: u32,
    seq: u32,
    who: u64,
    check: u64,
    identity: u64,
    /// The stored row's table (above [`TABLE_SHIFT`]) and the measures it adds to; 0: no
    /// element (a row's element adds to one measure at least).
    element: u64,
    counted: u64,
    values: [u64; V],
}

impl<const V: usize> Row<V> {
    fn order(&self) -> (u32, u64, u64, u32) {
        (self.cell, self.who, self.check, self.seq)
    }
}

/// One group of subjects' rows as a worker makes them for the tally: every row with what the
/// tally reads of it (its cell by a number of the group's own), and the cells' keys.
pub(crate) struct Built<const V: usize> {
    /// Its rows' room in the job's pool, given back when the tally has taken them.
    memory: MemoryReservation,
    rows: Vec<Row<V>>,
    /// Each of the group's cells' keys in Arrow's row format, by its number.
    cells: Vec<Box<[u8]>>,
    /// Under differential privacy, the subjects of the group's batches, and where each row
    /// is (batch, row), to name a subject once per cell.
    subjects: Vec<arrow::array::StringArray>,
    places: Vec<(u32, u32)>,
}

/// Makes [`Built`] groups on a thread other than the tally's: everything it reads is its own.
pub(crate) struct Builder {
    native: NativeParts,
    subject_key: Option<crate::crypto::SubjectKey>,
    check_keys: ([u8; 16], [u8; 16]),
    /// Names a distinct count's values: a key of its own, drawn for the job's groups (a
    /// subject's rows are all in one group) and never stored.
    value_key: [u8; 16],
    converter: arrow::row::RowConverter,
    no_keys: bool,
    private: bool,
}

impl Builder {
    /// How many of the parts are sums (a value per row): the `V` of its [`Built`] groups.
    pub(crate) fn values(&self) -> usize {
        self.native.values
    }
}

impl Builder {
    /// Takes one group's rows, every row of each of its subjects, in order.
    pub(crate) fn build<const V: usize>(
        &self,
        rows: &[RecordBatch],
        memory: MemoryReservation,
    ) -> Result<Built<V>> {
        if V != self.native.values {
            return Err(Error::Internal("gate columns: the sums miscounted".into()));
        }
        let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let each = std::mem::size_of::<Row<V>>()
            + if self.private {
                std::mem::size_of::<(u32, u32)>()
            } else {
                0
            };
        memory
            .try_grow(count.saturating_mul(each))
            .map_err(|_| Error::Limit("the job exceeded its memory limit".into()))?;
        let native = &self.native;
        let key = self.subject_key;
        let (name_key, check_key) = self.check_keys;
        let named = |who: &[u8]| match &key {
            Some(k) => k.subject(who),
            None => keyed(&name_key, who),
        };
        let mut index: std::collections::HashMap<Box<[u8]>, u32, foldhash::fast::RandomState> =
            Default::default();
        let mut built = Built {
            memory,
            rows: Vec::with_capacity(count),
            cells: Vec::new(),
            subjects: Vec::new(),
            places: Vec::new(),
        };
        let mut seq = 0u32;
        for (bi, b) in rows.iter().enumerate() {
            let batch = Batch::new(b, native, key.is_some(), &self.value_key)?;
            let keys = super::keys_in(&self.converter, self.no_keys, b)?;
            for r in 0..b.num_rows() {
                // Rows of no subject never reach the tally (filtered in its plan).
                if !batch.subject.is_valid(r) {
                    continue;
                }
                let who = batch.subject.value(r).as_bytes();
                let cell_key = keys.row(r);
                let cell = match index.get(cell_key.as_ref()) {
                    Some(c) => *c,
                    None => {
                        let c = u32::try_from(built.cells.len()).map_err(|_| too_many())?;
                        index.insert(cell_key.as_ref().into(), c);
                        built.cells.push(cell_key.as_ref().into());
                        c
                    }
                };
                let mut row = Row {
                    cell,
                    seq,
                    who: named(who),
                    check: keyed(&check_key, who),
                    identity: 0,
                    element: 0,
                    counted: 0,
                    values: [0; V],
                };
                seq = seq.checked_add(1).ok_or_else(too_many)?;
                if self.private {
                    built.places.push((bi as u32, r as u32));
                }
                if let Some((table, identity, adds)) =
                    batch.elements.as_ref().and_then(|e| super::element(e, r))
                {
                    row.identity = identity;
                    row.element = table << TABLE_SHIFT | adds;
                }
                let mut slot = 0;
                for (p, (values, filter)) in batch.values.iter().enumerate() {
                    // A FILTER passes a row where it is true (not NULL).
                    let passes = filter.as_ref().is_none_or(|f| f.is_valid(r) && f.value(r));
                    let (valid, value) = match values {
                        Values::Rows => (true, None),
                        Values::Count(nulls) => {
                            (nulls.as_ref().is_none_or(|n| n.is_valid(r)), None)
                        }
                        Values::Double(c) => (c.is_valid(r), Some(c.value(r).to_bits())),
                        Values::Distinct(hashes, nulls) => (
                            nulls.as_ref().is_none_or(|n| n.is_valid(r)),
                            Some(hashes[r]),
                        ),
                    };
                    if passes && valid {
                        row.counted |= 1 << p;
                    }
                    if let Some(v) = value {
                        row.values[slot] = v;
                        slot += 1;
                    }
                }
                built.rows.push(row);
            }
            if self.private {
                // A copy of its own: a slice would keep the whole batch it came from (a
                // spill frame's every column) beyond the spill's reservation of it.
                let subjects: arrow::array::StringArray = batch.subject.iter().collect();
                built
                    .memory
                    .try_grow(subjects.get_array_memory_size())
                    .map_err(|_| Error::Limit("the job exceeded its memory limit".into()))?;
                built.subjects.push(subjects);
            }
        }
        Ok(built)
    }
}

impl Tally<'_> {
    /// What a worker needs to make this tally's groups of rows, for contributions whose parts
    /// it computes as `native`.
    pub(crate) fn builder(&self, native: NativeParts) -> Result<Builder> {
        Ok(Builder {
            native,
            subject_key: self.subject_key,
            check_keys: self.check_keys,
            value_key: crate::crypto::random_bytes::<16>(),
            converter: arrow::row::RowConverter::new(self.fields.clone()).map_err(arrow_error)?,
            no_keys: self.no_keys,
            private: self.privacy.is_some(),
        })
    }

    /// Takes one group of subjects' rows, every row of each of its subjects: each row's
    /// element for the gate's memory and each (cell, subject)'s parts.
    pub(crate) fn add_built<const V: usize>(
        &mut self,
        builder: &Builder,
        mut built: Built<V>,
    ) -> Result<()> {
        let native = &builder.native;
        let key = self.subject_key;
        // The group's cells as the tally's.
        let cells = built
            .cells
            .iter()
            .map(|k| u32::try_from(self.cell_at(k)).map_err(|_| too_many()))
            .collect::<Result<Vec<_>>>()?;
        for row in &mut built.rows {
            row.cell = cells[row.cell as usize];
        }
        // By cell and subject, and each subject's rows in their own order.
        built.rows.sort_unstable_by_key(Row::order);
        let mut elements = Vec::new();
        let mut totals = vec![Total::Count(0); native.parts.len()];
        let mut values = Vec::with_capacity(native.parts.len());
        // A distinct count's values of one subject, each part's in turn.
        let mut seen: Vec<u64> = Vec::new();
        for of_name in built
            .rows
            .chunk_by(|a, b| (a.cell, a.who) == (b.cell, b.who))
        {
            let (at, who) = (of_name[0].cell as usize, of_name[0].who);
            if let Some(k) = &key {
                // The gate's memory names a subject by its name alone, as it always has.
                elements.clear();
                elements.extend(of_name.iter().filter(|r| r.element != 0).map(|r| {
                    let adds = r.element & ((1 << TABLE_SHIFT) - 1);
                    (r.element >> TABLE_SHIFT, r.identity, adds)
                }));
                elements.sort_unstable();
                self.settle_subject(at, k, who, &elements);
            }
            for subject in of_name.chunk_by(|a, b| a.check == b.check) {
                for (total, p) in totals.iter_mut().zip(&native.parts) {
                    *total = match p.kind {
                        Kind::Rows | Kind::Count => Total::Count(0),
                        Kind::Double => Total::Double(None),
                        Kind::Distinct => Total::Distinct(0),
                    };
                }
                for row in subject {
                    let mut slot = 0;
                    for (p, total) in totals.iter_mut().enumerate() {
                        let counted = row.counted >> p & 1 == 1;
                        let value = match total {
                            Total::Count(_) => 0,
                            _ => {
                                slot += 1;
                                row.values[slot - 1]
                            }
                        };
                        if !counted {
                            continue;
                        }
                        match total {
                            Total::Count(n) => *n += 1,
                            Total::Double(t) => {
                                *t = Some(t.unwrap_or(0.0) + f64::from_bits(value));
                            }
                            // Counted below, over all of the subject's rows.
                            Total::Distinct(_) => {}
                        }
                    }
                }
                let mut slot = 0;
                for (p, total) in totals.iter_mut().enumerate() {
                    match total {
                        Total::Count(_) => continue,
                        Total::Double(_) => {}
                        Total::Distinct(n) => {
                            seen.clear();
                            seen.extend(
                                subject
                                    .iter()
                                    .filter(|row| row.counted >> p & 1 == 1)
                                    .map(|row| row.values[slot]),
                            );
                            seen.sort_unstable();
                            seen.dedup();
                            *n = seen.len() as u64;
                        }
                    }
                    slot += 1;
                }
                values.clear();
                values.extend(totals.iter().map(|t| t.value()));
                let name = match builder.private {
                    true => {
                        let (b, r) = *built
                            .places
                            .get(subject[0].seq as usize)
                            .ok_or_else(too_many)?;
                        Some(built.subjects[b as usize].value(r as usize))
                    }
                    false => None,
                };
                self.add_part(at, name, &values);
            }
        }
        Ok(())
    }
}

/// A keyed hash (SipHash-1-3) of a subject's key.
fn keyed(key: &[u8; 16], who: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_key(key);
    h.write(who);
    h.finish()
}

/// One part's running total over a subject's rows in a cell.
#[derive(Clone, Copy)]
enum Total {
    Count(u64),
    Double(Option<f64>),
    Distinct(u64),
}

impl Total {
    /// As the tally reads a part: a double, 0 for NULL (a sum of no values).
    fn value(self) -> f64 {
        match self {
            Total::Count(n) | Total::Distinct(n) => n as f64,
            Total::Double(v) => v.unwrap_or(0.0),
        }
    }
}

fn too_many() -> Error {
    Error::Internal("the gate's rows: too many to index".into())
}
