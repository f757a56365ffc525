//! Oversight (R-MONITOR, S2, S15): alerts raised by the behaviours they name, acknowledged by
//! an admin and delivered to a webhook; trainings that run out and then refuse every route but
//! one's own training state; sign-ins, new addresses and reads in the log, which the
//! authority's auditors search.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Env, active_scenario, export_of, job, setup};
use crate::console::{Browser, token};

const PER_SPOT: &str = "SELECT spot, count(*) AS visits FROM visits GROUP BY spot";

/// The metadata database, as an operator with a shell would see it.
fn metadata(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.data_dir().join("meta.sqlite")).unwrap()
}

fn alerts(env: &Env) -> Vec<Value> {
    env.world
        .admin
        .alerts(false)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn alerts_of(env: &Env, kind: &str) -> Vec<Value> {
    alerts(env)
        .into_iter()
        .filter(|a| a["kind"] == kind)
        .collect()
}

/// Visits where one spot has a single visitor: every count per spot suppresses it.
fn world_with_a_quiet_spot() -> (Env, String) {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!("o{i:03},13800000000,Old Street,2026-05-02,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!(
            "h{i:03},13800000000,Hill Temple,2026-05-03,1.00\n"
        ));
    }
    csv.push_str("q000,13800000000,Quiet Pond,2026-05-04,1.00\n");
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    (env, sid)
}

#[test]
fn exports_with_suppressed_groups_in_a_row_raise_one_alert_that_only_an_admin_acknowledges() {
    let (env, sid) = world_with_a_quiet_spot();
    let w = &env.world;
    for n in 1..=2 {
        let e = export_of(&env, &sid, PER_SPOT, &[]);
        assert!(e["id"].is_string(), "{e}");
        assert!(alerts_of(&env, "suppressed_groups").is_empty(), "after {n}");
    }
    // The third in a row (the policy's default threshold) raises it; a fourth counts in it
    // while it is open (and sends it again), rather than raising another.
    export_of(&env, &sid, PER_SPOT, &[]);
    export_of(&env, &sid, PER_SPOT, &[]);
    let raised = alerts_of(&env, "suppressed_groups");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["occurrences"], 2);
    let alert = &raised[0];
    assert_eq!(alert["org"], json!(w.operator_org));
    assert_eq!(alert["scenario"], json!(sid));
    assert_eq!(alert["evidence"]["exports_in_a_row"], 3);
    assert!(
        !alert.to_string().contains("Quiet Pond"),
        "an alert names ids and counts, never a value"
    );
    let id = alert["id"].as_str().unwrap();

    // The scientist whose exports raised it does not see alerts; an auditor reads them but
    // does not acknowledge; an admin does, with a note.
    assert_eq!(
        w.scientist.call("GET", "/v1/alerts", None).unwrap().status,
        403
    );
    assert_eq!(w.auditor.alerts(true).unwrap().as_array().unwrap().len(), 1);
    assert!(w.auditor.acknowledge_alert(id, "seen").is_err());
    assert!(
        w.admin.acknowledge_alert(id, " ").is_err(),
        "a note is required"
    );
    let acked = w
        .admin
        .acknowledge_alert(id, "asked the unit about its small groups")
        .unwrap();
    assert!(acked["acknowledged_at"].is_string(), "{acked}");
    assert!(w.admin.acknowledge_alert(id, "again").is_err());
    assert!(w.admin.alerts(true).unwrap().as_array().unwrap().is_empty());
    let log = std::fs::read_to_string(env.data_dir().join(tidegate_runtime::AUDIT_FILE)).unwrap();
    assert!(log.contains("\"alert.raise\"") && log.contains("\"alert.acknowledge\""));
    // The behaviour going on raises a new one.
    export_of(&env, &sid, PER_SPOT, &[]);
    assert_eq!(alerts_of(&env, "suppressed_groups").len(), 2);
}

#[test]
fn a_release_nearly_identical_to_an_earlier_one_raises_a_differencing_alert() {
    let env = setup(true);
    let mut csv = String::from("resident_id,mobile,spot,visit_date,spend\n");
    for i in 0..40 {
        csv.push_str(&format!("w{i:03},13800000000,West Lake,2026-05-01,1.00\n"));
    }
    for i in 0..30 {
        csv.push_str(&format!("o{i:03},13800000000,Old Street,2026-05-02,1.00\n"));
    }
    csv.push_str("target,13800000000,West Lake,2026-08-15,1.00\n");
    env.world.import_visits(&csv).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap();
    export_of(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits
         WHERE visit_date < DATE '2026-06-01' OR visit_date = DATE '2026-08-15' GROUP BY spot",
        &[],
    );
    assert!(alerts_of(&env, "differencing").is_empty());
    let without = export_of(
        &env,
        sid,
        "SELECT spot, count(*) AS visits FROM visits
         WHERE visit_date < DATE '2026-06-01' GROUP BY spot",
        &[],
    );
    let raised = alerts_of(&env, "differencing");
    assert_eq!(raised.len(), 1, "{:?}", alerts(&env));
    assert_eq!(raised[0]["evidence"]["export"], without["id"]);
    assert_eq!(
        raised[0]["evidence"]["groups_suppressed_as_near_identical"],
        1
    );
}

