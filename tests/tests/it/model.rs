//! A model test: random sequences of actions (apply, possibly as a draft, submit a draft,
//! approve, suspend, resume, revoke, expire, narrow a grant by a policy document, upload, approve a
//! module, submit a job) against the real platform, checking after every job that it read
//! only columns of an active grant of its own org, with modules approved for their exact hash.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use proptest::prelude::*;

use crate::common::constant_module;
use tidegate_policy::{Level, Principal, Role};
use tidegate_runtime::{
    ColumnInput, GrantRequest, ImportRequest, JobRequest, Platform, ScenarioRequest,
};

const COLUMNS: [&str; 3] = ["spot", "spend", "mobile"];

#[derive(Debug, Clone)]
enum Action {
    Apply {
        unit: usize,
        columns: Vec<usize>,
        draft: bool,
    },
    SubmitDraft(usize),
    /// A policy document ends the term yesterday.
    Expire(usize),
    Narrow {
        scenario: usize,
        drop: usize,
    },
    ApproveAsAdmin(usize),
    ApproveAsProvider(usize),
    Suspend(usize),
    Resume(usize),
    Revoke(usize),
    Upload {
        unit: usize,
        scenario: usize,
        module: usize,
    },
    ApproveModule {
        scenario: usize,
        module: usize,
    },
    Submit {
        unit: usize,
        scenario: usize,
        column: usize,
        module: Option<usize>,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (
            0..2usize,
            proptest::collection::vec(0..3usize, 1..3),
            any::<bool>()
        )
            .prop_map(|(unit, columns, draft)| Action::Apply {
                unit,
                columns,
                draft
            }),
        (0..4usize).prop_map(Action::SubmitDraft),
        (0..4usize).prop_map(Action::Expire),
        (0..4usize, 0..3usize).prop_map(|(scenario, drop)| Action::Narrow { scenario, drop }),
        (0..4usize).prop_map(Action::ApproveAsAdmin),
        (0..4usize).prop_map(Action::ApproveAsProvider),
        (0..4usize).prop_map(Action::Suspend),
        (0..4usize).prop_map(Action::Resume),
        (0..4usize).prop_map(Action::Revoke),
        (0..2usize, 0..4usize, 0..2usize).prop_map(|(unit, scenario, module)| Action::Upload {
            unit,
            scenario,
            module
        }),
        (0..4usize, 0..2usize)
            .prop_map(|(scenario, module)| Action::ApproveModule { scenario, module }),
        (
            0..2usize,
            0..4usize,
            0..3usize,
            proptest::option::of(0..2usize)
        )
            .prop_map(|(unit, scenario, column, module)| Action::Submit {
                unit,
                scenario,
                column,
                module
            }),
    ]
}

struct World {
    _dir: tempfile::TempDir,
    platform: Arc<Platform>,
    admin: Principal,
    provider: Principal,
    reviewer: Principal,
    units: Vec<Principal>,
    modules: Vec<Vec<u8>>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (platform, token) = Platform::init(
        &dir.path().join("data"),
        &dir.path().join("master.key"),
        "admin",
    )
    .unwrap();
    let admin = platform.authenticate(&token).unwrap();
    let make = |org: &str, kind: &str, role: Role| {
        let org = platform.create_org(&admin, org, kind).unwrap();
        let p = platform
            .create_principal(&admin, "p", &org.id, &[role])
            .unwrap();
        platform.record_training(&admin, &p.id, "t").unwrap();
        platform.authenticate(p.token.as_deref().unwrap()).unwrap()
    };
    let provider = make("bureau", "provider", Role::Provider);
    let reviewer = make("office", "authority", Role::Reviewer);
    let units = vec![
        make("unit-a", "operator", Role::Scientist),
        make("unit-b", "operator", Role::Scientist),
    ];
    let csv = "id,spot,spend,mobile\na,x,1.0,13812345678\nb,y,2.0,13912345678\n";
    platform
        .import_dataset(
            &provider,
            ImportRequest {
                name: "visits".into(),
                level: Level::L2,
                format: "csv".into(),
                columns: vec![ColumnInput {
                    name: "id".into(),
                    data_type: None,
                    tags: vec![tidegate_policy::ColumnTag::Entity],
                    mock: None,
                }],
                approvers: vec![],
                data_base64: base64::engine::general_purpose::STANDARD.encode(csv),
                quality_rules: None,
            },
        )
        .unwrap();
    World {
        _dir: dir,
        platform: Arc::new(platform),
        admin,
        provider,
        reviewer,
        units,
        modules: vec![constant_module(1), constant_module(2)],
    }
}

