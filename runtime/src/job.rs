//! Running a job: a SELECT over the scenario's granted tables in a confined DataFusion
//! session, with the runtime's own count of distinct subjects added to every aggregate.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use tidegate_policy::{ContributionBounds, DominanceRule, Level, QueryShape};

use crate::error::{Error, Result};
use crate::hidden::{self, is_reserved};
use crate::sandbox::Functions;
use crate::tables::{TARGET_PARTITIONS, TableInput, register};

/// Limits of the query engine for one job.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    /// The engine's memory budget (the scenario's quota): the gate's per-subject work over a
    /// larger input is written sealed to `spill_dir` and aggregated a group of subjects at a
    /// time rather than failing.
    pub memory_bytes: usize,
    /// Where the gate's sealed spill files go (a directory of their own per job, removed when
    /// the job ends); the system's temporary directory when not set.
    pub spill_dir: Option<std::path::PathBuf>,
    pub wall_time: Duration,
    pub output_rows: usize,
    /// The contribution bounds of a scenario that uses differential privacy: the runtime
    /// computes every count and sum again with each subject's part bounded (R-GATE 7).
    pub privacy: Option<ContributionBounds>,
    /// The highest level of the data the job reads: above L1 only a release the gate can
    /// check runs (R-GATE 2).
    pub level: Level,
    /// The dominance rules of the scenario (R-GATE 3).
    pub dominance: DominanceRule,
    /// The scenario's k: a count or sum of a cell over fewer subjects (but some) fails it.
    pub threshold: u64,
    /// Names the subjects of each cell for the gate's memory (R-GATE 6): set for exact
    /// releases, so the result carries each row's sets of subjects.
    pub subjects: Option<crate::crypto::SubjectKey>,
    /// Where the job's input runs: on this process's engine when `None`, else on the
    /// cluster (its scan, joins, filters and functions; the aggregation and the gate stay
    /// here).
    pub cluster: Option<crate::cluster::Cluster>,
    /// The engine computes every subject's part, not the tally (for the tests that compare
    /// the two).
    #[cfg(test)]
    pub(crate) engine_parts: bool,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            memory_bytes: (tidegate_policy::DEFAULT_JOB_MEMORY_MIB as usize) << 20,
            spill_dir: None,
            wall_time: Duration::from_secs(300),
            output_rows: 1_000_000,
            privacy: None,
            level: Level::L1,
            dominance: DominanceRule::default(),
            threshold: 1,
            subjects: None,
            cluster: None,
            #[cfg(test)]
            engine_parts: false,
        }
    }
}

/// What a job produced.
#[derive(Debug)]
pub struct JobOutput {
    /// The result, with the hidden subject columns when the query is an aggregate.
    pub batches: Vec<RecordBatch>,
    pub shape: QueryShape,
    /// The logical plan of the scientist's query, as the reviewer sees it.
    pub plan: String,
    /// The most memory the query engine's operators reserved at once.
    pub peak_engine_memory_bytes: u64,
    /// Bytes of the gate's per-subject rows written sealed to disk (0 when they fit the
    /// budget).
    pub spilled_bytes: u64,
    /// Groups (or buckets) of subjects with rows whose parts the tally computed itself.
    #[cfg(test)]
    pub(crate) tally_groups: u64,
    /// Per table with subjects (by index among the job's tables), each result row's sets of
    /// that table's rows and subjects (keyed hashes), when the limits named a subject key and
    /// the result is an aggregate over subjects.
    pub subject_sets: Option<Vec<(usize, tidegate_policy::DatasetRows)>>,
}

/// Plans, checks and runs `sql` over `tables` with `udfs` registered.
pub async fn run_query(
    sql: &str,
    tables: &[TableInput],
    udfs: impl Into<Functions>,
    limits: EngineLimits,
) -> Result<JobOutput> {
    run_query_until(sql, tables, udfs, limits, std::future::pending()).await
}

