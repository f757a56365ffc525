//! Guest table functions, for whole-model jobs: `SELECT ... FROM f('table', 'col', ...)` opens
//! the function in an instance of its own, pushes every batch of the named columns of a
//! granted table, pulls what the guest produced after each, closes it and pulls the rest. The
//! output streams: a row the model writes early reaches the query before the input ends.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;

use super::{Guest, GuestFn, JobInstances};
use crate::error::Error;

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
            if crate::hidden::is_reserved(c) {
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
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let input = self
            .input
            .scan(state, Some(&self.projection), &[], None)
            .await?;
        let model = Arc::new(Model {
            f: self.table.f.clone(),
            input,
            schema: Arc::clone(&self.schema),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            Arc::clone(&self.schema),
            vec![model],
            projection,
            Vec::<LexOrdering>::new(),
            false,
            limit,
        )?))
    }
}

/// The model as a stream: its rows come out while its input goes in, batch by batch.
#[derive(Debug)]
struct Model {
    f: GuestFn,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
}

impl PartitionStream for Model {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let run = Run {
            f: self.f.clone(),
            schema: Arc::clone(&self.schema),
            input: Some(datafusion::physical_plan::execute_stream(
                Arc::clone(&self.input),
                ctx,
            )),
            guest: None,
        };
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::unfold(run, Run::step),
        ))
    }
}

/// One run of a model: its input (until it ends), and the instance it runs in, made on the
/// first poll and dropped with the stream.
struct Run {
    f: GuestFn,
    schema: SchemaRef,
    input: Option<datafusion::common::Result<SendableRecordBatchStream>>,
    guest: Option<Guest>,
}

impl Run {
    /// The next non-empty output batch, an error (after which the run ends), or the end.
    async fn step(mut self) -> Option<(datafusion::common::Result<RecordBatch>, Run)> {
        loop {
            match self.next_batch().await {
                Ok(Some(b)) if b.num_rows() == 0 => continue,
                Ok(Some(b)) => return Some((Ok(b), self)),
                Ok(None) => return None,
                Err(e) => {
                    self.input = None;
                    self.guest = None;
                    return Some((Err(e), self));
                }
            }
        }
    }

    /// [`Run::step_once`], with any guest failure recorded as the job's.
    async fn next_batch(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let pool = Arc::clone(&self.f.pool);
        self.step_once().await.map_err(|e| match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(guest) => external(pool.fail(*guest)),
                Err(other) => DataFusionError::External(other),
            },
            other => other,
        })
    }

    async fn step_once(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let GuestFn { sig, fn_id, .. } = &self.f;
        let Some(input) = self.input.as_mut() else {
            return Ok(None);
        };
        let input = match input {
            Ok(stream) => stream,
            Err(e) => {
                let e = DataFusionError::Execution(format!("the model's input: {e}"));
                self.input = None;
                return Err(e);
            }
        };
        if self.guest.is_none() {
            let mut guest = self.f.pool.dedicated().map_err(external)?;
            guest.table_open(*fn_id, sig).map_err(external)?;
            self.guest = Some(guest);
        }
        let guest = self.guest.as_mut().expect("just opened");
        match input.next().await {
            Some(batch) => {
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
            }
            None => {
                // No more input: the model writes what it kept, and the run ends after it.
                guest.table_close(*fn_id, sig).map_err(external)?;
                self.input = None;
            }
        }
        let columns = guest.table_pull(*fn_id, sig).map_err(external)?;
        if self.input.is_none() {
            self.guest = None;
        }
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            columns,
        )?))
    }
}
