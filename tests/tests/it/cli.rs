//! The `tidegate` binary: local commands (module inspection, the local runner, key rotation) and
//! a scientist's commands against a server.

use std::process::ExitCode;

use tidegate_policy::ScenarioState;
use tidegate_server::{VISITOR_UDF_WASM, main_with_args, visitor_csv};

use crate::common;

fn tidegate(args: &[&str]) -> ExitCode {
    main_with_args(
        std::iter::once("tidegate")
            .chain(args.iter().copied())
            .map(Into::into),
    )
}

#[test]
fn module_inspect_accepts_the_example_and_rejects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("visitor.wasm");
    std::fs::write(&good, VISITOR_UDF_WASM).unwrap();
    assert_eq!(
        tidegate(&["module", "inspect", good.to_str().unwrap()]),
        ExitCode::SUCCESS
    );
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x01\x05").unwrap();
    assert_eq!(
        tidegate(&["module", "inspect", bad.to_str().unwrap()]),
        ExitCode::FAILURE
    );
}

#[test]
fn dev_run_runs_a_udf_on_local_files_and_keeps_the_same_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("visitor.wasm");
    std::fs::write(&wasm, VISITOR_UDF_WASM).unwrap();
    let csv = dir.path().join("visits.csv");
    std::fs::write(&csv, visitor_csv(2_000)).unwrap();
    let table = format!("visits={}", csv.display());
    let run = |sql: &str| {
        tidegate(&[
            "dev",
            "run",
            "--module",
            wasm.to_str().unwrap(),
            "--table",
            &table,
            "--sql",
            sql,
        ])
    };
    assert_eq!(
        run(
            "SELECT spot, avg(age_at_visit(resident_id, CAST(visit_date AS DATE))) FROM visits GROUP BY spot"
        ),
        ExitCode::SUCCESS
    );
    assert_eq!(
        run("COPY (SELECT spot FROM visits) TO '/tmp/out.csv'"),
        ExitCode::FAILURE
    );
    assert_eq!(
        run("SELECT * FROM information_schema.tables"),
        ExitCode::FAILURE
    );
}

#[test]
fn dataset_scan_proposes_tags_before_import() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("visits.csv");
    std::fs::write(&csv, visitor_csv(2_000)).unwrap();
    let report = tidegate_server::scan_report(&csv).unwrap();
    let tags = |column: &str| {
        let r = report.iter().find(|r| r.column == column).unwrap();
        (r.proposed_tags.clone(), r.confidence)
    };
    assert_eq!(
        tags("resident_id"),
        (vec!["pii:resident_id".to_string(), "entity".into()], 1.0)
    );
    assert_eq!(tags("mobile").0, ["pii:mobile"]);
    assert_eq!(tags("spot").0, ["dimension"]);
    assert!(tags("spend").0.is_empty());
    assert_eq!(
        tidegate(&["dataset", "scan", csv.to_str().unwrap(), "--json"]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tidegate(&["dataset", "scan", "/no/such/file.csv"]),
        ExitCode::FAILURE
    );
}

