//! `tidegate dev run` with the real gate: a scenario's mocks and rules, or local files with a
//! tag file, through the same plan analysis, per-subject work and export gate as a job of the
//! scenario on the platform.

use std::process::ExitCode;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use tidegate_policy::{ColumnSpec, ColumnTag, Level, SensitiveType};
use tidegate_runtime::{GuestLimits, JobMeter, LocalScenario, Sandbox, ScenarioView, TableInput};
use tidegate_server::{VISITOR_UDF_WASM, main_with_args, visitor_csv};

use crate::common::{DEMO_SQL, ROWS, active_scenario, export_of, show_scenario};

fn tidegate(args: &[&str]) -> ExitCode {
    main_with_args(
        std::iter::once("tidegate")
            .chain(args.iter().copied())
            .map(Into::into),
    )
}

/// The visits the platform holds, typed and tagged as the provider imported them, with the
/// columns the scenario grants.
fn visits_as_granted() -> TableInput {
    let schema = Arc::new(Schema::new(vec![
        Field::new("resident_id", DataType::Utf8, true),
        Field::new("mobile", DataType::Utf8, true),
        Field::new("spot", DataType::Utf8, true),
        Field::new("visit_date", DataType::Date32, true),
        Field::new("spend", DataType::Float64, true),
    ]));
    let csv = visitor_csv(ROWS);
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(std::io::Cursor::new(csv.into_bytes()))
        .unwrap();
    let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
    let spec = |name: &str, data_type, tags| ColumnSpec {
        name: name.into(),
        data_type,
        tags,
    };
    use tidegate_policy::DataType as T;
    let columns = vec![
        spec(
            "resident_id",
            T::Utf8,
            vec![ColumnTag::Pii(SensitiveType::ResidentId), ColumnTag::Entity],
        ),
        spec("spot", T::Utf8, vec![ColumnTag::Dimension]),
        spec("visit_date", T::Date32, vec![ColumnTag::Quasi]),
        spec("spend", T::Float64, vec![ColumnTag::Sensitive]),
    ];
    tidegate_runtime::gated_table("visits", columns, Some("resident_id"), batches).unwrap()
}

#[test]
fn a_local_run_with_the_scenarios_rules_gives_the_platforms_gate_verdict_on_the_same_data() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (sql, with_module) in [
        (DEMO_SQL, true),
        (
            "SELECT spot, count(*) AS n, sum(spend) AS s FROM visits GROUP BY spot",
            false,
        ),
        (
            "SELECT spot, count(*) AS n, avg(spend) AS a FROM visits WHERE spend > 250 GROUP BY spot",
            false,
        ),
    ] {
        // A new platform for each query, whose gate remembers no earlier release (a local run
        // knows none).
        let (env, sid, hash) = active_scenario();
        let scenario: ScenarioView = serde_json::from_value(show_scenario(&env, &sid)).unwrap();
        let local = LocalScenario {
            level: Level::L2,
            k: scenario.k,
            rules: scenario.export_rules.clone(),
            epsilon: None,
        };
        let modules = if with_module {
            vec![hash.clone()]
        } else {
            vec![]
        };
        let platform = export_of(&env, &sid, sql, &modules);
        let sandbox = Arc::new(Sandbox::new().unwrap());
        let meter = Arc::new(JobMeter::new(GuestLimits::default()));
        let mut udfs = tidegate_runtime::Functions::default();
        if with_module {
            let module = sandbox.load(VISITOR_UDF_WASM).unwrap();
            udfs.extend(sandbox.udfs(&module, &meter));
        }
        udfs.scalars
            .extend(tidegate_runtime::desensitization_udfs());
        let run = rt
            .block_on(tidegate_runtime::run_as_scenario(
                sql,
                &[visits_as_granted()],
                udfs,
                &local,
            ))
            .unwrap();
        let report = serde_json::to_value(&run.gate.report).unwrap();
        let theirs = &platform["gate_report"];
        for count in [
            "threshold_k",
            "groups_total",
            "groups_suppressed",
            "rows_released",
        ] {
            assert_eq!(report[count], theirs[count], "{sql}: {count}");
        }
        let checks = |r: &serde_json::Value| -> Vec<(String, bool, bool, String)> {
            r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap().to_string();
                    // Provenance names the platform's job; the local run says it is local. A
                    // float's last digit may differ with the order of a sum's additions.
                    let detail = if name == "provenance" || name == "size" {
                        String::new()
                    } else {
                        c["detail"].as_str().unwrap().to_string()
                    };
                    (
                        name,
                        c["passed"].as_bool().unwrap(),
                        c["flagged"].as_bool().unwrap_or(false),
                        detail,
                    )
                })
                .collect()
        };
        assert_eq!(checks(&report), checks(theirs), "{sql}");
        // The same release (its rows in the engine's order, which a query without ORDER BY
        // does not fix).
        let rows = |csv: &str| {
            let mut lines: Vec<Vec<String>> = csv
                .lines()
                .map(|l| {
                    l.split(',')
                        .map(|v| match v.parse::<f64>() {
                            Ok(x) if v.contains('.') => format!("{x:.6e}"),
                            _ => v.to_string(),
                        })
                        .collect()
                })
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            rows(&String::from_utf8(run.gate.csv.clone()).unwrap()),
            rows(platform["preview"].as_str().unwrap()),
            "{sql}: the same release"
        );
    }
}

