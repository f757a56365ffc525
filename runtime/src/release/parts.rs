//! Each subject's parts in each cell, computed by the tally itself: each row is taken once with
//! everything the tally reads of it (its cell, its subject's names, its element for the gate's
//! memory, which parts count it and its values), as it streams from the engine into a
//! [`RowSpill`] (or, under differential privacy, from a group of the engine's rows spilled);
//! the rows are grouped by (cell, subject) and the tally takes each run in one pass, the gate's
//! memory's elements with it. It gives what the engine's aggregation of the same rows gives
//! (`Contributions::over`): the same counts, the same sums of doubles but for rounding (each
//! subject's values added in the rows' own order, which the engine's partial aggregation need
//! not keep), and the same counts of distinct values. Two subjects are told apart by
//! two keyed hashes of their keys (the gate memory's 64-bit name, and the top [`CHECK_BITS`] of
//! a second under a key drawn for the job): they are taken for one only if both collide; two
//! values of a distinct count, by a 64-bit hash under a key of its own. A part it does not compute so (a source that is not a
//! double, more than eight sums and distinct counts or 32 parts, a FILTER whose column is missing) leaves
//! the job's groups to the engine.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Float64Type, Schema};

use super::{
    Adder, Cell, Contributions, MAX_MEASURES, MAX_TABLES, PartExpr, TABLE_SHIFT, Tally,
    arrow_error, unaliased,
};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::logical_expr::Expr;

use crate::crypto::SubjectKey;
use crate::error::{Error, Result};
use crate::hidden::{ARGUMENT_PREFIX, FILTER_PREFIX, SOURCE_PREFIX, SUBJECT};

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

/// One part: how, over which column (by index in the rows' schema), with which FILTER, and
/// for a sum or a distinct count the slot of a row's values that holds its value (one per
/// column and kind: `sum(x)` and `avg(x)` read one).
#[derive(Debug, Clone, Copy)]
struct Part {
    kind: Kind,
    column: Option<usize>,
    filter: Option<usize>,
    slot: usize,
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
                    slot: 0,
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
                        slot: 0,
                    }
                }
                PartExpr::Count(j) => Part {
                    kind: Kind::Count,
                    column: Some(index(format!("{ARGUMENT_PREFIX}{j}"))?),
                    filter: filter(j).ok()?,
                    slot: 0,
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
                        slot: 0,
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
                        slot: 0,
                    }
                }
            });
        }
        let mut slots = Vec::new();
        for p in &mut parts {
            let distinct = match p.kind {
                Kind::Rows | Kind::Count => continue,
                Kind::Double => false,
                Kind::Distinct => true,
            };
            let of = (distinct, p.column);
            p.slot = match slots.iter().position(|s| *s == of) {
                Some(at) => at,
                None => {
                    slots.push(of);
                    slots.len() - 1
                }
            };
        }
        let values = slots.len();
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

/// A batch's subjects' names as strings: read in place when the engine gives strings (the
/// bytes are the same whichever layout holds them), cast to strings otherwise.
enum Subjects {
    Strings(arrow::array::StringArray),
    Views(arrow::array::StringViewArray),
}

impl Subjects {
    fn of(b: &RecordBatch) -> Result<Subjects> {
        let subject = b
            .column_by_name(SUBJECT)
            .ok_or_else(|| Error::Internal("gate columns: no subject".into()))?;
        Ok(match subject.data_type() {
            DataType::Utf8View => Subjects::Views(subject.as_string_view().clone()),
            _ => Subjects::Strings(super::subjects_of(b)?.as_string::<i32>().clone()),
        })
    }

    /// Row `r`'s subject's name, `None` when it has none.
    fn get(&self, r: usize) -> Option<&[u8]> {
        match self {
            Subjects::Strings(a) => a.is_valid(r).then(|| a.value(r).as_bytes()),
            Subjects::Views(a) => a.is_valid(r).then(|| a.value(r).as_bytes()),
        }
    }
}

/// One batch of a group, ready for random access by row.
struct Batch {
    subject: Subjects,
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
        let subject = Subjects::of(b)?;
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

/// The most values a row may carry (one per column a sum reads, and one per distinct count)
/// for the tally to compute its parts, and the most parts (a row's parts that count it share
/// a word with its cell).
const MAX_VALUES: usize = 8;
const MAX_PARTS: usize = 32;

/// One row as the tally sorts it: its cell, its place among its bucket's (or group's) rows
/// (the engine adds a subject's rows in this order), its subject's name in the gate's memory
/// and a second hash of it under a key of the job's own (two subjects are told apart unless
/// both collide), its element for the gate's memory, which parts count it, and its values.
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

/// A row as the spill keeps it: [`HEAD`] words (its cell with the parts that count it above
/// it; `who`; the top [`CHECK_BITS`] of `check` above its element's table (eight bits) and
/// measures (32 bits); `identity`), then its values. Its place is not kept: the
/// rows of a bucket come back in the order they were added (each sealed frame is checked in
/// its place and the bucket's rows counted), and are numbered as they are read.
const HEAD: usize = 4;

/// The bits of a subject's second hash the spill keeps: a subject is told apart from another
/// by 64 + 24 bits of keyed hashes (two of a job's subjects collide in both with a chance of
/// about n^2 / 2^89: about 10^-12 for 25 million subjects; forcing it needs both keys). Two
/// that do are taken for one (SECURITY.md says what that costs).
const CHECK_BITS: u32 = 24;
/// The check's bits of its word (the top [`CHECK_BITS`]); below them, an element's table
/// (eight bits) above its measures (32 bits).
const CHECK_MASK: u64 = !((1u64 << (64 - CHECK_BITS)) - 1);
/// The highest table a row's element may name in the spill's records.
const MAX_TABLE: u64 = MAX_TABLES as u64 - 1;
// The check, the table and the measures never share a bit.
const _: () = assert!(CHECK_BITS + 8 + 32 <= 64 && MAX_TABLES <= 1 << 8 && MAX_MEASURES <= 32);

/// The element and check's word of a record: `check`'s top bits, the element's table and
/// measures (`element` as [`super::element`] gives it, its table at most [`MAX_TABLE`]).
fn element_word(check: u64, element: Option<(u64, u64, u64)>) -> Result<u64> {
    let mut w = check & CHECK_MASK;
    if let Some((table, _, adds)) = element {
        if table > MAX_TABLE || adds >> 32 != 0 {
            // Refused before the job runs (a release reads at most MAX_TABLES tables, and
            // has at most MAX_MEASURES measures): never truncated to another's.
            return Err(Error::Internal(
                "the gate's rows: an element beyond the records' room".into(),
            ));
        }
        w |= table << 32 | adds;
    }
    Ok(w)
}

impl<const V: usize> Row<V> {
    fn order(&self) -> (u32, u64, u64, u32) {
        (self.cell, self.who, self.check, self.seq)
    }

