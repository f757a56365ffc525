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
    /// More output columns showing the same aggregate unchanged (`sum(x) AS a, sum(x) AS b`):
    /// each shows the same noised value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_shown_as: Vec<String>,
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
    /// More columns showing the same aggregate: they get the same noised value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// The released value is a multiple of this power of two (1 for counts).
    pub grid: f64,
    pub hidden: String,
    /// Counts are released as whole numbers, never below zero.
    pub is_count: bool,
    /// The scale of the discrete Laplace noise: the column's L1 sensitivity (plus the grid,
    /// for the rounding) over its share of epsilon.
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
    // The sampler draws scales up to 10^9; an epsilon that needs more noise is refused.
    let largest = groups
        * shape
            .bounds
            .sum_bound
            .unwrap_or(0.0)
            .max(shape.bounds.count_bound as f64)
            .max(1.0)
        * 2.0
        / share;
    if largest.is_nan() || largest > 1e9 {
        return Err(format!(
            "epsilon {epsilon} is too small to noise this release with: it would need noise of scale {largest:.3e}"
        ));
    }
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
            let grid = noise_grid(sensitivity, is_count);
            // Rounding to the grid moves a value by at most half a step each way.
            let sensitivity = if is_count { sensitivity } else { sensitivity + grid };
            Ok(ColumnNoise {
                output: a.output.clone().unwrap_or_default(),
                also: a.also_shown_as.clone(),
                grid,
                hidden: a.hidden.clone(),
                is_count,
                scale: groups * sensitivity / share,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(NoisePlan { columns, selection })
}

/// A source of uniform random 64-bit words (the OS's in the runtime, a seeded one in tests).
pub type RandomWords<'a> = dyn FnMut() -> Result<u64, String> + 'a;

/// A uniform draw from `0..n` (`n` >= 1), by rejection: no modulo bias.
fn uniform_below(rng: &mut RandomWords<'_>, n: u64) -> Result<u64, String> {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng()?;
        if x < zone {
            return Ok(x % n);
        }
    }
}

/// True with probability `num / den` exactly.
fn bernoulli(rng: &mut RandomWords<'_>, num: u64, den: u64) -> Result<bool, String> {
    Ok(uniform_below(rng, den)? < num)
}

/// True with probability `exp(-num / den)` exactly, for `num <= den` (Canonne, Kamath and
/// Steinke 2020, algorithm 1: integer arithmetic only).
fn bernoulli_exp_neg_unit(rng: &mut RandomWords<'_>, num: u64, den: u64) -> Result<bool, String> {
    let mut k = 1u64;
    loop {
        let Some(scaled) = den.checked_mul(k) else {
            // Probability under 2^-40 at any den we use; stop the series here.
            return Ok(k % 2 == 1);
        };
        if bernoulli(rng, num, scaled)? {
            k += 1;
        } else {
            return Ok(k % 2 == 1);
        }
    }
}

/// True with probability `exp(-num / den)` exactly, for any `num`.
fn bernoulli_exp_neg(rng: &mut RandomWords<'_>, num: u64, den: u64) -> Result<bool, String> {
    let mut left = num;
    while left > den {
        if !bernoulli_exp_neg_unit(rng, 1, 1)? {
            return Ok(false);
        }
        left -= den;
    }
    bernoulli_exp_neg_unit(rng, left, den)
}

/// Fixed-point denominator of a noise scale: scales are rounded up to multiples of 1/1024.
const SCALE_DENOMINATOR: u64 = 1024;

