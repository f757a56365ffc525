//! The gate judges what a result reveals, not how its query looks (R-GATE 2, 3 and 7): tags
//! and subjects follow the data through the whole plan, whatever the columns are called; a
//! release is made of allowed operators and aggregates only, and nothing else runs over L2
//! data; a joined row belongs to every subject it came from; dominance is judged on each
//! subject's true contribution; nothing derived from the data reaches the scientist except
//! through an export.

use serde_json::Value;
use tidegate_policy::DominanceRule;
use tidegate_server::visitor_csv;

use crate::common;
use crate::common::{
    ROWS, active_scenario, export_of, gate_check, job, preview_of, refused_before_running,
    scalar_module, setup, target,
};

/// The same resident's visit as a filter on its day and spend (quasi and sensitive columns:
/// rows are never chosen by the resident ID itself).
fn target_visit() -> String {
    let csv = visitor_csv(ROWS);
    let line = csv.lines().nth(100).unwrap();
    let cells: Vec<&str> = line.split(',').collect();
    format!(
        "a.visit_date = DATE '{}' AND a.spend = {}",
        cells[3], cells[4]
    )
}

/// The data rows of a released preview (its header line dropped).
fn released_rows(preview: &str) -> usize {
    preview.lines().skip(1).filter(|l| !l.is_empty()).count()
}

#[test]
fn renaming_or_aliasing_a_column_or_a_subquery_keeps_its_tags() {
    let (env, sid, _) = active_scenario();
    let t = target();
    for (sql, reason) in [
        (
            "SELECT region, count(*) AS n FROM (SELECT resident_id AS region FROM visits) t GROUP BY region".to_string(),
            "group key `region` is computed from an identifying column",
        ),
        (
            "WITH v AS (SELECT visit_date AS spot FROM visits) SELECT spot, count(*) AS n FROM v GROUP BY spot".to_string(),
            "is computed from an identifying column",
        ),
        (
            "SELECT spot, count(*) AS n FROM (SELECT spot AS place, resident_id AS spot FROM visits) AS x GROUP BY spot".to_string(),
            "is computed from an identifying column",
        ),
        (
            format!("WITH x AS (SELECT spot, CASE WHEN resident_id = '{t}' THEN spend END AS s FROM visits) SELECT spot, sum(s) AS s FROM x GROUP BY spot"),
            "can single out one subject",
        ),
        (
            format!("SELECT spot, sum(s) AS s FROM (SELECT v.spot, v.spend * CAST(v.resident_id = '{t}' AS INT) AS s FROM visits AS v) AS v GROUP BY spot"),
            "can single out one subject",
        ),
    ] {
        let error = refused_before_running(&env, &sid, &sql, &[]);
        assert!(error.contains(reason), "{sql}: {error}");
    }
    // A dimension renamed is still a dimension.
    let renamed = export_of(
        &env,
        &sid,
        "SELECT place, count(*) AS n FROM (SELECT spot AS place, resident_id AS id FROM visits) t GROUP BY place",
        &[],
    );
    assert_eq!(renamed["state"], "in_review", "{renamed}");
}

#[test]
fn a_column_named_like_a_hidden_one_is_refused_in_any_case() {
    let (env, sid, _) = active_scenario();
    for sql in [
        "SELECT spot, count(*) AS \"__TG_subjects\" FROM visits GROUP BY spot",
        "SELECT spot AS \"__Tg_key_0\", count(*) AS n FROM visits GROUP BY spot",
        "SELECT spot, count(*) AS n FROM (SELECT spot, resident_id AS \"__tg_u1\" FROM visits) t GROUP BY spot",
        "SELECT spot, count(DISTINCT __tg_entity) AS n FROM visits GROUP BY spot",
    ] {
        let j = job(&env, &sid, sql, &[]);
        assert_eq!(j["state"], "failed", "{sql}: {j}");
        assert!(
            j["error"].as_str().unwrap().contains("reserved"),
            "{sql}: {j}"
        );
    }
}