/// [`run_query`], stopped with a refusal when `cancel` completes first.
pub async fn run_query_until(
    sql: &str,
    tables: &[TableInput],
    udfs: impl Into<Functions>,
    limits: EngineLimits,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<JobOutput> {
    let mut config = SessionConfig::new()
        .with_target_partitions(TARGET_PARTITIONS)
        .with_information_schema(false);
    if limits.cluster.is_some() {
        // A plan for the cluster carries no dynamic filter: the scheduler re-plans a stage's
        // joins once its inputs are known, and a join holding one may not be re-planned (the
        // job would wait on a stage that never finishes).
        crate::cluster::without_dynamic_filters(&mut config);
    }
    // No spilling: nothing of a job reaches the disk in plaintext.
    let pool = Arc::new(PeakPool::new(limits.memory_bytes));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::clone(&pool) as Arc<dyn MemoryPool>)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(|e| Error::Internal(format!("query engine: {e}")))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // The job's name in its stores' addresses (on a cluster, its token there).
    let job = match &limits.cluster {
        Some(c) => c.new_token()?,
        None => hex::encode(crate::crypto::random_bytes::<16>()),
    };
    for (i, t) in tables.iter().enumerate() {
        let table = register(&ctx, &job, i, t)
            .await
            .map_err(|e| Error::Internal(format!("table {}: {e}", t.name)))?;
        ctx.register_table(t.name.as_str(), table)
            .map_err(|e| Error::Internal(format!("table {}: {e}", t.name)))?;
    }
    let udfs = udfs.into();
    // A function never replaces another of the same name: DataFusion's, the platform's or
    // another module's. (Uploads refuse such names already; this holds for any caller.)
    let taken = |ctx: &SessionContext, name: &str| {
        // Read in place: `ctx.state()` would copy the whole session state per function.
        let state = ctx.state_ref();
        let state = state.read();
        let name = name.to_ascii_lowercase();
        crate::sandbox::SQL_FORMS.contains(&name.as_str())
            || state.scalar_functions().contains_key(&name)
            || state.aggregate_functions().contains_key(&name)
            || state.window_functions().contains_key(&name)
            || state.table_functions().contains_key(&name)
    };
    let shadowing = |name: &str| {
        Error::Refused(format!(
            "function `{name}` would replace a function of the same name; a job's functions never shadow one another or a built-in"
        ))
    };
    // The job's own scalar functions, which a cluster's executors may resolve (with the
    // module a guest's comes from).
    let job_functions: Vec<_> = udfs
        .scalars
        .iter()
        .map(|u| (crate::sandbox::guest_scalar_module(u), Arc::new(u.clone())))
        .collect();
    for u in udfs.scalars {
        if taken(&ctx, u.name()) {
            return Err(shadowing(u.name()));
        }
        ctx.register_udf(u);
    }
    for u in udfs.aggregates {
        if taken(&ctx, u.name()) {
            return Err(shadowing(u.name()));
        }
        ctx.register_udaf(u);
    }
    for t in &udfs.tables {
        if taken(&ctx, t.name()) {
            return Err(shadowing(t.name()));
        }
    }
    let meters = udfs.meters.clone();
    if !udfs.tables.is_empty() {
        // A guest table function reads the job's tables as the job sees them: granted
        // columns only.
        let mut inputs = HashMap::new();
        for t in tables {
            let provider = ctx
                .table_provider(t.name.as_str())
                .await
                .map_err(|e| Error::Internal(format!("table {}: {e}", t.name)))?;
            inputs.insert(t.name.clone(), provider);
        }
        let inputs = Arc::new(inputs);
        for t in udfs.tables {
            let name = t.name().to_string();
            ctx.register_udtf(&name, t.bind(Arc::clone(&inputs)));
        }
    }
    let statement = only_a_query(sql)?;
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(|e| map_error(e, Stage::Planning))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| Error::Refused(format!("only a query is allowed: {e}")))?;
    check_confinement(&plan)?;
    let plan_text = plan.display_indent().to_string();
    // Which granted columns each output column is computed from: masking follows them.
    let column_sources = crate::release::column_sources(&plan);
    let mut analysis = crate::release::analyze(
        plan,
        &crate::release::Context {
            tables,
            level: limits.level,
            privacy: limits.privacy,
        },
    )?;
    if analysis.contributions.is_some() {
        // The gate measures each row's values as the query computed them (one evaluation,
        // `crate::tee`); each scalar call also runs in an instance of its own, so that what a
        // guest computes for a row depends on its batch alone: no value of a row the query
        // filtered out, or of another function's call, reaches another cell through memory.
        for m in &meters {
            m.make_scalars_stateless();
        }
    }
    analysis.shape.column_sources = column_sources;
    let shape = analysis.shape.clone();
    // Everything is planned before anything runs: a planning error speaks of the query, never
    // of the data, and is shown as it is.
    let physical = |plan: LogicalPlan| {
        let ctx = &ctx;
        async move {
            ctx.execute_logical_plan(plan)
                .await
                .map_err(|e| map_error(e, Stage::Planning))?
                .create_physical_plan()
                .await
                .map_err(|e| map_error(e, Stage::Planning))
        }
    };
    // The job's input, on the cluster when there is one; an executor in this process takes
    // what its tasks hold from the job's own pool.
    let input = |plan: LogicalPlan| {
        let pool = Arc::clone(&pool) as Arc<dyn MemoryPool>;
        let physical = &physical;
        let functions = &job_functions;
        let cluster = &limits.cluster;
        async move {
            let plan = physical(plan).await?;
            match cluster {
                None => Ok(plan),
                Some(_)
                    if tables
                        .iter()
                        .any(|t| matches!(t.data, crate::tables::TableData::Memory(_))) =>
                {
                    // A table held in memory would travel inside the plan, in the clear.
                    Err(Error::Refused(
                        "a job on the cluster reads sealed tables only".into(),
                    ))
                }
                Some(c) => c.distribute(
                    plan,
                    job.clone(),
                    functions.clone(),
                    sealed_stores(&job, tables),
                    pool,
                ),
            }
        }
    };
    let task = ctx.task_ctx();
    let (main, contributions) = match &analysis.contributions {
        Some(c) => {
            // The aggregation is planned here too, over the input itself, so that it cannot
            // fail later for a reason of the query's.
            physical(c.over(c.input.clone())?).await?;
            // One scan for the query and the gate: the shared input runs once, and the
            // query's aggregate and the gate's per-subject rows each read every batch of it.
            let tee = crate::tee::Tee::new(input(c.shared.clone()).await?, Arc::clone(&task));
            let main = physical(reading(analysis.plan.clone(), tee.reader(QUERY))?).await?;
            let input = physical(reading(c.input.clone(), tee.reader(GATE))?).await?;
            (main, Some((c, input, tee)))
        }
        None => (input(analysis.plan.clone()).await?, None),
    };
    let spilled = AtomicU64::new(0);
    let tallied = AtomicU64::new(0);
    let run = async {
        let query = async {
            let batches = collect_bounded(
                Arc::clone(&main),
                Arc::clone(&task),
                &limits,
                Some(limits.output_rows),
            )
            .await;
            if let Some((_, _, tee)) = &contributions {
                // What the query's plan did not read is not kept for it.
                tee.release(QUERY);
            }
            batches
        };
        match &contributions {
            Some((plan, input, tee)) => {
                // The tally makes its own rows as they stream, wherever it computes every
                // part itself (under differential privacy it names each subject: the engine's
                // rows are kept for it).
                let native = match (engine_parts(&limits), limits.privacy) {
                    (false, None) => plan.native(&input.schema()),
                    _ => None,
                };
                let reservation = MemoryConsumer::new("the gate's per-subject rows")
                    .register(&(Arc::clone(&pool) as Arc<dyn MemoryPool>));
                let root = limits
                    .spill_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("tidegate-spill"));
                // The query and the gate's per-subject rows read the shared input together.
                let (batches, gathered) = match native {
                    Some(native) => {
                        let builder =
                            crate::release::Builder::new(native, limits.subjects, &input.schema())?;
                        // A lane for each of the engine's partitions, up to one per thread
                        // (more partitions share the lanes).
                        let partitions = input.properties().partitioning.partition_count();
                        let mut reservations = vec![reservation];
                        for _ in 1..partitions.clamp(1, TARGET_PARTITIONS) {
                            reservations.push(
                                MemoryConsumer::new("the gate's per-subject rows")
                                    .register(&(Arc::clone(&pool) as Arc<dyn MemoryPool>)),
                            );
                        }
                        let lanes = crate::release::RowSpill::lanes(
                            &root,
                            builder,
                            limits.memory_bytes,
                            reservations,
                        )?;
                        let (batches, lanes) =
                            tokio::try_join!(query, stream_lanes(&ctx, Arc::clone(input), lanes))?;
                        let rows = crate::release::RowSpill::join(lanes)?;
                        (batches, Gathered::Rows(Box::new(rows)))
                    }
                    None => {
                        let mut spill = crate::spill::SealedSpill::new(
                            &root,
                            input.schema(),
                            hidden::SUBJECT,
                            limits.memory_bytes,
                            reservation,
                        )?;
                        let (batches, ()) = tokio::try_join!(
                            query,
                            stream_contributions(&ctx, Arc::clone(input), |b| spill.push(b))
                        )?;
                        (batches, Gathered::Batches(Box::new(spill)))
                    }
                };
                if !tee.whole(GATE) {
                    return Err(Error::Internal(
                        "the gate did not read the job's whole input".into(),
                    ));
                }
                // Every subject's contributions stream into the gate's tally: only each
                // cell's facts are kept, whatever the number of subjects.
                let mut tally = crate::release::Tally::new(
                    &batches,
                    &analysis,
                    limits.dominance,
                    limits.threshold,
                    limits.privacy,
                    limits.subjects,
                )?;
                let outcome = match gathered {
                    Gathered::Rows(rows) => contribute_rows(*rows, &mut tally, &pool).await,
                    Gathered::Batches(spill) => {
                        contribute(&ctx, plan, *spill, &mut tally, &pool, &limits).await
                    }
                };
                let (written, groups) = outcome?;
                spilled.store(written, Ordering::Relaxed);
                tallied.store(groups, Ordering::Relaxed);
                tally.finish(batches).map(|f| (f.batches, f.subject_sets))
            }
            None => Ok((query.await?, None)),
        }
    };
    // The deadline is kept by a thread of its own, not by the job's runtime: its workers may
    // all be busy (in guest calls, instantiations, the engine's own operators) and never
    // turn to the runtime's timers. At the deadline every guest of the job traps within an
    // epoch tick, no new instance or call starts, and the job ends at once (its tasks are
    // dropped), without waiting for its work to finish.
    let deadline = Watchdog::start(limits.wall_time, meters.clone());
    let run = async {
        tokio::select! {
            r = run => r,
            () = cancel => {
                // The job's guests stop wherever they run (on a cluster's executors too).
                for m in &meters {
                    m.cancel();
                }
                Err(Error::Refused(crate::sandbox::CANCELLED.into()))
            }
            () = deadline.expired() => Err(Error::Limit("the job exceeded its wall-clock limit".into())),
        }
    };
    let batches = run.await;
    drop(deadline);
    let cancelled = matches!(&batches, Err(Error::Refused(_)));
    let outcome = (|| {
        // A guest failure the engine swallowed (an error while it evaluated something it
        // then did not need) still ends the job.
        for m in &meters {
            m.check()?;
        }
        let (batches, sets) = batches?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > limits.output_rows {
            return Err(Error::Limit(format!(
                "the result has more than {} rows",
                limits.output_rows
            )));
        }
        Ok((batches, sets))
    })();
    // R-GATE 7: over L2 or L3 data, why a running job stopped may depend on a value (a guest
    // that traps on one subject's spend, a limit reached by a data-dependent loop); the job
    // shows that it failed, never why. A cancellation is the scenario's, not the data's.
    let (batches, sets) = match outcome {
        Err(e) if limits.level > Level::L1 && !cancelled => {
            return Err(Error::WhileRunning(Box::new(e)));
        }
        other => other?,
    };
    Ok(JobOutput {
        batches,
        subject_sets: sets,
        shape,
        plan: plan_text,
        peak_engine_memory_bytes: pool.peak() as u64,
        spilled_bytes: spilled.load(Ordering::Relaxed),
        #[cfg(test)]
        tally_groups: tallied.load(Ordering::Relaxed),
    })
}

