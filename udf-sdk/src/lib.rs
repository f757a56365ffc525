//! Guest SDK: write Tidegate scalar UDFs as plain Rust functions over row values; the
//! [`export_udfs!`] macro vectorizes them over the batches of the Tidegate ABI (see `ABI.md`).
//!
//! Architecture invariant: this crate depends on nothing but its own attribute macros (compile
//! time only) and imports nothing from the host; it builds for `wasm32-unknown-unknown` (and for
//! the host, so its logic can be unit-tested).
//!
//! Two ways to export functions: the attribute macros (`#[udfs]` on a module, `#[scalar]`,
//! `#[aggregate]`, `#[table]` on its items; see `examples/aggregate-udf`) or the declarative
//! [`export_udfs!`] list they expand to.
//!
//! ```text
//! fn double(x: i64) -> Option<i64> { x.checked_mul(2) }
//! tidegate_udf_sdk::export_udfs! {
//!     scalar fn double(x: i64) -> i64;
//! }
//! ```
//! A row whose argument is NULL yields NULL without calling the function; a function that
//! returns `None` yields NULL.

use std::cell::RefCell;

pub use tidegate_udf_macros::{aggregate, scalar, table, udfs};

/// The ABI version this SDK implements; the host refuses modules of another version.
pub const ABI_VERSION: i32 = 1;

/// Column types of the ABI, with their wire ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Type {
    Int32 = 1,
    Int64 = 2,
    Float64 = 3,
    Utf8 = 4,
    Date32 = 5,
    Boolean = 6,
    Timestamp = 7,
    Decimal = 8,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::Int32 => "int32",
            Type::Int64 => "int64",
            Type::Float64 => "float64",
            Type::Utf8 => "utf8",
            Type::Date32 => "date32",
            Type::Boolean => "boolean",
            Type::Timestamp => "timestamp",
            Type::Decimal => "decimal",
        }
    }

    fn width(self) -> usize {
        match self {
            Type::Int32 | Type::Date32 => 4,
            Type::Int64 | Type::Float64 | Type::Timestamp => 8,
            Type::Decimal => 16,
            Type::Utf8 | Type::Boolean => 0,
        }
    }
}

/// Days since 1970-01-01, the value of a `date32` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date32(pub i32);

/// Microseconds since 1970-01-01T00:00:00 UTC, the value of a `timestamp` column (whatever
/// the table's unit and time zone: the host converts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MICROS_PER_DAY: i64 = 86_400_000_000;

    /// The day it falls on, in UTC.
    pub fn date(self) -> Date32 {
        Date32(self.0.div_euclid(Self::MICROS_PER_DAY) as i32)
    }
}

/// An exact decimal number in millionths, the value of a `decimal` column: `Decimal(1_250_000)`
/// is 1.25. The host converts the table's precision and scale (up to 6 places) exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decimal(pub i128);

impl Decimal {
    /// Places after the point.
    pub const SCALE: u32 = 6;
    /// One, in millionths.
    pub const ONE: i128 = 1_000_000;

    /// A whole number.
    pub fn from_int(n: i64) -> Decimal {
        Decimal(n as i128 * Self::ONE)
    }

    /// The nearest float (for ratios and logarithms; sums stay exact as `Decimal`).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / Self::ONE as f64
    }

    /// Rounded to `places` (0-6) after the point, halves away from zero.
    pub fn round(self, places: u32) -> Decimal {
        let step = 10i128.pow(Self::SCALE - places.min(Self::SCALE));
        let half = step / 2;
        let q = if self.0 >= 0 {
            (self.0 + half) / step
        } else {
            (self.0 - half) / step
        };
        Decimal(q * step)
    }
}

/// One input column, read from the descriptor the host wrote into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    type_id: u32,
    len: usize,
    validity: Option<&'a [u8]>,
    offsets: &'a [u8],
    data: &'a [u8],
}

impl<'a> Column<'a> {
    /// The value at `row`, `None` when it is NULL.
    pub fn value<T: Arg<'a>>(&self, row: usize) -> Option<T> {
        (row < self.len && !self.is_null(row)).then(|| T::get(self, row))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_null(&self, row: usize) -> bool {
        match self.validity {
            Some(bits) => bits[row / 8] & (1 << (row % 8)) == 0,
            None => false,
        }
    }

    fn fixed<const N: usize>(&self, row: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.data[row * N..row * N + N]);
        out
    }

    fn offset(&self, i: usize) -> usize {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.offsets[i * 4..i * 4 + 4]);
        i32::from_le_bytes(b) as usize
    }
}

