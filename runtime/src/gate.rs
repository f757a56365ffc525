//! The export gate: the runtime computes every check from the plan facts and the data, never
//! from the user's code, suppresses groups under the threshold and scans what remains.

use arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, Schema};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidegate_policy::{
    CheckOutcome, ColumnNoise, DatasetRows, DominanceRule, GateReport, Ledger, Level, Masking,
    NoisePlan, QueryShape, SubjectSet, check_shape, differs_by_fewer_than, discrete_laplace,
    noised, plan_noise, scan_value,
};

use crate::error::{Error, Result};
use crate::hidden::{self, BOUNDED_SUBJECTS, drop_hidden, group_key_values, group_keys};
use crate::masking::{apply_masking, describe_masking};

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
    /// The scenario's differential privacy budget and this request's spending, when the
    /// scenario uses differential privacy (R-GATE 7).
    pub privacy: Option<PrivacySpend>,
    /// The groups of the scenario's earlier exports that passed the gate (R-GATE 6).
    pub earlier: &'a [Earlier],
    /// The scenario's pseudonymization key, for `pseudonymize` masking.
    pub pseudonyms: Option<&'a crate::crypto::PseudonymKey>,
    /// The dominance rules the job's cells were checked against (R-GATE 3).
    pub dominance: DominanceRule,
    /// The gate's memory: every earlier exact release over the datasets the job read, and the
    /// sets of subjects of this result's rows (R-GATE 6). `None` when the result has none (no
    /// subjects, or differential privacy).
    pub memory: Option<Memory<'a>>,
}

/// What the gate remembers and what this result would add to it.
#[derive(Debug, Clone)]
pub struct Memory<'a> {
    /// This export's id, as later reasons will name it.
    pub origin: &'a str,
    /// Per dataset with subjects that the job read: its memory and this result's rows over it.
    pub datasets: &'a [DatasetMemory],
}

/// One dataset's memory, and what the result holds of the rows stored in it. A row of a join
/// is each side's own stored row in each side's memory, as a plain query over that table
/// names it.
#[derive(Debug, Clone)]
pub struct DatasetMemory {
    pub dataset: String,
    /// Everything released over the dataset so far.
    pub ledger: Arc<Ledger>,
    /// The sums released over it, once a cell over it has been suppressed because a few
    /// subjects dominate it (`None` until then).
    pub value_ledger: Option<Arc<Ledger>>,
    /// Per result row (in batch order), its sets of the dataset's rows and subjects, and which
    /// are a sum's rows.
    pub rows: DatasetRows,
}

/// What a passing release adds to the gate's memory, per dataset (in the order of
/// [`Memory::datasets`]).
#[derive(Debug, Clone, Default)]
pub struct Remembered {
    pub datasets: Vec<Kept>,
}

/// What a passing release adds to one dataset's memory.
#[derive(Debug, Clone)]
pub struct Kept {
    pub dataset: String,
    pub released: Vec<SubjectSet>,
    /// Sets suppressed for fewer than k subjects: never to become determinable.
    pub protected: Vec<SubjectSet>,
    /// The released sets that are a sum's rows.
    pub value_released: Vec<SubjectSet>,
    /// The sums of cells suppressed because a few subjects dominate them: never to become
    /// determinable from other sums.
    pub dominated: Vec<SubjectSet>,
    /// The ledger with this release in it, to keep when it is recorded.
    pub ledger: Arc<Ledger>,
    /// The ledger of sums with this release in it (when the dataset keeps one).
    pub value_ledger: Option<Arc<Ledger>>,
}

/// A scenario's privacy budget as one export request would spend it.
#[derive(Debug, Clone, Copy)]
pub struct PrivacySpend {
    pub budget: f64,
    /// Spent by the scenario's earlier exports.
    pub spent: f64,
    /// What this request asks to spend.
    pub epsilon: Option<f64>,
}

/// An earlier export of the scenario, as differencing compares with it.
#[derive(Debug, Clone)]
pub struct Earlier {
    pub groups: Groups,
    /// It was computed from the same dataset versions as this result. Then a group that
    /// differs by fewer than k subjects can only come from the query (a tracker): refused.
    /// Over newer data the difference may be the data's own new subjects: flagged for the
    /// reviewers instead.
    pub same_data: bool,
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
    /// The epsilon the noise of this release cost, charged when it is kept.
    pub epsilon_spent: Option<f64>,
    /// What the release adds to the gate's memory, when it is audited.
    pub remembered: Option<Remembered>,
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

    // R-GATE 7: decided before anything is released, the choice of groups included; noise is
    // drawn for kept groups only.
    let noise = input.privacy.map(|p| {
        plan_noise(
            input.shape.privacy.as_ref(),
            p.epsilon,
            p.budget,
            p.spent,
            input.threshold_k,
        )
        .map(|plan| (p, plan))
    });
    let selection = match &noise {
        Some(Ok((_, plan))) => Some(&plan.selection),
        _ => None,
    };
    let rng = ring::rand::SystemRandom::new();
    let mut withheld = 0u64;