#[test]
fn one_subjects_row_repeated_by_a_join_is_still_one_subject() {
    let (env, sid, _) = active_scenario();
    let visit = target_visit();
    // The target's visit joined to every visit (a cross join, a self-join on a column that
    // is not the subject): every output row carries the target. Each group has hundreds of
    // subjects, but the target is in every row and holds all of each sum and count (and of
    // a count of distinct subjects' rows): dominated, suppressed.
    for sql in [
        format!(
            "SELECT a.spot, count(*) AS n, sum(a.spend) AS s FROM visits a CROSS JOIN visits b WHERE {visit} GROUP BY a.spot"
        ),
        format!(
            "SELECT a.spot, count(*) AS n, sum(a.spend) AS s FROM visits a JOIN visits b ON a.spot = b.spot WHERE {visit} GROUP BY a.spot"
        ),
        format!(
            "SELECT a.spot, count(DISTINCT b.resident_id) AS people FROM visits a JOIN visits b ON a.spot = b.spot WHERE {visit} GROUP BY a.spot"
        ),
    ] {
        let e = export_of(&env, &sid, &sql, &[]);
        let (_, detail) = gate_check(&e, "dominance");
        assert!(!detail.starts_with("0 group(s)"), "{sql}: {detail}");
        assert_eq!(
            e["gate_report"]["groups_suppressed"], e["gate_report"]["groups_total"],
            "{sql}: {e}"
        );
        assert_eq!(released_rows(&preview_of(&env, &e)), 0, "{sql}");
    }
    // A crowd of rows without subjects (constants) adds rows, never subjects.
    let crowd: String = (0..60)
        .map(|i| format!("({i})"))
        .collect::<Vec<_>>()
        .join(", ");
    let e = export_of(
        &env,
        &sid,
        &format!(
            "SELECT a.spot, count(*) AS n FROM visits a CROSS JOIN (VALUES {crowd}) AS f(n) WHERE {visit} GROUP BY a.spot"
        ),
        &[],
    );
    assert_eq!(released_rows(&preview_of(&env, &e)), 0, "{e}");
    // The same join without singling anyone out releases its groups: many subjects, none
    // dominant.
    let e = export_of(
        &env,
        &sid,
        "SELECT a.spot, count(*) AS pairs FROM visits a JOIN visits b ON a.spot = b.spot GROUP BY a.spot",
        &[],
    );
    assert!(released_rows(&preview_of(&env, &e)) > 3, "{e}");
}