/// The engine limits of a job of a scenario with these rules, threshold and level: the same
/// on the platform and in a local run (`tidegate dev run --scenario`).
pub(crate) fn scenario_limits(
    rules: &tidegate_policy::ExportRules,
    k: u64,
    level: Level,
    subjects: crate::crypto::SubjectKey,
) -> EngineLimits {
    EngineLimits {
        memory_bytes: usize::try_from(rules.job_memory_bytes()).unwrap_or(usize::MAX),
        privacy: rules.contribution_bounds(),
        level,
        dominance: rules.dominance_rule(),
        threshold: k,
        // The gate's memory audits exact releases; noise protects the rest.
        subjects: rules.contribution_bounds().is_none().then_some(subjects),
        ..EngineLimits::default()
    }
}

/// The shared input's readers.
const QUERY: usize = 0;
const GATE: usize = 1;

/// `plan`, reading the shared input from `source` where it reads [`hidden::SHARED`].
/// The job's sealed stores by the address its scans name them with.
fn sealed_stores(
    job: &str,
    tables: &[TableInput],
) -> Vec<(String, Arc<dyn datafusion::object_store::ObjectStore>)> {
    tables
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.data {
            crate::tables::TableData::Sealed { store, .. } => Some((
                crate::tables::store_address(job, i),
                Arc::clone(store) as Arc<dyn datafusion::object_store::ObjectStore>,
            )),
            crate::tables::TableData::Memory(_) => None,
        })
        .collect()
}

