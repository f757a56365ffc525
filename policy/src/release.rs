//! What a release over protected data may be made of (R-GATE 2 and 3), decided on lineage:
//! the allow-list of plan operators and aggregates, the isolation rule, group keys, and the
//! dominance rules. The runtime computes each column's [`Lineage`] through the whole plan; the
//! rules here judge it. Names never decide anything here: a column's lineage comes from the
//! granted columns it is computed from, whatever it is called.

use serde::{Deserialize, Serialize};

use crate::model::ColumnTag;

/// Where a column's values come from, as far as the gate cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// Reads a column tagged `entity`, `pii:*` or `quasi` (or the hidden entity key), not
    /// through an approved module function.
    pub identifying: bool,
    /// Reads a constant: a literal, a parameter, or a column of a table without subjects
    /// (a lookup list is a list of constants).
    pub constant: bool,
    /// Somewhere in its computation an identifying value meets a constant (`id = '...'`,
    /// `strpos(id, '..')`, `substr(id, 7, 4)`, a join of an identifier with a lookup list):
    /// it can tell one subject from the others.
    pub singles_out: bool,
    /// Reads at least one column of a table.
    pub from_data: bool,
    /// Every column it reads is tagged `dimension` and none is identifying.
    pub all_dimension: bool,
    /// It is a granted column tagged `entity`, as it is (for `count(DISTINCT ...)`).
    pub entity: bool,
    /// Reads a direct identifier: a column tagged `entity` or `pii:*` (or the hidden key).
    pub direct: bool,
    /// Somewhere in its computation a direct identifier meets a constant: a row filter or a
    /// join condition like this chooses rows by whose they are.
    pub direct_meets_constant: bool,
    /// Reads a column tagged `sensitive` (a spend, a diagnosis).
    pub sensitive: bool,
    /// Reads a column of a table with subjects (not only lookups and constants).
    pub subject_data: bool,
    /// The numeric columns of tables with subjects it reads (the runtime's ids), whose
    /// per-subject totals the dominance rules check besides the value itself.
    pub sources: std::collections::BTreeSet<usize>,
}

impl Lineage {
    /// A granted column with these tags. `subjects`: its table has subjects (an entity key);
    /// the columns of a table without them are public lookups, constants to the gate.
    pub fn of_column(tags: &[ColumnTag], subjects: bool) -> Lineage {
        let identifying = tags
            .iter()
            .any(|t| matches!(t, ColumnTag::Entity | ColumnTag::Pii(_) | ColumnTag::Quasi));
        Lineage {
            identifying,
            constant: !subjects,
            singles_out: false,
            from_data: true,
            all_dimension: tags.contains(&ColumnTag::Dimension) && !identifying,
            entity: tags.contains(&ColumnTag::Entity),
            direct: tags
                .iter()
                .any(|t| matches!(t, ColumnTag::Entity | ColumnTag::Pii(_))),
            direct_meets_constant: false,
            sensitive: tags.contains(&ColumnTag::Sensitive),
            subject_data: subjects,
            sources: Default::default(),
        }
    }

    /// Read from lookup lists (tables without subjects, VALUES) and constants only: a value a
    /// join or a filter may tie to the data's values.
    pub fn lookup(&self) -> bool {
        self.constant && !self.subject_data
    }

    /// The hidden entity key of a table.
    pub fn entity_key() -> Lineage {
        Lineage {
            identifying: true,
            from_data: true,
            entity: true,
            direct: true,
            subject_data: true,
            ..Lineage::default()
        }
    }

    /// A literal or a parameter.
    pub fn constant() -> Lineage {
        Lineage {
            constant: true,
            all_dimension: true,
            ..Lineage::default()
        }
    }

