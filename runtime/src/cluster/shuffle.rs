//! Shuffle files sealed under a per-job key, and the Flight service that opens them.
//!
//! Ballista's writers put every stage's output on disk as plaintext Arrow IPC. The executors
//! of this cluster run each stage through [`SealedEngine`] instead: the stage's output
//! partitions are written as Arrow IPC streams inside the chunked AES-256-GCM format of the
//! store, under a key derived from the cluster's secret (held in memory only) and Ballista's
//! job id, each file bound to its place (job, stage, partition, task). The file names end in
//! `.sealed`, so no reader takes one for Ballista's own format: every read goes to an
//! executor's [`SealedFlight`] service, which opens it in memory and serves the plaintext
//! stream the reader asked for.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use ballista_core::JobId;
use ballista_core::execution_plans::{
    ShuffleReaderExec, ShuffleWriterExec, SortShuffleWriterExec, create_shuffle_path,
};
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::ShuffleWritePartition;
use ballista_core::serde::scheduler::{Action as BallistaAction, ShuffleFileKind, ShuffleLayout};
use ballista_executor::execution_engine::{ExecutionEngine, QueryStageExecutor};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionConfig;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::crypto::{DataKey, SealedReader, SealingWriter};

/// The cluster's secret, from which its members' bearer value and each job's shuffle key are
/// derived: drawn when an in-process cluster starts and held in memory, or, for a cluster of
/// processes, read by each from a file only its owner reads. Never sent.
pub(crate) struct Secret([u8; 32]);

impl Secret {
    pub(crate) fn random() -> Secret {
        Secret(crate::crypto::random_bytes::<32>())
    }

    /// The secret in the file at `path`, made there (mode 0600) when `create` and there is
    /// none yet.
    pub(crate) fn from_file(path: &std::path::Path, create: bool) -> crate::Result<Secret> {
        const WHAT: &str = "cluster secret";
        if create && !path.exists() {
            return crate::crypto::create_key_file(path, WHAT).map(Secret);
        }
        crate::crypto::load_key_file(path, WHAT).map(Secret)
    }

    /// 32 bytes derived from the secret for `label` (HMAC-SHA256).
    pub(crate) fn derived(&self, label: &[u8]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.mac(), label);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The secret as an HMAC-SHA256 key, for the names and values derived from it.
    fn mac(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0)
    }

    /// The name on disk of the file bound to `context`: a directory listing shows it, and
    /// tells nothing a fetch could name (the fetch names the file by its random number, which
    /// only the scheduler tells; this name is a keyed hash of it).
    fn file_name(&self, context: &str) -> String {
        let tag = ring::hmac::sign(
            &self.mac(),
            format!("tidegate shuffle name\0{context}").as_bytes(),
        );
        format!("{}.sealed", hex::encode(tag.as_ref()))
    }

    /// Whether `presented` (hex) is the cluster's bearer value, compared in constant time.
    fn accepts(&self, presented: &[u8]) -> bool {
        hex::decode(presented)
            .is_ok_and(|tag| ring::hmac::verify(&self.mac(), BEARER_LABEL, &tag).is_ok())
    }

    /// The header a member of the cluster presents to its scheduler, as `(name, value)`.
    pub(crate) fn bearer(&self) -> (String, String) {
        let tag = ring::hmac::sign(&self.mac(), BEARER_LABEL);
        (CLUSTER_HEADER.to_string(), hex::encode(tag.as_ref()))
    }
}

/// The gRPC metadata by which the scheduler knows a member of its cluster.
pub(crate) const CLUSTER_HEADER: &str = "x-tidegate-cluster";

const BEARER_LABEL: &[u8] = b"tidegate cluster bearer";

/// Refuses, on the scheduler, every call that does not present the cluster's bearer value:
/// an executor that may register and take tasks, or a client that may submit a plan, is one
/// started by this cluster.
#[derive(Clone)]
pub(crate) struct Members(pub(crate) Arc<Secret>);

impl tonic::service::Interceptor for Members {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(CLUSTER_HEADER) {
            Some(v) if self.0.accepts(v.as_bytes()) => Ok(request),
            _ => Err(Status::unauthenticated("not a member of this cluster")),
        }
    }
}