#[test]
fn an_auditor_exports_a_slice_and_verifies_it_offline() {
    let (dir, outcome) = small_demo();
    let data = outcome.data_dir.to_str().unwrap();
    let slice = dir.path().join("slice.json");
    let key = outcome.public_key.to_str().unwrap();
    assert_eq!(
        tidegate(&[
            "audit",
            "export",
            "--data-dir",
            data,
            "--from",
            "3",
            "--to",
            "12",
            "--out",
            slice.to_str().unwrap()
        ]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tidegate(&[
            "audit",
            "verify-slice",
            slice.to_str().unwrap(),
            "--key",
            key
        ]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tidegate(&["audit", "verify", "--data-dir", data]),
        ExitCode::SUCCESS
    );
    let text = std::fs::read_to_string(&slice)
        .unwrap()
        .replacen("org.create", "org.crea7e", 1);
    std::fs::write(&slice, text).unwrap();
    assert_eq!(
        tidegate(&[
            "audit",
            "verify-slice",
            slice.to_str().unwrap(),
            "--key",
            key
        ]),
        ExitCode::FAILURE
    );
}

#[test]
fn rotating_the_master_key_keeps_every_object_readable_with_the_new_key_only() {
    let (dir, outcome) = small_demo();
    let data = outcome.data_dir.to_str().unwrap();
    let old = outcome.master_key.to_str().unwrap();
    let new = dir.path().join("keys/next.key");
    assert_eq!(
        tidegate(&[
            "keys",
            "rotate",
            "--data-dir",
            data,
            "--master-key",
            old,
            "--new-master-key",
            new.to_str().unwrap()
        ]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tidegate(&[
            "keys",
            "check",
            "--data-dir",
            data,
            "--master-key",
            new.to_str().unwrap()
        ]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        tidegate(&["keys", "check", "--data-dir", data, "--master-key", old]),
        ExitCode::FAILURE
    );
    assert_eq!(
        tidegate(&["audit", "verify", "--data-dir", data]),
        ExitCode::SUCCESS
    );
}

/// A quiet demo over 1,000 rows in a fresh directory.
fn small_demo() -> (tempfile::TempDir, tidegate_server::DemoOutcome) {
    let dir = tempfile::tempdir().unwrap();
    let outcome = tidegate_server::run_demo(&tidegate_server::DemoOptions {
        data_dir: Some(dir.path().to_path_buf()),
        rows: 1_000,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    (dir, outcome)
}

#[test]
fn a_scientist_drafts_a_scenario_with_export_rules_and_submits_it_from_the_command_line() {
    let env = common::setup(true);
    env.world.import_visits(&visitor_csv(200)).unwrap();
    let me = &env.world.scientist;
    let remote = ["--url", me.url(), "--token", me.token().unwrap()];
    let mut apply = vec![
        "scenario",
        "apply",
        "--name",
        "footfall",
        "--key-area",
        "tourism",
        "--purpose",
        "visits per spot",
        "--grant",
        "visits:spot,resident_id",
        "--term-start",
        "2026-01-01",
        "--term-end",
        "2099-12-31",
        "--mask",
        "spot=redact",
        "--max-rows",
        "5",
        "--job-memory-mib",
        "512",
        "--draft",
    ];
    apply.extend(remote);
    assert_eq!(tidegate(&apply), ExitCode::SUCCESS);
    let doc = env.world.admin.export_policy().unwrap();
    let s = &doc.scenarios[0];
    assert_eq!(s.state, Some(ScenarioState::Draft));
    assert_eq!(
        serde_json::to_value(&s.export_rules).unwrap(),
        serde_json::json!({ "masking": { "spot": "redact" }, "max_rows": 5, "job_memory_mib": 512 })
    );
    let id = s.id.as_str();
    let mut submit = vec!["scenario", "submit", id];
    submit.extend(remote);
    assert_eq!(tidegate(&submit), ExitCode::SUCCESS);
    assert_eq!(
        env.world.admin.export_policy().unwrap().scenarios[0].state,
        Some(ScenarioState::PendingApprovals)
    );
    // A malformed masking rule fails before anything is sent.
    let mut bad = apply.clone();
    let at = bad.iter().position(|a| *a == "spot=redact").unwrap();
    bad[at] = "spot";
    assert_eq!(tidegate(&bad), ExitCode::FAILURE);
}

#[test]
fn dev_run_takes_guest_aggregates_and_table_functions_from_several_modules() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let model = write("model.wasm", tidegate_server::MODEL_UDF_WASM);
    let aggregates = write("aggregates.wasm", tidegate_server::AGGREGATE_UDF_WASM);
    for m in [&model, &aggregates] {
        assert_eq!(tidegate(&["module", "inspect", m]), ExitCode::SUCCESS);
    }
    let csv = write("visits.csv", visitor_csv(2_000).as_bytes());
    let table = format!("visits={csv}");
    let run = |sql: &str| {
        tidegate(&[
            "dev",
            "run",
            "--module",
            &model,
            "--module",
            &aggregates,
            "--table",
            &table,
            "--sql",
            sql,
        ])
    };
    assert_eq!(
        run(
            "SELECT label, sum_sq(z) AS s, geo_mean(spend) AS g FROM standardize('visits', 'spend', 'spot') \
             JOIN (SELECT spot, spend FROM visits) v ON v.spot = label GROUP BY label"
        ),
        ExitCode::SUCCESS
    );
    // A table function reads only the tables of the run, by quoted name.
    assert_eq!(
        run("SELECT * FROM standardize('elsewhere', 'spend', 'spot')"),
        ExitCode::FAILURE
    );
}

#[test]
fn a_reviewer_works_the_queue_from_the_command_line() {
    let (env, sid, _) = common::active_scenario();
    let e = common::export_of(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
        &[],
    );
    let id = e["id"].as_str().unwrap();
    let as_ = |c: &tidegate_server::Client, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", c.url(), "--token", c.token().unwrap()]);
        tidegate(&all)
    };
    let w = &env.world;
    assert_eq!(as_(&w.reviewer, &["review", "queue"]), ExitCode::SUCCESS);
    assert_eq!(
        as_(&w.reviewer, &["review", "queue", "--json", "--limit", "1"]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        as_(
            &w.reviewer,
            &["review", "approve", id, "--comment", "aggregates only"]
        ),
        ExitCode::SUCCESS
    );
    assert_eq!(
        w.scientist
            .call("GET", &format!("/v1/exports/{id}"), None)
            .unwrap()
            .body["state"],
        "approved"
    );
    for list in [
        &["export", "list", "--state", "approved"][..],
        &["job", "list"],
        &["scenario", "list"],
        &["module", "list"],
    ] {
        assert_eq!(as_(&w.scientist, list), ExitCode::SUCCESS, "{list:?}");
    }
    assert_eq!(as_(&w.admin, &["scenario", "queue"]), ExitCode::SUCCESS);
    assert_eq!(as_(&w.reviewer, &["module", "queue"]), ExitCode::SUCCESS);
    assert_eq!(as_(&w.admin, &["principal", "list"]), ExitCode::SUCCESS);
    assert_eq!(as_(&w.auditor, &["org", "list"]), ExitCode::SUCCESS);
    // The directory is the authority's: a scientist's listing fails.
    assert_eq!(as_(&w.scientist, &["principal", "list"]), ExitCode::FAILURE);
    // A page size out of range fails before anything is shown.
    assert_eq!(
        as_(&w.reviewer, &["review", "queue", "--limit", "0"]),
        ExitCode::FAILURE
    );
}

#[test]
fn a_provider_declares_mock_metadata_and_a_scientist_writes_the_mock_from_the_command_line() {
    let env = common::setup(true);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("trips.csv");
    std::fs::write(&csv, "rider,fare\nr1,10.5\nr2,12.0\nr3,7.25\n").unwrap();
    let meta = dir.path().join("mock.json");
    std::fs::write(
        &meta,
        r#"{"fare": {"min": 2, "max": 30}, "rider": {"distinct": 5}}"#,
    )
    .unwrap();
    let provider = &env.world.provider;
    let mut import = vec![
        "dataset",
        "import",
        csv.to_str().unwrap(),
        "--name",
        "trips",
        "--level",
        "l2",
        "--column",
        "rider:utf8:entity",
        "--mock",
        meta.to_str().unwrap(),
        "--url",
        provider.url(),
        "--token",
        provider.token().unwrap(),
    ];
    assert_eq!(tidegate(&import), ExitCode::SUCCESS);
    let listed = env.world.provider.list_datasets().unwrap();
    let trips = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "trips")
        .unwrap();
    assert_eq!(trips["mock"]["fare"]["max"], 30.0, "{trips}");
    // The metadata is its stewards' to see in the catalogue; others see the mocks made of it.
    let others = env.world.scientist.list_datasets().unwrap();
    let theirs = others
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "trips")
        .unwrap();
    assert!(theirs.get("mock").is_none(), "{theirs}");
    // Metadata that does not parse fails before anything is sent.
    std::fs::write(&meta, r#"{"fare": {"maximum": 30}}"#).unwrap();
    import[4] = "trips_again";
    assert_eq!(tidegate(&import), ExitCode::FAILURE);

    let scenario = env
        .world
        .scientist
        .apply_scenario(&serde_json::json!({
            "name": "fares", "key_area": "transport", "purpose": "fares per rider count",
            "grants": [{ "dataset": "trips", "columns": ["fare"] }],
            "term_start": "2026-01-01", "term_end": "2099-12-31",
        }))
        .unwrap();
    let sid = scenario["id"].as_str().unwrap();
    env.world.admin.approve_scenario(sid).unwrap();
    env.world.provider.approve_scenario(sid).unwrap();
    let out = dir.path().join("trips-mock.parquet");
    let me = &env.world.scientist;
    let mock = [
        "dataset",
        "mock",
        "trips",
        "--scenario",
        sid,
        "--rows",
        "50",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--url",
        me.url(),
        "--token",
        me.token().unwrap(),
    ];
    assert_eq!(tidegate(&mock), ExitCode::SUCCESS);
    let file = std::fs::File::open(&out).unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let marked = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .any(|kv| kv.key == "tidegate.mock" && kv.value.as_deref() == Some("true"));
    assert!(marked, "the file says it is a mock");
    let batches: Vec<_> = reader.build().unwrap().map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["rider", "fare"]);
}