/// A Rust type that can be read from a column of the matching ABI type.
pub trait Arg<'a>: Sized {
    const TYPE: Type;
    /// The value at `row`; the caller has checked that it is not NULL.
    fn get(col: &Column<'a>, row: usize) -> Self;
    /// Every value of the column in order (NULL slots give whatever bytes they hold).
    fn values(col: Column<'a>) -> impl Iterator<Item = Self> + 'a {
        (0..col.len).map(move |row| Self::get(&col, row))
    }
    /// The column's values as a typed slice, for plain numbers whose buffer is aligned.
    fn plain(_col: &Column<'a>) -> Option<&'a [Self]> {
        None
    }
}

/// The bytes of a column as `len` values of a plain number type, when they are aligned.
fn typed<T: Plain>(bytes: &[u8], len: usize) -> Option<&[T]> {
    let bytes = bytes.get(..len.checked_mul(std::mem::size_of::<T>())?)?;
    // SAFETY: `Plain` types are integers and floats, valid for any bit pattern; `align_to`
    // puts only whole, aligned values in the middle part, which is used only when it is all.
    let (head, body, tail) = unsafe { bytes.align_to::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(body)
}

/// Integers and floats: any bit pattern is a value.
pub trait Plain: Copy + Default {}
impl Plain for i32 {}
impl Plain for i64 {}
impl Plain for f64 {}

macro_rules! fixed_values {
    ($n:literal, $from:expr) => {
        fn values(col: Column<'a>) -> impl Iterator<Item = Self> + 'a {
            col.data[..col.len * $n]
                .chunks_exact($n)
                .map(|c| $from(c.try_into().unwrap_or([0; $n])))
        }
    };
}

impl<'a> Arg<'a> for i32 {
    const TYPE: Type = Type::Int32;
    fn get(col: &Column<'a>, row: usize) -> Self {
        i32::from_le_bytes(col.fixed(row))
    }
    fixed_values!(4, i32::from_le_bytes);
    fn plain(col: &Column<'a>) -> Option<&'a [Self]> {
        typed(col.data, col.len)
    }
}

impl<'a> Arg<'a> for i64 {
    const TYPE: Type = Type::Int64;
    fn get(col: &Column<'a>, row: usize) -> Self {
        i64::from_le_bytes(col.fixed(row))
    }
    fixed_values!(8, i64::from_le_bytes);
    fn plain(col: &Column<'a>) -> Option<&'a [Self]> {
        typed(col.data, col.len)
    }
}

impl<'a> Arg<'a> for f64 {
    const TYPE: Type = Type::Float64;
    fn get(col: &Column<'a>, row: usize) -> Self {
        f64::from_le_bytes(col.fixed(row))
    }
    fixed_values!(8, f64::from_le_bytes);
    fn plain(col: &Column<'a>) -> Option<&'a [Self]> {
        typed(col.data, col.len)
    }
}

impl<'a> Arg<'a> for Date32 {
    const TYPE: Type = Type::Date32;
    fn get(col: &Column<'a>, row: usize) -> Self {
        Date32(i32::from_le_bytes(col.fixed(row)))
    }
    fixed_values!(4, |b| Date32(i32::from_le_bytes(b)));
}

impl<'a> Arg<'a> for Timestamp {
    const TYPE: Type = Type::Timestamp;
    fn get(col: &Column<'a>, row: usize) -> Self {
        Timestamp(i64::from_le_bytes(col.fixed(row)))
    }
    fixed_values!(8, |b| Timestamp(i64::from_le_bytes(b)));
}

impl<'a> Arg<'a> for Decimal {
    const TYPE: Type = Type::Decimal;
    fn get(col: &Column<'a>, row: usize) -> Self {
        Decimal(i128::from_le_bytes(col.fixed(row)))
    }
    fixed_values!(16, |b| Decimal(i128::from_le_bytes(b)));
}

impl<'a> Arg<'a> for bool {
    const TYPE: Type = Type::Boolean;
    fn get(col: &Column<'a>, row: usize) -> Self {
        col.data[row / 8] & (1 << (row % 8)) != 0
    }
}

impl<'a> Arg<'a> for &'a str {
    const TYPE: Type = Type::Utf8;
    fn get(col: &Column<'a>, row: usize) -> Self {
        let bytes = &col.data[col.offset(row)..col.offset(row + 1)];
        // The host only sends valid UTF-8 (it comes from validated Arrow arrays).
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

/// The output column being built for one batch.
#[derive(Debug)]
pub struct Output {
    ty: Type,
    len: usize,
    null_count: usize,
    validity: Vec<u8>,
    offsets: Vec<i32>,
    data: Vec<u8>,
}

impl Output {
    fn new(ty: Type, capacity: usize) -> Self {
        // Fixed-width and boolean data are sized up front and written in place.
        let data = match ty {
            Type::Utf8 => Vec::with_capacity(capacity * 8),
            Type::Boolean => vec![0; capacity.div_ceil(8)],
            t => vec![0; capacity * t.width()],
        };
        let mut out = Output {
            ty,
            len: 0,
            null_count: 0,
            validity: Vec::new(),
            offsets: Vec::new(),
            data,
        };
        if ty == Type::Utf8 {
            out.offsets.reserve(capacity + 1);
            out.offsets.push(0);
        }
        out
    }

    /// Bytes of the data buffer that hold the rows written so far.
    fn data_len(&self) -> usize {
        match self.ty {
            Type::Utf8 => self.data.len(),
            Type::Boolean => self.len.div_ceil(8),
            t => self.len * t.width(),
        }
    }

    /// Opens the slot of the next row. The validity bitmap is only built from the first NULL
    /// on, so a column without NULLs costs nothing per row for it.
    fn next_slot(&mut self, valid: bool) {
        if !valid {
            if self.null_count == 0 {
                self.start_bitmap();
            }
            self.null_count += 1;
        }
        if self.null_count > 0 {
            self.mark(valid);
        }
        self.len += 1;
        // More rows than announced: grow the pre-sized buffers.
        let needed = self.data_len();
        if self.ty != Type::Utf8 && needed > self.data.len() {
            self.data.resize(needed.max(self.data.len() * 2), 0);
        }
    }

    /// An output whose fixed-width data grows by appending, for the batch fast path (no
    /// zeroed buffer written twice).
    fn appending(ty: Type, capacity: usize) -> Self {
        if ty.width() == 0 {
            return Output::new(ty, capacity);
        }
        let mut out = Output::new(ty, 0);
        out.data = Vec::with_capacity(capacity * ty.width());
        out
    }

    #[inline(always)]
    fn append_fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        self.data.extend_from_slice(&bytes);
        if self.null_count > 0 {
            self.mark(true);
        }
        self.len += 1;
    }

    /// A NULL in an appending output (fixed-width) or any other.
    pub fn append_null(&mut self) {
        if self.ty.width() == 0 {
            return self.push_null();
        }
        if self.null_count == 0 {
            self.start_bitmap();
        }
        self.null_count += 1;
        self.mark(false);
        self.data.resize(self.data.len() + self.ty.width(), 0);
        self.len += 1;
    }

    /// The validity bitmap begins at the first NULL: every row before it was valid (bits past
    /// the rows written are 0).
    fn start_bitmap(&mut self) {
        let mut bits = vec![0xFFu8; self.len / 8];
        if !self.len.is_multiple_of(8) {
            bits.push((1u8 << (self.len % 8)) - 1);
        }
        self.validity = bits;
    }

    /// Sets the validity bit of row `self.len` (the row being appended).
    fn mark(&mut self, valid: bool) {
        if self.len.is_multiple_of(8) {
            self.validity.push(0);
        }
        if valid {
            let last = self.validity.len() - 1;
            self.validity[last] |= 1 << (self.len % 8);
        }
    }

    pub fn push_null(&mut self) {
        self.next_slot(false);
        if self.ty == Type::Utf8 {
            self.offsets.push(self.data.len() as i32);
        }
    }

    fn push_fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        let at = self.len * N;
        self.next_slot(true);
        self.data[at..at + N].copy_from_slice(&bytes);
    }

    fn push_str(&mut self, s: &str) {
        self.next_slot(true);
        self.data.extend_from_slice(s.as_bytes());
        self.offsets.push(self.data.len() as i32);
    }

    fn push_bool(&mut self, b: bool) {
        let row = self.len;
        self.next_slot(true);
        if b {
            self.data[row / 8] |= 1 << (row % 8);
        }
    }
}

/// A Rust type a function can return, written to an output column of the matching type.
pub trait Ret: Sized {
    const TYPE: Type;
    fn push(self, out: &mut Output);
    /// Appends to an output made by [`Output::appending`] (fixed-width types only write
    /// their bytes; the others fall back on `push`).
    fn append(self, out: &mut Output) {
        self.push(out)
    }
    /// For plain numbers: sizes `out` to `n` rows and lends its data as a typed slice.
    fn plain_out(_out: &mut Output, _n: usize) -> Option<&mut [Self]> {
        None
    }
}

fn typed_mut<T: Plain>(bytes: &mut [u8]) -> Option<&mut [T]> {
    // SAFETY: as in `typed`: any bit pattern is a `Plain` value, and only a fully aligned
    // body is used.
    let (head, body, tail) = unsafe { bytes.align_to_mut::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(body)
}

impl Ret for i32 {
    const TYPE: Type = Type::Int32;
    fn push(self, out: &mut Output) {
        out.push_fixed(self.to_le_bytes());
    }
    fn append(self, out: &mut Output) {
        out.append_fixed(self.to_le_bytes());
    }
    fn plain_out(out: &mut Output, n: usize) -> Option<&mut [Self]> {
        out.data.resize(n * std::mem::size_of::<Self>(), 0);
        out.len = n;
        typed_mut(&mut out.data)
    }
}

impl Ret for i64 {
    const TYPE: Type = Type::Int64;
    fn push(self, out: &mut Output) {
        out.push_fixed(self.to_le_bytes());
    }
    fn append(self, out: &mut Output) {
        out.append_fixed(self.to_le_bytes());
    }
    fn plain_out(out: &mut Output, n: usize) -> Option<&mut [Self]> {
        out.data.resize(n * std::mem::size_of::<Self>(), 0);
        out.len = n;
        typed_mut(&mut out.data)
    }
}

impl Ret for f64 {
    const TYPE: Type = Type::Float64;
    fn push(self, out: &mut Output) {
        out.push_fixed(self.to_le_bytes());
    }
    fn append(self, out: &mut Output) {
        out.append_fixed(self.to_le_bytes());
    }
    fn plain_out(out: &mut Output, n: usize) -> Option<&mut [Self]> {
        out.data.resize(n * std::mem::size_of::<Self>(), 0);
        out.len = n;
        typed_mut(&mut out.data)
    }
}

impl Ret for Date32 {
    const TYPE: Type = Type::Date32;
    fn push(self, out: &mut Output) {
        out.push_fixed(self.0.to_le_bytes());
    }
    fn append(self, out: &mut Output) {
        out.append_fixed(self.0.to_le_bytes());
    }
}

impl Ret for Timestamp {
    const TYPE: Type = Type::Timestamp;
    fn push(self, out: &mut Output) {
        out.push_fixed(self.0.to_le_bytes());
    }
    fn append(self, out: &mut Output) {
        out.append_fixed(self.0.to_le_bytes());
    }
}

impl Ret for Decimal {
    const TYPE: Type = Type::Decimal;
    fn push(self, out: &mut Output) {
        out.push_fixed(self.0.to_le_bytes());
    }
    fn append(self, out: &mut Output) {
        out.append_fixed(self.0.to_le_bytes());
    }
}

impl Ret for bool {
    const TYPE: Type = Type::Boolean;
    fn push(self, out: &mut Output) {
        out.push_bool(self);
    }
}

impl Ret for String {
    const TYPE: Type = Type::Utf8;
    fn push(self, out: &mut Output) {
        out.push_str(&self);
    }
}

/// One batch of input columns.
#[derive(Debug)]
pub struct Batch<'a> {
    pub n_rows: usize,
    columns: Vec<Column<'a>>,
}

impl<'a> Batch<'a> {
    pub fn column(&self, i: usize) -> &Column<'a> {
        &self.columns[i]
    }

    /// Checks that the host sent exactly the declared argument types.
    pub fn expect_types(&self, types: &[Type]) -> Result<(), String> {
        if self.columns.len() != types.len() {
            return Err(format!(
                "expected {} argument columns, got {}",
                types.len(),
                self.columns.len()
            ));
        }
        for (i, (c, t)) in self.columns.iter().zip(types).enumerate() {
            if c.type_id != *t as u32 {
                return Err(format!("argument {i} is not {}", t.name()));
            }
            if c.len != self.n_rows {
                return Err(format!("argument {i} has the wrong length"));
            }
        }
        Ok(())
    }
}

/// An aggregate function over one or more argument columns, kept per group: the shape of a groups
/// accumulator (update with group indices, merge partial states, state, evaluate). The host
/// calls it through the `tg_agg_*` exports that [`export_udfs!`] generates.
///
/// ```text
/// #[derive(Default)]
/// struct SumSquares(f64);
/// impl Aggregate for SumSquares {
///     type Arg = f64; type Out = f64; type State = (f64,);
///     fn update(&mut self, x: f64) { self.0 += x * x }
///     fn merge(&mut self, (s,): (f64,)) { self.0 += s }
///     fn state(&self) -> (f64,) { (self.0,) }
///     fn finish(&self) -> Option<f64> { Some(self.0) }
/// }
/// ```
/// `Arg` is one value type or a tuple of up to four (`type Arg = (f64, f64)` for a weighted
/// mean). A row with any NULL argument is skipped; a group that saw no row still gets `finish`
/// of its default.
pub trait Aggregate: Default + 'static {
    type Arg: AggArgs;
    type Out: Ret;
    /// The partial state exchanged between partitions: one column per tuple element.
    type State: StateValues;
    fn update(&mut self, x: Self::Arg);
    fn merge(&mut self, other: Self::State);
    fn state(&self) -> Self::State;
    fn finish(&self) -> Option<Self::Out>;
}

/// The arguments of an [`Aggregate`]: one value, or a tuple of values, one column each.
pub trait AggArgs: Sized {
    fn types() -> Vec<Type>;
    /// The values at `row`; the caller has checked that none is NULL.
    fn get(cols: &[Column<'_>], row: usize) -> Self;
    /// Every row's values in order, for a batch without NULLs.
    fn rows<'a>(cols: &'a [Column<'a>], n: usize) -> impl Iterator<Item = Self> + 'a {
        (0..n).map(move |row| Self::get(cols, row))
    }
}

impl<T: for<'a> Arg<'a>> AggArgs for T {
    fn types() -> Vec<Type> {
        vec![<T as Arg<'static>>::TYPE]
    }
    fn get(cols: &[Column<'_>], row: usize) -> Self {
        <T as Arg<'_>>::get(&cols[0], row)
    }
    /// One column: read straight through.
    fn rows<'a>(cols: &'a [Column<'a>], n: usize) -> impl Iterator<Item = Self> + 'a {
        <T as Arg<'a>>::values(cols[0]).take(n)
    }
}

macro_rules! args_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: for<'a> Arg<'a>),+> AggArgs for ($($t,)+) {
            fn types() -> Vec<Type> {
                vec![$(<$t as Arg<'static>>::TYPE),+]
            }
            fn get(cols: &[Column<'_>], row: usize) -> Self {
                ($(<$t as Arg<'_>>::get(&cols[$i], row),)+)
            }
        }
    };
}
args_tuple!(A 0, B 1);
args_tuple!(A 0, B 1, C 2);
args_tuple!(A 0, B 1, C 2, D 3);

/// A tuple of fixed-width values exchanged as the state of an [`Aggregate`].
pub trait StateValues: Sized {
    fn types() -> Vec<Type>;
    fn push(self, outs: &mut [Output]);
    /// The values at `row`; the caller has checked that none is NULL.
    fn get(cols: &[Column<'_>], row: usize) -> Self;
}

macro_rules! state_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Ret + for<'a> Arg<'a>),+> StateValues for ($($t,)+) {
            fn types() -> Vec<Type> {
                vec![$(<$t as Ret>::TYPE),+]
            }
            fn push(self, outs: &mut [Output]) {
                $(Ret::push(self.$i, &mut outs[$i]);)+
            }
            fn get(cols: &[Column<'_>], row: usize) -> Self {
                ($(<$t as Arg<'_>>::get(&cols[$i], row),)+)
            }
        }
    };
}
state_tuple!(A 0);
state_tuple!(A 0, B 1);
state_tuple!(A 0, B 1, C 2);
state_tuple!(A 0, B 1, C 2, D 3);

/// A table function, for whole-model jobs: the host opens it, pushes every input batch, pulls
/// what it has produced after each, closes it and pulls the rest.
///
/// ```text
/// SELECT * FROM standardize('visits', 'spend')
/// ```
/// names the input table and its columns, which must have the declared input types.
pub trait TableFunction: Default + 'static {
    /// The input column types.
    fn input() -> Vec<Type>;
    /// The output columns: name and type.
    fn output() -> Vec<(&'static str, Type)>;
    /// One input batch; rows may be written to `out` now or kept for later.
    fn push(&mut self, batch: &Batch<'_>, out: &mut Rows) -> Result<(), String>;
    /// No more input: write what is left.
    fn close(&mut self, out: &mut Rows) -> Result<(), String>;
}

/// Output rows of a table function, built column by column; every column must end with the
/// same number of rows.
#[derive(Debug)]
pub struct Rows {
    columns: Vec<Output>,
}

impl Rows {
    fn new(types: &[Type]) -> Rows {
        Rows {
            columns: types.iter().map(|t| Output::new(*t, 0)).collect(),
        }
    }

    /// Appends `value` (NULL for `None`) to column `col`, whose type must be `T`'s.
    pub fn push<T: Ret>(&mut self, col: usize, value: Option<T>) -> Result<(), String> {
        let out = self
            .columns
            .get_mut(col)
            .ok_or_else(|| format!("no output column {col}"))?;
        if out.ty != T::TYPE {
            return Err(format!("output column {col} is not {}", T::TYPE.name()));
        }
        match value {
            Some(v) => v.push(out),
            None => out.push_null(),
        }
        Ok(())
    }
}

/// Guest-side state that must outlive a call: the host reads it after the call returns.
struct State {
    input: Vec<u64>,
    output: Option<Output>,
    out_desc: [u32; 7],
    /// The state columns of an aggregate and their batch descriptor.
    state_outputs: Vec<Output>,
    state_desc: Vec<u32>,
    /// Per aggregate function id: its groups (a `Vec<T>` of its [`Aggregate`] type).
    groups: Vec<Option<Box<dyn std::any::Any>>>,
    /// Per table function id: the open function and the rows it produced, not yet pulled.
    tables: Vec<Option<Box<dyn std::any::Any>>>,
    pending: Option<Rows>,
    error: String,
    error_desc: [u32; 2],
    manifest: String,
    manifest_desc: [u32; 2],
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State {
        input: Vec::new(),
        output: None,
        out_desc: [0; 7],
        state_outputs: Vec::new(),
        state_desc: Vec::new(),
        groups: Vec::new(),
        tables: Vec::new(),
        pending: None,
        error: String::new(),
        error_desc: [0; 2],
        manifest: String::new(),
        manifest_desc: [0; 2],
    }) };
}

fn ptr<T>(p: *const T) -> u32 {
    p as usize as u32
}

fn read_u32(addr: usize) -> u32 {
    // SAFETY: `addr` points into the input buffer the host filled through `tg_alloc`; the
    // descriptor layout (ABI.md) puts 4-byte aligned u32 fields there. A wrong address from a
    // buggy host traps (wasm bounds checks), it cannot corrupt anything outside this module.
    unsafe { (addr as *const u32).read_unaligned() }
}

fn slice<'a>(addr: u32, len: usize) -> &'a [u8] {
    if addr == 0 || len == 0 {
        return &[];
    }
    // SAFETY: the host wrote `len` bytes at `addr` inside the buffer from `tg_alloc`, which
    // stays alive until the next `tg_alloc`, after this batch.
    unsafe { std::slice::from_raw_parts(addr as usize as *const u8, len) }
}

fn parse_batch<'a>(desc: u32) -> Result<Batch<'a>, String> {
    let base = desc as usize;
    let n_rows = read_u32(base) as usize;
    let n_cols = read_u32(base + 4) as usize;
    let mut columns = Vec::with_capacity(n_cols);
    for c in 0..n_cols {
        let at = base + 8 + c * 28;
        let f = |i: usize| read_u32(at + 4 * i);
        let (type_id, len, _null_count) = (f(0), f(1) as usize, f(2));
        let (validity, offsets, data, data_len) = (f(3), f(4), f(5), f(6) as usize);
        let offsets_len = if type_id == Type::Utf8 as u32 {
            (len + 1) * 4
        } else {
            0
        };
        columns.push(Column {
            type_id,
            len,
            validity: (validity != 0).then(|| slice(validity, len.div_ceil(8))),
            offsets: slice(offsets, offsets_len),
            data: slice(data, data_len),
        });
    }
    Ok(Batch { n_rows, columns })
}

#[doc(hidden)]
pub fn __alloc(size: i32) -> i32 {
    if size < 0 {
        return 0;
    }
    STATE.with_borrow_mut(|s| {
        // The host writes every byte it sends; what lies between is never read.
        let words = (size as usize).div_ceil(8);
        if s.input.len() < words {
            s.input.resize(words, 0);
        }
        ptr(s.input.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __error() -> i32 {
    STATE.with_borrow_mut(|s| {
        s.error_desc = [ptr(s.error.as_ptr()), s.error.len() as u32];
        ptr(s.error_desc.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __signature(name: &str, args: &[Type], ret: Type) -> String {
    let args: Vec<&str> = args.iter().map(|t| t.name()).collect();
    format!("scalar {name}({}) -> {}", args.join(","), ret.name())
}

#[doc(hidden)]
pub fn __aggregate_signature<T: Aggregate>(name: &str) -> String {
    let state: Vec<&str> = T::State::types().iter().map(|t| t.name()).collect();
    let args: Vec<&str> = T::Arg::types().iter().map(|t| t.name()).collect();
    format!(
        "aggregate {name}({}) -> {} state({})",
        args.join(","),
        <T::Out as Ret>::TYPE.name(),
        state.join(",")
    )
}

fn descriptor(out: &Output) -> [u32; 7] {
    [
        out.ty as u32,
        out.len as u32,
        out.null_count as u32,
        if out.null_count > 0 {
            ptr(out.validity.as_ptr())
        } else {
            0
        },
        if out.ty == Type::Utf8 {
            ptr(out.offsets.as_ptr())
        } else {
            0
        },
        ptr(out.data.as_ptr()),
        out.data_len() as u32,
    ]
}

/// Runs `f` on the groups of aggregate `fn_id`, creating them on first use.
fn with_groups<T: Aggregate, R>(fn_id: i32, f: impl FnOnce(&mut Vec<T>) -> R) -> Result<R, String> {
    let slot = usize::try_from(fn_id).map_err(|_| "bad function id".to_string())?;
    // Taken out while `f` runs, so that the user's code never sees the borrowed state.
    let mut taken = STATE.with_borrow_mut(|s| {
        if s.groups.len() <= slot {
            s.groups.resize_with(slot + 1, || None);
        }
        s.groups[slot].take()
    });
    let groups = match taken.as_mut().map(|b| b.downcast_mut::<Vec<T>>()) {
        Some(Some(g)) => g,
        Some(None) => return Err("aggregate state of another type".into()),
        None => {
            taken = Some(Box::new(Vec::<T>::new()));
            taken
                .as_mut()
                .and_then(|b| b.downcast_mut::<Vec<T>>())
                .expect("just created")
        }
    };
    let r = f(groups);
    STATE.with_borrow_mut(|s| s.groups[slot] = taken);
    Ok(r)
}

fn status(result: Result<(), String>) -> i32 {
    match result {
        Ok(()) => 1,
        Err(e) => {
            STATE.with_borrow_mut(|s| s.error = e);
            0
        }
    }
}

fn group_index(groups: &[u8], row: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&groups[row * 4..row * 4 + 4]);
    u32::from_le_bytes(b) as usize
}

#[doc(hidden)]
pub fn __agg_update<T: Aggregate>(fn_id: i32, batch: i32, groups: i32, total: i32) -> i32 {
    status((|| {
        let b = parse_batch(batch as u32)?;
        b.expect_types(&T::Arg::types())?;
        let total = usize::try_from(total).map_err(|_| "bad group count".to_string())?;
        let indices = slice(groups as u32, b.n_rows * 4);
        let cols: Vec<Column<'_>> = (0..b.columns.len()).map(|i| *b.column(i)).collect();
        let no_nulls = cols.iter().all(|c| c.validity.is_none());
        with_groups::<T, _>(fn_id, |states| {
            if states.len() < total {
                states.resize_with(total, T::default);
            }
            if no_nulls {
                // The values and the group indices are read in step.
                for (x, g) in T::Arg::rows(&cols, b.n_rows).zip(indices.chunks_exact(4)) {
                    let g = u32::from_le_bytes(g.try_into().unwrap_or([0xFF; 4])) as usize;
                    states
                        .get_mut(g)
                        .ok_or("group index out of range")?
                        .update(x);
                }
                return Ok(());
            }
            for row in 0..b.n_rows {
                if cols.iter().any(|c| c.is_null(row)) {
                    continue;
                }
                let g = group_index(indices, row);
                states
                    .get_mut(g)
                    .ok_or("group index out of range")?
                    .update(T::Arg::get(&cols, row));
            }
            Ok(())
        })?
    })())
}

#[doc(hidden)]
pub fn __agg_merge<T: Aggregate>(fn_id: i32, batch: i32, groups: i32, total: i32) -> i32 {
    status((|| {
        let b = parse_batch(batch as u32)?;
        b.expect_types(&T::State::types())?;
        let total = usize::try_from(total).map_err(|_| "bad group count".to_string())?;
        let indices = slice(groups as u32, b.n_rows * 4);
        let cols: Vec<Column<'_>> = (0..b.columns.len()).map(|i| *b.column(i)).collect();
        with_groups::<T, _>(fn_id, |states| {
            if states.len() < total {
                states.resize_with(total, T::default);
            }
            for row in 0..b.n_rows {
                if cols.iter().any(|c| c.is_null(row)) {
                    continue;
                }
                let g = group_index(indices, row);
                let s = states.get_mut(g).ok_or("group index out of range")?;
                s.merge(T::State::get(&cols, row));
            }
            Ok(())
        })?
    })())
}

#[doc(hidden)]
pub fn __agg_state<T: Aggregate>(fn_id: i32) -> i32 {
    let built = with_groups::<T, _>(fn_id, |states| {
        let mut outs: Vec<Output> = T::State::types()
            .into_iter()
            .map(|t| Output::new(t, states.len()))
            .collect();
        for s in states.iter() {
            s.state().push(&mut outs);
        }
        (states.len(), outs)
    });
    match built {
        Ok((n_rows, outs)) => STATE.with_borrow_mut(|s| {
            s.state_desc = vec![n_rows as u32, outs.len() as u32];
            for out in &outs {
                s.state_desc.extend_from_slice(&descriptor(out));
            }
            s.state_outputs = outs;
            ptr(s.state_desc.as_ptr()) as i32
        }),
        Err(e) => status(Err(e)),
    }
}

#[doc(hidden)]
pub fn __agg_evaluate<T: Aggregate>(fn_id: i32) -> i32 {
    let built = with_groups::<T, _>(fn_id, |states| {
        let mut out = Output::new(<T::Out as Ret>::TYPE, states.len());
        for s in states.iter() {
            match s.finish() {
                Some(v) => v.push(&mut out),
                None => out.push_null(),
            }
        }
        out
    });
    match built {
        Ok(out) => STATE.with_borrow_mut(|s| {
            s.out_desc = descriptor(&out);
            s.output = Some(out);
            ptr(s.out_desc.as_ptr()) as i32
        }),
        Err(e) => status(Err(e)),
    }
}

#[doc(hidden)]
pub fn __agg_reset<T: Aggregate>(fn_id: i32) -> i32 {
    status(with_groups::<T, _>(fn_id, |states| *states = Vec::new()))
}

#[doc(hidden)]
pub fn __table_signature<T: TableFunction>(name: &str) -> String {
    let input: Vec<&str> = T::input().iter().map(|t| t.name()).collect();
    let output: Vec<String> = T::output()
        .iter()
        .map(|(n, t)| format!("{n} {}", t.name()))
        .collect();
    format!(
        "table {name}({}) -> ({})",
        input.join(","),
        output.join(", ")
    )
}

fn output_types<T: TableFunction>() -> Vec<Type> {
    T::output().into_iter().map(|(_, t)| t).collect()
}

/// Runs `f` on the open table function `fn_id` and its pending rows.
fn with_table<T: TableFunction>(
    fn_id: i32,
    open: bool,
    f: impl FnOnce(&mut T, &mut Rows) -> Result<(), String>,
) -> Result<(), String> {
    let slot = usize::try_from(fn_id).map_err(|_| "bad function id".to_string())?;
    let (taken, pending) = STATE.with_borrow_mut(|s| {
        if s.tables.len() <= slot {
            s.tables.resize_with(slot + 1, || None);
        }
        (s.tables[slot].take(), s.pending.take())
    });
    let mut table: Box<dyn std::any::Any> = match (taken, open) {
        (_, true) => Box::new(T::default()),
        (Some(t), false) => t,
        (None, false) => return Err("the table function is not open".into()),
    };
    let mut rows = pending.unwrap_or_else(|| Rows::new(&output_types::<T>()));
    let result = match table.downcast_mut::<T>() {
        Some(t) => f(t, &mut rows),
        None => Err("table function state of another type".into()),
    };
    STATE.with_borrow_mut(|s| {
        s.tables[slot] = Some(table);
        s.pending = Some(rows);
    });
    result
}

#[doc(hidden)]
pub fn __table_open<T: TableFunction>(fn_id: i32) -> i32 {
    status(with_table::<T>(fn_id, true, |_, _| Ok(())))
}

#[doc(hidden)]
pub fn __table_push<T: TableFunction>(fn_id: i32, batch: i32) -> i32 {
    status(with_table::<T>(fn_id, false, |t, rows| {
        let b = parse_batch(batch as u32)?;
        b.expect_types(&T::input())?;
        t.push(&b, rows)
    }))
}

#[doc(hidden)]
pub fn __table_close<T: TableFunction>(fn_id: i32) -> i32 {
    status(with_table::<T>(fn_id, false, |t, rows| t.close(rows)))
}

/// Hands the rows produced so far to the host as a batch descriptor, and starts anew.
#[doc(hidden)]
pub fn __table_pull<T: TableFunction>(_fn_id: i32) -> i32 {
    STATE.with_borrow_mut(|s| {
        let rows = s
            .pending
            .take()
            .unwrap_or_else(|| Rows::new(&output_types::<T>()));
        let n = rows.columns.first().map_or(0, |c| c.len);
        s.state_desc = vec![n as u32, rows.columns.len() as u32];
        for out in &rows.columns {
            s.state_desc.extend_from_slice(&descriptor(out));
        }
        s.state_outputs = rows.columns;
        ptr(s.state_desc.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __no_function(fn_id: i32) -> i32 {
    status(Err(format!("no aggregate function with id {fn_id}")))
}

#[doc(hidden)]
pub fn __manifest(lines: &[String]) -> i32 {
    STATE.with_borrow_mut(|s| {
        s.manifest = lines.join("\n");
        s.manifest_desc = [ptr(s.manifest.as_ptr()), s.manifest.len() as u32];
        ptr(s.manifest_desc.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __new_output(ty: Type, n_rows: usize) -> Output {
    Output::new(ty, n_rows)
}

#[doc(hidden)]
pub fn __appending_output(ty: Type, n_rows: usize) -> Output {
    Output::appending(ty, n_rows)
}

/// Marks the rows whose function returned `None` in a plain output.
#[doc(hidden)]
pub fn __plain_nulls(out: &mut Output, nulls: &[usize]) {
    if nulls.is_empty() {
        return;
    }
    out.start_bitmap();
    for &row in nulls {
        out.validity[row / 8] &= !(1 << (row % 8));
    }
    out.null_count = nulls.len();
}

/// Whether no argument of the batch has a NULL: the fast path reads the columns straight.
#[doc(hidden)]
pub fn __no_nulls(batch: &Batch<'_>) -> bool {
    batch.columns.iter().all(|c| c.validity.is_none())
}

#[doc(hidden)]
pub fn __scalar(desc: i32, run: impl FnOnce(&Batch<'_>) -> Result<Output, String>) -> i32 {
    let result = parse_batch(desc as u32).and_then(|batch| run(&batch));
    STATE.with_borrow_mut(|s| match result {
        Ok(out) => {
            s.out_desc = descriptor(&out);
            s.output = Some(out);
            ptr(s.out_desc.as_ptr()) as i32
        }
        Err(e) => {
            s.error = e;
            0
        }
    })
}

/// Exports the listed functions as UDFs of the Tidegate ABI: scalar functions first, each
/// taking its arguments by value (`&str` for `utf8`) and returning `Option<RET>`, then
/// aggregates, each a type implementing [`Aggregate`] under the SQL name given:
///
/// ```text
/// export_udfs! {
///     scalar fn double(x: i64) -> i64;
///     aggregate sum_sq = SumSquares;
/// }
/// ```
#[macro_export]
macro_rules! export_udfs {
    (
        $(scalar fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty;)*
        $(aggregate $aname:ident = $aty:ty;)*
        $(table $tname:ident = $tty:ty;)*
    ) => {
        const TG_SCALARS: i32 = <[&str]>::len(&[$(stringify!($name)),*]) as i32;
        const TG_TABLES_FROM: i32 = TG_SCALARS + <[&str]>::len(&[$(stringify!($aname)),*]) as i32;

        $crate::__dispatch!(tg_table_open, __table_open, TG_TABLES_FROM, (), $($tty),*);
        $crate::__dispatch!(tg_table_push, __table_push, TG_TABLES_FROM, (batch: i32), $($tty),*);
        $crate::__dispatch!(tg_table_pull, __table_pull, TG_TABLES_FROM, (), $($tty),*);
        $crate::__dispatch!(tg_table_close, __table_close, TG_TABLES_FROM, (), $($tty),*);

        $crate::__dispatch!(tg_agg_update, __agg_update, TG_SCALARS, (batch: i32, groups: i32, total: i32), $($aty),*);
        $crate::__dispatch!(tg_agg_merge, __agg_merge, TG_SCALARS, (batch: i32, groups: i32, total: i32), $($aty),*);
        $crate::__dispatch!(tg_agg_state, __agg_state, TG_SCALARS, (), $($aty),*);
        $crate::__dispatch!(tg_agg_evaluate, __agg_evaluate, TG_SCALARS, (), $($aty),*);
        $crate::__dispatch!(tg_agg_reset, __agg_reset, TG_SCALARS, (), $($aty),*);

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_alloc(size: i32) -> i32 {
            $crate::__alloc(size)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_error() -> i32 {
            $crate::__error()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_manifest() -> i32 {
            let mut lines: Vec<String> = Vec::new();
            $(
                lines.push($crate::__signature(
                    stringify!($name),
                    &[$(<$ty as $crate::Arg<'static>>::TYPE),*],
                    <$ret as $crate::Ret>::TYPE,
                ));
            )*
            $(lines.push($crate::__aggregate_signature::<$aty>(stringify!($aname)));)*
            $(lines.push($crate::__table_signature::<$tty>(stringify!($tname)));)*
            $crate::__manifest(&lines)
        }

        #[unsafe(no_mangle)]
        #[allow(unused_assignments, unused_mut, unused_variables)]
        pub extern "C" fn tg_scalar(fn_id: i32, batch: i32) -> i32 {
            $crate::__scalar(batch, |batch| {
                let mut id = 0;
                $(
                    if fn_id == id {
                        batch.expect_types(&[$(<$ty as $crate::Arg<'_>>::TYPE),*])?;
                        if $crate::__no_nulls(batch) {
                            // Plain numbers in and out: typed slices, one tight loop.
                            let n = batch.n_rows;
                            let mut col = 0usize;
                            $(
                                let $arg = <$ty as $crate::Arg<'_>>::plain(batch.column(col));
                                col += 1;
                            )*
                            #[allow(irrefutable_let_patterns)]
                            if let ($(Some($arg),)*) = ($($arg,)*) {
                                let mut out = $crate::__appending_output(<$ret as $crate::Ret>::TYPE, 0);
                                if let Some(dst) = <$ret as $crate::Ret>::plain_out(&mut out, n) {
                                    let dst = &mut dst[..n];
                                    $(let $arg = &$arg[..n];)*
                                    let mut nulls = Vec::new();
                                    for i in 0..n {
                                        match $name($($arg[i]),*) {
                                            Some(v) => dst[i] = v,
                                            None => nulls.push(i),
                                        }
                                    }
                                    $crate::__plain_nulls(&mut out, &nulls);
                                    return Ok(out);
                                }
                            }
                            // No NULL to look for: each argument column is read in order.
                            let mut out = $crate::__appending_output(<$ret as $crate::Ret>::TYPE, batch.n_rows);
                            let mut col = 0usize;
                            $(
                                let mut $arg = <$ty as $crate::Arg<'_>>::values(*batch.column(col));
                                col += 1;
                            )*
                            for _ in 0..batch.n_rows {
                                $(
                                    let Some($arg) = $arg.next() else {
                                        return Err("a column is shorter than its batch".into());
                                    };
                                )*
                                match $name($($arg),*) {
                                    Some(v) => $crate::Ret::append(v, &mut out),
                                    None => out.append_null(),
                                }
                            }
                            return Ok(out);
                        }
                        let mut out = $crate::__new_output(<$ret as $crate::Ret>::TYPE, batch.n_rows);
                        'rows: for row in 0..batch.n_rows {
                            let mut col = 0usize;
                            $(
                                let c = batch.column(col);
                                col += 1;
                                if c.is_null(row) {
                                    out.push_null();
                                    continue 'rows;
                                }
                                let $arg: $ty = <$ty as $crate::Arg<'_>>::get(c, row);
                            )*
                            match $name($($arg),*) {
                                Some(v) => $crate::Ret::push(v, &mut out),
                                None => out.push_null(),
                            }
                        }
                        return Ok(out);
                    }
                    id += 1;
                )*
                Err(format!("no scalar function with id {fn_id}"))
            })
        }
    };
}

/// One `tg_agg_*` or `tg_table_*` export: function ids from `$first` on name the given types
/// in order, and the call goes to the SDK's generic `$call` for that type.
#[doc(hidden)]
#[macro_export]
macro_rules! __dispatch {
    ($export:ident, $call:ident, $first:ident, ($($p:ident: $pt:ty),*), $($ty:ty),*) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn $export(fn_id: i32 $(, $p: $pt)*) -> i32 {
            let calls: &[fn(i32 $(, $pt)*) -> i32] = &[$($crate::$call::<$ty>),*];
            match usize::try_from(fn_id - $first).ok().and_then(|i| calls.get(i)) {
                Some(call) => call(fn_id $(, $p)*),
                None => $crate::__no_function(fn_id),
            }
        }
    };
}

/// Civil date helpers for guests: days since the epoch to (year, month, day) and back.
pub mod date {
    /// (year, month, day) of a day number (days since 1970-01-01).
    pub fn civil_from_days(z: i32) -> (i32, u32, u32) {
        let z = z as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_known_days() {
        assert_eq!(date::civil_from_days(0), (1970, 1, 1));
        assert_eq!(date::civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(date::civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn output_bitmaps_mark_nulls() {
        let mut out = Output::new(Type::Int32, 3);
        5i32.push(&mut out);
        out.push_null();
        7i32.push(&mut out);
        assert_eq!(out.validity, vec![0b101]);
        assert_eq!(out.null_count, 1);
        assert_eq!(out.data_len(), 12);
    }

    #[test]
    fn a_column_without_nulls_has_no_bitmap_and_a_late_null_gets_one() {
        let mut out = Output::new(Type::Int64, 10);
        for v in 0..9i64 {
            v.push(&mut out);
        }
        assert!(out.validity.is_empty());
        out.push_null();
        assert_eq!(out.validity, vec![0xFF, 0b01]);
        assert_eq!(out.null_count, 1);
    }

    #[test]
    fn an_appending_output_matches_a_pushed_one_with_and_without_nulls() {
        let rows: Vec<Option<i64>> = (0..20).map(|i| (i % 7 != 3).then_some(i * 10)).collect();
        let (mut pushed, mut appended) = (
            Output::new(Type::Int64, 20),
            Output::appending(Type::Int64, 20),
        );
        for r in &rows {
            match r {
                Some(v) => {
                    v.push(&mut pushed);
                    v.append(&mut appended);
                }
                None => {
                    pushed.push_null();
                    appended.append_null();
                }
            }
        }
        assert_eq!(appended.data, pushed.data[..pushed.data_len()].to_vec());
        assert_eq!(appended.validity, pushed.validity);
        assert_eq!((appended.len, appended.null_count), (20, 3));
        let mut clean = Output::appending(Type::Float64, 3);
        for v in [1.0f64, 2.0, 3.0] {
            v.append(&mut clean);
        }
        assert!(clean.validity.is_empty());
        assert_eq!(clean.data_len(), 24);
    }

    #[test]
    fn a_plain_output_lends_typed_slots_and_marks_nones() {
        let mut out = Output::appending(Type::Float64, 0);
        let dst = f64::plain_out(&mut out, 10).expect("a fresh Vec<u8> is 8-aligned here");
        for (i, d) in dst.iter_mut().enumerate() {
            *d = i as f64;
        }
        __plain_nulls(&mut out, &[3, 9]);
        assert_eq!(out.data_len(), 80);
        assert_eq!(out.validity, vec![0b1111_0111, 0b01]);
        assert_eq!(out.null_count, 2);
        assert_eq!(typed::<f64>(&out.data, 10).unwrap()[4], 4.0);
        assert!(
            typed::<f64>(&out.data[1..], 9).is_none(),
            "misaligned data is not cast"
        );
    }

    #[test]
    fn string_output_has_offsets() {
        let mut out = Output::new(Type::Utf8, 2);
        "ab".to_string().push(&mut out);
        out.push_null();
        "c".to_string().push(&mut out);
        assert_eq!(out.offsets, vec![0, 2, 2, 3]);
        assert_eq!(out.data, b"abc");
    }
}