    /// A value computed by a built-in function or operator from these. An identifying value
    /// may meet only identifying values (`a.id = b.id`): meeting anything else (a literal, a
    /// value built without one from `pi()` or from a dimension, another column) it can tell
    /// one subject from the others, so the result singles out, whatever the function. (A
    /// NULL check of an identifier is no such meeting: the runtime gives it the lineage of a
    /// plain value.)
    pub fn combine<'a>(parts: impl IntoIterator<Item = &'a Lineage>) -> Lineage {
        let mut out = Lineage {
            all_dimension: true,
            ..Lineage::default()
        };
        let (mut plain, mut not_direct) = (false, false);
        for p in parts {
            out.identifying |= p.identifying;
            out.constant |= p.constant;
            out.singles_out |= p.singles_out;
            out.from_data |= p.from_data;
            out.all_dimension &= p.all_dimension;
            out.direct |= p.direct;
            out.direct_meets_constant |= p.direct_meets_constant;
            out.sensitive |= p.sensitive;
            out.subject_data |= p.subject_data;
            out.sources.extend(p.sources.iter().copied());
            plain |= !p.identifying;
            not_direct |= !p.direct;
        }
        out.singles_out |= out.identifying && plain;
        out.direct_meets_constant |= out.direct && not_direct;
        out
    }

    /// A value computed by an approved module function (age from a resident ID and a date):
    /// its reviewers vouched that it does not identify, from the row's own values. It singles
    /// out when an identifier met something else on the way in, or meets, as an argument,
    /// a value that is not the row's own data (a constant, however it was built).
    pub fn through_module<'a>(parts: impl IntoIterator<Item = &'a Lineage>) -> Lineage {
        let parts: Vec<&Lineage> = parts.into_iter().collect();
        let mut out = Lineage {
            all_dimension: false,
            ..Lineage::default()
        };
        let (mut identifying, mut direct, mut not_row_data) = (false, false, false);
        for p in &parts {
            out.constant |= p.constant;
            out.singles_out |= p.singles_out;
            out.from_data |= p.from_data;
            out.direct_meets_constant |= p.direct_meets_constant;
            out.sensitive |= p.sensitive;
            out.subject_data |= p.subject_data;
            out.sources.extend(p.sources.iter().copied());
            identifying |= p.identifying;
            direct |= p.direct;
            not_row_data |= !p.subject_data || p.constant;
        }
        out.singles_out |= identifying && not_row_data;
        out.direct_meets_constant |= direct && not_row_data;
        out
    }

    /// A NULL check of a value: it tells whether the value is there, not which it is.
    pub fn presence(of: &Lineage) -> Lineage {
        Lineage {
            identifying: false,
            direct: false,
            entity: false,
            ..of.clone()
        }
    }

    /// A column of one side of a join takes on what the join condition reads of the other
    /// side: its row was chosen by those values (a lookup list joined on a spend spells the
    /// spend). A side without subjects (constants) takes on all of it; a side with subjects
    /// (another dataset, perhaps one a unit made to be a lookup list) takes on the numeric
    /// sources, and stops being a `dimension` when the condition reads a sensitive value.
    /// Joining on the person key or on a plain key is how data is fused: no dimension is lost.
    pub fn joined_on(&mut self, condition: &Lineage, constant_side: bool) {
        if constant_side {
            self.identifying |= condition.identifying;
            self.direct |= condition.direct;
            self.sensitive |= condition.sensitive;
            self.from_data |= condition.from_data;
            self.singles_out |= condition.singles_out || (condition.identifying && self.constant);
            self.direct_meets_constant |=
                condition.direct_meets_constant || (condition.direct && self.constant);
            self.all_dimension &= condition.all_dimension;
        } else if condition.sensitive {
            self.sensitive = true;
            self.all_dimension = false;
        }
        self.sources.extend(condition.sources.iter().copied());
    }

    /// Rows of several inputs in one column (UNION ALL): the union of what each may be.
    pub fn merge(&mut self, other: &Lineage) {
        self.identifying |= other.identifying;
        self.constant |= other.constant;
        self.singles_out |= other.singles_out;
        self.from_data |= other.from_data;
        self.all_dimension &= other.all_dimension;
        self.entity &= other.entity;
        self.direct |= other.direct;
        self.direct_meets_constant |= other.direct_meets_constant;
        self.sensitive |= other.sensitive;
        self.subject_data |= other.subject_data;
        self.sources.extend(other.sources.iter().copied());
    }
}

/// The plan operators a job over L2 or L3 data may contain below its one aggregate.
pub const OPERATORS_BELOW_AGGREGATE: [&str; 8] = [
    "scan of a granted table",
    "projection",
    "filter",
    "inner, left, right or full join (on keys, or a cross join)",
    "union all",
    "subquery alias",
    "sort (without a limit)",
    "values",
];

/// The plan operators a job over L2 or L3 data may contain above its one aggregate.
pub const OPERATORS_ABOVE_AGGREGATE: [&str; 5] = [
    "projection",
    "filter (HAVING)",
    "sort",
    "limit",
    "subquery alias",
];

/// The aggregates a release over L2 or L3 data may contain, each with a per-subject
/// contribution the gate checks.
pub const RELEASABLE_AGGREGATES: [&str; 5] =
    ["count", "count(DISTINCT entity)", "sum", "avg", "mean"];