    // Suppress groups with fewer than k distinct subjects, counted by the runtime, and groups
    // whose sum its top contributors dominate (R-GATE 3).
    let mut rows: Vec<GroupRow> = Vec::new();
    let (mut dominated_groups, mut dominance_checked) = (0u64, false);
    if input.shape.aggregated {
        for (b, batch) in batches.iter().enumerate() {
            let subjects = subjects_per_row(batch)?;
            let bounded_subjects = match selection {
                Some(_) => Some(
                    batch
                        .column_by_name(BOUNDED_SUBJECTS)
                        .and_then(|c| c.as_primitive_opt::<Float64Type>())
                        .cloned()
                        .ok_or_else(|| Error::Internal("no bounded subject counts".into()))?,
                ),
                None => None,
            };
            let dominated = batch
                .column_by_name(hidden::DOMINATED)
                .and_then(|c| c.as_boolean_opt())
                .cloned();
            dominance_checked |= dominated.is_some();
            let keys = group_key_values(batch)?;
            for (row, key) in keys.into_iter().enumerate() {
                let count = subjects.value(row) as u64;
                let mut enough = count >= input.threshold_k;
                if let (Some(sel), Some(bounded)) = (selection, &bounded_subjects)
                    && enough
                {
                    let noise = discrete_laplace(&mut words(&rng), sel.scale)
                        .map_err(|e| Error::Internal(format!("noise: {e}")))?;
                    let noisy = bounded.value(row).round() + noise as f64;
                    if noisy < sel.threshold {
                        enough = false;
                        withheld += 1;
                    }
                }
                // Under differential privacy the noise bounds every subject's influence, and an
                // exact suppression would undo it (a cell gone for certain when one subject's
                // value is large): dominance decides exact releases only.
                let dominant =
                    input.privacy.is_none() && dominated.as_ref().is_some_and(|d| d.value(row));
                if enough && dominant {
                    dominated_groups += 1;
                }
                rows.push(GroupRow {
                    batch: b,
                    row,
                    subjects: count,
                    key,
                    keep: enough && !dominant,
                    dominated: enough && dominant,
                });
            }
        }
    }
    // R-GATE 6, the gate's memory: a cell whose subjects differ from a cell released earlier
    // over the same data (by anyone), or from another of this release, by fewer than k is
    // suppressed, however its key is spelled.
    let memory = match (&input.memory, input.shape.aggregated, input.privacy) {
        (Some(m), true, None) => {
            if m.datasets
                .iter()
                .any(|d| d.rows.sets.len() != rows.len() || d.rows.values.len() != rows.len())
            {
                return Err(Error::Internal(
                    "the result's sets of subjects do not match its rows".into(),
                ));
            }
            Some(m)
        }
        _ => None,
    };
    let mut close_to: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(m) = memory {
        close_to = suppress_close(&mut rows, m, input.threshold_k);
    }
    // The same for complementary suppression: it follows exact suppressions only.
    let complementary = if input.privacy.is_none() {
        suppress_complementary(&mut rows)
    } else {
        0
    };
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
    let mut kept_batches = Vec::with_capacity(batches.len());
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
        kept_batches.push(kept);
    }
    if let Some(Ok((_, plan))) = &noise {
        kept_batches = add_noise(kept_batches, &plan.columns, &rng)?;
    }
    let mut released = Vec::with_capacity(kept_batches.len());
    for kept in &kept_batches {
        released.push(apply_masking(
            &drop_hidden(kept)?,
            input.masking,
            &input.shape.column_sources,
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
                let d = input.dominance;
                format!(
                    "{dominated_groups} group(s) suppressed where, for a count, a sum or a numeric column a sum reads, the top {} subjects hold over {}% of the cell or the rest is under {}% of the largest (each subject's total after the whole plan), or fewer than k subjects (but some) make it",
                    d.n, d.k_percent, d.p_percent
                )
            } else {
                "no cell to check".to_string()
            }),
        );
        report.differencing_suppressed = close_to.values().sum::<u64>();
        report.push(
            "differencing",
            differencing(&groups, input, memory, &close_to),
        );
    }
    let mut remembered = None;
    if let Some(m) = memory {
        let (outcome, kept) = audit(&rows, m, input.threshold_k);
        report.push("inference", outcome);
        remembered = Some(kept);
    }

    report.push("identifiers", scan_identifiers(&released));
    report.push(
        "desensitization",
        describe_masking(&released, input.masking, &input.shape.column_sources),
    );
    let mut epsilon_spent = None;
    match &noise {
        None => {}
        Some(Err(reason)) => report.push("privacy budget", CheckOutcome::Fail(reason.clone())),
        Some(Ok((p, plan))) => {
            let epsilon = p.epsilon.unwrap_or_default();
            epsilon_spent = Some(epsilon);
            report.push(
                "privacy budget",
                CheckOutcome::Pass(describe_noise(p, epsilon, plan, withheld, input.shape)),
            );
        }
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
    if !shape_ok || matches!(noise, Some(Err(_))) {
        // Nothing of a result that failed the shape check, or that needed noise and got
        // none, is kept, not even for review.
        return Ok(GateOutcome {
            report,
            csv: Vec::new(),
            released: Vec::new(),
            groups: Groups::new(),
            epsilon_spent: None,
            remembered: None,
        });
    }
    Ok(GateOutcome {
        report,
        csv,
        released,
        groups,
        epsilon_spent,
        remembered,
    })
}

