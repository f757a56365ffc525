//! Export gate rules (R-GATE): what a result must look like before it may leave the domain.
//!
//! The runtime extracts facts from the plan and the data; the rules here judge them.

use serde::{Deserialize, Serialize};

use crate::model::{ColumnTag, Level};

/// How many jobs of a scenario over L2 or L3 data may stop while running (their cause
/// withheld) before the scenario is suspended for an admin to look at (R-GATE 7, R-MONITOR):
/// whether a job fails can depend on one value, so each failure may tell one bit, and the
/// bits are rationed.
pub const MAX_WITHHELD_FAILURES: u64 = 3;

/// Default minimum of distinct subjects per output group (DOMAIN.md section 4).
pub fn default_threshold(level: Level) -> u64 {
    match level {
        Level::L1 => 1,
        Level::L2 => 10,
        Level::L3 | Level::L4 => 50,
    }
}

/// A scenario's threshold: what it asks for, but never under its level's default.
pub fn scenario_threshold(requested: Option<u64>, level: Level) -> u64 {
    requested.unwrap_or(0).max(default_threshold(level))
}

/// Aggregate functions whose output does not reproduce one subject's value and whose
/// per-subject contribution the gate checks (see [`crate::releasable_aggregate`]). `min`,
/// `max`, `median`, `first_value` and the like return a single contributor's value; variances
/// and approximations have no per-subject bound the gate checks: all refused.
pub const ALLOWED_AGGREGATES: [&str; 4] = ["count", "sum", "avg", "mean"];

pub fn is_allowed_aggregate(name: &str) -> bool {
    ALLOWED_AGGREGATES.contains(&name.to_ascii_lowercase().as_str())
}

/// Facts the runtime extracted from a job's plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryShape {
    /// The query is one grouped aggregate, with only projection, filter, sort and limit above.
    pub aggregated: bool,
    /// Why the query is not a gate-checkable aggregate, when it is not.
    pub not_aggregated_reason: Option<String>,
    /// Each group key: its output name, and the tags of the column it is (`dimension` for an
    /// expression over dimension columns only, a generalization such as a month or an age
    /// band), or `None` for an expression over any other column.
    pub group_keys: Vec<(String, Option<Vec<ColumnTag>>)>,
    /// Names of the aggregate functions used.
    pub aggregates: Vec<String>,
    /// Aggregates that select rows by a predicate over an identifier or entity column.
    #[serde(default)]
    pub isolating_aggregates: Vec<String>,
    /// The bounded aggregates, when the job ran for a scenario with a privacy budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacyShape>,
    /// Per output column, the granted columns it is computed from (through every alias,
    /// subquery and aggregate): a masking rule named after one of them applies to it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub column_sources: std::collections::BTreeMap<String, Vec<String>>,
}

/// One check of the gate report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// Passed, but a reviewer must look at it: the export needs one more approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The gate report: each check with its numbers, pass or fail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateReport {
    pub checks: Vec<GateCheck>,
    pub threshold_k: u64,
    pub groups_total: u64,
    pub groups_suppressed: u64,
    pub rows_released: u64,
    /// Groups the differencing check suppressed because their subjects differ from a cell
    /// released earlier by fewer than k (a differencing pattern, R-MONITOR).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub differencing_suppressed: u64,
    /// The report as the requesting org sees it: the counts and details that depend on the
    /// data are for the reviewers only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

