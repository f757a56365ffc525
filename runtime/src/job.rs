//! Running a job: a SELECT over the scenario's granted tables in a confined DataFusion
//! session, with the runtime's own count of distinct subjects added to every aggregate.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema};
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableType};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::TableProviderFilterPushDown;
use datafusion::logical_expr::{Expr, LogicalPlan, ScalarUDF};
use datafusion::object_store::ObjectStore;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use tidegate_policy::{ColumnSpec, ContributionBounds, DominanceRule, Level, QueryShape};

use crate::error::{Error, Result};
use crate::storage::SealedStore;

/// The hidden column holding a table's entity key, for counting subjects.
pub(crate) const ENTITY_COLUMN: &str = "__tg_entity";
/// The hidden column holding a stored row's identity: a hash of all its values, written at
/// import (and made for tables held in memory), so that the gate's memory can tell rows apart
/// across jobs, scenarios and versions whatever columns each was granted.
pub(crate) const ROW_COLUMN: &str = "__tg_row";
/// Distinct subjects of an output group (NULL entity keys count as one).
pub(crate) const SUBJECTS_COLUMN: &str = "__tg_subjects";
/// Hidden columns `__tg_key_0..` carry each group's key values.
pub(crate) const GROUP_KEY_PREFIX: &str = "__tg_key_";
/// The prefix of every hidden name; the user's SQL can neither name nor alias one.
pub(crate) const RESERVED_PREFIX: &str = "__tg";

/// Partitions of a job's plan: the machine's two cores.
const TARGET_PARTITIONS: usize = 2;

/// One granted table as the job sees it: only granted columns, plus the hidden entity key.
#[derive(Debug, Clone)]
pub struct TableInput {
    pub name: String,
    pub columns: Vec<ColumnSpec>,
    pub data: TableData,
}

/// Where a table's rows come from.
#[derive(Debug, Clone)]
pub enum TableData {
    /// Batches whose schema is the granted columns followed by [`ENTITY_COLUMN`] (local files
    /// of `tidegate dev run`, tests, benchmarks).
    Memory(Vec<RecordBatch>),
    /// A stored Parquet object at `object` in `store`, scanned by DataFusion itself: only the
    /// granted columns are exposed, and the stored `entity` column as [`ENTITY_COLUMN`].
    Sealed {
        store: Arc<SealedStore>,
        object: String,
        entity: Option<String>,
    },
}

/// Limits of the query engine for one job.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub memory_bytes: usize,
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
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            memory_bytes: 1 << 30,
            wall_time: Duration::from_secs(300),
            output_rows: 1_000_000,
            privacy: None,
            level: Level::L1,
            dominance: DominanceRule::default(),
            threshold: 1,
            subjects: None,
        }
    }
}

/// The functions a job's SQL may call besides DataFusion's own: guest scalars and aggregates,
/// and the runtime's built-ins.
#[derive(Debug, Clone, Default)]
pub struct Functions {
    pub scalars: Vec<ScalarUDF>,
    pub aggregates: Vec<datafusion::logical_expr::AggregateUDF>,
    /// Guest table functions; they read the job's granted tables by name.
    pub tables: Vec<crate::guest_table::GuestTable>,
    /// The meters of the guests behind these functions: the job's deadline stops them, and a
    /// failure any of them recorded fails the job.
    pub meters: Vec<Arc<crate::sandbox::JobMeter>>,
}

impl Functions {
    pub fn extend(&mut self, more: Functions) {
        self.scalars.extend(more.scalars);
        self.aggregates.extend(more.aggregates);
        self.tables.extend(more.tables);
        for m in more.meters {
            if !self.meters.iter().any(|have| Arc::ptr_eq(have, &m)) {
                self.meters.push(m);
            }
        }
    }
}

