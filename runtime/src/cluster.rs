//! Jobs on a DataFusion Ballista cluster inside the domain: Ballista's scheduler, executors,
//! shuffle and Flight transport, with Tidegate's hooks installed.
//!
//! What a job sends to the cluster is the physical plan of its shared input (the scan, joins,
//! filters and every module function's evaluation: [`crate::job`] keeps the aggregation, the
//! per-subject tally and the gate on the coordinator, exactly as in embedded mode). A plan
//! names what it needs by reference, never by content:
//! - a guest or platform function by the job's token, its name and (a guest's) module hash;
//! - a sealed table by the job's token and its store's address.
//!
//! An executor resolves them through the [`Registry`] of jobs the coordinator admitted, and
//! only there: a function the job was not given, a module hash other than the one approved
//! for it, a job that ended or never was, fail the task. The functions it resolves are the
//! job's own (the same guests, fuel, memory and epoch deadlines, the same meter), and the
//! sealed stores decrypt in memory only the ranges a task reads.
//!
//! The in-process cluster ([`Cluster::standalone`]: a scheduler and executors on loopback)
//! shares the coordinator's registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::datatypes::{DataType, SchemaRef};
use ballista_core::config::BallistaConfig;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::object_store::ObjectStore;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::TryStreamExt;

use crate::error::{Error, Result};

mod shuffle;
mod tls;

/// The prefix of every payload this codec writes: anything else is Ballista's.
const TAG: &[u8] = b"tidegate/1:";

/// What the coordinator gave a job for the cluster to use: its functions and its sealed
/// stores. Only what is here can be named by a plan.
#[derive(Default)]
struct JobShare {
    /// The job's own functions by name (guest and platform), with the module hash a guest
    /// function comes from.
    functions: HashMap<String, (Option<String>, Arc<ScalarUDF>)>,
    /// The job's sealed stores by address (`tidegate://table0`).
    stores: HashMap<String, Arc<dyn ObjectStore>>,
    /// The Ballista job the token was first run under: a task of any other is refused, and
    /// this one is cancelled on the scheduler when the job ends here.
    ballista: std::sync::OnceLock<String>,
    /// Set when the job ends here: its tasks stop at their next batch.
    ended: std::sync::atomic::AtomicBool,
    /// On an executor of another process: the platform's job id, the meter of the job's
    /// guests here (cancelled when the job no longer runs), and when its time is up here.
    remote: Option<(String, Arc<crate::sandbox::JobMeter>, std::time::Instant)>,
    /// CPU time its tasks' streams took here, in nanoseconds.
    cpu_ns: std::sync::atomic::AtomicU64,
    /// Bytes of shuffle files its tasks wrote here (sealed).
    shuffled: std::sync::atomic::AtomicU64,
    /// The job's own engine memory here, shared by all its tasks: what they hold together
    /// fails a task past it, rather than the process.
    pool: Option<Arc<dyn MemoryPool>>,
    /// The fuel, CPU time (ms) and whether a limit was met, as its last record here said.
    recorded: Mutex<(u64, u64, bool)>,
}

/// A job's pool on an executor: `memory_bytes` of its own, taking from the executor's `shared`
/// pool too when there is one.
fn job_pool(memory_bytes: usize, shared: Option<Arc<GreedyMemoryPool>>) -> Arc<dyn MemoryPool> {
    let job = GreedyMemoryPool::new(memory_bytes);
    match shared {
        Some(executor) => Arc::new(JobPool { job, executor }),
        None => Arc::new(job),
    }
}

/// A job's pool on an executor: what its tasks reserve counts against the job's budget and
/// against the executor's memory for all its jobs; past either, the reservation fails.
#[derive(Debug)]
struct JobPool {
    job: GreedyMemoryPool,
    executor: Arc<GreedyMemoryPool>,
}

impl std::fmt::Display for JobPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job pool {} within executor pool {}",
            self.job, self.executor
        )
    }
}

impl MemoryPool for JobPool {
    fn name(&self) -> &str {
        "tidegate-job"
    }

    fn grow(&self, reservation: &MemoryReservation, n: usize) {
        self.job.grow(reservation, n);
        self.executor.grow(reservation, n);
    }

    fn shrink(&self, reservation: &MemoryReservation, n: usize) {
        self.job.shrink(reservation, n);
        self.executor.shrink(reservation, n);
    }

    fn try_grow(&self, reservation: &MemoryReservation, n: usize) -> DfResult<()> {
        self.job.try_grow(reservation, n)?;
        if let Err(e) = self.executor.try_grow(reservation, n) {
            self.job.shrink(reservation, n);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.job.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.job.memory_limit()
    }
}

/// Where an executor of another process than the coordinator learns what a job may use: the
/// platform's metadata, read-only ([`crate::ExecutorJobs`]). Nothing travels in a plan but
/// the job's id: its functions, modules and data keys are looked up here.
pub trait JobSource: Send + Sync + 'static {
    /// Whether the job runs now (an error when that cannot be read now).
    fn running(&self, job: &str) -> Result<bool>;
    /// What the running job may use here: its functions (from modules approved for its
    /// scenario only) and its sealed tables, in the order of the job's tables.
    fn resolve(&self, job: &str) -> Result<ResolvedJob>;
    /// Records what the job used on this executor so far (its guests' fuel, calls, memory
    /// and output, its tasks' CPU time), for the platform to add to the job's meter.
    /// `limit` is the limit the job's guests met here, if they met one (the platform's own
    /// words: over L1 data the platform fails the job with it, as it would have here).
    fn record(&self, job: &str, used: &crate::ResourceUse, limit: Option<String>) -> Result<()>;
    /// What the job used on the cluster's other executors, as they recorded it so far.
    fn used_elsewhere(&self, job: &str) -> Result<crate::ResourceUse>;
    /// Forgets what it kept of a job this executor no longer runs.
    fn forget(&self, _job: &str) {}
}

/// A running job's functions and sealed tables, as an executor rebuilt them.
pub struct ResolvedJob {
    /// Every scalar function the job may call that is not DataFusion's, with the module hash
    /// of a guest's.
    pub(crate) functions: Vec<(Option<String>, Arc<ScalarUDF>)>,
    /// The job's sealed tables, by their index among the job's tables.
    pub(crate) stores: Vec<Arc<dyn ObjectStore>>,
    /// The meter of the job's guests on this executor (with the job's fuel).
    pub(crate) meter: Arc<crate::sandbox::JobMeter>,
    /// The job's engine memory, for all its tasks on this executor together.
    pub(crate) memory_bytes: usize,
    /// When the job's time is up.
    pub(crate) deadline: std::time::Instant,
}

impl ResolvedJob {
    /// The functions by name, with the module hash of a guest's.
    pub fn functions(&self) -> Vec<(String, Option<String>)> {
        self.functions
            .iter()
            .map(|(m, f)| (f.name().to_string(), m.clone()))
            .collect()
    }

    /// How many sealed tables the job reads.
    pub fn tables(&self) -> usize {
        self.stores.len()
    }

    /// The job's own budgets here: its guests' fuel, its tasks' engine memory, and how long
    /// it may still run.
    pub fn budgets(&self) -> (u64, usize, std::time::Duration) {
        (
            self.meter.limits.fuel,
            self.memory_bytes,
            self.deadline
                .saturating_duration_since(std::time::Instant::now()),
        )
    }
}