/// An aggregate of a release, as the gate checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Released {
    /// Rows (or non-NULL values): each subject contributes its rows.
    Count,
    /// Distinct subjects: each contributes at most one.
    CountSubjects,
    /// A sum, or an average (a sum over a count): each subject contributes its values.
    Sum,
}

/// Decides whether an aggregate of DataFusion's (by its implementation's name, `distinct`,
/// its argument's lineage and its FILTER's) may be part of a release over protected data.
/// `module`: it is a module's aggregate function.
#[allow(clippy::too_many_arguments)]
pub fn releasable_aggregate(
    function: &str,
    module: bool,
    distinct: bool,
    arguments: usize,
    argument: &Lineage,
    filter: Option<&Lineage>,
    shown: &str,
) -> Result<Released, String> {
    if arguments > 1 {
        return Err(format!(
            "`{shown}`: an aggregate of several arguments (count(a, b) counts rows where all are set) is not one a release over L2 or L3 data may contain; combine them into one argument"
        ));
    }
    if module {
        return Err(format!(
            "`{shown}` is a module's aggregate: the gate cannot bound what one subject contributes to it; over L2 or L3 data a release uses {}",
            RELEASABLE_AGGREGATES.join(", ")
        ));
    }
    let kind = match (function, distinct) {
        ("count", false) => Released::Count,
        ("count", true) if argument.entity && !argument.singles_out => Released::CountSubjects,
        ("sum" | "avg" | "mean", false) => Released::Sum,
        ("count", true) | ("sum" | "avg" | "mean", true) => {
            return Err(format!(
                "`{shown}`: DISTINCT over L2 or L3 data is allowed only as count(DISTINCT entity key)"
            ));
        }
        (other, _) => {
            return Err(format!(
                "`{shown}`: the {other} aggregate is not one a release over L2 or L3 data may contain (it could reproduce one subject's value or has no per-subject bound); allowed: {}",
                RELEASABLE_AGGREGATES.join(", ")
            ));
        }
    };
    if argument.singles_out || filter.is_some_and(|f| f.singles_out) {
        return Err(format!(
            "`{shown}` can single out one subject: inside it an identifying column (entity, pii or quasi) is compared or combined with a constant"
        ));
    }
    Ok(kind)
}

/// Decides whether a group key of a release over protected data is one: computed only from
/// `dimension` columns (and constants), never from an identifying one.
pub fn releasable_group_key(lineage: &Lineage, shown: &str) -> Result<(), String> {
    if lineage.singles_out || lineage.identifying {
        return Err(format!(
            "group key `{shown}` is computed from an identifying column (entity, pii or quasi)"
        ));
    }
    if !lineage.from_data || !lineage.all_dimension {
        return Err(format!(
            "group key `{shown}` is not computed from `dimension` columns only"
        ));
    }
    Ok(())
}

/// Decides whether a row filter or a join condition below the aggregate is allowed: rows are
/// never chosen by a direct identifier's value (`WHERE id <> '...'`, a join of the identifier
/// with a lookup list), which would make a cell all of its subjects but one, or one alone.
/// Quasi-identifiers may filter (`visit_date >= ...`): the threshold, dominance and the
/// comparison with earlier releases judge what such cells reveal.
pub fn releasable_condition(lineage: &Lineage, what: &str) -> Result<(), String> {
    if lineage.direct_meets_constant {
        return Err(format!(
            "the {what} compares or combines a direct identifier (entity or pii) with a constant or a lookup list: rows may not be chosen by whose they are"
        ));
    }
    Ok(())
}

/// The dominance rules of statistical disclosure control (DOMAIN.md section 4), on each
/// subject's total contribution to a cell after the whole plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DominanceRule {
    /// The (n, k) rule: a cell fails when its top `n` subjects hold over `k_percent` of it.
    pub n: u32,
    pub k_percent: f64,
    /// The p% rule: a cell fails when its total minus its two largest contributions is under
    /// `p_percent` of the largest.
    pub p_percent: f64,
}

impl Default for DominanceRule {
    fn default() -> Self {
        DominanceRule {
            n: 2,
            k_percent: 90.0,
            p_percent: 10.0,
        }
    }
}

