//! Tables at rest: Parquet inside the chunked AES-256-GCM object format of `crypto`. A job's
//! DataFusion session scans them through a read-only object store that decrypts, in memory,
//! only the ranges the scan reads; small objects (results) are decoded whole, row groups in
//! parallel.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::errors::ParquetError;

use datafusion::object_store::{self, ObjectMeta, ObjectStore, path::Path as StorePath};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::crypto::SealedReader;
use crate::error::{Error, Result};

/// A sealed object read by range: each range a scan asks for is read and authenticated on its
/// own, so a scan decrypts only the footer and the column chunks of the columns it reads,
/// never writes plaintext anywhere, and holds it only while decoding.
#[derive(Clone)]
pub struct SealedSource(Arc<SealedReader>);

impl SealedSource {
    pub fn new(reader: SealedReader) -> SealedSource {
        SealedSource(Arc::new(reader))
    }

    /// `length` plaintext bytes from `start`, authenticated.
    pub fn read(&self, start: u64, length: usize) -> Result<bytes::Bytes> {
        self.0.read_at(start, length).map(bytes::Bytes::from)
    }

    /// The plaintext length.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Plaintext bytes the decoder read so far, over every clone: what a job scanned.
    pub fn bytes_read(&self) -> u64 {
        self.0.bytes_read()
    }

    /// Plaintext bytes decrypted so far, over every clone.
    pub fn bytes_decrypted(&self) -> u64 {
        self.0.bytes_decrypted()
    }
}

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

pub(crate) fn to_parquet_with_schema(
    batches: &[RecordBatch],
    schema: Arc<Schema>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, None)
        .map_err(|e| Error::Internal(format!("parquet: {e}")))?;
    for b in batches {
        w.write(b)
            .map_err(|e| Error::Internal(format!("parquet: {e}")))?;
    }
    w.close()
        .map_err(|e| Error::Internal(format!("parquet: {e}")))?;
    Ok(out)
}

/// Every column of Parquet held in memory.
pub(crate) fn from_parquet(bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    read_parquet(bytes::Bytes::from(bytes), None)
}

/// Decodes Parquet held in memory: only the named columns (all when `None`), its row groups
/// spread over the machine's cores, batches in file order. Damage is an integrity error.
pub fn read_parquet(source: bytes::Bytes, columns: Option<&[String]>) -> Result<Vec<RecordBatch>> {
    let damaged = |e: ParquetError| Error::Integrity(format!("stored Parquet: {e}"));
    let loaded =
        ArrowReaderMetadata::load(&source, ArrowReaderOptions::default()).map_err(damaged)?;
    let metadata = Arc::clone(loaded.metadata());
    let mask = match columns {
        None => ProjectionMask::all(),
        Some(names) => {
            let arrow = loaded.schema();
            let mut indices = Vec::with_capacity(names.len());
            for name in names {
                indices.push(arrow.index_of(name).map_err(|_| {
                    Error::Integrity(format!("stored Parquet lacks column {name}"))
                })?);
            }
            ProjectionMask::roots(metadata.file_metadata().schema_descr(), indices)
        }
    };
    let groups = metadata.num_row_groups();
    let decode = |row_groups: Vec<usize>| -> Result<Vec<RecordBatch>> {
        ParquetRecordBatchReaderBuilder::new_with_metadata(source.clone(), loaded.clone())
            .with_projection(mask.clone())
            .with_row_groups(row_groups)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(damaged)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Integrity(format!("stored Parquet: {e}")))
    };
    let threads = crate::threads::parallelism().min(groups);
    if threads <= 1 {
        return decode((0..groups).collect());
    }
    // Contiguous runs of row groups per thread keep the batches in file order.
    let per = groups.div_ceil(threads);
    let parts: Vec<Result<Vec<RecordBatch>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let run: Vec<usize> = (t * per..((t + 1) * per).min(groups)).collect();
                s.spawn(move || decode(run))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("a decoding thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// The stored objects one job may read, as an object store DataFusion scans like any other
/// (parallel, projected, pipelined): every range read decrypts and authenticates only the
/// chunks it covers, in memory. Read-only; it holds nothing else.
#[derive(Debug, Default)]
pub struct SealedStore {
    objects: std::collections::BTreeMap<String, SealedSource>,
}

impl std::fmt::Debug for SealedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedSource({} bytes)", self.0.len())
    }
}

impl std::fmt::Display for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedStore({} objects)", self.objects.len())
    }
}

impl SealedStore {
    /// Makes `source` readable at `path` (e.g. `datasets/ds_1/v1.parquet`).
    pub fn insert(&mut self, path: &str, source: SealedSource) {
        self.objects.insert(path.to_string(), source);
    }

