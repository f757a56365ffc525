//! The native baseline of workload (d): sum of squares as a DataFusion aggregate UDF with a
//! groups accumulator, the same shape as the guest's.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct SumSquares {
    signature: Signature,
}

pub(crate) fn native_sum_sq() -> AggregateUDF {
    AggregateUDF::new_from_impl(SumSquares {
        signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
    })
}

impl AggregateUDFImpl for SumSquares {
    fn name(&self) -> &str {
        "sum_sq"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Float64)
    }
    fn accumulator(&self, _: AccumulatorArgs) -> datafusion::common::Result<Box<dyn Accumulator>> {
        Ok(Box::new(One(0.0)))
    }
    fn state_fields(&self, _: StateFieldsArgs) -> datafusion::common::Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("s", DataType::Float64, true))])
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups(Vec::new())))
    }
}

#[derive(Debug)]
struct One(f64);

impl Accumulator for One {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.0 += values[0]
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .map(|x| x * x)
            .sum::<f64>();
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.0 += states[0]
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .sum::<f64>();
        Ok(())
    }
    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        Ok(ScalarValue::Float64(Some(self.0)))
    }
    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Float64(Some(self.0))])
    }
    fn size(&self) -> usize {
        8
    }
}

#[derive(Debug)]
struct Groups(Vec<f64>);

impl Groups {
    fn fold(&mut self, values: &ArrayRef, groups: &[usize], total: usize, square: bool) {
        if self.0.len() < total {
            self.0.resize(total, 0.0);
        }
        let values = values.as_primitive::<Float64Type>();
        for (i, g) in groups.iter().enumerate() {
            if values.is_valid(i) {
                let x = values.value(i);
                self.0[*g] += if square { x * x } else { x };
            }
        }
    }

    fn emit(&mut self, emit_to: EmitTo) -> ArrayRef {
        Arc::new(Float64Array::from(emit_to.take_needed(&mut self.0)))
    }
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        _filter: Option<&BooleanArray>,
        total: usize,
    ) -> datafusion::common::Result<()> {
        self.fold(&values[0], group_indices, total, true);
        Ok(())
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total: usize,
    ) -> datafusion::common::Result<()> {
        self.fold(&values[0], group_indices, total, false);
        Ok(())
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> datafusion::common::Result<ArrayRef> {
        Ok(self.emit(emit_to))
    }
    fn state(&mut self, emit_to: EmitTo) -> datafusion::common::Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)])
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        _filter: Option<&BooleanArray>,
    ) -> datafusion::common::Result<Vec<ArrayRef>> {
        let x = values[0].as_primitive::<Float64Type>();
        Ok(vec![Arc::new(arrow::compute::kernels::arity::unary::<
            Float64Type,
            _,
            Float64Type,
        >(x, |v| v * v))])
    }
    fn size(&self) -> usize {
        self.0.len() * 8
    }
}