impl DominanceRule {
    /// Whether a scenario's rule is at least as strict as the platform's default (an admin
    /// may tighten it, never loosen it).
    pub fn validate(&self) -> Result<(), String> {
        let d = DominanceRule::default();
        if self.n < d.n || self.n > 10 {
            return Err(format!("dominance n must be from {} to 10", d.n));
        }
        if !(self.k_percent.is_finite() && self.k_percent > 0.0 && self.k_percent <= d.k_percent) {
            return Err(format!(
                "dominance k must be above 0 and at most {}%",
                d.k_percent
            ));
        }
        if !(self.p_percent.is_finite() && self.p_percent >= d.p_percent && self.p_percent <= 100.0)
        {
            return Err(format!("dominance p must be from {}% to 100%", d.p_percent));
        }
        Ok(())
    }

    /// Whether a cell fails: `total` is the sum of the absolute values of every row of the
    /// cell, `top` the largest per-subject totals (absolute values), largest first. A row
    /// that belongs to several subjects counts in full for each of them, and once in `total`.
    pub fn dominated(&self, total: f64, top: &[f64]) -> bool {
        if !total.is_finite() || top.iter().any(|t| !t.is_finite()) {
            return true;
        }
        if total <= 0.0 {
            return false;
        }
        let n: f64 = top.iter().take(self.n as usize).sum();
        if n > self.k_percent / 100.0 * total {
            return true;
        }
        let first = top.first().copied().unwrap_or(0.0);
        let second = top.get(1).copied().unwrap_or(0.0);
        first > 0.0 && total - first - second < self.p_percent / 100.0 * first
    }

