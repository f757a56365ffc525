//! The whole flow of SPEC.md through a real server on a loopback port, and the refusals that
//! keep it safe. Each test builds its own fresh data directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tidegate_runtime::{
    AUDIT_FILE, DestroyedKind, MasterKey, PUBLIC_KEY_FILE, Platform, verify_audit_file,
    verify_bundle,
};
use tidegate_server::{DemoOptions, VISITOR_UDF_WASM, run_demo, visitor_csv};

use crate::common;
use crate::common::{
    ROWS, active_scenario, export_of, full_report, gate_check, job, preview_of,
    refused_before_running, seen_by_reviewer, setup, spinning_module,
};

fn demo() -> (tempfile::TempDir, tidegate_server::DemoOutcome) {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_demo(&DemoOptions {
        data_dir: Some(dir.path().to_path_buf()),
        rows: 100_000,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    (dir, outcome)
}

#[test]
fn the_demo_tells_the_whole_story_and_its_bundle_verifies_offline() {
    let (_dir, outcome) = demo();
    assert_eq!(outcome.export.state, tidegate_policy::ExportState::Approved);
    let verified = verify_bundle(
        &outcome.bundle_dir,
        &std::fs::read(&outcome.public_key).unwrap(),
    )
    .unwrap();
    assert_eq!(verified.files, vec!["result.csv", "result.parquet"]);
    let csv = std::fs::read_to_string(outcome.bundle_dir.join("result.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    // The Parquet carries the same rows, typed.
    let parquet = std::fs::read(outcome.bundle_dir.join("result.parquet")).unwrap();
    let typed = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(parquet),
    )
    .unwrap()
    .build()
    .unwrap()
    .map(Result::unwrap)
    .collect::<Vec<_>>();
    assert_eq!(
        typed.iter().map(|b| b.num_rows()).sum::<usize>(),
        lines.len() - 1
    );
    assert_eq!(
        typed[0]
            .schema()
            .field_with_name("visits")
            .unwrap()
            .data_type(),
        &arrow::datatypes::DataType::Int64
    );
    assert_eq!(lines[0], "spot,visits,avg_age,total_spend");
    // Seven spots are released: the ninth, visited by three people, is under k, and the
    // smallest of the others goes with it so that a total cannot give the ninth away.
    assert_eq!(lines.len(), 1 + 7, "{csv}");
    assert!(lines.iter().any(|l| l.starts_with("West Lake,")));
    assert!(!csv.contains("Moon Cave"));
    let report = &verified.manifest["gate_report"];
    assert_eq!(report["groups_suppressed"], 2);
    assert_eq!(report["threshold_k"], 10);
    assert_eq!(
        verify_audit_file(&outcome.data_dir.join(AUDIT_FILE), None)
            .unwrap()
            .first_bad,
        None
    );
}

#[test]
fn the_cli_verifies_a_bundle_and_refuses_a_changed_one() {
    let (_dir, outcome) = demo();
    let verify = |bundle: &Path| {
        tidegate_server::main_with_args(
            [
                "tidegate",
                "verify",
                bundle.to_str().unwrap(),
                "--key",
                outcome.public_key.to_str().unwrap(),
            ]
            .map(Into::into),
        )
    };
    assert_eq!(verify(&outcome.bundle_dir), std::process::ExitCode::SUCCESS);
    let csv = outcome.bundle_dir.join("result.csv");
    let changed = std::fs::read_to_string(&csv)
        .unwrap()
        .replacen("West Lake,", "West Lake,1", 1);
    std::fs::write(&csv, changed).unwrap();
    assert_eq!(verify(&outcome.bundle_dir), std::process::ExitCode::FAILURE);
    let err = verify_bundle(
        &outcome.bundle_dir,
        &std::fs::read(&outcome.public_key).unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "integrity: result.csv does not match the hash in the signed manifest: it was changed"
    );
}

#[test]
fn a_changed_manifest_fails_verification() {
    let (_dir, outcome) = demo();
    let manifest = outcome.bundle_dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"threshold_k\": 10", "\"threshold_k\": 1");
    std::fs::write(&manifest, text).unwrap();
    let err = verify_bundle(
        &outcome.bundle_dir,
        &std::fs::read(&outcome.public_key).unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
}

#[test]
fn a_principal_without_training_is_refused() {
    let env = setup(false);
    let err = env
        .world
        .import_visits(&visitor_csv(100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no training record"), "{err}");
    assert!(err.ends_with("(403)"), "{err}");
}

#[test]
fn a_query_touching_a_column_the_scenario_does_not_grant_is_refused() {
    let (env, sid, _) = active_scenario();
    // `mobile` is in the dataset but not in the grant: for the job it does not exist.
    let j = job(
        &env,
        &sid,
        "SELECT mobile, count(*) FROM visits GROUP BY mobile",
        &[],
    );
    assert_eq!(j["state"], "failed");
    let error = j["error"].as_str().unwrap();
    assert!(error.contains("No field named mobile"), "{error}");
}

#[test]
fn statements_other_than_a_query_are_refused() {
    let (env, sid, _) = active_scenario();
    for sql in [
        "CREATE TABLE t AS SELECT spot FROM visits",
        "COPY (SELECT spot FROM visits) TO '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
        "EXPLAIN SELECT spot FROM visits",
        "INSERT INTO visits VALUES ('a')",
        "SELECT spot FROM visits; DROP TABLE visits",
    ] {
        let j = job(&env, &sid, sql, &[]);
        assert_eq!(j["state"], "failed", "{sql}");
        assert_eq!(
            j["error"],
            "refused: a job is exactly one SELECT query; DDL, DML, COPY, SET and EXPLAIN are not allowed",
            "{sql}"
        );
    }
}

#[test]
fn a_module_without_review_approval_does_not_run_on_real_data() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(500)).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap();
    let uploaded = env
        .world
        .scientist
        .upload_module(sid, VISITOR_UDF_WASM)
        .unwrap();
    let hash = uploaded["hash"].as_str().unwrap().to_string();
    let err = env
        .world
        .scientist
        .submit_job(
            sid,
            "SELECT spot, count(*) FROM visits GROUP BY spot",
            &[hash],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no algorithm review approval"), "{err}");
}

#[test]
fn a_group_under_k_is_suppressed_in_the_export() {
    let (env, sid, hash) = active_scenario();
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    assert_eq!(j["state"], "succeeded", "{j}");
    // Over L2 data a job shows no row count: only an export's report tells anything.
    assert!(j["rows"].is_null(), "{j}");
    let export = full_report(
        &env,
        &env.world
            .scientist
            .request_export(j["id"].as_str().unwrap())
            .unwrap(),
    );
    assert_eq!(export["state"], "in_review");
    // Moon Cave under k, and one complementary group.
    assert_eq!(export["gate_report"]["groups_suppressed"], 2);
    let preview = preview_of(&env, &export);
    assert!(!preview.contains("Moon Cave"), "{preview}");
    assert_eq!(preview.lines().count(), 1 + 7);
}

fn tidegate_server_demo_sql() -> &'static str {
    "SELECT spot, count(*) AS visits, avg(age_at_visit(resident_id, visit_date)) AS avg_age FROM visits GROUP BY spot"
}

#[test]
fn an_export_grouped_by_an_identifier_is_refused_by_the_gate() {
    let (env, sid, _) = active_scenario();
    let error = refused_before_running(
        &env,
        &sid,
        "SELECT resident_id, count(*) AS visits FROM visits GROUP BY resident_id",
        &[],
    );
    assert!(
        error.contains("group key `resident_id` is computed from an identifying column"),
        "{error}"
    );
}

#[test]
fn a_group_key_computed_from_a_dimension_passes_and_one_computed_from_an_identifier_does_not() {
    let (env, sid, _) = active_scenario();
    let coarse = export_of(
        &env,
        &sid,
        "SELECT substr(spot, 1, 4) AS area, count(*) AS visits FROM visits GROUP BY substr(spot, 1, 4)",
        &[],
    );
    assert_eq!(coarse["state"], "in_review", "{coarse}");
    // The first six digits of a resident ID (the region code) are still the identifier's:
    // refused by lineage before the job runs.
    let error = refused_before_running(
        &env,
        &sid,
        "SELECT substr(resident_id, 1, 6) AS region, count(*) AS visits FROM visits GROUP BY substr(resident_id, 1, 6)",
        &[],
    );
    assert!(
        error.contains("is computed from an identifying column"),
        "{error}"
    );
}

#[test]
fn a_reviewer_of_the_requesters_org_cannot_approve() {
    let (env, sid, hash) = active_scenario();
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    let insider = env
        .world
        .admin
        .create_principal("insider", &env.world.operator_org, &["reviewer"])
        .unwrap();
    env.world
        .admin
        .record_training(insider["id"].as_str().unwrap(), "training")
        .unwrap();
    let insider = env.world.admin.as_token(insider["token"].as_str().unwrap());
    let err = insider
        .review_export(export["id"].as_str().unwrap(), "approve", "looks fine")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "refused: a reviewer cannot review an export request of their own org (403)"
    );
    // And the export cannot be downloaded before a proper review.
    let early = env
        .world
        .scientist
        .call(
            "GET",
            &format!("/v1/exports/{}/bundle", export["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(early.status, 403);
}

#[test]
fn a_changed_audit_entry_is_detected_and_named() {
    let (env, _, _) = active_scenario();
    let path = env.data_dir().join(AUDIT_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"principal.create\""))
        .unwrap();
    lines[at] = lines[at].replace("principal.create", "principal.cr3ate");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let verdict = verify_audit_file(&path, None).unwrap();
    assert_eq!(
        verdict.first_bad,
        Some((
            at as u64 + 1,
            "its hash does not match its content (changed)".into()
        ))
    );
    let code = tidegate_server::main_with_args(
        [
            "tidegate",
            "audit",
            "verify",
            "--data-dir",
            env.data_dir().to_str().unwrap(),
        ]
        .map(Into::into),
    );
    assert_eq!(code, std::process::ExitCode::FAILURE);
}

/// Every maximal run of digits (with a trailing X) of the given lengths in `bytes`.
fn digit_runs(bytes: &[u8], lens: &[usize]) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'X') {
            i += 1;
        }
        if lens.contains(&(i - start)) {
            out.insert(String::from_utf8_lossy(&bytes[start..i]).into_owned());
        }
    }
    out
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out)
        } else {
            out.push(p)
        }
    }
}

