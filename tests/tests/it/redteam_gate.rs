//! The red team's attacks on the export gate, written by someone who did not write it: ways a
//! scientist could learn something about one subject of L2 data, from a released result or
//! without any release. Each test asserts the SECURE outcome. Those whose doc comment says
//! "Found" worked when they were written and are defended now; "Held" ones never worked.
//!
//! Most attacks first chose the target's rows by the resident ID; that is refused before
//! anything runs (rows are never chosen by a direct identifier), so each is also tried with
//! the same rows chosen by what an attacker may know of the visits instead (their days and
//! spends, quasi-identifiers and values): there the defences by construction must hold.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tidegate_server::visitor_csv;

use crate::common::{
    self, Env, ROWS, active_scenario, export_of, full_report, gate_check, job,
    refused_before_running, released, setup, target,
};

/// The target's visits in the demo data: (spot, spend), the ground truth an attack recovers.
fn target_visits() -> Vec<(String, f64)> {
    let t = target();
    visitor_csv(ROWS)
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(&format!("{t},")))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2].to_string(), f[4].parse().unwrap())
        })
        .collect()
}

/// A condition on the columns `{p}visit_date` and `{p}spend` true for exactly the target's
/// visits: the target's rows chosen without naming the resident ID.
fn target_rows(p: &str) -> String {
    let t = target();
    let picks: Vec<String> = visitor_csv(ROWS)
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(&format!("{t},")))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!("({p}visit_date = DATE '{}' AND {p}spend = {})", f[3], f[4])
        })
        .collect();
    format!("({})", picks.join(" OR "))
}

/// Runs an attack: refused before it ran, or run and exported; returns the preview released
/// (empty when refused).
fn attempt(env: &Env, sid: &str, sql: &str) -> String {
    let j = job(env, sid, sql, &[]);
    if j["state"] == "failed" {
        let error = j["error"].as_str().unwrap();
        assert!(error.starts_with("refused: "), "{sql}: {error}");
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

/// A gate report as the requester reads it, without the provenance check (which names the
/// job): what two probes may be compared by.
fn as_requester_reads(report: &Value) -> Value {
    let mut r = report.clone();
    if let Some(checks) = r["checks"].as_array_mut() {
        checks.retain(|c| c["name"] != "provenance");
    }
    r
}

/// The target's total spend per spot.
fn target_spend_by_spot() -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (spot, spend) in target_visits() {
        *m.entry(spot).or_insert(0.0) += spend;
    }
    m
}

/// The released rows of a preview, as (first cell, second cell).
fn rows(preview: &str) -> Vec<(String, String)> {
    preview
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (a, b) = l.rsplit_once(',').unwrap();
            (a.trim_matches('"').to_string(), b.to_string())
        })
        .collect()
}

/// Spots at which a released value equals the target's own total spend (to a cent).
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

// ---- 1. One subject's exact value out of a released result ----