fn reading(
    plan: LogicalPlan,
    source: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::TableScanBuilder;
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(scan) if scan.table_name.table() == hidden::SHARED => {
            if scan.fetch.is_some() {
                // Both readers read the whole input (the gate checks it has).
                return Err(datafusion::error::DataFusionError::Internal(
                    "a limit on the shared input".into(),
                ));
            }
            let scan = TableScanBuilder::new(
                scan.table_name,
                datafusion::datasource::provider_as_source(Arc::clone(&source)),
            )
            .with_projection(scan.projection)
            .with_filters(scan.filters)
            .with_fetch(scan.fetch)
            .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
    .map_err(|e| Error::Internal(format!("the shared input: {e}")))
}

/// The gate's per-subject rows of a job as they were kept: made ready for the tally as they
/// streamed, or as the engine gave them.
enum Gathered {
    Rows(Box<crate::release::RowSpill>),
    Batches(Box<crate::spill::SealedSpill>),
}

/// Whether the engine computes every subject's part, not the tally (the tests that compare
/// the two).
fn engine_parts(limits: &EngineLimits) -> bool {
    #[cfg(test)]
    return limits.engine_parts;
    #[cfg(not(test))]
    {
        let _ = limits;
        false
    }
}

/// Streams the gate's per-subject rows into `push` (a spill partitioned by subject).
async fn stream_contributions(
    ctx: &SessionContext,
    input: Arc<dyn ExecutionPlan>,
    mut push: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    use futures::StreamExt;
    let mut stream = datafusion::physical_plan::execute_stream(input, ctx.task_ctx())
        .map_err(|e| map_error(e, Stage::Running))?;
    while let Some(batch) = stream.next().await {
        push(batch.map_err(|e| map_error(e, Stage::Running))?)?;
        // The spill's work is synchronous: between batches the job's deadline and its
        // cancellation get their turn.
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Streams the gate's per-subject rows into `lanes`: each partition of `input` is read by a
/// task of its own that hands its batches to the lanes' tasks, each of which makes the
/// records of whichever batch comes next into its lane (a task woken on the thread that made
/// the batch runs there, from its caches; and when one partition ends before the other, both
/// lanes go on with the other's batches). Gives the lanes back once every partition has
/// ended and every batch was taken; a task that failed, panicked or was dropped fails the
/// job.
async fn stream_lanes(
    ctx: &SessionContext,
    input: Arc<dyn ExecutionPlan>,
    lanes: Vec<crate::release::Lane>,
) -> Result<Vec<crate::release::Lane>> {
    use datafusion::common::runtime::SpawnedTask;
    use futures::StreamExt;
    if lanes.is_empty() {
        return Err(stopped_early());
    }
    let partitions = input.properties().partitioning.partition_count();
    let (send, receive) = tokio::sync::mpsc::channel::<RecordBatch>(lanes.len());
    let receive = Arc::new(tokio::sync::Mutex::new(receive));
    let mut readers = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let mut stream = input
            .execute(p, ctx.task_ctx())
            .map_err(|e| map_error(e, Stage::Running))?;
        let send = send.clone();
        readers.push(SpawnedTask::spawn(async move {
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| map_error(e, Stage::Running))?;
                send.send(batch).await.map_err(|_| stopped_early())?;
            }
            Ok::<(), Error>(())
        }));
    }
    // The lanes' end of the batches closes once every reader has ended (or was dropped: a
    // reader that did not end well fails the job below).
    drop(send);
    let makers: Vec<_> = lanes
        .into_iter()
        .map(|mut lane| {
            let receive = Arc::clone(&receive);
            SpawnedTask::spawn(async move {
                loop {
                    let batch = receive.lock().await.recv().await;
                    let Some(batch) = batch else {
                        return Ok::<_, Error>(lane);
                    };
                    lane.push(&batch)?;
                    // The lane's work is synchronous: between batches an aborted task ends.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Dropped (aborted) with this future, however the job ends; the first to fail ends it.
    fn all<T: Send + 'static>(
        tasks: Vec<SpawnedTask<Result<T>>>,
    ) -> impl Future<Output = Result<Vec<T>>> {
        futures::future::try_join_all(
            tasks
                .into_iter()
                .map(|t| async move { t.join().await.map_err(|_| stopped_early())? }),
        )
    }
    let (_, lanes) = tokio::try_join!(all(readers), all(makers))?;
    Ok(lanes)
}

/// Gives the tally every bucket of a spill of its own rows, each read back, opened and grouped,
/// each by whichever of two takers is free first: the tally (its buckets read on a worker
/// while it takes the one before) or a share of the tally on a thread of its own; at most
/// three are held at once. Returns the bytes the spill wrote to disk, and the buckets taken
/// that had rows. Fails unless every bucket was made and taken, once.
async fn contribute_rows(
    rows: crate::release::RowSpill,
    tally: &mut crate::release::Tally<'_>,
    pool: &Arc<PeakPool>,
) -> Result<(u64, u64)> {
    match rows.values() {
        0 => contribute_sorted::<0>(rows, tally, pool).await,
        1 => contribute_sorted::<1>(rows, tally, pool).await,
        2 => contribute_sorted::<2>(rows, tally, pool).await,
        3 => contribute_sorted::<3>(rows, tally, pool).await,
        4 => contribute_sorted::<4>(rows, tally, pool).await,
        5 => contribute_sorted::<5>(rows, tally, pool).await,
        6 => contribute_sorted::<6>(rows, tally, pool).await,
        7 => contribute_sorted::<7>(rows, tally, pool).await,
        8 => contribute_sorted::<8>(rows, tally, pool).await,
        _ => Err(Error::Internal("gate columns: too many sums".into())),
    }
}

async fn contribute_sorted<const V: usize>(
    rows: crate::release::RowSpill,
    tally: &mut crate::release::Tally<'_>,
    pool: &Arc<PeakPool>,
) -> Result<(u64, u64)> {
    use std::sync::Mutex;
    let pool = Arc::clone(pool) as Arc<dyn MemoryPool>;
    let (cells, mut share) = tally.cells_of(&rows)?;
    let parts = rows.parts();
    let buckets = crate::spill::BUCKETS;
    let rows = Arc::new(Mutex::new(rows));
    // The rooms of buckets taken, to read others into (each still reserved).
    let rooms: Arc<Mutex<Vec<crate::release::Room<V>>>> = Arc::default();
    let ready = {
        let (pool, rooms) = (Arc::clone(&pool), Arc::clone(&rooms));
        move |rows: &Mutex<crate::release::RowSpill>, b: usize| {
            let room = rooms.lock().map_err(|_| stopped_early())?.pop();
            let room = room.unwrap_or_else(|| {
                crate::release::Room::new(
                    MemoryConsumer::new("the gate's rows made ready").register(&pool),
                )
            });
            crate::release::RowSpill::take::<V>(rows, b, room)
        }
    };
    // The buckets are taken in turn, each by the first free of two: a share of the tally on a
    // blocking thread of the job's runtime, which reads and takes its buckets itself, and this
    // thread, whose buckets a worker reads while it takes the one before (a subject's rows are
    // all in one bucket). Neither waits for the other's half: whichever is given more of the
    // machine takes more buckets. The share stops at its next bucket once the job no longer
    // waits for it.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let claim = {
        let next = Arc::clone(&next);
        move || Some(next.fetch_add(1, Ordering::Relaxed)).filter(|b| *b < buckets)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stopped = StopOnDrop(Arc::clone(&stop));
    let theirs = tokio::task::spawn_blocking({
        let (rows, cells, parts, stop, ready, rooms, claim) = (
            Arc::clone(&rows),
            cells.clone(),
            parts.clone(),
            Arc::clone(&stop),
            ready.clone(),
            Arc::clone(&rooms),
            claim.clone(),
        );
        move || -> Result<(crate::release::Share, u64, usize)> {
            let (mut with_rows, mut taken) = (0, 0);
            while let Some(b) = claim() {
                if stop.load(Ordering::Relaxed) {
                    return Err(stopped_early());
                }
                let sorted = ready(rows.as_ref(), b)?;
                with_rows += u64::from(!sorted.is_empty());
                let room = share.add_sorted(&parts, &cells, sorted)?;
                rooms.lock().map_err(|_| stopped_early())?.push(room);
                taken += 1;
            }
            Ok((share, with_rows, taken))
        }
    });
    let (mut with_rows, mut taken) = (0, 0);
    // As many items as buckets: once every bucket is claimed, the worker's items are empty
    // (made at once, never read from the spill).
    let rows = one_ahead(
        rows,
        buckets,
        move |rows, _| claim().map(|b| ready(rows.as_ref(), b)).transpose(),
        |sorted| {
            if let Some(sorted) = sorted {
                with_rows += u64::from(!sorted.is_empty());
                let room = tally.add_sorted(&parts, &cells, sorted)?;
                rooms.lock().map_err(|_| stopped_early())?.push(room);
                taken += 1;
            }
            Ok(())
        },
    )
    .await?;
    let (share, their_rows, their_taken) = theirs.await.map_err(|_| stopped_early())??;
    // Every bucket taken, once: each was claimed by one side only, and neither stopped early.
    if taken + their_taken != buckets {
        return Err(stopped_early());
    }
    tally.absorb(share)?;
    let with_rows = with_rows + their_rows;
    let written = rows.lock().map_err(|_| stopped_early())?.written();
    Ok((written, with_rows))
}

/// Sets its flag when dropped: the job no longer waits for a worker that reads it.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn stopped_early() -> Error {
    Error::Internal("the gate's per-subject rows stopped before their end".into())
}

/// Makes `count` items on a worker that holds `state`, each one while this thread takes the
/// one before it (`take`): at most two are held at once. The worker stops at its next item
/// once the job no longer takes them (it failed or was stopped), and drops `state` (a spill,
/// whose files die with the last holder of it) with it. Fails unless every item was made and taken: a worker that
/// fails, panics or ends early never passes for the end. Gives `state` back.
async fn one_ahead<S: Send + 'static, T: Send + 'static>(
    mut state: S,
    count: usize,
    mut make: impl FnMut(&mut S, usize) -> Result<T> + Send + 'static,
    mut take: impl FnMut(T) -> Result<()>,
) -> Result<S> {
    let (send, mut made) = tokio::sync::mpsc::channel(1);
    let (taken, took) = std::sync::mpsc::channel::<()>();
    let task = tokio::task::spawn_blocking(move || {
        for i in 0..count {
            // The item before was taken: the next is made while it is.
            if i > 0 && took.recv().is_err() {
                return None;
            }
            let item = make(&mut state, i);
            let failed = item.is_err();
            if send.blocking_send(item).is_err() || failed {
                return None;
            }
        }
        Some(state)
    });
    let mut done = 0;
    while let Some(item) = made.recv().await {
        let item = item?;
        // Ignored when the worker is done: nothing waits for it then.
        let _ = taken.send(());
        take(item)?;
        done += 1;
        tokio::task::yield_now().await;
    }
    match task.await {
        Ok(Some(state)) if done == count => Ok(state),
        _ => Err(stopped_early()),
    }
}

/// Aggregates the gate's per-subject rows a group of subjects at a time into the tally.
/// Returns the bytes the spill wrote to disk, and the groups whose parts the tally computed.
async fn contribute(
    ctx: &SessionContext,
    plan: &crate::release::Contributions,
    mut spill: crate::spill::SealedSpill,
    tally: &mut crate::release::Tally<'_>,
    pool: &Arc<PeakPool>,
    limits: &EngineLimits,
) -> Result<(u64, u64)> {
    use datafusion::datasource::{MemTable, provider_as_source};
    use datafusion::logical_expr::LogicalPlanBuilder;
    use futures::StreamExt;
    let schema = spill.schema();
    // The tally computes each (cell, subject)'s parts itself, in the pass that takes the rows'
    // elements (one sort by cell and subject), where it can: the engine's aggregation
    // computes the rest (more than eight sums and distinct counts, a source that is not a
    // double).
    if let Some(native) = plan.native(&schema).filter(|_| !engine_parts(limits)) {
        let builder = tally.builder(native)?;
        return match builder.values() {
            0 => contribute_native::<0>(spill, builder, tally, pool).await,
            1 => contribute_native::<1>(spill, builder, tally, pool).await,
            2 => contribute_native::<2>(spill, builder, tally, pool).await,
            3 => contribute_native::<3>(spill, builder, tally, pool).await,
            4 => contribute_native::<4>(spill, builder, tally, pool).await,
            5 => contribute_native::<5>(spill, builder, tally, pool).await,
            6 => contribute_native::<6>(spill, builder, tally, pool).await,
            7 => contribute_native::<7>(spill, builder, tally, pool).await,
            8 => contribute_native::<8>(spill, builder, tally, pool).await,
            _ => Err(Error::Internal("gate columns: too many sums".into())),
        };
    }
    // Each group is aggregated on one partition: its subjects are a share of all already, and
    // no exchange between partitions has to buffer (or spill) what it moves.
    let single = SessionContext::new_with_config_rt(
        SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false),
        ctx.runtime_env(),
    );
    for group in spill.groups()? {
        let rows = spill.read(group)?;
        tokio::task::yield_now().await;
        if rows.is_empty() {
            continue;
        }
        let table = MemTable::try_new(Arc::clone(&schema), vec![rows.clone()])
            .map_err(|e| Error::Internal(format!("the gate's rows: {e}")))?;
        let scan = LogicalPlanBuilder::scan(
            hidden::CONTRIBUTIONS,
            provider_as_source(Arc::new(table)),
            None,
        )
        .and_then(|b| b.build())
        .map_err(|e| Error::Internal(format!("the gate's rows: {e}")))?;
        let physical = single
            .execute_logical_plan(plan.over(scan)?)
            .await
            .map_err(|e| map_error(e, Stage::Running))?
            .create_physical_plan()
            .await
            .map_err(|e| map_error(e, Stage::Running))?;
        // The group's per-subject aggregation runs on one of the job's workers while this
        // thread takes the same rows' elements for the gate's memory: both only read the
        // rows. Its output (made once all its input is read) waits, two batches at most, for
        // the tally to take it after the elements; the task ends with the job.
        let stream = datafusion::physical_plan::execute_stream(physical, single.task_ctx())
            .map_err(|e| map_error(e, Stage::Running))?
            .map(|b| b.map_err(|e| map_error(e, Stage::Running)));
        let mut parts = Pumped::spawn(stream);
        for b in &rows {
            tally.add_elements(b)?;
        }
        tally.settle_elements();
        drop(rows);
        tokio::task::yield_now().await;
        parts.each(|batch| tally.add(&batch)).await?;
    }
    Ok((spill.written(), 0))
}

/// Gives the tally every group of the spill, each read back and made ready (its rows with
/// what the tally reads of each, reserved in the job's pool) on a worker while the tally takes
/// the group before it: at most two groups are held at once. Fails unless every group was
/// made and taken.
async fn contribute_native<const V: usize>(
    mut spill: crate::spill::SealedSpill,
    builder: crate::release::Builder,
    tally: &mut crate::release::Tally<'_>,
    pool: &Arc<PeakPool>,
) -> Result<(u64, u64)> {
    let pool = Arc::clone(pool) as Arc<dyn MemoryPool>;
    let groups = spill.groups()?;
    let count = groups.len();
    let builder = Arc::new(builder);
    let worker = Arc::clone(&builder);
    let spill = one_ahead(
        spill,
        count,
        move |spill, i| {
            // What a group's rows take made ready is the job's memory too, until the tally
            // has taken them.
            let memory = MemoryConsumer::new("the gate's rows made ready").register(&pool);
            spill
                .read(groups[i].clone())
                .and_then(|rows| worker.build::<V>(&rows, memory))
        },
        |built| tally.add_built(&builder, built),
    )
    .await?;
    Ok((spill.written(), count as u64))
}

/// A stream of batches pumped by a task of the job's runtime (so that it runs on a worker
/// while the job's thread does other work), taken only whole: [`Pumped::each`] fails unless
/// the task says it sent every item of the stream, so that a panic, an abort or an early end
/// of the task never passes for the stream's end. The task is aborted when this is dropped.
struct Pumped {
    items: tokio::sync::mpsc::Receiver<Result<RecordBatch>>,
    task: tokio::task::JoinHandle<bool>,
}

impl Pumped {
    fn spawn(
        mut stream: impl futures::Stream<Item = Result<RecordBatch>> + Send + Unpin + 'static,
    ) -> Pumped {
        use futures::StreamExt;
        let (send, items) = tokio::sync::mpsc::channel(2);
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if send.send(item).await.is_err() || failed {
                    return false;
                }
            }
            // Every item was sent.
            true
        });
        Pumped { items, task }
    }

    /// Gives every item to `take`, in order; the first error (the stream's or `take`'s) ends
    /// it, and so does a task that stopped before the stream's end.
    async fn each(&mut self, mut take: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
        while let Some(item) = self.items.recv().await {
            take(item?)?;
        }
        // The channel closes when the task ends, however it ends.
        match (&mut self.task).await {
            Ok(true) => Ok(()),
            _ => Err(Error::Internal(
                "the gate's per-subject aggregation stopped before its end".into(),
            )),
        }
    }
}

