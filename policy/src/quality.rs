//! Data quality rules (S17): what a provider declares of a dataset's columns, checked on every
//! import, and what an import that breaks one becomes (refused, quarantined, or reported).

use serde::{Deserialize, Serialize};

use crate::detect::{SensitiveType, scan_value};
use crate::model::{ColumnSpec, ColumnTag};
use crate::rules::Refusal;

/// What a rule asks of a column's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "check", rename_all = "snake_case", deny_unknown_fields)]
pub enum QualityCheck {
    /// No value is missing.
    NotNull,
    /// Every number lies in `[min, max]` (either bound may be left out).
    Range { min: Option<f64>, max: Option<f64> },
    /// Every value is one of these.
    Categories { values: Vec<String> },
    /// No value appears twice (missing values aside).
    Unique,
    /// Every value is a well-formed identifier of the column's sensitive type, check digits
    /// valid (resident ID, bank card, credit code).
    CheckDigits,
    /// The newest date (`YYYY-MM-DD...`) is at most this many days before the import.
    Fresh { within_days: u32 },
}

/// What becomes of an import that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Nothing is stored.
    Refuse,
    /// The version is stored sealed: no job reads it until an admin unseals it.
    #[default]
    Quarantine,
    /// The version is stored and the report says so.
    Report,
}

/// A rule on one column. (Unknown fields are refused by the check it flattens.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualityRule {
    pub column: String,
    #[serde(flatten)]
    pub check: QualityCheck,
    #[serde(default)]
    pub on_fail: OnFail,
}

/// The most rules one dataset may declare, and categories one rule may list.
pub const MAX_QUALITY_RULES: usize = 64;
pub const MAX_CATEGORIES: usize = 1024;

/// The types whose identifiers carry check digits.
const WITH_CHECK_DIGITS: [SensitiveType; 3] = [
    SensitiveType::ResidentId,
    SensitiveType::BankCard,
    SensitiveType::CreditCode,
];

/// S17: the rules are usable against these columns: each names a column, a range has a
/// bound and `min <= max`, categories are a bounded list, check digits are asked only of a
/// column tagged with a type that has them.
pub fn check_quality_rules(rules: &[QualityRule], columns: &[ColumnSpec]) -> Result<(), Refusal> {
    let refuse = |reason: String| Err(Refusal { reason });
    if rules.len() > MAX_QUALITY_RULES {
        return refuse(format!("at most {MAX_QUALITY_RULES} quality rules"));
    }
    for r in rules {
        let Some(column) = columns.iter().find(|c| c.name == r.column) else {
            return refuse(format!("a quality rule names no column `{}`", r.column));
        };
        match &r.check {
            QualityCheck::Range { min, max } => {
                if min.is_none() && max.is_none() {
                    return refuse(format!("the range on `{}` has no bound", r.column));
                }
                if min.is_some_and(|m| !m.is_finite()) || max.is_some_and(|m| !m.is_finite()) {
                    return refuse(format!("the range on `{}` is not finite", r.column));
                }
                if let (Some(a), Some(b)) = (min, max)
                    && a > b
                {
                    return refuse(format!("the range on `{}` ends before it starts", r.column));
                }
            }
            QualityCheck::Categories { values } => {
                if values.is_empty() || values.len() > MAX_CATEGORIES {
                    return refuse(format!(
                        "the categories of `{}` are 1 to {MAX_CATEGORIES} values",
                        r.column
                    ));
                }
            }
            QualityCheck::CheckDigits => {
                if check_digit_type(column).is_none() {
                    return refuse(format!(
                        "`{}` is not tagged with a type that has check digits (pii:resident_id, pii:bank_card, pii:credit_code)",
                        r.column
                    ));
                }
            }
            QualityCheck::NotNull | QualityCheck::Unique | QualityCheck::Fresh { .. } => {}
        }
    }
    Ok(())
}