/// Runs the actions and checks the invariants after every successful job; returns how many
/// jobs succeeded.
fn run(actions: Vec<Action>) -> Result<usize, TestCaseError> {
    let mut succeeded = 0;
    {
        let w = world();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let today = time::OffsetDateTime::now_utc().date();
        // The model: per scenario, its owner, its granted columns, its approved module hashes.
        let mut scenarios: Vec<(String, usize, BTreeSet<String>)> = Vec::new();
        let mut approved: BTreeSet<(String, String)> = BTreeSet::new();
        let hashes: Vec<String> = w
            .modules
            .iter()
            .map(|m| tidegate_runtime::sha256_hex(m))
            .collect();
        for a in actions {
            let pick = |i: usize| scenarios.get(i % scenarios.len().max(1)).cloned();
            match a {
                Action::Apply {
                    unit,
                    columns,
                    draft,
                } => {
                    let cols: BTreeSet<String> =
                        columns.iter().map(|c| COLUMNS[*c].to_string()).collect();
                    let req = ScenarioRequest {
                        name: "s".into(),
                        key_area: "other".into(),
                        purpose: "p".into(),
                        public_interest: true,
                        grants: vec![GrantRequest {
                            dataset: "visits".into(),
                            columns: cols.iter().cloned().collect(),
                            version: None,
                        }],
                        term_start: (today - time::Duration::days(5)).to_string(),
                        term_end: (today + time::Duration::days(10)).to_string(),
                        k: None,
                        planned_products: vec![],
                        export_rules: Default::default(),
                        draft,
                    };
                    if let Ok(s) = w.platform.apply_scenario(&w.units[unit], req) {
                        scenarios.push((s.id, unit, cols));
                    }
                }
                Action::SubmitDraft(i) => {
                    if let Some(s) = pick(i) {
                        let _ = w.platform.submit_scenario(&w.units[s.1], &s.0);
                    }
                }
                Action::Expire(i) => {
                    if let Some(s) = pick(i) {
                        let mut doc = w.platform.export_policy(&w.admin).unwrap();
                        for entry in &mut doc.scenarios {
                            if entry.id == s.0 {
                                entry.term_end =
                                    Some((today - time::Duration::days(1)).to_string());
                            }
                        }
                        let _ = w.platform.apply_policy(&w.admin, &doc, false);
                    }
                }
                Action::Narrow { scenario, drop } => {
                    if scenarios.is_empty() {
                        continue;
                    }
                    let at = scenario % scenarios.len();
                    let id = scenarios[at].0.clone();
                    let mut doc = w.platform.export_policy(&w.admin).unwrap();
                    let entry = doc.scenarios.iter_mut().find(|s| s.id == id).unwrap();
                    let columns = &mut entry.grants.as_mut().unwrap()[0].columns;
                    columns.retain(|c| c != COLUMNS[drop]);
                    if let Ok(applied) = w.platform.apply_policy(&w.admin, &doc, false)
                        && !applied.changes.is_empty()
                    {
                        scenarios[at].2.remove(COLUMNS[drop]);
                    }
                }
                Action::ApproveAsAdmin(i) => {
                    if let Some(s) = pick(i) {
                        let _ = w.platform.approve_scenario(&w.admin, &s.0);
                    }
                }
                Action::ApproveAsProvider(i) => {
                    if let Some(s) = pick(i) {
                        let _ = w.platform.approve_scenario(&w.provider, &s.0);
                    }
                }
                Action::Suspend(i) => {
                    if let Some(s) = pick(i) {
                        let _ = w.platform.change_scenario(&w.admin, &s.0, "suspend");
                    }
                }
                Action::Resume(i) => {
                    if let Some(s) = pick(i) {
                        let _ = w.platform.change_scenario(&w.admin, &s.0, "resume");
                    }
                }
                Action::Revoke(i) => {
                    if let Some(s) = pick(i) {
                        let _ = w.platform.change_scenario(&w.admin, &s.0, "revoke");
                    }
                }
                Action::Upload {
                    unit,
                    scenario,
                    module,
                } => {
                    if let Some(s) = pick(scenario) {
                        let _ = w
                            .platform
                            .upload_module(&w.units[unit], &s.0, &w.modules[module]);
                    }
                }
                Action::ApproveModule { scenario, module } => {
                    if let Some(s) = pick(scenario)
                        && w.platform
                            .approve_module(
                                &w.reviewer,
                                &s.0,
                                &hashes[module],
                                "returns a constant",
                            )
                            .is_ok()
                    {
                        approved.insert((s.0.clone(), hashes[module].clone()));
                    }
                }
                Action::Submit {
                    unit,
                    scenario,
                    column,
                    module,
                } => {
                    if let Some(s) = pick(scenario) {
                        let col = COLUMNS[column];
                        let sql = match module {
                            Some(_) => {
                                format!("SELECT count({col}) AS n, count(f(1)) AS m FROM visits")
                            }
                            None => format!("SELECT count({col}) AS n FROM visits"),
                        };
                        let modules: Vec<String> =
                            module.map(|m| hashes[m].clone()).into_iter().collect();
                        let job = rt.block_on(w.platform.submit_job(
                            &w.units[unit],
                            JobRequest {
                                scenario: s.0.clone(),
                                sql,
                                modules: modules.clone(),
                            },
                        ));
                        if let Ok(job) = job
                            && job.state == tidegate_policy::JobState::Succeeded
                        {
                            let state = w.platform.get_scenario(&w.admin, &s.0).unwrap().state;
                            prop_assert_eq!(
                                state,
                                tidegate_policy::ScenarioState::Active,
                                "a job ran in a scenario that is not active"
                            );
                            prop_assert_eq!(unit, s.1, "a job ran in another org's scenario");
                            prop_assert!(
                                s.2.contains(col),
                                "a job read {} outside the grant {:?}",
                                col,
                                s.2
                            );
                            for m in &modules {
                                prop_assert!(
                                    approved.contains(&(s.0.clone(), m.clone())),
                                    "module {} ran without approval",
                                    m
                                );
                            }
                            succeeded += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(succeeded)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn no_job_reads_outside_an_active_grant_of_its_org_or_runs_an_unapproved_module(
        actions in proptest::collection::vec(action(), 1..25)
    ) {
        run(actions)?;
    }
}

#[test]
fn the_model_can_reach_a_successful_job() {
    let actions = vec![
        Action::Apply {
            unit: 0,
            columns: vec![0, 1],
            draft: true,
        },
        Action::SubmitDraft(0),
        Action::ApproveAsAdmin(0),
        Action::ApproveAsProvider(0),
        Action::Upload {
            unit: 0,
            scenario: 0,
            module: 0,
        },
        Action::ApproveModule {
            scenario: 0,
            module: 0,
        },
        Action::Submit {
            unit: 0,
            scenario: 0,
            column: 0,
            module: Some(0),
        },
        // Refused: the column is not granted; another unit; an unapproved module.
        Action::Submit {
            unit: 0,
            scenario: 0,
            column: 2,
            module: None,
        },
        Action::Submit {
            unit: 1,
            scenario: 0,
            column: 0,
            module: None,
        },
        Action::Submit {
            unit: 0,
            scenario: 0,
            column: 0,
            module: Some(1),
        },
        // Granted, then narrowed away by a policy document.
        Action::Submit {
            unit: 0,
            scenario: 0,
            column: 1,
            module: None,
        },
        Action::Narrow {
            scenario: 0,
            drop: 1,
        },
        Action::Submit {
            unit: 0,
            scenario: 0,
            column: 1,
            module: None,
        },
        // Once the term is over, nothing runs.
        Action::Expire(0),
        Action::Submit {
            unit: 0,
            scenario: 0,
            column: 0,
            module: None,
        },
    ];
    assert_eq!(run(actions).unwrap(), 2);
}
