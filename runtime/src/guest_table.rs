//! Guest table functions, for whole-model jobs: `SELECT ... FROM f('table', 'col', ...)` opens
//! the function in an instance of its own, pushes every batch of the named columns of a
//! granted table, pulls what the guest produced after each, closes it and pulls the rest.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;

use crate::error::Error;
use crate::sandbox::{GuestFn, JobInstances};

/// One table function of a job's module, before it is bound to the job's tables.
#[derive(Debug, Clone)]
pub struct GuestTable {
    f: GuestFn,
}

pub(crate) fn table_functions(pool: &Arc<JobInstances>) -> Vec<GuestTable> {
    GuestFn::all(pool, "table")
        .into_iter()
        .map(|f| GuestTable { f })
        .collect()
}

type Inputs = Arc<HashMap<String, Arc<dyn TableProvider>>>;

impl GuestTable {
    pub fn name(&self) -> &str {
        &self.f.sig.name
    }

    /// The function as DataFusion calls it, reading only `inputs` (the job's tables).
    pub(crate) fn bind(self, inputs: Inputs) -> Arc<dyn TableFunctionImpl> {
        Arc::new(Bound {
            table: self,
            inputs,
        })
    }

    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.f
                .sig
                .columns
                .iter()
                .map(|(n, t)| Field::new(n, t.arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

#[derive(Debug)]
struct Bound {
    table: GuestTable,
    inputs: Inputs,
}

fn refused(why: String) -> DataFusionError {
    DataFusionError::Plan(why)
}

impl TableFunctionImpl for Bound {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let name = &self.table.f.sig.name;
        let text: Vec<String> = args
            .exprs()
            .iter()
            .map(|e| match e {
                Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Ok(s.clone()),
                _ => Err(refused(format!(
                    "{name}: every argument is a quoted name: the table, then its columns"
                ))),
            })
            .collect::<datafusion::common::Result<_>>()?;
        let Some((table, columns)) = text.split_first() else {
            return Err(refused(format!("{name}: name the input table")));
        };
        let wanted = &self.table.f.sig.args;
        if columns.len() != wanted.len() {
            return Err(refused(format!(
                "{name} takes {} input column(s), {} given",
                wanted.len(),
                columns.len()
            )));
        }
        let input = self
            .inputs
            .get(table)
            .ok_or_else(|| refused(format!("{name}: no table `{table}` in this job")))?;
        let schema = input.schema();
        let mut projection = Vec::with_capacity(columns.len());
        for c in columns {
            if c.starts_with("__tg") {
                return Err(refused(format!("{name}: columns named __tg* are reserved")));
            }
            let at = schema
                .index_of(c)
                .map_err(|_| refused(format!("{name}: `{table}` has no granted column `{c}`")))?;
            projection.push(at);
        }
        Ok(Arc::new(Provider {
            table: self.table.clone(),
            input: Arc::clone(input),
            projection,
            schema: self.table.schema(),
        }))
    }
}

#[derive(Debug)]
struct Provider {
    table: GuestTable,
    input: Arc<dyn TableProvider>,
    projection: Vec<usize>,
    schema: SchemaRef,
}

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait::async_trait]
impl TableProvider for Provider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let GuestFn { pool, sig, fn_id } = &self.table.f;
        let plan = self
            .input
            .scan(state, Some(&self.projection), &[], None)
            .await?;
        let mut input = datafusion::physical_plan::execute_stream(plan, state.task_ctx())?;
        // The model runs in an instance of its own, dropped when it is done or fails.
        let mut guest = pool.dedicated().map_err(external)?;
        guest.table_open(*fn_id, sig).map_err(external)?;
        let mut out = Vec::new();
        let mut keep = |columns: Vec<arrow::array::ArrayRef>| -> datafusion::common::Result<()> {
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
            if batch.num_rows() > 0 {
                out.push(batch);
            }
            Ok(())
        };
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let columns = batch
                .columns()
                .iter()
                .zip(&sig.args)
                .map(|(c, t)| {
                    if c.data_type() == &t.arrow() {
                        Ok(Arc::clone(c))
                    } else {
                        arrow::compute::cast(c, &t.arrow())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            guest
                .table_push(*fn_id, sig, &columns, batch.num_rows())
                .map_err(external)?;
            keep(guest.table_pull(*fn_id, sig).map_err(external)?)?;
        }
        guest.table_close(*fn_id, sig).map_err(external)?;
        keep(guest.table_pull(*fn_id, sig).map_err(external)?)?;
        drop(guest);
        MemTable::try_new(Arc::clone(&self.schema), vec![out])?
            .scan(state, projection, filters, limit)
            .await
    }
}