impl From<Vec<ScalarUDF>> for Functions {
    fn from(scalars: Vec<ScalarUDF>) -> Self {
        Functions {
            scalars,
            ..Functions::default()
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
    /// Per table with subjects (by index among the job's tables), each result row's sets of
    /// that table's rows and subjects (keyed hashes), when the limits named a subject key and
    /// the result is an aggregate over subjects.
    pub subject_sets: Option<Vec<(usize, tidegate_policy::DatasetRows)>>,
}

/// Each row's identity: SipHash-1-3 of the row's values in Arrow's row format (equal rows,
/// which no query can tell apart, share one). Unkeyed: it is stored sealed with the data, and
/// the gate's memory keys it again.
pub(crate) fn row_ids(batch: &RecordBatch) -> Result<arrow::array::UInt64Array> {
    use arrow::row::{RowConverter, SortField};
    use std::hash::Hasher;
    let converter = RowConverter::new(
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(|e| Error::Internal(format!("row identity: {e}")))?;
    let rows = converter
        .convert_columns(batch.columns())
        .map_err(|e| Error::Internal(format!("row identity: {e}")))?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(0x7469_6465, 0x726f_7773);
            h.write(r.as_ref());
            Some(h.finish())
        })
        .collect())
}

/// `batch` with its rows' identities in [`ROW_COLUMN`] (kept when it has them).
pub(crate) fn with_row_ids(batch: &RecordBatch) -> Result<RecordBatch> {
    if batch.schema().index_of(ROW_COLUMN).is_ok() {
        return Ok(batch.clone());
    }
    append_column(batch, ROW_COLUMN, Arc::new(row_ids(batch)?))
}

/// The provider of one granted table.
async fn register(
    ctx: &SessionContext,
    index: usize,
    t: &TableInput,
) -> datafusion::common::Result<Arc<dyn TableProvider>> {
    match &t.data {
        TableData::Memory(batches) => {
            let batches = batches
                .iter()
                .map(with_row_ids)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let schema = batches.first().map(|b| b.schema()).ok_or_else(|| {
                DataFusionError::Internal(format!("table {} has no batches", t.name))
            })?;
            // One partition per target partition, so that the scan runs on every core.
            let mut partitions = vec![Vec::new(); TARGET_PARTITIONS];
            for (i, b) in batches.into_iter().enumerate() {
                partitions[i % TARGET_PARTITIONS].push(b);
            }
            Ok(Arc::new(MemTable::try_new(schema, partitions)?))
        }
        TableData::Sealed {
            store,
            object,
            entity,
        } => {
            let base = format!("tidegate://table{index}");
            let url = url::Url::parse(&base)
                .map_err(|e| DataFusionError::Internal(format!("store url: {e}")))?;
            ctx.register_object_store(&url, Arc::clone(store) as Arc<dyn ObjectStore>);
            let url = ListingTableUrl::parse(format!("{base}/{object}"))?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()));
            let schema = options.infer_schema(&ctx.state(), &url).await?;
            let stored = ListingTable::try_new(
                ListingTableConfig::new(url)
                    .with_listing_options(options)
                    .with_schema(schema),
            )?;
            GrantedTable::new(Arc::new(stored), &t.columns, entity.as_deref())
                .map(|g| Arc::new(g) as Arc<dyn TableProvider>)
        }
    }
}

/// A stored table as a job sees it: the granted columns of the stored object under their own
/// names and its entity key under [`ENTITY_COLUMN`]; no other column of the object is
/// reachable. Its plans look like any table's scan, so every check of the plan applies.
#[derive(Debug)]
struct GrantedTable {
    inner: Arc<dyn TableProvider>,
    schema: arrow::datatypes::SchemaRef,
    /// For each column of `schema`, its index in the inner table's schema.
    sources: Vec<usize>,
}

impl GrantedTable {
    /// Whether a filter names granted columns only (never the renamed entity key), so that
    /// the stored table understands it as written.
    fn prunes(&self, filter: &Expr) -> bool {
        let columns = filter.column_refs();
        !columns.is_empty()
            && columns
                .iter()
                .all(|c| c.name != ENTITY_COLUMN && self.schema.field_with_name(&c.name).is_ok())
    }

