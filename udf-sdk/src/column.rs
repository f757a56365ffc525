//! The value model: the column types of the ABI, the Rust values they hold, and the input
//! columns and batches a function reads them from.

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

    pub(crate) fn width(self) -> usize {
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
    pub(crate) type_id: u32,
    pub(crate) len: usize,
    pub(crate) validity: Option<&'a [u8]>,
    pub(crate) offsets: &'a [u8],
    pub(crate) data: &'a [u8],
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
pub(crate) fn typed<T: Plain>(bytes: &[u8], len: usize) -> Option<&[T]> {
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

/// One batch of input columns.
#[derive(Debug)]
pub struct Batch<'a> {
    pub n_rows: usize,
    pub(crate) columns: Vec<Column<'a>>,
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
