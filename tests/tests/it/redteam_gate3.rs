//! Red team, round 3: new attacks on the export gate. Each test asserts the SECURE outcome.
//! The attacks that worked when written built the target's ID without a literal (from `pi()`,
//! from a dimension): the gate then knew only literals as constants. Now an identifier may
//! meet only identifiers, whatever the other value is built from. Rounds 1 and 2 (redteam_gate.rs, redteam_gate2.rs,
//! lineage.rs, gate_property.rs) are not repeated; the known limits are not re-reported.

use std::collections::BTreeMap;

use tidegate_server::visitor_csv;

use crate::common::{Env, ROWS, active_scenario, full_report, job, released, target};

// ---- Helpers ----

/// The target's visits in the demo data: (spot, visit_date, spend).
fn target_visits() -> Vec<(String, String, f64)> {
    let t = target();
    visitor_csv(ROWS)
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(&format!("{t},")))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2].to_string(), f[3].to_string(), f[4].parse().unwrap())
        })
        .collect()
}

/// The target's total spend per spot.
fn target_spend_by_spot() -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (spot, _, spend) in target_visits() {
        *m.entry(spot).or_insert(0.0) += spend;
    }
    m
}

/// The released rows of a preview, as (first cell, last cell).
fn rows(preview: &str) -> Vec<(String, String)> {
    preview
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (a, b) = l.rsplit_once(',').unwrap();
            let a = a.split(',').next().unwrap();
            (a.trim_matches('"').to_string(), b.to_string())
        })
        .collect()
}

/// Runs an attack: refused before it ran (empty), or run and exported; returns the preview.
fn attempt(env: &Env, sid: &str, sql: &str) -> String {
    let j = job(env, sid, sql, &[]);
    if j["state"] == "failed" {
        let error = j["error"].as_str().unwrap();
        assert!(error.starts_with("refused: "), "{sql}: {error}");
        eprintln!("REFUSED: {error}");
        return String::new();
    }
    let e = full_report(
        env,
        &env.world
            .scientist
            .request_export(j["id"].as_str().unwrap())
            .unwrap(),
    );
    released(env, &e)
}

/// Spots at which a released last column equals the target's own total spend (to a cent).
fn spends_recovered(preview: &str) -> Vec<String> {
    let truth = target_spend_by_spot();
    rows(preview)
        .into_iter()
        .filter_map(|(spot, v)| {
            let v: f64 = v.parse().ok()?;
            let t = truth.get(&spot)?;
            ((v - t).abs() < 0.005).then(|| format!("{spot}: released {v}, true {t}"))
        })
        .collect()
}

/// The number one with no literal in it: `pi()` takes no argument, so its lineage is
/// `combine([])` (not a constant, to the gate).
const ONE: &str = "CAST(pi()/pi() AS BIGINT)";

/// A non-negative integer written without any literal: Horner in base ten, digits as sums of
/// ONE.
fn int_without_literal(n: u64) -> String {
    let digit = |d: u64| -> String {
        if d == 0 {
            format!("({ONE}-{ONE})")
        } else {
            format!("({})", vec![ONE; d as usize].join("+"))
        }
    };
    let ten = digit(10);
    let mut e = String::new();
    for (i, c) in n.to_string().chars().enumerate() {
        let d = digit(c.to_digit(10).unwrap() as u64);
        e = if i == 0 {
            d
        } else {
            format!("({e}*{ten}+{d})")
        };
    }
    e
}

/// A string written without any literal: each character by `chr` of its code.
fn text_without_literal(s: &str) -> String {
    let parts: Vec<String> = s
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                format!(
                    "CAST({} AS VARCHAR)",
                    int_without_literal(c.to_digit(10).unwrap() as u64)
                )
            } else {
                format!("chr({})", int_without_literal(c as u64))
            }
        })
        .collect();
    format!("concat({})", parts.join(", "))
}

// ---- 1. Isolation: a constant the gate does not see as one ----

