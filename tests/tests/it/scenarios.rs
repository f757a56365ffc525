//! R-SCENARIO through the API: the lifecycle from draft to exit, the approvals each step needs,
//! the export rules a scenario carries, and how its grants may change.

use serde_json::{Value, json};
use tidegate_policy::ExportRules;
use tidegate_runtime::PolicyScenario;
use tidegate_server::{Client, visitor_csv};

use crate::common;
use crate::common::{
    Env, ROWS, active_scenario, export_of, full_report, gate_check, job, preview_of, setup,
};

/// The scientist's application over the visits, with `extra` fields merged in.
fn apply(env: &Env, extra: Value) -> Value {
    let today = time::OffsetDateTime::now_utc().date();
    let mut request = json!({
        "name": "Spot footfall",
        "key_area": "culture and tourism",
        "purpose": "visits per scenic spot",
        "public_interest": true,
        "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot", "visit_date", "spend"] }],
        "term_start": (today - time::Duration::days(1)).to_string(),
        "term_end": (today + time::Duration::days(30)).to_string(),
    });
    for (k, v) in extra.as_object().unwrap() {
        request[k] = v.clone();
    }
    env.world.scientist.apply_scenario(&request).unwrap()
}

fn sid(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn show(client: &Client, sid: &str) -> Value {
    client
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap()
}

fn refusal<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    r.unwrap_err().to_string()
}

/// A provider principal of a new org, trained, with its own client.
fn org_with_provider(env: &Env, org: &str) -> (String, Client) {
    let admin = &env.world.admin;
    let org_id = sid(&admin.create_org(org, "provider").unwrap());
    let p = admin
        .create_principal(&format!("{org}.approver"), &org_id, &["provider"])
        .unwrap();
    admin
        .record_training(&sid(&p), "public data security training 2026")
        .unwrap();
    (org_id, admin.as_token(p["token"].as_str().unwrap()))
}

#[test]
fn a_draft_asks_nobody_until_its_org_submits_it() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let draft = apply(&env, json!({ "draft": true }));
    let id = sid(&draft);
    assert_eq!(draft["state"], "draft");
    assert_eq!(draft["missing_approvals"], json!([]));

    let early = refusal(env.world.admin.approve_scenario(&id));
    assert!(
        early.contains("the scenario is draft, not pending approvals"),
        "{early}"
    );
    let run = refusal(env.world.scientist.submit_job(
        &id,
        "SELECT spot, count(*) FROM visits GROUP BY spot",
        &[],
    ));
    assert!(run.contains("the scenario is draft"), "{run}");
    let by_admin = refusal(env.world.admin.change_scenario(&id, "submit"));
    assert!(by_admin.contains("(404)"), "{by_admin}");

    let submitted = env.world.scientist.change_scenario(&id, "submit").unwrap();
    assert_eq!(submitted["state"], "pending_approvals");
    assert_eq!(
        submitted["missing_approvals"],
        json!([
            "an admin",
            format!("the org {} (provider of visits)", env.world.provider_org)
        ])
    );
    let again = refusal(env.world.scientist.change_scenario(&id, "submit"));
    assert!(again.contains("only a draft is submitted"), "{again}");
    env.world.admin.approve_scenario(&id).unwrap();
    let active = env.world.provider.approve_scenario(&id).unwrap();
    assert_eq!(active["state"], "active");
}

