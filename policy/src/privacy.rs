//! R-GATE 7: differential privacy. The runtime bounds every subject's contribution in the plan
//! it runs; the rules here decide whether a result can be noised, how much noise each released
//! column gets for the epsilon spent, and draw it.

use serde::{Deserialize, Serialize};

/// How much one subject may move a noised result: the sensitivity the noise is scaled to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ContributionBounds {
    /// Each subject's contribution to one sum in one group is clamped to `[-b, b]`; a sum
    /// cannot be noised without it.
    pub sum_bound: Option<f64>,
    /// Each subject's rows counted in one group are capped at this many.
    pub count_bound: u64,
    /// A subject counts in at most this many groups of one result; its other groups do not
    /// see it.
    pub max_groups: u64,
}

/// One aggregate of a query run under differential privacy, as the runtime found it in the
/// plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundedAggregate {
    /// The aggregate function (`count`, `sum`, or another, which cannot be noised).
    pub function: String,
    /// The hidden result column carrying the bounded value the noise is added to.
    pub hidden: String,
    /// The name of the output column showing the aggregate unchanged, if one does.
    pub output: Option<String>,
    /// An output column computes something from the aggregate (a ratio, a product): noise on
    /// the aggregate would not bound it.
    pub derived: bool,
}

/// What the runtime recorded about a query run for a scenario with a privacy budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyShape {
    pub bounds: ContributionBounds,
    pub aggregates: Vec<BoundedAggregate>,
    /// Steps above the aggregate (`filter`, `sort`, `limit`): a filter or a limit chooses
    /// groups by their exact values.
    pub after_aggregate: Vec<String>,
}

/// The noise of one released column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnNoise {
    pub output: String,
    pub hidden: String,
    /// Counts are released as whole numbers, never below zero.
    pub is_count: bool,
    /// The scale of the Laplace noise: the column's L1 sensitivity over its share of epsilon.
    pub scale: f64,
}

/// Which groups a private result releases: those whose count of subjects (after bounding),
/// with Laplace noise of `scale`, reaches `threshold`, besides the exact threshold k. The
/// exact check alone would make a group's presence tell whether one subject is in it; with
/// the noisy one, a group the exact check alone decides appears with probability under
/// `delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSelection {
    pub scale: f64,
    pub threshold: f64,
    pub delta: f64,
}

/// The total probability the release's group selection may fail its epsilon.
pub const SELECTION_DELTA: f64 = 1e-6;

/// How a private release is noised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoisePlan {
    pub columns: Vec<ColumnNoise>,
    pub selection: GroupSelection,
}