/// The check-digit type a column is tagged with, if any.
pub fn check_digit_type(column: &ColumnSpec) -> Option<SensitiveType> {
    column.tags.iter().find_map(|t| match t {
        ColumnTag::Pii(kind) if WITH_CHECK_DIGITS.contains(kind) => Some(*kind),
        _ => None,
    })
}

/// Whether one present value keeps a rule that is judged value by value (not-null,
/// uniqueness and freshness are judged over the column).
pub fn value_keeps(check: &QualityCheck, kind: Option<SensitiveType>, value: &str) -> bool {
    match check {
        QualityCheck::Range { min, max } => match value.trim().parse::<f64>() {
            Ok(v) => min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m),
            Err(_) => false,
        },
        QualityCheck::Categories { values } => values.iter().any(|c| c == value),
        QualityCheck::CheckDigits => kind.is_some_and(|k| {
            scan_value(value.trim())
                .iter()
                .any(|d| d.kind == k && d.certain)
        }),
        QualityCheck::NotNull | QualityCheck::Unique | QualityCheck::Fresh { .. } => true,
    }
}

/// What an import becomes given the rules it broke (each with its `on_fail`): refused if any
/// says so, else quarantined if any says so, else stored.
pub fn quality_verdict(broken: &[OnFail]) -> OnFail {
    if broken.contains(&OnFail::Refuse) {
        OnFail::Refuse
    } else if broken.contains(&OnFail::Quarantine) {
        OnFail::Quarantine
    } else {
        OnFail::Report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, tags: &str) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            data_type: crate::model::DataType::Utf8,
            tags: crate::model::parse_tags(tags).unwrap(),
        }
    }

    #[test]
    fn rules_are_checked_against_the_columns_they_name() {
        let columns = [
            col("resident_id", "pii:resident_id,entity"),
            col("spend", ""),
        ];
        let ok = |json: &str| {
            let rules: Vec<QualityRule> = serde_json::from_str(json).unwrap();
            check_quality_rules(&rules, &columns)
        };
        assert!(ok(r#"[{"column": "spend", "check": "range", "min": 0, "max": 800}]"#).is_ok());
        assert!(ok(r#"[{"column": "resident_id", "check": "check_digits"}]"#).is_ok());
        assert!(ok(r#"[{"column": "spend", "check": "check_digits"}]"#).is_err());
        assert!(ok(r#"[{"column": "nope", "check": "not_null"}]"#).is_err());
        assert!(ok(r#"[{"column": "spend", "check": "range", "min": 9, "max": 1}]"#).is_err());
        assert!(ok(r#"[{"column": "spend", "check": "range"}]"#).is_err());
        for bad in [
            r#"[{"column": "spend", "check": "whatever"}]"#,
            r#"[{"column": "spend", "check": "range", "mni": 0}]"#,
            r#"[{"column": "spend", "check": "not_null", "on_fail": "ignore"}]"#,
        ] {
            assert!(
                serde_json::from_str::<Vec<QualityRule>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_keep_or_break_a_rule_one_by_one() {
        let range = QualityCheck::Range {
            min: Some(0.0),
            max: Some(800.0),
        };
        assert!(value_keeps(&range, None, "12.5"));
        assert!(!value_keeps(&range, None, "-1"));
        assert!(!value_keeps(&range, None, "twelve"));
        let digits = QualityCheck::CheckDigits;
        let id = Some(SensitiveType::ResidentId);
        assert!(value_keeps(&digits, id, "11010519491231002X"));
        assert!(!value_keeps(&digits, id, "110105194912310021"));
        assert_eq!(
            quality_verdict(&[OnFail::Report, OnFail::Quarantine]),
            OnFail::Quarantine
        );
        assert_eq!(
            quality_verdict(&[OnFail::Quarantine, OnFail::Refuse]),
            OnFail::Refuse
        );
        assert_eq!(quality_verdict(&[]), OnFail::Report);
    }
}