    fn from_words(w: &[u64]) -> Row<V> {
        let mut values = [0; V];
        values.copy_from_slice(&w[HEAD..HEAD + V]);
        Row {
            cell: w[0] as u32,
            seq: 0,
            who: w[1],
            check: w[2] & CHECK_MASK,
            identity: w[3],
            // No element unless it adds to a measure.
            element: match w[2] & 0xffff_ffff {
                0 => 0,
                adds => (w[2] >> 32 & MAX_TABLE) << TABLE_SHIFT | adds,
            },
            counted: w[0] >> 32,
            values,
        }
    }
}

/// The cells of a job's rows, numbered as first seen, by their keys in Arrow's row format.
#[derive(Default)]
struct Cells {
    index: std::collections::HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    keys: Vec<Box<[u8]>>,
    /// What the keys (and a spill's counts of their rows) take in memory, about.
    bytes: usize,
}

impl Cells {
    /// The number of a key moved from another's cells, numbered as first seen; its room is
    /// the other's.
    fn add(&mut self, key: Box<[u8]>) -> Result<u32> {
        if let Some(c) = self.index.get(&key) {
            return Ok(*c);
        }
        let c = u32::try_from(self.keys.len()).map_err(|_| too_many())?;
        self.index.insert(key.clone(), c);
        self.keys.push(key);
        Ok(c)
    }