/// Found: the whole table, plus the whole table again negated WITHOUT the target, in one
/// UNION ALL: every row but the target's cancels, so each spot's sum is the target's spend.
/// Now: choosing rows by the ID is refused; chosen otherwise, every other subject's net
/// contribution is zero and the target's is the whole cell: dominated.
#[test]
fn redteam_union_all_with_a_negated_copy_releases_one_subjects_spend() {
    let (env, sid, _) = active_scenario();
    let t = target();
    let by_id = format!(
        "SELECT spot, sum(x) AS s FROM ( \
           SELECT spot, spend AS x FROM visits \
           UNION ALL \
           SELECT spot, 0 - spend AS x FROM visits WHERE resident_id <> '{t}' \
         ) u GROUP BY spot"
    );
    let error = refused_before_running(&env, &sid, &by_id, &[]);
    assert!(
        error.contains("rows may not be chosen by whose they are"),
        "{error}"
    );
    let others = format!("NOT {}", target_rows(""));
    let sql = format!(
        "SELECT spot, sum(x) AS s FROM ( \
           SELECT spot, spend AS x FROM visits \
           UNION ALL \
           SELECT spot, 0 - spend AS x FROM visits WHERE {others} \
         ) u GROUP BY spot"
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked = spends_recovered(&preview);
    assert!(
        leaked.is_empty(),
        "one subject's spend per spot was released: {leaked:?}\n{preview}"
    );
}

/// Found: a LEFT JOIN with a constant table keyed by the target's ID gives every row a weight
/// (0 for the target, 1 for everyone else); two plain sums, subtracted above the aggregate,
/// leave the target's spend. Now: the join condition is refused; keyed otherwise, the weight
/// carries its condition's lineage and the sum using it singles out.
#[test]
fn redteam_a_weight_joined_on_the_identifier_and_a_difference_of_sums_releases_one_spend() {
    let (env, sid, _) = active_scenario();
    let t = target();
    let by_id = format!(
        "SELECT v.spot, sum(v.spend) - sum(v.spend * coalesce(w.keep, 1.0)) AS s \
         FROM visits v LEFT JOIN (VALUES ('{t}', 0.0)) AS w(id, keep) ON v.resident_id = w.id \
         GROUP BY v.spot"
    );
    let error = refused_before_running(&env, &sid, &by_id, &[]);
    assert!(
        error.contains("rows may not be chosen by whose they are"),
        "{error}"
    );
    // The same weight joined on the visit's day and spend: the weight takes on what it was
    // joined on (a quasi-identifier meeting constants) and singles out inside the sum.
    let visits: Vec<String> = visitor_csv(ROWS)
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(&format!("{t},")))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!("(DATE '{}', {}, 0.0)", f[3], f[4])
        })
        .collect();
    let sql = format!(
        "SELECT v.spot, sum(v.spend) - sum(v.spend * coalesce(w.keep, 1.0)) AS s \
         FROM visits v LEFT JOIN (VALUES {}) AS w(d, s, keep) ON v.visit_date = w.d AND v.spend = w.s \
         GROUP BY v.spot",
        visits.join(", ")
    );
    let preview = attempt(&env, &sid, &sql);
    let leaked = spends_recovered(&preview);
    assert!(
        leaked.is_empty(),
        "one subject's spend per spot was released: {leaked:?}\n{preview}"
    );
}

/// Found: the refused aggregate FILTER moved into a UNION ALL branch tag, the second branch
/// leaving the target out by its ID. Now refused. (Two aggregates of one cell that differ by
/// one subject chosen by quasi-identifiers are a tracker inside one release: the release
/// auditing of the gate's memory judges those, not these rules.)
#[test]
fn redteam_a_branch_tag_instead_of_a_filter_isolates_one_subject() {
    let (env, sid, _) = active_scenario();
    let t = target();
    let sql = format!(
        "SELECT spot, sum(CASE WHEN b = 1 THEN spend ELSE 0 END) \
                    - sum(CASE WHEN b = 2 THEN spend ELSE 0 END) AS s FROM ( \
           SELECT spot, spend, 1 AS b FROM visits \
           UNION ALL \
           SELECT spot, spend, 2 AS b FROM visits WHERE resident_id <> '{t}' \
         ) u GROUP BY spot"
    );
    let error = refused_before_running(&env, &sid, &sql, &[]);
    assert!(
        error.contains("rows may not be chosen by whose they are"),
        "{error}"
    );
}

/// Found: a group key from a dimension and a constant table's column, the constant table
/// joined on the target's spend (units and cents), a self-join padding each cell with the
/// spot's visitors: every key spelled a visit's spend. Now: a lookup list joined on a value
/// takes on the value's lineage (a spend, not a dimension), so the key is refused.
#[test]
fn redteam_a_group_key_joined_on_a_sensitive_value_spells_one_subjects_spend() {
    let (env, sid, _) = active_scenario();
    let t = target();
    let units: String = (0..500)
        .map(|i| format!("({i})"))
        .collect::<Vec<_>>()
        .join(",");
    let cents: String = (0..100)
        .map(|i| format!("({i})"))
        .collect::<Vec<_>>()
        .join(",");
    for choose in [format!("a.resident_id = '{t}'"), target_rows("a.")] {
        let sql = format!(
            "SELECT a.spot || '=' || CAST(u.n * 100 + c.n AS VARCHAR) AS cell, \
                    count(DISTINCT b.resident_id) AS people \
             FROM visits a \
             JOIN (VALUES {units}) AS u(n) ON CAST(floor(a.spend) AS BIGINT) = u.n \
             JOIN (VALUES {cents}) AS c(n) ON CAST(round(a.spend * 100) AS BIGINT) % 100 = c.n \
             JOIN visits b ON a.spot = b.spot \
             WHERE {choose} \
             GROUP BY a.spot || '=' || CAST(u.n * 100 + c.n AS VARCHAR)"
        );
        let preview = attempt(&env, &sid, &sql);
        let spelled: Vec<String> = target_visits()
            .into_iter()
            .filter(|(spot, spend)| {
                let key = format!("{spot}={}", (spend * 100.0).round() as i64);
                preview.lines().any(|l| l.starts_with(&key))
            })
            .map(|(spot, spend)| format!("{spot} {spend}"))
            .collect();
        assert!(
            spelled.is_empty(),
            "the target's visits were spelled out in released group keys: {spelled:?}\n{preview}"
        );
    }
}