impl Drop for Pumped {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Collects a plan's batches, counting their memory against the job's engine limit (and, for
/// the result, their rows against its output limit) as they arrive: the result a job holds is
/// bounded, not only what its operators reserve.
async fn collect_bounded(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<datafusion::execution::TaskContext>,
    limits: &EngineLimits,
    max_rows: Option<usize>,
) -> Result<Vec<RecordBatch>> {
    use futures::StreamExt;
    let mut stream = datafusion::physical_plan::execute_stream(plan, task)
        .map_err(|e| map_error(e, Stage::Running))?;
    let (mut bytes, mut rows) = (0usize, 0usize);
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| map_error(e, Stage::Running))?;
        bytes = bytes.saturating_add(batch.get_array_memory_size());
        rows = rows.saturating_add(batch.num_rows());
        if bytes > limits.memory_bytes {
            return Err(Error::Limit("the job exceeded its memory limit".into()));
        }
        if let Some(max) = max_rows
            && rows > max
        {
            return Err(Error::Limit(format!("the result has more than {max} rows")));
        }
        out.push(batch);
    }
    Ok(out)
}

/// A job's deadline, kept by a thread of its own.
struct Watchdog {
    /// Dropped when the job ends, which releases the thread.
    done: Option<std::sync::mpsc::Sender<()>>,
    state: Arc<WatchdogState>,
}

#[derive(Default)]
struct WatchdogState {
    expired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Watchdog {
    fn start(after: Duration, meters: Vec<Arc<crate::sandbox::JobMeter>>) -> Watchdog {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let state = Arc::new(WatchdogState::default());
        let fire = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("tidegate-deadline".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(after) {
                    for m in &meters {
                        m.expire();
                    }
                    fire.expired.store(true, Ordering::SeqCst);
                    fire.notify.notify_waiters();
                }
            });
        if spawned.is_err() {
            // No thread for the deadline: the job is refused rather than run without one.
            state.expired.store(true, Ordering::SeqCst);
        }
        Watchdog {
            done: Some(done),
            state,
        }
    }

    /// Resolves when the deadline has passed.
    async fn expired(&self) {
        loop {
            let notified = self.state.notify.notified();
            if self.state.expired.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.take();
    }
}

/// The query engine's memory pool, remembering the most it ever reserved.
#[derive(Debug)]
struct PeakPool {
    inner: TrackConsumersPool<GreedyMemoryPool>,
    peak: AtomicUsize,
}

impl PeakPool {
    fn new(limit: usize) -> PeakPool {
        PeakPool {
            inner: TrackConsumersPool::new(
                GreedyMemoryPool::new(limit),
                NonZeroUsize::new(5).expect("non-zero"),
            ),
            peak: AtomicUsize::new(0),
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn note(&self) {
        self.peak
            .fetch_max(self.inner.reserved(), Ordering::Relaxed);
    }
}

impl std::fmt::Display for PeakPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job memory pool: {} bytes reserved, at most {}",
            self.reserved(),
            self.peak()
        )
    }
}

