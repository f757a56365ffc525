//! The API's promises kept at its edge, through a real server: freezes that freeze, roles
//! that separate, orgs that stay apart, tokens that close, bodies that cannot sink the server,
//! one error format, bundles that are exactly what they list.

use std::io::Write;

use serde_json::{Value, json};
use tidegate_server::Client;

use crate::common;
use crate::common::{
    DEMO_SQL, active_scenario, is_frozen_refusal, job, json_of, outsider, raw, refusal,
    scenario_request, setup,
};

/// A second scenario application by the scientist, pending approvals.
fn apply(client: &Client) -> anyhow::Result<Value> {
    client.apply_scenario(&scenario_request(false))
}

#[test]
fn a_frozen_org_acts_on_nothing_and_a_pending_scenario_of_it_never_activates() {
    let (env, sid, hash) = active_scenario();
    let w = &env.world;
    let done = job(&env, &sid, DEMO_SQL, std::slice::from_ref(&hash));
    let pending = apply(&w.scientist).unwrap();
    let pending_id = pending["id"].as_str().unwrap();
    w.admin.freeze_org(&w.operator_org, true).unwrap();
    for refused in [
        refusal(apply(&w.scientist)),
        refusal(
            w.scientist
                .submit_job(&sid, DEMO_SQL, std::slice::from_ref(&hash)),
        ),
        refusal(w.scientist.request_export(done["id"].as_str().unwrap())),
    ] {
        assert!(is_frozen_refusal(&refused), "{refused}");
    }
    // Nobody's approval activates a pending scenario of a frozen org.
    w.admin.approve_scenario(pending_id).unwrap_err();
    let refused = refusal(w.provider.approve_scenario(pending_id));
    assert!(refused.contains("frozen"), "{refused}");
    // The provider's org frozen: no import.
    w.admin.freeze_org(&w.provider_org, true).unwrap();
    let refused = refusal(w.import_visits(&tidegate_server::visitor_csv(10)));
    assert!(is_frozen_refusal(&refused), "{refused}");
    // The authority's own offices are never frozen.
    let refused = refusal(w.admin.freeze_org(&w.review_org, true));
    assert!(refused.contains("org of the authority"), "{refused}");
}

#[test]
fn unfreezing_after_two_freezes_restores_everything_the_freezes_suspended() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    w.admin.freeze_org(&w.operator_org, true).unwrap();
    w.admin.freeze_org(&w.operator_org, true).unwrap();
    w.admin.freeze_org(&w.operator_org, false).unwrap();
    let scenario = w
        .scientist
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    assert_eq!(scenario["state"], "active", "{scenario}");
}

#[test]
fn a_reviewer_outside_the_authority_neither_sees_nor_reviews_another_orgs_export() {
    let (env, sid, hash) = active_scenario();
    let w = &env.world;
    let (outsider, other, _) = outsider(w, "another-unit", "operator", &["reviewer"]);
    let other = other.as_str();
    let done = job(&env, &sid, DEMO_SQL, std::slice::from_ref(&hash));
    let export = w
        .scientist
        .request_export(done["id"].as_str().unwrap())
        .unwrap();
    let eid = export["id"].as_str().unwrap();
    // A competitor's reviewer reads nothing of it, the preview least of all.
    let seen = outsider
        .call("GET", &format!("/v1/exports/{eid}"), None)
        .unwrap();
    assert_eq!(seen.status, 404, "{:?}", seen.body);
    let refused = refusal(outsider.review_export(eid, "approve", "fine"));
    assert!(
        refused.contains("only reviewers of the authority"),
        "{refused}"
    );
    // The same reviewer, its org frozen: the freeze is the first thing said.
    w.admin.freeze_org(other, true).unwrap();
    let refused = refusal(outsider.review_export(eid, "approve", "fine"));
    assert!(is_frozen_refusal(&refused), "{refused}");
}

#[test]
fn roles_follow_the_kind_of_org_and_no_pair_of_duties_meets_in_one_principal() {
    let env = setup(true);
    let w = &env.world;
    for (org, roles, why) in [
        (&w.operator_org, vec!["admin"], "cannot hold the admin role"),
        (
            &w.provider_org,
            vec!["scientist"],
            "cannot hold the scientist role",
        ),
        (
            &w.operator_org,
            vec!["provider"],
            "cannot hold the provider role",
        ),
        (
            &w.review_org,
            vec!["admin", "auditor"],
            "cannot be both admin and auditor",
        ),
        (
            &w.operator_org,
            vec!["scientist", "auditor"],
            "cannot be both scientist and auditor",
        ),
        (
            &w.operator_org,
            vec!["scientist", "reviewer"],
            "cannot be both scientist and reviewer",
        ),
    ] {
        let refused = refusal(w.admin.create_principal("x", org, &roles));
        assert!(refused.contains(why), "{roles:?} in {org}: {refused}");
    }
}