// ---- 2. Passing k with fewer than k real subjects ----

/// Found: the target's visits joined to every visit of the same spot, with only
/// `count(DISTINCT entity)` released: which cells exist told the target's spots. Now every
/// cell also measures each subject's rows, and the target is in all of them: dominated.
#[test]
fn redteam_a_crowd_joined_to_one_subject_passes_k_with_count_distinct() {
    let (env, sid, _) = active_scenario();
    let sql = format!(
        "SELECT a.spot, count(DISTINCT b.resident_id) AS people \
         FROM visits a JOIN visits b ON a.spot = b.spot \
         WHERE {} GROUP BY a.spot",
        target_rows("a.")
    );
    let preview = attempt(&env, &sid, &sql);
    let shown: Vec<String> = rows(&preview).into_iter().map(|r| r.0).collect();
    assert!(
        shown.is_empty(),
        "groups that only exist because of one subject were released (the target's spots {:?}): {shown:?}",
        target_spend_by_spot().keys().collect::<Vec<_>>()
    );
}

/// Held: the same crowd with a count or a sum is dominated by the target (it is in every row).
#[test]
fn redteam_a_crowd_joined_to_one_subject_is_dominated_with_count_or_sum() {
    let (env, sid, _) = active_scenario();
    for agg in ["count(*)", "sum(b.spend)", "avg(b.spend + 1000)"] {
        let sql = format!(
            "SELECT a.spot, {agg} AS x FROM visits a JOIN visits b ON a.spot = b.spot \
             WHERE {} GROUP BY a.spot",
            target_rows("a.")
        );
        let e = export_of(&env, &sid, &sql, &[]);
        assert_eq!(
            e["gate_report"]["groups_suppressed"], e["gate_report"]["groups_total"],
            "{sql}: {e}"
        );
    }
}

// ---- 3. Hiding a dominant contributor ----

/// Forty visitors spend 1.00 each at West Lake; one spends a fortune there.
fn one_big_spender() -> (Env, String) {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    csv.push_str("big,13800000000,West Lake,2026-05-01,1000000.00\n");
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    (env, sid)
}

/// Found: the spend is laundered through joins with constant tables (one per decimal
/// digit): the summed value is rebuilt from the digits' constant columns, so it carries no
/// numeric *source* the dominance rules would follow. Its own measure is then diluted by
/// +1e9 and -1e9 rows for every visit (absolute values: everybody holds 2e9), which cancel in
/// the sum. The big spender is no longer dominant and the released sum is 1,000,040.
#[test]
fn redteam_a_spend_rebuilt_from_joined_digits_and_diluted_hides_a_dominant_subject() {
    let (env, sid) = one_big_spender();
    let digits = "(VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9))";
    let mut joins = String::new();
    let mut value = Vec::new();
    for d in 0..7 {
        joins.push_str(&format!(
            " JOIN {digits} AS d{d}(n) ON CAST(floor(v.spend / {p}) AS BIGINT) % 10 = d{d}.n",
            p = 10i64.pow(d)
        ));
        value.push(format!("{}.0 * d{d}.n", 10i64.pow(d)));
    }
    let sql = format!(
        "SELECT spot, sum(x) AS s FROM ( \
           SELECT v.spot, {value} AS x FROM visits v {joins} \
           UNION ALL SELECT spot, 1000000000.0 AS x FROM visits \
           UNION ALL SELECT spot, -1000000000.0 AS x FROM visits \
         ) u GROUP BY spot",
        value = value.join(" + ")
    );
    let e = export_of(&env, &sid, &sql, &[]);
    let preview = released(&env, &e);
    assert_eq!(
        e["gate_report"]["groups_suppressed"], 1,
        "the dominant spender's cell was released: {preview}\n{e}"
    );
}