impl GateReport {
    /// The checks whose outcome depends on the query, the scenario and the ledger alone, never
    /// on the data.
    pub const OF_THE_QUERY: [&'static str; 3] = ["provenance", "aggregation", "privacy budget"];

    /// Whether the report failed a check that depends on the data (a release refused because
    /// of what the data holds: an identifier in a kept cell, the size, an earlier release).
    pub fn failed_on_the_data(&self) -> bool {
        self.checks
            .iter()
            .all(|c| c.passed || !Self::OF_THE_QUERY.contains(&c.name.as_str()))
            && self
                .checks
                .iter()
                .any(|c| !c.passed && !Self::OF_THE_QUERY.contains(&c.name.as_str()))
    }

    /// The report the requesting org reads (R-GATE 7): the checks of the query alone, and
    /// whether the checks of the data passed, as one (and only when every check of the query
    /// passed: a refusal for the query must not tell how the data fared). No count of groups,
    /// suppressed cells or rows, no detail of a check of the data: those tell about the data
    /// without any release.
    pub fn redacted(&self) -> GateReport {
        let of_the_query: Vec<GateCheck> = self
            .checks
            .iter()
            .filter(|c| Self::OF_THE_QUERY.contains(&c.name.as_str()))
            .cloned()
            .map(|c| {
                if c.name == "privacy budget" && c.passed {
                    // Its detail counts the groups withheld by the noisy selection.
                    GateCheck {
                        detail: "passed; the reviewers see the noise and the groups withheld"
                            .into(),
                        ..c
                    }
                } else {
                    c
                }
            })
            .collect();
        let mut checks = of_the_query.clone();
        if of_the_query.iter().all(|c| c.passed) {
            let data: Vec<&GateCheck> = self
                .checks
                .iter()
                .filter(|c| !Self::OF_THE_QUERY.contains(&c.name.as_str()))
                .collect();
            checks.push(GateCheck {
                name: "checks of the data".into(),
                passed: data.iter().all(|c| c.passed),
                detail: "which checks and their numbers are shown to the reviewers only".into(),
                flagged: data.iter().any(|c| c.flagged),
            });
        }
        GateReport {
            checks,
            threshold_k: self.threshold_k,
            groups_total: 0,
            groups_suppressed: 0,
            rows_released: 0,
            differencing_suppressed: 0,
            redacted: true,
        }
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// Whether a check passed with a flag for the reviewers.
    pub fn flagged(&self) -> bool {
        self.checks.iter().any(|c| c.flagged)
    }

    /// The check of that name, if the gate ran it.
    pub fn check(&self, name: &str) -> Option<&GateCheck> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn push(&mut self, name: &str, outcome: CheckOutcome) {
        let (passed, flagged, detail) = match outcome {
            CheckOutcome::Pass(d) => (true, false, d),
            CheckOutcome::Flag(d) => (true, true, d),
            CheckOutcome::Fail(d) => (false, false, d),
        };
        self.checks.push(GateCheck {
            name: name.to_string(),
            passed,
            detail,
            flagged,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Pass(String),
    /// Passed, for the reviewers to weigh: the export needs one more approval.
    Flag(String),
    Fail(String),
}

/// R-GATE 2, the plan half: an L2/L3 result is a grouped aggregate over `dimension` columns
/// using only aggregates that do not reproduce a single value.
pub fn check_shape(level: Level, shape: &QueryShape) -> CheckOutcome {
    if level == Level::L1 {
        return CheckOutcome::Pass("L1 result: aggregation not required".into());
    }
    if !shape.aggregated {
        return CheckOutcome::Fail(format!(
            "an {level} result must be a grouped aggregate: {}",
            shape
                .not_aggregated_reason
                .as_deref()
                .unwrap_or("no GROUP BY aggregate found")
        ));
    }
    if shape.group_keys.is_empty() {
        return CheckOutcome::Fail("the aggregate has no GROUP BY keys".into());
    }
    for (name, tags) in &shape.group_keys {
        match tags {
            None => {
                return CheckOutcome::Fail(format!(
                    "group key `{name}` is an expression over a column that is not a `dimension`"
                ));
            }
            Some(tags) if !tags.contains(&ColumnTag::Dimension) => {
                return CheckOutcome::Fail(format!("group key `{name}` is not tagged `dimension`"));
            }
            Some(_) => {}
        }
    }
    if let Some(bad) = shape.aggregates.iter().find(|a| !is_allowed_aggregate(a)) {
        return CheckOutcome::Fail(format!(
            "aggregate `{bad}` is not one the gate can vouch for (it could reproduce a single subject's value, as min, max and any guest aggregate can); allowed: {}",
            ALLOWED_AGGREGATES.join(", ")
        ));
    }
    if let Some(bad) = shape.isolating_aggregates.first() {
        return CheckOutcome::Fail(format!(
            "aggregate `{bad}` selects rows by an identifier and could isolate one subject"
        ));
    }
    CheckOutcome::Pass(format!(
        "grouped by {} dimension column(s) with {} aggregate(s)",
        shape.group_keys.len(),
        shape.aggregates.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(keys: &[(&str, Option<&[ColumnTag]>)], aggs: &[&str]) -> QueryShape {
        QueryShape {
            aggregated: true,
            not_aggregated_reason: None,
            group_keys: keys
                .iter()
                .map(|(n, t)| (n.to_string(), t.map(|t| t.to_vec())))
                .collect(),
            aggregates: aggs.iter().map(|a| a.to_string()).collect(),
            ..QueryShape::default()
        }
    }

    fn check(level: Level, s: &QueryShape) -> String {
        match check_shape(level, s) {
            CheckOutcome::Pass(d) => format!("pass: {d}"),
            CheckOutcome::Flag(d) => format!("flag: {d}"),
            CheckOutcome::Fail(d) => format!("fail: {d}"),
        }
    }

    #[test]
    fn grouped_counts_over_dimensions_pass() {
        let s = shape(
            &[("spot", Some(&[ColumnTag::Dimension]))],
            &["count", "avg"],
        );
        assert_eq!(
            check(Level::L2, &s),
            "pass: grouped by 1 dimension column(s) with 2 aggregate(s)"
        );
    }

    #[test]
    fn group_key_that_is_not_a_dimension_fails() {
        let s = shape(&[("mobile", Some(&[ColumnTag::Quasi]))], &["count"]);
        assert_eq!(
            check(Level::L2, &s),
            "fail: group key `mobile` is not tagged `dimension`"
        );
        let s = shape(&[("substr(id)", None)], &["count"]);
        assert_eq!(
            check(Level::L3, &s),
            "fail: group key `substr(id)` is an expression over a column that is not a `dimension`"
        );
    }

    #[test]
    fn max_reproduces_a_value_and_fails() {
        let s = shape(&[("spot", Some(&[ColumnTag::Dimension]))], &["max"]);
        assert!(check(Level::L2, &s).starts_with("fail: aggregate `max`"));
    }

    #[test]
    fn row_level_result_fails_above_l1() {
        let s = QueryShape::default();
        assert_eq!(
            check(Level::L2, &s),
            "fail: an L2 result must be a grouped aggregate: no GROUP BY aggregate found"
        );
        assert_eq!(
            check(Level::L1, &s),
            "pass: L1 result: aggregation not required"
        );
    }
}