#[test]
fn the_datasets_id_and_mobile_numbers_appear_nowhere_in_the_data_directory() {
    let (env, sid, hash) = active_scenario();
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    env.world
        .reviewer
        .review_export(export["id"].as_str().unwrap(), "approve", "ok")
        .unwrap();
    let csv = visitor_csv(ROWS);
    let planted: HashSet<String> = digit_runs(csv.as_bytes(), &[11, 18]);
    assert!(
        planted.len() > 1_000,
        "the dataset has ID and mobile numbers to look for"
    );
    let mut files = Vec::new();
    all_files(&env.data_dir(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("meta.sqlite")));
    for f in files {
        let found = digit_runs(&std::fs::read(&f).unwrap(), &[11, 18]);
        let leaked = found.intersection(&planted).count();
        assert_eq!(
            leaked,
            0,
            "{} holds {leaked} ID or mobile numbers in plaintext",
            f.display()
        );
    }
    assert!(env.data_dir().join(PUBLIC_KEY_FILE).exists());
}

#[test]
fn a_provider_imports_parquet_as_well_as_csv() {
    let env = setup(true);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("visits.csv");
    std::fs::write(&csv, visitor_csv(1_000)).unwrap();
    let table = tidegate_runtime::local_table("visits", &csv).unwrap();
    let tidegate_runtime::TableData::Memory(batches) = &table.data else {
        panic!("a local file is read into memory");
    };
    let mut parquet = Vec::new();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut parquet, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    let imported = env
        .world
        .provider
        .import_dataset(
            serde_json::json!({
                "name": "visits_pq",
                "level": "L2",
                "format": "parquet",
                "columns": [{ "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] }],
            }),
            &parquet,
        )
        .unwrap();
    assert_eq!(imported["rows"], 1_000);
    assert_eq!(imported["quality"]["nulls"]["spot"], 0);
    let garbage = env.world.provider.import_dataset(
        serde_json::json!({ "name": "broken", "level": "L2", "format": "parquet" }),
        b"PAR1 not really",
    );
    assert_eq!(
        garbage.unwrap_err().to_string(),
        "bad input: the Parquet file cannot be read (400)"
    );
}

#[test]
fn suspending_a_scenario_cancels_its_running_job_within_a_second() {
    let (env, sid, _) = active_scenario();
    let module = env
        .world
        .scientist
        .upload_module(&sid, &spinning_module())
        .unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    env.world
        .reviewer
        .approve_module(&sid, &hash, "spin: test module")
        .unwrap();
    let scientist = env.world.scientist.clone();
    let job_sid = sid.clone();
    let running = std::thread::spawn(move || {
        scientist
            .submit_job(
                &job_sid,
                "SELECT spot, sum(spin(length(spot))) FROM visits GROUP BY spot",
                &[hash],
            )
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let suspended_at = std::time::Instant::now();
    let scenario = env.world.admin.change_scenario(&sid, "suspend").unwrap();
    assert_eq!(scenario["state"], "suspended");
    let job = running.join().unwrap();
    // The guest's own time limit is 10 s; cancellation must come long before it.
    assert!(
        suspended_at.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        suspended_at.elapsed()
    );
    assert_eq!(job["state"], "failed");
    assert_eq!(
        job["error"],
        "refused: the job was cancelled: by its unit or an admin, or its scenario was suspended or revoked"
    );
    let refused = env.world.scientist.submit_job(
        &sid,
        "SELECT spot, count(*) FROM visits GROUP BY spot",
        &[],
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("the scenario is suspended")
    );
    let resumed = env.world.admin.change_scenario(&sid, "resume").unwrap();
    assert_eq!(resumed["state"], "active");
    let err = env
        .world
        .scientist
        .change_scenario(&sid, "revoke")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lacks the admin role"), "{err}");
}

#[test]
fn a_query_cannot_pose_as_the_runtimes_subject_count() {
    let (env, sid, _) = active_scenario();
    for sql in [
        "SELECT spot, count(*) AS visits, 1000 AS __tg_subjects FROM visits GROUP BY spot",
        "SELECT spot, __tg_entity FROM visits",
        "SELECT * FROM visits",
    ] {
        let j = job(&env, &sid, sql, &[]);
        assert_eq!(j["state"], "failed", "{sql}");
        assert!(
            j["error"].as_str().unwrap().starts_with("refused:"),
            "{sql}: {}",
            j["error"]
        );
    }
}

#[test]
fn an_aggregate_that_isolates_one_subject_is_refused_by_the_gate() {
    let (env, sid, hash) = active_scenario();
    let target = visitor_csv(ROWS)
        .lines()
        .nth(100)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    for sql in [
        format!(
            "SELECT spot, count(*) AS n, sum(CASE WHEN resident_id = '{target}' THEN spend END) AS s FROM visits GROUP BY spot"
        ),
        format!(
            "SELECT spot, count(*) AS n, sum(spend) FILTER (WHERE resident_id IN ('{target}')) AS s FROM visits GROUP BY spot"
        ),
    ] {
        let error = refused_before_running(&env, &sid, &sql, &[]);
        assert!(error.contains("can single out one subject"), "{error}");
    }
    // A UDF over the identifier, reviewed and approved, is not a selection: the demo's query passes.
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(export["state"], "in_review");
}

#[test]
fn an_l3_export_needs_two_different_reviewers_of_other_orgs() {
    let env = setup(true);
    env.world
        .import_visits_at(&visitor_csv(ROWS), "L3")
        .unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    assert_eq!(scenario["k"], 50, "the L3 default threshold");
    let sid = scenario["id"].as_str().unwrap();
    let j = job(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits GROUP BY spot",
        &[],
    );
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        (
            export["state"].as_str(),
            export["required_approvals"].as_u64()
        ),
        (Some("in_review"), Some(2))
    );
    let eid = export["id"].as_str().unwrap();
    let first = env
        .world
        .reviewer
        .review_export(eid, "approve", "first look")
        .unwrap();
    assert_eq!(first["state"], "in_review");
    let again = env
        .world
        .reviewer
        .review_export(eid, "approve", "me again")
        .unwrap_err()
        .to_string();
    assert!(again.contains("already approved"), "{again}");
    let second = env
        .world
        .admin
        .create_principal("qian.reviewer", &env.world.review_org, &["reviewer"])
        .unwrap();
    env.world
        .admin
        .record_training(second["id"].as_str().unwrap(), "training")
        .unwrap();
    let second = env.world.admin.as_token(second["token"].as_str().unwrap());
    let done = second.review_export(eid, "approve", "second look").unwrap();
    assert_eq!(done["state"], "approved");
    assert_eq!(done["reviews"].as_array().unwrap().len(), 2);

    // The requester sees every step with who took it and their comment, then releases it.
    env.world
        .scientist
        .download_bundle(eid, &env.dir.path().join("bundle"))
        .unwrap();
    let seen = env
        .world
        .scientist
        .ok("GET", &format!("/v1/exports/{eid}"), None)
        .unwrap();
    let steps: Vec<(&str, &str, Option<&str>)> = seen["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap(),
                s["by"].as_str().unwrap(),
                s["comment"].as_str(),
            )
        })
        .collect();
    let requester = seen["requested_by"].as_str().unwrap();
    let reviewer = first["reviews"][0]["by"].as_str().unwrap();
    let second_reviewer = done["reviews"][1]["by"].as_str().unwrap();
    assert_eq!(
        steps,
        vec![
            ("submitted", requester, None),
            ("checked", "export gate", None),
            ("in_review", "export gate", None),
            ("in_review", reviewer, Some("first look")),
            ("approved", second_reviewer, Some("second look")),
            ("released", requester, None),
        ]
    );
}

#[test]
fn a_returned_export_tells_the_requester_why_and_cannot_be_released() {
    let (env, sid, _) = active_scenario();
    let export = export_of(
        &env,
        &sid,
        "SELECT spot, count(*) AS visits FROM visits GROUP BY spot",
        &[],
    );
    let eid = export["id"].as_str().unwrap();
    env.world
        .reviewer
        .review_export(eid, "return", "please group by month as well")
        .unwrap();
    let seen = env
        .world
        .scientist
        .ok("GET", &format!("/v1/exports/{eid}"), None)
        .unwrap();
    assert_eq!(seen["state"], "returned");
    let last = seen["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["state"].as_str(), last["comment"].as_str()),
        (Some("returned"), Some("please group by month as well"))
    );
    let refused = env
        .world
        .scientist
        .download_bundle(eid, &env.dir.path().join("bundle"))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("the export is returned; only an approved export is released"),
        "{refused}"
    );
    let again = env
        .world
        .reviewer
        .review_export(eid, "approve", "changed my mind")
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("the export is returned, not in review"),
        "{again}"
    );
}