#[test]
fn dev_run_runs_as_a_scenarios_job_over_its_mocks_and_local_files_with_their_tags() {
    let (env, sid, _) = active_scenario();
    let me = &env.world.scientist;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("visitor.wasm");
    std::fs::write(&module, VISITOR_UDF_WASM).unwrap();
    let remote = ["--url", me.url(), "--token", me.token().unwrap()];
    let mut over_mocks = vec![
        "dev",
        "run",
        "--scenario",
        &sid,
        "--module",
        module.to_str().unwrap(),
        "--sql",
        DEMO_SQL,
        "--mock-rows",
        "3000",
    ];
    over_mocks.extend(remote);
    assert_eq!(tidegate(&over_mocks), ExitCode::SUCCESS);
    // Over L2 data a query the gate cannot check is refused locally as on the platform.
    let mut raw = over_mocks.clone();
    let at = raw.iter().position(|a| *a == DEMO_SQL).unwrap();
    raw[at] = "SELECT resident_id, spend FROM visits";
    assert_eq!(tidegate(&raw), ExitCode::FAILURE);

    // Local files with a tag file.
    let csv = dir.path().join("visits.csv");
    std::fs::write(&csv, visitor_csv(600)).unwrap();
    let tags = dir.path().join("tags.json");
    std::fs::write(
        &tags,
        r#"{"level": "L2", "k": 10, "tables": {"visits": {
            "resident_id": ["pii:resident_id", "entity"], "spot": ["dimension"]}}}"#,
    )
    .unwrap();
    let table = format!("visits={}", csv.display());
    let local = [
        "dev",
        "run",
        "--table",
        &table,
        "--tags",
        tags.to_str().unwrap(),
        "--sql",
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
    ];
    assert_eq!(tidegate(&local), ExitCode::SUCCESS);
    let mut raw = local.to_vec();
    raw[7] = "SELECT resident_id FROM visits";
    assert_eq!(tidegate(&raw), ExitCode::FAILURE);
    // A private scenario's rules: the release's noise is drawn as the platform would.
    std::fs::write(
        &tags,
        r#"{"level": "L2", "export_rules": {"privacy_budget": 2.0, "contribution_bound": 500},
            "tables": {"visits": {"resident_id": ["pii:resident_id", "entity"], "spot": ["dimension"]}}}"#,
    )
    .unwrap();
    let mut private = local.to_vec();
    private.extend(["--epsilon", "0.5"]);
    assert_eq!(tidegate(&private), ExitCode::SUCCESS);
    let at = private.len() - 1;
    private[at] = "0";
    assert_eq!(tidegate(&private), ExitCode::FAILURE, "epsilon is positive");
    // A tag file naming a column the file lacks fails before anything runs.
    std::fs::write(
        &tags,
        r#"{"level": "L2", "tables": {"visits": {"nobody": ["entity"]}}}"#,
    )
    .unwrap();
    assert_eq!(tidegate(&local), ExitCode::FAILURE);
}