    fn number(&mut self, key: &[u8]) -> Result<u32> {
        if let Some(c) = self.index.get(key) {
            return Ok(*c);
        }
        let c = u32::try_from(self.keys.len()).map_err(|_| too_many())?;
        self.index.insert(key.into(), c);
        self.keys.push(key.into());
        // The key twice (the index's and the list's, each with its allocation's slack), the
        // index's slot at its load, the list's and the count, all while they grow.
        self.bytes += 3 * key.len() + 112;
        Ok(c)
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

/// Makes the rows the tally reads from the engine's rows of every subject, on a thread other
/// than the tally's: everything it reads is its own.
pub(crate) struct Builder {
    native: NativeParts,
    subject_key: Option<crate::crypto::SubjectKey>,
    /// Keys of its own hashes of subjects (SipHash-1-3): one names them when no subject key
    /// does, the other tells apart two subjects of one name.
    check_keys: ([u8; 16], [u8; 16]),
    /// Names a distinct count's values: a key of its own, drawn for the job's groups (a
    /// subject's rows are all in one group) and never stored.
    value_key: [u8; 16],
    fields: Vec<arrow::row::SortField>,
    converter: arrow::row::RowConverter,
    no_keys: bool,
    private: bool,
}

impl Builder {
    /// A builder of the records of a [`RowSpill`] from rows of `schema` (with the hidden key
    /// columns of the result's cells), for contributions whose parts the tally computes as
    /// `native`, not under differential privacy.
    pub(crate) fn new(
        native: NativeParts,
        subject_key: Option<crate::crypto::SubjectKey>,
        schema: &Schema,
    ) -> Result<Builder> {
        Builder::with(native, subject_key, super::key_fields(Some(schema)), false)
    }

    fn with(
        native: NativeParts,
        subject_key: Option<crate::crypto::SubjectKey>,
        (fields, no_keys): (Vec<arrow::row::SortField>, bool),
        private: bool,
    ) -> Result<Builder> {
        Ok(Builder {
            native,
            subject_key,
            check_keys: (
                crate::crypto::random_bytes::<16>(),
                crate::crypto::random_bytes::<16>(),
            ),
            value_key: crate::crypto::random_bytes::<16>(),
            converter: arrow::row::RowConverter::new(fields.clone()).map_err(arrow_error)?,
            fields,
            no_keys,
            private,
        })
    }

    /// A builder of the same records under the same keys (a subject named by both names it
    /// the same), for another thread.
    fn twin(&self) -> Result<Builder> {
        Ok(Builder {
            native: self.native.clone(),
            subject_key: self.subject_key,
            check_keys: self.check_keys,
            value_key: self.value_key,
            fields: self.fields.clone(),
            converter: arrow::row::RowConverter::new(self.fields.clone()).map_err(arrow_error)?,
            no_keys: self.no_keys,
            private: self.private,
        })
    }

    /// How many values its rows carry (the columns sums read, the distinct counts): their `V`.
    pub(crate) fn values(&self) -> usize {
        self.native.values
    }

    /// Makes every row of `b` that has a subject, as the words of a [`Row`] (its place 0),
    /// its cell numbered by `cells`, and gives each to `each` with its row in `b`.
    fn make(
        &self,
        b: &RecordBatch,
        cells: &mut Cells,
        mut each: impl FnMut(usize, &[u64]) -> Result<()>,
    ) -> Result<()> {
        let batch = Batch::new(b, &self.native, self.subject_key.is_some(), &self.value_key)?;
        let keys = super::keys_in(&self.converter, self.no_keys, b)?;
        // Keyed once: a copy of each names one subject.
        let (name, check) = (
            match &self.subject_key {
                Some(k) => k.subject_hasher(),
                None => siphasher::sip::SipHasher13::new_with_key(&self.check_keys.0),
            },
            siphasher::sip::SipHasher13::new_with_key(&self.check_keys.1),
        );
        let named = |mut h: siphasher::sip::SipHasher13, who: &[u8]| {
            use std::hash::Hasher;
            h.write(who);
            h.finish()
        };
        // Which rows each part counts (a FILTER passes a row where it is true, not NULL),
        // where not every row; the parts that count every row.
        let mut counts = Vec::new();
        let mut every = 0u64;
        for (p, (values, filter)) in batch.values.iter().enumerate() {
            let valid = match values {
                Values::Rows => None,
                Values::Count(nulls) | Values::Distinct(_, nulls) => nulls.clone(),
                Values::Double(c) => c.nulls().cloned(),
            }
            .map(|n| n.into_inner());
            let passes = filter.as_ref().map(|f| match f.nulls() {
                Some(n) => f.values() & n.inner(),
                None => f.values().clone(),
            });
            match (valid, passes) {
                (None, None) => every |= 1 << p,
                (Some(m), None) | (None, Some(m)) => counts.push((p, m)),
                (Some(v), Some(f)) => counts.push((p, &v & &f)),
            }
        }
        // Each value's column, by its slot (a sum's double's bits, a distinct count's hash;
        // read for every row, counted or not).
        let mut slots: Vec<Option<&Values>> = vec![None; self.native.values];
        for ((values, _), part) in batch.values.iter().zip(&self.native.parts) {
            if matches!(values, Values::Double(_) | Values::Distinct(..)) {
                slots[part.slot].get_or_insert(values);
            }
        }
        // Made a block of rows at a time, a column at a time, in room a core's caches hold.
        const BLOCK: usize = 1024;
        let width = HEAD + self.native.values;
        let mut block = vec![0u64; BLOCK * width];
        let n = b.num_rows();
        for start in (0..n).step_by(BLOCK) {
            let rows = start..(start + BLOCK).min(n);
            let block = &mut block[..rows.len() * width];
            block.fill(0);
            for (w, r) in block.chunks_exact_mut(width).zip(rows.clone()) {
                // Rows of no subject never reach the tally (filtered in its plan).
                let Some(who) = batch.subject.get(r) else {
                    continue;
                };
                w[0] = u64::from(cells.number(keys.row(r).as_ref())?);
                w[1] = named(name, who);
                // Only the check's top bits are kept: the element's bits go below them.
                w[2] = named(check, who) & CHECK_MASK;
                w[0] |= every << 32;
            }
            if let Some(e) = batch.elements.as_ref() {
                for (w, r) in block.chunks_exact_mut(width).zip(rows.clone()) {
                    let element = super::element(e, r);
                    w[2] = element_word(w[2], element)?;
                    w[3] = element.map_or(0, |(_, identity, _)| identity);
                }
            }
            for (p, mask) in &counts {
                for (w, r) in block.chunks_exact_mut(width).zip(rows.clone()) {
                    w[0] |= u64::from(mask.value(r)) << (32 + p);
                }
            }
            for (slot, values) in slots.iter().enumerate() {
                let at = HEAD + slot;
                match values {
                    Some(Values::Double(c)) => {
                        let c = c.values();
                        for (w, r) in block.chunks_exact_mut(width).zip(rows.clone()) {
                            w[at] = c[r].to_bits();
                        }
                    }
                    Some(Values::Distinct(hashes, _)) => {
                        for (w, r) in block.chunks_exact_mut(width).zip(rows.clone()) {
                            w[at] = hashes[r];
                        }
                    }
                    _ => return Err(Error::Internal("gate columns: a value's slot".into())),
                }
            }
            for (w, r) in block.chunks_exact(width).zip(rows.clone()) {
                if batch.subject.get(r).is_some() {
                    each(r, w)?;
                }
            }
        }
        Ok(())
    }

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
        let mut cells = Cells::default();
        let mut out = Vec::with_capacity(count);
        let mut places = Vec::new();
        let mut subjects = Vec::new();
        let mut seq = 0u32;
        for (bi, b) in rows.iter().enumerate() {
            self.make(b, &mut cells, |r, words| {
                let mut row = Row::<V>::from_words(words);
                row.seq = seq;
                seq = seq.checked_add(1).ok_or_else(too_many)?;
                if self.private {
                    places.push((bi as u32, r as u32));
                }
                out.push(row);
                Ok(())
            })?;
            if self.private {
                // A copy of its own: a slice would keep the whole batch it came from (a
                // spill frame's every column) beyond the spill's reservation of it.
                let names: arrow::array::StringArray =
                    super::subjects_of(b)?.as_string::<i32>().iter().collect();
                memory
                    .try_grow(names.get_array_memory_size())
                    .map_err(|_| Error::Limit("the job exceeded its memory limit".into()))?;
                subjects.push(names);
            }
        }
        Ok(Built {
            memory,
            rows: out,
            cells: cells.keys,
            subjects,
            places,
        })
    }
}

/// Every subject's rows of a job as the tally reads them, made once as they stream from the
/// engine (each row's cell, its subject's two names, its element, which parts count it and
/// its values, in fixed-size records of [`HEAD`] words and one per value) by one [`Lane`] or
/// more (one per thread the engine's partitions stream on), each partitioning them by subject
/// into [`crate::spill::BUCKETS`] buckets of chunks: held in memory while they take at most a
/// quarter of the job's budget (shared by the lanes), and beyond it a bucket that needs room
/// is written to its lane's sealed file (under a key of the job's memory only) and its room
/// used again. Read back a bucket at a time, every lane's part of it together, so the tally's
/// work is bounded by the largest bucket (a subject's rows are all in one, whichever lanes
/// they came through: the lanes name subjects under the same keys), whatever the table's
/// size. Not under differential privacy (the tally names each subject there).
pub(crate) struct RowSpill {
    lanes: Vec<Lane>,
    /// Per lane, its cells' numbers among the spill's (shared with the buckets taken out).
    maps: Vec<std::sync::Arc<[u32]>>,
    /// The cells of every lane, numbered by the spill (their room is the lanes').
    cells: Cells,
    /// Each cell's rows (by its number) in the even buckets and in the odd ones.
    rows: Vec<[u64; 2]>,
    native: NativeParts,
}

/// One thread's part of a [`RowSpill`]: the records it made of the batches it was given,
/// its cells numbered by itself.
pub(crate) struct Lane {
    builder: Builder,
    cells: Cells,
    /// Each cell's rows (by its number) in the even buckets and in the odd ones.
    rows: Vec<[u64; 2]>,
    chunks: Chunks,
    /// The next place in each bucket.
    seqs: Vec<u32>,
    /// Each bucket's rows in each of its slices (by the top bits of their subject's name).
    slices: Vec<[u32; SLICES]>,
    /// Reserves the chunks and the cells' keys.
    reservation: MemoryReservation,
}

/// The buckets' chunks of records and their sealed files.
struct Chunks {
    /// Each bucket's chunks of records (little-endian words), the last one filling.
    buckets: Vec<Vec<Vec<u8>>>,
    /// Chunks written out, kept to fill again.
    free: Vec<Vec<u8>>,
    /// Chunks made in all, the most there may be (the lane's share of a quarter of the
    /// budget), and the bytes of records one holds.
    made: usize,
    max: usize,
    size: usize,
    files: crate::spill::SealedFiles,
}

/// Room for a chunk's tag when it is sealed in place.
const TAG: usize = 16;

/// The slices of a bucket, grouped each by itself: few enough that the rows read back are
/// written to them in as many sequential streams (which the processor's caches and prefetch
/// keep up with), many enough that a slice of a 100M-row job's bucket (some 24,000 rows) is
/// grouped within a core's caches (some 1.5 MB).
const SLICES: usize = 16;

/// The slice of a row whose subject is named `who` (a keyed hash): its top four bits.
fn slice(who: u64) -> usize {
    (who >> 60) as usize
}

impl RowSpill {
    /// One lane for each reservation (one per thread that makes records), all of a job of
    /// `budget` bytes, their files under `root`; the first makes its records with `builder`,
    /// the others with its twins.
    pub(crate) fn lanes(
        root: &std::path::Path,
        builder: Builder,
        budget: usize,
        reservations: Vec<MemoryReservation>,
    ) -> Result<Vec<Lane>> {
        if reservations.is_empty() {
            return Err(Error::Internal("the gate's spill: no lanes".into()));
        }
        let count = reservations.len();
        let limit = (budget / 4).clamp(1 << 20, 1 << 30) / count;
        let buckets = crate::spill::BUCKETS;
        // About four chunks a bucket within the limit, of whole records, 4 to 256 KiB; and
        // never fewer than two chunks a bucket in all, lest a bucket be written out for every
        // few rows (at the smallest budgets the limit is then passed, by up to 2 MiB a lane).
        let record = 8 * (HEAD + builder.native.values);
        let size = (limit / buckets / 4).clamp(4 << 10, 256 << 10) / record * record;
        let files = crate::spill::SealedFiles::new(root, budget)?;
        let mut makers = Vec::with_capacity(count);
        for _ in 1..count {
            makers.push((builder.twin()?, files.sibling()?));
        }
        makers.insert(0, (builder, files));
        let mut lanes = Vec::with_capacity(count);
        for ((builder, files), reservation) in makers.into_iter().zip(reservations) {
            lanes.push(Lane {
                builder,
                cells: Cells::default(),
                rows: Vec::new(),
                chunks: Chunks {
                    buckets: vec![Vec::new(); buckets],
                    free: Vec::new(),
                    made: 0,
                    max: (limit / (size + TAG)).max(2 * buckets),
                    size,
                    files,
                },
                seqs: vec![0; buckets],
                slices: vec![[0; SLICES]; buckets],
                reservation,
            });
        }
        Ok(lanes)
    }