impl JobShare {
    /// Whether the job still runs here.
    pub(crate) fn running(&self) -> bool {
        !self.ended.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Binds the job to the Ballista job `id` of its first task; whether `id` is it.
    pub(crate) fn runs_as(&self, id: &str) -> bool {
        self.ballista.get_or_init(|| id.to_string()) == id
    }
}

/// How an ended job is cancelled on the scheduler, as a member of the cluster.
struct Canceller {
    scheduler: SocketAddr,
    secret: Arc<shuffle::Secret>,
    tls: Arc<tls::Tls>,
    runtime: tokio::runtime::Handle,
}

/// The jobs the coordinator admitted to the cluster, by token: what an executor may resolve.
#[derive(Default)]
pub(crate) struct Registry {
    jobs: Mutex<HashMap<String, Arc<JobShare>>>,
    canceller: std::sync::OnceLock<Canceller>,
    /// On an executor of another process: where a job not seen yet is looked up.
    source: Option<Arc<dyn JobSource>>,
    /// Held while a job is looked up in the source: one lookup at a time.
    resolving: Mutex<()>,
    /// The shuffle key of each Ballista job with files here: drawn at random when its first
    /// file is written, held in memory only, forgotten when the job ends (its files then
    /// never open again, wherever they are).
    keys: Mutex<HashMap<String, crate::crypto::DataKey>>,
    /// The CPU time (ns) the tasks of each ended job took on this process's executors, by
    /// token, until the platform takes it for the job's meter.
    spent: Mutex<HashMap<String, u64>>,
    /// On an executor of another process: the jobs (by the platform's id) it stopped at their
    /// deadline, and when; refused until long after any job may run, whatever the metadata
    /// says (a job is not looked up again with a new meter and a new pool).
    forgotten: Mutex<HashMap<String, std::time::Instant>>,
    /// On an executor of another process: the engine memory all its jobs' tasks hold
    /// together (each job's pool takes from it too).
    memory: Option<Arc<GreedyMemoryPool>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        write!(f, "Registry({n} jobs)")
    }
}

impl Registry {
    fn admitted(&self, token: &str) -> Option<Arc<JobShare>> {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn job(&self, token: &str) -> DfResult<Arc<JobShare>> {
        let not_run =
            || DataFusionError::Plan("the plan names a job this cluster does not run".into());
        if let Some(share) = self.admitted(token) {
            return Ok(share);
        }
        let (Some(source), Some(id)) = (&self.source, job_of(token)) else {
            return Err(not_run());
        };
        let _one = self
            .resolving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = self.admitted(token) {
            return Ok(share);
        }
        if self
            .forgotten
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
            || !source.running(&id).unwrap_or(false)
        {
            return Err(not_run());
        }
        let resolved = source.resolve(&id).map_err(|e| {
            DataFusionError::Plan(format!("the job cannot run on this executor: {e}"))
        })?;
        let share = Arc::new(JobShare {
            functions: resolved
                .functions
                .into_iter()
                .map(|(m, f)| (f.name().to_string(), (m, f)))
                .collect(),
            stores: resolved
                .stores
                .into_iter()
                .enumerate()
                .map(|(i, s)| (crate::tables::store_address(token, i), s))
                .collect(),
            remote: Some((id, resolved.meter, resolved.deadline)),
            pool: Some(job_pool(resolved.memory_bytes, self.memory.clone())),
            ..JobShare::default()
        });
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_string(), Arc::clone(&share));
        Ok(share)
    }

    /// Records, on an executor of another process, what the job of `share` used here so far
    /// (after each task).
    async fn report(self: &Arc<Self>, share: &Arc<JobShare>) {
        let (registry, share) = (Arc::clone(self), Arc::clone(share));
        let _ = tokio::task::spawn_blocking(move || registry.sync_usage(&share, true)).await;
    }

    /// Records, on an executor of another process, what the job of `share` used here so far
    /// (always when `always`, else when it changed), and takes what its other executors
    /// recorded from the fuel its guests may burn here: the job's fuel is one budget for the
    /// whole cluster, held here as of the others' last records (the platform checks the sum
    /// when the job ends). Blocking.
    fn sync_usage(&self, share: &JobShare, always: bool) {
        let (Some(source), Some((id, meter, _))) = (&self.source, &share.remote) else {
            return;
        };
        // First what the others burnt (it may stop the guests here: that is recorded below).
        if let Ok(elsewhere) = source.used_elsewhere(id) {
            meter.spent_elsewhere(elsewhere.fuel);
        }
        let used = crate::ResourceUse {
            // What was burnt, without what calls running now were handed.
            fuel: meter.fuel_burnt(),
            guest_calls: meter.calls(),
            peak_guest_memory_bytes: meter.peak_memory(),
            guest_output_bytes: meter.output_bytes(),
            cpu_ms: share.cpu_ns.load(std::sync::atomic::Ordering::Relaxed) / 1_000_000,
            ..crate::ResourceUse::default()
        };
        let limit = match meter.check() {
            Err(Error::Limit(why)) => Some(why),
            _ => None,
        };
        let now = (used.fuel, used.cpu_ms, limit.is_some());
        let changed = {
            let mut last = share
                .recorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *last, now) != now
        };
        // A record that cannot be written is missing from the job's meter; the task's own
        // outcome stands (SECURITY.md).
        if always || changed {
            let _ = source.record(id, &used, limit);
        }
    }

    /// Ends, on an executor of another process, every job its source no longer runs: its
    /// tasks stop at their next batch, its guests at their next epoch tick.
    fn forget_ended(&self) {
        let Some(source) = &self.source else { return };
        let remote: Vec<(String, Arc<JobShare>)> = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, s)| s.remote.is_some())
            .map(|(t, s)| (t.clone(), Arc::clone(s)))
            .collect();
        // Ids forgotten long ago may be looked up again (they ended long ago).
        let longest = crate::job::EngineLimits::default().wall_time;
        self.forgotten
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, at| at.elapsed() < 2 * longest);
        for (token, share) in remote {
            let Some((id, meter, deadline)) = &share.remote else {
                continue;
            };
            // What its guests burn here reaches the other executors' budgets of it, and
            // theirs this one's, every half second while its tasks run.
            self.sync_usage(&share, false);
            // Ended in the metadata, or past its deadline (never later than any job may run
            // from when it was first seen here: its coordinator may be gone without ending
            // it); a metadata that cannot be read now is asked again.
            let late = std::time::Instant::now() >= *deadline;
            let ended = late || matches!(source.running(id), Ok(false));
            if ended {
                share
                    .ended
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if late {
                    meter.expire();
                    self.forgotten
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.clone(), std::time::Instant::now());
                } else {
                    meter.cancel();
                }
                self.jobs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&token);
                source.forget(id);
                if let Some(ballista) = share.ballista.get() {
                    self.forget_key(ballista);
                }
            }
        }
    }
}

impl Registry {
    /// The shuffle key of Ballista job `job`, drawn the first time.
    pub(crate) fn shuffle_key(&self, job: &str) -> crate::crypto::DataKey {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(job.to_string())
            .or_insert_with(crate::crypto::DataKey::generate)
            .copy()
    }

    /// The shuffle key of Ballista job `job`, if it has files here and has not ended.
    pub(crate) fn existing_shuffle_key(&self, job: &str) -> Option<crate::crypto::DataKey> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job)
            .map(crate::crypto::DataKey::copy)
    }

    fn forget_key(&self, job: &str) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job);
    }
}

