//! Red team, round 4: new attacks on the export gate. Each test asserts the SECURE outcome.
//! Three worked when written and are defended now: unmatched rows of a lookup kept by an outer
//! join (nobody's, yet counted), `count(a, b)` measured by its first argument only, and a
//! filtered `count(DISTINCT entity)` measured not at all. Now an outer join keeps only sides
//! with subjects, an aggregate has one argument, and every count and sum of an exact release
//! aggregates k subjects or none.

use crate::common::{active_scenario, attempt, data, job, lone_visit, rows, rows_per_spot};

// ---- Helpers ----

/// The digits 0..9 as a VALUES list.
const DIGITS: &str = "(VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9))";

// ---- 1. Rows that belong to nobody, whose existence is the data's ----

/// FOUND: "rows of constants are nobody's" and count in no cell's total, but a FULL (or
/// RIGHT) JOIN of a lookup list with the data makes rows of constants whose *existence*
/// depends on subjects' values: a candidate that matches no row of the data comes out
/// unmatched, with no unit, and the gate neither counts nor measures it, yet the query's
/// own count(*) counts it. Candidates 0..49,999 cents are full-joined on `c <= spend*100`
/// with the one visit at the target's spot on the target's date (a quasi filter, allowed);
/// the matched rows go to a group of one subject (suppressed), the unmatched ones to the
/// largest spot's cell, which a UNION ALL with the whole table gives its k subjects. That
/// cell's count minus the spot's public row count is 49,999 minus the target's spend in
/// cents: the exact spend, in one release, with no dominance or threshold failing.
#[test]
fn redteam4_unmatched_lookup_rows_of_a_full_join_release_one_spend() {
    let (env, sid, _) = active_scenario();
    let (_, s, date, spend) = lone_visit();
    let per_spot = rows_per_spot();
    let (a, a_rows) = per_spot
        .iter()
        .filter(|(k, _)| **k != s)
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (k.clone(), *n))
        .unwrap();
    let sql = format!(
        "WITH cand AS (SELECT d1.column1*10000 + d2.column1*1000 + d3.column1*100 + d4.column1*10 + d5.column1 AS c \
           FROM {DIGITS} d1 CROSS JOIN {DIGITS} d2 CROSS JOIN {DIGITS} d3 CROSS JOIN {DIGITS} d4 CROSS JOIN {DIGITS} d5 \
           WHERE d1.column1 < 5), \
         t AS (SELECT spot, spend FROM visits WHERE visit_date = DATE '{date}' AND spot = '{s}') \
         SELECT g, count(*) AS n FROM ( \
           SELECT CASE WHEN t.spot IS NULL THEN '{a}' ELSE concat(t.spot, '#') END AS g \
             FROM cand FULL JOIN t ON cand.c <= round(t.spend * 100) \
           UNION ALL SELECT spot AS g FROM visits) u \
         GROUP BY g"
    );
    let preview = attempt(&env, &sid, &sql);
    let cents = (spend * 100.0).round() as i64;
    let leaked: Vec<String> = rows(&preview)
        .into_iter()
        .filter(|(g, _)| *g == a)
        .filter_map(|(_, c)| c.last()?.parse::<i64>().ok())
        .filter(|n| 49_999 - (n - a_rows as i64) == cents)
        .map(|n| format!("count {n} at {a} ({a_rows} visits) gives spend {cents} cents"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the target's exact spend was released: {leaked:?}\n{preview}"
    );
}

// ---- 2. What the gate measures of an aggregate: its first argument, not its FILTER ----

/// The largest spot, its largest spend (one visit, one resident), and the second largest.
fn top_spend() -> (String, f64, f64) {
    let per_spot = rows_per_spot();
    let (spot, _) = per_spot.iter().max_by_key(|(_, n)| **n).unwrap();
    let mut spends: Vec<f64> = data()
        .into_iter()
        .filter(|(_, s, _, _)| s == spot)
        .map(|(_, _, _, v)| v)
        .collect();
    spends.sort_by(|a, b| b.partial_cmp(a).unwrap());
    assert!(spends[0] > spends[1]);
    (spot.clone(), spends[0], spends[1])
}