    /// The lanes' records as one spill: every cell numbered once, every bucket's rows counted
    /// (below 2^32 in all).
    pub(crate) fn join(mut lanes: Vec<Lane>) -> Result<RowSpill> {
        let native = match lanes.first() {
            Some(l) => l.builder.native.clone(),
            None => return Err(Error::Internal("the gate's spill: no lanes".into())),
        };
        let mut cells = Cells::default();
        let mut maps = Vec::with_capacity(lanes.len());
        let mut rows: Vec<[u64; 2]> = Vec::new();
        for lane in &mut lanes {
            // The lane's keys move to the spill's cells; their room stays reserved by it.
            let keys = std::mem::take(&mut lane.cells.keys);
            lane.cells.index = Default::default();
            let map = keys
                .into_iter()
                .map(|k| cells.add(k))
                .collect::<Result<Vec<u32>>>()?;
            rows.resize(cells.keys.len(), [0; 2]);
            for (at, counts) in map.iter().zip(&lane.rows) {
                let to = &mut rows[*at as usize];
                to[0] += counts[0];
                to[1] += counts[1];
            }
            maps.push(std::sync::Arc::<[u32]>::from(map));
        }
        for b in 0..crate::spill::BUCKETS {
            lanes
                .iter()
                .try_fold(0u32, |all, l| all.checked_add(l.seqs[b]))
                .ok_or_else(too_many)?;
        }
        // The spill's counts and the lanes' maps are reserved with the first lane's keys.
        let mapped: usize = maps.iter().map(|m| m.len()).sum();
        let first = &mut lanes[0];
        first.cells.bytes += rows.capacity() * std::mem::size_of::<[u64; 2]>() + 4 * mapped;
        first.reserve()?;
        Ok(RowSpill {
            lanes,
            maps,
            cells,
            rows,
            native,
        })
    }

    /// Bytes written to disk (sealed), in all.
    pub(crate) fn written(&self) -> u64 {
        self.lanes.iter().map(|l| l.chunks.files.written()).sum()
    }

    /// How many values its rows carry: their `V`.
    pub(crate) fn values(&self) -> usize {
        self.native.values
    }

    /// The parts its rows carry (for the tally to read them with).
    pub(crate) fn parts(&self) -> NativeParts {
        self.native.clone()
    }

    /// The cells' keys, by their numbers in the rows.
    pub(crate) fn cells(&self) -> &[Box<[u8]>] {
        &self.cells.keys
    }

    /// Each cell's rows (by its number) in the even buckets and in the odd ones.
    pub(crate) fn cell_rows(&self) -> &[[u64; 2]] {
        &self.rows
    }

    /// Bucket `b`'s rows, read back from a spill that threads share, opened and grouped for
    /// the tally, reserved in `memory` until the tally has taken them: by slice (the top bits
    /// of the subject's name), then by cell and subject (each subject's rows in their own
    /// order), so that each (cell, subject)'s rows are together and each slice, a 16th of the
    /// bucket, is grouped in the processor's cache. The spill is held only while the
    /// bucket's parts are taken out of it and while their chunks' room is given back: the
    /// bucket is read, opened, placed and grouped while other buckets are ([`RowSpill::read`]).
    pub(crate) fn take<const V: usize>(
        spill: &std::sync::Mutex<RowSpill>,
        b: usize,
        Room { memory, rows }: Room<V>,
    ) -> Result<Sorted<V>> {
        let (mut rows, ends) = RowSpill::read::<V>(spill, b, &memory, rows)?;
        // Each slice is grouped in room of a slice's size, reserved while it is used.
        let mut start = 0;
        let most = ends
            .iter()
            .scan(0, |at, end| {
                let n = end - *at;
                *at = *end;
                Some(n)
            })
            .max()
            .unwrap_or(0);
        let room = Grouping::<V>::bytes(most);
        memory.try_grow(room).map_err(|_| memory_limit())?;
        let mut grouping = Grouping::with(most);
        for end in ends {
            group_slice(&mut rows[start..end], &mut grouping)?;
            start = end;
        }
        drop(grouping);
        memory.shrink(room);
        Ok(Sorted { memory, rows })
    }

    /// Bucket `b`'s rows from every lane, read back and opened, reserved in `memory`, each
    /// placed in its slice as it is read (in order within it: a lane's rows in the order it
    /// added them, after those of the lanes before it), and where each slice ends. The spill
    /// is held only while each lane's part of the bucket is taken out of it and while the
    /// room of its chunks is given back: the bucket is read, opened and placed while other
    /// buckets are.
    fn read<const V: usize>(
        spill: &std::sync::Mutex<RowSpill>,
        b: usize,
        memory: &MemoryReservation,
        mut rows: Vec<Row<V>>,
    ) -> Result<(Vec<Row<V>>, [usize; SLICES])> {
        let lock = || {
            spill
                .lock()
                .map_err(|_| Error::Internal("the gate's spill: a reader failed".into()))
        };
        // Where each slice starts and ends, by the rows counted in each as they were added.
        let (mut next, mut ends) = ([0usize; SLICES], [0usize; SLICES]);
        let (parts, aheads) = {
            let mut spill = lock()?;
            if V != spill.values() {
                return Err(Error::Internal("gate columns: the sums miscounted".into()));
            }
            let mut at = 0;
            for s in 0..SLICES {
                next[s] = at;
                at += spill
                    .lanes
                    .iter()
                    .map(|l| l.slices[b][s] as usize)
                    .sum::<usize>();
                ends[s] = at;
            }
            let RowSpill { lanes, maps, .. } = &mut *spill;
            lanes
                .iter_mut()
                .zip(maps.iter())
                .map(|(lane, map)| lane.take_bucket(b, map))
                .unzip::<_, _, Vec<LaneBucket>, Vec<crate::spill::Ahead>>()
        };
        // The next buckets' files are asked of the disk with the spill let go.
        aheads.into_iter().for_each(crate::spill::Ahead::ask);
        let size = std::mem::size_of::<Row<V>>();
        // The bucket's rows, counted as they were added: reserved once, made in room of
        // that size.
        let count: usize = parts.iter().map(|p| p.count).sum();
        if ends[SLICES - 1] != count {
            return Err(Error::Internal(
                "the gate's spill: its slices miscounted".into(),
            ));
        }
        // The room of a bucket taken before is used again (unless it is over twice what this
        // one needs: a skewed bucket's room is not kept): all of it is reserved, before it
        // is made and as it is.
        rows.clear();
        if rows.capacity() > count.saturating_mul(2) {
            rows = Vec::new();
        }
        memory
            .try_resize(count.max(rows.capacity()).saturating_mul(size))
            .map_err(|_| memory_limit())?;
        rows.reserve_exact(count);
        memory
            .try_resize(rows.capacity().saturating_mul(size))
            .map_err(|_| memory_limit())?;
        rows.resize(count, Row::from_words(&[0; HEAD + MAX_VALUES][..HEAD + V]));
        let mut before = 0usize;
        let mut given = Vec::with_capacity(parts.len());
        for part in parts {
            let count = part.count;
            given.push(part.read_into(memory, &mut rows, &mut next, &ends, before)?);
            before += count;
        }
        if next != ends {
            return Err(damaged());
        }
        // The chunks read are freed: their room is given back.
        let mut spill = lock()?;
        for (lane, chunks) in spill.lanes.iter_mut().zip(given) {
            lane.chunks.made -= chunks;
            lane.reserve()?;
        }
        Ok((rows, ends))
    }
}

/// One lane's part of a bucket, taken out of the spill to be read: its sealed file, its
/// chunks held in memory, the lane's cells' numbers in the spill, and its rows' count.
struct LaneBucket {
    sealed: Option<crate::spill::SealedBucket>,
    held: Vec<Vec<u8>>,
    map: std::sync::Arc<[u32]>,
    count: usize,
}

/// Room to group a slice's rows in, used again for every slice of a bucket.
#[derive(Default)]
struct Grouping<const V: usize> {
    /// Open addressing: each slot empty (`u32::MAX`) or a group's number.
    slots: Vec<u32>,
    /// Each group's cell, name, and rows (then where its rows go next).
    groups: Vec<(u32, u64, u32)>,
    /// Each row's group.
    of: Vec<u32>,
    rows: Vec<Row<V>>,
}

impl<const V: usize> Grouping<V> {
    /// Room for slices of at most `rows` rows, made at once: grouping them never grows it.
    fn with(rows: usize) -> Grouping<V> {
        Grouping {
            slots: Vec::with_capacity(Self::slots(rows)),
            groups: Vec::with_capacity(rows),
            of: Vec::with_capacity(rows),
            rows: Vec::with_capacity(rows),
        }
    }

