//! Guest aggregate functions as DataFusion aggregate UDFs: each accumulator owns an instance of
//! its own that keeps the groups' state between calls (the shape of DataFusion's groups
//! accumulator: update with group indices, merge, state, evaluate; ABI.md).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature,
};

use super::{FunctionSig, Guest, GuestFn, JobInstances};
use crate::error::{Error, Result};

/// The aggregate functions of a job's module, registered under their manifest names.
pub(crate) fn aggregate_udfs(pool: &Arc<JobInstances>) -> Vec<AggregateUDF> {
    GuestFn::all(pool, "aggregate")
        .into_iter()
        .map(|f| {
            AggregateUDF::new_from_impl(WasmAggregateUdf {
                signature: f.signature(),
                f,
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WasmAggregateUdf {
    f: GuestFn,
    signature: Signature,
}

impl WasmAggregateUdf {
    fn groups(&self) -> WasmGroups {
        WasmGroups {
            f: self.f.clone(),
            guest: None,
            groups: 0,
        }
    }
}

impl AggregateUDFImpl for WasmAggregateUdf {
    fn name(&self) -> &str {
        &self.f.sig.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(self.f.sig.ret.arrow())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::common::Result<Vec<DataType>> {
        self.f.coerce(arg_types)
    }

    fn accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(self.groups())))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::common::Result<Vec<FieldRef>> {
        Ok(self
            .f
            .sig
            .state
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Arc::new(Field::new(
                    format!("{}[state{i}]", args.name),
                    t.arrow(),
                    true,
                ))
            })
            .collect())
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups()))
    }
}

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The groups of one aggregate in one partition and phase, held by a guest instance of its
/// own. A failed call drops the instance: nothing of it is used again.
struct WasmGroups {
    f: GuestFn,
    guest: Option<Guest>,
    /// The number of groups the guest holds.
    groups: usize,
}

impl std::fmt::Debug for WasmGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WasmGroups({:?}, {} groups)", self.f, self.groups)
    }
}

impl WasmGroups {
    fn with_guest<R>(
        &mut self,
        f: impl FnOnce(&mut Guest, &FunctionSig, i32) -> Result<R>,
    ) -> datafusion::common::Result<R> {
        if self.guest.is_none() {
            self.guest = Some(self.f.pool.dedicated().map_err(external)?);
        }
        let guest = self.guest.as_mut().expect("just made");
        let result = f(guest, &self.f.sig, self.f.fn_id);
        if result.is_err() {
            self.guest = None;
            self.groups = 0;
        }
        result.map_err(|e| external(self.f.pool.fail(e)))
    }

    fn feed(
        &mut self,
        merge: bool,
        columns: &[ArrayRef],
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        let (columns, indices) = match filter {
            None => (columns.to_vec(), group_indices.to_vec()),
            Some(filter) => {
                let keep: Vec<usize> = (0..group_indices.len())
                    .filter(|i| filter.is_valid(*i) && filter.value(*i))
                    .collect();
                let taken =
                    arrow::array::UInt32Array::from_iter_values(keep.iter().map(|i| *i as u32));
                let columns = columns
                    .iter()
                    .map(|c| arrow::compute::take(c, &taken, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                (columns, keep.iter().map(|i| group_indices[*i]).collect())
            }
        };
        self.groups = self.groups.max(total_num_groups);
        let total = self.groups;
        self.with_guest(|g, sig, id| g.aggregate_batch(merge, id, sig, &columns, &indices, total))
    }

    /// Takes the partial state of every group and forgets them.
    fn take_state(&mut self) -> datafusion::common::Result<Vec<ArrayRef>> {
        let n = self.groups;
        let state = self.with_guest(|g, sig, id| {
            let state = g.aggregate_state(id, sig, n)?;
            g.aggregate_reset(id, sig)?;
            Ok(state)
        })?;
        self.groups = 0;
        Ok(state)
    }

    /// Gives the groups after the first `n` of `state` back to the guest, renumbered from 0.
    fn restore_after(&mut self, state: &[ArrayRef], n: usize) -> datafusion::common::Result<()> {
        let rest = state.first().map_or(0, |c| c.len().saturating_sub(n));
        if rest == 0 {
            return Ok(());
        }
        let tail: Vec<ArrayRef> = state.iter().map(|c| c.slice(n, rest)).collect();
        let indices: Vec<usize> = (0..rest).collect();
        self.feed(true, &tail, &indices, None, rest)
    }
}

impl GroupsAccumulator for WasmGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        self.feed(false, values, group_indices, opt_filter, total_num_groups)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        self.feed(true, values, group_indices, None, total_num_groups)
    }