/// A draw of the discrete Laplace distribution of the given scale (at least it, rounded up to
/// 1/1024): `P[z]` proportional to `exp(-|z| / scale)` over the integers. Exact, with integer
/// arithmetic only (Canonne, Kamath and Steinke 2020, algorithm 2), so that no floating-point
/// rounding tells the noised value apart (Mironov 2012).
pub fn discrete_laplace(rng: &mut RandomWords<'_>, scale: f64) -> Result<i64, String> {
    if !(scale.is_finite() && scale > 0.0 && scale < 1e12) {
        return Err(format!(
            "a noise scale must be positive and finite, not {scale}"
        ));
    }
    let s = SCALE_DENOMINATOR;
    let t = (scale * s as f64).ceil().max(1.0) as u64;
    loop {
        let u = uniform_below(rng, t)?;
        if !bernoulli_exp_neg(rng, u, t)? {
            continue;
        }
        let mut v = 0u64;
        while bernoulli_exp_neg(rng, 1, 1)? {
            v += 1;
        }
        let y = (u + t.saturating_mul(v)) / s;
        let negative = bernoulli(rng, 1, 2)?;
        if negative && y == 0 {
            continue;
        }
        let y = i64::try_from(y).map_err(|_| "a noise draw out of range".to_string())?;
        return Ok(if negative { -y } else { y });
    }
}

/// The grid a sum of this sensitivity is released on: the largest power of two at most
/// 1/1024 of it (and 1 for counts, which are whole numbers).
pub fn noise_grid(sensitivity: f64, is_count: bool) -> f64 {
    if is_count || !(sensitivity.is_finite() && sensitivity > 0.0) {
        return 1.0;
    }
    (sensitivity / 1024.0).log2().floor().exp2()
}

/// A value released with noise: clamped to a finite number, rounded to the `grid` (a power of
/// two) and moved by `grid` times a discrete Laplace draw of `scale / grid`, so the result is
/// on the grid whatever the value was (the snapping idea, with exact integer noise).
pub fn noised(rng: &mut RandomWords<'_>, value: f64, scale: f64, grid: f64) -> Result<f64, String> {
    let value = if value.is_finite() { value } else { 0.0 };
    let limit = grid * (1u64 << 52) as f64;
    let steps = (value.clamp(-limit, limit) / grid).round();
    let z = discrete_laplace(rng, scale / grid)?;
    Ok((steps + z as f64) * grid)
}

/// A dataset's differential privacy budget, set by its provider (DOMAIN.md section 4:
/// epsilon 10 in all, at most 3 per org, by default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetBudget {
    pub total: f64,
    pub per_org: f64,
}

impl Default for DatasetBudget {
    fn default() -> Self {
        DatasetBudget {
            total: 10.0,
            per_org: 3.0,
        }
    }
}

impl DatasetBudget {
    /// Whether the provider's new budget is one: positive, finite, the cap within the total,
    /// and never below what scenarios have already drawn.
    pub fn validate(&self, drawn: f64) -> Result<(), String> {
        if !(self.total.is_finite() && self.total > 0.0) {
            return Err("a dataset's privacy budget must be a positive, finite epsilon".into());
        }
        if !(self.per_org.is_finite() && self.per_org > 0.0 && self.per_org <= self.total) {
            return Err("the cap per org must be a positive epsilon within the total".into());
        }
        if self.total + 1e-12 < drawn {
            return Err(format!(
                "scenarios have already drawn epsilon {drawn} from this dataset; the total cannot go below it"
            ));
        }
        Ok(())
    }

    /// Decides whether a scenario of an org may draw `asked` from the dataset `name` when it
    /// is approved, given what every scenario has drawn (`drawn`) and what the org's own have
    /// (`drawn_by_org`). A second scenario over the same data draws from the same budget: an
    /// org cannot reset its budget by applying again.
    pub fn can_draw(
        &self,
        name: &str,
        asked: f64,
        drawn: f64,
        drawn_by_org: f64,
    ) -> Result<(), String> {
        if drawn + asked > self.total + 1e-12 {
            return Err(format!(
                "dataset {name} has epsilon {} of {} left for differential privacy; the scenario asks {asked}",
                (self.total - drawn).max(0.0),
                self.total
            ));
        }
        if drawn_by_org + asked > self.per_org + 1e-12 {
            return Err(format!(
                "the org has drawn epsilon {drawn_by_org} of its cap of {} on dataset {name}; the scenario asks {asked}",
                self.per_org
            ));
        }
        Ok(())
    }
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
                    hidden: format!("{}{j}", crate::hidden::BOUNDED_PREFIX),
                    output: Some(format!("{f}_{j}")),
                    derived: false,
                    also_shown_as: Vec::new(),
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
        // Sums are released on a grid of 1/16 (100/1024 rounded down to a power of two).
        assert_eq!(noise[1].scale, 3.0 * (100.0 + 0.0625) / 0.5);
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