    /// The slots of the table for `rows` rows: at least twice as many, a power of two.
    fn slots(rows: usize) -> usize {
        rows.saturating_mul(2).next_power_of_two().max(16)
    }

    /// What it takes in memory for slices of at most `rows` rows.
    fn bytes(rows: usize) -> usize {
        Self::slots(rows)
            .saturating_mul(4)
            .saturating_add(rows.saturating_mul(
                std::mem::size_of::<(u32, u64, u32)>() + 4 + std::mem::size_of::<Row<V>>(),
            ))
    }
}

/// Groups one slice of a bucket's rows, which are in the order they were added (by their
/// place), for the tally: each (cell, subject)'s rows together and in their order, and each
/// (cell, name)'s subjects together. The rows are grouped by cell and first name in a table
/// of twice as many slots as rows (the names are keyed hashes, so no one can aim rows at
/// one slot), the groups in the order their first rows came and each group's rows in their
/// order; then a group of more than one subject (two subjects' first names collide but not
/// their second) is sorted by the second name, in a stable sort that keeps each subject's
/// rows in order.
fn group_slice<const V: usize>(rows: &mut [Row<V>], room: &mut Grouping<V>) -> Result<()> {
    let Grouping {
        slots,
        groups,
        of,
        rows: grouped,
    } = room;
    let n = rows.len();
    let Some(first) = rows.first().copied() else {
        return Ok(());
    };
    let size = Grouping::<V>::slots(n);
    let mask = size - 1;
    slots.clear();
    slots.resize(size, u32::MAX);
    groups.clear();
    of.clear();
    for r in rows.iter() {
        let mut at =
            (r.who ^ u64::from(r.cell).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize & mask;
        let g = loop {
            let g = slots[at];
            if g == u32::MAX {
                // A group's number is never the mark of an empty slot.
                let g = u32::try_from(groups.len())
                    .ok()
                    .filter(|g| *g != u32::MAX)
                    .ok_or_else(too_many)?;
                slots[at] = g;
                groups.push((r.cell, r.who, 0));
                break g;
            }
            let (cell, who, _) = groups[g as usize];
            if (cell, who) == (r.cell, r.who) {
                break g;
            }
            at = (at + 1) & mask;
        };
        groups[g as usize].2 += 1;
        of.push(g);
    }
    // Where each group's rows start, in the order of the groups.
    let mut start = 0u32;
    for g in groups.iter_mut() {
        let count = g.2;
        g.2 = start;
        start += count;
    }
    grouped.clear();
    grouped.resize(n, first);
    for (r, g) in rows.iter().zip(of.iter()) {
        let to = &mut groups[*g as usize].2;
        grouped[*to as usize] = *r;
        *to += 1;
    }
    for run in grouped.chunk_by_mut(|a, b| (a.cell, a.who) == (b.cell, b.who)) {
        if run.iter().any(|r| r.check != run[0].check) {
            run.sort_by_key(|r| r.check);
        }
    }
    rows.copy_from_slice(grouped);
    Ok(())
}

fn damaged() -> Error {
    Error::Integrity("the gate's spill file is damaged".into())
}

impl Lane {
    /// Takes one batch of rows.
    pub(crate) fn push(&mut self, b: &RecordBatch) -> Result<()> {
        let Lane {
            builder,
            cells,
            rows,
            chunks,
            seqs,
            slices,
            reservation,
        } = self;
        builder.make(b, cells, |_, words| {
            // A subject's rows are all in one bucket: the second name's top bits (a hash
            // under a key of the job's own, the same in every lane).
            let at = (words[2] >> 56) as usize % crate::spill::BUCKETS;
            let cell = words[0] as u32 as usize;
            if cell >= rows.len() {
                rows.resize(cell + 1, [0; 2]);
            }
            rows[cell][at % 2] += 1;
            let record = chunks.record(at, 8 * words.len(), reservation)?;
            seqs[at] = seqs[at].checked_add(1).ok_or_else(too_many)?;
            // Below the bucket's row count, which is below 2^32.
            slices[at][slice(words[1])] += 1;
            // Made whole, then added at once.
            let mut bytes = [0u8; 8 * (HEAD + MAX_VALUES)];
            for (to, w) in bytes.chunks_exact_mut(8).zip(words) {
                to.copy_from_slice(&w.to_le_bytes());
            }
            record.extend_from_slice(&bytes[..8 * words.len()]);
            ask_for_next(record, 8 * words.len());
            Ok(())
        })?;
        if self.reserve().is_err() {
            // The pool has no room for the chunks and the cells' keys: every bucket is
            // written, the chunks written out given back, and from now on at most half as
            // many made (never fewer than two a bucket: the job fails for memory first).
            let chunks = &mut self.chunks;
            for b in 0..crate::spill::BUCKETS {
                chunks.write(b)?;
            }
            chunks.max = (chunks.made / 2).max(2 * crate::spill::BUCKETS);
            chunks.made -= chunks.free.len();
            chunks.free.clear();
            self.reserve()?;
        }
        Ok(())
    }

    /// Reserves what the chunks and the cells' keys and counts take.
    fn reserve(&mut self) -> Result<()> {
        let chunks = self.chunks.made * (self.chunks.size + TAG);
        let counts = self.rows.capacity() * std::mem::size_of::<[u64; 2]>();
        self.reservation
            .try_resize(chunks + self.cells.bytes + counts)
            .map_err(|_| memory_limit())
    }

    /// Takes its part of bucket `b` out, to be read (the room of its chunks stays reserved
    /// until [`LaneBucket::read_into`] has read them), with the next buckets' files to ask of
    /// the disk.
    fn take_bucket(
        &mut self,
        b: usize,
        map: &std::sync::Arc<[u32]>,
    ) -> (LaneBucket, crate::spill::Ahead) {
        // Nothing more is written: the chunks kept to fill again are given back.
        let chunks = &mut self.chunks;
        chunks.made -= chunks.free.len();
        chunks.free = Vec::new();
        let (sealed, ahead) = chunks.files.take(b);
        let part = LaneBucket {
            sealed,
            held: std::mem::take(&mut chunks.buckets[b]),
            map: std::sync::Arc::clone(map),
            count: self.seqs[b] as usize,
        };
        (part, ahead)
    }
}

impl LaneBucket {
    /// Reads its rows back into `rows`, each opened (reserved in `memory` while it is) and
    /// placed in its slice at `next` (which ends at `ends`), numbered by the spill after the
    /// `before` rows of the lanes before it; answers how many chunks it held (now freed).
    fn read_into<const V: usize>(
        self,
        memory: &MemoryReservation,
        rows: &mut [Row<V>],
        next: &mut [usize; SLICES],
        ends: &[usize; SLICES],
        before: usize,
    ) -> Result<usize> {
        let LaneBucket {
            sealed,
            held,
            map,
            count,
        } = self;
        let record = 8 * (HEAD + V);
        let mut read = 0usize;
        let mut words = [0u64; HEAD + MAX_VALUES];
        let mut decode = |plain: &[u8]| -> Result<()> {
            if !plain.len().is_multiple_of(record) {
                return Err(damaged());
            }
            for r in plain.chunks_exact(record) {
                for (w, bytes) in words.iter_mut().zip(r.chunks_exact(8)) {
                    let mut le = [0u8; 8];
                    le.copy_from_slice(bytes);
                    *w = u64::from_le_bytes(le);
                }
                let mut row = Row::from_words(&words[..HEAD + V]);
                // Rows come back in the order they were added (the frames are checked in
                // their places), each to a place in its slice that was counted for it, of a
                // cell the lane numbered.
                let s = slice(row.who);
                if next[s] >= ends[s] {
                    return Err(damaged());
                }
                row.cell = *map.get(row.cell as usize).ok_or_else(damaged)?;
                row.seq = u32::try_from(before + read).map_err(|_| damaged())?;
                rows[next[s]] = row;
                next[s] += 1;
                read += 1;
            }
            Ok(())
        };
        if let Some(sealed) = sealed {
            sealed.read(memory, |plain| {
                decode(plain)?;
                // The frame is given back once its rows are made.
                memory.shrink((plain.len() + TAG).min(memory.size()));
                Ok(())
            })?;
        }
        for c in &held {
            decode(c)?;
        }
        if read != count {
            return Err(damaged());
        }
        Ok(held.len())
    }
}

/// Asks for the memory of the next record of `bytes` bytes of a bucket's chunk now, long
/// before it is written: a lane writes to every bucket's chunk in turn (hundreds of streams,
/// more than the processor follows by itself), and a chunk used again (written out and
/// filled anew) is no longer in its caches. Only advice: it reads nothing and changes
/// nothing.
#[inline(always)]
#[allow(clippy::ptr_arg)] // its spare room is read: the Vec's, not a slice's
fn ask_for_next(chunk: &Vec<u8>, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let last = chunk.len() + bytes - 1;
        if last < chunk.capacity() {
            // SAFETY: a prefetch reads no memory (it is only advice, and never faults), and
            // the address is within the chunk's allocation.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(chunk.as_ptr().wrapping_add(last).cast::<i8>());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (chunk, bytes);
}

impl Chunks {
    /// The chunk of bucket `at` to add a record of `bytes` to: its last, or one made or taken
    /// again (when the chunks take the limit or the pool has no room for another, by writing
    /// a bucket out: this one, or when it holds none the one that holds the most). A chunk is
    /// reserved in `reservation` before it is made (resized to what the spill holds after
    /// each batch).
    fn record(
        &mut self,
        at: usize,
        bytes: usize,
        reservation: &MemoryReservation,
    ) -> Result<&mut Vec<u8>> {
        let has_room = self.buckets[at]
            .last()
            .is_some_and(|c| c.len() + bytes <= self.size);
        if !has_room {
            let chunk = match self.free.pop() {
                Some(c) => c,
                None if self.made < self.max && reservation.try_grow(self.size + TAG).is_ok() => {
                    self.made += 1;
                    Vec::with_capacity(self.size + TAG)
                }
                None => {
                    let out = match self.buckets[at].is_empty() {
                        false => at,
                        true => (0..self.buckets.len())
                            .max_by_key(|b| self.buckets[*b].len())
                            .unwrap_or(at),
                    };
                    self.write(out)?;
                    self.free.pop().ok_or_else(memory_limit)?
                }
            };
            self.buckets[at].push(chunk);
        }
        self.buckets[at].last_mut().ok_or_else(memory_limit)
    }

    /// Seals every chunk of bucket `b` into its file, and keeps them to fill again.
    fn write(&mut self, b: usize) -> Result<()> {
        for mut c in std::mem::take(&mut self.buckets[b]) {
            self.files.write(b, &mut c)?;
            c.clear();
            self.free.push(c);
        }
        Ok(())
    }
}

/// Under differential privacy, the subjects of a group's batches and where each of its rows
/// is (batch, row).
type Names<'a> = (&'a [arrow::array::StringArray], &'a [(u32, u32)]);

/// One bucket's rows, grouped for the tally (by cell and subject).
pub(crate) struct Sorted<const V: usize> {
    /// Their room in the job's pool, kept with the rows' room when the tally has taken them
    /// (for the next bucket) and given back with it.
    memory: MemoryReservation,
    rows: Vec<Row<V>>,
}

impl<const V: usize> Sorted<V> {
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Room for a bucket's rows, reserved in the job's pool: made new, or a bucket's once the
/// tally has taken it, to read another into (its pages are not made and cleared again).
pub(crate) struct Room<const V: usize> {
    memory: MemoryReservation,
    rows: Vec<Row<V>>,
}

impl<const V: usize> Room<V> {
    pub(crate) fn new(memory: MemoryReservation) -> Room<V> {
        Room {
            memory,
            rows: Vec::new(),
        }
    }
}

impl Tally<'_> {
    /// What a worker needs to make this tally's groups of rows, for contributions whose parts
    /// it computes as `native`.
    pub(crate) fn builder(&self, native: NativeParts) -> Result<Builder> {
        Builder::with(
            native,
            self.subject_key,
            (self.fields.clone(), self.no_keys),
            self.privacy.is_some(),
        )
    }

    /// The tally's cells of a spill's cells, by their numbers there, and a share of the
    /// tally (its cells, of no subjects yet) to take some of the spill's buckets on another
    /// thread while the tally takes the others. With the gate's memory, each of the tally's
    /// cells' elements is given room for all its rows (one element each, nearly always: the
    /// share's are joined with them), and the share's for the rows of half the buckets (about
    /// what it takes; more grow by doubling).
    pub(crate) fn cells_of(&mut self, spill: &RowSpill) -> Result<(Vec<u32>, Share)> {
        let cells = spill
            .cells()
            .iter()
            .map(|k| u32::try_from(self.cell_at(k)).map_err(|_| too_many()))
            .collect::<Result<Vec<_>>>()?;
        // Under differential privacy the tally keeps each subject's parts by name: a share
        // has no names to keep.
        if self.privacy.is_some() {
            return Err(Error::Internal(
                "the gate's tally: a share under differential privacy".into(),
            ));
        }
        let measures = self.analysis.measures.len();
        let mut share = Share {
            adder: self.adder.clone(),
            subject_key: self.subject_key,
            cells: self
                .cells
                .iter()
                .map(|c| Cell::empty(measures, self.adder.top, c.floors.clone(), Box::default()))
                .collect(),
        };
        if self.subject_key.is_some() {
            for (at, [even, odd]) in cells.iter().zip(spill.cell_rows()) {
                let (even, odd) = (usize::try_from(*even), usize::try_from(*odd));
                let (even, odd) = (even.map_err(|_| too_many())?, odd.map_err(|_| too_many())?);
                // The tally's room for both: the share's are joined with its own before they
                // are sorted. The share takes about half the buckets: the odd ones' rows.
                let both = even.checked_add(odd).ok_or_else(too_many)?;
                self.cells[*at as usize].elements.reserve(both);
                share.cells[*at as usize].elements.reserve(odd);
            }
        }
        Ok((cells, share))
    }

    /// Takes one bucket of a spill's rows (`cells`: the tally's cells by the spill's numbers).
    pub(crate) fn add_sorted<const V: usize>(
        &mut self,
        native: &NativeParts,
        cells: &[u32],
        sorted: Sorted<V>,
    ) -> Result<Room<V>> {
        let key = self.subject_key;
        take_sorted(self, key, native, cells, sorted)
    }

    /// Adds what a share of the tally took to its cells (made by [`Tally::cells_of`], so its
    /// cells are the tally's by number): the subjects, the parts' totals and largest parts,
    /// and the elements, which are joined with the tally's when they are sorted.
    pub(crate) fn absorb(&mut self, share: Share) -> Result<()> {
        if share.cells.len() > self.cells.len() {
            return Err(Error::Internal(
                "the gate's tally: a share has other cells".into(),
            ));
        }
        for (cell, theirs) in self.cells.iter_mut().zip(share.cells) {
            self.adder.join(cell, theirs);
        }
        Ok(())
    }

    /// Takes one group of subjects' rows, every row of each of its subjects: each row's
    /// element for the gate's memory and each (cell, subject)'s parts.
    pub(crate) fn add_built<const V: usize>(
        &mut self,
        builder: &Builder,
        mut built: Built<V>,
    ) -> Result<()> {
        // The group's cells as the tally's.
        let cells = built
            .cells
            .iter()
            .map(|k| u32::try_from(self.cell_at(k)).map_err(|_| too_many()))
            .collect::<Result<Vec<_>>>()?;
        // By cell and subject, and each subject's rows in their own order.
        built.rows.sort_unstable_by_key(Row::order);
        let key = self.subject_key;
        let taken = take_runs(
            self,
            key,
            &builder.native,
            &built.rows,
            &cells,
            Some((&built.subjects, &built.places)),
        );
        drop(built.memory);
        taken
    }
}

/// A share of a tally: cells of their own (the tally's, by number), which take some of a
/// spill's buckets on another thread while the tally takes the others, and are added to the
/// tally's when all are taken ([`Tally::absorb`]). A subject's rows are all in one bucket, so
/// each (cell, subject) is taken whole by one of them. Not under differential privacy (the
/// tally names each subject there).
pub(crate) struct Share {
    adder: Adder,
    subject_key: Option<crate::crypto::SubjectKey>,
    cells: Vec<Cell>,
}

impl Share {
    /// Takes one bucket of a spill's rows (`cells`: the tally's cells by the spill's numbers).
    pub(crate) fn add_sorted<const V: usize>(
        &mut self,
        native: &NativeParts,
        cells: &[u32],
        sorted: Sorted<V>,
    ) -> Result<Room<V>> {
        let key = self.subject_key;
        take_sorted(self, key, native, cells, sorted)
    }
}

/// What takes runs of rows grouped by cell and subject: a tally, or a share of one. A cell it
/// does not have fails the job.
trait Runs {
    /// Its cell `at`.
    fn cell(&mut self, at: usize) -> Result<&mut Cell>;
    /// Adds one subject's parts in cell `at` (its name under differential privacy).
    fn part(&mut self, at: usize, name: Option<&str>, values: &[f64]) -> Result<()>;
}

impl Runs for Tally<'_> {
    fn cell(&mut self, at: usize) -> Result<&mut Cell> {
        self.cells.get_mut(at).ok_or_else(too_many)
    }

    fn part(&mut self, at: usize, name: Option<&str>, values: &[f64]) -> Result<()> {
        self.cell(at)?;
        self.add_part(at, name, values);
        Ok(())
    }
}

impl Runs for Share {
    fn cell(&mut self, at: usize) -> Result<&mut Cell> {
        self.cells.get_mut(at).ok_or_else(too_many)
    }

    /// No share is made under differential privacy ([`Tally::cells_of`]): no name is kept.
    fn part(&mut self, at: usize, _: Option<&str>, values: &[f64]) -> Result<()> {
        self.adder
            .add(self.cells.get_mut(at).ok_or_else(too_many)?, values);
        Ok(())
    }
}

/// Takes one bucket of a spill's rows into `to` and gives back their room (still reserved)
/// for another.
fn take_sorted<const V: usize>(
    to: &mut impl Runs,
    key: Option<SubjectKey>,
    native: &NativeParts,
    cells: &[u32],
    Sorted { memory, rows }: Sorted<V>,
) -> Result<Room<V>> {
    take_runs(to, key, native, &rows, cells, None)?;
    Ok(Room { memory, rows })
}

/// Takes rows grouped by cell and subject into `to`: each row's element for the gate's memory
/// (with the subject key `key`) and each (cell, subject)'s parts. `cells`: the tally's cells by
/// the rows' numbers; `names`: under differential privacy, the rows' subjects and where each
/// row is (by its place).
fn take_runs<const V: usize>(
    to: &mut impl Runs,
    key: Option<crate::crypto::SubjectKey>,
    native: &NativeParts,
    rows: &[Row<V>],
    cells: &[u32],
    names: Option<Names<'_>>,
) -> Result<()> {
    let mut elements = Vec::new();
    let mut totals = vec![Total::Count(0); native.parts.len()];
    let mut values = Vec::with_capacity(native.parts.len());
    // A distinct count's values of one subject, each part's in turn.
    let mut seen: Vec<u64> = Vec::new();
    for of_name in rows.chunk_by(|a, b| (a.cell, a.who) == (b.cell, b.who)) {
        let at = *cells.get(of_name[0].cell as usize).ok_or_else(too_many)? as usize;
        let who = of_name[0].who;
        if let Some(k) = &key {
            // The gate's memory names a subject by its name alone, as it always has.
            elements.clear();
            elements.extend(of_name.iter().filter(|r| r.element != 0).map(|r| {
                let adds = r.element & ((1 << TABLE_SHIFT) - 1);
                (r.element >> TABLE_SHIFT, r.identity, adds)
            }));
            elements.sort_unstable();
            super::settle(to.cell(at)?, k, who, &elements);
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
                for (p, (total, part)) in totals.iter_mut().zip(&native.parts).enumerate() {
                    if row.counted >> p & 1 == 0 {
                        continue;
                    }
                    match total {
                        Total::Count(n) => *n += 1,
                        Total::Double(t) => {
                            let value = f64::from_bits(row.values[part.slot]);
                            *t = Some(t.unwrap_or(0.0) + value);
                        }
                        // Counted below, over all of the subject's rows.
                        Total::Distinct(_) => {}
                    }
                }
            }
            for (p, (total, part)) in totals.iter_mut().zip(&native.parts).enumerate() {
                if let Total::Distinct(n) = total {
                    seen.clear();
                    seen.extend(
                        subject
                            .iter()
                            .filter(|row| row.counted >> p & 1 == 1)
                            .map(|row| row.values[part.slot]),
                    );
                    seen.sort_unstable();
                    seen.dedup();
                    *n = seen.len() as u64;
                }
            }
            values.clear();
            values.extend(totals.iter().map(|t| t.value()));
            let name = match names {
                Some((subjects, places)) => {
                    let (b, r) = *places.get(subject[0].seq as usize).ok_or_else(too_many)?;
                    let names = subjects.get(b as usize).ok_or_else(too_many)?;
                    Some(names.value(r as usize))
                }
                None => None,
            };
            to.part(at, name, &values)?;
        }
    }
    Ok(())
}

/// A keyed hash (SipHash-1-3) of a value's bytes.
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

fn memory_limit() -> Error {
    Error::Limit("the job exceeded its memory limit".into())
}

fn too_many() -> Error {
    Error::Internal("the gate's rows: too many to index".into())
}

#[cfg(test)]
mod slices {
    use super::*;