    fn meta(location: &StorePath, source: &SealedSource) -> ObjectMeta {
        ObjectMeta {
            location: location.clone(),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size: source.len(),
            e_tag: None,
            version: None,
        }
    }

    fn under(&self, prefix: Option<&StorePath>) -> Vec<ObjectMeta> {
        let prefix = prefix.map(|p| p.as_ref().to_string()).unwrap_or_default();
        self.objects
            .iter()
            .filter(|(path, _)| path.starts_with(&prefix))
            .map(|(path, source)| Self::meta(&StorePath::from(path.as_str()), source))
            .collect()
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported {
        source: "the job's store is read-only".into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for SealedStore {
    async fn put_opts(
        &self,
        _: &StorePath,
        _: object_store::PutPayload,
        _: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _: &StorePath,
        _: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let source =
            self.objects
                .get(location.as_ref())
                .ok_or_else(|| object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "no such object for this job".into(),
                })?;
        let meta = Self::meta(location, source);
        let range = match &options.range {
            Some(r) => r
                .as_range(source.len())
                .map_err(|e| object_store::Error::Generic {
                    store: "tidegate",
                    source: Box::new(e),
                })?,
            None => 0..source.len(),
        };
        let data = if options.head {
            bytes::Bytes::new()
        } else {
            source
                .read(range.start, (range.end - range.start) as usize)
                .map_err(|e| object_store::Error::Generic {
                    store: "tidegate",
                    source: Box::new(e),
                })?
        };
        Ok(object_store::GetResult {
            payload: object_store::GetResultPayload::Stream(
                futures::stream::once(futures::future::ready(Ok(data))).boxed(),
            ),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        futures::stream::iter(self.under(prefix).into_iter().map(Ok)).boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<object_store::ListResult> {
        Ok(object_store::ListResult {
            common_prefixes: Vec::new(),
            objects: self.under(prefix),
        })
    }

    async fn copy_opts(
        &self,
        _: &StorePath,
        _: &StorePath,
        _: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use parquet::file::properties::WriterProperties;

    fn table(rows: i64) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("v{}", i % 7)),
                )),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .build();
        let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    #[test]
    fn row_groups_decoded_in_parallel_come_back_whole_and_in_order() {
        let batches = read_parquet(bytes::Bytes::from(table(10_500)), None).unwrap();
        let n: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(n, (0..10_500).collect::<Vec<_>>());
    }

    #[test]
    fn only_the_columns_asked_for_are_decoded() {
        let batches =
            read_parquet(bytes::Bytes::from(table(3_000)), Some(&["s".to_string()])).unwrap();
        assert_eq!(batches[0].num_columns(), 1);
        assert_eq!(batches[0].schema().field(0).name(), "s");
        let missing =
            read_parquet(bytes::Bytes::from(table(10)), Some(&["x".to_string()])).unwrap_err();
        assert!(missing.to_string().contains("lacks column x"), "{missing}");
    }

    #[test]
    fn the_jobs_store_serves_ranges_of_its_sealed_objects_and_nothing_else() {
        use datafusion::object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};
        let dir = tempfile::tempdir().unwrap();
        let key = crate::crypto::DataKey::generate();
        let plain = table(5_000);
        let path = dir.path().join("o.tge");
        std::fs::write(&path, key.seal_object("datasets/d/v1", &plain)).unwrap();
        let reader = key
            .reader("datasets/d/v1", std::fs::File::open(&path).unwrap())
            .unwrap();
        let mut store = SealedStore::default();
        store.insert("datasets/d/v1.parquet", SealedSource::new(reader));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let at = StorePath::from("datasets/d/v1.parquet");
            let got = store
                .get_opts(
                    &at,
                    GetOptions {
                        range: Some(GetRange::Bounded(100..300)),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&got[..], &plain[100..300]);
            assert_eq!(store.head(&at).await.unwrap().size, plain.len() as u64);
            let other = StorePath::from("datasets/e/v1.parquet");
            assert!(matches!(
                store.get_opts(&other, GetOptions::default()).await,
                Err(object_store::Error::NotFound { .. })
            ));
            assert!(matches!(
                store.put(&at, PutPayload::from_static(b"x")).await,
                Err(object_store::Error::NotSupported { .. })
            ));
        });
    }

    #[test]
    fn damaged_parquet_is_an_integrity_error() {
        let mut bytes = table(10);
        bytes.truncate(bytes.len() / 2);
        let got = read_parquet(bytes::Bytes::from(bytes), None);
        assert!(matches!(got, Err(Error::Integrity(_))), "{got:?}");
    }
}