#[test]
fn data_returned_by_the_province_needs_the_province_to_approve_each_scenario() {
    let env = setup(true);
    let (province, province_client) = org_with_provider(&env, "province-data-office");
    let imported = env
        .world
        .provider
        .import_dataset(
            json!({
                "name": "visits", "level": "L2", "format": "csv",
                "approvers": ["province-data-office"],
                "columns": [
                    { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
                    { "name": "mobile", "data_type": "utf8", "tags": ["pii:mobile"] },
                    { "name": "spot", "data_type": "utf8", "tags": ["dimension"] },
                ],
            }),
            visitor_csv(ROWS).as_bytes(),
        )
        .unwrap();
    assert_eq!(imported["approvers"], json!([province]));

    let id = sid(&apply(&env, json!({})));
    env.world.admin.approve_scenario(&id).unwrap();
    let after_provider = env.world.provider.approve_scenario(&id).unwrap();
    assert_eq!(after_provider["state"], "pending_approvals");
    assert_eq!(
        after_provider["missing_approvals"],
        json!([format!("the org {province} (named approver of visits)")])
    );
    // A provider of an org the dataset does not name sees nothing to approve.
    let (_, stranger) = org_with_provider(&env, "water-bureau");
    let refused = refusal(stranger.approve_scenario(&id));
    assert!(refused.contains("(404)"), "{refused}");

    let active = province_client.approve_scenario(&id).unwrap();
    assert_eq!(active["state"], "active");
    assert_eq!(active["approvals"].as_array().unwrap().len(), 3);
    let twice = refusal(province_client.approve_scenario(&id));
    assert!(twice.contains("not pending approvals"), "{twice}");

    // Only a provider names further approvers, and only orgs that exist.
    let unknown = refusal(env.world.provider.import_dataset(
        json!({ "name": "clinics", "level": "L2", "format": "csv", "approvers": ["nobody"] }),
        b"a,b\n1,2\n",
    ));
    assert!(unknown.contains("org nobody"), "{unknown}");
}

#[test]
fn the_provider_moves_a_grant_to_its_newest_version_and_nobody_else_can() {
    let (env, id, _) = active_scenario();
    env.world.import_visits(&visitor_csv(ROWS * 2)).unwrap();
    let count = || {
        job(
            &env,
            &id,
            "SELECT spot, count(*) FROM visits GROUP BY spot",
            &[],
        )["resources"]["rows_scanned"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count(), ROWS as u64);

    let by_scientist = refusal(env.world.scientist.repin_grant(&id, "visits"));
    assert!(
        by_scientist.contains("lacks the provider role"),
        "{by_scientist}"
    );
    let moved = env.world.provider.repin_grant(&id, "visits").unwrap();
    assert_eq!(moved["grants"][0]["version"], 2);
    assert_eq!(count(), 2 * ROWS as u64);
    let again = refusal(env.world.provider.repin_grant(&id, "visits"));
    assert!(again.contains("already at version 2"), "{again}");

    let log = std::fs::read_to_string(env.data_dir().join(tidegate_runtime::AUDIT_FILE)).unwrap();
    assert!(
        log.contains("\"scenario.repin\""),
        "the move is in the audit log"
    );
}

#[test]
fn export_rules_are_checked_when_applying_and_enforced_by_the_gate() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let bad = refusal(env.world.scientist.apply_scenario(&json!({
        "name": "x", "key_area": "x", "purpose": "x",
        "grants": [{ "dataset": "visits", "columns": ["spot"] }],
        "term_start": today.to_string(), "term_end": today.to_string(),
        "export_rules": { "privacy_budget": -1.0 },
    })));
    assert!(
        bad.contains("the privacy budget (epsilon) must be a positive, finite number"),
        "{bad}"
    );

    let open = |rules: Value| {
        let id = sid(&apply(&env, json!({ "export_rules": rules })));
        env.world.admin.approve_scenario(&id).unwrap();
        env.world.provider.approve_scenario(&id).unwrap();
        id
    };
    let gated = |id: &str, sql: &str| export_of(&env, id, sql, &[]);
    let by_spot = "SELECT spot, count(*) AS visits FROM visits GROUP BY spot ORDER BY spot";

    // Masking: the spot names leave as stars, and the report says so.
    let masked = open(json!({ "masking": { "spot": "mask" } }));
    let export = gated(&masked, by_spot);
    assert_eq!(export["state"], "in_review", "{export}");
    assert_eq!(
        gate_check(&export, "desensitization"),
        (true, "`spot`: mask applied".to_string())
    );
    let preview = preview_of(&env, &export);
    assert!(preview.starts_with("spot,visits\n*"), "{preview}");
    assert!(!preview.contains("West Lake"), "{preview}");

    // Size: a scenario's own row limit is tighter than the platform's.
    let small = open(json!({ "max_rows": 1 }));
    let export = gated(&small, by_spot);
    assert_eq!(export["state"], "rejected");
    let (passed, detail) = gate_check(&export, "size");
    assert!(
        !passed && detail.contains("the limits are 1 rows"),
        "{detail}"
    );
}

#[test]
fn a_private_scenario_releases_noised_counts_and_spends_its_budget_until_it_is_exhausted() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let sid = sid(&apply(
        &env,
        json!({ "export_rules": { "privacy_budget": 1.0, "max_groups_per_subject": 3 } }),
    ));
    env.world.admin.approve_scenario(&sid).unwrap();
    env.world.provider.approve_scenario(&sid).unwrap();
    let by_spot = "SELECT spot, count(*) AS visits FROM visits GROUP BY spot ORDER BY visits DESC";
    let spend = |sql: &str, epsilon: Option<f64>| {
        let j = job(&env, &sid, sql, &[]);
        assert_eq!(j["state"], "succeeded", "{j}");
        let id = j["id"].as_str().unwrap();
        let requested = match epsilon {
            Some(e) => env.world.scientist.request_export_spending(id, e),
            None => env.world.scientist.request_export(id),
        }
        .unwrap();
        full_report(&env, &requested)
    };
    let refused_for = |export: &Value| {
        assert_eq!(export["state"], "rejected", "{export}");
        let (passed, detail) = gate_check(export, "privacy budget");
        assert!(!passed);
        detail
    };

    let unpriced = spend(by_spot, None);
    assert!(refused_for(&unpriced).contains("must say how much epsilon to spend (1 of 1 left)"));

    let first = spend(by_spot, Some(0.6));
    assert_eq!(first["state"], "in_review", "{first}");
    let (_, detail) = gate_check(&first, "privacy budget");
    assert!(
        detail.starts_with("epsilon 0.6 spent, 0.4 of 1 left after this release; discrete Laplace noise on 1 column(s): visits scale 10.000"),
        "{detail}"
    );
    // Released in group-key order, not by the exact counts the query sorted on.
    let preview = preview_of(&env, &first);
    let spots: Vec<&str> = preview
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut sorted = spots.clone();
    sorted.sort();
    assert_eq!(spots, sorted, "{preview}");

    let too_much = spend(by_spot, Some(0.6));
    assert!(
        refused_for(&too_much)
            .contains("the privacy budget is exhausted: 0.6 asked, 0.4 of 1 left")
    );
    // A refused request spent nothing: the rest is still there, once.
    let last = spend(by_spot, Some(0.4));
    assert_eq!(last["state"], "in_review", "{last}");
    let after = spend(by_spot, Some(0.01));
    assert!(refused_for(&after).contains("0 of 1 left"));

    // What cannot be noised is refused, whatever the budget.
    let more = sid_with_budget(&env);
    let cases = [
        (
            "SELECT spot, count(*) AS n FROM visits GROUP BY spot ORDER BY n DESC LIMIT 3",
            "a limit over the aggregate",
        ),
        (
            "SELECT spot, count(*) AS n FROM visits GROUP BY spot HAVING count(*) > 100",
            "a filter over the aggregate",
        ),
        (
            "SELECT spot, avg(spend) AS a FROM visits GROUP BY spot",
            "the avg aggregate cannot be noised",
        ),
        (
            "SELECT spot, sum(spend) AS s FROM visits GROUP BY spot",
            "only with a contribution bound",
        ),
        (
            "SELECT spot, count(*) * 2 AS n FROM visits GROUP BY spot",
            "computed from the count aggregate",
        ),
    ];
    for (sql, reason) in cases {
        let j = job(&env, &more, sql, &[]);
        let export = full_report(
            &env,
            &env.world
                .scientist
                .request_export_spending(j["id"].as_str().unwrap(), 0.1)
                .unwrap(),
        );
        assert!(refused_for(&export).contains(reason), "{sql}: {export}");
    }

    // The spending is in the audit log.
    let log = std::fs::read_to_string(env.data_dir().join(tidegate_runtime::AUDIT_FILE)).unwrap();
    assert!(log.contains("\"epsilon\":0.6"), "the spend is audited");
}