/// The token naming a job on the cluster: the platform's job id (hex) when there is one (an
/// executor of another process looks the job up by it), and a random part (each run of a job
/// is told apart; on an in-process cluster the whole token must be the one admitted).
fn job_token(job: Option<&str>) -> Result<String> {
    let random = token()?;
    Ok(match job {
        Some(id) => format!("{}x{random}", hex::encode(id)),
        None => random,
    })
}

/// The platform's job id a token names, if it names one.
fn job_of(token: &str) -> Option<String> {
    let (id, _) = token.split_once('x')?;
    String::from_utf8(hex::decode(id).ok()?).ok()
}

/// A job's admission to the cluster: while it lives, executors resolve the job's functions
/// and stores; dropped, they no longer can.
pub(crate) struct Admission {
    registry: Arc<Registry>,
    token: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let ended = self
            .registry
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
        // The scheduler is told the job is over (whether it finished, failed or was stopped):
        // it hands out none of its remaining tasks and cleans its files up. Its tasks refuse
        // to go on already (the job is no longer admitted).
        let Some(ended) = ended else { return };
        ended
            .ended
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // What its tasks took on this process's executors, for the job's meter.
        let cpu = ended.cpu_ns.load(std::sync::atomic::Ordering::Relaxed);
        if ended.remote.is_none() && cpu > 0 {
            self.registry
                .spent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(self.token.clone(), cpu);
        }
        let Some(id) = ended.ballista.get().cloned() else {
            return;
        };
        // Its shuffle files never open again.
        self.registry.forget_key(&id);
        let Some(c) = self.registry.canceller.get() else {
            return;
        };
        let (scheduler, secret, tls) = (c.scheduler, Arc::clone(&c.secret), Arc::clone(&c.tls));
        c.runtime.spawn(async move {
            use ballista_core::serde::protobuf::CancelJobParams;
            let client = executor::scheduler_client(&scheduler.to_string(), &secret, &tls).await;
            if let Ok(mut client) = client {
                let _ = client.cancel_job(CancelJobParams { job_id: id }).await;
            }
        });
    }
}

/// A function reference as plans carry it.
#[derive(serde::Serialize, serde::Deserialize)]
struct FunctionRef {
    job: String,
    name: String,
    /// The module a guest function comes from.
    module: Option<String>,
    /// Its result type, for the scheduler's planning (which never calls it).
    ret: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Payload {
    Function(FunctionRef),
}

fn encode(payload: &Payload, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(TAG);
    serde_json::to_writer(buf, payload).map_err(|e| DataFusionError::Internal(e.to_string()))
}

fn decode(buf: &[u8]) -> Option<DfResult<Payload>> {
    let rest = buf.strip_prefix(TAG)?;
    Some(
        serde_json::from_slice(rest)
            .map_err(|e| DataFusionError::Plan(format!("a damaged cluster reference: {e}"))),
    )
}

/// Where a codec runs.
#[derive(Debug, Clone)]
enum Side {
    /// The coordinator: writes references to one job's functions and stores.
    Coordinator(Arc<JobShare>, String),
    /// The scheduler: keeps references as they are (it plans stages and never runs them).
    Scheduler,
    /// An executor: resolves references in the registry.
    Executor(Arc<Registry>),
}

impl std::fmt::Debug for JobShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JobShare({} functions, {} stores)",
            self.functions.len(),
            self.stores.len()
        )
    }
}

/// Tidegate's physical extension codec: job functions and sealed scans by reference, and
/// everything else handed to Ballista's own codec.
#[derive(Debug)]
struct Codec {
    side: Side,
    ballista: BallistaPhysicalExtensionCodec,
}

impl Codec {
    fn new(side: Side) -> Codec {
        Codec {
            side,
            ballista: BallistaPhysicalExtensionCodec::default(),
        }
    }
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.ballista.try_decode(buf, inputs, ctx, converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        self.ballista.try_encode(node, buf, converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        let Some(payload) = decode(buf) else {
            return self.ballista.try_decode_udf(name, buf);
        };
        let Payload::Function(f) = payload?;
        if f.name != name {
            return Err(DataFusionError::Plan(format!(
                "function `{name}` is referenced under another name"
            )));
        }
        match &self.side {
            Side::Executor(registry) => {
                let job = registry.job(&f.job)?;
                match job.functions.get(&f.name) {
                    Some((module, udf)) if *module == f.module => Ok(Arc::clone(udf)),
                    Some(_) => Err(DataFusionError::Plan(format!(
                        "function `{name}` is named with a module the job was not approved to run"
                    ))),
                    None => Err(DataFusionError::Plan(format!(
                        "function `{name}` is not one of the job's functions"
                    ))),
                }
            }
            Side::Scheduler | Side::Coordinator(..) => {
                let ret: DataType = f
                    .ret
                    .parse()
                    .map_err(|e| DataFusionError::Plan(format!("function `{name}`: {e}")))?;
                Ok(Arc::new(ScalarUDF::new_from_impl(Referenced {
                    reference: f,
                    ret,
                    signature: Signature::variadic_any(Volatility::Volatile),
                })))
            }
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        let inner: &dyn std::any::Any = node.inner().as_ref();
        if let Some(r) = inner.downcast_ref::<Referenced>() {
            return encode(
                &Payload::Function(FunctionRef {
                    job: r.reference.job.clone(),
                    name: r.reference.name.clone(),
                    module: r.reference.module.clone(),
                    ret: r.reference.ret.clone(),
                }),
                buf,
            );
        }
        if let Side::Coordinator(share, token) = &self.side
            && let Some((module, udf)) = share.functions.get(node.name())
        {
            if !Arc::ptr_eq(udf.inner(), node.inner()) {
                return Err(DataFusionError::Plan(format!(
                    "function `{}` is not the job's own",
                    node.name()
                )));
            }
            // A function whose result type depends on its arguments' types is named without
            // one: the scheduler plans with the types the plan records.
            let ret = node
                .return_type(&[])
                .map(|t| t.to_string())
                .unwrap_or_else(|_| DataType::Null.to_string());
            return encode(
                &Payload::Function(FunctionRef {
                    job: token.clone(),
                    name: node.name().to_string(),
                    module: module.clone(),
                    ret,
                }),
                buf,
            );
        }
        self.ballista.try_encode_udf(node, buf)
    }
}

/// A job function as the scheduler holds it: a reference it plans with and passes on; it
/// cannot be called there.
#[derive(Debug)]
struct Referenced {
    reference: FunctionRef,
    ret: DataType,
    signature: Signature,
}

impl std::fmt::Debug for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of job {}", self.name, self.job)
    }
}

impl PartialEq for Referenced {
    fn eq(&self, other: &Self) -> bool {
        self.reference.job == other.reference.job
            && self.reference.name == other.reference.name
            && self.reference.module == other.reference.module
    }
}

impl Eq for Referenced {}

impl std::hash::Hash for Referenced {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.reference.job.hash(state);
        self.reference.name.hash(state);
        self.reference.module.hash(state);
    }
}

impl ScalarUDFImpl for Referenced {
    fn name(&self) -> &str {
        &self.reference.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.ret.clone())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Execution(format!(
            "function `{}` runs on an executor only",
            self.reference.name
        )))
    }
}

