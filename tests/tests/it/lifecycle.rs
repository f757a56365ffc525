//! R-EXIT: lifecycles that close themselves. A scenario revoked or past its term is closed by
//! the platform: its jobs stop, its results and intermediate files are destroyed, its released
//! bundles stay with their owners, and a signed receipt says what went; an org whose
//! authorization ran out exits; a scenario submits no more jobs a day than its quota.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tidegate_runtime::{
    AUDIT_FILE, ClosingReceipt, ClosingReceiptBody, DestroyedKind, verify_audit_file,
};

use crate::common::{
    Env, active_scenario, job, platform_key, scenario_request, scenario_with, setup,
};

const GROUPED: &str = "SELECT spot, count(*) AS visits FROM visits GROUP BY spot";

fn objects(env: &Env, kind: &str) -> Vec<PathBuf> {
    std::fs::read_dir(env.data_dir().join("objects").join(kind))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// The metadata database, as an operator with a shell would see it.
fn metadata(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.data_dir().join("meta.sqlite")).unwrap()
}

/// Moves a scenario's term into the past, as the calendar would.
fn end_term(env: &Env, sid: &str) {
    let today = time::OffsetDateTime::now_utc().date();
    metadata(env)
        .execute(
            "UPDATE scenarios SET term_start = ?2, term_end = ?3 WHERE id = ?1",
            rusqlite::params![
                sid,
                (today - time::Duration::days(30)).to_string(),
                (today - time::Duration::days(1)).to_string()
            ],
        )
        .unwrap();
}