/// Suppresses every kept row with a set of subjects that differs by fewer than `k` (but some)
/// from a cell released earlier over the same data or from a set of a row kept before it in
/// this release. Returns how many rows each earlier export (or this release) caused to go.
fn suppress_close(rows: &mut [GroupRow], memory: &Memory<'_>, k: u64) -> BTreeMap<String, u64> {
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    // Per dataset, the sets of the rows kept so far in this release.
    let mut kept: Vec<Vec<&SubjectSet>> = vec![Vec::new(); memory.datasets.len()];
    for (i, r) in rows.iter_mut().enumerate() {
        if !r.keep {
            continue;
        }
        // A cell of k subjects may hold the rows of fewer of one dataset (a crowd of one table
        // with one subject's rows of another, by UNION ALL): that dataset's part is theirs.
        let thin = memory.datasets.iter().any(|d| {
            d.rows.sets[i].iter().any(|set| {
                let subjects: std::collections::BTreeSet<u64> = set.iter().map(|e| e.1).collect();
                !subjects.is_empty() && (subjects.len() as u64) < k
            })
        });
        if thin {
            r.keep = false;
            *causes
                .entry(format!(
                    "its rows of one dataset (of fewer than k={k} subjects)"
                ))
                .or_insert(0) += 1;
            continue;
        }
        let earlier = memory.datasets.iter().find_map(|d| {
            d.rows.sets[i].iter().find_map(|set| {
                d.ledger
                    .close_to(set, k)
                    .map(|(origin, _)| origin.to_string())
            })
        });
        // A row's own sets too: a measure whose subjects are the cell's but for a few (a
        // FILTER, a CASE giving 0) released next to the cell tells about those few.
        let within = || {
            memory.datasets.iter().zip(&kept).any(|(d, kept)| {
                let sets = &d.rows.sets[i];
                sets.iter().enumerate().any(|(a, set)| {
                    sets[..a]
                        .iter()
                        .chain(kept.iter().copied())
                        .any(|other| differs_by_fewer_than(set, other, k).is_some())
                })
            })
        };
        let cause = match earlier {
            Some(origin) => Some(origin),
            None if within() => Some("this release".to_string()),
            None => None,
        };
        match cause {
            Some(origin) => {
                r.keep = false;
                *causes.entry(origin).or_insert(0) += 1;
            }
            None => {
                for (d, kept) in memory.datasets.iter().zip(&mut kept) {
                    kept.extend(d.rows.sets[i].iter());
                }
            }
        }
    }
    causes
}

/// At most this many sets of one release are audited (rows times distinct measures).
const RELEASE_CELLS: usize = 20_000;
/// At most this many independent cells are remembered per dataset (the inverse over them is
/// MEMORY_CELLS^2 words: 200 MB at 5,000).
const MEMORY_CELLS: usize = 5_000;

/// `ledger` with a release's cells and the sets it protects added, or why it cannot hold them
/// (`what` names the ledger in the reason).
fn with_release(
    ledger: &Ledger,
    origin: &str,
    released: &[SubjectSet],
    protected: &[SubjectSet],
    what: &str,
) -> std::result::Result<Ledger, String> {
    if ledger.rank() + released.len() > MEMORY_CELLS {
        return Err(format!(
            "the data's release history{what} is full ({} independent cells remembered, at most {MEMORY_CELLS}): no more exact releases over it; a scenario with differential privacy can still release",
            ledger.rank()
        ));
    }
    let mut next = Ledger::clone(ledger);
    next.add_all_released(origin, released);
    for set in protected {
        next.add_protected(origin, set.clone());
    }
    Ok(next)
}

/// The linear audit of the release with everything released before it over the same data:
/// the outcome, and what the release adds to the gate's memory. Each dataset's memory is
/// audited with the release's sets over that dataset's rows.
fn audit(rows: &[GroupRow], memory: &Memory<'_>, k: u64) -> (CheckOutcome, Remembered) {
    let refused = |why: String| (CheckOutcome::Fail(why), Remembered::default());
    let mut remembered = Remembered::default();
    let mut earlier = 0usize;
    for d in memory.datasets {
        let (mut released, mut protected) = (Vec::new(), Vec::new());
        let (mut value_released, mut dominated) = (Vec::new(), Vec::new());
        for (i, (r, sets)) in rows.iter().zip(&d.rows.sets).enumerate() {
            let values = d.rows.values.get(i).copied().unwrap_or(u64::MAX);
            let sums = sets
                .iter()
                .enumerate()
                .filter(|(j, s)| (*j >= 64 || values & (1 << j) != 0) && !s.is_empty())
                .map(|(_, s)| s.clone());
            if r.keep {
                released.extend(sets.iter().cloned());
                value_released.extend(sums);
            } else {
                if r.dominated {
                    dominated.extend(sums);
                }
                // Fewer than k subjects, however many rows they have.
                protected.extend(
                    sets.iter()
                        .filter(|s| {
                            let subjects: std::collections::BTreeSet<u64> =
                                s.iter().map(|e| e.1).collect();
                            !subjects.is_empty() && (subjects.len() as u64) < k
                        })
                        .cloned(),
                );
            }
        }
        // The audit's cost grows with the square of the independent cells remembered: a
        // dataset remembers at most MEMORY_CELLS of them, a release adds at most RELEASE_CELLS.
        if released.len() > RELEASE_CELLS {
            return refused(format!(
                "the release has {} cells to remember; at most {RELEASE_CELLS} are audited in one release: release fewer groups or measures",
                released.len()
            ));
        }
        earlier += d.ledger.cells();
        let next = match with_release(&d.ledger, memory.origin, &released, &protected, "") {
            Ok(next) => next,
            Err(why) => return refused(why),
        };
        if let Some(found) = next.disclosure(k) {
            return refused(format!("{found}: refused (k={k})"));
        }
        // The sums alone: a cell suppressed because a few subjects dominate its sum must not
        // be given by other sums (a later total minus the cells around it). Its count may be
        // released: counts are not in this ledger.
        let value_ledger = match &d.value_ledger {
            Some(values) => {
                let next = match with_release(
                    values,
                    memory.origin,
                    &value_released,
                    &dominated,
                    " of sums",
                ) {
                    Ok(next) => next,
                    Err(why) => return refused(why),
                };
                if let Some(found) = next.protected_disclosure() {
                    return refused(format!(
                        "{found} because a few subjects dominate its sum: refused"
                    ));
                }
                Some(Arc::new(next))
            }
            // A dominated cell with no memory of sums to judge it against: fail closed.
            None if !dominated.is_empty() => {
                return refused(
                    "the gate's memory of sums over the data was not loaded; nothing is released"
                        .into(),
                );
            }
            None => None,
        };
        remembered.datasets.push(Kept {
            dataset: d.dataset.clone(),
            released,
            protected,
            value_released,
            dominated,
            ledger: Arc::new(next),
            value_ledger,
        });
    }
    (
        CheckOutcome::Pass(format!(
            "audited with {earlier} cell(s) released earlier over the same data (any scenario, any org): no total of fewer than k={k} subjects, and no cell suppressed for fewer, becomes determinable"
        )),
        remembered,
    )
}