#[test]
fn an_admin_cannot_record_their_own_training() {
    let env = setup(true);
    let w = &env.world;
    // An admin never applies (a scientist is never an admin); a provider who approves is
    // not the applicant either. The policy holds the rule for any pair all the same (see its
    // unit test). Here: an admin's own training.
    let second = w
        .admin
        .create_principal("second.admin", "data-authority", &["admin"])
        .unwrap();
    let second_id = second["id"].as_str().unwrap();
    let second_admin = w.admin.as_token(second["token"].as_str().unwrap());
    // Untrained, they can do nothing at all (S2); trained by another admin, they still
    // cannot renew their own training.
    let refused = refusal(second_admin.record_training(second_id, "self-taught"));
    assert!(
        refused.contains("no training record that holds today"),
        "{refused}"
    );
    w.admin.record_training(second_id, "training").unwrap();
    let refused = refusal(second_admin.record_training(second_id, "self-taught"));
    assert!(
        refused.contains("cannot record their own training"),
        "{refused}"
    );
}

#[test]
fn an_exited_org_gets_no_new_principals() {
    let env = setup(true);
    let w = &env.world;
    w.admin.exit_org(&w.operator_org, "term over").unwrap();
    let refused = refusal(
        w.admin
            .create_principal("late", &w.operator_org, &["scientist"]),
    );
    assert!(refused.contains("has exited"), "{refused}");
}

#[test]
fn another_orgs_social_data_is_never_listed() {
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(50)).unwrap();
    // The scientist's unit brings its own (social) data, pending an admin's approval.
    w.scientist
        .import_dataset(
            json!({
                "name": "unit_customers",
                "level": "L2",
                "format": "csv",
                "columns": [{ "name": "customer", "data_type": "utf8", "tags": ["entity"] }],
            }),
            b"customer,spend\nc1,1.0\nc2,2.0\n",
        )
        .unwrap();
    let names = |c: &Client| -> Vec<String> {
        c.ok("GET", "/v1/datasets", None)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&w.scientist).contains(&"unit_customers".to_string()));
    assert!(
        !names(&w.provider).contains(&"unit_customers".to_string()),
        "{:?}",
        names(&w.provider)
    );
    // A reviewer of another operating unit sees it no more than the provider does.
    let (outsider, _, _) = outsider(w, "another-unit", "operator", &["reviewer"]);
    assert_eq!(names(&outsider), vec!["visits".to_string()]);
    // The authority's auditor sees everything.
    assert!(names(&w.auditor).contains(&"unit_customers".to_string()));
    // Public data of another org is listed for the units that may apply for it, without its
    // row count, content hash or quality report; its provider and the overseers see them.
    let visits = |c: &Client| -> Value {
        c.ok("GET", "/v1/datasets", None)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "visits")
            .unwrap()
            .clone()
    };
    for hidden in ["rows", "content_hash", "quality"] {
        assert!(
            visits(&w.scientist).get(hidden).is_none(),
            "{hidden}: {}",
            visits(&w.scientist)
        );
        assert!(visits(&w.provider).get(hidden).is_some(), "{hidden}");
        assert!(visits(&w.auditor).get(hidden).is_some(), "{hidden}");
    }
}