/// Forty visitors spend 1.00 each at West Lake; one spends a fortune there.
fn one_big_spender() -> (common::Env, String) {
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

#[test]
fn an_offset_added_to_every_row_does_not_hide_a_dominant_subject() {
    let (env, sid) = one_big_spender();
    for sql in [
        "SELECT spot, sum(spend) AS s FROM visits GROUP BY spot",
        "SELECT spot, sum(spend + 1000000000) AS s FROM visits GROUP BY spot",
        "SELECT spot, avg(spend * 0.000001 + 5000) AS s FROM visits GROUP BY spot",
        "SELECT spot, sum(x) AS s FROM (SELECT spot, spend - 7 AS x FROM visits) t GROUP BY spot",
    ] {
        let e = export_of(&env, &sid, sql, &[]);
        assert_eq!(e["gate_report"]["groups_suppressed"], 1, "{sql}: {e}");
        let (_, detail) = gate_check(&e, "dominance");
        assert!(
            detail.starts_with("1 group(s) suppressed"),
            "{sql}: {detail}"
        );
    }
    // The count of visitors is not dominated: released.
    let e = export_of(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
        &[],
    );
    assert_eq!(e["gate_report"]["groups_suppressed"], 0, "{e}");
}

#[test]
fn an_aggregate_that_can_single_out_a_subject_is_refused_whatever_the_function() {
    let (env, sid, hash) = active_scenario();
    let t = target();
    for sql in [
        format!("SELECT spot, sum(CASE WHEN strpos(resident_id, '{t}') > 0 THEN spend ELSE 0 END) AS s FROM visits GROUP BY spot"),
        format!("SELECT spot, sum(spend * CAST(starts_with(resident_id, '{t}') AS INT)) AS s FROM visits GROUP BY spot"),
        format!("SELECT spot, sum(spend) FILTER (WHERE resident_id LIKE '{t}%') AS s FROM visits GROUP BY spot"),
        format!("SELECT spot, avg(CASE WHEN substr(resident_id, 1, 18) = '{t}' THEN spend END) AS s FROM visits GROUP BY spot"),
        format!("SELECT spot, count(CASE WHEN resident_id > '{t}' AND resident_id < '{t}1' THEN 1 END) AS n FROM visits GROUP BY spot"),
        format!("SELECT spot, sum(spend * (length(replace(resident_id, '{t}', '')) = 0)::INT) AS s FROM visits GROUP BY spot"),
        // A quasi-identifier against a constant inside an aggregate, too.
        "SELECT spot, sum(CASE WHEN visit_date = DATE '2026-05-01' THEN spend END) AS s FROM visits GROUP BY spot".to_string(),
        // A module's function over an identifier and a constant.
        format!("SELECT spot, avg(age_at_visit('{t}', visit_date)) AS a FROM visits GROUP BY spot"),
    ] {
        let error = refused_before_running(&env, &sid, &sql, std::slice::from_ref(&hash));
        assert!(error.contains("can single out one subject"), "{sql}: {error}");
    }
    // Age from the resident ID and the visit's date, by the approved module: allowed.
    let demo = export_of(&env, &sid, common::DEMO_SQL, &[hash]);
    assert_eq!(demo["state"], "in_review", "{demo}");
}

#[test]
fn only_the_allowed_aggregates_and_operators_run_over_l2_data() {
    let (env, sid, _) = active_scenario();
    for (sql, reason) in [
        (
            "SELECT spot, var_pop(spend) AS v FROM visits GROUP BY spot",
            "var_pop",
        ),
        (
            "SELECT spot, stddev(spend) AS v FROM visits GROUP BY spot",
            "stddev",
        ),
        (
            "SELECT spot, min(spend) AS v FROM visits GROUP BY spot",
            "min",
        ),
        (
            "SELECT spot, max(spend) AS v FROM visits GROUP BY spot",
            "max",
        ),
        (
            "SELECT spot, median(spend) AS v FROM visits GROUP BY spot",
            "median",
        ),
        (
            "SELECT spot, approx_distinct(resident_id) AS v FROM visits GROUP BY spot",
            "approx_distinct",
        ),
        (
            "SELECT spot, array_agg(spend) AS v FROM visits GROUP BY spot",
            "array_agg",
        ),
        (
            "SELECT spot, string_agg(resident_id, ',') AS v FROM visits GROUP BY spot",
            "string_agg",
        ),
        (
            "SELECT spot, count(DISTINCT visit_date) AS v FROM visits GROUP BY spot",
            "DISTINCT",
        ),
        (
            "SELECT spot, count(*) AS n FROM visits GROUP BY ROLLUP(spot)",
            "ROLLUP",
        ),
        (
            "SELECT spot, count(*) AS n FROM visits GROUP BY CUBE(spot)",
            "ROLLUP",
        ),
        (
            "SELECT spot, count(*) AS n FROM visits GROUP BY GROUPING SETS ((spot), ())",
            "ROLLUP",
        ),
        ("SELECT spot, spend FROM visits", "no GROUP BY aggregate"),
        (
            "SELECT spot, count(*) OVER (PARTITION BY spot) AS n FROM visits",
            "no GROUP BY aggregate",
        ),
        (
            "SELECT n, count(*) AS c FROM (SELECT spot, count(*) AS n FROM visits GROUP BY spot) t GROUP BY n",
            "second aggregate",
        ),
        (
            "SELECT spot, count(*) AS n FROM visits WHERE spend > (SELECT avg(spend) FROM visits) GROUP BY spot",
            "subquery",
        ),
        (
            "SELECT spot, count(*) AS n FROM visits WHERE resident_id IN (SELECT resident_id FROM visits WHERE spend > 400) GROUP BY spot",
            "subquery",
        ),
        (
            "SELECT spot, count(*) AS n FROM (SELECT spot FROM visits UNION SELECT spot FROM visits) t GROUP BY spot",
            "DISTINCT",
        ),
        (
            "SELECT spot, count(*) AS n FROM (SELECT DISTINCT spot, resident_id FROM visits) t GROUP BY spot",
            "DISTINCT",
        ),
        (
            "SELECT spot, count(*) AS n, rank() OVER (ORDER BY count(*)) AS r FROM visits GROUP BY spot",
            "window",
        ),
    ] {
        let error = refused_before_running(&env, &sid, sql, &[]);
        assert!(error.contains(reason), "{sql}: {error}");
    }
    // UNION ALL, joins, CTEs, filters and HAVING are allowed.
    let e = export_of(
        &env,
        &sid,
        "WITH a AS (SELECT spot, spend FROM visits WHERE spend > 10), \
         b AS (SELECT spot, spend FROM visits WHERE spend <= 10) \
         SELECT spot, count(*) AS n, sum(spend) AS s FROM (SELECT * FROM a UNION ALL SELECT * FROM b) u \
         GROUP BY spot HAVING count(*) > 0 ORDER BY spot",
        &[],
    );
    assert_eq!(e["state"], "in_review", "{e}");
}

#[test]
fn the_scientist_sees_no_row_count_exact_resources_or_failure_cause_over_l2_data() {
    let (env, sid, _) = active_scenario();
    let ok = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
        &[],
    );
    assert_eq!(ok["state"], "succeeded", "{ok}");
    assert!(ok["rows"].is_null(), "{ok}");
    let r = &ok["resources"];
    let multiple = |name: &str, unit: u64| {
        let v = r[name].as_u64().unwrap();
        assert_eq!(v % unit, 0, "{name} {v} is not in units of {unit}");
    };
    multiple("fuel", 1_000_000_000);
    multiple("cpu_ms", 1000);
    multiple("wall_ms", 1000);
    multiple("peak_engine_memory_bytes", 64 << 20);
    multiple("peak_guest_memory_bytes", 64 << 20);
    multiple("output_bytes", 1 << 20);
    multiple("guest_calls", 1000);

    // A guest that traps, a cast that fails on a value: the scientist reads the same words
    // for each. The authority reads the cause in the log.
    let trap = scalar_module("f", "float64) -> float64", "unreachable", "");
    let (module, _) = env.world.publish_module(&sid, &trap).unwrap();
    let hashes = [module["hash"].as_str().unwrap().to_string()];
    let failures: Vec<Value> = [
        (
            "SELECT spot, sum(f(spend)) AS s FROM visits GROUP BY spot",
            Some(&hashes[0]),
        ),
        (
            "SELECT spot, sum(CAST(resident_id AS BIGINT)) AS s FROM visits GROUP BY spot",
            None,
        ),
    ]
    .into_iter()
    .map(|(sql, module)| {
        let modules: Vec<String> = module.into_iter().cloned().collect();
        job(&env, &sid, sql, &modules)
    })
    .collect();
    for f in &failures {
        assert_eq!(f["state"], "failed", "{f}");
        assert_eq!(f["error"], failures[0]["error"], "{f}");
    }
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("the cause is not shown"),
        "{}",
        failures[0]
    );
    let log = std::fs::read_to_string(env.data_dir().join(tidegate_runtime::AUDIT_FILE)).unwrap();
    assert_eq!(log.matches("\"withheld\":true").count(), 2, "{log}");
}