/// A plan run on the cluster: one stream of the whole result, fetched from the executors
/// that hold the final stage's output.
#[derive(Debug)]
struct ClusterExec {
    scheduler: String,
    /// The job's token: its tasks carry it as Ballista's job name, and run while it is admitted.
    token: String,
    /// The header by which the scheduler knows this coordinator as a member of the cluster.
    bearer: (String, String),
    /// Its TLS settings as a member.
    tls: Arc<tls::Tls>,
    plan: Arc<dyn ExecutionPlan>,
    codec: Arc<Codec>,
    properties: Arc<PlanProperties>,
    /// Keeps the job admitted while the plan can run.
    _admission: Arc<Admission>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

impl DisplayAs for ClusterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ClusterExec: scheduler={}", self.scheduler)
    }
}

impl ExecutionPlan for ClusterExec {
    fn name(&self) -> &str {
        "ClusterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "a cluster plan has no inputs".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "a cluster plan has one partition, not {partition}"
            )));
        }
        let config = member_config(&self.tls)
            .with_target_partitions(context.session_config().target_partitions())
            // Every shuffle read goes through an executor's Flight service.
            .with_ballista_shuffle_reader_force_remote_read(true)
            .with_ballista_grpc_metadata(HashMap::from([self.bearer.clone()]))
            .with_ballista_job_name(&self.token);
        let ballista: BallistaConfig = config.ballista_config();
        let scheduler = format!("https://{}", self.scheduler);
        let plan = Arc::clone(&self.plan);
        let codec = Arc::clone(&self.codec);
        let session = context.session_id();
        let schema = self.plan.schema();
        let stream = futures::stream::once(async move {
            ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
                scheduler,
                &ballista,
                plan,
                codec.as_ref(),
                session,
                config,
            )
            .await
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

fn single_partition(schema: SchemaRef) -> PlanProperties {
    PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(1),
        EmissionType::Incremental,
        Boundedness::Bounded,
    )
}

/// The object stores of a scheduler's or an executor's engine: sealed stores of admitted jobs,
/// and nothing else (no local file system, no store registered later). A job's sealed store is
/// named by an address that carries the job's token (`tidegate://j{token}-t{index}`): an
/// executor resolves it in the registry of admitted jobs; on the scheduler, and for a job not
/// admitted, it is an empty store that holds nothing (a plan naming it decodes; nothing is
/// read). Any other address is refused.
#[derive(Debug, Default)]
struct Stores {
    jobs: Option<Arc<Registry>>,
}

impl Stores {
    /// The sealed store `url` names, if its job is admitted and was given it.
    fn sealed(&self, url: &url::Url) -> Option<Arc<dyn ObjectStore>> {
        let jobs = self.jobs.as_ref()?;
        let host = url.host_str()?;
        let token = host.strip_prefix('j')?.split_once('-')?.0;
        let job = jobs.job(token).ok()?;
        let address = format!("tidegate://{host}");
        job.stores.get(&address).cloned()
    }
}

impl datafusion::execution::object_store::ObjectStoreRegistry for Stores {
    /// Nothing is registered: what a task may read is decided by the admission alone.
    fn register_store(
        &self,
        _url: &url::Url,
        _store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn deregister_store(&self, _url: &url::Url) -> DfResult<Arc<dyn ObjectStore>> {
        Err(DataFusionError::Plan("no store is registered here".into()))
    }

    fn get_store(&self, url: &url::Url) -> DfResult<Arc<dyn ObjectStore>> {
        if url.scheme() == "tidegate" {
            Ok(self
                .sealed(url)
                .unwrap_or_else(|| Arc::new(crate::storage::SealedStore::default())))
        } else {
            Err(DataFusionError::Plan(
                "a cluster task reads its job's sealed stores only".into(),
            ))
        }
    }
}

/// A session's configuration on this cluster.
fn config() -> SessionConfig {
    let mut config = SessionConfig::new_with_ballista();
    without_dynamic_filters(&mut config);
    config
}

/// [`config`] for a member of the cluster: every gRPC client Ballista makes (to the scheduler,
/// to an executor's shuffle service) speaks TLS with the member's certificate and accepts only
/// a server of the cluster.
fn member_config(tls: &Arc<tls::Tls>) -> SessionConfig {
    let client = tls.client.clone();
    config()
        .with_ballista_use_tls(true)
        .with_ballista_override_create_grpc_client_endpoint(Arc::new(move |endpoint| {
            endpoint
                .tls_config(client.clone())
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        }))
}

/// Turns off the filters a join or a top-k builds while it runs and pushes into its inputs:
/// the scheduler re-plans a stage once the stages before it are done (it may swap a join's
/// sides), which DataFusion refuses for a join whose filter is built, and Ballista then waits
/// on that stage for ever.
pub(crate) fn without_dynamic_filters(config: &mut SessionConfig) {
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.enable_dynamic_filter_pushdown = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    optimizer.enable_topk_dynamic_filter_pushdown = false;
    optimizer.enable_aggregate_dynamic_filter_pushdown = false;
}

/// An engine's runtime with [`Stores`] and no disk manager (nothing of a task reaches the
/// disk through the engine: no spilling), for a task of the job its `config` names.
fn runtime(
    jobs: Option<Arc<Registry>>,
    config: &SessionConfig,
) -> DfResult<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    // A task's memory is bounded by its job's budget, shared with the job's other tasks
    // here: what they hold fails the task past it, rather than the process. A task of a job
    // this executor does not run (it is refused when it starts) gets the policy's default.
    let token = config
        .ballista_config()
        .settings()
        .get(ballista_core::config::BALLISTA_JOB_NAME)
        .cloned()
        .unwrap_or_default();
    let pool: Arc<dyn MemoryPool> = match jobs
        .as_ref()
        .and_then(|jobs| jobs.job(&token).ok())
        .and_then(|share| share.pool.clone())
    {
        Some(pool) => pool,
        None => Arc::new(GreedyMemoryPool::new(
            (tidegate_policy::DEFAULT_JOB_MEMORY_MIB as usize) << 20,
        )),
    };
    datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(pool)
        .with_object_store_registry(Arc::new(Stores { jobs }))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
}

/// A random token naming one job on the cluster.
fn token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("no randomness for a cluster job".into()))?;
    Ok(hex::encode(bytes))
}

/// The largest encoded plan a job sends to the cluster.
const MAX_PLAN_BYTES: usize = 1 << 20;

/// A Ballista cluster the coordinator sends jobs to, and the registry its executors resolve
/// jobs' references in.
#[derive(Debug, Clone)]
pub struct Cluster {
    scheduler: SocketAddr,
    registry: Arc<Registry>,
    /// The cluster's secret: its members' bearer value, certificates and shuffle keys derive
    /// from it.
    secret: Arc<shuffle::Secret>,
    /// This member's TLS settings.
    tls: Arc<tls::Tls>,
    /// Bytes the executors wrote as stages' output (before sealing), since the cluster started.
    shuffled: Arc<std::sync::atomic::AtomicU64>,
    /// Each executor's Flight service and poll loop.
    executors: Arc<Mutex<Vec<Vec<tokio::task::AbortHandle>>>>,
    /// The executors' work directories (the in-process cluster's), removed when the last
    /// handle goes.
    _work: Arc<WorkDirs>,
    /// The platform's job this handle runs ([`Cluster::for_job`]).
    job: Option<String>,
}

#[derive(Debug)]
struct WorkDirs(Vec<PathBuf>);