#[test]
fn a_revoked_or_rotated_token_stops_at_once() {
    let env = setup(true);
    let w = &env.world;
    let old = w.scientist.clone();
    let rotated = w.scientist.rotate_token(&w.scientist_id).unwrap();
    let fresh = w.admin.as_token(rotated["token"].as_str().unwrap());
    assert_eq!(old.call("GET", "/v1/datasets", None).unwrap().status, 401);
    assert_eq!(fresh.call("GET", "/v1/datasets", None).unwrap().status, 200);
    // The admin revokes it: the rotated token stops too.
    w.admin.rotate_token(&w.scientist_id).unwrap();
    assert_eq!(fresh.call("GET", "/v1/datasets", None).unwrap().status, 401);
    // Someone else's token is not a scientist's to rotate.
    let refused = refusal(fresh.rotate_token(&w.reviewer_id));
    assert!(
        refused.contains("unauthenticated") || refused.contains("401"),
        "{refused}"
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn the_scheme_of_a_bearer_token_is_case_insensitive() {
    let env = setup(true);
    let token = env.world.scientist.token().unwrap().to_string();
    let answer = raw(
        env.world.admin.url(),
        format!("GET /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
        &|_| {},
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_body_over_the_routes_limit_or_without_a_token_is_never_read() {
    // It measures the process's memory: in a process of its own, with no other test beside it.
    if !common::in_a_process_of_its_own(
        "edge::a_body_over_the_routes_limit_or_without_a_token_is_never_read",
    ) {
        return;
    }
    let env = setup(true);
    let url = env.world.admin.url().to_string();
    let token = env.world.scientist.token().unwrap().to_string();
    // Declared too large: 413 at once, whatever the token.
    let answer = raw(
        &url,
        format!("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n").as_bytes(),
        &|_| {},
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""error":"too_large""#), "{answer}");
    // No token, 2 GB on the way: refused before the body is read, and the server holds none
    // of it.
    let before = rss_kib();
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let answer = raw(
        &url,
        b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        &|s| {
            let mut chunk = format!("{:x}\r\n", 1 << 20).into_bytes();
            chunk.extend(std::iter::repeat_n(b'a', 1 << 20));
            chunk.extend(b"\r\n");
            for _ in 0..2_048 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // The server closed the connection instead of reading: only what the sockets' buffers
    // hold got through (the test's process holds the sending side too, so the server's own
    // growth is bounded loosely here).
    let sent_mib = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent_mib < 64,
        "{sent_mib} MiB of the 2 GiB body went through"
    );
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 500, "the process grew by {grown_mib} MiB");
}

#[test]
fn a_refusal_reaches_a_client_that_sends_its_small_body_after_the_server_could_answer() {
    let env = setup(true);
    let url = env.world.admin.url().to_string();
    // No token; the 64 KiB body follows the headers after a pause in which the server has
    // decided, in two halves. Were the connection closed with the body unread, the first half
    // would reset it and the second would fail to send: a client that stops at a failed send
    // (as HTTP clients do) never reads the refusal.
    let body = vec![b'a'; 64 << 10];
    let sent = std::sync::atomic::AtomicBool::new(false);
    let answer = raw(
        &url,
        format!(
            "POST /v1/datasets/upload?name=x&level=L1&format=csv HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        &|s| {
            let pause = || std::thread::sleep(std::time::Duration::from_millis(300));
            pause();
            let (first, second) = body.split_at(body.len() / 2);
            let whole = s.write_all(first).is_ok() && {
                pause();
                s.write_all(second).is_ok()
            };
            sent.store(whole, std::sync::atomic::Ordering::Relaxed);
        },
    );
    assert!(
        sent.load(std::sync::atomic::Ordering::Relaxed),
        "the body could not be sent"
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
}

#[test]
fn every_malformed_request_is_answered_in_the_apis_error_format() {
    let env = setup(true);
    let w = &env.world;
    let token = w.scientist.token().unwrap().to_string();
    let url = w.admin.url().to_string();
    let send = |content_type: &str, body: &str| {
        raw(
            &url,
            format!(
                "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
            &|_| {},
        )
    };
    for (content_type, body, status, class) in [
        ("application/json", "{not json", "400", "bad_input"),
        ("application/json", r#"{"scenario": 5}"#, "422", "bad_input"),
        ("application/json", r#"{}"#, "422", "bad_input"),
        (
            "text/plain",
            r#"{"scenario":"s","sql":"SELECT 1","modules":[]}"#,
            "415",
            "bad_content_type",
        ),
    ] {
        let answer = send(content_type, body);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{body}: {answer}"
        );
        let v = json_of(&answer).unwrap_or_else(|| panic!("no JSON body: {answer}"));
        assert_eq!(v["error"], class, "{answer}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("the request's body was refused"),
            "{answer}"
        );
    }
    let bad_query = w
        .admin
        .call("GET", "/v1/meter/statement?org=x", None)
        .unwrap();
    assert_eq!(bad_query.body["error"], "bad_input", "{:?}", bad_query.body);
    let nowhere = w.admin.call("GET", "/v1/nowhere", None).unwrap();
    assert_eq!(
        (nowhere.status, nowhere.body["error"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn a_bundle_holding_anything_its_manifest_does_not_list_fails_verification() {
    let (env, sid, hash) = active_scenario();
    let w = &env.world;
    let done = job(&env, &sid, DEMO_SQL, std::slice::from_ref(&hash));
    let export = w
        .scientist
        .request_export(done["id"].as_str().unwrap())
        .unwrap();
    let id = export["id"].as_str().unwrap();
    w.reviewer
        .review_export(id, "approve", "aggregated, k met")
        .unwrap();
    let dir = env.dir.path().join("bundle");
    w.scientist.download_bundle(id, &dir).unwrap();
    let key = w.admin.ok("GET", "/v1/public-key", None).unwrap();
    let key = key["public_key"].as_str().unwrap().as_bytes().to_vec();
    tidegate_runtime::verify_bundle(&dir, &key).unwrap();
    std::fs::write(dir.join(".hidden"), b"smuggled").unwrap();
    let err = tidegate_runtime::verify_bundle(&dir, &key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not list: .hidden"), "{err}");
    std::fs::remove_file(dir.join(".hidden")).unwrap();
    std::fs::create_dir(dir.join("more")).unwrap();
    let err = tidegate_runtime::verify_bundle(&dir, &key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not list: more"), "{err}");
}

fn import(
    w: &tidegate_server::World,
    name: &str,
    csv: &str,
    columns: Value,
) -> anyhow::Result<Value> {
    w.provider.import_dataset(
        json!({ "name": name, "level": "L2", "format": "csv", "columns": columns }),
        csv.as_bytes(),
    )
}

#[test]
fn columns_named_alike_or_hiding_characters_are_refused_with_the_column_named() {
    let env = setup(true);
    let w = &env.world;
    let refused = refusal(import(w, "alike", "id,Spend,spend\na,1,2\n", json!([])));
    assert!(
        refused.contains("two columns named alike: `Spend` and `spend`"),
        "{refused}"
    );
    for header in ["sp\u{0}ot", "sp\u{202E}ot", "sp\u{200B}ot", "   "] {
        let refused = refusal(import(
            w,
            "hidden",
            &format!("id,{header}\na,1\n"),
            json!([]),
        ));
        assert!(
            refused.contains("control, bidirectional or invisible character")
                || refused.contains("empty or only whitespace"),
            "{header:?}: {refused}"
        );
    }
}

#[test]
fn a_csv_value_of_the_wrong_type_is_refused_by_column_and_line_without_the_value() {
    let env = setup(true);
    let w = &env.world;
    let refused = refusal(import(
        w,
        "typed",
        "id,amount\na,1\nb,2\nc,secret-value\n",
        json!([{ "name": "amount", "data_type": "int64", "tags": [] }]),
    ));
    assert!(
        refused.contains("does not parse as its column `amount`'s type at line 4 of the file"),
        "{refused}"
    );
    assert!(!refused.contains("secret-value"), "{refused}");
    assert!(!refused.contains("Row data"), "{refused}");
}

#[test]
fn names_with_hidden_characters_or_only_whitespace_are_refused() {
    let env = setup(true);
    let w = &env.world;
    for name in [
        "evil\u{202E}gro",
        "zero\u{200B}width",
        "nul\u{0}name",
        " \t ",
    ] {
        let refused = refusal(w.admin.create_org(name, "operator"));
        assert!(
            refused.contains("invisible character") || refused.contains("only whitespace"),
            "{name:?}: {refused}"
        );
        let refused = refusal(
            w.admin
                .create_principal(name, &w.operator_org, &["scientist"]),
        );
        assert!(
            refused.contains("invisible character") || refused.contains("only whitespace"),
            "{name:?}: {refused}"
        );
    }
}

#[test]
fn a_term_that_has_ended_and_epsilon_without_a_budget_are_refused() {
    let (env, sid, hash) = active_scenario();
    let w = &env.world;
    let today = time::OffsetDateTime::now_utc().date();
    let refused = refusal(w.scientist.apply_scenario(&json!({
        "name": "Too late",
        "key_area": "culture and tourism",
        "purpose": "visits per spot",
        "public_interest": true,
        "grants": [{ "dataset": "visits", "columns": ["spot"] }],
        "term_start": (today - time::Duration::days(60)).to_string(),
        "term_end": (today - time::Duration::days(30)).to_string(),
        "planned_products": ["visits per spot"],
    })));
    assert!(
        refused.contains("apply for a term that has not ended"),
        "{refused}"
    );
    let done = job(&env, &sid, DEMO_SQL, std::slice::from_ref(&hash));
    let refused = refusal(
        w.scientist
            .request_export_spending(done["id"].as_str().unwrap(), 0.5),
    );
    assert!(refused.contains("has no privacy budget"), "{refused}");
}

#[test]
fn the_cli_takes_the_type_names_users_type_and_checks_the_level_before_sending() {
    let env = setup(true);
    let w = &env.world;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("amounts.csv");
    std::fs::write(&csv, "id,amount,day\na,1.5,2026-01-01\nb,2.5,2026-01-02\n").unwrap();
    let run = |args: &[&str]| {
        tidegate_server::main_with_args(
            ["tidegate"]
                .iter()
                .chain(args)
                .chain(&[
                    "--url",
                    w.admin.url(),
                    "--token",
                    w.provider.token().unwrap(),
                ])
                .map(Into::into),
        )
    };
    let file = csv.to_str().unwrap();
    assert_eq!(
        run(&[
            "dataset", "import", file, "--name", "amounts", "--level", "L9"
        ]),
        std::process::ExitCode::FAILURE
    );
    assert_eq!(
        run(&[
            "dataset",
            "import",
            file,
            "--name",
            "amounts",
            "--level",
            "l2",
            "--column",
            "id:string:entity",
            "--column",
            "amount:double",
            "--column",
            "day:date",
        ]),
        std::process::ExitCode::SUCCESS
    );
    let listed = w.provider.ok("GET", "/v1/datasets", None).unwrap();
    let amounts = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "amounts")
        .unwrap()
        .clone();
    let types: Vec<&str> = amounts["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["utf8", "float64", "date32"], "{amounts}");
}

#[test]
fn an_upload_streams_in_sealed_and_one_cut_off_leaves_nothing_behind() {
    let env = setup(true);
    let w = &env.world;
    // Every import of the tests streams through the upload route; here one is cut off.
    let token = w.provider.token().unwrap().to_string();
    let answer = raw(
        w.admin.url(),
        format!("POST /v1/datasets/upload?name=cut&level=L2&format=csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\nid,spend\n").as_bytes(),
        &|s| {
            let _ = s.write_all(&b"a,1\n".repeat(100_000));
            let _ = s.shutdown(std::net::Shutdown::Write);
        },
    );
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    let listed = w.provider.ok("GET", "/v1/datasets", None).unwrap();
    assert!(!listed.to_string().contains("\"cut\""), "{listed}");
    let leftovers: Vec<_> = std::fs::read_dir(env.data_dir().join("objects"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".upload.tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A whole one imports.
    let imported = w.import_visits(&tidegate_server::visitor_csv(200)).unwrap();
    assert_eq!(imported["rows"], 200);
}

#[test]
fn a_new_version_never_lowers_the_protection_of_the_versions_scenarios_read() {
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(100)).unwrap();
    let refused = refusal(w.import_visits_at(&tidegate_server::visitor_csv(100), "L1"));
    assert!(
        refused.contains("cannot lower the dataset's level from L2 to L1"),
        "{refused}"
    );
    let refused = refusal(w.provider.import_dataset(
        json!({
            "name": "visits", "level": "L2", "format": "csv",
            "columns": [{ "name": "resident_id", "data_type": "utf8", "tags": ["dimension"] }],
        }),
        tidegate_server::visitor_csv(100).as_bytes(),
    ));
    assert!(refused.contains("cannot drop the tag"), "{refused}");
    // Raising it is the provider's to do.
    w.import_visits_at(&tidegate_server::visitor_csv(100), "L3")
        .unwrap();
}

#[test]
fn a_files_column_named_like_the_runtimes_hidden_ones_is_refused_declared_or_not() {
    let env = setup(true);
    let w = &env.world;
    for header in ["__tg_entity", "__TG_subjects", "__tg_key_0"] {
        let refused = refusal(import(
            w,
            "posing",
            &format!("id,{header}\na,b\n"),
            json!([]),
        ));
        assert!(
            refused.contains("reserved for the runtime"),
            "{header}: {refused}"
        );
    }
}

#[test]
fn a_reviewer_outside_the_authority_approves_no_other_orgs_module() {
    // The same rule as for export requests, through the other review: algorithm review.
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let uploaded = w
        .scientist
        .upload_module(&sid, &common::constant_module(7))
        .unwrap();
    let hash = uploaded["hash"].as_str().unwrap();
    let (outsider, _, _) = outsider(w, "another-unit", "operator", &["reviewer"]);
    let refused = refusal(outsider.approve_module(&sid, hash, "looks fine"));
    assert!(
        refused
            .contains("only reviewers of the authority's review office review other orgs' modules"),
        "{refused}"
    );
    w.reviewer
        .approve_module(&sid, hash, "reads nothing else")
        .unwrap();
}