#[test]
fn an_admin_may_tighten_the_dominance_rules_of_a_scenario_never_loosen_them() {
    let env = setup(true);
    // Ten visitors at West Lake spending from 30 down to 2 (top two: 55 of 132, 42%).
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for (i, spend) in [30.0, 25.0, 20.0, 15.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0]
        .iter()
        .enumerate()
    {
        csv.push_str(&format!(
            "v{i:02},13800000000,West Lake,2026-05-01,{spend}\n"
        ));
    }
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    let sql = "SELECT spot, sum(spend) AS s FROM visits GROUP BY spot";
    // The defaults, (2, 90%) and p = 10%: released.
    let e = export_of(&env, &sid, sql, &[]);
    assert_eq!(e["gate_report"]["groups_suppressed"], 0, "{e}");
    // The admin tightens them to (2, 40%) by a policy document: suppressed.
    let mut doc = env.world.admin.export_policy().unwrap();
    let s = doc.scenarios.iter_mut().find(|s| s.id == sid).unwrap();
    s.export_rules.as_mut().unwrap().dominance = Some(DominanceRule {
        n: 2,
        k_percent: 40.0,
        p_percent: 10.0,
    });
    env.world.admin.apply_policy(&doc, false).unwrap();
    let e = export_of(&env, &sid, sql, &[]);
    assert_eq!(e["gate_report"]["groups_suppressed"], 1, "{e}");
    let (_, detail) = gate_check(&e, "dominance");
    assert!(detail.contains("top 2 subjects hold over 40%"), "{detail}");
    // Loosening is refused.
    loosening_is_refused(&env, &sid);
}

/// A policy document that would loosen the scenario's dominance rules is refused.
fn loosening_is_refused(env: &common::Env, sid: &str) {
    let mut doc = env.world.admin.export_policy().unwrap();
    let s = doc.scenarios.iter_mut().find(|s| s.id == sid).unwrap();
    s.export_rules.as_mut().unwrap().dominance = Some(DominanceRule {
        n: 2,
        k_percent: 99.0,
        p_percent: 10.0,
    });
    let refused = env
        .world
        .admin
        .apply_policy(&doc, false)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("dominance k must be"), "{refused}");
}