impl Drop for WorkDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Cluster {
    /// A scheduler and `executors` executors in this process, on loopback, their work
    /// directories under `work` (created, and removed when the cluster is dropped). The
    /// executors resolve what the coordinator admitted.
    pub async fn standalone(executors: usize, work: &Path) -> Result<Cluster> {
        Self::in_process(executors, work, Vec::new()).await
    }

    /// [`Cluster::standalone`], with one executor per source in `jobs`, each sharing nothing
    /// with the coordinator or the others but the cluster's secret: each looks jobs up in its
    /// source (the platform's metadata, read-only), with a registry and meters of its own, as
    /// an executor of another process does.
    pub async fn standalone_reading(work: &Path, jobs: Vec<Arc<dyn JobSource>>) -> Result<Cluster> {
        Self::in_process(jobs.len(), work, jobs).await
    }

    async fn in_process(
        executors: usize,
        work: &Path,
        sources: Vec<Arc<dyn JobSource>>,
    ) -> Result<Cluster> {
        let secret = Arc::new(shuffle::Secret::random());
        let tls = Arc::new(tls::Tls::of(&secret)?);
        let scheduler =
            start_scheduler("127.0.0.1:0", Arc::clone(&secret), Arc::clone(&tls)).await?;
        let cluster = Self::joined(scheduler, secret, tls);
        let mut running = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..executors {
            // Each executor's registry: the coordinator's own, or one of its own that looks
            // jobs up.
            let registry = match sources.get(i) {
                None => Arc::clone(&cluster.registry),
                Some(source) => executor::registry(
                    Arc::clone(source),
                    (DEFAULT_EXECUTOR_MEMORY_MIB as usize) << 20,
                ),
            };
            let dir = work.join(format!("executor-{i}"));
            dirs.push(dir.clone());
            running.push(
                executor::start(
                    &executor::Place {
                        scheduler: &scheduler.to_string(),
                        listen: "127.0.0.1:0",
                        advertise: None,
                        work: &dir,
                    },
                    Arc::clone(&registry),
                    Arc::clone(&cluster.secret),
                    Arc::clone(&cluster.tls),
                    Arc::clone(&cluster.shuffled),
                )
                .await?
                .1,
            );
        }
        Ok(Cluster {
            executors: Arc::new(Mutex::new(running)),
            _work: Arc::new(WorkDirs(dirs)),
            ..cluster
        })
    }

    /// A coordinator's handle on the cluster whose scheduler is at `scheduler` (`host:port`),
    /// whose secret is in the file at `secret`: jobs' inputs run on its executors (started by
    /// [`run_executor`], each reading the platform's metadata).
    pub async fn connect(scheduler: &str, secret: &Path) -> Result<Cluster> {
        let secret = Arc::new(shuffle::Secret::from_file(secret, false)?);
        let address = tokio::net::lookup_host(scheduler)
            .await
            .map_err(|e| Error::BadInput(format!("the scheduler's address {scheduler}: {e}")))?
            .next()
            .ok_or_else(|| {
                Error::BadInput(format!("the scheduler's address {scheduler} names no host"))
            })?;
        let tls = Arc::new(tls::Tls::of(&secret)?);
        executor::scheduler_client(&address.to_string(), &secret, &tls).await?;
        Ok(Self::joined(address, secret, tls))
    }

    /// A handle on the scheduler at `scheduler` for a member holding `secret`, with no
    /// executor of its own.
    fn joined(scheduler: SocketAddr, secret: Arc<shuffle::Secret>, tls: Arc<tls::Tls>) -> Cluster {
        let registry = Arc::new(Registry::default());
        let _ = registry.canceller.set(Canceller {
            scheduler,
            secret: Arc::clone(&secret),
            tls: Arc::clone(&tls),
            runtime: tokio::runtime::Handle::current(),
        });
        Cluster {
            scheduler,
            registry,
            secret,
            tls,
            shuffled: Arc::default(),
            executors: Arc::default(),
            _work: Arc::new(WorkDirs(Vec::new())),
            job: None,
        }
    }

    /// This cluster, for the platform's job `id`: the job's token names it, so that an
    /// executor of another process can look it up.
    pub fn for_job(&self, id: &str) -> Cluster {
        Cluster {
            job: Some(id.to_string()),
            ..self.clone()
        }
    }

    /// The CPU time, in milliseconds, the tasks of the platform's job `id` took on this
    /// process's executors (the in-process cluster's), taken once the job has ended.
    pub(crate) fn take_cpu_ms(&self, id: &str) -> u64 {
        let mut spent = self
            .registry
            .spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tokens: Vec<String> = spent
            .keys()
            .filter(|t| job_of(t).as_deref() == Some(id))
            .cloned()
            .collect();
        let ns: u64 = tokens.iter().filter_map(|t| spent.remove(t)).sum();
        ns / 1_000_000
    }

    /// A new token for a job run through this handle.
    pub(crate) fn new_token(&self) -> Result<String> {
        job_token(self.job.as_deref())
    }

    /// Stops executor `i` as a crash would: its Flight service stops serving and its poll loop
    /// ends (what it was running never reports back). For fault tests.
    pub fn stop_executor(&self, i: usize) {
        if let Some(handles) = self
            .executors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
        {
            for h in handles {
                h.abort();
            }
        }
    }

    /// The bytes the executors have written as stages' output (Arrow IPC before sealing; what
    /// the shuffle moves), since the cluster started.
    pub fn shuffle_bytes(&self) -> u64 {
        self.shuffled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `plan` to run on the cluster for the job named `token` (a random token, unique to the
    /// job), with its `functions` (every scalar function it may call that is not DataFusion's,
    /// with the module of a guest's) and its sealed `stores` by address.
    pub(crate) fn distribute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        token: String,
        functions: Vec<(Option<String>, Arc<ScalarUDF>)>,
        stores: Vec<(String, Arc<dyn ObjectStore>)>,
        pool: Arc<dyn MemoryPool>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let share = Arc::new(JobShare {
            functions: functions
                .into_iter()
                .map(|(m, f)| (f.name().to_string(), (m, f)))
                .collect(),
            stores: stores.into_iter().collect(),
            // The job's own pool (executors in this process hold what they take from it).
            pool: Some(pool),
            ..JobShare::default()
        });
        // A plan the scheduler and executors decode whole: bounded, so that no job's plan
        // makes a poll's answer (other jobs' tasks with it) too large to decode.
        let codec = Codec::new(Side::Coordinator(Arc::clone(&share), token.clone()));
        let mut encoded = Vec::new();
        {
            use datafusion_proto::physical_plan::AsExecutionPlan;
            PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), &codec)
                .and_then(|node| node.try_encode(&mut encoded))
                .map_err(|e| Error::Internal(format!("a plan for the cluster: {e}")))?;
        }
        if encoded.len() > MAX_PLAN_BYTES {
            return Err(Error::BadInput(
                "the query's plan is too large to send to the cluster (over 1 MiB)".into(),
            ));
        }
        self.registry
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), Arc::clone(&share));
        let admission = Arc::new(Admission {
            registry: Arc::clone(&self.registry),
            token: token.clone(),
        });
        Ok(Arc::new(ClusterExec {
            scheduler: self.scheduler.to_string(),
            bearer: self.secret.bearer(),
            tls: Arc::clone(&self.tls),
            properties: Arc::new(single_partition(plan.schema())),
            plan,
            codec: Arc::new(codec),
            token,
            _admission: admission,
        }))
    }
}

