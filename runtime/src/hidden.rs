//! The runtime's side of the hidden vocabulary (the names are the policy's,
//! [`tidegate_policy::hidden`]): adding a hidden column to a batch, reading the group keys the
//! hidden key columns carry, and stripping every hidden column before a result is shown.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
pub(crate) use tidegate_policy::hidden::*;

use crate::error::{Error, Result};

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

/// The batch without its hidden columns.
pub(crate) fn drop_hidden(batch: &RecordBatch) -> Result<RecordBatch> {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !is_reserved(f.name()))
        .map(|(i, _)| i)
        .collect();
    batch
        .project(&keep)
        .map_err(|e| Error::Internal(format!("projection: {e}")))
}

/// The result schema as the scientist sees it: without the hidden columns.
pub(crate) fn visible_schema(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .filter(|f| !is_reserved(f.name()))
        .map(|f| f.as_ref().clone())
        .collect()
}

/// Each row's group key values, carried by the runtime's hidden key columns whatever the query
/// names or shows; none when the query's grouping has no plain keys (grouping sets).
pub(crate) fn group_key_values(batch: &RecordBatch) -> Result<Vec<Option<Vec<serde_json::Value>>>> {
    let schema = batch.schema();
    let columns: Vec<&arrow::array::ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name().starts_with(GROUP_KEY_PREFIX))
        .map(|(i, _)| batch.column(i))
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            let mut key = Vec::with_capacity(columns.len());
            for column in &columns {
                key.push(if column.is_null(row) {
                    serde_json::Value::Null
                } else {
                    arrow::util::display::array_value_to_string(column, row)
                        .map_err(|e| Error::Internal(format!("group key: {e}")))?
                        .into()
                });
            }
            Ok(Some(key))
        })
        .collect()
}

/// Each row's group key as JSON text, to match groups across results and releases.
pub(crate) fn group_keys(batch: &RecordBatch) -> Result<Vec<Option<String>>> {
    Ok(group_key_values(batch)?
        .into_iter()
        .map(|k| k.map(|k| serde_json::Value::Array(k).to_string()))
        .collect())
}