#[test]
fn a_privacy_budget_spent_to_its_alert_share_raises_an_alert() {
    let env = setup(true);
    env.world
        .import_visits(&tidegate_server::visitor_csv(crate::common::ROWS))
        .unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let w = &env.world;
    let sid = w
        .scientist
        .apply_scenario(&json!({
            "name": "Spot footfall",
            "key_area": "culture and tourism",
            "purpose": "visits per scenic spot",
            "public_interest": true,
            "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot"] }],
            "term_start": (today - time::Duration::days(1)).to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
            "export_rules": { "privacy_budget": 1.0 },
        }))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.admin.approve_scenario(&sid).unwrap();
    w.provider.approve_scenario(&sid).unwrap();
    let spend = |epsilon: f64| {
        let j = job(&env, &sid, PER_SPOT, &[]);
        let e = w
            .scientist
            .request_export_spending(j["id"].as_str().unwrap(), epsilon)
            .unwrap();
        assert_eq!(e["state"], "in_review", "{e}");
    };
    spend(0.5);
    assert!(alerts_of(&env, "budget").is_empty());
    spend(0.3);
    let raised = alerts_of(&env, "budget");
    assert_eq!(raised.len(), 1, "{:?}", alerts(&env));
    assert_eq!(raised[0]["evidence"]["epsilon_total"], 1.0);
}

#[test]
fn a_freeze_an_invalid_module_and_a_broken_log_raise_alerts() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    assert!(
        w.scientist
            .upload_module(&sid, b"\0asm\x01\0\0\0 not a module")
            .is_err()
    );
    let invalid = alerts_of(&env, "module_invalid");
    assert_eq!(invalid.len(), 1, "{:?}", alerts(&env));
    assert_eq!(invalid[0]["scenario"], json!(sid));
    assert_eq!(invalid[0]["evidence"]["uploaded_by"], json!(w.scientist_id));

    w.admin.freeze_org(&w.operator_org, true).unwrap();
    let frozen = alerts_of(&env, "freeze");
    assert_eq!(frozen.len(), 1);
    assert_eq!(frozen[0]["org"], json!(w.operator_org));

    // An entry of the log altered on disk: the next verification raises an alert.
    let log = env.data_dir().join(tidegate_runtime::AUDIT_FILE);
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"org.freeze\"", "\"org.unfrez\"", 1)).unwrap();
    let verdict = w.auditor.ok("GET", "/v1/audit/verify", None).unwrap();
    assert!(!verdict["first_bad"].is_null(), "{verdict}");
    assert_eq!(alerts_of(&env, "audit_failure").len(), 1);
    // The sweep (at start and hourly) verifies the log without being asked, and says so.
    let swept = w.admin.sweep().unwrap();
    assert!(swept["audit_first_bad"].as_u64().is_some(), "{swept}");
    let raised = alerts_of(&env, "audit_failure");
    assert_eq!(
        raised[0]["evidence"]["verified_by"], "platform:sweep",
        "{raised:?}"
    );
}

/// A request a sink received: its path, its JSON body and its signature header.
struct Delivery {
    path: String,
    body: Value,
    raw: Vec<u8>,
    signature: Option<String>,
}

/// A webhook that answers 503 to its first request and 200 after, and hands over each body.
/// A web server on loopback that refuses its first request with 503 when `fail_first`,
/// answers every other 200, and hands on each accepted request's path and JSON body.
fn http_sink(fail_first: bool) -> (String, mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = fail_first;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            let mut path = String::new();
            let mut signature = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if path.is_empty() {
                    path = line.split(' ').nth(1).unwrap_or_default().to_string();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = line
                    .to_ascii_lowercase()
                    .strip_prefix("x-tidegate-signature:")
                {
                    signature = Some(v.trim().to_string());
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let status = if first { "503 Busy" } else { "200 OK" };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if !first {
                let _ = tx.send(Delivery {
                    path,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    raw: body,
                    signature,
                });
            }
            first = false;
        }
    });
    (url, rx)
}

/// An alert webhook that is down for its first delivery.
fn webhook() -> (String, mpsc::Receiver<Delivery>) {
    let (base, rx) = http_sink(true);
    (format!("{base}/hook"), rx)
}

#[test]
fn the_sweep_alerts_on_a_log_cut_short_and_on_checkpoints_that_cannot_be_read() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let clean = w.admin.sweep().unwrap();
    assert!(
        clean["audit_entries_verified"].as_u64().unwrap() > 10,
        "{clean}"
    );
    assert!(clean.get("audit_first_bad").is_none(), "{clean}");
    assert!(alerts_of(&env, "audit_failure").is_empty());

    // The last entries removed (after the last signed checkpoint, where the chain alone
    // cannot tell): the platform knows what it wrote.
    let log = env.data_dir().join(tidegate_runtime::AUDIT_FILE);
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(&log, format!("{}\n", kept[..kept.len() - 1].join("\n"))).unwrap();
    let cut = w.admin.sweep().unwrap();
    assert!(cut["audit_first_bad"].as_u64().is_some(), "{cut}");
    assert_eq!(alerts_of(&env, "audit_failure").len(), 1);

    // Checkpoints that cannot be read as such: an alert too, not only an error in a log.
    let checkpoints = tidegate_runtime::checkpoints_path(&log);
    let mut garbled = std::fs::read(&checkpoints).unwrap_or_default();
    garbled.extend_from_slice(b"not a checkpoint\n");
    std::fs::write(&checkpoints, garbled).unwrap();
    let _ = w.admin.sweep();
    let raised = alerts_of(&env, "audit_failure");
    assert!(
        raised
            .iter()
            .any(|a| a["evidence"]["unreadable"].is_string()),
        "{raised:?}"
    );
}

