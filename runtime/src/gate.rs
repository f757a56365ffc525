//! The export gate: the runtime computes every check from the plan facts and the data, never
//! from the user's code, suppresses groups under the threshold and scans what remains.

use arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, Schema};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidegate_policy::{
    CheckOutcome, GateReport, Level, Masking, QueryShape, check_shape, mask, scan_value,
};

use crate::error::{Error, Result};
use crate::job::{DOMINATED_COLUMN, GROUP_KEY_PREFIX, NULL_SUBJECT_COLUMN, SUBJECTS_COLUMN};

/// What the gate needs to know besides the data.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    pub level: Level,
    pub threshold_k: u64,
    pub shape: &'a QueryShape,
    /// R-GATE 1, decided by the caller from the stored state.
    pub provenance: CheckOutcome,
    pub max_rows: u64,
    pub max_bytes: u64,
    /// The scenario's masking by output column (R-GATE 5).
    pub masking: &'a BTreeMap<String, Masking>,
    /// The scenario's differential privacy budget, when it enables differential privacy.
    pub privacy_budget: Option<f64>,
    /// The groups of the scenario's earlier exports that passed the gate (R-GATE 6).
    pub earlier: &'a [Groups],
    /// The scenario's pseudonymization key, for `pseudonymize` masking.
    pub pseudonyms: Option<&'a crate::crypto::PseudonymKey>,
}

/// The groups a result releases: each group's key (the values of its group-key columns, as
/// JSON) and its distinct subjects. Stored encrypted, to compare later releases against.
pub type Groups = BTreeMap<String, u64>;

/// The report, and the result as it would be released (suppressed groups and hidden columns
/// removed), as CSV.
#[derive(Debug)]
pub struct GateOutcome {
    pub report: GateReport,
    pub csv: Vec<u8>,
    /// The same rows as `csv`, typed: what the bundle carries as Parquet.
    pub released: Vec<RecordBatch>,
    /// The released groups, for later differencing checks.
    pub groups: Groups,
}

