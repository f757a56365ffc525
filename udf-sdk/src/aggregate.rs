//! Aggregate functions: the per-group [`Aggregate`] trait, its arguments and the partial state
//! it exchanges between partitions.

use crate::column::{Arg, Column, Type};
use crate::output::{Output, Ret};

/// An aggregate function over one or more argument columns, kept per group: the shape of a groups
/// accumulator (update with group indices, merge partial states, state, evaluate). The host
/// calls it through the `tg_agg_*` exports that [`export_udfs!`](crate::export_udfs) generates.
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