#[test]
fn alerts_reach_the_admins_webhook_even_when_it_was_down_once() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let (url, received) = webhook();
    // Only an admin says where alerts go, and only to a web address.
    assert!(
        w.auditor
            .set_alert_settings(&tidegate_runtime::AlertSettings {
                webhook: Some(url.clone()),
                ..Default::default()
            })
            .is_err()
    );
    assert!(
        w.admin
            .set_alert_settings(&tidegate_runtime::AlertSettings {
                webhook: Some("file:///etc/passwd".into()),
                ..Default::default()
            })
            .is_err()
    );
    w.admin
        .set_alert_settings(&tidegate_runtime::AlertSettings {
            webhook: Some(url),
            ..Default::default()
        })
        .unwrap();
    w.admin.freeze_org(&w.operator_org, true).unwrap();
    // The first delivery is refused (503); the alert waits and goes with the next round.
    let Delivery {
        body: delivered,
        raw,
        signature,
        ..
    } = received
        .recv_timeout(Duration::from_secs(60))
        .expect("the webhook receives the alert");
    assert_eq!(delivered["format"], "tidegate-alert-v1");
    // Signed by the platform over the body: the receiver tells it from a forgery.
    let signature = signature.expect("the alert is signed");
    let key = crate::common::platform_key(&env);
    tidegate_runtime::verify_alert(&raw, &signature, &key).unwrap();
    let mut forged = delivered.clone();
    forged["alert"]["kind"] = json!("audit_failure");
    let forged = serde_json::to_vec(&forged).unwrap();
    assert!(tidegate_runtime::verify_alert(&forged, &signature, &key).is_err());
    // Another signed document of the platform, which anyone can fetch, is no alert.
    let anyone = tidegate_server::Client::new(w.admin.url(), None);
    let record = anyone.ok("GET", "/public/record.json", None).unwrap();
    let record_bytes = serde_json::to_vec(&record["record"]).unwrap();
    tidegate_runtime::verify_certificate(
        &record["record"],
        record["signature"].as_str().unwrap(),
        &key,
    )
    .unwrap();
    assert!(
        tidegate_runtime::verify_alert(&record_bytes, record["signature"].as_str().unwrap(), &key)
            .is_err()
    );
    assert_eq!(delivered["alert"]["kind"], "freeze");
    assert_eq!(delivered["alert"]["org"], json!(w.operator_org));
    // Delivered once: nothing more comes for it.
    assert!(received.recv_timeout(Duration::from_secs(8)).is_err());
}

#[test]
fn a_training_that_ran_out_refuses_every_route_reads_too_but_the_principals_own_training() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let today = time::OffsetDateTime::now_utc().date();
    // A training recorded to end before today is refused; one to today holds today.
    let past = w
        .admin
        .record_training_until(
            &w.scientist_id,
            "data handling 2026",
            Some(&(today - time::Duration::days(1)).to_string()),
        )
        .unwrap_err()
        .to_string();
    assert!(past.contains("before today"), "{past}");
    let forever = w
        .admin
        .record_training_until(&w.scientist_id, "data handling 2026", Some("9999-12-31"))
        .unwrap_err()
        .to_string();
    assert!(forever.contains("at most 365 days"), "{forever}");
    assert!(
        w.admin
            .record_training(&w.scientist_id, "bootstrap")
            .is_err(),
        "the first admin's course name is reserved"
    );
    w.admin
        .record_training_until(
            &w.scientist_id,
            "data handling 2026",
            Some(&today.to_string()),
        )
        .unwrap();
    let me = w.scientist.me().unwrap();
    assert_eq!(me["current"], true);
    assert_eq!(me["valid_until"], json!(today.to_string()));
    assert_eq!(me["course"], "data handling 2026");
    assert_eq!(
        w.scientist.call("GET", "/v1/jobs", None).unwrap().status,
        200
    );

    // The next day (the calendar moved by hand) it no longer holds.
    metadata(&env)
        .execute(
            "UPDATE principals SET training_until = ?2 WHERE id = ?1",
            rusqlite::params![
                w.scientist_id,
                (today - time::Duration::days(1)).to_string()
            ],
        )
        .unwrap();
    for (method, path) in [
        ("GET", "/v1/jobs".to_string()),
        ("GET", "/v1/datasets".to_string()),
        ("GET", format!("/v1/scenarios/{sid}")),
        ("GET", "/v1/exports".to_string()),
        ("GET", "/v1/modules".to_string()),
        ("POST", "/v1/jobs".to_string()),
    ] {
        let answer = w
            .scientist
            .call(
                method,
                &path,
                Some(&json!({ "scenario": sid, "sql": PER_SPOT, "modules": [] })),
            )
            .unwrap();
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.body);
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("no training record that holds today"),
            "{}",
            answer.body
        );
    }
    let me = w.scientist.me().unwrap();
    assert_eq!(me["current"], false);
    // The console shows them their training and nothing else.
    let mut b = Browser::new(w.scientist.url());
    assert_eq!(b.sign_in(&token(&w.scientist)).status, 303);
    let home = b.get("/console");
    assert_eq!(home.status, 200);
    assert!(home.body.contains("does not hold today"), "{}", home.body);
    assert_eq!(b.get("/console/jobs").status, 403);
    // A new training record opens everything again.
    w.admin
        .record_training(&w.scientist_id, "data handling 2027")
        .unwrap();
    assert_eq!(
        w.scientist.call("GET", "/v1/jobs", None).unwrap().status,
        200
    );
    assert_eq!(b.get("/console/jobs").status, 200);
}