    /// A seeded source of random words (splitmix64), so the distribution tests are exact
    /// repeats, never flaky.
    fn seeded(mut state: u64) -> impl FnMut() -> Result<u64, String> {
        move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            Ok(z ^ (z >> 31))
        }
    }

    #[test]
    fn discrete_laplace_draws_follow_their_distribution() {
        let mut rng = seeded(7);
        let n = 200_000;
        let scale = 2.0;
        let mut counts = std::collections::BTreeMap::<i64, u64>::new();
        for _ in 0..n {
            *counts
                .entry(discrete_laplace(&mut rng, scale).unwrap())
                .or_default() += 1;
        }
        // P[z] = (1 - r) / (1 + r) * r^|z| with r = exp(-1/scale).
        let r = (-1.0 / scale).exp();
        let mut chi2 = 0.0;
        for z in -8i64..=8 {
            let expected = n as f64 * (1.0 - r) / (1.0 + r) * r.powi(z.unsigned_abs() as i32);
            let seen = *counts.get(&z).unwrap_or(&0) as f64;
            chi2 += (seen - expected).powi(2) / expected;
        }
        // 17 cells: the 99.9% point of chi-square with 16 degrees of freedom is 39.3.
        assert!(chi2 < 39.3, "chi-square {chi2}: {counts:?}");
        let mean = counts
            .iter()
            .map(|(z, c)| *z as f64 * *c as f64)
            .sum::<f64>()
            / n as f64;
        assert!(mean.abs() < 0.05, "{mean}");
    }

    #[test]
    fn a_dataset_budget_is_drawn_by_scenarios_within_its_total_and_each_orgs_cap() {
        let b = DatasetBudget::default();
        assert!(b.can_draw("visits", 2.0, 0.0, 0.0).is_ok());
        // A second scenario of the same org: the cap is the org's, not the scenario's.
        let err = b.can_draw("visits", 2.0, 2.0, 2.0).unwrap_err();
        assert!(err.contains("drawn epsilon 2 of its cap of 3"), "{err}");
        // Other orgs draw until the total is spent.
        assert!(b.can_draw("visits", 3.0, 7.0, 0.0).is_ok());
        let err = b.can_draw("visits", 3.0, 8.0, 0.0).unwrap_err();
        assert!(err.contains("epsilon 2 of 10 left"), "{err}");
        assert!(
            DatasetBudget {
                total: 4.0,
                per_org: 5.0
            }
            .validate(0.0)
            .is_err()
        );
        assert!(DatasetBudget::default().validate(11.0).is_err());
        assert!(
            DatasetBudget {
                total: f64::INFINITY,
                per_org: 1.0
            }
            .validate(0.0)
            .is_err()
        );
    }

    #[test]
    fn noised_sums_land_on_their_grid_whatever_the_value() {
        let mut rng = seeded(11);
        let grid = noise_grid(100.0, false);
        assert_eq!(grid, 0.0625);
        for value in [1_234.567_891_234, -0.1, 1e-300, f64::NAN, f64::INFINITY] {
            let released = noised(&mut rng, value, 50.0, grid).unwrap();
            assert!(released.is_finite());
            assert_eq!((released / grid).fract(), 0.0, "{value} -> {released}");
        }
        assert_eq!(noise_grid(3.0, true), 1.0);
        assert!(discrete_laplace(&mut rng, f64::NAN).is_err());
        assert!(discrete_laplace(&mut rng, 0.0).is_err());
    }
}