    /// How many of the largest contributions [`dominated`](Self::dominated) needs.
    pub fn top_needed(&self) -> usize {
        (self.n as usize).max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(tags: &[ColumnTag]) -> Lineage {
        Lineage::of_column(tags, true)
    }

    #[test]
    fn an_identifier_meeting_a_constant_singles_out_whatever_the_function() {
        let id = column(&[ColumnTag::Pii(crate::SensitiveType::ResidentId)]);
        let spend = column(&[ColumnTag::Sensitive]);
        let constant = Lineage::constant();
        // id = '...' or strpos(id, '...') or substr(id, 7, 4): a built-in over both.
        let compared = Lineage::combine([&id, &constant]);
        assert!(compared.singles_out);
        // ... carried up through any expression around it.
        let case = Lineage::combine([&compared, &spend, &constant]);
        assert!(case.singles_out);
        // spend * 100 and a cast of the identifier do not.
        assert!(!Lineage::combine([&spend, &constant]).singles_out);
        assert!(!Lineage::combine([&id]).singles_out);
        // A constant built without a literal (from pi(), from a dimension) is still not the
        // identifier: meeting it singles out.
        let pi = Lineage::combine([]);
        assert!(Lineage::combine([&id, &pi]).singles_out);
        let district = column(&[ColumnTag::Dimension]);
        assert!(Lineage::combine([&id, &district]).direct_meets_constant);
        // Identifiers meeting identifiers (a join on the person key) do not; nor does a NULL
        // check.
        assert!(!Lineage::combine([&id, &id]).singles_out);
        assert!(!Lineage::combine([&Lineage::presence(&id), &spend]).singles_out);
        // A lookup list's column is a constant.
        let lookup = Lineage::of_column(&[ColumnTag::Dimension], false);
        assert!(Lineage::combine([&id, &lookup]).singles_out);
        // Age from the resident ID and the visit's date, by an approved module function.
        let date = column(&[ColumnTag::Dimension]);
        let age = Lineage::through_module([&id, &date]);
        assert!(!age.identifying && !age.singles_out);
        assert!(Lineage::combine([&age, &constant]) == Lineage::combine([&constant, &age]));
        assert!(Lineage::through_module([&id, &constant]).singles_out);
        assert!(Lineage::through_module([&id, &pi]).singles_out);
    }

    #[test]
    fn rows_are_never_chosen_by_whose_they_are() {
        let id = column(&[ColumnTag::Entity]);
        let date = column(&[ColumnTag::Quasi]);
        let constant = Lineage::constant();
        assert!(releasable_condition(&Lineage::combine([&id, &constant]), "filter").is_err());
        assert!(releasable_condition(&Lineage::combine([&date, &constant]), "filter").is_ok());
        assert!(releasable_condition(&Lineage::combine([&id, &id]), "join").is_ok());
        // A lookup list joined on the identifier takes on the identifier.
        let mut label = Lineage::of_column(&[ColumnTag::Dimension], false);
        label.joined_on(&Lineage::combine([&id]), true);
        assert!(label.singles_out && label.direct_meets_constant && !label.all_dimension);
        // A lookup list joined on a spend is no longer a dimension, and carries the spend.
        let mut spend = column(&[ColumnTag::Sensitive]);
        spend.sources.insert(7);
        let mut digit = Lineage::of_column(&[ColumnTag::Dimension], false);
        digit.joined_on(&spend, true);
        assert!(!digit.all_dimension && digit.sources.contains(&7));
        // Another table joined on the person key or a plain key keeps its dimensions; joined
        // on a spend, it does not.
        let mut district = column(&[ColumnTag::Dimension]);
        district.joined_on(&Lineage::combine([&id]), false);
        district.joined_on(&column(&[]), false);
        assert!(district.all_dimension);
        district.joined_on(&spend, false);
        assert!(!district.all_dimension && district.sources.contains(&7));
    }

    #[test]
    fn only_aggregates_with_a_per_subject_bound_are_releasable() {
        let value = column(&[ColumnTag::Sensitive]);
        let entity = column(&[ColumnTag::Entity]);
        let ok = |f: &str, distinct: bool, arg: &Lineage| {
            releasable_aggregate(f, false, distinct, 1, arg, None, f)
        };
        assert_eq!(ok("count", false, &value), Ok(Released::Count));
        assert_eq!(ok("sum", false, &value), Ok(Released::Sum));
        assert_eq!(ok("avg", false, &value), Ok(Released::Sum));
        assert_eq!(ok("count", true, &entity), Ok(Released::CountSubjects));
        for refused in ["min", "max", "median", "var_pop", "stddev", "array_agg"] {
            assert!(ok(refused, false, &value).is_err(), "{refused}");
        }
        assert!(ok("count", true, &value).is_err());
        assert!(releasable_aggregate("sum", true, false, 1, &value, None, "f(x)").is_err());
        assert!(
            releasable_aggregate("count", false, false, 2, &value, None, "count(a, b)").is_err()
        );
        let isolating = Lineage::combine([&entity, &Lineage::constant()]);
        let err = releasable_aggregate("sum", false, false, 1, &value, Some(&isolating), "sum(x)")
            .unwrap_err();
        assert!(err.contains("single out one subject"), "{err}");
    }

    #[test]
    fn group_keys_are_dimensions_or_generalizations_of_them() {
        let district = column(&[ColumnTag::Dimension]);
        let month = Lineage::combine([&district, &Lineage::constant()]);
        assert!(releasable_group_key(&month, "month").is_ok());
        let mobile = column(&[ColumnTag::Quasi]);
        assert!(releasable_group_key(&mobile, "mobile").is_err());
        assert!(releasable_group_key(&Lineage::constant(), "1").is_err());
        let age = Lineage::through_module([&column(&[ColumnTag::Entity])]);
        assert!(releasable_group_key(&age, "age(id)").is_err());
    }

    #[test]
    fn dominance_follows_the_n_k_and_p_percent_rules() {
        let rule = DominanceRule::default();
        // Ten equal contributors: neither rule.
        assert!(!rule.dominated(100.0, &[10.0, 10.0]));
        // The top two hold 91%.
        assert!(rule.dominated(100.0, &[60.0, 31.0]));
        assert!(!rule.dominated(100.0, &[40.0, 30.0]));
        // The p% rule, tightened to 20%: the rest (11) is under 20% of the largest (60), so
        // the second largest could estimate it, though the top two hold only 89%.
        let p20 = DominanceRule {
            p_percent: 20.0,
            ..rule
        };
        assert!(p20.dominated(100.0, &[60.0, 29.0]));
        assert!(!rule.dominated(100.0, &[60.0, 29.0]));
        // One subject in every row of a joined crowd: its total is the cell's.
        assert!(rule.dominated(1000.0, &[1000.0, 1.0]));
        // Values that are not numbers are never vouched for.
        assert!(rule.dominated(f64::NAN, &[1.0]));
        assert!(rule.dominated(10.0, &[f64::INFINITY]));
        assert!(!rule.dominated(0.0, &[]));
    }

    #[test]
    fn a_scenario_may_tighten_dominance_but_not_loosen_it() {
        let tighter = DominanceRule {
            n: 3,
            k_percent: 70.0,
            p_percent: 20.0,
        };
        assert!(tighter.validate().is_ok());
        for looser in [
            DominanceRule {
                n: 1,
                ..DominanceRule::default()
            },
            DominanceRule {
                k_percent: 95.0,
                ..DominanceRule::default()
            },
            DominanceRule {
                p_percent: 5.0,
                ..DominanceRule::default()
            },
            DominanceRule {
                k_percent: f64::NAN,
                ..DominanceRule::default()
            },
        ] {
            assert!(looser.validate().is_err(), "{looser:?}");
        }
    }
}