#[test]
fn sign_ins_new_addresses_and_reads_are_in_the_log_and_the_authoritys_auditors_search_it() {
    let (env, sid, hash) = active_scenario();
    let w = &env.world;
    let j = job(&env, &sid, PER_SPOT, &[]);
    let jid = j["id"].as_str().unwrap();
    let e = w.scientist.request_export(jid).unwrap();
    let eid = e["id"].as_str().unwrap();
    w.scientist
        .ok("GET", &format!("/v1/jobs/{jid}"), None)
        .unwrap();
    w.reviewer
        .ok("GET", &format!("/v1/exports/{eid}"), None)
        .unwrap();
    w.reviewer
        .ok("GET", &format!("/v1/scenarios/{sid}/modules/{hash}"), None)
        .unwrap();
    let year = time::OffsetDateTime::now_utc().year();
    w.auditor.annual_report(&w.operator_org, year).unwrap();
    let mut b = Browser::new(w.scientist.url());
    assert_eq!(b.sign_in("not-a-token").status, 401);

    let search = |q: &str| w.auditor.ok("GET", &format!("/v1/audit/entries?{q}"), None);
    let found =
        |q: &str| -> Vec<Value> { search(q).unwrap()["entries"].as_array().unwrap().clone() };
    let reads = found(&format!("principal={}&action=job.read", w.scientist_id));
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["object"], jid);
    assert_eq!(found("action=export.read").len(), 1);
    assert_eq!(found("action=module.read").len(), 1);
    assert_eq!(found("action=report.read").len(), 1);
    let refused = found("action=session.refused");
    assert_eq!(refused.len(), 1);
    assert!(!refused[0].to_string().contains("not-a-token"));
    // Each principal's first request from an address is noted once.
    let addresses = found(&format!(
        "principal={}&action=principal.new_address",
        w.scientist_id
    ));
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    assert_eq!(addresses[0]["detail"]["address"], "127.0.0.1");
    // By org: the operating unit's scientist's entries, and nobody else's.
    let by_org = found(&format!("org={}&limit=1000", w.operator_org));
    assert!(!by_org.is_empty());
    assert!(
        by_org.iter().all(|e| e["actor"] == json!(w.scientist_id)
            || e["object"] == json!(sid)
            || e["object"] == json!(w.operator_org)),
        "{by_org:?}"
    );
    assert!(
        by_org
            .iter()
            .any(|e| e["action"] == "scenario.approve" && e["object"] == json!(sid)),
        "the authority's actions on the org's scenarios are the org's too"
    );
    // By time: nothing after tomorrow; everything of today.
    let tomorrow = time::OffsetDateTime::now_utc().date() + time::Duration::days(1);
    assert!(found(&format!("from={tomorrow}")).is_empty());
    let today = time::OffsetDateTime::now_utc().date();
    assert!(!found(&format!("from={today}&to={today}")).is_empty());
    // Bad input and the wrong people are refused; the search is itself in the log.
    assert_eq!(
        w.auditor
            .call("GET", "/v1/audit/entries?action=no.such", None)
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        w.auditor
            .call("GET", "/v1/audit/entries?from=yesterday", None)
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        w.scientist
            .call("GET", "/v1/audit/entries", None)
            .unwrap()
            .status,
        403
    );
    assert!(!found("action=audit.search").is_empty());
    // The console's page shows the same search.
    let mut a = Browser::new(w.auditor.url());
    assert_eq!(a.sign_in(&token(&w.auditor)).status, 303);
    let page = a.get("/console/audit?action=session.refused");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("1 entries matched"), "{}", page.body);
}

#[test]
fn the_public_record_needs_no_sign_in_names_no_figure_and_verifies_offline() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let j = job(&env, &sid, PER_SPOT, &[]);
    let e = w
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    let eid = e["id"].as_str().unwrap();
    w.reviewer.review_export(eid, "approve", "ok").unwrap();
    let dir = tempfile::tempdir().unwrap();
    w.scientist.download_bundle(eid, dir.path()).unwrap();
    let mut draft = crate::common::scenario_request(true);
    draft["name"] = json!("A draft nobody approved");
    w.scientist.apply_scenario(&draft).unwrap();
    let mut revoked = crate::common::scenario_request(false);
    revoked["name"] = json!("An application revoked before its approvals");
    let revoked = w.scientist.apply_scenario(&revoked).unwrap();
    w.admin
        .change_scenario(revoked["id"].as_str().unwrap(), "revoke")
        .unwrap();

    let anyone = tidegate_server::Client::new(w.admin.url(), None);
    let signed = anyone.ok("GET", "/public/record.json", None).unwrap();
    let record = &signed["record"];
    assert_eq!(record["format"], "tidegate-public-record-v1");
    let key = crate::common::platform_key(&env);
    tidegate_runtime::verify_certificate(record, signed["signature"].as_str().unwrap(), &key)
        .unwrap();
    let mut forged = record.clone();
    forged["fees"] = json!([]);
    assert!(
        tidegate_runtime::verify_certificate(&forged, signed["signature"].as_str().unwrap(), &key)
            .is_err()
    );
    // The unit, its approved scenario and its released product; never the draft or a figure.
    let units: Vec<&Value> = record["units"].as_array().unwrap().iter().collect();
    assert!(units.iter().any(|u| u["id"] == json!(w.operator_org)));
    assert!(units.iter().all(|u| u["id"] != json!(w.provider_org)));
    let scenario = record["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == json!(sid))
        .unwrap();
    assert_eq!(scenario["state"], "active");
    assert!(scenario["purpose"].is_string() && scenario["key_area"].is_string());
    assert!(!record.to_string().contains("A draft nobody approved"));
    assert!(!record.to_string().contains("revoked before its approvals"));
    let products = record["products"].as_array().unwrap();
    assert_eq!(products.len(), 1);
    assert_eq!(products[0]["export"], eid);
    assert_eq!(products[0]["scenario"], json!(sid));
    for value in [
        "West Lake",
        "Old Street",
        "resident_id",
        w.scientist_id.as_str(),
    ] {
        assert!(
            !record.to_string().contains(value),
            "{value} in the public record"
        );
    }
    assert!(
        record["fees"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["org"] == json!(w.operator_org))
    );
    // The page says the same, without a script, to anyone.
    let page = public_page(w);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(&sid) && page.contains(eid));
    assert!(!page.contains("<script") && page.contains("default-src 'none'"));
    // A saved copy verifies with the command line, offline.
    let saved = dir.path().join("record.json");
    std::fs::write(&saved, signed.to_string()).unwrap();
    let key_file = env.data_dir().join(tidegate_runtime::PUBLIC_KEY_FILE);
    let ok = tidegate_server::main_with_args(
        [
            "tidegate",
            "verify-signed",
            saved.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ]
        .map(std::ffi::OsString::from),
    );
    assert_eq!(ok, std::process::ExitCode::SUCCESS);
    std::fs::write(
        &saved,
        signed
            .to_string()
            .replace("tidegate-public-record-v1", "tidegate-public-record-v2"),
    )
    .unwrap();
    let bad = tidegate_server::main_with_args(
        [
            "tidegate",
            "verify-signed",
            saved.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ]
        .map(std::ffi::OsString::from),
    );
    assert_eq!(bad, std::process::ExitCode::FAILURE);
}