/// Held: diluting without laundering is caught by the numeric source the sum reads.
#[test]
fn redteam_dilution_alone_does_not_hide_a_dominant_subject() {
    let (env, sid) = one_big_spender();
    let sql = "SELECT spot, sum(x) AS s FROM ( \
           SELECT spot, spend AS x FROM visits \
           UNION ALL SELECT spot, 1000000000.0 AS x FROM visits \
           UNION ALL SELECT spot, -1000000000.0 AS x FROM visits \
         ) u GROUP BY spot";
    let e = export_of(&env, &sid, sql, &[]);
    assert_eq!(e["gate_report"]["groups_suppressed"], 1, "{e}");
}

// ---- 4. Side channels without an export ----

/// Found: the gate report the scientist read counted every group before suppression: a
/// query narrowed to the target's visits and a condition on their spend had a group per spot
/// where it held, all suppressed, and the count read anyway. Now the requesting org reads
/// which checks passed, without counts.
#[test]
fn redteam_the_gate_report_counts_the_groups_of_one_subject() {
    let (env, sid, _) = active_scenario();
    let groups_total = |condition: &str| {
        let j = job(
            &env,
            &sid,
            &format!(
                "SELECT spot, count(*) AS n FROM visits WHERE {} AND {condition} GROUP BY spot",
                target_rows("")
            ),
            &[],
        );
        assert_eq!(j["state"], "succeeded", "{j}");
        let e = env
            .world
            .scientist
            .request_export(j["id"].as_str().unwrap())
            .unwrap();
        as_requester_reads(&e["gate_report"])
    };
    let holds = groups_total("spend >= 0");
    let fails = groups_total("spend > 1000000");
    assert_eq!(
        holds, fails,
        "the scientist's gate report tells whether one subject's spend meets a condition"
    );
}

/// Found: the same count under differential privacy, for free: an export asking for more
/// epsilon than is left was refused (spending nothing), yet its report counted the groups.
/// Now the requesting org's report has no counts.
#[test]
fn redteam_a_private_scenarios_refused_export_counts_groups_for_free() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let sid = private_scenario(&env, json!({ "privacy_budget": 1.0 }));
    let groups_total = |condition: &str| {
        let j = job(
            &env,
            &sid,
            &format!(
                "SELECT spot, count(*) AS n FROM visits WHERE {} AND {condition} GROUP BY spot",
                target_rows("")
            ),
            &[],
        );
        assert_eq!(j["state"], "succeeded", "{j}");
        let e = env
            .world
            .scientist
            .request_export_spending(j["id"].as_str().unwrap(), 1000.0)
            .unwrap();
        assert_eq!(e["state"], "rejected", "{e}");
        as_requester_reads(&e["gate_report"])
    };
    let holds = groups_total("spend >= 0");
    let fails = groups_total("spend > 1000000");
    assert_eq!(
        holds, fails,
        "a refused private export's report tells, exactly and for no epsilon, whether one subject's spend meets a condition"
    );
}

/// Found: whether a job fails is shown, and a CASE in the WHERE could make the target's rows
/// fail only when a condition on their spend held: one bit per job. The state cannot be
/// hidden (there is no result), so the bits are rationed: a scenario whose jobs over L2 data
/// stopped while running three times is suspended (a risk stop, an alert in the log) until
/// an admin resumes it.
#[test]
fn redteam_a_jobs_failure_is_one_bit_about_one_subject() {
    let (env, sid, _) = active_scenario();
    let probe = |condition: &str| {
        job(
            &env,
            &sid,
            &format!(
                "SELECT spot, count(*) AS n FROM visits \
                 WHERE CASE WHEN {} THEN 1 / CAST({condition} AS INT) ELSE 1 END = 1 \
                 GROUP BY spot",
                target_rows("")
            ),
            &[],
        )
    };
    // Each failure may be a bit about the target; after the third the scenario is
    // suspended, and nothing runs until an admin has looked.
    for _ in 0..tidegate_policy::MAX_WITHHELD_FAILURES {
        let j = probe("spend > 1000000");
        assert_eq!(j["state"], "failed", "{j}");
    }
    let after = env.world.scientist.submit_job(
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
        &[],
    );
    let refused = after.unwrap_err().to_string();
    assert!(refused.contains("suspended"), "{refused}");
    let log = std::fs::read_to_string(env.data_dir().join(tidegate_runtime::AUDIT_FILE)).unwrap();
    assert!(
        log.contains("\"alert\":true"),
        "the suspension is an alert in the log"
    );
    // R-MONITOR: the repeated breaches raised an alert before the suspension.
    let alerts = env.world.admin.alerts(false).unwrap();
    let breaches: Vec<&serde_json::Value> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "limit_breaches" && a["scenario"] == sid.as_str())
        .collect();
    assert_eq!(breaches.len(), 1, "{alerts}");
}