/// Presents the cluster's bearer value on every call of an executor to its scheduler.
#[derive(Clone)]
pub(crate) struct Member(pub(crate) tonic::metadata::AsciiMetadataValue);

impl Member {
    pub(crate) fn of(secret: &Secret) -> Member {
        Member(secret.bearer().1.parse().expect("hex is ASCII"))
    }
}

impl tonic::service::Interceptor for Member {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(CLUSTER_HEADER, self.0.clone());
        Ok(request)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a sealed shuffle file is bound to: moved or renamed, it no longer opens.
fn context(job: &str, stage: usize, partition: usize, file: u64) -> String {
    format!("shuffle/{job}/{stage}/{partition}/{file}")
}

/// Where the sealed file of (job, stage, partition, file) is: Ballista's directory for it
/// (removed with the job), under a name of the cluster's ([`Secret::file_name`]).
fn sealed_path(
    work: &Path,
    secret: &Secret,
    job: &JobId,
    stage: usize,
    partition: usize,
    file: u64,
) -> DfResult<PathBuf> {
    let job_name = job.as_str();
    if job_name.is_empty()
        || job_name.len() > 64
        || !job_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(DataFusionError::Plan("a malformed job id".into()));
    }
    let plain = create_shuffle_path(work, job, stage, partition, Some(file), false)?;
    Ok(plain.with_file_name(secret.file_name(&context(job_name, stage, partition, file))))
}

/// Runs each stage with its output sealed.
pub(crate) struct SealedEngine {
    pub(crate) secret: Arc<Secret>,
    /// Bytes of the stages' output written (before sealing), for the cluster's total.
    pub(crate) written: Arc<std::sync::atomic::AtomicU64>,
    /// The jobs admitted: a task runs, and goes on writing, only while its job is.
    pub(crate) jobs: Arc<super::Registry>,
}

impl ExecutionEngine for SealedEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        _config: &SessionConfig,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        // The stage's readers fetch what earlier stages wrote through the executors' Flight
        // services (their files are sealed; none is read here as Ballista's own format).
        let plan = plan
            .transform(|p| {
                let any: &dyn std::any::Any = p.as_ref();
                Ok(match any.downcast_ref::<ShuffleReaderExec>() {
                    Some(reader) => {
                        Transformed::yes(Arc::new(reader.with_work_dir(work_dir.to_string()))
                            as Arc<dyn ExecutionPlan>)
                    }
                    None => Transformed::no(p),
                })
            })?
            .data;
        // A stage refused here fails when it runs: an error from this function would leave
        // the task unreported (Ballista's executor drops it), and the job waiting.
        let refused = check_stage(&plan).err().map(|e| e.to_string());
        let any: &dyn std::any::Any = plan.as_ref();
        let (input, outputs, refused): (Arc<dyn ExecutionPlan>, Vec<usize>, Option<String>) =
            if let Some(w) = any.downcast_ref::<ShuffleWriterExec>() {
                // Each of the input's partitions is one output partition.
                let input = Arc::clone(w.children()[0]);
                (input, global_output_partition_ids, refused)
            } else if let Some(w) = any.downcast_ref::<SortShuffleWriterExec>() {
                // Rows are split by the stage's hash partitioning here, each output
                // partition into a file of its own.
                let partitioning = w.shuffle_output_partitioning().clone();
                let k = partitioning.partition_count();
                let input = Arc::clone(w.children()[0]);
                (
                    Arc::new(RepartitionExec::try_new(input, partitioning)?),
                    (0..k).collect(),
                    refused,
                )
            } else {
                let refused = format!(
                    "this cluster seals the output of hash and passthrough stages only, not {}",
                    plan.name()
                );
                (plan, Vec::new(), Some(refused))
            };
        let refused = refused.or_else(|| {
            (outputs.len() != input.output_partitioning().partition_count())
                .then(|| "a stage's output partitions do not match its input's".to_string())
        });
        Ok(Arc::new(SealedStage {
            refused,
            job: job_id,
            stage: stage_id,
            task: task_id as u64,
            input,
            outputs,
            work: PathBuf::from(work_dir),
            secret: Arc::clone(&self.secret),
            written: Arc::clone(&self.written),
            jobs: Arc::clone(&self.jobs),
        }))
    }
}