/// The public record's page as a browser without a session gets it: the raw answer.
fn public_page(w: &tidegate_server::World) -> String {
    crate::common::raw(
        w.admin.url(),
        format!(
            "GET /public HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            w.admin.url().trim_start_matches("http://")
        )
        .as_bytes(),
        &|_| {},
    )
}

/// The public record as anyone reads it, its signature checked.
fn public_record(env: &Env) -> Value {
    let anyone = tidegate_server::Client::new(env.world.admin.url(), None);
    let signed = anyone.ok("GET", "/public/record.json", None).unwrap();
    tidegate_runtime::verify_certificate(
        &signed["record"],
        signed["signature"].as_str().unwrap(),
        &crate::common::platform_key(env),
    )
    .unwrap();
    signed["record"].clone()
}

fn product<'a>(record: &'a Value, export: &str) -> &'a Value {
    record["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["export"] == export)
        .unwrap_or_else(|| panic!("export {export} is not in the public record"))
}

/// Sets a scenario's `public_figures` rule through the policy document, as an admin does.
fn publish_figures(env: &Env, sid: &str, publish: bool) {
    let mut doc = env.world.admin.export_policy().unwrap();
    let scenario = doc.scenarios.iter_mut().find(|s| s.id == sid).unwrap();
    scenario.export_rules.as_mut().unwrap().public_figures = publish;
    env.world.admin.apply_policy(&doc, false).unwrap();
}

#[test]
fn a_scenario_that_publishes_its_figures_shows_its_released_rows_in_the_public_record_until_withdrawn()
 {
    let env = setup(true);
    let w = &env.world;
    w.import_visits(&tidegate_server::visitor_csv(2_000))
        .unwrap();
    let mut request = crate::common::scenario_request(false);
    request["name"] = json!("Visits published");
    request["export_rules"] = json!({ "public_figures": true });
    let public = crate::common::approved_scenario(w, &w.scientist, &request);
    let private =
        crate::common::approved_scenario(w, &w.scientist, &crate::common::scenario_request(false));
    let released = |sid: &str| {
        let j = job(&env, sid, PER_SPOT, &[]);
        let e = w
            .scientist
            .request_export(j["id"].as_str().unwrap())
            .unwrap();
        let eid = e["id"].as_str().unwrap().to_string();
        let seen = w.reviewer.get_export(&eid).unwrap();
        let plain = w.reviewer.review_export(&eid, "approve", "ok");
        if seen["public_figures"] == true {
            // Approving rows for anyone to read is said in so many words.
            let refused = plain.unwrap_err().to_string();
            assert!(refused.contains("public record"), "{refused}");
            w.reviewer
                .review_export_publishing(&eid, "approve", "ok, public", true)
                .unwrap();
        } else {
            plain.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        w.scientist.download_bundle(&eid, dir.path()).unwrap();
        (eid, seen, dir)
    };
    let (shown, seen, bundle) = released(&public);
    let (kept, seen_private, _) = released(&private);
    // Its reviewers were told that approving it publishes its rows; the other's were not.
    assert_eq!(seen["public_figures"], true);
    assert!(
        seen_private.get("public_figures").is_none(),
        "{seen_private}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bundle.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["public_figures"], true);

    // The published product carries exactly the bundle's rows and hash; the other, its title.
    let record = public_record(&env);
    let figures = &product(&record, &shown)["figures"];
    assert_eq!(figures["result_sha256"], manifest["result_sha256"]);
    let csv = std::fs::read_to_string(bundle.path().join("result.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        figures["columns"],
        json!(lines.next().unwrap().split(',').collect::<Vec<_>>())
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(!rows.is_empty());
    assert_eq!(figures["rows"], json!(rows));
    assert!(product(&record, &kept).get("figures").is_none());
    // The page shows the same rows to anyone.
    let page = public_page(w);
    assert!(page.contains(&format!("<td>{}</td>", rows[0][0])), "{page}");

    // An admin withdraws the publication: the rows leave the record at once, the title stays.
    publish_figures(&env, &public, false);
    let record = public_record(&env);
    assert!(product(&record, &shown).get("figures").is_none());
    // A later grant of publication does not reach what was released as private.
    publish_figures(&env, &private, true);
    publish_figures(&env, &public, true);
    let record = public_record(&env);
    assert!(product(&record, &kept).get("figures").is_none());
    assert_eq!(
        product(&record, &shown)["figures"]["rows"],
        json!(rows),
        "restored"
    );
    // A risk stop withholds them until the scenario resumes.
    w.admin.change_scenario(&public, "suspend").unwrap();
    assert!(
        product(&public_record(&env), &shown)
            .get("figures")
            .is_none()
    );
    w.admin.change_scenario(&public, "resume").unwrap();
    assert!(
        product(&public_record(&env), &shown)
            .get("figures")
            .is_some()
    );
    // Reads and sign-ins do not rebuild the record; a change does.
    let before = public_record(&env)["generated_at"].clone();
    w.reviewer.get_export(&shown).unwrap();
    assert_eq!(public_record(&env)["generated_at"], before);
    // A revocation withdraws them for good.
    w.admin.change_scenario(&public, "revoke").unwrap();
    let record = public_record(&env);
    assert!(product(&record, &shown).get("figures").is_none());
    // A closed scenario's rules change no more, but for withdrawing the publication.
    publish_figures(&env, &public, false);
    let mut doc = w.admin.export_policy().unwrap();
    for s in &mut doc.scenarios {
        if s.id == public {
            s.export_rules.as_mut().unwrap().public_figures = true;
        }
    }
    let refused = w.admin.apply_policy(&doc, false).unwrap_err().to_string();
    assert!(refused.contains("is closed"), "{refused}");
}

/// One sample of the Prometheus text format: `name{labels} value`.
type Sample = (String, Vec<(String, String)>, f64);

/// Every sample of an exposition, each checked against the format: a TYPE line for its
/// family, a name of `[a-zA-Z0-9_]`, labels `key="value"` with escapes, a number.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut declared = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            declared.insert(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                    let mut end = 0;
                    let bytes = after.as_bytes();
                    while bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    labels.push((key.to_string(), after[..end].to_string()));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| declared.contains(*f))
            .unwrap_or(&name)
            .to_string();
        assert!(declared.contains(&family), "{name} has no TYPE line");
        samples.push((name, labels, value));
    }
    samples
}

#[test]
fn metrics_parse_as_the_exposition_format_and_count_jobs_fuel_imports_and_alerts() {
    let (env, sid, hash) = active_scenario();
    let w = &env.world;
    job(
        &env,
        &sid,
        "SELECT spot, count(*) AS n, avg(age_at_visit(resident_id, visit_date)) AS a FROM visits GROUP BY spot",
        &[hash],
    );
    w.admin.freeze_org(&w.operator_org, true).unwrap();
    let token = w.admin.token().unwrap();
    let text = crate::common::raw(
        w.admin.url(),
        format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
            w.admin.url().trim_start_matches("http://")
        )
        .as_bytes(),
        &|_| {},
    );
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let samples = parse_exposition(body);
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("{name} {label:?} in\n{body}"))
    };
    assert_eq!(value("tidegate_jobs", Some(("state", "succeeded"))), 1.0);
    assert!(value("tidegate_guest_fuel_total", None) > 0.0);
    assert!(value("tidegate_job_seconds_total", None) >= 0.0);
    assert!(value("tidegate_import_bytes_total", None) > 0.0);
    assert_eq!(value("tidegate_alerts_open", Some(("kind", "freeze"))), 1.0);
    assert_eq!(
        value("tidegate_alerts_raised_total", Some(("kind", "freeze"))),
        1.0
    );
    // No identifier in any label.
    for (_, labels, _) in &samples {
        for (_, v) in labels {
            assert!(
                !v.contains(&w.operator_org) && !v.contains(&sid) && !v.contains("West Lake"),
                "{v}"
            );
        }
    }
}