// (The time a job takes can depend on one subject's value: a condition on the target's
// spend that, when it holds, joins their rows to the whole table. Jobs report time in whole
// seconds and the submission waits for the job, so a slow branch of seconds is visible. No
// rule here closes that channel; SECURITY.md says so, and the failure rationing above does
// not cover it.)

// ---- 5. Differential privacy ----

/// The scientist's application over the visits, with `extra` fields merged in, approved.
fn private_scenario(env: &Env, rules: Value) -> String {
    let today = time::OffsetDateTime::now_utc().date();
    let request = json!({
        "name": "Spot footfall",
        "key_area": "culture and tourism",
        "purpose": "visits per scenic spot",
        "public_interest": true,
        "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot", "visit_date", "spend"] }],
        "term_start": (today - time::Duration::days(1)).to_string(),
        "term_end": (today + time::Duration::days(30)).to_string(),
        "export_rules": rules,
    });
    let s = env.world.scientist.apply_scenario(&request).unwrap();
    let id = s["id"].as_str().unwrap().to_string();
    env.world.admin.approve_scenario(&id).unwrap();
    env.world.provider.approve_scenario(&id).unwrap();
    id
}

/// Found: an export request with a tiny epsilon makes the noise scale exceed the sampler's
/// range; the sampler's refusal surfaces as an internal error (HTTP 500) instead of a gate
/// refusal.
#[test]
fn redteam_a_tiny_epsilon_is_refused_not_an_internal_error() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let sid = private_scenario(&env, json!({ "privacy_budget": 1.0 }));
    let j = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
        &[],
    );
    let answer = env
        .world
        .scientist
        .request_export_spending(j["id"].as_str().unwrap(), 1e-13);
    let e = answer.unwrap_or_else(|e| panic!("the export request failed: {e}"));
    assert_eq!(e["state"], "rejected", "{e}");
}

/// Held: under differential privacy the crowd-and-constant-key tricks cannot run: a join of
/// two tables with subjects is refused, a derived column is refused, and count(DISTINCT) is
/// not released.
#[test]
fn redteam_private_escapes_through_derived_columns_and_joins_are_refused() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let sid = private_scenario(&env, json!({ "privacy_budget": 1.0 }));
    let joined = job(
        &env,
        &sid,
        &format!(
            "SELECT a.spot, count(DISTINCT b.resident_id) AS n FROM visits a JOIN visits b ON a.spot = b.spot WHERE {} GROUP BY a.spot",
            target_rows("a.")
        ),
        &[],
    );
    assert_eq!(joined["state"], "failed", "{joined}");
    for (sql, reason) in [
        (
            "SELECT spot, n FROM (SELECT spot, count(*) AS n, count(*) AS m FROM visits GROUP BY spot) t WHERE m >= 0",
            "filter",
        ),
        (
            "SELECT spot, CAST(n AS DOUBLE) AS n FROM (SELECT spot, count(*) AS n FROM visits GROUP BY spot) t",
            "computed from",
        ),
        (
            "SELECT spot, count(DISTINCT resident_id) AS n FROM visits GROUP BY spot",
            "cannot be noised",
        ),
    ] {
        let j = job(&env, &sid, sql, &[]);
        assert_eq!(j["state"], "succeeded", "{sql}: {j}");
        let e = full_report(
            &env,
            &env.world
                .scientist
                .request_export_spending(j["id"].as_str().unwrap(), 0.1)
                .unwrap(),
        );
        assert_eq!(e["state"], "rejected", "{sql}: {e}");
        let (passed, detail) = gate_check(&e, "privacy budget");
        assert!(!passed && detail.contains(reason), "{sql}: {detail}");
    }
}

