//! One home for masking: the scenario's masking rules applied to a result by the gate
//! (R-GATE 5), and the same rules as functions a job may call (`tg_mask`, `tg_generalize`,
//! `tg_pseudonym`), so that a value masked inside a job and one masked at the gate are the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::ScalarUDF;
use tidegate_policy::{CheckOutcome, Masking, mask, scan_value};

use crate::error::{Error, Result};

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
                v.map(|v| mask_value(rule, v, self.key.as_ref()))
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

/// The masking rule of an output column: the one named after it, or else the one named after
/// a granted column it is computed from (a rename does not unmask it).
pub(crate) fn rule_for<'m>(
    name: &str,
    masking: &'m BTreeMap<String, Masking>,
    sources: &BTreeMap<String, Vec<String>>,
) -> Option<&'m Masking> {
    masking.get(name).or_else(|| {
        sources.get(name).into_iter().flatten().find_map(|source| {
            // Read inside the runtime's own masking function: done when it is the rule's.
            let (inside, column) = match source.split_once(':') {
                Some((f, c)) => (Some(f), c),
                None => (None, source.as_str()),
            };
            let rule = masking.get(column)?;
            match (inside, rule) {
                (Some("tg_pseudonym"), Masking::Pseudonymize)
                | (Some("tg_mask"), Masking::Mask) => None,
                _ => Some(rule),
            }
        })
    })
}

/// R-GATE 5: the scenario's masking, applied before the scan so that a masked column passes.
/// A masked column becomes text.
pub(crate) fn apply_masking(
    batch: &RecordBatch,
    masking: &BTreeMap<String, Masking>,
    sources: &BTreeMap<String, Vec<String>>,
    pseudonyms: Option<&crate::crypto::PseudonymKey>,
) -> Result<RecordBatch> {
    if masking.is_empty() {
        return Ok(batch.clone());
    }
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let Some(rule) = rule_for(field.name(), masking, sources) else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
            continue;
        };
        // A decimal rounded stays the decimal it was (same precision and scale): exact
        // money keeps its type in the bundle.
        if let (Masking::Round(places), DataType::Decimal128(_, scale)) = (rule, column.data_type())
        {
            fields.push(field.as_ref().clone());
            columns.push(round_decimal(column, *scale, *places)?);
            continue;
        }
        let text = arrow::compute::cast(column, &DataType::Utf8)
            .map_err(|e| Error::Internal(format!("masking {}: {e}", field.name())))?;
        let masked: arrow::array::StringArray = text
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(|v| mask_value(*rule, v, pseudonyms)).transpose())
            .collect::<Result<_>>()?;
        fields.push(arrow::datatypes::Field::new(
            field.name(),
            DataType::Utf8,
            true,
        ));
        columns.push(Arc::new(masked) as arrow::array::ArrayRef);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::Internal(format!("masking: {e}")))
}

/// Every value of a decimal column of `scale` places rounded to `places`, halves away from
/// zero, in the same type.
fn round_decimal(
    column: &arrow::array::ArrayRef,
    scale: i8,
    places: u32,
) -> Result<arrow::array::ArrayRef> {
    let drop = i32::from(scale) - places as i32;
    if drop <= 0 {
        return Ok(Arc::clone(column));
    }
    let step = 10i128
        .checked_pow(drop as u32)
        .ok_or_else(|| Error::Internal("rounding step out of range".into()))?;
    let half = step / 2;
    let rounded: arrow::array::Decimal128Array = column
        .as_primitive::<arrow::datatypes::Decimal128Type>()
        .unary_opt(|v| {
            let q = if v >= 0 {
                v.checked_add(half)?
            } else {
                v.checked_sub(half)?
            } / step;
            q.checked_mul(step)
        });
    let rounded = rounded.with_data_type(column.data_type().clone());
    Ok(Arc::new(rounded))
}

/// One value under one masking rule (the gate's, and the jobs' `tg_*` functions).
pub(crate) fn mask_value(
    rule: Masking,
    value: &str,
    pseudonyms: Option<&crate::crypto::PseudonymKey>,
) -> Result<String> {
    Ok(match rule {
        Masking::Redact => "***".to_string(),
        Masking::Mask => match scan_value(value).first() {
            Some(d) => mask(d.kind, value),
            None => "*".repeat(value.chars().count()),
        },
        Masking::Pseudonymize => pseudonyms
            .ok_or_else(|| Error::Internal("no pseudonymization key for this scenario".into()))?
            .pseudonym(value),
        generalization => generalization.generalize(value).unwrap_or_default(),
    })
}

pub(crate) fn describe_masking(
    batches: &[RecordBatch],
    masking: &BTreeMap<String, Masking>,
    sources: &BTreeMap<String, Vec<String>>,
) -> CheckOutcome {
    if masking.is_empty() {
        return CheckOutcome::Pass("the scenario names no masking".into());
    }
    let names: Vec<String> = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let parts: Vec<String> = masking
        .iter()
        .map(|(column, rule)| {
            // The output columns computed from it under other names.
            let renamed: Vec<&String> = names
                .iter()
                .filter(|n| {
                    *n != column
                        && !masking.contains_key(*n)
                        && rule_for(n, masking, sources) == Some(rule)
                        && sources.get(*n).is_some_and(|s| {
                            s.iter()
                                .any(|s| s.rsplit(':').next() == Some(column.as_str()))
                        })
                })
                .collect();
            let also = if renamed.is_empty() {
                String::new()
            } else {
                let shown: Vec<String> = renamed.iter().map(|n| format!("`{n}`")).collect();
                format!(" (also to {}, computed from it)", shown.join(", "))
            };
            if names.contains(column) || !renamed.is_empty() {
                format!("`{column}`: {rule} applied{also}")
            } else {
                format!("`{column}`: {rule} (not in this result)")
            }
        })
        .collect();
    CheckOutcome::Pass(parts.join("; "))
}