#[test]
fn the_authoritys_signed_evaluation_is_in_the_annual_report_and_can_bar_a_new_application() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    w.admin.freeze_org(&w.operator_org, true).unwrap();
    w.admin.freeze_org(&w.operator_org, false).unwrap();
    let year = time::OffsetDateTime::now_utc().year();
    let evaluation = |who: &tidegate_server::Client, may_reapply: bool| {
        who.evaluate_org(&tidegate_runtime::EvaluationRequest {
            org: w.operator_org.clone(),
            year,
            compliance: "kept its term and rules; one freeze after a risk report".into(),
            products: "visitor profiles used for the spring tourism plan".into(),
            may_reapply,
        })
    };
    // Only the authority's admins write it; a unit does not evaluate itself.
    assert!(evaluation(&w.scientist, true).is_err());
    assert!(evaluation(&w.auditor, true).is_err());
    let signed = evaluation(&w.admin, false).unwrap();
    let key = crate::common::platform_key(&env);
    tidegate_runtime::verify_document(&signed.evaluation, &signed.signature, &key).unwrap();
    assert_eq!(signed.evaluation.incidents.freezes, 1);
    // Once per org and year.
    assert!(evaluation(&w.admin, true).is_err());
    // The report carries it, its incidents, and the verdict.
    let report = w.scientist.annual_report(&w.operator_org, year).unwrap();
    assert_eq!(report.evaluation, Some(signed));
    assert!(!report.may_reapply);
    assert_eq!(report.incidents.monitoring.freezes, 1);
    // The unit applies for nothing new.
    let refused = w
        .scientist
        .apply_scenario(&crate::common::scenario_request(false))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("may not apply again"), "{refused}");
    // A year that has not begun, or long before the platform, is refused.
    assert!(w.auditor.annual_report(&w.operator_org, 1066).is_err());
}