/// Starts Ballista's scheduler on `listen` (`host:port`) in this process, as
/// `tidegate scheduler` does, for the cluster whose secret is in the file at `secret` (made
/// there, mode 0600, when there is none yet): members (executors and coordinators) are those
/// that hold the same file. Runs until the runtime stops; answers where it listens.
pub async fn run_scheduler(listen: &str, secret: &Path) -> Result<SocketAddr> {
    let secret = Arc::new(shuffle::Secret::from_file(secret, true)?);
    let tls = Arc::new(tls::Tls::of(&secret)?);
    start_scheduler(listen, secret, tls).await
}

/// How `tidegate executor` joins a cluster.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: String,
    /// Where the executor's Flight service listens (`host:port`; port 0 for any).
    pub listen: String,
    /// The host other members reach that service by (the listening address's when not set).
    pub advertise: Option<String>,
    /// Its work directory: sealed shuffle files only (made 0700).
    pub work: PathBuf,
    /// The file holding the cluster's secret.
    pub secret: PathBuf,
    /// The most engine memory all the jobs' tasks on it hold together, in bytes.
    pub memory_bytes: usize,
}

/// The engine memory an executor's tasks hold together by default, in MiB.
pub const DEFAULT_EXECUTOR_MEMORY_MIB: u64 = 8192;

/// Starts an executor in this process, as `tidegate executor` does: it joins the scheduler,
/// and runs the tasks of jobs that `jobs` says run, with what `jobs` says they may use. Runs
/// until the runtime stops; answers where its Flight service listens.
pub async fn run_executor(
    options: &ExecutorOptions,
    jobs: Arc<dyn JobSource>,
) -> Result<SocketAddr> {
    let secret = Arc::new(shuffle::Secret::from_file(&options.secret, false)?);
    let tls = Arc::new(tls::Tls::of(&secret)?);
    let (address, _) = executor::start(
        &executor::Place {
            scheduler: &options.scheduler,
            listen: &options.listen,
            advertise: options.advertise.as_deref(),
            work: &options.work,
        },
        executor::registry(jobs, options.memory_bytes),
        secret,
        tls,
        Arc::default(),
    )
    .await?;
    Ok(address)
}

/// Ballista's scheduler on `listen` (as Ballista's own standalone one, pulling-staged), behind
/// [`shuffle::Members`]: a call that does not present the cluster's bearer value is refused
/// before the scheduler sees it.
async fn start_scheduler(
    listen: &str,
    secret: Arc<shuffle::Secret>,
    tls: Arc<tls::Tls>,
) -> Result<SocketAddr> {
    use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
    use ballista_scheduler::scheduler_server::SchedulerServer;
    let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("cluster scheduler: {e}"));
    let codec = BallistaCodec::new(
        Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
        Arc::new(Codec::new(Side::Scheduler)),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::BadInput(format!("the scheduler cannot listen on {listen}: {e}")))?;
    let address = listener.local_addr().map_err(|e| fail(&e))?;
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_memory(
        address.to_string(),
        Arc::new(|config| {
            let state = ballista_core::utils::default_session_builder(config)?;
            Ok(
                datafusion::execution::SessionStateBuilder::new_from_existing(state)
                    .with_runtime_env(runtime(None, &SessionConfig::new())?)
                    .build(),
            )
        }),
        {
            let tls = Arc::clone(&tls);
            Arc::new(move || member_config(&tls))
        },
    );
    let mut server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
        address.to_string(),
        cluster,
        codec,
        Arc::new(
            ballista_scheduler::config::SchedulerConfig::default()
                .with_scheduler_policy(ballista_core::config::TaskSchedulingPolicy::PullStaged),
        ),
        ballista_scheduler::metrics::default_metrics_collector().map_err(|e| fail(&e))?,
    );
    server.init().await.map_err(|e| fail(&e))?;
    let size = config().ballista_grpc_client_max_message_size();
    let service = tonic::service::interceptor::InterceptedService::new(
        SchedulerGrpcServer::new(server)
            .max_decoding_message_size(size)
            .max_encoding_message_size(size),
        shuffle::Members(secret),
    );
    // Only a client holding a certificate of the cluster completes the handshake.
    let mut server = ballista_core::utils::create_grpc_server(
        &ballista_core::utils::GrpcServerConfig::default(),
    )
    .tls_config(tls.server.clone())
    .map_err(|e| fail(&e))?;
    tokio::spawn(
        server
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(address)
}

mod executor {
    //! One executor: of the in-process cluster, or a process of its own.
    use super::*;
    use ballista_core::serde::protobuf::ExecutorRegistration;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use ballista_executor::executor::Executor;