// ---- Defences that held ----

/// Held: an identifier compared with a constant inside a HAVING aggregate or an aggregate's
/// FILTER is refused like one in the SELECT list.
#[test]
fn redteam_isolation_in_having_or_filter_is_refused() {
    let (env, sid, hash) = active_scenario();
    let t = target();
    for sql in [
        format!(
            "SELECT spot, count(*) AS n FROM visits GROUP BY spot HAVING sum(CASE WHEN resident_id = '{t}' THEN spend ELSE 0 END) > 100"
        ),
        format!(
            "SELECT spot, count(*) FILTER (WHERE resident_id IN ('{t}')) AS n FROM visits GROUP BY spot"
        ),
        format!(
            "SELECT spot, sum(spend * CAST(age_at_visit(resident_id, visit_date) = age_at_visit('{t}', visit_date) AS INT)) AS s FROM visits GROUP BY spot"
        ),
    ] {
        let error = refused_before_running(&env, &sid, &sql, std::slice::from_ref(&hash));
        assert!(error.contains("single out"), "{sql}: {error}");
    }
}

// ---- 6. Crashes and internal errors ----

/// Found: hostile but legal SQL must end in a result or a refusal the scientist can read,
/// never in an internal error. A group key of a struct type (`named_struct('s', spot)`)
/// passes the job and the gate's rules, then the export request fails with HTTP 500
/// ("internal: csv: ... Nested type Struct is not supported in CSV").
#[test]
fn redteam_hostile_sql_never_gives_an_internal_error() {
    let (env, sid, _) = active_scenario();
    let mut odd = Vec::new();
    for sql in [
        "SELECT spot, count(*) AS n FROM visits a JOIN visits b USING (spot) GROUP BY spot",
        "SELECT a.spot, count(*) AS n FROM visits a NATURAL JOIN visits b GROUP BY a.spot",
        "SELECT spot, count(*) AS n FROM visits a FULL JOIN visits b USING (spot, resident_id) GROUP BY spot",
        "SELECT named_struct('s', spot) AS k, count(*) AS n FROM visits GROUP BY named_struct('s', spot)",
        "SELECT make_array(spot) AS k, count(*) AS n FROM visits GROUP BY make_array(spot)",
        "SELECT arrow_cast(spot, 'Dictionary(Int32, Utf8)') AS k, count(*) AS n FROM visits GROUP BY arrow_cast(spot, 'Dictionary(Int32, Utf8)')",
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot, spot",
        "SELECT count(*) AS n FROM visits",
        "SELECT spot, count(*) AS n FROM (SELECT * FROM visits UNION ALL SELECT * FROM visits) t GROUP BY spot",
        "SELECT spot, count(*) AS n FROM (SELECT spot FROM visits UNION ALL SELECT 'x' UNION ALL SELECT NULL) t GROUP BY spot",
        "SELECT spot, count(*) AS n FROM (SELECT NULL AS spot UNION ALL SELECT spot FROM visits) t GROUP BY spot",
        "SELECT spot, sum(x) AS n FROM (SELECT spot, spend AS x FROM visits UNION ALL SELECT spot, CAST(resident_id AS DOUBLE) FROM visits WHERE false) t GROUP BY spot",
        "SELECT spot, sum(spend) AS s FROM visits WHERE false GROUP BY spot",
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot HAVING false",
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot ORDER BY 2 LIMIT 0",
        "SELECT spot, count(*) AS n FROM (SELECT spot FROM visits LIMIT 5 OFFSET 2) t GROUP BY spot",
        "SELECT upper(spot) AS s, count(*) AS n FROM visits GROUP BY upper(spot) ORDER BY sum(spend) DESC",
        "SELECT spot, count(*) AS n, sum(spend) / count(*) AS r FROM visits GROUP BY spot",
        "SELECT v.spot, count(*) AS n FROM visits v JOIN (VALUES (1)) AS t(x) ON true GROUP BY v.spot",
        "SELECT v.spot, count(*) AS n FROM (VALUES (1)) AS t(x) LEFT JOIN visits v ON t.x = 1 GROUP BY v.spot",
        "SELECT v.spot, count(*) AS n FROM visits v RIGHT JOIN visits w ON v.spot = w.spot AND false GROUP BY v.spot",
        "SELECT spot, sum(spend) FILTER (WHERE spend > 1) AS s, avg(spend) AS a FROM visits GROUP BY spot",
        "SELECT CAST(spot AS BYTEA) AS k, count(*) AS n FROM visits GROUP BY CAST(spot AS BYTEA)",
        "SELECT spot, sum(CAST(spend AS DECIMAL(38, 10))) AS s FROM visits GROUP BY spot",
        "SELECT spot, sum(CAST(spend * 1e300 AS DOUBLE) * 1e300) AS s FROM visits GROUP BY spot",
        "SELECT spot, count(*) AS n FROM visits GROUP BY 1",
        "SELECT t.spot, t.n FROM (SELECT spot, count(*) AS n FROM visits GROUP BY spot) AS t ORDER BY t.n",
    ] {
        match env.world.scientist.submit_job(&sid, sql, &[]) {
            Err(e) => odd.push(format!("{sql}: the request failed: {e}")),
            Ok(j) => {
                let error = j["error"].as_str().unwrap_or("");
                if error.starts_with("internal") || error.contains("plan analysis") {
                    odd.push(format!("{sql}: {error}"));
                } else if j["state"] == "succeeded" {
                    let e = env
                        .world
                        .scientist
                        .request_export(j["id"].as_str().unwrap());
                    if let Err(e) = e {
                        odd.push(format!("{sql}: the export request failed: {e}"));
                    }
                }
            }
        }
    }
    assert!(odd.is_empty(), "{}", odd.join("\n"));
}