/// A job's export requested, approved and downloaded (released), and another left in review.
fn released_and_pending(env: &Env, sid: &str) -> (String, String) {
    let w = &env.world;
    let first = job(env, sid, GROUPED, &[]);
    let released = w
        .scientist
        .request_export(first["id"].as_str().unwrap())
        .unwrap();
    let released = released["id"].as_str().unwrap().to_string();
    w.reviewer
        .review_export(&released, "approve", "ok")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    w.scientist.download_bundle(&released, dir.path()).unwrap();
    let second = job(env, sid, GROUPED, &[]);
    let pending = w
        .scientist
        .request_export(second["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(pending["state"], "in_review", "{pending}");
    (released, pending["id"].as_str().unwrap().to_string())
}

/// The scenario's closing receipt, which says its term ended.
fn closed_by_its_term(w: &tidegate_server::World, sid: &str) -> ClosingReceipt {
    let closing = w.auditor.closing_receipt(sid).unwrap();
    assert!(
        closing.receipt.reason.starts_with("its term ended on"),
        "{closing:?}"
    );
    closing
}

fn destroyed_kinds(receipt: &ClosingReceiptBody) -> Vec<(DestroyedKind, String)> {
    receipt
        .destroyed
        .iter()
        .map(|d| (d.kind, d.id.clone()))
        .collect()
}

fn audit_actions(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_revoked_scenario_is_closed_at_once_and_keeps_nothing_not_even_its_released_bundles() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let (released, pending) = released_and_pending(&env, &sid);
    assert_eq!(objects(&env, "results").len(), 2);
    assert_eq!(objects(&env, "exports").len(), 2);
    // Before it closes there is no receipt to show.
    let none = w
        .scientist
        .call("GET", &format!("/v1/scenarios/{sid}/closing"), None)
        .unwrap();
    assert_eq!(none.status, 404, "{}", none.body);

    let revoked = w.admin.change_scenario(&sid, "revoke").unwrap();
    assert_eq!(revoked["state"], "revoked");

    // The receipt is signed by the platform and lists both results and both exports, by id
    // only (the hash of a result the gate never released could be matched against guesses).
    let closing = w.scientist.closing_receipt(&sid).unwrap();
    tidegate_runtime::verify_document(&closing.receipt, &closing.signature, &platform_key(&env))
        .unwrap();
    let receipt = &closing.receipt;
    assert_eq!(receipt.format, "tidegate-closing-receipt-v1");
    assert_eq!(receipt.reason, "revoked");
    let kinds = destroyed_kinds(receipt);
    assert_eq!(
        kinds
            .iter()
            .filter(|(k, _)| *k == DestroyedKind::Result)
            .count(),
        2
    );
    for export in [&released, &pending] {
        assert!(
            kinds.contains(&(DestroyedKind::Export, export.clone())),
            "{kinds:?}"
        );
    }
    let text = serde_json::to_string(receipt).unwrap();
    assert!(!text.contains("sha256"), "{text}");
    // A receipt altered by one byte no longer verifies.
    let mut altered = receipt.clone();
    altered.reason = "expired".into();
    assert!(
        tidegate_runtime::verify_document(&altered, &closing.signature, &platform_key(&env))
            .is_err()
    );

    // The files went with their keys: after a revocation nothing more is downloaded (a
    // bundle stays only with whoever downloaded it before).
    assert!(objects(&env, "results").is_empty());
    assert!(objects(&env, "exports").is_empty());
    for export in [&released, &pending] {
        let gone = w
            .scientist
            .call("GET", &format!("/v1/exports/{export}/bundle"), None)
            .unwrap();
        assert!(gone.status >= 400, "{}", gone.body);
    }
    // The log says so, and still verifies.
    let log = env.data_dir().join(AUDIT_FILE);
    assert!(audit_actions(&log).contains(&"scenario.close".to_string()));
    let verdict = verify_audit_file(&log, Some(&platform_key(&env))).unwrap();
    assert_eq!(verdict.first_bad, None);
    // Another sweep finds nothing more to close.
    let swept = w.admin.sweep().unwrap();
    assert_eq!(swept["scenarios_closed"], json!([]));
}

#[test]
fn a_scenario_past_its_term_is_closed_by_the_sweep_and_keeps_only_its_released_bundles() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let (released, pending) = released_and_pending(&env, &sid);
    let done = job(&env, &sid, GROUPED, &[]);
    assert_eq!(done["state"], "succeeded");
    end_term(&env, &sid);
    assert_eq!(w.scientist.get_scenario(&sid).unwrap()["state"], "expired");
    // Nobody but an admin sweeps.
    let refused = w.scientist.call("POST", "/v1/sweep", None).unwrap();
    assert_eq!(refused.status, 403);

    let swept = w.admin.sweep().unwrap();
    assert_eq!(swept["scenarios_closed"], json!([sid]));
    let closing = closed_by_its_term(w, &sid);
    let kinds = destroyed_kinds(&closing.receipt);
    assert_eq!(
        kinds
            .iter()
            .filter(|(k, _)| *k == DestroyedKind::Result)
            .count(),
        3
    );
    assert!(
        kinds.contains(&(DestroyedKind::Export, pending.clone())),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&(DestroyedKind::Export, released.clone())),
        "{kinds:?}"
    );
    assert!(objects(&env, "results").is_empty());
    // The released bundle stays with its requester, who downloads it again; the one in
    // review is gone, and nobody reviews it now.
    assert_eq!(objects(&env, "exports").len(), 1);
    let dir = tempfile::tempdir().unwrap();
    w.scientist.download_bundle(&released, dir.path()).unwrap();
    let gone = w
        .scientist
        .call("GET", &format!("/v1/exports/{pending}/bundle"), None)
        .unwrap();
    assert!(gone.status >= 400, "{}", gone.body);
    assert!(
        w.reviewer
            .review_export(&pending, "approve", "late")
            .is_err()
    );
    // The job's result cannot be exported any more.
    let late = w
        .scientist
        .call("POST", "/v1/exports", Some(&json!({ "job": done["id"] })))
        .unwrap();
    assert!(late.status >= 400, "{}", late.body);
    // Nothing of a closed scenario changes again, not by a policy document either.
    let mut doc = w.admin.ok("GET", "/v1/policy", None).unwrap();
    let later = time::OffsetDateTime::now_utc().date() + time::Duration::days(30);
    for s in doc["scenarios"].as_array_mut().unwrap() {
        if s["id"] == json!(sid) {
            s["term_end"] = json!(later.to_string());
        }
    }
    let revived = w
        .admin
        .ok(
            "POST",
            "/v1/policy",
            Some(&json!({ "document": doc, "dry_run": false })),
        )
        .unwrap_err()
        .to_string();
    assert!(revived.contains("is closed"), "{revived}");
}

