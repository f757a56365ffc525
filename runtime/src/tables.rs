//! The granted tables of a job as DataFusion sees them: only the granted columns and the
//! hidden entity key (and each stored row's identity), from batches in memory or a sealed
//! Parquet object read by DataFusion's own scan.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::DataFusionError;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::TableProviderFilterPushDown;
use datafusion::object_store::ObjectStore;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::SessionContext;
use tidegate_policy::ColumnSpec;

use crate::error::{Error, Result};
use crate::hidden::{self, append_column};
use crate::storage::SealedStore;

/// Partitions of a job's plan: the machine's two cores.
pub(crate) const TARGET_PARTITIONS: usize = 2;

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
    /// Batches whose schema is the granted columns followed by [`hidden::ENTITY`] (local files
    /// of `tidegate dev run`, tests, benchmarks).
    Memory(Vec<RecordBatch>),
    /// A stored Parquet object at `object` in `store`, scanned by DataFusion itself: only the
    /// granted columns are exposed, and the stored `entity` column as [`hidden::ENTITY`].
    Sealed {
        store: Arc<SealedStore>,
        object: String,
        entity: Option<String>,
    },
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

/// `batch` with its rows' identities in [`hidden::ROW`] (kept when it has them).
pub(crate) fn with_row_ids(batch: &RecordBatch) -> Result<RecordBatch> {
    if batch.schema().index_of(hidden::ROW).is_ok() {
        return Ok(batch.clone());
    }
    append_column(batch, hidden::ROW, Arc::new(row_ids(batch)?))
}

/// The address a job's sealed table `index` is read at: `tidegate://j{job}-t{index}`, where
/// `job` names the job (a random token, so that executors shared by jobs resolve each job's
/// own store by the address alone).
pub(crate) fn store_address(job: &str, index: usize) -> String {
    format!("tidegate://j{job}-t{index}")
}

/// The provider of one granted table.
pub(crate) async fn register(
    ctx: &SessionContext,
    job: &str,
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
            let base = store_address(job, index);
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
/// names and its entity key under [`hidden::ENTITY`]; no other column of the object is
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
                .all(|c| c.name != hidden::ENTITY && self.schema.field_with_name(&c.name).is_ok())
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
        let row = stored.index_of(hidden::ROW).is_ok().then_some(hidden::ROW);
        let names = granted
            .iter()
            .map(|c| (c.name.as_str(), c.name.as_str()))
            .chain(entity.map(|e| (e, hidden::ENTITY)))
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
