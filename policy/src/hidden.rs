//! The hidden vocabulary: every name the runtime gives its own columns and functions. They all
//! start with [`RESERVED_PREFIX`], in any case, which no user may name, alias, import or
//! output ([`is_reserved`]); the gate strips every such column before a result is shown. One
//! home, so that a renamed column cannot silently stop the gate from stripping it.

/// The prefix of every hidden name (compared without regard to case).
pub const RESERVED_PREFIX: &str = "__tg";

/// Whether `name` is the runtime's: it starts with `__tg` in any spelling of its case.
pub fn is_reserved(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

/// A table's entity key, for counting subjects.
pub const ENTITY: &str = "__tg_entity";
/// A stored row's identity: a hash of all its values, written at import (and made for tables
/// held in memory), so that the gate's memory can tell rows apart across jobs, scenarios and
/// versions whatever columns each was granted.
pub const ROW: &str = "__tg_row";
/// Distinct subjects of an output group (NULL entity keys count as one).
pub const SUBJECTS: &str = "__tg_subjects";
/// `__tg_key_0..`: each group's key values.
pub const GROUP_KEY_PREFIX: &str = "__tg_key_";
/// `__tg_dp_0..`: each count or sum computed again with every subject's contribution bounded,
/// which the gate noises.
pub const BOUNDED_PREFIX: &str = "__tg_dp_";
/// A group's subjects once each subject keeps at most its bounded number of groups, for
/// choosing the groups of a private release.
pub const BOUNDED_SUBJECTS: &str = "__tg_dp_subjects";
/// The gate's per-subject rows read back from its sealed spill, as one table of a job.
pub const CONTRIBUTIONS: &str = "__tg_contributions";
/// A gated job's input below its aggregate, computed once and read by the query's aggregate
/// and by the gate's per-subject work, as one table of a job.
pub const SHARED: &str = "__tg_shared";
/// Whether a group's sum is dominated by its top contributors (R-GATE 3).
pub const DOMINATED: &str = "__tg_dominated";

/// `__tg_u0..`: a row's subject from one scan (its entity key, as text).
pub const UNIT_PREFIX: &str = "__tg_u";
/// `__tg_w0..`: a row's identity from one scan (of a table with subjects).
pub const ROW_PREFIX: &str = "__tg_w";
/// `__tg_s0..`: a numeric column of a table with subjects, as a double.
pub const SOURCE_PREFIX: &str = "__tg_s";
/// `__tg_t0..`: a cell's total of a measure (absolute values).
pub const TOTAL_PREFIX: &str = "__tg_t";
/// `__tg_c0..`: one subject's part of a measure in one cell.
pub const PART_PREFIX: &str = "__tg_c";
/// `__tg_d0..`: one subject's signed count or sum of an aggregate, for bounding.
pub const SIGNED_PREFIX: &str = "__tg_d";
/// The subject's rows in a cell, each with the measures it adds to.
pub const ROWS: &str = "__tg_rows";
/// The subject a contribution row belongs to.
pub const SUBJECT: &str = "__tg_subject";
/// Which copy of a joined row (one per unit) a contribution row is.
pub const BRANCH: &str = "__tg_branch";
/// `__tg_stored0..`: the stored row each unit's scan read.
pub const STORED_PREFIX: &str = "__tg_stored";
/// `__tg_unitof0..`: each unit's subject (for rows without identities).
pub const UNIT_OF_PREFIX: &str = "__tg_unitof";
/// `__tg_a0..`: an aggregate's argument carried below the aggregate.
pub const ARGUMENT_PREFIX: &str = "__tg_a";
/// `__tg_f0..`: an aggregate's FILTER carried below the aggregate.
pub const FILTER_PREFIX: &str = "__tg_f";
/// The index of a joined row's copy in the cross join that makes one per unit.
pub const COPY_INDEX: &str = "__tg_i";
/// The function naming one row's element of a cell's set.
pub const ROW_ELEMENT_FUNCTION: &str = "__tg_row_element";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_prefix_is_reserved_and_nothing_else() {
        for name in ["__tg", "__tg_entity", "__TG_x", "__Tg", "__tG_dp_0"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["", "_tg", "tg_x", "__t", "x__tg", "__é"] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn every_hidden_name_is_reserved() {
        let names = [
            ENTITY,
            ROW,
            SUBJECTS,
            GROUP_KEY_PREFIX,
            BOUNDED_PREFIX,
            BOUNDED_SUBJECTS,
            DOMINATED,
            UNIT_PREFIX,
            ROW_PREFIX,
            SOURCE_PREFIX,
            TOTAL_PREFIX,
            PART_PREFIX,
            SIGNED_PREFIX,
            ROWS,
            SUBJECT,
            BRANCH,
            STORED_PREFIX,
            UNIT_OF_PREFIX,
            ARGUMENT_PREFIX,
            FILTER_PREFIX,
            COPY_INDEX,
            ROW_ELEMENT_FUNCTION,
        ];
        assert!(names.iter().all(|n| is_reserved(n)));
    }
}