/// Another active scenario over the visits with a privacy budget of 10 and no sum bound (the
/// provider raises the dataset's budget for it).
fn sid_with_budget(env: &Env) -> String {
    env.world
        .provider
        .set_dataset_budget("visits", 100.0, 100.0)
        .unwrap();
    let id = sid(&apply(
        env,
        json!({ "export_rules": { "privacy_budget": 10.0 } }),
    ));
    env.world.admin.approve_scenario(&id).unwrap();
    env.world.provider.approve_scenario(&id).unwrap();
    id
}

#[test]
fn a_private_sum_is_clamped_per_subject_before_the_noise() {
    let env = setup(true);
    // Forty visitors spend 1.00 each at West Lake; one spends a fortune there.
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    csv.push_str("big,13800000000,West Lake,2026-05-01,1000000.00\n");
    env.world.import_visits(&csv).unwrap();
    env.world
        .provider
        .set_dataset_budget("visits", 1e9, 1e9)
        .unwrap();
    let sid = sid(&apply(
        &env,
        json!({ "export_rules": { "privacy_budget": 1e9, "contribution_bound": 5.0 } }),
    ));
    env.world.admin.approve_scenario(&sid).unwrap();
    env.world.provider.approve_scenario(&sid).unwrap();
    let j = job(
        &env,
        &sid,
        "SELECT spot, sum(spend) AS total FROM visits GROUP BY spot",
        &[],
    );
    // So much epsilon that the noise is negligible: what is left is the clamped sum.
    let export = env
        .world
        .scientist
        .request_export_spending(j["id"].as_str().unwrap(), 1e8)
        .unwrap();
    assert_eq!(export["state"], "in_review", "{export}");
    let preview = preview_of(&env, &export);
    let total: f64 = preview
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (total - 45.0).abs() < 0.01,
        "40 x 1.00 plus one fortune clamped to 5: {preview}"
    );
}

