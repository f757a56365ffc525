//! Table functions: the [`TableFunction`] trait and the [`Rows`] it writes.

use crate::column::{Batch, Type};
use crate::output::{Output, Ret};

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
    pub(crate) columns: Vec<Output>,
}

impl Rows {
    pub(crate) fn new(types: &[Type]) -> Rows {
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
