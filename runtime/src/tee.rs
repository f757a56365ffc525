//! One scan for two readers. A gated job's input (the query's rows below its aggregate, each
//! with its keys, arguments, filters, subjects and stored rows) is computed once, and every
//! batch goes both to the query's aggregate and to the gate's per-subject work: the table is
//! read and decrypted once, and each module function is called once per row, so the gate sees
//! exactly the values the result was computed from, whatever a guest remembers between calls.
//!
//! Each partition of the shared plan is run by one task (started when the first reader opens
//! it) that hands every batch to both readers through bounded channels: a reader that lags holds
//! the other back rather than letting batches pile up in memory. A reader's stream ends only
//! on the task's explicit end: a task that stopped any other way (dropped, panicked) is an error
//! to its readers, never a shorter input. A reader that is done (the query's aggregate, which
//! may not need every partition) is released, and the task goes on for the other; the gate's
//! reader must have received every partition whole ([`Tee::whole`]), or the job fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;
use tokio::sync::mpsc;

/// The readers of a shared input.
pub(crate) const READERS: usize = 2;
/// Batches a reader may be behind the other, per partition.
const BUFFERED: usize = 8;

enum Message {
    Batch(RecordBatch),
    Failed(Arc<DataFusionError>),
    End,
}

/// A plan run once, read by [`READERS`] readers.
pub(crate) struct Tee {
    schema: SchemaRef,
    partitions: Vec<Arc<Partition>>,
}

struct Partition {
    index: usize,
    source: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    /// Taken by the first reader to open the partition, which starts its task.
    senders: Mutex<Option<Vec<mpsc::Sender<Message>>>>,
    /// Each reader's end of the partition, taken when it opens it.
    receivers: Vec<Mutex<Option<mpsc::Receiver<Message>>>>,
    /// Aborted when the partition is dropped (the job ended, however it ended).
    task_handle: Mutex<Option<SpawnedTask<()>>>,
    /// Per reader: it received every batch of the partition and its end.
    whole: Arc<Vec<AtomicBool>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Tee {
    /// Shares `source`'s output, partition by partition, between [`READERS`] readers.
    pub(crate) fn new(source: Arc<dyn ExecutionPlan>, task: Arc<TaskContext>) -> Tee {
        let schema = source.schema();
        let count = source.properties().partitioning.partition_count();
        let partitions = (0..count)
            .map(|index| {
                let (senders, receivers): (Vec<_>, Vec<_>) = (0..READERS)
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(BUFFERED);
                        (tx, Mutex::new(Some(rx)))
                    })
                    .unzip();
                Arc::new(Partition {
                    index,
                    source: Arc::clone(&source),
                    task: Arc::clone(&task),
                    senders: Mutex::new(Some(senders)),
                    receivers,
                    task_handle: Mutex::new(None),
                    whole: Arc::new((0..READERS).map(|_| AtomicBool::new(false)).collect()),
                })
            })
            .collect();
        Tee { schema, partitions }
    }

    /// The shared input as reader `reader` sees it: a table to plan a query over.
    pub(crate) fn reader(&self, reader: usize) -> Arc<dyn TableProvider> {
        Arc::new(Reader {
            schema: Arc::clone(&self.schema),
            streams: self
                .partitions
                .iter()
                .map(|p| {
                    Arc::new(ReaderPartition {
                        partition: Arc::clone(p),
                        reader,
                        schema: Arc::clone(&self.schema),
                    }) as Arc<dyn PartitionStream>
                })
                .collect(),
        })
    }

    /// Reader `reader` reads no more: what it did not open is not kept for it.
    pub(crate) fn release(&self, reader: usize) {
        for p in &self.partitions {
            p.receivers[reader]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }

    /// Whether reader `reader` received every batch of every partition, and their ends.
    pub(crate) fn whole(&self, reader: usize) -> bool {
        self.partitions
            .iter()
            .all(|p| p.whole[reader].load(Ordering::SeqCst))
    }
}

impl Partition {
    /// Reader `reader`'s stream of this partition; the first to open it starts its task.
    fn open(&self, reader: usize) -> SendableRecordBatchStream {
        let schema = self.source.schema();
        let Some(rx) = self.receivers[reader]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            let failed = DataFusionError::Internal(format!(
                "the shared input's partition {} was opened twice by one reader",
                self.index
            ));
            return Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async move { Err(failed) }),
            ));
        };
        if let Some(senders) = self
            .senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let run = pump(
                Arc::clone(&self.source),
                self.index,
                Arc::clone(&self.task),
                senders,
            );
            *self
                .task_handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(SpawnedTask::spawn(run));
        }
        let whole = Arc::clone(&self.whole);
        let batches = futures::stream::unfold((rx, false), move |(mut rx, done)| {
            let whole = Arc::clone(&whole);
            async move {
                if done {
                    return None;
                }
                match rx.recv().await {
                    Some(Message::Batch(b)) => Some((Ok(b), (rx, false))),
                    Some(Message::Failed(e)) => Some((Err(DataFusionError::Shared(e)), (rx, true))),
                    Some(Message::End) => {
                        // Received, not only sent: this reader has read the partition to its end.
                        whole[reader].store(true, Ordering::SeqCst);
                        None
                    }
                    None => Some((
                        Err(DataFusionError::Internal(
                            "the shared input stopped before its end".into(),
                        )),
                        (rx, true),
                    )),
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

/// Runs one partition of the shared plan, handing each batch to every reader still reading.
async fn pump(
    source: Arc<dyn ExecutionPlan>,
    index: usize,
    task: Arc<TaskContext>,
    senders: Vec<mpsc::Sender<Message>>,
) {
    let mut open: Vec<Option<mpsc::Sender<Message>>> = senders.into_iter().map(Some).collect();
    let fail = |open: &[Option<mpsc::Sender<Message>>], e: DataFusionError| {
        let e = Arc::new(e);
        let sends: Vec<_> = open
            .iter()
            .flatten()
            .map(|tx| {
                let tx = tx.clone();
                let e = Arc::clone(&e);
                async move {
                    let _ = tx.send(Message::Failed(e)).await;
                }
            })
            .collect();
        futures::future::join_all(sends)
    };
    let mut stream = match source.execute(index, task) {
        Ok(s) => s,
        Err(e) => {
            fail(&open, e).await;
            return;
        }
    };
    while let Some(item) = stream.next().await {
        let batch = match item {
            Ok(b) => b,
            Err(e) => {
                fail(&open, e).await;
                return;
            }
        };
        for slot in open.iter_mut() {
            if let Some(tx) = slot
                && tx.send(Message::Batch(batch.clone())).await.is_err()
            {
                // That reader is done (released, or its query ended): the other goes on.
                *slot = None;
            }
        }
        if open.iter().all(Option::is_none) {
            return;
        }
    }
    for tx in open.iter().flatten() {
        // A reader that is gone has no end to receive.
        let _ = tx.send(Message::End).await;
    }
}

/// One reader's view of the shared input, as a table.
#[derive(Debug)]
struct Reader {
    schema: SchemaRef,
    streams: Vec<Arc<dyn PartitionStream>>,
}

#[async_trait::async_trait]
impl TableProvider for Reader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(StreamingTableExec::try_new(
            Arc::clone(&self.schema),
            self.streams.clone(),
            projection,
            Vec::<LexOrdering>::new(),
            false,
            limit,
        )?))
    }
}

#[derive(Debug)]
struct ReaderPartition {
    partition: Arc<Partition>,
    reader: usize,
    schema: SchemaRef,
}

impl PartitionStream for ReaderPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        self.partition.open(self.reader)
    }
}