    fn new(
        inner: Arc<dyn TableProvider>,
        granted: &[ColumnSpec],
        entity: Option<&str>,
    ) -> datafusion::common::Result<GrantedTable> {
        let stored = inner.schema();
        let mut fields = Vec::new();
        let mut sources = Vec::new();
        // Rows stored before they had identities have none: the memory then knows their
        // subjects only.
        let row = stored.index_of(ROW_COLUMN).is_ok().then_some(ROW_COLUMN);
        let names = granted
            .iter()
            .map(|c| (c.name.as_str(), c.name.as_str()))
            .chain(entity.map(|e| (e, ENTITY_COLUMN)))
            .chain(row.map(|r| (r, r)));
        for (stored_name, shown) in names {
            let i = stored.index_of(stored_name)?;
            fields.push(Field::new(shown, stored.field(i).data_type().clone(), true));
            sources.push(i);
        }
        Ok(GrantedTable {
            inner,
            schema: Arc::new(Schema::new(fields)),
            sources,
        })
    }
}

#[async_trait::async_trait]
impl TableProvider for GrantedTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters on granted columns (which keep their stored names) reach the Parquet scan for
    /// row-group pruning; DataFusion still applies them above, so they are inexact.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.prunes(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let outer: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.sources.len()).collect(),
        };
        // The stored columns to read, each once (the entity key may also be granted).
        let mut read: Vec<usize> = Vec::new();
        for o in &outer {
            if !read.contains(&self.sources[*o]) {
                read.push(self.sources[*o]);
            }
        }
        let pruning: Vec<Expr> = filters.iter().filter(|f| self.prunes(f)).cloned().collect();
        let scan = self.inner.scan(state, Some(&read), &pruning, limit).await?;
        let scanned = scan.schema();
        let exprs: Vec<ProjectionExpr> = outer
            .iter()
            .map(|o| {
                let at = read
                    .iter()
                    .position(|r| *r == self.sources[*o])
                    .expect("every projected column is read");
                ProjectionExpr::new(
                    Arc::new(PhysicalColumn::new(scanned.field(at).name(), at)),
                    self.schema.field(*o).name().clone(),
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }
}

/// The runtime's desensitization functions for jobs, the same the gate applies:
/// `tg_mask(text)` (the DOMAIN.md mask of the type detected in the value, stars for no type)
/// and `tg_generalize(value, 'band:10' | 'round:2' | 'month')`.
pub fn desensitization_udfs() -> Vec<ScalarUDF> {
    use datafusion::logical_expr::{Signature, Volatility};
    vec![
        ScalarUDF::new_from_impl(Desensitize {
            name: "tg_mask",
            signature: Signature::any(1, Volatility::Immutable),
            key: None,
        }),
        ScalarUDF::new_from_impl(Desensitize {
            name: "tg_generalize",
            signature: Signature::any(2, Volatility::Immutable),
            key: None,
        }),
    ]
}

/// One of the runtime's desensitization functions: the gate's own masking rules, applied
/// inside a job (`tg_pseudonym` holds the scenario's key).
#[derive(Debug)]
struct Desensitize {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
    key: Option<crate::crypto::PseudonymKey>,
}

// One of each per job, and one key per job: equality by name is enough for the planner.
impl PartialEq for Desensitize {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Desensitize {}

impl std::hash::Hash for Desensitize {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for Desensitize {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::Utf8)
    }

    /// The rule is checked when the query is planned, so a wrong one is a planning error the
    /// scientist sees.
    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> datafusion::common::Result<arrow::datatypes::FieldRef> {
        if self.name == "tg_generalize" {
            generalization(args.scalar_arguments.get(1).copied().flatten())?;
        }
        Ok(Arc::new(Field::new(
            self.name,
            arrow::datatypes::DataType::Utf8,
            true,
        )))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::logical_expr::ColumnarValue;
        use tidegate_policy::Masking;
        let rule = match self.name {
            "tg_mask" => Masking::Mask,
            "tg_pseudonym" => Masking::Pseudonymize,
            _ => generalization(match args.args.get(1) {
                Some(ColumnarValue::Scalar(s)) => Some(s),
                _ => None,
            })?,
        };
        let value = args.args[0].to_array(args.number_rows)?;
        let text = arrow::compute::cast(&value, &arrow::datatypes::DataType::Utf8)?;
        let out: arrow::array::StringArray = text
            .as_string::<i32>()
            .iter()
            .map(|v| {
                v.map(|v| crate::gate::mask_value(rule, v, self.key.as_ref()))
                    .transpose()
            })
            .collect::<Result<_>>()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The generalization rule of `tg_generalize`, a quoted literal.
fn generalization(
    rule: Option<&datafusion::common::ScalarValue>,
) -> datafusion::common::Result<tidegate_policy::Masking> {
    use datafusion::common::ScalarValue;
    let Some(
        ScalarValue::Utf8(Some(text))
        | ScalarValue::Utf8View(Some(text))
        | ScalarValue::LargeUtf8(Some(text)),
    ) = rule
    else {
        return Err(DataFusionError::Plan(
            "tg_generalize takes its rule as a quoted literal: 'band:10', 'round:2' or 'month'"
                .into(),
        ));
    };
    let rule: tidegate_policy::Masking = text
        .parse()
        .map_err(|e: String| DataFusionError::Plan(format!("tg_generalize: {e}")))?;
    if rule.generalize("").is_none() {
        return Err(DataFusionError::Plan(
            "tg_generalize takes a generalization: band:W, round:N or month".into(),
        ));
    }
    Ok(rule)
}

/// `tg_pseudonym(text) -> text`: the scenario's keyed pseudonym of a value, inside a job.
pub fn pseudonym_udf(key: crate::crypto::PseudonymKey) -> ScalarUDF {
    ScalarUDF::new_from_impl(Desensitize {
        name: "tg_pseudonym",
        signature: datafusion::logical_expr::Signature::string(
            1,
            datafusion::logical_expr::Volatility::Immutable,
        ),
        key: Some(key),
    })
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
    let config = SessionConfig::new()
        .with_target_partitions(TARGET_PARTITIONS)
        .with_information_schema(false);
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
    for (i, t) in tables.iter().enumerate() {
        let table = register(&ctx, i, t)
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
        // The contributions run the input again: guests must give the same values.
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
    let main = physical(analysis.plan.clone()).await?;
    let contributions = match &analysis.contributions {
        Some(plan) => Some(physical(plan.clone()).await?),
        None => None,
    };
    let task = ctx.task_ctx();
    let run = async {
        let batches = collect_bounded(
            Arc::clone(&main),
            Arc::clone(&task),
            &limits,
            Some(limits.output_rows),
        )
        .await?;
        match contributions {
            Some(plan) => {
                // Every subject's contributions stream into the gate's tally: only each
                // cell's facts are kept, whatever the number of subjects.
                use futures::StreamExt;
                let mut tally = crate::release::Tally::new(
                    &batches,
                    &analysis,
                    limits.dominance,
                    limits.threshold,
                    limits.privacy,
                    limits.subjects,
                )?;
                let mut stream = datafusion::physical_plan::execute_stream(plan, Arc::clone(&task))
                    .map_err(|e| map_error(e, Stage::Running))?;
                while let Some(batch) = stream.next().await {
                    tally.add(&batch.map_err(|e| map_error(e, Stage::Running))?)?;
                }
                tally.finish(batches).map(|f| (f.batches, f.subject_sets))
            }
            None => Ok((batches, None)),
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
            () = cancel => Err(Error::Refused(
                crate::sandbox::CANCELLED.into(),
            )),
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
    })
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

/// The CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always available
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    let (done, answer) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("tidegate-job".into())
        .stack_size(8 << 20)
        .spawn(move || {
            let cpu = Arc::new(AtomicU64::new(0));
            let on_stop = Arc::clone(&cpu);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(TARGET_PARTITIONS)
                .thread_stack_size(8 << 20)
                .on_thread_stop(move || {
                    on_stop.fetch_add(thread_cpu_ns(), Ordering::Relaxed);
                })
                .enable_all()
                .build();
            let outcome = match runtime {
                Ok(runtime) => {
                    let before = thread_cpu_ns();
                    let outcome =
                        runtime.block_on(run_query_until(&sql, &tables, udfs, limits, cancel));
                    cpu.fetch_add(thread_cpu_ns() - before, Ordering::Relaxed);
                    // Stopping the workers runs their stop hooks.
                    runtime.shutdown_timeout(Duration::from_secs(5));
                    outcome
                }
                Err(e) => Err(Error::Internal(format!("job runtime: {e}"))),
            };
            let cost = JobCost {
                cpu_ms: cpu.load(Ordering::Relaxed) / 1_000_000,
            };
            let _ = done.send((outcome, cost));
        });
    if let Err(e) = spawned {
        return (
            Err(Error::Internal(format!("job thread: {e}"))),
            JobCost::default(),
        );
    }
    answer.await.unwrap_or_else(|_| {
        (
            Err(Error::Internal(
                "the job's thread ended without an answer".into(),
            )),
            JobCost::default(),
        )
    })
}

/// The result schema as the scientist sees it: without the hidden columns.
pub(crate) fn visible_schema(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with(RESERVED_PREFIX))
        .map(|f| f.as_ref().clone())
        .collect()
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

/// Whether a name is one of the runtime's hidden names, in any case.
fn is_reserved(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
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
            refusal = Some(format!("{what} is not allowed in a job; a job is one SELECT query"));
            return Ok(TreeNodeRecursion::Stop);
        }
        for e in node.expressions() {
            if e.column_refs().iter().any(|c| is_reserved(&c.name)) {
                refusal = Some(format!(
                    "columns named {RESERVED_PREFIX}* are reserved; name the columns you need instead of `*`"
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
                refusal = Some(format!("names starting with {RESERVED_PREFIX} are reserved"));
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

/// Hidden result columns `__tg_dp_0..`: each count or sum computed again with every
/// subject's contribution bounded, which the gate noises.
pub(crate) const BOUNDED_PREFIX: &str = "__tg_dp_";
/// Hidden result column: a group's subjects once each subject keeps at most its bounded
/// number of groups, for choosing the groups of a private release.
pub(crate) const BOUNDED_SUBJECTS: &str = "__tg_dp_subjects";
/// The batch with one more column.
pub(crate) fn append_column(
    batch: &RecordBatch,
    name: &str,
    values: arrow::array::ArrayRef,
) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        name,
        values.data_type().clone(),
        values.null_count() > 0,
    ));
    let mut columns = batch.columns().to_vec();
    columns.push(values);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::Internal(format!("hidden column {name}: {e}")))
}

/// Hidden result column: the group's sum is dominated by its top contributors (R-GATE 3).
pub(crate) const DOMINATED_COLUMN: &str = "__tg_dominated";
/// The implementations of DataFusion's own aggregate functions, by type.
static BUILTIN_AGGREGATES: std::sync::LazyLock<std::collections::HashSet<std::any::TypeId>> =
    std::sync::LazyLock::new(|| {
        datafusion::execution::SessionStateDefaults::default_aggregate_functions()
            .iter()
            .map(|f| {
                let any: &dyn std::any::Any = f.inner().as_ref();
                any.type_id()
            })
            .collect()
    });

/// What an aggregate of the plan is, by its implementation, never by the name it goes by:
/// DataFusion's own (its name then says which), or a module's function, which no rule of a
/// built-in applies to.
/// Returns the name a rule knows it by, and whether it is a module's.
pub(crate) fn aggregate_identity(f: &datafusion::logical_expr::AggregateUDF) -> (String, bool) {
    let any: &dyn std::any::Any = f.inner().as_ref();
    if BUILTIN_AGGREGATES.contains(&any.type_id()) {
        (f.name().to_ascii_lowercase(), false)
    } else {
        (format!("{} (a module's function)", f.name()), true)
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
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::DataType as ArrowType;
    use tidegate_policy::{ColumnTag, DataType};

    fn table(rows: usize) -> TableInput {
        let schema = Arc::new(Schema::new(vec![
            Field::new("spot", ArrowType::Utf8, false),
            Field::new("x", ArrowType::Float64, false),
            Field::new(ENTITY_COLUMN, ArrowType::Utf8, true),
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
                desensitization_udfs(),
                EngineLimits::default(),
            ))
            .unwrap();
        let b = &out.batches[0];
        let cell = |c: usize| b.column(c).as_string::<i32>().value(0).to_string();
        assert_eq!(cell(0), "138****5678");
        assert_eq!(cell(1), "30-39");
        assert_eq!(cell(2), "2026-05");
        assert_eq!(cell(3), "5.3");
        let refused = rt
            .block_on(run_query(
                "SELECT tg_generalize(x, 'pseudonymize') FROM t",
                &[table(10)],
                desensitization_udfs(),
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