#[test]
fn a_policy_document_narrows_a_grant_and_cannot_widen_one() {
    let (env, id, _) = active_scenario();
    let edit = |f: &dyn Fn(&mut tidegate_runtime::GrantRequest, &mut PolicyScenario)| {
        let mut doc = env.world.admin.export_policy().unwrap();
        let s = doc.scenarios.iter_mut().find(|s| s.id == id).unwrap();
        let mut grant = s.grants.as_ref().unwrap()[0].clone();
        assert_eq!(grant.version, Some(1), "{s:?}");
        f(&mut grant, s);
        s.grants.as_mut().unwrap()[0] = grant;
        doc
    };
    let wider = edit(&|g, _| g.columns.push("mobile".into()));
    let refused = refusal(env.world.admin.apply_policy(&wider, false));
    assert!(
        refused.contains("column mobile of")
            && refused.contains("widening a grant needs a new application"),
        "{refused}"
    );
    let moved = edit(&|g, _| g.version = Some(7));
    let refused = refusal(env.world.admin.apply_policy(&moved, false));
    assert!(refused.contains("moves only by its provider"), "{refused}");

    let narrower = edit(&|g, s| {
        g.columns = vec!["resident_id".into(), "spot".into()];
        s.export_rules = Some(ExportRules {
            max_rows: Some(50),
            ..ExportRules::default()
        });
    });
    let applied = env.world.admin.apply_policy(&narrower, false).unwrap();
    assert_eq!(applied.changes.len(), 2, "{applied:?}");
    let now = show(&env.world.scientist, &id);
    assert_eq!(now["grants"][0]["columns"], json!(["resident_id", "spot"]));
    assert_eq!(now["export_rules"], json!({ "max_rows": 50 }));
    let gone = job(
        &env,
        &id,
        "SELECT spot, sum(spend) FROM visits GROUP BY spot",
        &[],
    );
    assert_eq!(gone["state"], "failed");
    assert!(
        gone["error"]
            .as_str()
            .unwrap()
            .contains("No field named spend"),
        "{gone}"
    );
}

#[test]
fn an_exited_orgs_scenarios_end_as_exited_and_cannot_be_resumed() {
    let (env, id, _) = active_scenario();
    env.world
        .admin
        .exit_org(&env.world.operator_org, "authorization ended")
        .unwrap();
    let s = show(&env.world.admin, &id);
    assert_eq!(s["state"], "exited");
    let resumed = refusal(env.world.admin.change_scenario(&id, "resume"));
    assert!(
        resumed.contains("a scenario that is exited cannot be resumed"),
        "{resumed}"
    );
    let revoked = refusal(env.world.admin.change_scenario(&id, "revoke"));
    assert!(
        revoked.contains("the scenario is already exited"),
        "{revoked}"
    );
}