/// The OS's random source as 64-bit words, for the noise samplers.
fn words(rng: &ring::rand::SystemRandom) -> impl FnMut() -> std::result::Result<u64, String> + '_ {
    move || {
        ring::rand::generate::<[u8; 8]>(rng)
            .map(|b| u64::from_le_bytes(b.expose()))
            .map_err(|_| "no randomness".to_string())
    }
}

/// Replaces each noised output column with its bounded value plus discrete Laplace noise on
/// its grid (counts as whole numbers, never negative), and orders the rows by group key, so
/// that neither the values nor their order tell the exact aggregates.
fn add_noise(
    batches: Vec<RecordBatch>,
    columns: &[ColumnNoise],
    rng: &ring::rand::SystemRandom,
) -> Result<Vec<RecordBatch>> {
    let internal = |e: arrow::error::ArrowError| Error::Internal(format!("noise: {e}"));
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let all = arrow::compute::concat_batches(&first.schema(), &batches).map_err(internal)?;
    let keys = group_keys(&all)?;
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by(|a, b| keys[*a as usize].cmp(&keys[*b as usize]));
    let order = arrow::array::UInt32Array::from(order);
    let mut out: Vec<arrow::array::ArrayRef> = all
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &order, None).map_err(internal))
        .collect::<Result<_>>()?;
    let schema = all.schema();
    for c in columns {
        let (Ok(_), Ok(hidden)) = (schema.index_of(&c.output), schema.index_of(&c.hidden)) else {
            return Err(Error::Internal(format!(
                "noise: column {} is not in the result",
                c.output
            )));
        };
        let bounded = arrow::compute::cast(&out[hidden], &DataType::Float64).map_err(internal)?;
        let bounded = bounded.as_primitive::<Float64Type>();
        let mut noised_values = Vec::with_capacity(bounded.len());
        for v in bounded.iter() {
            let x = noised(&mut words(rng), v.unwrap_or(0.0), c.scale, c.grid)
                .map_err(|e| Error::Internal(format!("noise: {e}")))?;
            noised_values.push(if c.is_count { x.max(0.0) } else { x });
        }
        let noised_values = arrow::array::Float64Array::from(noised_values);
        // Every column showing the aggregate shows the same noised value.
        for name in std::iter::once(&c.output).chain(&c.also) {
            let at = schema.index_of(name).map_err(internal)?;
            out[at] = arrow::compute::cast(&noised_values, schema.field(at).data_type())
                .map_err(internal)?;
        }
    }
    Ok(vec![RecordBatch::try_new(schema, out).map_err(internal)?])
}

fn describe_noise(
    p: &PrivacySpend,
    epsilon: f64,
    plan: &NoisePlan,
    withheld: u64,
    shape: &QueryShape,
) -> String {
    let columns = &plan.columns;
    let bounds = shape.privacy.as_ref().map(|s| s.bounds);
    let scales = columns
        .iter()
        .map(|c| format!("{} scale {:.3}", c.output, c.scale))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "epsilon {epsilon} spent, {} of {} left after this release; discrete Laplace noise on {} column(s): {scales}",
        (p.budget - p.spent - epsilon).max(0.0),
        p.budget,
        columns.len()
    );
    if let Some(b) = bounds {
        text.push_str(&format!(
            "; each subject in at most {} group(s), {} row(s) per count",
            b.max_groups, b.count_bound
        ));
        if let Some(s) = b.sum_bound {
            text.push_str(&format!(", sums clamped to +/-{s}"));
        }
    }
    let sel = &plan.selection;
    text.push_str(&format!(
        "; groups released where their noised subject count (scale {:.3}) reached {:.1}, delta {}: {withheld} withheld; rows in group-key order",
        sel.scale, sel.threshold, sel.delta
    ));
    text
}