    /// An executor's registry of jobs looked up in `source`; a thread of its own ends, every
    /// half second, the jobs the source no longer runs (it stops when the registry goes).
    pub(super) fn registry(source: Arc<dyn JobSource>, memory_bytes: usize) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            source: Some(source),
            memory: Some(Arc::new(GreedyMemoryPool::new(memory_bytes))),
            ..Registry::default()
        });
        let watched = Arc::downgrade(&registry);
        let _ = std::thread::Builder::new()
            .name("tidegate-cluster-jobs".into())
            .spawn(move || {
                while let Some(registry) = watched.upgrade() {
                    registry.forget_ended();
                    drop(registry);
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            });
        registry
    }

    /// A client of the scheduler at `scheduler` (`host:port`) presenting the cluster's bearer
    /// value, for plans as large as the scheduler sends (tonic's default would refuse a whole
    /// poll's answer over 4 MiB, other jobs' tasks with it); refused when the scheduler does
    /// not let it in.
    pub(super) async fn scheduler_client(
        scheduler: &str,
        secret: &shuffle::Secret,
        tls: &tls::Tls,
    ) -> Result<
        SchedulerGrpcClient<
            tonic::service::interceptor::InterceptedService<
                tonic::transport::Channel,
                shuffle::Member,
            >,
        >,
    > {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{scheduler}"))
            .and_then(|e| e.tls_config(tls.client.clone()))
            .map(|e| e.connect_timeout(std::time::Duration::from_secs(10)))
            .map_err(|e| Error::BadInput(format!("the scheduler's address {scheduler}: {e}")))?
            .connect()
            .await
            .map_err(|e| {
                Error::BadInput(format!(
                    "no scheduler of this cluster answers at {scheduler} (nothing listens there, or it holds another cluster's secret): {e}"
                ))
            })?;
        let size = config().ballista_grpc_client_max_message_size();
        let mut client =
            SchedulerGrpcClient::with_interceptor(channel, shuffle::Member::of(secret))
                .max_decoding_message_size(size)
                .max_encoding_message_size(size);
        // A member is let in (and told there is no such job): the scheduler is there, and of
        // this cluster.
        let hello = ballista_core::serde::protobuf::GetJobStatusParams {
            job_id: "tidegate-hello".into(),
        };
        if let Err(e) = client.get_job_status(hello).await
            && e.code() == tonic::Code::Unauthenticated
        {
            return Err(Error::Refused(format!(
                "the scheduler at {scheduler} does not take this cluster's secret"
            )));
        }
        Ok(client)
    }

    /// Where an executor runs.
    pub(super) struct Place<'a> {
        /// The scheduler it polls, `host:port`.
        pub(super) scheduler: &'a str,
        /// Where its Flight service listens.
        pub(super) listen: &'a str,
        /// The host others reach that service by (the host listened on when `None`).
        pub(super) advertise: Option<&'a str>,
        /// Its work directory (made 0700).
        pub(super) work: &'a Path,
    }

    /// Starts an executor where `place` says. Answers the Flight service's address and what
    /// stops it and the poll loop.
    pub(super) async fn start(
        place: &Place<'_>,
        registry: Arc<Registry>,
        secret: Arc<shuffle::Secret>,
        tls: Arc<tls::Tls>,
        written: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(SocketAddr, Vec<tokio::task::AbortHandle>)> {
        let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("cluster executor: {e}"));
        let Place {
            scheduler,
            listen,
            advertise,
            work,
        } = *place;
        // Only this user lists or reads what the executor writes.
        shuffle::private_dirs(work)?;
        std::fs::set_permissions(work, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::BadInput(format!("the executor cannot listen on {listen}: {e}")))?;
        let address = listener.local_addr().map_err(|e| fail(&e))?;
        let host = match advertise {
            Some(host) => host.to_string(),
            None if address.ip().is_unspecified() => {
                return Err(Error::BadInput(format!(
                    "the executor listens on {address}: name the host other members reach it by (--advertise)"
                )));
            }
            None => address.ip().to_string(),
        };
        let work = work
            .to_str()
            .ok_or_else(|| Error::Internal("a work directory's path is not UTF-8".into()))?
            .to_string();
        let metadata = ExecutorRegistration {
            id: token()?,
            host: Some(host),
            port: u32::from(address.port()),
            grpc_port: 0,
            specification: Some(
                ballista_core::serde::scheduler::ExecutorSpecification::default()
                    .with_vcores(2)
                    .into(),
            ),
            os_info: Some(
                ballista_core::serde::scheduler::ExecutorOperatingSystemSpecification::default()
                    .into(),
            ),
            ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
        };
        // A runtime of its own per task, whose stores resolve the job's sealed stores.
        let jobs = Arc::clone(&registry);
        let runtime: ballista_core::RuntimeProducer =
            Arc::new(move |config| super::runtime(Some(Arc::clone(&jobs)), config));
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .build();
        // Every stage's output is sealed, and served opened by this executor's Flight service.
        let executor = Arc::new(Executor::new(
            metadata,
            &work,
            runtime,
            {
                let tls = Arc::clone(&tls);
                Arc::new(move || member_config(&tls))
            },
            Arc::new((&state).into()),
            Arc::new(ballista_executor::metrics::LoggingMetricsCollector::default()),
            2,
            Arc::new(shuffle::SealedEngine {
                secret: Arc::clone(&secret),
                written,
                jobs: Arc::clone(&registry),
            }),
        ));
        let flight =
            arrow_flight::flight_service_server::FlightServiceServer::new(shuffle::SealedFlight {
                work: PathBuf::from(&work),
                secret: Arc::clone(&secret),
                jobs: Arc::clone(&registry),
            });
        // Only a member of the cluster (holding one of its certificates) fetches a file.
        let mut server = ballista_core::utils::create_grpc_server(
            &ballista_core::utils::GrpcServerConfig::default(),
        )
        .tls_config(tls.server.clone())
        .map_err(|e| fail(&e))?;
        let serving = tokio::spawn(
            server
                .add_service(flight)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = scheduler_client(scheduler, &secret, &tls).await?;
        let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
            Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
            Arc::new(Codec::new(Side::Executor(registry))),
        );
        let polling = tokio::spawn(ballista_executor::execution_loop::poll_loop(
            client,
            executor,
            codec,
            None,
            None,
            ballista_executor::health::ExecutorHealth::new(),
        ));
        Ok((
            address,
            vec![serving.abort_handle(), polling.abort_handle()],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry admitting job `j` with one function `f`, from module `aaa`.
    fn admitted() -> (Arc<Registry>, Admission, Arc<ScalarUDF>) {
        let registry = Arc::new(Registry::default());
        let f = Arc::new(datafusion::functions::math::abs().as_ref().clone());
        let share = JobShare {
            functions: HashMap::from([(
                "abs".to_string(),
                (Some("aaa".to_string()), Arc::clone(&f)),
            )]),
            ..JobShare::default()
        };
        registry
            .jobs
            .lock()
            .unwrap()
            .insert("j".into(), Arc::new(share));
        let admission = Admission {
            registry: Arc::clone(&registry),
            token: "j".into(),
        };
        (registry, admission, f)
    }

    fn reference(job: &str, name: &str, module: Option<&str>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(
            &Payload::Function(FunctionRef {
                job: job.into(),
                name: name.into(),
                module: module.map(str::to_string),
                ret: "Float64".into(),
            }),
            &mut buf,
        )
        .unwrap();
        buf
    }

    #[test]
    fn an_executor_resolves_only_the_functions_and_the_module_its_job_was_given() {
        let (registry, admission, f) = admitted();
        let executor = Codec::new(Side::Executor(Arc::clone(&registry)));
        let resolved = executor
            .try_decode_udf("abs", &reference("j", "abs", Some("aaa")))
            .unwrap();
        assert!(Arc::ptr_eq(&resolved, &f), "the job's own function");
        let refused =
            |name: &str, buf: Vec<u8>| executor.try_decode_udf(name, &buf).unwrap_err().to_string();
        assert!(
            refused("abs", reference("j", "abs", Some("bbb"))).contains("not approved"),
            "another module's hash"
        );
        assert!(
            refused("abs", reference("j", "abs", None)).contains("not approved"),
            "no module where the job's function has one"
        );
        assert!(
            refused("sqrt", reference("j", "sqrt", Some("aaa"))).contains("not one of the job's"),
            "a function the job was not given"
        );
        assert!(
            refused("abs", reference("k", "abs", Some("aaa"))).contains("does not run"),
            "a job the cluster does not run"
        );
        assert!(
            refused("sqrt", reference("j", "abs", Some("aaa"))).contains("another name"),
            "a reference under another name"
        );
        let mut damaged = reference("j", "abs", Some("aaa"));
        damaged.truncate(damaged.len() - 3);
        assert!(refused("abs", damaged).contains("damaged"));
        drop(admission);
        assert!(
            refused("abs", reference("j", "abs", Some("aaa"))).contains("does not run"),
            "a job that ended"
        );
    }

    #[test]
    fn the_scheduler_passes_a_job_function_on_as_it_came_and_cannot_call_it() {
        let scheduler = Codec::new(Side::Scheduler);
        let came = reference("j", "abs", Some("aaa"));
        let planned = scheduler.try_decode_udf("abs", &came).unwrap();
        assert_eq!(planned.return_type(&[]).unwrap(), DataType::Float64);
        let mut again = Vec::new();
        scheduler.try_encode_udf(&planned, &mut again).unwrap();
        assert_eq!(again, came);
        let args = ScalarFunctionArgs {
            args: vec![],
            arg_fields: vec![],
            number_rows: 1,
            return_field: Arc::new(arrow::datatypes::Field::new("r", DataType::Float64, true)),
            config_options: Arc::new(Default::default()),
        };
        assert!(planned.invoke_with_args(args).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scheduler_lets_in_only_members_of_its_cluster() {
        use ballista_core::serde::protobuf::GetJobStatusParams;
        use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
        use tonic::Code;
        let work = tempfile::tempdir().unwrap();
        let cluster = Cluster::standalone(1, work.path()).await.unwrap();
        let at = cluster.scheduler.to_string();
        let ask = || GetJobStatusParams {
            job_id: "aaaaaaa".into(),
        };

        // A caller without TLS (a process on this machine that found the port).
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{at}"))
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = plain {
            let mut stranger = SchedulerGrpcClient::new(channel);
            assert!(stranger.get_job_status(ask()).await.is_err());
        }

        // A member of another cluster: its certificate is not of this cluster's authority,
        // nor this scheduler's of its own.
        let other = shuffle::Secret::random();
        let other_tls = tls::Tls::of(&other).unwrap();
        assert!(
            executor::scheduler_client(&at, &other, &other_tls)
                .await
                .is_err()
        );

        // A certificate of this cluster without the member's header, and a value that is
        // not hex: refused by the interceptor.
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{at}"))
            .unwrap()
            .tls_config(cluster.tls.client.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut headless = SchedulerGrpcClient::new(channel.clone());
        let refused = headless.get_job_status(ask()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        let garbled = shuffle::Member("not-hex".parse().unwrap());
        let mut garbled = SchedulerGrpcClient::with_interceptor(channel.clone(), garbled);
        let refused = garbled.get_job_status(ask()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);

        // A member is let in (and told there is no such job).
        let mut member =
            SchedulerGrpcClient::with_interceptor(channel, shuffle::Member::of(&cluster.secret));
        if let Err(e) = member.get_job_status(ask()).await {
            assert_ne!(e.code(), Code::Unauthenticated, "{e}");
        }
    }

    #[test]
    fn a_jobs_shuffle_key_is_drawn_at_random_and_forgotten_when_the_job_ends() {
        let (registry, admission, _) = admitted();
        assert!(registry.job("j").unwrap().runs_as("B1"));
        let key = registry.shuffle_key("B1");
        let sealed = key.seal_object("c", b"rows");
        let again = registry.existing_shuffle_key("B1").unwrap();
        assert_eq!(again.open_object("c", &sealed).unwrap(), b"rows");
        assert!(
            registry.existing_shuffle_key("B2").is_none(),
            "another job's"
        );
        drop(admission);
        // Its files never open again: the key is gone from the only place it was.
        assert!(registry.existing_shuffle_key("B1").is_none());
    }

    /// A source whose other executors recorded `elsewhere` fuel, and what this one recorded.
    struct Others {
        elsewhere: std::sync::atomic::AtomicU64,
        recorded: Mutex<Vec<(crate::ResourceUse, Option<String>)>>,
    }

    impl JobSource for Others {
        fn running(&self, _job: &str) -> Result<bool> {
            Ok(true)
        }
        fn resolve(&self, _job: &str) -> Result<ResolvedJob> {
            Err(Error::Refused("not here".into()))
        }
        fn record(
            &self,
            _job: &str,
            used: &crate::ResourceUse,
            limit: Option<String>,
        ) -> Result<()> {
            self.recorded.lock().unwrap().push((used.clone(), limit));
            Ok(())
        }
        fn used_elsewhere(&self, _job: &str) -> Result<crate::ResourceUse> {
            Ok(crate::ResourceUse {
                fuel: self.elsewhere.load(std::sync::atomic::Ordering::SeqCst),
                ..Default::default()
            })
        }
    }

    #[test]
    fn what_the_other_executors_burnt_is_taken_from_the_fuel_a_jobs_guests_may_burn_here() {
        use crate::sandbox::{GuestLimits, JobMeter};
        let others = Arc::new(Others {
            elsewhere: std::sync::atomic::AtomicU64::new(400_000_000),
            recorded: Mutex::default(),
        });
        let registry = Registry {
            source: Some(Arc::clone(&others) as Arc<dyn JobSource>),
            ..Registry::default()
        };
        let meter = Arc::new(JobMeter::new(GuestLimits {
            fuel: 1_000_000_000,
            ..GuestLimits::default()
        }));
        let share = JobShare {
            remote: Some((
                "job_1".into(),
                Arc::clone(&meter),
                std::time::Instant::now(),
            )),
            ..JobShare::default()
        };
        // Below the job's fuel together: the guests here go on, with less to burn.
        registry.sync_usage(&share, true);
        assert!(meter.check().is_ok());
        assert_eq!(meter.fuel_budget(), 600_000_000);
        // This executor's record is what was burnt here (nothing yet), without a limit.
        let recorded = others.recorded.lock().unwrap().clone();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].0.fuel, 0);
        assert!(recorded[0].1.is_none());
        // Nothing changed here: the half-second pass does not write again.
        registry.sync_usage(&share, false);
        assert_eq!(others.recorded.lock().unwrap().len(), 1);
        // The others burnt the job's fuel between them: the guests here stop, and the limit
        // is recorded for the platform.
        others
            .elsewhere
            .store(1_000_000_000, std::sync::atomic::Ordering::SeqCst);
        registry.sync_usage(&share, false);
        let stopped = meter.check().unwrap_err().to_string();
        assert!(stopped.contains("fuel budget"), "{stopped}");
        let recorded = others.recorded.lock().unwrap().clone();
        assert!(
            recorded
                .last()
                .and_then(|r| r.1.as_deref())
                .is_some_and(|l| l.contains("fuel budget")),
            "{recorded:?}"
        );
    }

    #[test]
    fn a_tasks_engine_memory_is_its_jobs_own_pool_shared_with_its_other_tasks() {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let registry = Arc::new(Registry::default());
        let executor = Arc::new(GreedyMemoryPool::new(96 << 20));
        for job in ["j", "k"] {
            let share = JobShare {
                pool: Some(job_pool(64 << 20, Some(Arc::clone(&executor)))),
                ..JobShare::default()
            };
            registry
                .jobs
                .lock()
                .unwrap()
                .insert(job.into(), Arc::new(share));
        }
        let task = |job: &str| {
            let config = SessionConfig::new_with_ballista().with_ballista_job_name(job);
            runtime(Some(Arc::clone(&registry)), &config).unwrap()
        };
        let (one, two) = (task("j"), task("j"));
        assert!(matches!(
            one.memory_pool.memory_limit(),
            MemoryLimit::Finite(n) if n == 64 << 20
        ));
        // What one task holds, the other cannot.
        let held = MemoryConsumer::new("one").register(&one.memory_pool);
        held.try_grow(40 << 20).unwrap();
        let more = MemoryConsumer::new("two").register(&two.memory_pool);
        assert!(more.try_grow(40 << 20).is_err(), "past the job's budget");
        // Another job's task has a budget of its own, within what the executor holds for all.
        let other = task("k");
        let theirs = MemoryConsumer::new("other").register(&other.memory_pool);
        theirs.try_grow(40 << 20).unwrap();
        assert!(
            theirs.try_grow(20 << 20).is_err(),
            "past the executor's memory"
        );
        drop(held);
        theirs.try_grow(20 << 20).unwrap();
        // A task of a job not run here has the policy's default (it is refused at its start).
        let stranger = task("x");
        assert!(matches!(
            stranger.memory_pool.memory_limit(),
            MemoryLimit::Finite(n) if n == (tidegate_policy::DEFAULT_JOB_MEMORY_MIB as usize) << 20
        ));
    }

    #[test]
    fn a_job_runs_under_the_first_ballista_job_that_runs_a_task_of_it_and_no_other() {
        let (registry, _admission, _) = admitted();
        let share = registry.job("j").unwrap();
        assert!(share.runs_as("AAAAAAA"));
        assert!(share.runs_as("AAAAAAA"));
        assert!(!share.runs_as("BBBBBBB"));
    }
}