    #[test]
    fn a_slice_is_grouped_by_cell_and_subject_with_each_subjects_rows_in_their_order() {
        // Few cells and names, and names shared by two subjects (told apart by the second
        // name only), in the order they were added.
        let mut next = super::super::xorshift(0x2545_f491_4f6c_dd1du64);
        let rows: Vec<Row<1>> = (0..5_000)
            .map(|seq| Row {
                cell: (next() % 7) as u32,
                seq,
                who: (15 << 60) | (next() % 300),
                check: next() % 2,
                identity: next(),
                element: 0,
                counted: 1,
                values: [next()],
            })
            .collect();
        let mut grouped = rows.clone();
        group_slice(&mut grouped, &mut Grouping::default()).unwrap();
        // The same rows, as the sort by cell and subject orders them.
        let facts = |rows: &[Row<1>]| -> Vec<(u32, u64, u64, u32, u64)> {
            let mut f: Vec<_> = rows
                .iter()
                .map(|r| (r.cell, r.who, r.check, r.seq, r.identity))
                .collect();
            f.sort_unstable();
            f
        };
        assert_eq!(facts(&grouped), facts(&rows));
        // Each (cell, name) is one run, holding what the sort by cell and subject gives it:
        // its subjects one after another, each subject's rows in their order.
        let runs = |rows: &[Row<1>]| {
            let mut runs = std::collections::HashMap::new();
            for run in rows.chunk_by(|a, b| (a.cell, a.who) == (b.cell, b.who)) {
                let rows: Vec<(u64, u32)> = run.iter().map(|r| (r.check, r.seq)).collect();
                assert!(
                    runs.insert((run[0].cell, run[0].who), rows).is_none(),
                    "a name's rows apart"
                );
            }
            runs
        };
        let mut sorted = rows.clone();
        sorted.sort_unstable_by_key(Row::order);
        let (runs, expected) = (runs(&grouped), runs(&sorted));
        assert!(runs == expected, "a run differs from the sort's");
        let two = expected
            .values()
            .any(|r| r.iter().any(|(check, _)| *check != r[0].0));
        assert!(two, "some (cell, name) holds two subjects");
    }