/// The operators a stage may hold: DataFusion's relational operators, the stage's shuffle
/// writer and Ballista's shuffle reader. No sink, no scan but Parquet from a job's sealed
/// stores, and rows carried in the plan only up to [`MAX_LITERAL_ROWS_BYTES`].
const OPERATORS: &[&str] = &[
    "DataSourceExec",
    "ProjectionExec",
    "FilterExec",
    "HashJoinExec",
    "NestedLoopJoinExec",
    "CrossJoinExec",
    "SortMergeJoinExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
    "SortExec",
    "SortPreservingMergeExec",
    "AggregateExec",
    "UnionExec",
    "InterleaveExec",
    "GlobalLimitExec",
    "LocalLimitExec",
    "EmptyExec",
    "PlaceholderRowExec",
    "CooperativeExec",
    "ShuffleReaderExec",
    "ShuffleWriterExec",
    "SortShuffleWriterExec",
];

/// The most bytes of rows written in a query (`VALUES`) a stage may carry.
const MAX_LITERAL_ROWS_BYTES: usize = 1 << 20;

/// Refuses a stage holding anything but [`OPERATORS`], or a scan of anything but a sealed
/// store's Parquet.
fn check_stage(plan: &Arc<dyn ExecutionPlan>) -> DfResult<()> {
    plan.apply(|node| {
        if !OPERATORS.contains(&node.name()) {
            return Err(DataFusionError::Plan(format!(
                "a cluster stage may not hold {}",
                node.name()
            )));
        }
        let any: &dyn std::any::Any = node.as_ref();
        if let Some(source) = any.downcast_ref::<datafusion::datasource::source::DataSourceExec>() {
            // Rows the query itself wrote (`VALUES`, a constant `SELECT`): the coordinator
            // refuses a table held in memory, so a source of rows in a plan is the query's own
            // literals; bounded in size all the same.
            if let Some(rows) = source
                .data_source()
                .downcast_ref::<datafusion::datasource::memory::MemorySourceConfig>(
            ) {
                let size: usize = rows
                    .partitions()
                    .iter()
                    .flatten()
                    .map(RecordBatch::get_array_memory_size)
                    .sum();
                if size > MAX_LITERAL_ROWS_BYTES {
                    return Err(DataFusionError::Plan(
                        "a cluster stage carries at most 1 MiB of the query's own rows".into(),
                    ));
                }
                return Ok(TreeNodeRecursion::Continue);
            }
            let sealed = source
                .downcast_to_file_source::<datafusion::datasource::physical_plan::ParquetSource>()
                .is_some_and(|(files, _)| {
                    files.object_store_url.as_str().starts_with("tidegate://")
                });
            if !sealed {
                return Err(DataFusionError::Plan(
                    "a cluster stage scans its job's sealed stores only".into(),
                ));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map(|_| ())
}

/// One task of a stage: its input's partitions, each written sealed.
#[derive(Clone)]
struct SealedStage {
    /// Why the stage may not run, if it may not.
    refused: Option<String>,
    job: JobId,
    stage: usize,
    task: u64,
    input: Arc<dyn ExecutionPlan>,
    /// The output partition each of the input's partitions is.
    outputs: Vec<usize>,
    work: PathBuf,
    secret: Arc<Secret>,
    written: Arc<std::sync::atomic::AtomicU64>,
    jobs: Arc<super::Registry>,
}

impl std::fmt::Debug for SealedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedStage({}/{}/{})", self.job, self.stage, self.task)
    }
}

impl std::fmt::Display for SealedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The most bytes of shuffle files one job's tasks write on one executor: sixteen times the
/// default job memory budget, as the gate's spill (a join that multiplies rows cannot fill
/// the disk).
pub(crate) const MAX_JOB_SHUFFLE_BYTES: u64 = 16 * (tidegate_policy::DEFAULT_JOB_MEMORY_MIB << 20);

/// A sealing writer as the IPC writer's sink, counting what it writes against its job's
/// budget on this executor and the disk's reserve.
struct Sink<'a> {
    sealing: SealingWriter,
    job: &'a super::JobShare,
    budget: u64,
    dir: &'a Path,
}

impl std::io::Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len() as u64;
        let before = self
            .job
            .shuffled
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if before.saturating_add(n) > self.budget {
            return Err(std::io::Error::other(
                "the job's shuffle exceeded its disk budget on an executor",
            ));
        }
        // The disk is shared with the platform's metadata and audit log: a job never takes
        // its last gigabyte (or its last twentieth).
        if let Some(free) = crate::spill::free_bytes(self.dir)
            && free.saturating_sub(n) < crate::spill::disk_reserve(self.dir)
        {
            return Err(std::io::Error::other(
                "the disk is too full for the job's shuffle on an executor",
            ));
        }
        self.sealing.write(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts of one written partition.
#[derive(Debug)]
struct Written {
    batches: u64,
    rows: u64,
    bytes: u64,
}

/// Creates `dir` and its missing parents readable by this user only.
pub(crate) fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

async fn write_sealed(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    path: PathBuf,
    key: DataKey,
    context: String,
    job: &super::JobShare,
    budget: u64,
) -> DfResult<Written> {
    let io = |e: crate::Error| DataFusionError::External(Box::new(e));
    let Some(dir) = path.parent() else {
        return Err(DataFusionError::Internal(
            "a shuffle file without a directory".into(),
        ));
    };
    private_dirs(dir)?;
    let sink = Sink {
        sealing: SealingWriter::create(&path, &key, &context).map_err(io)?,
        job,
        budget,
        dir,
    };
    let mut writer = StreamWriter::try_new(sink, &stream.schema())?;
    let (mut batches, mut rows) = (0u64, 0u64);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if !job.running() {
            // The partial file is removed with the job's directory; it opens as nothing
            // (a sealed file without its final chunk does not open).
            return Err(DataFusionError::Execution(
                "the job ended while its task ran".into(),
            ));
        }
        batches += 1;
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    writer.finish()?;
    let sealing = writer.into_inner()?.sealing;
    let bytes = sealing.len();
    sealing.finish().map_err(io)?;
    Ok(Written {
        batches,
        rows,
        bytes,
    })
}

#[async_trait::async_trait]
impl QueryStageExecutor for SealedStage {
    async fn execute_query_stage(
        &self,
        _task_id: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<Vec<ShuffleWritePartition>> {
        if let Some(why) = &self.refused {
            return Err(DataFusionError::Plan(why.clone()));
        }
        // The job this task is part of, by the token its coordinator named it with: the task
        // runs only while the job is admitted, and stops writing as soon as it is not (ended,
        // failed, cancelled or out of time), so a job's stages do not outlive it.
        let token = context
            .session_config()
            .ballista_config()
            .settings()
            .get(ballista_core::config::BALLISTA_JOB_NAME)
            .cloned()
            .unwrap_or_default();
        // Bound to the Ballista job it first ran under: a task of another (a plan sent again
        // under a token that is not its own) is refused.
        let share = self
            .jobs
            .job(&token)
            .ok()
            .filter(|share| share.runs_as(self.job.as_str()))
            .ok_or_else(|| {
                DataFusionError::Plan("a task of a job this cluster does not run".into())
            })?;
        // The name of this task's files: drawn at random (64 bits), so that a fetch names one
        // only if the scheduler told it where it is (Ballista would use the task number, which
        // anyone can guess).
        let file = u64::from_le_bytes(crate::crypto::random_bytes::<8>());
        let written = self.run_counted(context, Arc::clone(&share), file).await;
        // What the task used is recorded whether it wrote or failed.
        self.jobs.report(&share).await;
        // A guest failure the engine swallowed (an error while it evaluated something it
        // then did not need) still fails the task, as it ends an embedded job.
        if let Some((_, meter, _)) = &share.remote
            && meter.check().is_err()
        {
            return Err(DataFusionError::Execution(
                "a module function of the job failed on an executor".into(),
            ));
        }
        written
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        ballista_core::utils::collect_plan_metrics(self.input.as_ref())
    }
}

impl SealedStage {
    /// [`SealedStage::write_all`] on a runtime of the task's own (its threads stop when it
    /// ends), so that the CPU time of everything the task runs (its operators, the tasks
    /// they start, its guests, its fetches) is counted: each thread adds its CPU clock to
    /// the job's when it stops.
    async fn run_counted(
        &self,
        context: Arc<TaskContext>,
        share: Arc<super::JobShare>,
        file: u64,
    ) -> DfResult<Vec<ShuffleWritePartition>> {
        let stage = self.clone();
        let counted = Arc::clone(&share);
        let ran = crate::threads::run_counted("tidegate-task", 2, move || async move {
            stage.write_all(&context, &share, file).await
        })
        .await;
        match ran {
            Ok((written, cpu_ns)) => {
                counted
                    .cpu_ns
                    .fetch_add(cpu_ns, std::sync::atomic::Ordering::Relaxed);
                written
            }
            Err(why) => Err(DataFusionError::Execution(format!("a task: {why}"))),
        }
    }

    /// Writes each of the task's output partitions sealed into files numbered `file`.
    async fn write_all(
        &self,
        context: &Arc<TaskContext>,
        share: &Arc<super::JobShare>,
        file: u64,
    ) -> DfResult<Vec<ShuffleWritePartition>> {
        let key_of = || self.jobs.shuffle_key(self.job.as_str());
        let mut writes = tokio::task::JoinSet::new();
        for (local, &partition) in self.outputs.iter().enumerate() {
            let path = sealed_path(
                &self.work,
                &self.secret,
                &self.job,
                self.stage,
                partition,
                file,
            )?;
            let stream = self.input.execute(local, Arc::clone(context))?;
            let bound = self::context(self.job.as_str(), self.stage, partition, file);
            let key = key_of();
            let share = Arc::clone(share);
            writes.spawn(async move {
                write_sealed(stream, path, key, bound, &share, MAX_JOB_SHUFFLE_BYTES)
                    .await
                    .map(|w| (partition, w))
            });
        }
        let mut out = Vec::with_capacity(self.outputs.len());
        while let Some(joined) = writes.join_next().await {
            let (partition, w) = joined.map_err(|e| {
                DataFusionError::Execution(format!("a shuffle write stopped: {e}"))
            })??;
            self.written
                .fetch_add(w.bytes, std::sync::atomic::Ordering::Relaxed);
            out.push(ShuffleWritePartition {
                partition_id: partition as u64,
                num_batches: w.batches,
                num_rows: w.rows,
                num_bytes: w.bytes,
                file_id: Some(file),
                is_sort_shuffle: false,
            });
        }
        out.sort_by_key(|p| p.partition_id);
        Ok(out)
    }
}

/// The plaintext of a sealed file, read in order.
struct Plain {
    reader: SealedReader,
    at: u64,
}

/// Bytes read from a sealed file at a time.
const BLOCK: usize = 1 << 20;

impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.reader.len() - self.at;
        let n = (buf.len() as u64).min(left).min(BLOCK as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let bytes = self
            .reader
            .read_at(self.at, n)
            .map_err(std::io::Error::other)?;
        buf[..n].copy_from_slice(&bytes);
        self.at += n as u64;
        Ok(n)
    }
}

/// Serves an executor's sealed shuffle files: opened in memory, in Ballista's two transfer
/// protocols (decoded batches for `do_get`, the raw IPC stream for `IO_BLOCK_TRANSPORT`).
pub(crate) struct SealedFlight {
    pub(crate) work: PathBuf,
    pub(crate) secret: Arc<Secret>,
    /// Where the shuffle keys of the jobs with files here are held.
    pub(crate) jobs: Arc<super::Registry>,
}

type Boxed<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl SealedFlight {
    /// The sealed file a fetch names, opened.
    fn open(&self, action: &[u8]) -> Result<SealedReader, Status> {
        let action = ballista_core::serde::decode_protobuf(action)
            .map_err(|e| Status::invalid_argument(format!("a malformed fetch: {e}")))?;
        let BallistaAction::FetchPartition {
            job_id,
            stage_id,
            partition_id,
            file_id,
            layout,
            file_kind,
            byte_ranges,
            ..
        } = action;
        if !byte_ranges.is_empty()
            || !matches!(layout, ShuffleLayout::Passthrough)
            || !matches!(file_kind, ShuffleFileKind::Data)
        {
            return Err(Status::invalid_argument(
                "this cluster serves whole partitions of sealed files only",
            ));
        }
        let file = file_id.ok_or_else(|| Status::invalid_argument("a fetch without its file"))?;
        let path = sealed_path(
            &self.work,
            &self.secret,
            &job_id,
            stage_id,
            partition_id,
            file,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let opened = std::fs::File::open(&path)
            .map_err(|_| Status::not_found("no such shuffle partition"))?;
        self.jobs
            .existing_shuffle_key(job_id.as_str())
            .ok_or_else(|| Status::not_found("no such shuffle partition"))?
            .reader(
                &context(job_id.as_str(), stage_id, partition_id, file),
                opened,
            )
            .map_err(|_| Status::data_loss("a shuffle partition is damaged"))
    }
}

#[tonic::async_trait]
impl FlightService for SealedFlight {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;
    type DoExchangeStream = Boxed<FlightData>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let reader = self.open(&request.into_inner().ticket)?;
        let decoded = StreamReader::try_new(
            std::io::BufReader::with_capacity(BLOCK, Plain { reader, at: 0 }),
            None,
        )
        .map_err(|_| Status::data_loss("a shuffle partition is damaged"))?;
        let schema = decoded.schema();
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<RecordBatch, arrow_flight::error::FlightError>>(2);
        let on_panic = tx.clone();
        let reading = tokio::task::spawn_blocking(move || {
            for batch in decoded {
                let batch = batch.map_err(arrow_flight::error::FlightError::from);
                if tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        });
        // A reader that stopped without its end fails the stream: never a shorter partition.
        tokio::spawn(async move {
            if reading.await.is_err() {
                let _ = on_panic
                    .send(Err(arrow_flight::error::FlightError::ProtocolError(
                        "a shuffle partition's reader stopped".into(),
                    )))
                    .await;
            }
        });
        let stream = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(tokio_stream::wrappers::ReceiverStream::new(rx))
            .map(|r| r.map_err(|e| Status::internal(e.to_string())));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type != "IO_BLOCK_TRANSPORT" {
            return Err(Status::unimplemented("this action"));
        }
        let reader = Arc::new(self.open(&action.body)?);
        let len = reader.len();
        let blocks = futures::stream::unfold(0u64, move |at| {
            let reader = Arc::clone(&reader);
            async move {
                if at >= len {
                    return None;
                }
                let n = (len - at).min(8 * BLOCK as u64) as usize;
                let read = tokio::task::spawn_blocking(move || reader.read_at(at, n)).await;
                let item = match read {
                    Ok(Ok(body)) => Ok(arrow_flight::Result { body: body.into() }),
                    _ => Err(Status::data_loss("a shuffle partition is damaged")),
                };
                Some((item, at + n as u64))
            }
        });
        Ok(Response::new(Box::pin(blocks)))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(n: usize) -> datafusion::execution::SendableRecordBatchStream {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..1024))],
        )
        .unwrap();
        let stream = futures::stream::iter((0..n).map(move |_| Ok(batch.clone())));
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream))
    }

    #[tokio::test]
    async fn a_jobs_shuffle_stops_at_its_disk_budget_on_an_executor() {
        let dir = tempfile::tempdir().unwrap();
        let job = super::super::JobShare::default();
        let write = |name: &str, n: usize, budget: u64| {
            write_sealed(
                batches(n),
                dir.path().join(name),
                DataKey::generate(),
                name.to_string(),
                &job,
                budget,
            )
        };
        // 4 batches of 8 KiB fit a 1 MiB budget.
        let written = write("a", 4, 1 << 20).await.unwrap();
        assert_eq!(written.rows, 4 * 1024);
        // The budget counts what the job wrote before: 200 more batches do not fit.
        let refused = write("b", 200, 1 << 20).await.unwrap_err().to_string();
        assert!(refused.contains("disk budget"), "{refused}");
        assert!(
            job.shuffled.load(std::sync::atomic::Ordering::Relaxed) > 1 << 20,
            "what it tried to write is counted"
        );
    }
}