pub fn evaluate(input: &GateInput<'_>, batches: &[RecordBatch]) -> Result<GateOutcome> {
    let mut report = GateReport {
        threshold_k: input.threshold_k,
        ..GateReport::default()
    };
    report.push("provenance", input.provenance.clone());
    let shape_outcome = check_shape(input.level, input.shape);
    let shape_ok = matches!(shape_outcome, CheckOutcome::Pass(_));
    report.push("aggregation", shape_outcome);

    // Suppress groups with fewer than k distinct subjects, counted by the runtime, and groups
    // whose sum its top contributors dominate (R-GATE 3).
    let mut rows: Vec<GroupRow> = Vec::new();
    let (mut dominated_groups, mut dominance_checked) = (0u64, false);
    if input.shape.aggregated {
        for (b, batch) in batches.iter().enumerate() {
            let subjects = subjects_per_row(batch)?;
            let dominated = batch
                .column_by_name(DOMINATED_COLUMN)
                .and_then(|c| c.as_boolean_opt())
                .cloned();
            dominance_checked |= dominated.is_some();
            let keys = group_key_values(batch)?;
            for (row, key) in keys.into_iter().enumerate() {
                let count = subjects.value(row) as u64;
                let enough = count >= input.threshold_k;
                let dominant = dominated.as_ref().is_some_and(|d| d.value(row));
                if enough && dominant {
                    dominated_groups += 1;
                }
                rows.push(GroupRow {
                    batch: b,
                    row,
                    subjects: count,
                    key,
                    keep: enough && !dominant,
                });
            }
        }
    }
    let complementary = suppress_complementary(&mut rows);
    report.groups_total = rows.len() as u64;
    report.groups_suppressed = rows.iter().filter(|r| !r.keep).count() as u64;
    let mut groups = Groups::new();
    for r in rows.iter().filter(|r| r.keep) {
        if let Some(key) = &r.key {
            groups.insert(
                serde_json::Value::Array(key.clone()).to_string(),
                r.subjects,
            );
        }
    }
    let mut released = Vec::with_capacity(batches.len());
    for (b, batch) in batches.iter().enumerate() {
        let kept = if input.shape.aggregated {
            let keep: BooleanArray = rows
                .iter()
                .filter(|r| r.batch == b)
                .map(|r| Some(r.keep))
                .collect();
            debug_assert!(
                rows.iter()
                    .filter(|r| r.batch == b)
                    .enumerate()
                    .all(|(i, r)| r.row == i)
            );
            filter_record_batch(batch, &keep)
                .map_err(|e| Error::Internal(format!("suppression: {e}")))?
        } else {
            batch.clone()
        };
        released.push(apply_masking(
            &drop_hidden(&kept)?,
            input.masking,
            input.pseudonyms,
        )?);
    }
    if input.shape.aggregated {
        report.push(
            "complementary suppression",
            CheckOutcome::Pass(format!(
                "{complementary} more group(s) suppressed so that no total or margin reveals a suppressed one"
            )),
        );
    }
    if input.shape.aggregated {
        report.push(
            "threshold",
            CheckOutcome::Pass(format!(
                "{} group(s); {} suppressed in all (under k={} distinct subjects, dominated or complementary)",
                report.groups_total, report.groups_suppressed, input.threshold_k
            )),
        );
    } else if input.level > Level::L1 {
        report.push(
            "threshold",
            CheckOutcome::Fail("distinct subjects cannot be counted for a non-aggregate".into()),
        );
    }
    report.rows_released = released.iter().map(|b| b.num_rows() as u64).sum();
    if input.shape.aggregated {
        report.push(
            "dominance",
            CheckOutcome::Pass(if dominance_checked {
                format!(
                    "{dominated_groups} group(s) where the top 2 subjects hold over 90% of a sum suppressed"
                )
            } else {
                "no sum or average to check".to_string()
            }),
        );
        report.push("differencing", differencing(&groups, input));
    }

    report.push("identifiers", scan_identifiers(&released));
    report.push(
        "desensitization",
        describe_masking(&released, input.masking),
    );
    if let Some(epsilon) = input.privacy_budget {
        // Fail closed: a scenario that asked for noise never gets a release without it.
        report.push(
            "privacy budget",
            CheckOutcome::Fail(format!(
                "the scenario enables differential privacy (budget epsilon = {epsilon}); noisy release is not available on this platform yet, so nothing is released"
            )),
        );
    }

    let csv = to_csv(&released)?;
    let size = if report.rows_released > input.max_rows || csv.len() as u64 > input.max_bytes {
        CheckOutcome::Fail(format!(
            "{} rows and {} bytes; the limits are {} rows and {} bytes",
            report.rows_released,
            csv.len(),
            input.max_rows,
            input.max_bytes
        ))
    } else {
        CheckOutcome::Pass(format!(
            "{} rows and {} bytes",
            report.rows_released,
            csv.len()
        ))
    };
    report.push("size", size);
    if !shape_ok {
        // Nothing of a result that failed the shape check is kept, not even for review.
        return Ok(GateOutcome {
            report,
            csv: Vec::new(),
            released: Vec::new(),
            groups: Groups::new(),
        });
    }
    Ok(GateOutcome {
        report,
        csv,
        released,
        groups,
    })
}

/// One group of an aggregate result as the gate decides on it.
struct GroupRow {
    batch: usize,
    row: usize,
    subjects: u64,
    /// The values of its group keys (none for grouping sets).
    key: Option<Vec<serde_json::Value>>,
    keep: bool,
}

/// Complementary suppression: a total or margin over a slice of the table (all keys fixed but
/// one) minus the released cells would reveal a cell suppressed alone in that slice, so the
/// smallest released cell of such a slice goes too, until no slice has exactly one suppressed
/// cell. Returns how many more groups were suppressed.
fn suppress_complementary(rows: &mut [GroupRow]) -> u64 {
    let dims = rows
        .iter()
        .find_map(|r| r.key.as_ref().map(Vec::len))
        .unwrap_or(0);
    let mut more = 0u64;
    loop {
        let mut changed = false;
        for d in 0..dims {
            let mut slices: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, r) in rows.iter().enumerate() {
                if let Some(key) = &r.key {
                    let mut rest = key.clone();
                    rest.remove(d);
                    slices
                        .entry(serde_json::Value::Array(rest).to_string())
                        .or_default()
                        .push(i);
                }
            }
            for members in slices.values() {
                let suppressed = members.iter().filter(|i| !rows[**i].keep).count();
                if suppressed != 1 {
                    continue;
                }
                if let Some(&partner) = members
                    .iter()
                    .filter(|i| rows[**i].keep)
                    .min_by_key(|i| rows[**i].subjects)
                {
                    rows[partner].keep = false;
                    more += 1;
                    changed = true;
                }
            }
        }
        if !changed {
            return more;
        }
    }
}

