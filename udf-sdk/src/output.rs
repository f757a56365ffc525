//! Output columns: the builder a function's results are written into, and the Rust types a
//! function can return.

use crate::column::{Date32, Decimal, Plain, Timestamp, Type};

/// The output column being built for one batch.
#[derive(Debug)]
pub struct Output {
    pub(crate) ty: Type,
    pub(crate) len: usize,
    pub(crate) null_count: usize,
    pub(crate) validity: Vec<u8>,
    pub(crate) offsets: Vec<i32>,
    pub(crate) data: Vec<u8>,
}

impl Output {
    pub(crate) fn new(ty: Type, capacity: usize) -> Self {
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
    pub(crate) fn data_len(&self) -> usize {
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
    pub(crate) fn appending(ty: Type, capacity: usize) -> Self {
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

    /// Marks the rows whose function returned `None` in a plain output.
    pub(crate) fn mark_nulls(&mut self, nulls: &[usize]) {
        if nulls.is_empty() {
            return;
        }
        self.start_bitmap();
        for &row in nulls {
            self.validity[row / 8] &= !(1 << (row % 8));
        }
        self.null_count = nulls.len();
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
    // SAFETY: `Plain` types are integers and floats, valid for any bit pattern (so is whatever
    // is written through the body); `align_to_mut` puts only whole, aligned values in the
    // middle part, which is used only when it is all.
    let (head, body, tail) = unsafe { bytes.align_to_mut::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(body)
}

/// The plain numbers: written as their little-endian bytes, and with a typed fast path.
macro_rules! plain_ret {
    ($($t:ty => $ty:ident),+) => {$(
        impl Ret for $t {
            const TYPE: Type = Type::$ty;
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
    )+};
}

plain_ret!(i32 => Int32, i64 => Int64, f64 => Float64);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::column::typed;

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
        out.mark_nulls(&[3, 9]);
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