/// Decides how a result is noised for `epsilon`, given what is left of the budget: one equal
/// share of epsilon for each released count or sum and one for choosing the groups. The error
/// is the gate's reason for refusing.
pub fn plan_noise(
    shape: Option<&PrivacyShape>,
    epsilon: Option<f64>,
    budget: f64,
    spent: f64,
    threshold_k: u64,
) -> Result<NoisePlan, String> {
    let left = (budget - spent).max(0.0);
    let Some(epsilon) = epsilon else {
        return Err(format!(
            "the scenario uses differential privacy: the export request must say how much epsilon to spend ({left} of {budget} left)"
        ));
    };
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err("epsilon must be a positive, finite number".into());
    }
    if epsilon > left + 1e-12 {
        return Err(format!(
            "the privacy budget is exhausted: {epsilon} asked, {left} of {budget} left"
        ));
    }
    let Some(shape) = shape else {
        return Err(
            "the job ran before its scenario used differential privacy, without contribution bounds: run it again"
                .into(),
        );
    };
    if let Some(step) = shape
        .after_aggregate
        .iter()
        .find(|s| matches!(s.as_str(), "filter" | "limit"))
    {
        return Err(format!(
            "a {step} over the aggregate chooses groups by their exact values; drop it and filter the noised release instead"
        ));
    }
    if let Some(a) = shape.aggregates.iter().find(|a| a.derived) {
        return Err(format!(
            "an output column is computed from the {} aggregate; release the aggregate itself and compute after release",
            a.function
        ));
    }
    let released: Vec<&BoundedAggregate> = shape
        .aggregates
        .iter()
        .filter(|a| a.output.is_some())
        .collect();
    if released.is_empty() {
        return Err("the result releases no count or sum to noise".into());
    }
    let share = epsilon / (released.len() + 1) as f64;
    let groups = shape.bounds.max_groups as f64;
    // A subject is in at most `groups` groups, once each: that moves the subject counts by
    // `groups` in all; each of its groups may decide on its own, so delta is split among them.
    let selection_scale = groups / share;
    let selection = GroupSelection {
        scale: selection_scale,
        threshold: threshold_k as f64 + selection_scale * (groups / (2.0 * SELECTION_DELTA)).ln(),
        delta: SELECTION_DELTA,
    };
    let columns = released
        .into_iter()
        .map(|a| {
            let (sensitivity, is_count) = match a.function.as_str() {
                "count" => (shape.bounds.count_bound as f64, true),
                "sum" => match shape.bounds.sum_bound {
                    Some(b) => (b, false),
                    None => {
                        return Err(
                            "a sum is noised only with a contribution bound in the scenario's export rules"
                                .to_string(),
                        );
                    }
                },
                other => {
                    return Err(format!(
                        "the {other} aggregate cannot be noised; under differential privacy only count and sum are released"
                    ));
                }
            };
            Ok(ColumnNoise {
                output: a.output.clone().unwrap_or_default(),
                hidden: a.hidden.clone(),
                is_count,
                scale: groups * sensitivity / share,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(NoisePlan { columns, selection })
}

/// A Laplace draw of the given scale from a uniform draw `u` in `(0, 1)` (inverse CDF).
pub fn laplace(scale: f64, u: f64) -> f64 {
    let centered = u - 0.5;
    -scale * centered.signum() * (1.0 - 2.0 * centered.abs()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(functions: &[&str]) -> PrivacyShape {
        PrivacyShape {
            bounds: ContributionBounds {
                sum_bound: Some(100.0),
                count_bound: 2,
                max_groups: 3,
            },
            aggregates: functions
                .iter()
                .enumerate()
                .map(|(j, f)| BoundedAggregate {
                    function: f.to_string(),
                    hidden: format!("__tg_dp_{j}"),
                    output: Some(format!("{f}_{j}")),
                    derived: false,
                })
                .collect(),
            after_aggregate: Vec::new(),
        }
    }

    #[test]
    fn noise_scales_with_the_bounds_and_splits_epsilon_between_columns() {
        let plan = plan_noise(Some(&shape(&["count", "sum"])), Some(1.5), 2.0, 0.5, 10).unwrap();
        let noise = &plan.columns;
        // A third of epsilon each (two columns and the choice of groups); a subject in 3
        // groups moves a count by 2 per group.
        assert_eq!(noise[0].scale, 3.0 * 2.0 / 0.5);
        assert!(noise[0].is_count);
        assert_eq!(noise[1].scale, 3.0 * 100.0 / 0.5);
        assert!(!noise[1].is_count);
        // Groups: subject counts noised with scale 3 / 0.5, kept from k plus a margin that
        // leaves a group decided by the exact count alone with probability under delta.
        assert_eq!(plan.selection.scale, 6.0);
        let margin = plan.selection.threshold - 10.0;
        assert!((0.5 * (-margin / 6.0).exp() * 3.0 - SELECTION_DELTA).abs() < 1e-12);
    }

    #[test]
    fn a_release_is_refused_when_it_cannot_be_noised_or_paid_for() {
        let s = shape(&["count"]);
        let cases: [(Option<&PrivacyShape>, Option<f64>, f64, &str); 5] = [
            (
                Some(&s),
                None,
                0.0,
                "must say how much epsilon to spend (1 of 1 left)",
            ),
            (Some(&s), Some(f64::NAN), 0.0, "positive, finite"),
            (
                Some(&s),
                Some(0.5),
                0.75,
                "budget is exhausted: 0.5 asked, 0.25 of 1 left",
            ),
            (None, Some(0.5), 0.0, "run it again"),
            (
                Some(&shape(&["avg"])),
                Some(0.5),
                0.0,
                "the avg aggregate cannot be noised",
            ),
        ];
        for (shape, epsilon, spent, reason) in cases {
            let err = plan_noise(shape, epsilon, 1.0, spent, 10).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn choosing_groups_by_exact_values_or_deriving_from_an_aggregate_is_refused() {
        let mut limited = shape(&["count"]);
        limited.after_aggregate = vec!["sort".into(), "limit".into()];
        let err = plan_noise(Some(&limited), Some(0.1), 1.0, 0.0, 10).unwrap_err();
        assert!(err.contains("a limit over the aggregate"), "{err}");
        let mut sorted = shape(&["count"]);
        sorted.after_aggregate = vec!["sort".into()];
        assert!(plan_noise(Some(&sorted), Some(0.1), 1.0, 0.0, 10).is_ok());
        let mut derived = shape(&["sum"]);
        derived.aggregates[0].derived = true;
        let err = plan_noise(Some(&derived), Some(0.1), 1.0, 0.0, 10).unwrap_err();
        assert!(err.contains("computed from the sum aggregate"), "{err}");
        let mut unbounded = shape(&["sum"]);
        unbounded.bounds.sum_bound = None;
        let err = plan_noise(Some(&unbounded), Some(0.1), 1.0, 0.0, 10).unwrap_err();
        assert!(err.contains("only with a contribution bound"), "{err}");
    }

    #[test]
    fn laplace_draws_are_symmetric_with_the_scale_as_mean_absolute_deviation() {
        // The inverse CDF over an even grid of (0, 1) approximates the distribution.
        let n = 100_000;
        let draws: Vec<f64> = (0..n)
            .map(|i| laplace(4.0, (i as f64 + 0.5) / n as f64))
            .collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let mad = draws.iter().map(|d| d.abs()).sum::<f64>() / n as f64;
        assert!(mean.abs() < 1e-9, "{mean}");
        assert!((mad - 4.0).abs() < 0.01, "{mad}");
        assert_eq!(laplace(4.0, 0.5), 0.0);
    }
}