    /// Each row as a group of its own, through an instance made for it (DataFusion asks for
    /// this only of accumulators that say they support it; this one does not by default).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> datafusion::common::Result<Vec<ArrayRef>> {
        let mut each = WasmGroups {
            f: self.f.clone(),
            guest: None,
            groups: 0,
        };
        let n = values.first().map_or(0, |v| v.len());
        let indices: Vec<usize> = (0..n).collect();
        // Filtered-out rows still get a group (their initial state), as DataFusion expects.
        let values: Vec<ArrayRef> = match opt_filter {
            None => values.to_vec(),
            Some(f) => values
                .iter()
                .map(|v| {
                    let kept = arrow::compute::prep_null_mask_filter(f);
                    arrow::compute::nullif(v, &arrow::compute::not(&kept)?)
                })
                .collect::<std::result::Result<_, _>>()?,
        };
        each.feed(false, &values, &indices, None, n)?;
        each.take_state()
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> datafusion::common::Result<ArrayRef> {
        match emit_to {
            EmitTo::All => {
                let n = self.groups;
                let out = self.with_guest(|g, sig, id| {
                    let out = g.aggregate_evaluate(id, sig, n)?;
                    g.aggregate_reset(id, sig)?;
                    Ok(out)
                })?;
                self.groups = 0;
                Ok(out)
            }
            EmitTo::First(n) => {
                // The first n groups alone, evaluated; the others go back renumbered.
                let state = self.take_state()?;
                let n = n.min(state.first().map_or(0, |c| c.len()));
                let head: Vec<ArrayRef> = state.iter().map(|c| c.slice(0, n)).collect();
                let indices: Vec<usize> = (0..n).collect();
                self.feed(true, &head, &indices, None, n)?;
                let out = self.evaluate(EmitTo::All)?;
                self.restore_after(&state, n)?;
                Ok(out)
            }
        }
    }

    fn state(&mut self, emit_to: EmitTo) -> datafusion::common::Result<Vec<ArrayRef>> {
        let state = self.take_state()?;
        match emit_to {
            EmitTo::All => Ok(state),
            EmitTo::First(n) => {
                let n = n.min(state.first().map_or(0, |c| c.len()));
                self.restore_after(&state, n)?;
                Ok(state.iter().map(|c| c.slice(0, n)).collect())
            }
        }
    }

    fn size(&self) -> usize {
        self.guest.as_ref().map_or(0, Guest::memory_size)
    }
}

/// An aggregate without GROUP BY: one group.
#[derive(Debug)]
struct OneGroup(WasmGroups);

impl OneGroup {
    fn ensure_group(&mut self) -> datafusion::common::Result<()> {
        if self.0.groups == 0 {
            let empty: Vec<ArrayRef> = (self.0.f.sig.args.iter())
                .map(|t| arrow::array::new_empty_array(&t.arrow()))
                .collect();
            self.0.feed(false, &empty, &[], None, 1)?;
        }
        Ok(())
    }
}

impl Accumulator for OneGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        self.0.feed(false, values, &vec![0; n], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        let n = states.first().map_or(0, |v| v.len());
        self.0.feed(true, states, &vec![0; n], None, 1)
    }

    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        self.ensure_group()?;
        let out = self
            .0
            .with_guest(|g, sig, id| g.aggregate_evaluate(id, sig, 1))?;
        ScalarValue::try_from_array(&out, 0)
    }

    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        self.ensure_group()?;
        let state = self
            .0
            .with_guest(|g, sig, id| g.aggregate_state(id, sig, 1))?;
        state
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0))
            .collect()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.0.size()
    }
}
