//! Red team, round 5: attacks on the export gate. Each test asserts the SECURE outcome.
//! Four worked when written and are defended now: "k subjects or none" counted subjects whose
//! net part is non-zero, so an indicator spelled 2-or-1, an avg of 1000-or-1, or 1-or-0 plus
//! an offset released `max` by differencing with count(*) (now every sum is also measured
//! above its cell's minimum, where the one subject holds it all); and an outer join judged a
//! side by whether it carried a unit, so a lookup UNION ALL'd with one data row was kept
//! unmatched (now only a side whose every row is a subject's may be kept).

use crate::common::{active_scenario, attempt, data, job, lone_visit, rows, rows_per_spot};

// ---- Helpers ----

/// The digits 0..9 as a VALUES list.
const DIGITS: &str = "(VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9))";

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

// ---- 1. "k subjects or none" counts subjects whose part is non-zero: 1 vs 2 instead of 0 vs 1 ----

/// FOUND: the rule "every count and sum of an exact release aggregates k subjects or none"
/// counts the subjects whose net part is not 0. An indicator spelled 2-or-1 instead of
/// 1-or-0 gives every subject a non-zero part, and no one dominates (each subject's part is
/// its visits, one more for the one visit at or above m). Released with `count(*)`, the
/// difference `sum(...) - count(*)` is the number of visits with spend >= m: two such sums
/// (at m and just above) say the spot's largest spend is exactly m, the `max` that the
/// allow-list refuses and that round 4's `count(*) FILTER (WHERE spend >= m)` was refused for.
#[test]
fn redteam5_an_indicator_of_two_or_one_releases_the_largest_spend() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, \
           sum(CASE WHEN spend >= {m} THEN 2 ELSE 1 END) AS at_least, \
           sum(CASE WHEN spend > {m} THEN 2 ELSE 1 END) AS above \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| {
            let n: i64 = c[1].parse().unwrap_or(-1);
            let a: i64 = c[2].parse().unwrap_or(-1);
            let b: i64 = c[3].parse().unwrap_or(-1);
            *g == spot && a - n == 1 && b - n == 0
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "the spot's largest spend ({m}) was released as a difference of sums: {leaked:?}\n{preview}"
    );
}

/// FOUND (same hole, with avg): `avg(CASE WHEN spend >= m THEN 1000 ELSE 1 END)` has every
/// subject's part non-zero, and the one subject's 1000 is under 90% of the cell in a spot of
/// hundreds of visits. avg * count(*) - count(*) is 999 times the number of visits >= m.
#[test]
fn redteam5_an_avg_of_an_indicator_with_a_non_zero_else_releases_the_largest_spend() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, \
           avg(CASE WHEN spend >= {m} THEN 1000.0 ELSE 1.0 END) AS at_least, \
           avg(CASE WHEN spend > {m} THEN 1000.0 ELSE 1.0 END) AS above \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| {
            let n: f64 = c[1].parse().unwrap_or(-1.0);
            let a: f64 = c[2].parse().unwrap_or(-1.0);
            let b: f64 = c[3].parse().unwrap_or(-1.0);
            *g == spot && ((a * n - n) / 999.0 - 1.0).abs() < 1e-6 && (b * n - n).abs() < 1e-6
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "the spot's largest spend ({m}) was released through an average: {leaked:?}\n{preview}"
    );
}

/// FOUND (same hole, no threshold on a value needed): an offset on the spend hides nothing
/// (the spend is measured, SECURITY.md), but an offset on an *indicator of the spend* does:
/// `sum(spend >= m ? 1 : 0) + 1000 per row` has the spend as its only source, and the spend
/// of a large spot is not dominated. Released minus 1000 * count(*) is the count over m.
#[test]
fn redteam5_an_offset_indicator_is_measured_by_an_undominated_source() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, \
           sum(CASE WHEN spend >= {m} THEN 1 ELSE 0 END + 1000) AS at_least \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| {
            let n: i64 = c[1].parse().unwrap_or(-1);
            let a: i64 = c[2].parse().unwrap_or(-1);
            *g == spot && a - 1000 * n == 1
        })
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}\n{preview}");
}

/// Defence that held (contrast): the same indicator 1-or-0 is one subject's sum: refused.
#[test]
fn redteam5_an_indicator_of_one_or_zero_is_one_subjects_sum() {
    let (env, sid, _) = active_scenario();
    let (spot, m, _) = top_spend();
    let sql = format!(
        "SELECT spot, count(*) AS n, sum(CASE WHEN spend >= {m} THEN 1 ELSE 0 END) AS at_least \
         FROM visits GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked: Vec<_> = rows(&preview)
        .into_iter()
        .filter(|(g, c)| *g == spot && c[2] == "1")
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}\n{preview}");
}

// ---- 2. A lookup kept unmatched, spelled so that its side has subjects ----

/// FOUND: "an outer join keeps unmatched rows of sides with subjects only" judges a side by
/// whether it *carries* a unit column, not whether its kept rows have one. A UNION ALL of the
/// candidate list with one row of the data makes a side with subjects whose candidate rows
/// are nobody's; LEFT JOIN it to the target's one visit (a quasi filter) on `c <= spend*100`:
/// the unmatched candidates are kept, nobody's, and counted by the query's count(*) but not
/// by the gate. Round 4's attack again: the largest spot's count minus its visits is 49,999
/// (or 50,000) minus the target's spend in cents.
#[test]
fn redteam5_a_lookup_unioned_with_one_data_row_is_a_side_with_subjects() {
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
         side AS (SELECT c FROM cand UNION ALL \
                  SELECT CAST(NULL AS BIGINT) AS c FROM visits WHERE visit_date = DATE '{date}' AND spot = '{s}'), \
         t AS (SELECT spot, spend FROM visits WHERE visit_date = DATE '{date}' AND spot = '{s}') \
         SELECT g, count(*) AS n FROM ( \
           SELECT CASE WHEN t.spot IS NULL THEN '{a}' ELSE concat(t.spot, '#') END AS g \
             FROM side LEFT JOIN t ON side.c <= round(t.spend * 100) \
           UNION ALL SELECT spot AS g FROM visits) u \
         GROUP BY g"
    );
    let preview = attempt(&env, &sid, &sql);
    let cents = (spend * 100.0).round() as i64;
    let leaked: Vec<String> = rows(&preview)
        .into_iter()
        .filter(|(g, _)| *g == a)
        .filter_map(|(_, c)| c.last()?.parse::<i64>().ok())
        .filter(|n| {
            let extra = n - a_rows as i64;
            49_999 - extra == cents || 50_000 - extra == cents
        })
        .map(|n| format!("count {n} at {a} ({a_rows} visits) gives spend {cents} cents"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the target's exact spend was released: {leaked:?}\n{preview}"
    );
}

/// Defence that held: a RIGHT JOIN with the lookup on the right is refused as the FULL JOIN
/// of round 4 is (a right join written as a left join with swapped sides is the same check).
#[test]
fn redteam5_a_right_join_keeping_a_lookup_is_refused() {
    let (env, sid, _) = active_scenario();
    let j = job(
        &env,
        &sid,
        "SELECT v.spot, count(*) AS n FROM visits v RIGHT JOIN (VALUES (1),(2)) AS c(x) \
         ON c.x <= v.spend GROUP BY v.spot",
        &[],
    );
    assert_eq!(j["state"], "failed", "{j}");
}