#[test]
fn a_provider_sees_where_its_data_is_used_and_downloads_its_released_products_free() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let j = job(&env, &sid, PER_SPOT, &[]);
    let jid = j["id"].as_str().unwrap();
    let e = w.scientist.request_export(jid).unwrap();
    let eid = e["id"].as_str().unwrap().to_string();
    w.reviewer.review_export(&eid, "approve", "ok").unwrap();
    // Before its requester has it, the product is not the provider's to take.
    let dir = tempfile::tempdir().unwrap();
    let early = w
        .provider
        .call("GET", &format!("/v1/exports/{eid}/bundle"), None)
        .unwrap();
    assert_eq!(early.status, 404, "{}", early.body);
    w.scientist.download_bundle(&eid, dir.path()).unwrap();
    let period = {
        let now = time::OffsetDateTime::now_utc();
        format!("{}-{:02}", now.year(), u8::from(now.month()))
    };
    let unit_before = w.admin.statement(&w.operator_org, &period).unwrap();

    // The provider downloads it, verified like any bundle.
    let theirs = tempfile::tempdir().unwrap();
    w.provider.download_bundle(&eid, theirs.path()).unwrap();
    let key = env.data_dir().join(tidegate_runtime::PUBLIC_KEY_FILE);
    let key = std::fs::read(key).unwrap();
    tidegate_runtime::verify_bundle(theirs.path(), &key).unwrap();
    // Free: nobody's statement changed, and the provider's shows nothing to pay.
    let unit_after = w.admin.statement(&w.operator_org, &period).unwrap();
    assert_eq!(unit_before["total_fen"], unit_after["total_fen"]);
    let provider_statement = w.admin.statement(&w.provider_org, &period).unwrap();
    let charged: i64 = provider_statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["item"] != "storage")
        .map(|l| l["amount_fen"].as_i64().unwrap())
        .sum();
    assert_eq!(charged, 0, "{provider_statement}");
    // The statement shows the product at zero, and the audit log alone gives the same.
    let free = provider_statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["scenario"] == json!(sid))
        .unwrap_or_else(|| panic!("a line for the product: {provider_statement}"));
    assert_eq!(free["quantity"], 1.0, "{free}");
    assert_eq!(free["amount_fen"], 0, "{free}");
    assert!(free["note"].as_str().unwrap().contains("free"), "{free}");
    let replayed = crate::common::statement_from_audit_log(
        &env,
        &w.provider_org,
        &period,
        time::OffsetDateTime::parse(
            provider_statement["as_of"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap(),
    );
    assert_eq!(
        replayed,
        serde_json::from_value::<tidegate_runtime::Statement>(provider_statement.clone()).unwrap()
    );
    // Nobody else: the reviewer's org and the auditor learn nothing of it.
    for other in [&w.reviewer, &w.auditor] {
        let refused = other
            .call("GET", &format!("/v1/exports/{eid}/bundle"), None)
            .unwrap();
        assert_eq!(refused.status, 404, "{}", refused.body);
    }

    // Where its data is used: the scenario, the job, the product; for its provider and the
    // authority, never for the unit.
    let usage = w.provider.dataset_usage("visits").unwrap();
    let scenario = &usage["scenarios"].as_array().unwrap()[0];
    assert_eq!(scenario["id"], json!(sid));
    assert_eq!(scenario["org"], json!(w.operator_org));
    assert_eq!(scenario["jobs"], 1);
    assert!(scenario["rows_scanned"].as_u64().unwrap() > 0);
    assert_eq!(usage["products"][0]["export"], json!(eid));
    assert!(!usage.to_string().contains("West Lake"), "no result in it");
    assert!(w.auditor.dataset_usage("visits").is_ok());
    let hidden = w
        .scientist
        .call("GET", "/v1/datasets/visits/usage", None)
        .unwrap();
    assert_eq!(hidden.status, 404, "{}", hidden.body);
}

/// The visits imported with the provider's quality rules.
fn import_with_rules(env: &Env, csv: &str, rules: Option<Value>) -> anyhow::Result<Value> {
    let mut request = json!({
        "name": "visits",
        "level": "L2",
        "format": "csv",
        "columns": [
            { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
            { "name": "mobile", "data_type": "utf8", "tags": ["pii:mobile"] },
            { "name": "spot", "data_type": "utf8", "tags": ["dimension"] },
            { "name": "visit_date", "data_type": "date32", "tags": ["quasi"] },
            { "name": "spend", "data_type": "float64", "tags": ["sensitive"] },
        ],
    });
    if let Some(rules) = rules {
        request["quality_rules"] = rules;
    }
    env.world.provider.import_dataset(request, csv.as_bytes())
}

#[test]
fn a_providers_quality_rules_refuse_or_quarantine_an_import_rule_by_rule() {
    let env = setup(true);
    let w = &env.world;
    let good = tidegate_server::visitor_csv(400);
    let rules = json!([
        { "column": "spend", "check": "range", "min": 0, "max": 800, "on_fail": "quarantine" },
        { "column": "resident_id", "check": "check_digits", "on_fail": "refuse" },
        { "column": "spend", "check": "not_null", "on_fail": "report" },
    ]);
    // A rule on a column the file lacks, or check digits of an untyped column, is refused.
    let wrong = import_with_rules(
        &env,
        &good,
        Some(json!([{ "column": "spot", "check": "check_digits" }])),
    )
    .unwrap_err()
    .to_string();
    assert!(wrong.contains("check digits"), "{wrong}");

    // A resident ID whose check digit is wrong: refused, nothing stored.
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let id = lines[1].split(',').next().unwrap().to_string();
    let last = id.chars().last().unwrap();
    let other = if last == '0' { '1' } else { '0' };
    let broken_id = format!("{}{other}", &id[..id.len() - 1]);
    lines[1] = lines[1].replacen(&id, &broken_id, 1);
    let refused = import_with_rules(&env, &(lines.join("\n") + "\n"), Some(rules.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("check_digits on `resident_id`"),
        "{refused}"
    );
    assert!(!refused.contains(&broken_id), "the refusal names no value");
    assert!(
        w.provider
            .list_datasets()
            .unwrap()
            .to_string()
            .find("\"visits\"")
            .is_none(),
        "nothing was stored"
    );

    // A spend out of range: stored, quarantined (sealed) with the report rule by rule.
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let fields: Vec<&str> = lines[2].split(',').collect();
    lines[2] = format!(
        "{},{},{},{},-5.00",
        fields[0], fields[1], fields[2], fields[3]
    );
    let imported = import_with_rules(&env, &(lines.join("\n") + "\n"), Some(rules)).unwrap();
    let quality = &imported["quality"];
    assert_eq!(quality["quarantined"], true, "{quality}");
    let range = quality["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["check"] == "range")
        .unwrap();
    assert_eq!(range["failing_rows"], 1);
    assert_eq!(range["passed"], false);
    assert!(quality["score"].as_f64().unwrap() < 1.0);
    // No job reads it until an admin has looked and unsealed it.
    let (_, scenario) = w.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap();
    let held = w
        .scientist
        .submit_job(sid, PER_SPOT, &[])
        .unwrap_err()
        .to_string();
    assert!(held.contains("is quarantined"), "{held}");
    w.admin
        .ok(
            "POST",
            &format!(
                "/v1/datasets/{}/versions/1/unseal",
                imported["id"].as_str().unwrap()
            ),
            Some(&json!({ "reason": "one refund row, checked with the provider" })),
        )
        .unwrap();
    assert_eq!(job(&env, sid, PER_SPOT, &[])["state"], "succeeded");

    // A later version keeps the dataset's rules without naming them.
    let again = import_with_rules(&env, &good, None).unwrap();
    assert_eq!(again["quality"]["rules"].as_array().unwrap().len(), 3);
    assert_eq!(again["quality"]["score"], 1.0);
    assert!(again["quality"]["quarantined"].is_null());
}

#[test]
fn a_providers_contribution_report_shows_use_quality_and_the_fees_its_data_earned() {
    let env = setup(true);
    let w = &env.world;
    // One spend out of range, in a rule the provider declared to report only.
    let mut lines: Vec<String> = tidegate_server::visitor_csv(400)
        .lines()
        .map(str::to_string)
        .collect();
    let fields: Vec<&str> = lines[2].split(',').collect();
    lines[2] = format!(
        "{},{},{},{},-5.00",
        fields[0], fields[1], fields[2], fields[3]
    );
    let rules =
        json!([{ "column": "spend", "check": "range", "min": 0, "max": 800, "on_fail": "report" }]);
    import_with_rules(&env, &(lines.join("\n") + "\n"), Some(rules)).unwrap();
    // A commercial scenario pays for what it uses.
    let mut request = crate::common::scenario_request(false);
    request["public_interest"] = json!(false);
    let sid = crate::common::approved_scenario(w, &w.scientist, &request);
    let j = job(&env, &sid, PER_SPOT, &[]);
    assert_eq!(j["state"], "succeeded", "{j}");
    // The job records that it read rows failing a rule: named for the unit, never counted.
    let warning = j["quality_warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("visits version 1"), "{j}");
    assert!(
        !warning.chars().any(|c| c.is_ascii_digit() && c != '1'),
        "{warning}"
    );

    let now = time::OffsetDateTime::now_utc();
    let year = now.year();
    let report = w
        .provider
        .contribution_report(&w.provider_org, year)
        .unwrap();
    let visits = &report.datasets[0];
    assert_eq!(visits.name, "visits", "{report:?}");
    assert_eq!(visits.scenarios, 1);
    assert_eq!(visits.jobs, 1);
    assert!(visits.rows_scanned > 0);
    assert_eq!(visits.rule_failures, Some(1), "{visits:?}");
    assert_eq!(visits.rule_failures_read, 1, "{visits:?}");
    assert_eq!(
        visits.quality_score,
        Some(0.0),
        "its one rule failed: {visits:?}"
    );
    // The fees its data earned: the unit's charges for the scenario (one dataset granted, so
    // all of them), by category.
    let period = format!("{year}-{:02}", u8::from(now.month()));
    let statement = w.admin.statement(&w.operator_org, &period).unwrap();
    let security: i64 = statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["scenario"] == json!(sid) && l["category"] == "security_services")
        .map(|l| l["amount_fen"].as_i64().unwrap())
        .sum();
    assert!(security > 0, "{statement}");
    assert_eq!(visits.fees_fen["security_services"], security, "{visits:?}");
    assert!(visits.fees_total_fen >= security);
    assert_eq!(report.fees_total_fen, visits.fees_total_fen);
    // The authority reads it, as JSON and as a page; the unit does not.
    assert!(w.auditor.contribution_report(&w.provider_org, year).is_ok());
    let page = w
        .auditor
        .call(
            "GET",
            &format!(
                "/v1/reports/contribution?org={}&year={year}&format=html",
                w.provider_org
            ),
            None,
        )
        .unwrap();
    assert_eq!(page.status, 200);
    let hidden = w
        .scientist
        .contribution_report(&w.provider_org, year)
        .unwrap_err()
        .to_string();
    assert!(hidden.contains("(404)"), "{hidden}");
    let future = w
        .provider
        .contribution_report(&w.provider_org, year + 1)
        .unwrap_err()
        .to_string();
    assert!(future.contains("not a year"), "{future}");
}

#[test]
fn spans_of_requests_and_jobs_reach_an_opentelemetry_collector_without_tokens_or_values() {
    // The process's subscriber is global: this test has a process of its own.
    if !crate::common::in_a_process_of_its_own(
        "oversight::spans_of_requests_and_jobs_reach_an_opentelemetry_collector_without_tokens_or_values",
    ) {
        return;
    }
    let (collector, received) = http_sink(false);
    let tracing = tidegate_server::otel::install(Some(&collector)).unwrap();
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let j = job(&env, &sid, PER_SPOT, &[]);
    assert_eq!(j["state"], "succeeded", "{j}");
    w.scientist
        .call(
            "GET",
            &format!("/v1/jobs/{}?secret=x", j["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    // Dropping the tracing sends what waits.
    drop(tracing);
    let mut bodies = Vec::new();
    while let Ok(Delivery { path, body, .. }) = received.recv_timeout(Duration::from_secs(5)) {
        assert_eq!(path, "/v1/traces");
        bodies.push(body);
    }
    let all = serde_json::to_string(&bodies).unwrap();
    assert!(all.contains("resourceSpans"), "OTLP JSON: {all:.500}");
    assert!(
        all.contains("\"tidegate\""),
        "the service is named: {all:.500}"
    );
    for name in ["POST /v1/jobs", "GET /v1/jobs/{id}", "\"job\""] {
        assert!(all.contains(name), "a span {name}: {all:.2000}");
    }
    assert!(all.contains("http.route"), "{all:.2000}");
    // No token, no query string, no value of the data.
    assert!(!all.contains("secret=x"), "no query string");
    for client in [&w.scientist, &w.admin, &w.provider] {
        assert!(!all.contains(client.token().unwrap()), "no token");
    }
    assert!(!all.contains("West Lake"), "no value of the data");
}