impl MemoryPool for PeakPool {
    fn name(&self) -> &str {
        "tidegate-peak"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.note();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::common::Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.note();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// CPU time a job's own threads used.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobCost {
    pub cpu_ms: u64,
}

/// [`run_query_until`] on threads of its own (a runtime made for this job, as many workers as
/// the job has partitions), so that the CPU time it used can be measured: each thread adds its
/// own CPU clock when it stops.
pub async fn run_query_isolated(
    sql: String,
    tables: Vec<TableInput>,
    udfs: impl Into<Functions>,
    limits: EngineLimits,
    cancel: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Result<JobOutput>, JobCost) {
    let udfs: Functions = udfs.into();
    let ran = crate::threads::run_counted("tidegate-job", TARGET_PARTITIONS, move || async move {
        run_query_until(&sql, &tables, udfs, limits, cancel).await
    })
    .await;
    match ran {
        Ok((outcome, cpu_ns)) => (
            outcome,
            JobCost {
                cpu_ms: cpu_ns / 1_000_000,
            },
        ),
        Err(why) => (
            Err(Error::Internal(format!("the job's runtime: {why}"))),
            JobCost::default(),
        ),
    }
}

/// The most tokens a job's SQL may have. The engine plans expressions by recursion: a chain of
/// tens of thousands of terms would overflow any thread's stack (and abort the process), and
/// plans in time that grows faster than the chain. Analytic queries are far shorter.
const MAX_SQL_TOKENS: usize = 4096;

/// Parses `sql` and refuses anything but exactly one query, before any planning.
fn only_a_query(sql: &str) -> Result<DfStatement> {
    let tokens = datafusion::sql::sqlparser::tokenizer::Tokenizer::new(
        &datafusion::sql::sqlparser::dialect::GenericDialect {},
        sql,
    )
    .tokenize()
    .map_err(|e| Error::BadInput(format!("the query does not parse: {e}")))?
    .into_iter()
    .filter(|t| {
        !matches!(
            t,
            datafusion::sql::sqlparser::tokenizer::Token::Whitespace(_)
        )
    })
    .count();
    if tokens > MAX_SQL_TOKENS {
        return Err(Error::Refused(format!(
            "the query has {tokens} tokens; a job's query has at most {MAX_SQL_TOKENS}"
        )));
    }
    let mut statements = DFParser::parse_sql(sql)
        .map_err(|e| Error::BadInput(format!("the query does not parse: {e}")))?;
    let refuse = || {
        Error::Refused(
            "a job is exactly one SELECT query; DDL, DML, COPY, SET and EXPLAIN are not allowed"
                .into(),
        )
    };
    if statements.len() != 1 {
        return Err(refuse());
    }
    let statement = match statements.pop_front() {
        Some(DfStatement::Statement(s)) if matches!(*s, SqlStatement::Query(_)) => s,
        _ => return Err(refuse()),
    };
    // The catalog of the session is not part of the data: say so rather than "not found".
    if statement
        .to_string()
        .to_ascii_lowercase()
        .contains("information_schema")
    {
        return Err(Error::Refused(
            "information_schema is not available in a job".into(),
        ));
    }
    Ok(DfStatement::Statement(statement))
}

/// Refuses every plan node that is not part of a read-only query, any reference to the
/// reserved hidden columns, and any name that could pose as one (in any case).
fn check_confinement(plan: &LogicalPlan) -> Result<()> {
    let mut refusal = None;
    plan.apply_with_subqueries(|node| {
        let forbidden = match node {
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => Some("EXPLAIN"),
            LogicalPlan::Dml(_) => Some("data modification"),
            LogicalPlan::Ddl(_) => Some("data definition"),
            LogicalPlan::Copy(_) => Some("COPY"),
            LogicalPlan::Statement(_) => Some("statements"),
            LogicalPlan::DescribeTable(_) => Some("DESCRIBE"),
            LogicalPlan::Extension(_) => Some("extension nodes"),
            LogicalPlan::RecursiveQuery(_) => Some("recursive queries"),
            _ => None,
        };
        if let Some(what) = forbidden {
            refusal = Some(format!(
                "{what} is not allowed in a job; a job is one SELECT query"
            ));
            return Ok(TreeNodeRecursion::Stop);
        }
        for e in node.expressions() {
            if e.column_refs().iter().any(|c| is_reserved(&c.name)) {
                refusal = Some(format!(
                    "columns named {}* are reserved; name the columns you need instead of `*`",
                    hidden::RESERVED_PREFIX
                ));
                return Ok(TreeNodeRecursion::Stop);
            }
            // An output named like the runtime's hidden columns could pose as its subject count.
            let mut aliased = false;
            e.apply(|sub| {
                if let Expr::Alias(a) = sub
                    && is_reserved(&a.name)
                {
                    aliased = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            if aliased {
                refusal = Some(format!(
                    "names starting with {} are reserved",
                    hidden::RESERVED_PREFIX
                ));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| Error::Internal(format!("plan walk: {e}")))?;
    match refusal {
        Some(r) => Err(Error::Refused(r)),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Planning,
    Running,
}

/// Translates an engine error. Planning errors speak of the query and the schema only and are
/// shown; errors while running may quote data values and are reduced to their class.
fn map_error(e: DataFusionError, stage: Stage) -> Error {
    classify(&e, stage)
}

fn classify(e: &DataFusionError, stage: Stage) -> Error {
    match (e, stage) {
        // One of our errors (a guest failure) wrapped inside an engine error.
        (DataFusionError::External(inner), _) if inner.downcast_ref::<Error>().is_some() => {
            inner.downcast_ref::<Error>().cloned().expect("checked above")
        }
        (DataFusionError::Context(_, inner), _) => classify(inner, stage),
        (DataFusionError::Shared(inner), _) => classify(inner, stage),
        (DataFusionError::ResourcesExhausted(_), _) => {
            Error::Limit("the job exceeded its memory limit".into())
        }
        (_, Stage::Planning) => Error::BadInput(format!("the query cannot be planned: {e}")),
        (_, Stage::Running) => Error::BadInput(
            "the query failed while running; the cause is withheld because it may quote data values"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::TableData;
    use arrow::array::{Array, AsArray};
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::DataType as ArrowType;
    use arrow::datatypes::{Field, Schema};
    use tidegate_policy::ColumnSpec;
    use tidegate_policy::{ColumnTag, ContributionBounds, DataType};

    fn numbered(n: i64) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", ArrowType::Int64, false)])),
            vec![Arc::new(arrow::array::Int64Array::from(vec![n]))],
        )
        .unwrap()
    }

    /// Takes a pumped stream of numbered batches: the numbers taken, and how it ended.
    fn take_pumped(
        stream: impl futures::Stream<Item = Result<RecordBatch>> + Send + Unpin + 'static,
    ) -> (Vec<i64>, Result<()>) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut taken = Vec::new();
            let outcome = Pumped::spawn(stream)
                .each(|b| {
                    taken.push(
                        b.column(0)
                            .as_primitive::<arrow::datatypes::Int64Type>()
                            .value(0),
                    );
                    Ok(())
                })
                .await;
            (taken, outcome)
        })
    }

    #[test]
    fn a_pumped_stream_is_taken_whole_and_in_order() {
        let (taken, outcome) = take_pumped(futures::stream::iter((0..10).map(|n| Ok(numbered(n)))));
        assert_eq!(taken, (0..10).collect::<Vec<_>>());
        assert!(outcome.is_ok());
    }

    #[test]
    fn a_pumped_stream_whose_task_panics_midway_fails_instead_of_ending() {
        use futures::StreamExt;
        // The channel closes when the task dies: without the task's word, the two batches
        // taken would pass for the whole stream.
        let stream = futures::stream::iter(0..10).map(|n| {
            assert!(n < 2, "the aggregation fails here");
            Ok(numbered(n))
        });
        let (taken, outcome) = take_pumped(stream);
        assert_eq!(taken, vec![0, 1]);
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("stopped before its end"), "{error}");
    }

    #[test]
    fn a_pumped_stream_stops_at_its_first_error() {
        let items = (0..5).map(|n| match n {
            3 => Err(Error::Limit("the job exceeded its memory limit".into())),
            n => Ok(numbered(n)),
        });
        let (taken, outcome) = take_pumped(futures::stream::iter(items));
        assert_eq!(taken, vec![0, 1, 2]);
        assert!(matches!(outcome, Err(Error::Limit(_))));
    }

    fn table(rows: usize) -> TableInput {
        let schema = Arc::new(Schema::new(vec![
            Field::new("spot", ArrowType::Utf8, false),
            Field::new("x", ArrowType::Float64, false),
            Field::new(hidden::ENTITY, ArrowType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("spot {}", i % 40)),
                )),
                Arc::new(Float64Array::from_iter_values((0..rows).map(|i| i as f64))),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("p{}", i % 5_000)),
                )),
            ],
        )
        .unwrap();
        let spec = |name: &str, data_type, tags| ColumnSpec {
            name: name.into(),
            data_type,
            tags,
        };
        TableInput {
            name: "t".into(),
            columns: vec![
                spec("spot", DataType::Utf8, vec![ColumnTag::Dimension]),
                spec("x", DataType::Float64, vec![]),
            ],
            data: TableData::Memory(
                (0..rows)
                    .step_by(8192)
                    .map(|at| batch.slice(at, 8192.min(rows - at)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn jobs_can_mask_and_generalize_with_the_gates_own_rules() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let sql = "SELECT tg_mask('13812345678') AS m, tg_generalize(x, 'band:10') AS b, \
                   tg_generalize('2026-05-17', 'month') AS d, tg_generalize(x / 7, 'round:1') AS r \
                   FROM t WHERE x = 37";
        let out = rt
            .block_on(run_query(
                sql,
                &[table(100)],
                crate::masking::desensitization_udfs(),
                EngineLimits::default(),
            ))
            .unwrap();
        let b = &out.batches[0];
        let cell = |c: usize| {
            arrow::array::AsArray::as_string::<i32>(b.column(c))
                .value(0)
                .to_string()
        };
        assert_eq!(cell(0), "138****5678");
        assert_eq!(cell(1), "30-39");
        assert_eq!(cell(2), "2026-05");
        assert_eq!(cell(3), "5.3");
        let refused = rt
            .block_on(run_query(
                "SELECT tg_generalize(x, 'pseudonymize') FROM t",
                &[table(10)],
                crate::masking::desensitization_udfs(),
                EngineLimits::default(),
            ))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("tg_generalize takes a generalization"),
            "{refused}"
        );
    }

    #[test]
    fn a_gated_job_over_its_budget_spills_sealed_and_gives_the_same_result_and_gate_columns() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let spill = tempfile::tempdir().unwrap();
        let run = |memory_bytes: usize| {
            let out = rt
                .block_on(run_query(
                    "SELECT spot, count(*) AS n, sum(x) AS total FROM t GROUP BY spot",
                    &[table(300_000)],
                    vec![],
                    EngineLimits {
                        level: Level::L2,
                        memory_bytes,
                        spill_dir: Some(spill.path().to_path_buf()),
                        subjects: Some(crate::crypto::DataKey::generate().subject_key()),
                        ..EngineLimits::default()
                    },
                ))
                .unwrap();
            let mut rows: Vec<String> = out
                .batches
                .iter()
                .flat_map(|b| {
                    let b = crate::hidden::drop_hidden(b).unwrap();
                    let shown = arrow::util::pretty::pretty_format_batches(&[b])
                        .unwrap()
                        .to_string();
                    shown.lines().map(str::to_string).collect::<Vec<_>>()
                })
                .collect();
            rows.sort();
            let gate: Vec<(i64, bool)> = out
                .batches
                .iter()
                .flat_map(|b| {
                    let n = b.column_by_name(hidden::SUBJECTS).unwrap();
                    let n = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(n);
                    let d = b.column_by_name(hidden::DOMINATED).unwrap();
                    let d = arrow::array::AsArray::as_boolean(d);
                    (0..b.num_rows())
                        .map(|i| (n.value(i), d.value(i)))
                        .collect::<Vec<_>>()
                })
                .collect();
            let sets: usize = out
                .subject_sets
                .iter()
                .flatten()
                .map(|(_, rows)| rows.sets.iter().flatten().map(|s| s.len()).sum::<usize>())
                .sum();
            (rows, gate, sets, out.spilled_bytes)
        };
        let (rows, gate, sets, spilled) = run(1 << 30);
        assert_eq!(spilled, 0, "a job within its budget writes nothing");
        let (small_rows, small_gate, small_sets, small_spilled) = run(24 << 20);
        assert!(small_spilled > 0, "the small budget made the job spill");
        assert_eq!(small_rows, rows);
        let mut gate_sorted = gate.clone();
        let mut small_sorted = small_gate.clone();
        gate_sorted.sort();
        small_sorted.sort();
        assert_eq!(small_sorted, gate_sorted);
        assert_eq!(gate.iter().map(|g| g.0).sum::<i64>(), 5_000);
        assert_eq!(small_sets, sets);
        assert!(
            crate::spill::files_under(spill.path()).is_empty(),
            "the spill is destroyed with the job"
        );
    }

    #[test]
    fn a_column_the_gate_reads_for_several_aggregates_is_spilled_once() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let spill = tempfile::tempdir().unwrap();
        let spilled = |sql: &str| {
            rt.block_on(run_query(
                sql,
                &[table(300_000)],
                vec![],
                EngineLimits {
                    level: Level::L2,
                    memory_bytes: 24 << 20,
                    spill_dir: Some(spill.path().to_path_buf()),
                    subjects: Some(crate::crypto::DataKey::generate().subject_key()),
                    ..EngineLimits::default()
                },
            ))
            .unwrap()
            .spilled_bytes
        };
        let one = spilled("SELECT spot, sum(x) AS total FROM t GROUP BY spot");
        let three = spilled(
            "SELECT spot, sum(x) AS total, avg(x) AS mean, count(x) AS k FROM t GROUP BY spot",
        );
        assert!(one > 0, "the small budget made the job spill");
        assert!(
            three <= one + one / 50,
            "{three} bytes spilled for three aggregates of x, {one} for one"
        );
    }

    /// Tables `t` (visits: a spot, a value with NULLs, a count, a flag, a join key) and `u`
    /// (places: a district and a weight), both with subjects; some rows of `t` have none.
    fn two_tables(rows: usize) -> Vec<TableInput> {
        let t = Arc::new(Schema::new(vec![
            Field::new("spot", ArrowType::Utf8, false),
            Field::new("x", ArrowType::Float64, true),
            Field::new("n", ArrowType::Int32, false),
            Field::new("flag", ArrowType::Boolean, true),
            Field::new("k", ArrowType::Int64, false),
            Field::new("person", ArrowType::Utf8, true),
            Field::new(hidden::ENTITY, ArrowType::Utf8, true),
        ]));
        let person = || {
            Arc::new(StringArray::from_iter(
                (0..rows).map(|i| (i % 101 != 0).then(|| format!("p{}", i % 3_000))),
            ))
        };
        let visits = RecordBatch::try_new(
            t,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("spot {}", i % 23)),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..rows).map(|i| (i % 7 != 0).then_some((i % 1000) as f64 * 0.1 - 3.0)),
                )),
                Arc::new(arrow::array::Int32Array::from_iter_values(
                    (0..rows).map(|i| (i % 50) as i32 - 5),
                )),
                Arc::new(arrow::array::BooleanArray::from_iter(
                    (0..rows).map(|i| (i % 11 != 0).then_some(i % 3 == 0)),
                )),
                Arc::new(arrow::array::Int64Array::from_iter_values(
                    (0..rows).map(|i| (i % 300) as i64),
                )),
                person(),
                person(),
            ],
        )
        .unwrap();
        let u = Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("district", ArrowType::Utf8, false),
            Field::new("w", ArrowType::Float64, false),
            Field::new(hidden::ENTITY, ArrowType::Utf8, true),
        ]));
        let places = RecordBatch::try_new(
            u,
            vec![
                Arc::new(arrow::array::Int64Array::from_iter_values(0..300)),
                Arc::new(StringArray::from_iter_values(
                    (0..300).map(|i| format!("district {}", i % 4)),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..300).map(|i| i as f64 / 3.0),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..300).map(|i| format!("q{}", i % 150)),
                )),
            ],
        )
        .unwrap();
        let spec = |name: &str, data_type, tags| ColumnSpec {
            name: name.into(),
            data_type,
            tags,
        };
        vec![
            TableInput {
                name: "t".into(),
                columns: vec![
                    spec("spot", DataType::Utf8, vec![ColumnTag::Dimension]),
                    spec("x", DataType::Float64, vec![]),
                    spec("n", DataType::Int32, vec![]),
                    spec("flag", DataType::Boolean, vec![]),
                    spec("k", DataType::Int64, vec![]),
                    spec("person", DataType::Utf8, vec![ColumnTag::Entity]),
                ],
                data: TableData::Memory(
                    (0..rows)
                        .step_by(4096)
                        .map(|at| visits.slice(at, 4096.min(rows - at)))
                        .collect(),
                ),
            },
            TableInput {
                name: "u".into(),
                columns: vec![
                    spec("id", DataType::Int64, vec![]),
                    spec("district", DataType::Utf8, vec![ColumnTag::Dimension]),
                    spec("w", DataType::Float64, vec![]),
                ],
                data: TableData::Memory(vec![places]),
            },
        ]
    }

    /// A gated job over `two_tables`, which must not fail.
    fn gated(rt: &tokio::runtime::Runtime, sql: &str, limits: EngineLimits) -> JobOutput {
        let small = limits.memory_bytes <= 16 << 20;
        let out = rt
            .block_on(run_query(sql, &two_tables(100_000), vec![], limits))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        if sql.contains("GROUP BY") && small {
            assert!(out.spilled_bytes > 0, "{sql}: the rows were spilled");
        }
        out
    }

    /// Two results are the same: every column equal, doubles up to the order the engine's
    /// partitions added them in.
    fn assert_same(sql: &str, a: &[RecordBatch], b: &[RecordBatch]) {
        let a = arrow::compute::concat_batches(&a[0].schema(), a).unwrap();
        let b = arrow::compute::concat_batches(&b[0].schema(), b).unwrap();
        assert_eq!(a.schema(), b.schema(), "{sql}");
        assert!(a.num_rows() > 0, "{sql}");
        for (i, f) in a.schema().fields().iter().enumerate() {
            let (x, y) = (a.column(i), b.column(i));
            if f.data_type() == &ArrowType::Float64 {
                let (x, y) = (
                    x.as_primitive::<arrow::datatypes::Float64Type>(),
                    y.as_primitive::<arrow::datatypes::Float64Type>(),
                );
                for r in 0..a.num_rows() {
                    let (p, q) = (x.value(r), y.value(r));
                    assert_eq!(x.is_valid(r), y.is_valid(r), "{sql}: {}", f.name());
                    assert!(
                        p == q
                            || (p.is_nan() && q.is_nan())
                            || (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0),
                        "{sql}: {} row {r}: {p} against {q}",
                        f.name()
                    );
                }
            } else {
                assert_eq!(x, y, "{sql}: {}", f.name());
            }
        }
    }

    #[test]
    fn the_tally_computes_each_subjects_parts_as_the_engine_does() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let key = crate::crypto::DataKey::generate().subject_key();
        let spill = tempfile::tempdir().unwrap();
        // A budget small enough that the rows are spilled and taken in several groups.
        let exact = || EngineLimits {
            level: Level::L2,
            subjects: Some(key),
            memory_bytes: 16 << 20,
            spill_dir: Some(spill.path().to_path_buf()),
            ..EngineLimits::default()
        };
        let private = || EngineLimits {
            level: Level::L2,
            memory_bytes: 16 << 20,
            spill_dir: Some(spill.path().to_path_buf()),
            privacy: Some(ContributionBounds {
                sum_bound: Some(40.0),
                count_bound: 3,
                max_groups: 5,
            }),
            ..EngineLimits::default()
        };
        let single = [
            "SELECT spot, count(*) AS visits, sum(x) AS total, avg(x) AS mean FROM t GROUP BY spot ORDER BY spot",
            "SELECT spot, count(x) AS c, sum(n) FILTER (WHERE flag) AS s FROM t GROUP BY spot ORDER BY spot",
            "SELECT spot, sum(x + n) AS s, sum(n * 2) AS d FROM t WHERE n > 0 GROUP BY spot ORDER BY spot",
            "SELECT count(*) AS visits, sum(x) AS total FROM t",
            // Sums of no value (NULL) and of infinities (NaN where they cancel).
            "SELECT spot, count(*) AS visits, sum(x) FILTER (WHERE n > 100) AS none FROM t GROUP BY spot ORDER BY spot",
            "SELECT spot, sum(x / (n + 5)) AS ratio, count(x) AS c FROM t GROUP BY spot ORDER BY spot",
            // Counts of distinct entities (the only DISTINCT over L2 data), one under a FILTER.
            "SELECT spot, count(DISTINCT person) AS people, sum(x) AS total FROM t GROUP BY spot ORDER BY spot",
            "SELECT spot, count(DISTINCT person) FILTER (WHERE flag) AS flagged, count(*) AS visits FROM t GROUP BY spot ORDER BY spot",
            // The same under other names: a subquery's aliases, the value read twice.
            "SELECT s, count(DISTINCT who) AS people, sum(v) AS total, avg(v) AS mean FROM (SELECT spot AS s, person AS who, x AS v FROM t) AS q GROUP BY s ORDER BY s",
        ];
        let joined = [
            "SELECT u.district, count(*) AS visits, sum(t.x + u.w) AS total FROM t JOIN u ON t.k = u.id GROUP BY u.district ORDER BY u.district",
            "SELECT u.district, t.spot, sum(t.n) AS s FROM t JOIN u ON t.k = u.id GROUP BY u.district, t.spot ORDER BY u.district, t.spot",
            // Each place's subject counts the visitors it had (ten, of some 75 in a district:
            // its 333 rows would dominate).
            "SELECT u.district, count(DISTINCT t.person) AS people FROM t JOIN u ON t.k = u.id GROUP BY u.district ORDER BY u.district",
            "SELECT u.district, count(DISTINCT t.person) FILTER (WHERE t.n < 0) AS few FROM t JOIN u ON t.k = u.id GROUP BY u.district ORDER BY u.district",
        ];
        let runs = single
            .iter()
            .chain(&joined)
            .map(|sql| (*sql, exact()))
            .chain(single.iter().map(|sql| (*sql, private())));
        for (sql, limits) in runs {
            let tally = gated(&rt, sql, limits.clone());
            assert!(tally.tally_groups > 0, "{sql}: the tally's parts");
            let mut engine_limits = EngineLimits {
                engine_parts: true,
                ..limits
            };
            if sql.contains("DISTINCT") {
                // The engine's distinct values per (cell, subject) need more room.
                engine_limits.memory_bytes = 1 << 30;
            }
            let engine = gated(&rt, sql, engine_limits);
            assert_eq!(engine.tally_groups, 0, "{sql}: the engine's parts");
            assert_same(sql, &tally.batches, &engine.batches);
            assert_eq!(tally.subject_sets, engine.subject_sets, "{sql}");
        }
    }

    #[test]
    fn a_job_on_its_own_threads_reports_its_cpu_time_and_peak_engine_memory() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (output, cost) = rt.block_on(run_query_isolated(
            "SELECT spot, sum(x) AS total FROM t GROUP BY spot".into(),
            vec![table(400_000)],
            vec![],
            EngineLimits::default(),
            std::future::pending(),
        ));
        let output = output.unwrap();
        assert_eq!(
            output.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            40
        );
        assert!(cost.cpu_ms > 0, "{cost:?}");
        assert!(output.peak_engine_memory_bytes > 0);
    }

    #[test]
    fn an_isolated_job_keeps_the_refusals_and_the_memory_limit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (refused, _) = rt.block_on(run_query_isolated(
            "DROP TABLE t".into(),
            vec![table(10)],
            vec![],
            EngineLimits::default(),
            std::future::pending(),
        ));
        assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
        let (starved, _) = rt.block_on(run_query_isolated(
            "SELECT x, count(*) FROM t GROUP BY x".into(),
            vec![table(200_000)],
            vec![],
            EngineLimits {
                memory_bytes: 64 << 10,
                ..EngineLimits::default()
            },
            std::future::pending(),
        ));
        assert!(starved.is_err(), "a job over its memory limit fails");
    }
}