#[test]
fn an_org_whose_authorization_ran_out_is_exited_by_the_sweep() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    job(&env, &sid, GROUPED, &[]);
    let today = time::OffsetDateTime::now_utc().date();
    // A date already past is refused: that is an exit, not a term.
    let past = w
        .admin
        .set_org_authorization(
            &w.operator_org,
            Some(&(today - time::Duration::days(1)).to_string()),
        )
        .unwrap_err()
        .to_string();
    assert!(past.contains("is past"), "{past}");
    // Only an admin sets it.
    assert!(
        w.scientist
            .set_org_authorization(&w.operator_org, Some(&today.to_string()))
            .is_err()
    );
    w.admin
        .set_org_authorization(&w.operator_org, Some(&today.to_string()))
        .unwrap();
    // On its last day nothing happens.
    assert_eq!(w.admin.sweep().unwrap()["orgs_expired"], json!([]));
    assert_eq!(w.scientist.get_scenario(&sid).unwrap()["state"], "active");

    // The next day (the calendar moved by hand), the sweep exits it.
    metadata(&env)
        .execute(
            "UPDATE orgs SET authorized_until = ?2 WHERE id = ?1",
            rusqlite::params![
                w.operator_org,
                (today - time::Duration::days(1)).to_string()
            ],
        )
        .unwrap();
    let swept = w.admin.sweep().unwrap();
    assert_eq!(swept["orgs_expired"], json!([w.operator_org]));
    let closed = w.scientist.call("GET", "/v1/datasets", None).unwrap();
    assert_eq!(closed.status, 401, "its tokens are closed");
    assert!(objects(&env, "results").is_empty());
    let scenario = w.admin.get_scenario(&sid).unwrap();
    assert_eq!(scenario["state"], "exited");
}

#[test]
fn a_scenario_submits_no_more_jobs_a_day_than_its_quota() {
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(2_000))
        .unwrap();
    let mut request = scenario_request(false);
    request["export_rules"] = json!({ "jobs_per_day": 2 });
    let sid = w.scientist.apply_scenario(&request).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.admin.approve_scenario(&sid).unwrap();
    let active = w.provider.approve_scenario(&sid).unwrap();
    assert_eq!(active["export_rules"]["jobs_per_day"], 2);
    for _ in 0..2 {
        job(&env, &sid, GROUPED, &[]);
    }
    let third = w
        .scientist
        .submit_job(&sid, GROUPED, &[])
        .unwrap_err()
        .to_string();
    assert!(third.contains("its quota of 2 a day"), "{third}");
    // A quota of none is refused at application.
    request["export_rules"] = json!({ "jobs_per_day": 0 });
    let zero = w
        .scientist
        .apply_scenario(&request)
        .unwrap_err()
        .to_string();
    assert!(zero.contains("jobs_per_day"), "{zero}");
}

/// A scenario of the demo's visits (L2) with these export rules, approved.
#[test]
fn a_scenario_keeps_no_more_results_than_its_storage_quota_and_frees_room_by_discarding() {
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(2_000))
        .unwrap();
    let sid = scenario_with(&env, json!({ "storage_mib": 1 }));
    let first = job(&env, &sid, GROUPED, &[]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let first = first["id"].as_str().unwrap().to_string();
    // An export asked for before the result is discarded keeps its own file.
    let export = w.scientist.request_export(&first).unwrap();
    assert_eq!(export["state"], "in_review", "{export}");
    // Over L2 data a result counts as its scientist sees its size: 1 MiB, rounded up.
    let full = w
        .scientist
        .submit_job(&sid, GROUPED, &[])
        .unwrap_err()
        .to_string();
    assert!(full.contains("storage quota of 1 MiB"), "{full}");
    assert!(
        full.contains("job discard"),
        "says how to free room: {full}"
    );

    // Only the job's own scientists discard it; the authority's admin may not.
    let not_theirs = w.admin.discard_result(&first).unwrap_err().to_string();
    assert!(not_theirs.contains("own unit's scientists"), "{not_theirs}");
    let results_before = objects(&env, "results").len();
    w.scientist.discard_result(&first).unwrap();
    assert_eq!(objects(&env, "results").len(), results_before - 1);
    let again = w.scientist.discard_result(&first).unwrap_err().to_string();
    assert!(again.contains("keeps no result"), "{again}");
    let no_result = w.scientist.request_export(&first).unwrap_err().to_string();
    assert!(no_result.contains("no result"), "{no_result}");
    // The room is back, and the export still goes out.
    assert_eq!(job(&env, &sid, GROUPED, &[])["state"], "succeeded");
    let export = export["id"].as_str().unwrap();
    w.reviewer.review_export(export, "approve", "ok").unwrap();
    let dir = tempfile::tempdir().unwrap();
    w.scientist.download_bundle(export, dir.path()).unwrap();
    assert!(
        audit_actions(&env.data_dir().join(AUDIT_FILE)).contains(&"job.discard".to_string()),
        "the discard is in the log"
    );
}