/// FOUND: `count` is variadic in DataFusion (it counts rows where every argument is set),
/// but the gate measures only `f.params.args.first()`. `count(spend, CASE WHEN spend >= m
/// THEN 1 END)` is measured as `count(spend)` (every subject's rows: no dominance) while its
/// value counts only the rows of the one subject whose spend is m. Two such counts in one
/// release, at m and just above it, say that the cell's largest spend is exactly m: `max`,
/// which the allow-list refuses because it reproduces one subject's value.
#[test]
fn redteam4_a_second_argument_of_count_is_not_measured() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, \
           count(spend, CASE WHEN spend >= {m} THEN 1 END) AS at_least, \
           count(spend, CASE WHEN spend > {m} THEN 1 END) AS above \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| *g == spot && c[2] == "1" && c[3] == "0")
        .collect();
    assert!(
        leaked.is_empty(),
        "one subject's count was released unmeasured (the spot's max spend is {m}): {leaked:?}\n{preview}"
    );
}

/// FOUND: `count(DISTINCT entity)` is measured by nothing but the cell's rows: its FILTER is
/// not measured (a `count` with the same FILTER is). `count(DISTINCT resident_id) FILTER
/// (WHERE spend >= m)` is 1: one subject, released in a cell of hundreds; with the same at
/// just above m, the cell's largest spend is exactly m (`max` again).
#[test]
fn redteam4_a_filter_on_count_distinct_entity_is_not_measured() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, \
           count(DISTINCT resident_id) FILTER (WHERE spend >= {m}) AS at_least, \
           count(DISTINCT resident_id) FILTER (WHERE spend > {m}) AS above \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| *g == spot && c[2] == "1" && c[3] == "0")
        .collect();
    assert!(
        leaked.is_empty(),
        "one subject's count was released unmeasured (the spot's max spend is {m}): {leaked:?}\n{preview}"
    );
}

/// Defence that held (contrast): the same count with the condition as a FILTER of `count(*)`
/// is measured, and the one subject dominates it: the cell is not released.
#[test]
fn redteam4_a_filtered_count_of_one_subject_is_dominated() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, count(*) FILTER (WHERE spend >= {m}) AS at_least \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| *g == spot && c[2] == "1")
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}\n{preview}");
}

// ---- 3. Defences that held ----

/// HAVING over an aggregate not in the SELECT: DataFusion puts it in the aggregate, where
/// the allow-list sees it.
#[test]
fn redteam4_having_max_not_selected_is_refused() {
    let (env, sid, _) = active_scenario();
    let j = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot HAVING max(spend) > 499",
        &[],
    );
    assert_eq!(j["state"], "failed", "{j}");
}

/// A constant group key (one cell for the whole table) is no dimension: refused.
#[test]
fn redteam4_a_constant_group_key_is_refused() {
    let (env, sid, _) = active_scenario();
    let j = job(
        &env,
        &sid,
        "SELECT 'x' AS g, count(*) AS n FROM visits GROUP BY 'x'",
        &[],
    );
    assert_eq!(j["state"], "failed", "{j}");
}

/// A quasi-identifier compared inside an aggregate's second argument is still seen: every
/// argument's lineage is combined for the isolation rule.
#[test]
fn redteam4_a_quasi_condition_in_a_second_count_argument_is_refused() {
    let (env, sid, _) = active_scenario();
    let (_, _, date, _) = lone_visit();
    let j = job(
        &env,
        &sid,
        &format!(
            "SELECT spot, count(1, CASE WHEN visit_date = DATE '{date}' THEN 1 END) AS n \
             FROM visits GROUP BY spot"
        ),
        &[],
    );
    assert_eq!(j["state"], "failed", "{j}");
}