#[test]
fn a_pseudonymized_column_leaves_as_stable_keyed_pseudonyms_and_jobs_can_make_the_same() {
    let env = setup(true);
    let csv = visitor_csv(ROWS);
    env.world.import_visits_at(&csv, "L1").unwrap();
    let sid = sid(&apply(
        &env,
        json!({ "export_rules": { "masking": { "resident_id": "pseudonymize" } } }),
    ));
    env.world.admin.approve_scenario(&sid).unwrap();
    env.world.provider.approve_scenario(&sid).unwrap();
    let preview = |sql: &str| {
        let e = export_of(&env, &sid, sql, &[]);
        assert_eq!(e["state"], "in_review", "{e}");
        preview_of(&env, &e)
    };
    let released =
        preview("SELECT resident_id, spot FROM visits ORDER BY resident_id, spot LIMIT 5");
    let first_id = csv.lines().nth(1).unwrap().split(',').next().unwrap();
    assert!(!released.contains(first_id), "{released}");
    let pseudonyms: Vec<&str> = released
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(pseudonyms.len(), 5);
    assert!(
        pseudonyms.iter().all(|p| p.starts_with("ps_")),
        "{released}"
    );
    // The job's own function gives the same pseudonyms (the scenario's key).
    let computed = preview(
        "SELECT tg_pseudonym(resident_id) AS who, spot FROM visits ORDER BY resident_id, spot LIMIT 5",
    );
    let again: Vec<&str> = computed
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(pseudonyms, again);
}

#[test]
fn a_release_over_newer_data_that_differs_by_a_few_subjects_has_that_group_suppressed() {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!("o{i:03},13800000000,Old Street,2026-05-02,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!("q{i:03},13800000000,Quiet Pond,2026-05-03,1.00\n"));
    }
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    let by_spot = "SELECT spot, count(*) AS visits FROM visits GROUP BY spot";
    let first = export_of(&env, &sid, by_spot, &[]);
    assert_eq!(first["state"], "in_review", "{first}");
    // Next month's data: two new visitors at West Lake. The same table over it would give
    // their visits by subtraction: their group goes (a margin partner with it), whatever
    // version each release read; the spots whose rows did not change are released again.
    csv.push_str("n001,13800000000,West Lake,2026-06-01,1.00\n");
    csv.push_str("n002,13800000000,West Lake,2026-06-02,1.00\n");
    env.world.import_visits(&csv).unwrap();
    env.world.provider.repin_grant(&sid, "visits").unwrap();
    let second = export_of(&env, &sid, by_spot, &[]);
    assert_eq!(second["state"], "in_review", "{second}");
    let (passed, detail) = common::gate_check(&second, "differencing");
    assert!(passed, "{detail}");
    assert!(
        detail.contains(&format!(
            "suppressed: 1 because of {}",
            first["id"].as_str().unwrap()
        )),
        "{detail}"
    );
    let preview = common::preview_of(&env, &second);
    assert!(!preview.contains("West Lake"), "{preview}");
    // Ten newcomers are no longer a few: released.
    for i in 3..13 {
        csv.push_str(&format!("n{i:03},13800000000,West Lake,2026-06-03,1.00\n"));
    }
    env.world.import_visits(&csv).unwrap();
    env.world.provider.repin_grant(&sid, "visits").unwrap();
    let third = export_of(&env, &sid, by_spot, &[]);
    let preview = common::preview_of(&env, &third);
    assert!(preview.contains("West Lake,52"), "{preview}");
}

/// An active private scenario of the world's unit over the visits.
fn private_scenario(env: &Env, rules: Value) -> String {
    let id = sid(&apply(env, json!({ "export_rules": rules })));
    env.world.admin.approve_scenario(&id).unwrap();
    env.world.provider.approve_scenario(&id).unwrap();
    id
}

#[test]
fn every_column_showing_a_private_aggregate_shows_the_same_noised_value() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let sid = private_scenario(&env, json!({ "privacy_budget": 1.0 }));
    let j = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS a, count(*) AS b FROM visits GROUP BY spot",
        &[],
    );
    let e = full_report(
        &env,
        &env.world
            .scientist
            .request_export_spending(j["id"].as_str().unwrap(), 0.5)
            .unwrap(),
    );
    assert_eq!(e["state"], "in_review", "{e}");
    let (_, detail) = gate_check(&e, "privacy budget");
    assert!(detail.contains("on 1 column(s): a scale"), "{detail}");
    let preview = preview_of(&env, &e);
    assert!(preview.lines().count() > 2, "{preview}");
    for line in preview.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[1], cells[2], "{preview}");
    }
}