/// Each row's group key values, carried by the runtime's hidden key columns whatever the query
/// names or shows; none when the query's grouping has no plain keys (grouping sets).
fn group_key_values(batch: &RecordBatch) -> Result<Vec<Option<Vec<serde_json::Value>>>> {
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
            if columns.is_empty() {
                return Ok(None);
            }
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

/// R-GATE 6: a group released again with a subject count that differs from an earlier
/// release by fewer than k would let the two be subtracted to learn about those few subjects.
/// The report names counts, never group values.
fn differencing(groups: &Groups, input: &GateInput<'_>) -> CheckOutcome {
    let k = input.threshold_k;
    let mut close = 0u64;
    let mut releases = 0u64;
    for earlier in input.earlier {
        let mut hit = false;
        for (key, subjects) in groups {
            if let Some(before) = earlier.get(key) {
                let d = subjects.abs_diff(*before);
                if d > 0 && d < k {
                    close += 1;
                    hit = true;
                }
            }
        }
        releases += u64::from(hit);
    }
    if close > 0 {
        CheckOutcome::Fail(format!(
            "{close} group(s) differ from {releases} earlier export(s) of this scenario by fewer than k={k} subjects: the difference would isolate them"
        ))
    } else {
        CheckOutcome::Pass(format!(
            "compared with {} earlier export(s) of this scenario; no group differs by fewer than k={k} subjects",
            input.earlier.len()
        ))
    }
}

fn subjects_per_row(batch: &RecordBatch) -> Result<Int64Array> {
    let col = |name: &str| -> Result<Int64Array> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .cloned()
            .ok_or_else(|| Error::Internal(format!("the result lacks {name}")))
    };
    let distinct = col(SUBJECTS_COLUMN)?;
    let null_subject = col(NULL_SUBJECT_COLUMN)?;
    Ok(distinct
        .iter()
        .zip(null_subject.iter())
        .map(|(d, n)| Some(d.unwrap_or(0) + n.unwrap_or(0)))
        .collect())
}

fn drop_hidden(batch: &RecordBatch) -> Result<RecordBatch> {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with("__tg"))
        .map(|(i, _)| i)
        .collect();
    batch
        .project(&keep)
        .map_err(|e| Error::Internal(format!("projection: {e}")))
}

/// R-GATE 5: the scenario's masking, applied before the scan so that a masked column passes.
/// A masked column becomes text.
fn apply_masking(
    batch: &RecordBatch,
    masking: &BTreeMap<String, Masking>,
    pseudonyms: Option<&crate::crypto::PseudonymKey>,
) -> Result<RecordBatch> {
    if masking.is_empty() {
        return Ok(batch.clone());
    }
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let Some(rule) = masking.get(field.name()) else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
            continue;
        };
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

fn mask_value(
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
    })
}

fn describe_masking(batches: &[RecordBatch], masking: &BTreeMap<String, Masking>) -> CheckOutcome {
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
            let rule = match rule {
                Masking::Mask => "mask",
                Masking::Redact => "redact",
                Masking::Pseudonymize => "pseudonymize",
            };
            if names.contains(column) {
                format!("`{column}`: {rule} applied")
            } else {
                format!("`{column}`: {rule} (not in this result)")
            }
        })
        .collect();
    CheckOutcome::Pass(parts.join("; "))
}

/// R-GATE 4: no value in the output is a sensitive data type. The report names the column
/// and the type, never the value.
fn scan_identifiers(batches: &[RecordBatch]) -> CheckOutcome {
    let mut findings: Vec<String> = Vec::new();
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return CheckOutcome::Pass("no rows to scan".into());
    };
    let mut scanned = 0u64;
    for (i, field) in schema.fields().iter().enumerate() {
        let mut hits = std::collections::BTreeMap::<String, u64>::new();
        for b in batches {
            let a = b.column(i);
            let mut check = |s: &str| {
                scanned += 1;
                for d in scan_value(s) {
                    *hits.entry(d.kind.to_string()).or_default() += 1;
                }
            };
            match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().iter().flatten().for_each(&mut check),
                DataType::LargeUtf8 => a.as_string::<i64>().iter().flatten().for_each(&mut check),
                DataType::Utf8View => a.as_string_view().iter().flatten().for_each(&mut check),
                DataType::Int64 => a
                    .as_primitive::<Int64Type>()
                    .iter()
                    .flatten()
                    .for_each(|v| check(&v.to_string())),
                DataType::Int32 => a
                    .as_primitive::<Int32Type>()
                    .iter()
                    .flatten()
                    .for_each(|v| check(&v.to_string())),
                // The integer part only: fraction digits of an average are noise, and an
                // identifier packed into a float can only survive in its integer part.
                DataType::Float64 => a
                    .as_primitive::<Float64Type>()
                    .iter()
                    .flatten()
                    .filter(|v| v.is_finite())
                    .for_each(|v| check(&format!("{:.0}", v.trunc()))),
                _ => {}
            }
        }
        for (kind, n) in hits {
            findings.push(format!(
                "{n} value(s) in column `{}` look like {kind}",
                field.name()
            ));
        }
    }
    if findings.is_empty() {
        CheckOutcome::Pass(format!("{scanned} value(s) scanned, none sensitive"))
    } else {
        CheckOutcome::Fail(findings.join("; "))
    }
}