#[test]
fn a_statement_charges_commercial_use_and_leaves_public_interest_free() {
    let (env, sid, hash) = active_scenario();
    let period = time_period();
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    assert_eq!(j["state"], "succeeded");
    let statement = env
        .world
        .scientist
        .statement(&env.world.operator_org, &period)
        .unwrap();
    let lines = statement["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 6, "one line per price item");
    assert!(
        lines
            .iter()
            .all(|l| l["amount_fen"] == 0 && l["note"] == "public-interest scenario: free")
    );
    let jobs = lines
        .iter()
        .find(|l| l["category"] == "security_services")
        .unwrap();
    assert_eq!(jobs["quantity"], 1.0);
    let modules = lines
        .iter()
        .find(|l| l["category"] == "model_publishing")
        .unwrap();
    assert_eq!(modules["quantity"], 1.0);
    // Another org's statement is not the scientist's to read.
    let other = env
        .world
        .scientist
        .statement(&env.world.provider_org, &period)
        .unwrap_err()
        .to_string();
    assert!(other.contains("(404)"), "{other}");
    // Prices are the admin's.
    assert!(env.world.scientist.set_price("result_export", 1).is_err());
    env.world.admin.set_price("result_export", 7_000).unwrap();
    assert!(
        env.world
            .admin
            .statement(&env.world.operator_org, "2026-13")
            .is_err()
    );
}

/// The current month, YYYY-MM.
fn time_period() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}", today.year(), u8::from(today.month()))
}