/// One group of an aggregate result as the gate decides on it.
struct GroupRow {
    batch: usize,
    row: usize,
    subjects: u64,
    /// The values of its group keys (none for grouping sets).
    key: Option<Vec<serde_json::Value>>,
    keep: bool,
    /// Suppressed because a few subjects dominate its sums (it has k subjects or more).
    dominated: bool,
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

/// R-GATE 6: a group released again with a subject count that differs from an earlier
/// release by fewer than k would let the two be subtracted to learn about those few subjects.
/// The report names counts, never group values.
fn differencing(
    groups: &Groups,
    input: &GateInput<'_>,
    memory: Option<&Memory<'_>>,
    close_to: &BTreeMap<String, u64>,
) -> CheckOutcome {
    let k = input.threshold_k;
    let by_sets = match memory {
        None => String::new(),
        Some(m) => {
            let cells: usize = m.datasets.iter().map(|d| d.ledger.cells()).sum();
            let mut text = format!(
                "; by their subjects, compared with {cells} cell(s) released earlier over the same data by any scenario or org"
            );
            if !close_to.is_empty() {
                let causes: Vec<String> = close_to
                    .iter()
                    .map(|(origin, n)| format!("{n} because of {origin}"))
                    .collect();
                text.push_str(&format!(
                    ", group(s) whose subjects differ by fewer than k={k} suppressed: {}",
                    causes.join(", ")
                ));
            }
            text
        }
    };
    // (groups, earlier exports) close to an earlier export of the same data, and of other data.
    let (mut same, mut newer) = ((0u64, 0u64), (0u64, 0u64));
    for earlier in input.earlier {
        let mut close = 0u64;
        for (key, subjects) in groups {
            if let Some(before) = earlier.groups.get(key) {
                let d = subjects.abs_diff(*before);
                if d > 0 && d < k {
                    close += 1;
                }
            }
        }
        let tally = if earlier.same_data {
            &mut same
        } else {
            &mut newer
        };
        tally.0 += close;
        tally.1 += u64::from(close > 0);
    }
    if same.0 > 0 {
        CheckOutcome::Fail(format!(
            "{} group(s) differ from {} earlier export(s) of this scenario over the same data by fewer than k={k} subjects: the difference would isolate them",
            same.0, same.1
        ))
    } else if newer.0 > 0 {
        CheckOutcome::Flag(format!(
            "{} group(s) differ from {} earlier export(s) of this scenario over other dataset versions by fewer than k={k} subjects: new data or a tracker; a second reviewer weighs it",
            newer.0, newer.1
        ))
    } else {
        CheckOutcome::Pass(format!(
            "by group key, compared with {} earlier export(s) of this scenario; no group differs by fewer than k={k} subjects{by_sets}",
            input.earlier.len()
        ))
    }
}

fn subjects_per_row(batch: &RecordBatch) -> Result<Int64Array> {
    batch
        .column_by_name(hidden::SUBJECTS)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .cloned()
        .ok_or_else(|| Error::Internal(format!("the result lacks {}", hidden::SUBJECTS)))
}

/// R-GATE 4: no value in the output is a sensitive data type. The report names the column
/// and the type, never the value.
fn scan_identifiers(batches: &[RecordBatch]) -> CheckOutcome {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return CheckOutcome::Pass("no rows to scan".into());
    };
    let (scanned, per_column) = match scan_columns(batches) {
        Ok(scan) => scan,
        Err(e) => return CheckOutcome::Fail(e.to_string()),
    };
    let mut findings: Vec<String> = Vec::new();
    for (field, hits) in schema.fields().iter().zip(per_column) {
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

/// Rows per unit of work of the scan.
const SCAN_CHUNK: usize = 65_536;

/// Scans every value of every column for sensitive types (R-GATE 4), on up to 8 threads:
/// how many values were scanned, and per column the count of values of each type found.
/// A worker that panicked leaves its part unscanned: the scan then fails, never passes.
pub fn scan_columns(batches: &[RecordBatch]) -> Result<(u64, Vec<BTreeMap<String, u64>>)> {
    let columns = batches.first().map_or(0, |b| b.num_columns());
    let mut tasks = Vec::new();
    for b in batches {
        for (i, a) in b.columns().iter().enumerate() {
            let mut at = 0;
            while at < a.len() {
                let n = SCAN_CHUNK.min(a.len() - at);
                tasks.push((i, a.slice(at, n)));
                at += n;
            }
        }
    }
    let threads = crate::threads::parallelism()
        .clamp(1, 8)
        .min(tasks.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let partials: Vec<(u64, Vec<BTreeMap<String, u64>>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut scanned = 0u64;
                    let mut hits = vec![BTreeMap::<String, u64>::new(); columns];
                    loop {
                        let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((i, a)) = tasks.get(t) else { break };
                        scanned += scan_array(a, &mut hits[*i]);
                    }
                    (scanned, hits)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().map_err(|_| {
                    Error::Internal(
                        "a worker of the identifier scan failed; nothing is released".into(),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut scanned = 0;
    let mut hits = vec![BTreeMap::<String, u64>::new(); columns];
    for (n, part) in partials {
        scanned += n;
        for (into, from) in hits.iter_mut().zip(part) {
            for (kind, count) in from {
                *into.entry(kind).or_default() += count;
            }
        }
    }
    Ok((scanned, hits))
}

/// Scans one array, adding what it finds to `hits`; returns how many values it scanned.
/// Whether a double's shortest text has at most 12 significant digits: a value someone wrote
/// (a constant, an identifier packed into it beside a small integer part), whose every digit
/// means something. An average or a sum with float noise has 14 to 17, and their fraction's
/// digits would look like anything (one average in a few hundred has eleven that read as a
/// mobile number): of those only the integer part is read. See SECURITY.md for what this
/// leaves to lineage.
fn exact_in_12_digits(v: f64) -> bool {
    let text = v.abs().to_string();
    let digits = text
        .trim_start_matches(['0', '.'])
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    !text.contains('e') && digits <= 12
}

/// A float's text as the scan reads it: its integer part and its fraction's digits, each on
/// its own (a mobile number fits in either; nothing longer than 17 digits survives in a
/// double, so no resident ID or bank card spans the point; reading the digits together would
/// find a valid card check in one sum of ten).
fn check_number(text: &str, check: &mut impl FnMut(&str)) {
    let text = text.trim_start_matches(['-', '+']);
    match text.split_once('.') {
        None => check(text),
        Some((whole, fraction)) => {
            check(whole);
            check(fraction);
        }
    }
}

/// Scans one array; returns how many values it held (each read in every form it has).
fn scan_array(a: &arrow::array::ArrayRef, hits: &mut BTreeMap<String, u64>) -> u64 {
    let scanned = match a.data_type() {
        DataType::Boolean | DataType::Null => 0,
        _ => (a.len() - a.null_count()) as u64,
    };
    let mut check = |s: &str| {
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
        // Floats: the integer part, and the fraction's digits when they are exact.
        DataType::Float64 => a
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .filter(|v| v.is_finite())
            .for_each(|v| match exact_in_12_digits(v) {
                true => check_number(&v.to_string(), &mut check),
                false => check(&format!("{:.0}", v.trunc().abs())),
            }),
        DataType::Float32 | DataType::Float16 => {
            if let Ok(text) = arrow::compute::cast(a, &DataType::Utf8) {
                text.as_string::<i32>()
                    .iter()
                    .flatten()
                    .for_each(|v| check_number(v, &mut check));
            }
        }
        // Decimals are exact: every digit, fraction included, can carry an identifier, so
        // their digits are scanned whole (the unscaled integer), and their integer part.
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => {
            if let Ok(text) = arrow::compute::cast(a, &DataType::Utf8) {
                text.as_string::<i32>().iter().flatten().for_each(|v| {
                    let whole = v.split('.').next().unwrap_or(v);
                    check(whole);
                    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
                    if digits.trim_start_matches('0') != whole.trim_start_matches(['-', '0']) {
                        check(digits.trim_start_matches('0'));
                    }
                });
            }
        }
        // Dates, times, times of day and durations: as text, and as the count they are
        // stored as (a number of seconds or microseconds can be an identifier).
        t if t.is_temporal() => {
            if let Ok(counts) = arrow::compute::cast(a, &DataType::Int64) {
                counts
                    .as_primitive::<Int64Type>()
                    .iter()
                    .flatten()
                    .for_each(|v| check(&v.unsigned_abs().to_string()));
            }
            if let Ok(text) = arrow::compute::cast(a, &DataType::Utf8) {
                text.as_string::<i32>()
                    .iter()
                    .flatten()
                    .for_each(&mut check);
            }
        }
        // Any other type (other integers, dates, times of day) as its text, the integer part
        // of a number only: nothing leaves unscanned because of its type.
        DataType::Boolean | DataType::Null => {}
        other => {
            if let Ok(text) = arrow::compute::cast(a, &DataType::Utf8) {
                let numeric = other.is_numeric();
                text.as_string::<i32>().iter().flatten().for_each(|v| {
                    if numeric {
                        check(v.split('.').next().unwrap_or(v))
                    } else {
                        check(v)
                    }
                });
            }
        }
    }
    scanned
}

pub(crate) fn to_csv(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        // The writer refuses nested and binary columns; its message names types, never values.
        let unwritable = |_| {
            Error::BadInput(
                "the result has a column of a type a release cannot carry (nested or binary); release numbers, text, dates and times"
                    .into(),
            )
        };
        if batches.is_empty() {
            let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
            w.write(&empty).map_err(unwritable)?;
        }
        for b in batches {
            w.write(b).map_err(unwritable)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_float_is_scanned_whole_and_fraction_without_reading_its_noise() {
        let scan = |values: Vec<f64>| {
            let mut hits = BTreeMap::new();
            let a: arrow::array::ArrayRef = Arc::new(arrow::array::Float64Array::from(values));
            scan_array(&a, &mut hits);
            hits
        };
        assert!(
            scan(vec![0.13812345678]).contains_key("mobile"),
            "in the fraction"
        );
        assert!(
            scan(vec![13812345678.0]).contains_key("mobile"),
            "in the integer part"
        );
        // Sums of cents, as float arithmetic leaves them: no finding in 20,000 of them.
        let mut state = 12345u64;
        let mut sums = Vec::new();
        for _ in 0..20_000 {
            let mut total = 0.0f64;
            for _ in 0..(state % 500 + 2) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                total += ((state >> 33) % 50_000) as f64 / 100.0;
            }
            sums.push(total);
            sums.push(total / (state % 97 + 3) as f64);
        }
        let bad: Vec<String> = sums
            .iter()
            .filter(|v| !scan(vec![**v]).is_empty())
            .take(5)
            .map(|v| format!("{v} {}", exact_in_12_digits(*v)))
            .collect();
        let found = scan(sums);
        assert!(found.is_empty(), "{found:?} {bad:?}");
    }
    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use tidegate_policy::ColumnTag;

    fn result(spots: &[&str], subjects: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("spot", DataType::Utf8, true),
                Field::new(
                    format!("{}0", hidden::GROUP_KEY_PREFIX),
                    DataType::Utf8,
                    true,
                ),
                Field::new(hidden::SUBJECTS, DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(spots.to_vec())),
                Arc::new(StringArray::from(spots.to_vec())),
                Arc::new(Int64Array::from(subjects.to_vec())),
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
            ..QueryShape::default()
        }
    }

    fn run(batch: RecordBatch) -> GateOutcome {
        run_with(batch, &BTreeMap::new(), None)
    }

    fn run_with(
        batch: RecordBatch,
        masking: &BTreeMap<String, Masking>,
        privacy: Option<PrivacySpend>,
    ) -> GateOutcome {
        gate_over(&shape(), masking, privacy, &[], batch)
    }

    /// The gate of an L2 result with k = 10, given what varies between the tests.
    fn gate_over(
        shape: &QueryShape,
        masking: &BTreeMap<String, Masking>,
        privacy: Option<PrivacySpend>,
        earlier: &[Earlier],
        batch: RecordBatch,
    ) -> GateOutcome {
        let input = GateInput {
            level: Level::L2,
            threshold_k: 10,
            shape,
            provenance: CheckOutcome::Pass("ok".into()),
            max_rows: 100,
            max_bytes: 1 << 20,
            masking,
            privacy,
            earlier,
            pseudonyms: None,
            dominance: DominanceRule::default(),
            memory: None,
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
    fn generalization_rules_coarsen_numbers_and_dates_and_never_pass_an_unreadable_value() {
        let rules: BTreeMap<String, Masking> =
            [("spot".to_string(), "band:10".parse().unwrap())].into();
        let out = run_with(
            result(&["37", "40", "-3", "old"], &[20, 20, 20, 20]),
            &rules,
            None,
        );
        assert_eq!(
            String::from_utf8(out.csv).unwrap(),
            "spot\n30-39\n40-49\n-10--1\n***\n"
        );
        let rules: BTreeMap<String, Masking> = [("spot".to_string(), Masking::Round(2))].into();
        let out = run_with(result(&["30.274567", "120.15515"], &[20, 20]), &rules, None);
        assert_eq!(String::from_utf8(out.csv).unwrap(), "spot\n30.27\n120.16\n");
        let rules: BTreeMap<String, Masking> = [("spot".to_string(), Masking::Month)].into();
        let out = run_with(
            result(&["2026-05-17", "2026-05-17 08:00:00", "May"], &[20, 20, 20]),
            &rules,
            None,
        );
        assert_eq!(
            String::from_utf8(out.csv).unwrap(),
            "spot\n2026-05\n2026-05\n***\n"
        );
        assert!(
            out.report
                .check("desensitization")
                .unwrap()
                .detail
                .contains("`spot`: month applied")
        );
    }

    #[test]
    fn a_group_released_again_with_a_few_subjects_fewer_is_refused_over_the_same_data_and_flagged_over_newer()
     {
        let shape = shape();
        let none = BTreeMap::new();
        let gate = |earlier: &[Earlier], batch| gate_over(&shape, &none, None, earlier, batch);
        let first = gate(&[], result(&["West Lake", "Quiet Pond"], &[120, 40]));
        assert!(first.report.passed());
        assert_eq!(first.groups.len(), 2);
        let over = |same_data| {
            [Earlier {
                groups: first.groups.clone(),
                same_data,
            }]
        };
        // The same groups again over the same data, West Lake without one visitor: refused.
        let second = gate(
            &over(true),
            result(&["West Lake", "Quiet Pond"], &[119, 40]),
        );
        let check = second.report.check("differencing").unwrap();
        assert!(!check.passed, "{}", check.detail);
        assert!(
            !check.detail.contains("West Lake"),
            "no group value in the report"
        );
        // The same over a newer dataset version: passed, flagged for a second reviewer.
        let newer = gate(
            &over(false),
            result(&["West Lake", "Quiet Pond"], &[121, 40]),
        );
        assert!(newer.report.passed());
        assert!(newer.report.flagged());
        let check = newer.report.check("differencing").unwrap();
        assert!(check.flagged && check.detail.contains("over other dataset versions"));
        // The same population again (another measure), or one that differs by k or more: fine.
        let same = gate(
            &over(true),
            result(&["West Lake", "Quiet Pond"], &[120, 40]),
        );
        assert!(same.report.passed() && !same.report.flagged());
        let far = gate(&over(true), result(&["West Lake"], &[100]));
        assert!(far.report.passed());
    }

    #[test]
    fn a_scenario_with_a_privacy_budget_releases_nothing_without_bounded_aggregates() {
        let spend = PrivacySpend {
            budget: 1.0,
            spent: 0.0,
            epsilon: Some(0.5),
        };
        let out = run_with(result(&["West Lake"], &[20]), &BTreeMap::new(), Some(spend));
        assert!(!out.report.passed());
        let check = out.report.check("privacy budget").unwrap();
        assert!(!check.passed);
        assert!(check.detail.contains("run it again"), "{}", check.detail);
        assert!(out.csv.is_empty() && out.released.is_empty());
        assert_eq!(out.epsilon_spent, None);
    }

    /// A result of `SELECT spot, count(*) AS n ... GROUP BY spot` run under contribution
    /// bounds: the exact count `n` and its bounded value in the hidden column.
    fn bounded_result(spots: &[&str], exact: &[i64], bounded: &[f64]) -> RecordBatch {
        let base = result(spots, &vec![100; spots.len()]);
        let mut fields: Vec<Field> = base
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.insert(1, Field::new("n", DataType::Int64, false));
        fields.push(Field::new(
            format!("{}0", hidden::BOUNDED_PREFIX),
            DataType::Float64,
            false,
        ));
        fields.push(Field::new(BOUNDED_SUBJECTS, DataType::Float64, false));
        let mut columns = base.columns().to_vec();
        columns.insert(1, Arc::new(Int64Array::from(exact.to_vec())));
        columns.push(Arc::new(arrow::array::Float64Array::from(bounded.to_vec())));
        // Plenty of subjects after bounding: the noisy choice of groups keeps them all.
        columns.push(Arc::new(arrow::array::Float64Array::from(vec![
            5_000.0;
            spots.len()
        ])));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn a_private_release_withholds_a_group_whose_noised_subject_count_misses_the_margin() {
        // 100 subjects in the exact count, but only 12 after bounding: with epsilon 1 the
        // margin over k is about 2 x 13 (scale 2: one share for the count, one for groups).
        let mut batch = bounded_result(
            &["West Lake", "Old Street", "Quiet Pond"],
            &[900, 700, 500],
            &[300.0, 250.0, 200.0],
        );
        let at = batch.schema().index_of(BOUNDED_SUBJECTS).unwrap();
        let mut columns = batch.columns().to_vec();
        columns[at] = Arc::new(arrow::array::Float64Array::from(vec![
            5_000.0, 5_000.0, 12.0,
        ]));
        batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
        let out = private_gate(&private_shape(1), 1.0, batch);
        assert!(out.report.passed(), "{:?}", out.report);
        // Quiet Pond withheld; no other group with it: complementary suppression follows exact
        // suppressions only (a noised total hides a withheld cell, and a suppression decided
        // exactly would undo the noise).
        let csv = String::from_utf8(out.csv).unwrap();
        assert!(!csv.contains("Quiet Pond"), "{csv}");
        assert_eq!(csv.lines().count(), 3, "{csv}");
        let detail = &out.report.check("privacy budget").unwrap().detail;
        assert!(detail.contains("1 withheld"), "{detail}");
    }

    fn private_shape(scale_bound: u64) -> QueryShape {
        QueryShape {
            privacy: Some(tidegate_policy::PrivacyShape {
                bounds: tidegate_policy::ContributionBounds {
                    sum_bound: None,
                    count_bound: scale_bound,
                    max_groups: 1,
                },
                aggregates: vec![tidegate_policy::BoundedAggregate {
                    function: "count".into(),
                    hidden: format!("{}0", hidden::BOUNDED_PREFIX),
                    output: Some("n".into()),
                    derived: false,
                    also_shown_as: Vec::new(),
                }],
                after_aggregate: vec!["sort".into()],
            }),
            ..shape()
        }
    }

    fn private_gate(shape: &QueryShape, epsilon: f64, batch: RecordBatch) -> GateOutcome {
        let spend = PrivacySpend {
            budget: 1e9,
            spent: 0.0,
            epsilon: Some(epsilon),
        };
        gate_over(shape, &BTreeMap::new(), Some(spend), &[], batch)
    }

    #[test]
    fn a_private_release_shows_the_bounded_counts_with_noise_in_group_key_order() {
        // Rows come sorted by their exact counts; the release is ordered by group key.
        let batch = || {
            bounded_result(
                &["West Lake", "Quiet Pond", "Bamboo Path"],
                &[900, 500, 100],
                &[300.0, 200.0, 100.0],
            )
        };
        // So much epsilon that the noise vanishes: the bounded counts, not the exact ones.
        let out = private_gate(&private_shape(1), 1e9, batch());
        assert!(out.report.passed(), "{:?}", out.report);
        assert_eq!(out.epsilon_spent, Some(1e9));
        assert_eq!(
            String::from_utf8(out.csv).unwrap(),
            "spot,n\nBamboo Path,100\nQuiet Pond,200\nWest Lake,300\n"
        );
        let check = out.report.check("privacy budget").unwrap();
        assert!(
            check
                .detail
                .contains("Laplace noise on 1 column(s): n scale"),
            "{}",
            check.detail
        );
        // With epsilon 0.1 and 1 row per subject the noise has scale 10: counts move.
        let noisy: Vec<RecordBatch> = (0..5)
            .map(|_| {
                private_gate(&private_shape(1), 0.1, batch())
                    .released
                    .remove(0)
            })
            .collect();
        let first_counts =
            |b: &RecordBatch| b.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert!(
            noisy.iter().any(|b| first_counts(b) != vec![100, 200, 300]),
            "five draws of scale 10 never all land on the bounded values"
        );
        assert!(
            noisy
                .iter()
                .all(|b| first_counts(b).iter().all(|n| *n >= 0))
        );
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
                    dominated: false,
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
            CheckOutcome::Pass(_) | CheckOutcome::Flag(_) => "pass".to_string(),
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