    #[test]
    fn subjects_read_in_place_from_sliced_views_are_those_of_the_cast_to_strings() {
        use arrow::array::StringViewArray;
        use arrow::datatypes::Field;
        use std::sync::Arc;
        // Short names (held inside the view) and long ones (in a data buffer), with NULLs.
        let names: Vec<Option<String>> = (0..300)
            .map(|i| match i % 5 {
                0 => None,
                1 => Some(format!("v{i}")),
                2 => Some(format!("a visitor with a long name, number {i:06}")),
                3 => Some(String::new()),
                _ => Some(format!("visitor-{i:04}")),
            })
            .collect();
        let views: StringViewArray = names.iter().map(|n| n.as_deref()).collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            SUBJECT,
            DataType::Utf8View,
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(views)]).unwrap();
        for (offset, len) in [(0, 300), (1, 17), (7, 0), (123, 150), (299, 1)] {
            let slice = batch.slice(offset, len);
            let subjects = Subjects::of(&slice).unwrap();
            assert!(
                matches!(subjects, Subjects::Views(_)),
                "views read in place"
            );
            let cast = super::super::subjects_of(&slice).unwrap();
            let cast = cast.as_string::<i32>();
            assert_eq!(cast.len(), len);
            for r in 0..len {
                let expected = cast.is_valid(r).then(|| cast.value(r).as_bytes());
                assert_eq!(subjects.get(r), expected, "row {r} of ({offset}, {len})");
                assert_eq!(
                    subjects.get(r),
                    names[offset + r].as_deref().map(str::as_bytes),
                    "row {r} of ({offset}, {len})"
                );
            }
        }
    }