#[test]
fn a_commercial_scenario_pays_for_its_jobs() {
    let (env, _, _) = active_scenario();
    let today = time::OffsetDateTime::now_utc().date();
    let applied = env
        .world
        .scientist
        .apply_scenario(&serde_json::json!({
            "name": "Visitor marketing",
            "key_area": "culture and tourism",
            "purpose": "visitor counts per spot for a commercial marketing product",
            "public_interest": false,
            "grants": [{ "dataset": "visits", "columns": ["spot"] }],
            "term_start": today.to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
        }))
        .unwrap();
    let sid = applied["id"].as_str().unwrap();
    env.world.admin.approve_scenario(sid).unwrap();
    env.world.provider.approve_scenario(sid).unwrap();
    for _ in 0..3 {
        let j = job(
            &env,
            sid,
            "SELECT spot, count(*) FROM visits GROUP BY spot",
            &[],
        );
        assert_eq!(j["state"], "succeeded");
    }
    let statement = env
        .world
        .admin
        .statement(&env.world.operator_org, &time_period())
        .unwrap();
    let line = |category: &str| {
        statement["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["scenario"] == sid && l["category"] == category)
            .unwrap()
            .clone()
    };
    assert_eq!(line("security_services")["quantity"], 3.0);
    assert_eq!(line("security_services")["amount_fen"], 300);
    assert_eq!(line("security_services")["note"], serde_json::Value::Null);
    assert!(statement["total_fen"].as_i64().unwrap() >= 300);
}

#[test]
fn a_statement_is_reproduced_from_the_audit_log_alone() {
    let (env, _, hash) = active_scenario();
    let w = &env.world;
    let today = time::OffsetDateTime::now_utc().date();
    let applied = w
        .scientist
        .apply_scenario(&serde_json::json!({
            "name": "Visitor marketing",
            "key_area": "culture and tourism",
            "purpose": "visitor counts per spot for a commercial marketing product",
            "public_interest": false,
            "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot", "visit_date"] }],
            "term_start": today.to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
        }))
        .unwrap();
    let sid = applied["id"].as_str().unwrap();
    w.admin.approve_scenario(sid).unwrap();
    w.provider.approve_scenario(sid).unwrap();
    w.publish_module(sid, VISITOR_UDF_WASM).unwrap();
    w.admin.set_price("storage", 1_000_000).unwrap();
    let j = job(&env, sid, tidegate_server_demo_sql(), &[hash]);
    let export = w
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    let eid = export["id"].as_str().unwrap();
    w.reviewer.review_export(eid, "approve", "ok").unwrap();
    w.scientist
        .download_bundle(eid, &env.dir.path().join("bundle"))
        .unwrap();
    // The unit's own enterprise data is stored, and billed by the GB-day.
    let members: String = std::iter::once("member,spend\n".to_string())
        .chain((0..20_000u64).map(|i| format!("m{i},{}\n", i * 7_919 % 100_003)))
        .collect();
    w.scientist
        .import_dataset(
            serde_json::json!({ "name": "members", "level": "L2", "format": "csv" }),
            members.as_bytes(),
        )
        .unwrap();

    let as_of = (time::OffsetDateTime::now_utc() + time::Duration::hours(6))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let period = time_period();
    let billed = w
        .admin
        .statement_as_of(&w.operator_org, &period, &as_of)
        .unwrap();
    let key = hex_key(&env.data_dir().join(PUBLIC_KEY_FILE));
    let entries =
        tidegate_runtime::read_audit_log(&env.data_dir().join(AUDIT_FILE), Some(&key)).unwrap();
    let ledger = tidegate_runtime::ledger_from_audit(&entries).unwrap();
    let replayed = tidegate_runtime::statement_from_ledger(
        &ledger,
        &w.operator_org,
        &period,
        time::OffsetDateTime::parse(&as_of, &time::format_description::well_known::Rfc3339)
            .unwrap(),
    )
    .unwrap();
    let typed = |v: &serde_json::Value| -> tidegate_runtime::Statement {
        serde_json::from_value(v.clone()).unwrap()
    };
    assert_eq!(typed(&billed), replayed);
    let line = |scenario: serde_json::Value, item: &str| {
        billed["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["scenario"] == scenario && l["item"] == item)
            .unwrap_or_else(|| panic!("no {item} line in {billed}"))
            .clone()
    };
    assert_eq!(line(sid.into(), "result_export")["amount_fen"], 5_000);
    assert_eq!(line(sid.into(), "model_publishing")["amount_fen"], 10_000);
    assert!(
        line(sid.into(), "storage")["amount_fen"].as_i64().unwrap() > 0,
        "{billed}"
    );
    assert!(
        line(serde_json::Value::Null, "storage")["quantity"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(billed["total_fen"].as_i64().unwrap() > 15_000);

    // After the org exits, what it stored stops accruing, in both accounts alike.
    w.admin.exit_org(&w.operator_org, "term ended").unwrap();
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(12))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let after = w
        .admin
        .statement_as_of(&w.operator_org, &period, &later)
        .unwrap();
    let entries =
        tidegate_runtime::read_audit_log(&env.data_dir().join(AUDIT_FILE), Some(&key)).unwrap();
    let replayed = tidegate_runtime::statement_from_ledger(
        &tidegate_runtime::ledger_from_audit(&entries).unwrap(),
        &w.operator_org,
        &period,
        time::OffsetDateTime::parse(&later, &time::format_description::well_known::Rfc3339)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_value::<tidegate_runtime::Statement>(after.clone()).unwrap(),
        replayed
    );
    assert!(
        after["total_fen"].as_i64().unwrap() <= billed["total_fen"].as_i64().unwrap(),
        "nothing accrues after the exit"
    );
}

#[test]
fn a_release_that_differs_from_an_earlier_one_by_one_subject_is_refused() {
    let (env, sid, _) = active_scenario();
    let export = |sql: &str| export_of(&env, &sid, sql, &[]);
    let by_spot = "SELECT spot, count(*) AS visits FROM visits GROUP BY spot";
    assert_eq!(export(by_spot)["state"], "in_review");
    // The same release without one visitor: subtracting the two would single them out. Rows
    // are never chosen by a direct identifier: refused before anything runs, however the
    // group key is named. (Trackers over other columns meet the differencing check: see
    // `attacks.rs`.)
    let csv = visitor_csv(ROWS);
    let someone = csv.lines().nth(1).unwrap().split(',').next().unwrap();
    for sql in [
        format!(
            "SELECT spot, count(*) AS visits FROM visits WHERE resident_id <> '{someone}' GROUP BY spot"
        ),
        format!(
            "SELECT count(*) AS n, spot AS place FROM visits WHERE resident_id <> '{someone}' GROUP BY spot"
        ),
    ] {
        let error = refused_before_running(&env, &sid, &sql, &[]);
        assert!(
            error.contains("rows may not be chosen by whose they are"),
            "{error}"
        );
    }
    // Another measure over the same population is no difference at all.
    let mean = export("SELECT spot, round(avg(spend), 2) AS mean FROM visits GROUP BY spot");
    assert_eq!(mean["state"], "in_review", "{mean}");
}

#[test]
fn a_reviewer_sees_the_report_as_a_page_with_the_scenarios_earlier_exports_beside_it() {
    let (env, sid, _) = active_scenario();
    let export = |sql: &str| export_of(&env, &sid, sql, &[]);
    let first = export("SELECT spot, count(*) AS visits FROM visits GROUP BY spot");
    let second = export(
        "SELECT spot AS \"<i>place</i>\", round(avg(spend), 2) AS mean FROM visits GROUP BY spot",
    );
    let seen = seen_by_reviewer(&env, &second);
    assert_eq!(seen["earlier"][0]["id"], first["id"]);
    let page = tidegate_server::export_html(&serde_json::from_value(seen.clone()).unwrap());
    for expected in [
        "<h2>Gate report</h2>",
        "<td>differencing</td>",
        "<td>threshold</td>",
        "Earlier exports of this scenario",
        first["id"].as_str().unwrap(),
        "&lt;i&gt;place&lt;/i&gt;",
        "<h2>History</h2><ol><li>submitted at ",
        "<li>in_review at ",
    ] {
        assert!(page.contains(expected), "{expected} missing from the page");
    }
    assert!(!page.contains("<i>place</i>"), "values are escaped");
    let raw = env
        .world
        .reviewer
        .call(
            "GET",
            &format!("/v1/exports/{}?format=html", second["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(raw.status, 200);
    // The requester sees the report, not the rows or the other exports.
    let own = env
        .world
        .scientist
        .ok(
            "GET",
            &format!("/v1/exports/{}", second["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert!(
        own.get("preview").is_none() && own.get("earlier").is_none(),
        "{own}"
    );
}

#[test]
fn a_sum_dominated_by_one_subject_is_suppressed_while_counts_are_released() {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..30 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
        csv.push_str(&format!(
            "q{i:03},13800000000,Quiet Pond,2026-05-01,10.00\n"
        ));
        csv.push_str(&format!(
            "o{i:03},13800000000,Old Street,2026-05-01,10.00\n"
        ));
    }
    for i in 30..40 {
        csv.push_str(&format!(
            "q{i:03},13800000000,Quiet Pond,2026-05-01,10.00\n"
        ));
    }
    // West Lake is dominated below; Old Street, the smaller of the others, goes with it.
    // One visitor spends more than all the others at West Lake together, many times over.
    csv.push_str("w000,13800000000,West Lake,2026-05-02,100000.00\n");
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap();
    let gated = |sql: &str| {
        let e = export_of(&env, sid, sql, &[]);
        let preview = preview_of(&env, &e);
        (e, preview)
    };
    let (sums, preview) =
        gated("SELECT spot, round(sum(spend), 2) AS total FROM visits GROUP BY spot ORDER BY spot");
    let (passed, detail) = gate_check(&sums, "dominance");
    assert!(passed);
    assert!(detail.starts_with("1 group(s)"), "{detail}");
    assert!(
        preview.contains("Quiet Pond") && !preview.contains("West Lake"),
        "{preview}"
    );
    let (_, counts) =
        gated("SELECT spot, count(*) AS visits FROM visits GROUP BY spot ORDER BY spot");
    assert!(
        counts.contains("Quiet Pond") && counts.contains("West Lake"),
        "{counts}"
    );
}

#[test]
fn a_filter_on_a_stored_table_gives_the_same_answer_as_filtering_the_whole() {
    let (env, sid, _) = active_scenario();
    // Over L2 data the job does not say how many rows it has; its export's report does.
    let count = |sql: &str| {
        let j = job(&env, &sid, sql, &[]);
        assert_eq!(j["state"], "succeeded", "{j}");
        assert!(j["rows"].is_null(), "{j}");
        let export = full_report(
            &env,
            &env.world
                .scientist
                .request_export(j["id"].as_str().unwrap())
                .unwrap(),
        );
        export["gate_report"]["groups_total"].as_i64().unwrap()
    };
    assert_eq!(
        count("SELECT spot, count(*) FROM visits WHERE spot = 'West Lake' GROUP BY spot"),
        1
    );
    assert_eq!(
        count(
            "SELECT spot, count(*) FROM visits WHERE spot IN ('West Lake', 'nowhere') GROUP BY spot"
        ),
        1
    );
    assert_eq!(
        count("SELECT spot, count(*) FROM visits WHERE spend > 1e9 GROUP BY spot"),
        0
    );
    assert!(count("SELECT spot, count(*) FROM visits GROUP BY spot") > 1);
}

#[test]
fn audit_entries_younger_than_180_days_cannot_be_pruned_by_anyone() {
    let env = setup(true);
    let w = &env.world;
    let today = time::OffsetDateTime::now_utc().date();
    let recent = (today - time::Duration::days(179)).to_string();
    let refused = w.admin.prune_audit(&recent).unwrap_err().to_string();
    assert!(refused.contains("kept at least 180 days"), "{refused}");
    let not_admin = w.auditor.prune_audit("2020-01-01").unwrap_err().to_string();
    assert!(not_admin.contains("(403)"), "{not_admin}");
    // Nothing is old enough yet, and the attempt itself is on the record.
    let done = w.admin.prune_audit("2020-01-01").unwrap();
    assert_eq!(done.entries_pruned, 0);
    let log = std::fs::read_to_string(env.data_dir().join(AUDIT_FILE)).unwrap();
    assert!(log.contains("\"audit.prune\""));
    let verdict = verify_audit_file(&env.data_dir().join(AUDIT_FILE), None).unwrap();
    assert_eq!(verdict.first_bad, None);
}

#[test]
fn after_an_exit_no_marker_is_left_in_any_file_or_in_anything_the_platform_can_decrypt() {
    const MARKER: &str = "TIER-MARKER-5c1e0b";
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&visitor_csv(ROWS)).unwrap();
    let mut csv = String::from("member_id,tier\n");
    for i in 0..40 {
        let tier = if i % 2 == 0 { MARKER } else { "silver" };
        csv.push_str(&format!("m{i},{tier}\n"));
    }
    let imported = w
        .scientist
        .import_dataset(
            serde_json::json!({
                "name": "members", "level": "L2", "format": "csv",
                "columns": [{ "name": "member_id", "tags": ["entity"] }, { "name": "tier", "tags": ["dimension"] }],
            }),
            csv.as_bytes(),
        )
        .unwrap();
    w.admin
        .approve_dataset(imported["id"].as_str().unwrap())
        .unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let applied = w
        .scientist
        .apply_scenario(&serde_json::json!({
            "name": "Member tiers", "key_area": "culture and tourism", "purpose": "tiers",
            "public_interest": true,
            "grants": [{ "dataset": "members", "columns": ["tier"] }],
            "term_start": today.to_string(), "term_end": (today + time::Duration::days(30)).to_string(),
        }))
        .unwrap();
    let sid = applied["id"].as_str().unwrap();
    w.admin.approve_scenario(sid).unwrap();
    let j = job(
        &env,
        sid,
        "SELECT tier, count(*) AS members FROM members GROUP BY tier",
        &[],
    );
    let export = w
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(export["state"], "in_review", "{export}");
    let key_file = env.dir.path().join("keys/master.key");
    let decryptable_markers = |platform: &Platform| {
        let mut found = Vec::new();
        platform
            .scan_objects(|name, plain| {
                if plain.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
                    found.push(name.to_string());
                }
            })
            .unwrap();
        found
    };
    let plaintext_markers = |dir: &Path| {
        let mut files = Vec::new();
        all_files(dir, &mut files);
        files
            .into_iter()
            .filter(|f| {
                let bytes = std::fs::read(f).unwrap();
                bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(plaintext_markers(&env.data_dir()), Vec::<PathBuf>::new());

    // The server stops and lets go of the data directory; the rest happens in process.
    let data_dir = env.data_dir();
    let admin_token = w.admin.token().unwrap().to_string();
    let operator_org = w.operator_org.clone();
    let common::Env { _runtime, dir, .. } = env;
    drop(_runtime);
    let platform = Platform::open(&data_dir, MasterKey::load(&key_file).unwrap()).unwrap();
    let mut before = decryptable_markers(&platform);
    before.sort();
    assert_eq!(
        before
            .iter()
            .map(|n| n.split('/').next().unwrap())
            .collect::<Vec<_>>(),
        vec!["datasets", "exports", "gate", "results"],
        "the marker is in the social data, the result, the export and the groups the gate keeps"
    );
    let admin = platform.authenticate(&admin_token).unwrap();
    platform
        .exit_org(&admin, &operator_org, "authorization ended")
        .unwrap();
    assert_eq!(decryptable_markers(&platform), Vec::<String>::new());
    assert!(
        platform.verify_storage().unwrap() > 0,
        "the provider's data is still there"
    );
    assert_eq!(plaintext_markers(&data_dir), Vec::<PathBuf>::new());
    drop(dir);
}

/// A module whose bytes carry a marker that exists nowhere else.
const MODULE_MARKER: &str = "EXIT-MARKER-93b1f07c";

fn marked_module() -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 4)
            (data (i32.const 16) "\20\00\00\00\1b\00\00\00")
            (data (i32.const 32) "scalar mark(int64) -> int64")
            (data (i32.const 1024) "{MODULE_MARKER}")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const 65536)
            (func (export "tg_error") (result i32) i32.const 16)
            (func (export "tg_scalar") (param i32 i32) (result i32) unreachable))"#
    ))
    .unwrap()
}