#[test]
fn a_scenario_uses_no_more_cpu_seconds_or_fuel_a_day_than_its_quotas() {
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(2_000))
        .unwrap();
    // CPU: a job's seconds count as its scientist sees them (over L2 data, whole seconds).
    let sid = scenario_with(&env, json!({ "cpu_seconds_per_day": 1 }));
    assert_eq!(job(&env, &sid, GROUPED, &[])["state"], "succeeded");
    let spent = w
        .scientist
        .submit_job(&sid, GROUPED, &[])
        .unwrap_err()
        .to_string();
    assert!(
        spent.contains("CPU seconds") && spent.contains("quota of 1 a day"),
        "{spent}"
    );

    // Fuel: a guest that would burn far more than the quota is stopped at what is left.
    let sid = scenario_with(&env, json!({ "gigafuel_per_day": 1 }));
    let (module, _) = w.publish_module(&sid, &crate::common::burner()).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    let burned = job(
        &env,
        &sid,
        "SELECT spot, sum(f(spend)) AS s FROM visits GROUP BY spot",
        &[hash],
    );
    assert_eq!(burned["state"], "failed", "{burned}");
    assert_eq!(
        burned["resources"]["fuel"], 1_000_000_000u64,
        "stopped at the quota: {burned}"
    );
    let spent = w
        .scientist
        .submit_job(&sid, GROUPED, &[])
        .unwrap_err()
        .to_string();
    assert!(spent.contains("quota of 1 x 10^9 a day"), "{spent}");
    // A quota of nothing is refused at application.
    let mut request = scenario_request(false);
    request["export_rules"] = json!({ "gigafuel_per_day": 0 });
    let zero = w
        .scientist
        .apply_scenario(&request)
        .unwrap_err()
        .to_string();
    assert!(zero.contains("gigafuel_per_day"), "{zero}");
}

#[test]
fn moving_the_clock_past_a_term_closes_the_scenario_at_the_next_sweep_and_a_year_ends_trainings() {
    // The clock is the process's: this test has a process of its own.
    if !crate::common::in_a_process_of_its_own(
        "lifecycle::moving_the_clock_past_a_term_closes_the_scenario_at_the_next_sweep_and_a_year_ends_trainings",
    ) {
        return;
    }
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(2_000))
        .unwrap();
    // A term of a month (from yesterday).
    let sid = crate::common::approved_scenario(w, &w.scientist, &scenario_request(false));
    let done = job(&env, &sid, GROUPED, &[]);
    assert_eq!(done["state"], "succeeded");
    assert_eq!(w.admin.sweep().unwrap()["scenarios_closed"], json!([]));
    assert!(!objects(&env, "results").is_empty());

    tidegate_runtime::clock::shift_for_tests(time::Duration::days(31));
    assert_eq!(w.scientist.get_scenario(&sid).unwrap()["state"], "expired");
    let swept = w.admin.sweep().unwrap();
    assert_eq!(swept["scenarios_closed"], json!([sid]), "{swept}");
    assert!(objects(&env, "results").is_empty());
    closed_by_its_term(w, &sid);

    // A year after their training, the scientist reads nothing but their own training state.
    tidegate_runtime::clock::shift_for_tests(time::Duration::days(365));
    let refused = w
        .scientist
        .call("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
}