pub(crate) fn to_csv(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        if batches.is_empty() {
            let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
            w.write(&empty)
                .map_err(|e| Error::Internal(format!("csv: {e}")))?;
        }
        for b in batches {
            w.write(b)
                .map_err(|e| Error::Internal(format!("csv: {e}")))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use tidegate_policy::ColumnTag;

    fn result(spots: &[&str], subjects: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("spot", DataType::Utf8, true),
                Field::new(format!("{GROUP_KEY_PREFIX}0"), DataType::Utf8, true),
                Field::new(SUBJECTS_COLUMN, DataType::Int64, true),
                Field::new(NULL_SUBJECT_COLUMN, DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(spots.to_vec())),
                Arc::new(StringArray::from(spots.to_vec())),
                Arc::new(Int64Array::from(subjects.to_vec())),
                Arc::new(Int64Array::from(vec![0; subjects.len()])),
            ],
        )
        .unwrap()
    }

    fn shape() -> QueryShape {
        QueryShape {
            aggregated: true,
            not_aggregated_reason: None,
            group_keys: vec![("spot".into(), Some(vec![ColumnTag::Dimension]))],
            aggregates: vec!["count".into()],
            isolating_aggregates: vec![],
        }
    }

    fn run(batch: RecordBatch) -> GateOutcome {
        run_with(batch, &BTreeMap::new(), None)
    }

    fn run_with(
        batch: RecordBatch,
        masking: &BTreeMap<String, Masking>,
        privacy_budget: Option<f64>,
    ) -> GateOutcome {
        let shape = shape();
        let input = GateInput {
            level: Level::L2,
            threshold_k: 10,
            shape: &shape,
            provenance: CheckOutcome::Pass("ok".into()),
            max_rows: 100,
            max_bytes: 1 << 20,
            masking,
            privacy_budget,
            earlier: &[],
            pseudonyms: None,
        };
        evaluate(&input, &[batch]).unwrap()
    }

    #[test]
    fn the_scenarios_masking_is_applied_before_the_identifier_scan() {
        let masking: BTreeMap<String, Masking> = [("spot".to_string(), Masking::Mask)].into();
        let out = run_with(
            result(&["13812345678", "West Lake"], &[20, 30]),
            &masking,
            None,
        );
        assert!(out.report.passed(), "{:?}", out.report);
        assert_eq!(
            String::from_utf8(out.csv).unwrap(),
            "spot\n138****5678\n*********\n"
        );
        let redact: BTreeMap<String, Masking> = [("spot".to_string(), Masking::Redact)].into();
        let out = run_with(result(&["13812345678"], &[20]), &redact, None);
        assert_eq!(String::from_utf8(out.csv).unwrap(), "spot\n***\n");
    }

    #[test]
    fn a_group_released_again_with_a_few_subjects_fewer_fails_the_differencing_check() {
        let shape = shape();
        let none = BTreeMap::new();
        let gate = |earlier: &[Groups], batch| {
            evaluate(
                &GateInput {
                    level: Level::L2,
                    threshold_k: 10,
                    shape: &shape,
                    provenance: CheckOutcome::Pass("ok".into()),
                    max_rows: 100,
                    max_bytes: 1 << 20,
                    masking: &none,
                    privacy_budget: None,
                    earlier,
                    pseudonyms: None,
                },
                &[batch],
            )
            .unwrap()
        };
        let first = gate(&[], result(&["West Lake", "Quiet Pond"], &[120, 40]));
        assert!(first.report.passed());
        assert_eq!(first.groups.len(), 2);
        // The same groups again, West Lake without one visitor: refused.
        let second = gate(
            std::slice::from_ref(&first.groups),
            result(&["West Lake", "Quiet Pond"], &[119, 40]),
        );
        let check = second.report.check("differencing").unwrap();
        assert!(!check.passed, "{}", check.detail);
        assert!(
            !check.detail.contains("West Lake"),
            "no group value in the report"
        );
        // The same population again (another measure), or one that differs by k or more: fine.
        let same = gate(
            std::slice::from_ref(&first.groups),
            result(&["West Lake", "Quiet Pond"], &[120, 40]),
        );
        assert!(same.report.passed());
        let far = gate(
            std::slice::from_ref(&first.groups),
            result(&["West Lake"], &[100]),
        );
        assert!(far.report.passed());
    }

    #[test]
    fn a_scenario_with_a_privacy_budget_releases_nothing_without_noise() {
        let out = run_with(result(&["West Lake"], &[20]), &BTreeMap::new(), Some(1.0));
        assert!(!out.report.passed());
        let check = out.report.check("privacy budget").unwrap();
        assert!(!check.passed);
    }

    #[test]
    fn groups_under_k_are_suppressed_and_hidden_columns_dropped() {
        let out = run(result(
            &["West Lake", "Quiet Pond", "Moon Cave"],
            &[120, 3, 2],
        ));
        assert!(out.report.passed());
        assert_eq!(out.report.groups_suppressed, 2);
        assert_eq!(String::from_utf8(out.csv).unwrap(), "spot\nWest Lake\n");
    }

    #[test]
    fn a_cell_suppressed_alone_takes_the_smallest_other_with_it() {
        // With a total released elsewhere, 120 + 40 + 30 = total - Moon Cave: so the smallest
        // released cell goes too.
        let out = run(result(
            &["West Lake", "Quiet Pond", "Old Street", "Moon Cave"],
            &[120, 40, 30, 3],
        ));
        assert_eq!(out.report.groups_suppressed, 2);
        assert_eq!(
            String::from_utf8(out.csv).unwrap(),
            "spot\nWest Lake\nQuiet Pond\n"
        );
        let check = out.report.check("complementary suppression").unwrap();
        assert!(
            check.detail.starts_with("1 more group(s)"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn in_a_two_way_table_every_row_and_column_keeps_zero_or_two_suppressed_cells() {
        // spot x month: one small cell; its row and its column each need a partner, and the
        // partners' own row and column then need one too.
        let keys = |cells: &[(&str, &str, i64)]| {
            let mut rows: Vec<GroupRow> = cells
                .iter()
                .enumerate()
                .map(|(i, (a, b, n))| GroupRow {
                    batch: 0,
                    row: i,
                    subjects: *n as u64,
                    key: Some(vec![(*a).into(), (*b).into()]),
                    keep: *n >= 10,
                })
                .collect();
            suppress_complementary(&mut rows);
            rows
        };
        let rows = keys(&[
            ("West Lake", "May", 50),
            ("West Lake", "June", 40),
            ("Quiet Pond", "May", 30),
            ("Quiet Pond", "June", 3),
        ]);
        // Quiet Pond/June is small: its row partner (Quiet Pond/May) and column partner (West
        // Lake/June) go, and then West Lake/May as well: all four.
        assert!(rows.iter().all(|r| !r.keep));
        let rows = keys(&[
            ("West Lake", "May", 50),
            ("West Lake", "June", 40),
            ("Quiet Pond", "May", 30),
            ("Quiet Pond", "June", 35),
        ]);
        assert!(
            rows.iter().all(|r| r.keep),
            "nothing small, nothing suppressed"
        );
    }

    #[test]
    fn a_mobile_packed_into_a_float_is_caught_and_long_fractions_are_not() {
        let batch = |v: f64| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)])),
                vec![Arc::new(arrow::array::Float64Array::from(vec![v]))],
            )
            .unwrap()
        };
        let outcome = |v| match scan_identifiers(&[batch(v)]) {
            CheckOutcome::Pass(_) => "pass".to_string(),
            CheckOutcome::Fail(d) => d,
        };
        assert_eq!(
            outcome(13812345678.0),
            "1 value(s) in column `x` look like mobile"
        );
        assert_eq!(outcome(46.398_268_398_268_4), "pass");
    }

    #[test]
    fn an_identifier_in_the_output_fails_without_quoting_it() {
        let out = run(result(&["11010519491231002X"], &[20]));
        let ids = out.report.check("identifiers").unwrap();
        assert!(!ids.passed);
        assert_eq!(
            ids.detail,
            "1 value(s) in column `spot` look like resident_id"
        );
    }
}