/// Found: two exports whose groups have the same subjects passed the differencing check
/// (subject counts only): the second left out ONE of the target's visits by its ID and spend,
/// and the two sums differed by exactly that spend. Now refused by the ID. (Left out by day
/// and spend instead, the pair is a tracker across releases: the gate's memory, comparing
/// released values and subject sets, judges it.)
#[test]
fn redteam_a_tracker_that_keeps_the_subject_count_passes_differencing() {
    let (env, sid, _) = active_scenario();
    let t = target();
    let visits = target_visits();
    let (_, spend) = visits
        .iter()
        .find(|(s, _)| visits.iter().filter(|(o, _)| o == s).count() > 1)
        .cloned()
        .expect("the target visits a spot twice");
    let error = refused_before_running(
        &env,
        &sid,
        &format!(
            "SELECT spot, sum(spend) AS s FROM visits \
             WHERE NOT (resident_id = '{t}' AND spend = {spend}) GROUP BY spot"
        ),
        &[],
    );
    assert!(
        error.contains("rows may not be chosen by whose they are"),
        "{error}"
    );
}

/// Found: a long chain of additions (20,000 terms, in the SELECT list or in a WHERE) overflows
/// the job thread's 8 MiB stack in DataFusion's SQL planner (a recursive `Expr::clone` under
/// `statement_to_plan`, which `recursive_protection` does not cover), and a stack overflow
/// aborts the whole process: one scientist's
/// query takes the platform down. (The attack runs in a child process of this test binary,
/// so that the abort does not take the other tests with it.)
#[test]
fn redteam_a_very_long_expression_ends_in_an_answer() {
    if !common::in_a_process_of_its_own(
        "redteam_gate::redteam_a_very_long_expression_ends_in_an_answer",
    ) {
        return;
    }
    let terms: usize = std::env::var("REDTEAM_TERMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (env, sid, _) = active_scenario();
    let chain = vec!["spend"; terms].join(" + ");
    // (REDTEAM_WHERE puts the chain in a WHERE, which the gate's lineage walk skips.)
    let sql = if std::env::var("REDTEAM_WHERE").is_ok() {
        format!("SELECT spot, count(*) AS n FROM visits WHERE {chain} > 0 GROUP BY spot")
    } else {
        format!("SELECT spot, sum({chain}) AS s FROM visits GROUP BY spot")
    };
    let j = env.world.scientist.submit_job(&sid, &sql, &[]);
    let j = j.unwrap_or_else(|e| panic!("a query of {terms} added terms: the request failed: {e}"));
    let error = j["error"].as_str().unwrap_or("");
    assert!(!error.starts_with("internal"), "{error}");
}