/// FOUND: SECURITY.md: "An aggregate whose argument or FILTER has an identifying column meet a
/// constant anywhere in its computation, through any function ... is refused". The constant
/// is recognised only as a SQL literal (`Expr::Literal`); a built-in function with no argument
/// (`pi()`, also `random()`, `now()`, `current_date()`) has the lineage of `combine([])`:
/// not a constant. The target's ID written as `concat(chr(..), ..)` of `pi()/pi()` arithmetic
/// compares the ID with a constant unseen: the FILTER keeps everyone but the target, the two
/// sums each pass k and dominance, and their difference, computed above the aggregate, is the
/// target's exact spend at every spot.
#[test]
fn redteam3_a_constant_built_from_pi_isolates_one_resident_in_a_filter() {
    let (env, sid, _) = active_scenario();
    let x = text_without_literal(&target());
    let sql = format!(
        "SELECT spot, sum(spend) - sum(spend) FILTER (WHERE resident_id <> {x}) AS d \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked = spends_recovered(&preview);
    assert!(
        leaked.is_empty(),
        "the target's spend per spot was released: {leaked:?}\n{preview}"
    );
}

/// FOUND (same hole, row filter): "Rows are never chosen by a direct identifier (entity or
/// pii) meeting a constant, in a filter" is defeated by the same literal-free constant.
#[test]
fn redteam3_a_constant_built_from_pi_chooses_rows_by_whose_they_are() {
    let (env, sid, _) = active_scenario();
    let x = text_without_literal(&target());
    let sql =
        format!("SELECT spot, count(*) AS n FROM visits WHERE resident_id <> {x} GROUP BY spot");
    let j = job(&env, &sid, &sql, &[]);
    assert_eq!(
        j["state"], "failed",
        "rows were chosen by the target's ID through pi(): {j}"
    );
}

/// FOUND (same root cause, no function without arguments needed): a value the same on every
/// row read from a `dimension` column is a constant in all but its lineage. The number one as
/// `length(spot)/length(spot)` (a dimension, from the data, never a "constant") spells the
/// target's ID; the FILTER difference releases the target's exact spend per spot. Treating
/// zero-argument functions as constants would not close this.
#[test]
fn redteam3_a_constant_built_from_a_dimension_isolates_one_resident() {
    let (env, sid, _) = active_scenario();
    let x =
        text_without_literal(&target()).replace(ONE, "CAST(length(spot)/length(spot) AS BIGINT)");
    assert!(!x.contains("pi()"));
    let sql = format!(
        "SELECT spot, sum(spend) - sum(spend) FILTER (WHERE resident_id <> {x}) AS d \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked = spends_recovered(&preview);
    assert!(
        leaked.is_empty(),
        "the target's spend per spot was released: {leaked:?}\n{preview}"
    );
}

/// Defence that held (for contrast): the same query with the ID as a literal is refused.
#[test]
fn redteam3_the_same_filter_with_a_literal_is_refused() {
    let (env, sid, _) = active_scenario();
    let t = target();
    let sql = format!(
        "SELECT spot, sum(spend) - sum(spend) FILTER (WHERE resident_id <> '{t}') AS d \
         FROM visits GROUP BY spot"
    );
    let j = job(&env, &sid, &sql, &[]);
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("single out"), "{j}");
}

/// Defence that held: whatever the constant, a group key that reads the ID is refused (the
/// group-key rule reads `identifying`, which no function without arguments removes).
#[test]
fn redteam3_a_group_key_comparing_the_id_with_a_literal_free_constant_is_refused() {
    let (env, sid, _) = active_scenario();
    let x = text_without_literal(&target());
    let sql = format!(
        "SELECT CASE WHEN resident_id = {x} THEN 'them' ELSE spot END AS g, count(*) AS n \
         FROM visits GROUP BY CASE WHEN resident_id = {x} THEN 'them' ELSE spot END"
    );
    let j = job(&env, &sid, &sql, &[]);
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("group key"), "{j}");
}

/// Defence that held: a crowd of the other table joined to rows chosen by the quasi value of
/// one visit (the target's) gives the cell k subjects, but every row is the target's:
/// dominated, nothing released for that cell's sum of the target's spend.
#[test]
fn redteam3_a_crowd_joined_to_one_visit_picked_by_quasi_values_is_dominated() {
    let (env, sid, _) = active_scenario();
    let (spot, date, spend) = target_visits().into_iter().next().unwrap();
    let sql = format!(
        "SELECT b.spot, sum(a.spend) AS s, count(*) AS n FROM visits a CROSS JOIN visits b \
         WHERE a.visit_date = DATE '{date}' AND a.spend = {spend} AND a.spot = '{spot}' \
         GROUP BY b.spot"
    );
    // The target is in every row of every cell: each is dominated, and none is released.
    let preview = attempt(&env, &sid, &sql);
    assert!(rows(&preview).is_empty(), "released: {preview}");
}