#[test]
fn values_that_are_not_numbers_never_reach_the_noise() {
    let env = setup(true);
    let mut csv = visitor_csv(ROWS);
    for (i, v) in ["NaN", "inf", "-inf"].iter().enumerate() {
        csv.push_str(&format!("odd{i},13800000000,West Lake,2026-05-01,{v}\n"));
    }
    env.world.import_visits(&csv).unwrap();
    let sid = private_scenario(
        &env,
        json!({ "privacy_budget": 1.0, "contribution_bound": 100.0 }),
    );
    let j = job(
        &env,
        &sid,
        "SELECT spot, sum(spend) AS total FROM visits GROUP BY spot",
        &[],
    );
    let e = env
        .world
        .scientist
        .request_export_spending(j["id"].as_str().unwrap(), 0.5)
        .unwrap();
    assert_eq!(e["state"], "in_review", "{e}");
    let preview = preview_of(&env, &e);
    let west = preview
        .lines()
        .find(|l| l.starts_with("West Lake"))
        .unwrap_or_else(|| panic!("{preview}"));
    let total: f64 = west.split(',').nth(1).unwrap().parse().unwrap();
    assert!(total.is_finite(), "{preview}");
    // Released on the grid of a bound of 100: multiples of 1/16.
    assert_eq!((total * 16.0).fract(), 0.0, "{total}");
}

#[test]
fn a_second_scenario_over_the_same_data_draws_on_the_same_budget() {
    let env = setup(true);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    // The provider's budget for the visits: 5 in all, 3 per org.
    env.world
        .provider
        .set_dataset_budget("visits", 5.0, 3.0)
        .unwrap();
    private_scenario(&env, json!({ "privacy_budget": 2.0 }));
    let second = sid(&apply(
        &env,
        json!({ "export_rules": { "privacy_budget": 2.0 } }),
    ));
    env.world.admin.approve_scenario(&second).unwrap();
    let refused = refusal(env.world.provider.approve_scenario(&second));
    assert!(
        refused.contains("the org has drawn epsilon 2 of its cap of 3 on dataset visits"),
        "{refused}"
    );
    assert_eq!(
        show(&env.world.scientist, &second)["state"],
        "pending_approvals"
    );
    // Within the cap it activates; the dataset shows what was drawn.
    let third = private_scenario(&env, json!({ "privacy_budget": 1.0 }));
    assert_eq!(show(&env.world.scientist, &third)["state"], "active");
    let datasets = env.world.provider.ok("GET", "/v1/datasets", None).unwrap();
    assert_eq!(datasets[0]["privacy_drawn"], 3.0, "{datasets}");
    // Nor can the provider lower the budget below what was drawn.
    let lowered = refusal(env.world.provider.set_dataset_budget("visits", 2.0, 1.0));
    assert!(lowered.contains("already drawn epsilon 3"), "{lowered}");
    // Nor can a policy document raise an active scenario's budget past its draw.
    let mut doc = env.world.admin.export_policy().unwrap();
    let s = doc.scenarios.iter_mut().find(|s| s.id == third).unwrap();
    s.export_rules.as_mut().unwrap().privacy_budget = Some(100.0);
    let raised = refusal(env.world.admin.apply_policy(&doc, false));
    assert!(
        raised.contains("apply for a new scenario to draw another"),
        "{raised}"
    );
    // Nor give one approved without a budget a budget it never drew, while it is suspended
    // (resuming draws nothing).
    let exact = sid(&apply(&env, json!({})));
    env.world.admin.approve_scenario(&exact).unwrap();
    env.world.provider.approve_scenario(&exact).unwrap();
    env.world.admin.change_scenario(&exact, "suspend").unwrap();
    let mut doc = env.world.admin.export_policy().unwrap();
    let s = doc.scenarios.iter_mut().find(|s| s.id == exact).unwrap();
    s.export_rules.as_mut().unwrap().privacy_budget = Some(1.0);
    let given = refusal(env.world.admin.apply_policy(&doc, false));
    assert!(
        given.contains("apply for a new scenario to draw another"),
        "{given}"
    );
}