    #[test]
    fn a_slice_of_one_row_or_none_is_grouped() {
        let row = Row::<1> {
            cell: 3,
            seq: 0,
            who: 9,
            check: 1,
            identity: 2,
            element: 0,
            counted: 1,
            values: [4],
        };
        let mut one = [row];
        group_slice(&mut one, &mut Grouping::default()).unwrap();
        assert_eq!(one[0].identity, 2);
        group_slice::<1>(&mut [], &mut Grouping::default()).unwrap();
    }
}

#[cfg(test)]
mod records {
    use super::*;

    fn record(check: u64, element: Option<(u64, u64, u64)>) -> Row<1> {
        let word = element_word(check, element).unwrap();
        let identity = element.map_or(0, |(_, identity, _)| identity);
        Row::from_words(&[7 | 3 << 32, 11, word, identity, 42])
    }

    #[test]
    fn a_record_keeps_its_rows_element_and_the_top_of_its_subjects_check() {
        let check = 0xdead_beef_0123_4567;
        let row = record(check, Some((5, 0x1234_5678_9abc_def0, 0x8000_0001)));
        assert_eq!(row.cell, 7);
        assert_eq!(row.counted, 3);
        assert_eq!(row.who, 11);
        assert_eq!(row.check, check & CHECK_MASK);
        assert_eq!(row.identity, 0x1234_5678_9abc_def0);
        assert_eq!(row.element, 5 << TABLE_SHIFT | 0x8000_0001);
        assert_eq!(row.values, [42]);
        // The bucket (the word's top byte) is the one the record was made for.
        let word = element_word(check, Some((5, 1, 0x8000_0001))).unwrap();
        assert_eq!(word >> 56, check >> 56);
    }

    #[test]
    fn a_record_at_every_bound_keeps_each_field_apart() {
        let row = record(u64::MAX, Some((MAX_TABLE, u64::MAX, 0xffff_ffff)));
        assert_eq!(row.check, CHECK_MASK);
        assert_eq!(row.element, MAX_TABLE << TABLE_SHIFT | 0xffff_ffff);
        assert_eq!(row.identity, u64::MAX);
        let row = record(0, Some((0, 1, 1)));
        assert_eq!(row.check, 0);
        assert_eq!(row.element, 1);
    }

    #[test]
    fn a_record_without_an_element_reads_back_without_one() {
        let row = record(u64::MAX, None);
        assert_eq!(row.element, 0);
        assert_eq!(row.identity, 0);
        assert_eq!(row.check, CHECK_MASK);
    }

    #[test]
    fn subjects_apart_in_their_checks_top_bits_stay_apart() {
        let a = record(1 << 63, None);
        let b = record(1 << (64 - CHECK_BITS), None);
        assert_eq!(a.check, 1 << 63);
        assert_eq!(b.check, 1 << (64 - CHECK_BITS));
        // Below the check's bits, subjects are not told apart by it.
        assert_eq!(record(1 << (63 - CHECK_BITS), None).check, 0);
    }

    #[test]
    fn an_element_of_a_table_beyond_the_records_room_is_refused() {
        let refused = element_word(0, Some((MAX_TABLE + 1, 1, 1))).unwrap_err();
        assert!(refused.to_string().contains("beyond the records' room"));
        assert!(element_word(0, Some((MAX_TABLE, 1, 1))).is_ok());
        assert!(element_word(0, Some((0, 1, 1 << 32))).is_err());
    }
}