#[test]
fn an_exit_closes_access_destroys_the_orgs_objects_and_keeps_the_logs() {
    let (env, sid, hash) = active_scenario();
    env.world
        .scientist
        .upload_module(&sid, &marked_module())
        .unwrap();
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    env.world
        .reviewer
        .review_export(export["id"].as_str().unwrap(), "approve", "ok")
        .unwrap();
    let marker_in_dir = |dir: &Path| {
        let mut files = Vec::new();
        all_files(dir, &mut files);
        files.into_iter().any(|f| {
            let bytes = std::fs::read(&f).unwrap();
            bytes
                .windows(MODULE_MARKER.len())
                .any(|w| w == MODULE_MARKER.as_bytes())
        })
    };
    assert!(
        marker_in_dir(&env.data_dir()),
        "the marker is stored before the exit"
    );

    let exit = env
        .world
        .admin
        .exit_org(&env.world.operator_org, "authorization ended")
        .unwrap();
    let certificate = &exit.certificate;
    let count = |kind: DestroyedKind| {
        certificate
            .destroyed
            .iter()
            .filter(|d| d.kind == kind)
            .count()
    };
    assert_eq!(count(DestroyedKind::Result), 1);
    assert_eq!(count(DestroyedKind::Export), 1);
    assert_eq!(count(DestroyedKind::Module), 2);
    let key = hex_key(&env.data_dir().join(PUBLIC_KEY_FILE));
    tidegate_runtime::verify_document(certificate, &exit.signature, &key).unwrap();

    // Access is closed, the objects are gone in every form, and the log still verifies.
    let refused = env
        .world
        .scientist
        .call("GET", "/v1/datasets", None)
        .unwrap();
    assert_eq!(refused.status, 401);
    assert!(
        !marker_in_dir(&env.data_dir()),
        "the module's bytes remain somewhere in the data directory"
    );
    let objects = |kind: &str| {
        std::fs::read_dir(env.data_dir().join("objects").join(kind))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!((objects("results"), objects("exports")), (0, 0));
    let verdict = verify_audit_file(&env.data_dir().join(AUDIT_FILE), Some(&key)).unwrap();
    assert_eq!(verdict.first_bad, None);
    let scenario = env
        .world
        .admin
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    assert_eq!(scenario["state"], "exited");
}

fn hex_key(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    (0..text.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text.trim()[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_annual_report_counts_jobs_exports_and_incidents() {
    let (env, sid, hash) = active_scenario();
    job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    let failed = job(&env, &sid, "SELECT no_such_column FROM visits", &[]);
    assert_eq!(failed["state"], "failed");
    // A total without GROUP BY keys runs, and the gate rejects its export.
    let rejected = job(&env, &sid, "SELECT count(*) AS n FROM visits", &[]);
    env.world
        .scientist
        .request_export(rejected["id"].as_str().unwrap())
        .unwrap();
    let year = time::OffsetDateTime::now_utc().year();
    let report = env
        .world
        .auditor
        .annual_report(&env.world.operator_org, year)
        .unwrap();
    assert_eq!(report.totals.jobs, 3);
    assert_eq!(report.incidents.failed_jobs, 1);
    assert_eq!(report.incidents.rejected_exports, 1);
    assert_eq!(report.scenarios.len(), 1);
    let page = env
        .world
        .auditor
        .call(
            "GET",
            &format!(
                "/v1/reports/annual?org={}&year={year}&format=html",
                env.world.operator_org
            ),
            None,
        )
        .unwrap();
    assert_eq!(page.status, 200);
    let other = env
        .world
        .scientist
        .annual_report(&env.world.provider_org, year)
        .unwrap_err()
        .to_string();
    assert!(other.contains("(404)"), "{other}");
}

#[test]
fn an_active_scenario_keeps_reading_the_version_it_was_granted() {
    let (env, sid, _) = active_scenario();
    let scenario = env
        .world
        .scientist
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    assert_eq!(scenario["grants"][0]["version"], 1);
    let v2 = env.world.import_visits(&visitor_csv(ROWS * 2)).unwrap();
    assert_eq!(v2["version"], 2);
    let j = job(
        &env,
        &sid,
        "SELECT spot, count(*) FROM visits GROUP BY spot",
        &[],
    );
    assert_eq!(
        j["resources"]["rows_scanned"], ROWS as u64,
        "the job read v1, not v2"
    );
}

#[test]
fn social_data_waits_for_an_admin_and_serves_only_its_own_org() {
    let (env, _, _) = active_scenario();
    let csv = "member_id,tier,points\nm1,gold,10\nm2,silver,20\nm3,gold,30\n";
    let imported = env
        .world
        .scientist
        .import_dataset(
            serde_json::json!({
                "name": "members",
                "level": "L2",
                "format": "csv",
                "columns": [{ "name": "member_id", "tags": ["entity"] }, { "name": "tier", "tags": ["dimension"] }],
            }),
            csv.as_bytes(),
        )
        .unwrap();
    assert_eq!(
        (imported["origin"].as_str(), imported["pending"].as_bool()),
        (Some("social"), Some(true))
    );
    let today = time::OffsetDateTime::now_utc().date();
    let request = serde_json::json!({
        "name": "Member tiers", "key_area": "culture and tourism", "purpose": "tiers", "public_interest": true,
        "grants": [{ "dataset": "members", "columns": ["tier", "points"] }],
        "term_start": today.to_string(), "term_end": (today + time::Duration::days(30)).to_string(),
    });
    let pending = env
        .world
        .scientist
        .apply_scenario(&request)
        .unwrap_err()
        .to_string();
    assert!(
        pending.contains("awaiting an admin's approval"),
        "{pending}"
    );
    assert!(
        env.world
            .provider
            .approve_dataset(imported["id"].as_str().unwrap())
            .is_err()
    );
    env.world
        .admin
        .approve_dataset(imported["id"].as_str().unwrap())
        .unwrap();
    let applied = env.world.scientist.apply_scenario(&request).unwrap();
    // Social data needs no provider approval: the admin's makes it active.
    let active = env
        .world
        .admin
        .approve_scenario(applied["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(active["state"], "active");
    // Another operating unit cannot ask for it.
    let other_org = env
        .world
        .admin
        .create_org("another-unit", "operator")
        .unwrap();
    let stranger = env
        .world
        .admin
        .create_principal(
            "stranger",
            other_org["id"].as_str().unwrap(),
            &["scientist"],
        )
        .unwrap();
    env.world
        .admin
        .record_training(stranger["id"].as_str().unwrap(), "training")
        .unwrap();
    let stranger = env
        .world
        .admin
        .as_token(stranger["token"].as_str().unwrap());
    let refused = stranger.apply_scenario(&request).unwrap_err().to_string();
    assert!(refused.contains("another org's social data"), "{refused}");
    // The exit destroys it.
    let exit = env
        .world
        .admin
        .exit_org(&env.world.operator_org, "ended")
        .unwrap();
    let kinds: Vec<DestroyedKind> = exit.certificate.destroyed.iter().map(|d| d.kind).collect();
    assert!(kinds.contains(&DestroyedKind::SocialDataset), "{kinds:?}");
}

#[test]
fn policy_as_code_shows_the_difference_and_applies_it_as_one_version() {
    let (env, sid, _) = active_scenario();
    let doc = env.world.admin.export_policy().unwrap();
    assert_eq!(doc.version, 1);
    let mut changed = doc.clone();
    changed.prices.insert("result_export".into(), 6_000);
    let scenario = changed.scenarios.iter_mut().find(|s| s.id == sid).unwrap();
    scenario.k = Some(20);
    let dry = env.world.admin.apply_policy(&changed, true).unwrap();
    assert_eq!((dry.to_version, dry.changes.len()), (1, 2));
    assert_eq!(
        env.world.admin.export_policy().unwrap().version,
        1,
        "a dry run changes nothing"
    );
    let applied = env.world.admin.apply_policy(&changed, false).unwrap();
    assert_eq!(applied.to_version, 2);
    let now = env.world.admin.export_policy().unwrap();
    assert_eq!(now.prices["result_export"], 6_000);
    // A stale document, or a k below the level's minimum, is refused.
    let stale = env
        .world
        .admin
        .apply_policy(&changed, false)
        .unwrap_err()
        .to_string();
    assert!(stale.contains("export it again"), "{stale}");
    let mut weak = now.clone();
    weak.scenarios.iter_mut().find(|s| s.id == sid).unwrap().k = Some(2);
    let refused = env
        .world
        .admin
        .apply_policy(&weak, false)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("below the L2 minimum of 10"), "{refused}");
    // A field the document does not know (a misspelling, say) is refused, not ignored.
    let mut misspelled = serde_json::to_value(&now).unwrap();
    misspelled["scenarios"][0]["kk"] = serde_json::json!(20);
    let answer = env
        .world
        .admin
        .call(
            "POST",
            "/v1/policy",
            Some(&serde_json::json!({ "document": misspelled })),
        )
        .unwrap();
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body.to_string().contains("unknown field `kk`"),
        "{}",
        answer.body
    );
    // Jobs record the version they ran under, and the bundle carries it.
    let j = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS visits FROM visits GROUP BY spot",
        &[],
    );
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(export["gate_report"]["threshold_k"], 20);
    env.world
        .reviewer
        .review_export(export["id"].as_str().unwrap(), "approve", "ok")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    env.world
        .scientist
        .download_bundle(export["id"].as_str().unwrap(), dir.path())
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["policy_version"], 2);
    assert!(env.world.scientist.export_policy().is_err());
}

#[test]
fn a_suspended_scenario_exports_nothing_even_after_approval() {
    let (env, sid, hash) = active_scenario();
    let j = job(&env, &sid, tidegate_server_demo_sql(), &[hash]);
    let export = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    let eid = export["id"].as_str().unwrap();
    env.world
        .reviewer
        .review_export(eid, "approve", "ok")
        .unwrap();
    env.world.admin.change_scenario(&sid, "suspend").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = env
        .world
        .scientist
        .download_bundle(eid, dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("exports nothing"), "{err}");
    env.world.admin.change_scenario(&sid, "resume").unwrap();
    env.world
        .scientist
        .download_bundle(eid, dir.path())
        .unwrap();
}

#[test]
fn freezing_an_org_stops_all_its_scenarios_and_unfreezing_restores_them() {
    let (env, sid, _) = active_scenario();
    let frozen = env
        .world
        .admin
        .freeze_org(&env.world.operator_org, true)
        .unwrap();
    assert_eq!(frozen["scenarios"], serde_json::json!([sid]));
    let refused = env.world.scientist.submit_job(
        &sid,
        "SELECT spot, count(*) FROM visits GROUP BY spot",
        &[],
    );
    // The org itself is frozen, before any of its scenarios is looked at.
    let refused = refused.unwrap_err().to_string();
    assert!(refused.contains("is frozen by the authority"), "{refused}");
    assert!(
        env.world
            .scientist
            .freeze_org(&env.world.operator_org, false)
            .is_err()
    );
    env.world
        .admin
        .freeze_org(&env.world.operator_org, false)
        .unwrap();
    let j = job(
        &env,
        &sid,
        "SELECT spot, count(*) FROM visits GROUP BY spot",
        &[],
    );
    assert_eq!(j["state"], "succeeded");
}

#[test]
fn lifting_a_freeze_leaves_a_scenario_stopped_on_its_own_stopped() {
    let (env, sid, _) = active_scenario();
    env.world.admin.change_scenario(&sid, "suspend").unwrap();
    let frozen = env
        .world
        .admin
        .freeze_org(&env.world.operator_org, true)
        .unwrap();
    assert_eq!(frozen["scenarios"], serde_json::json!([]));
    env.world
        .admin
        .freeze_org(&env.world.operator_org, false)
        .unwrap();
    let s = env
        .world
        .admin
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    assert_eq!(s["state"], "suspended");
}
