//! R-GATE attacks, each with the refusal it must get: numbers packed by a UDF, padding with NULL
//! or fake subject keys, an error that would carry a data value, and a tracker pair of queries
//! (a private scenario's answer to trackers, noise, is in `scenarios.rs`). (Isolating one subject in
//! an aggregate, 60 rows of one subject, a group key built from an identifier and differencing
//! by one subject are in `flow.rs`.)

use tidegate_server::{AGGREGATE_UDF_WASM, MODEL_UDF_WASM, visitor_csv};

use crate::common;
use crate::common::{
    ROWS, active_scenario, constant_module, export_of as export, gate_check as check, job,
    preview_of, refused_before_running, setup,
};

#[test]
fn a_phone_number_packed_into_an_average_by_a_udf_is_caught_by_the_value_scan() {
    let (env, sid, _) = active_scenario();
    // An approved module whose function returns the same mobile number for every row: the
    // average of a group is then exactly that number.
    let (module, _) = env
        .world
        .publish_module(&sid, &constant_module(13_812_345_678))
        .unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    let packed = export(
        &env,
        &sid,
        "SELECT spot, avg(f(1)) AS x FROM visits GROUP BY spot",
        &[hash],
    );
    assert_eq!(packed["state"], "rejected");
    let (passed, detail) = check(&packed, "identifiers");
    assert!(!passed);
    assert!(detail.contains("look like mobile"), "{detail}");
    assert!(
        !detail.contains("13812345678"),
        "the report names the type, never the value"
    );
}

#[test]
fn padding_a_group_with_null_subject_keys_counts_them_as_one_subject() {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!("o{i:03},13800000000,Old Street,2026-05-01,1.00\n"));
    }
    // Sixty rows without a subject key: one subject, however many rows.
    for _ in 0..60 {
        csv.push_str(",13800000000,Quiet Pond,2026-05-01,1.00\n");
    }
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap();
    let e = export(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits GROUP BY spot",
        &[],
    );
    // Quiet Pond under k, and Old Street (the smallest other) so that a total cannot give it
    // away.
    assert_eq!(e["gate_report"]["groups_suppressed"], 2, "{e}");
    let preview = preview_of(&env, &e);
    assert!(
        preview.contains("West Lake") && !preview.contains("Quiet Pond"),
        "{preview}"
    );
}

#[test]
fn fake_subject_keys_cannot_be_added_to_a_query() {
    let (env, sid, _) = active_scenario();
    // Naming the runtime's subject key to pad it is refused outright.
    let named = job(
        &env,
        &sid,
        "SELECT spot, count(*) FROM (SELECT spot, __tg_entity FROM visits \
         UNION ALL SELECT 'Quiet Pond', 'fake-1') t GROUP BY spot",
        &[],
    );
    assert_eq!(named["state"], "failed");
    assert!(
        named["error"].as_str().unwrap().contains("reserved"),
        "{named}"
    );
    // Padding with rows that carry no key at all adds rows, never subjects: the subjects of a
    // cell are those of the rows the runtime carried up from the scans, so Quiet Pond (under
    // k) stays suppressed.
    let padded = export(
        &env,
        &sid,
        "SELECT spot, count(*) AS visits FROM (SELECT spot FROM visits \
         UNION ALL SELECT 'Quiet Pond' UNION ALL SELECT 'Quiet Pond') t GROUP BY spot",
        &[],
    );
    assert_eq!(padded["state"], "in_review", "{padded}");
    let preview = preview_of(&env, &padded);
    assert!(
        preview.contains("West Lake") && !preview.contains("Quiet Pond"),
        "{preview}"
    );
}

#[test]
fn an_error_caused_by_a_data_value_never_quotes_it() {
    let (env, sid, _) = active_scenario();
    let failed = job(
        &env,
        &sid,
        "SELECT spot, sum(CAST(resident_id AS BIGINT)) AS s FROM visits GROUP BY spot",
        &[],
    );
    assert_eq!(failed["state"], "failed");
    // Over L2 data not even the class of the failure is shown: it could depend on a value.
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("the cause is not shown"), "{error}");
    let csv = visitor_csv(ROWS);
    for line in csv.lines().skip(1).take(50) {
        let id = line.split(',').next().unwrap();
        assert!(!error.contains(id), "the error quotes {id}");
    }
}

#[test]
fn a_tracker_pair_of_queries_has_the_differing_group_suppressed() {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!("o{i:03},13800000000,Old Street,2026-05-02,1.00\n"));
    }
    // The target visits West Lake in August, the only visitor that day; the attacker knows
    // the day. (Choosing rows by the resident ID itself is refused before anything runs.)
    csv.push_str("target,13800000000,West Lake,2026-08-15,1.00\n");
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap();
    // The tracker: a predicate that lets the target in, and one that leaves them out. Each
    // query alone is a legitimate aggregate of at least k subjects per group.
    let with_target = export(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits
         WHERE visit_date < DATE '2026-06-01' OR visit_date = DATE '2026-08-15' GROUP BY spot",
        &[],
    );
    assert_eq!(with_target["state"], "in_review", "{with_target}");
    let without = export(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits
         WHERE visit_date < DATE '2026-06-01' GROUP BY spot",
        &[],
    );
    // The group that differs by the one target goes; the rest of the export goes to review,
    // and the check names the export it was compared with.
    assert_eq!(without["state"], "in_review", "{without}");
    let (passed, detail) = check(&without, "differencing");
    assert!(passed, "{detail}");
    assert!(
        detail.contains(&format!(
            "suppressed: 1 because of {}",
            with_target["id"].as_str().unwrap()
        )),
        "{detail}"
    );
    let preview = common::preview_of(&env, &without);
    assert!(!preview.contains("West Lake"), "{preview}");
    assert!(!detail.contains("West Lake") && !detail.contains("target"));
    let by_id = refused_before_running(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits
         WHERE visit_date < DATE '2026-06-01' OR resident_id = 'target' GROUP BY spot",
        &[],
    );
    assert!(
        by_id.contains("rows may not be chosen by whose they are"),
        "{by_id}"
    );
}

#[test]
fn a_guest_aggregate_that_returns_one_subjects_value_is_refused_on_l2_data() {
    let (env, sid, _) = active_scenario();
    let (module, _) = env.world.publish_module(&sid, AGGREGATE_UDF_WASM).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    // `largest` is the biggest spend of the group: one visitor's own value. Over L2 data a
    // module's aggregate has no per-subject bound the gate checks, whatever its name
    // promises: refused before it runs.
    for sql in [
        "SELECT spot, largest(CAST(spend * 100 AS BIGINT)) AS top FROM visits GROUP BY spot",
        "SELECT spot, sum_sq(spend) AS s FROM visits GROUP BY spot",
    ] {
        let error = refused_before_running(&env, &sid, sql, std::slice::from_ref(&hash));
        assert!(error.contains("is a module's aggregate"), "{error}");
    }
}

#[test]
fn rows_from_a_guest_table_function_cannot_leave_l2_data_even_aggregated() {
    let (env, sid, _) = active_scenario();
    let (module, _) = env.world.publish_module(&sid, MODEL_UDF_WASM).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    // The model writes one row per visit with no subject key: its output cannot be counted
    // in subjects, so nothing computed from it runs over L2 data.
    let error = refused_before_running(
        &env,
        &sid,
        "SELECT label, count(*) AS n FROM standardize('visits', 'spend', 'spot') GROUP BY label",
        &[hash],
    );
    assert!(error.contains("carry no subjects"), "{error}");
}
