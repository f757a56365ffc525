//! Red team round 2 (the job queue, streaming imports). Each test asserts the SAFE behaviour:
//! a failing test is a finding.
//!
//! Round 2 found two (a new version leaving out the protected entity column; a CSV of another
//! delimiter read as one column) and noted a third (one org could hold every worker): fixed by
//! construction (a new version keeps every protected column; a header holding `;` or `|` is
//! refused with the reason; while other orgs wait an org runs at most half the workers), and an
//! unpinned grant never reads a unit's data awaiting approval.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidegate_server::Client;

use crate::common;
use crate::common::{
    DEMO_SQL, Env, OUT_DATA, active_scenario, json_of, outsider, raw, scalar_module, setup,
    spinning_module, target,
};

const SPIN_SQL: &str = "SELECT spot, sum(spin(length(spot))) FROM visits GROUP BY spot";

fn id(job: &Value) -> String {
    job["id"].as_str().unwrap().to_string()
}

fn approve(env: &Env, sid: &str, wasm: &[u8]) -> String {
    let m = env.world.scientist.upload_module(sid, wasm).unwrap();
    let h = m["hash"].as_str().unwrap().to_string();
    env.world
        .reviewer
        .approve_module(sid, &h, "test module")
        .unwrap();
    h
}

fn until(client: &Client, id: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let job = client.ok("GET", &format!("/v1/jobs/{id}"), None).unwrap();
        if ok(&job) || Instant::now() > deadline {
            return job;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- 1. cross-org and cross-role -----

#[test]
fn other_orgs_and_roles_learn_nothing_of_a_job_and_cancel_none() {
    let (env, sid, _) = active_scenario();
    let spin = approve(&env, &sid, &spinning_module());
    let s = &env.world.scientist;
    let job = id(&s
        .enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin))
        .unwrap());
    until(s, &job, 20, |j| j["state"] == "running");
    let missing = "job_00000000000000000000000000000000";
    let (stranger, _, _) = outsider(&env.world, "other-unit", "operator", &["scientist"]);
    let (prov2, _, _) = outsider(&env.world, "other-prov", "provider", &["provider"]);
    for (who, c) in [
        ("stranger", &stranger),
        ("provider2", &prov2),
        ("provider", &env.world.provider),
    ] {
        for (method, path) in [
            ("GET", format!("/v1/jobs/{job}")),
            ("POST", format!("/v1/jobs/{job}/cancel")),
        ] {
            let real = c.call(method, &path, None).unwrap();
            let fake = c.call(method, &path.replace(&job, missing), None).unwrap();
            assert_eq!(
                real.status, fake.status,
                "{who} {method} {path}: {:?}",
                real.body
            );
            assert_eq!(
                real.body["message"].as_str().map(|m| m.replace(&job, "X")),
                fake.body["message"]
                    .as_str()
                    .map(|m| m.replace(missing, "X")),
                "{who} {method} {path}: existence differs"
            );
            assert!(
                !(200..300).contains(&real.status),
                "{who} {method} {path}: {:?}",
                real.body
            );
        }
    }
    // The authority's reviewer and auditor oversee, but never cancel.
    for c in [&env.world.reviewer, &env.world.auditor] {
        assert!(c.cancel_job(&job).is_err());
    }
    assert_eq!(
        s.ok("GET", &format!("/v1/jobs/{job}"), None).unwrap()["state"],
        "running"
    );
    env.world.admin.cancel_job(&job).unwrap();
}

// ----- 2. a job over a new, unapproved version of social data -----

#[test]
fn a_job_never_reads_a_new_version_of_social_data_awaiting_approval() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let request = json!({
        "name": "members", "level": "L1", "format": "csv",
        "columns": [{ "name": "member_id", "tags": ["entity"] }, { "name": "tier", "tags": ["dimension"] }],
    });
    let first = w
        .scientist
        .import_dataset(
            request.clone(),
            b"member_id,tier\nm1,gold\nm2,silver\nm3,gold\n",
        )
        .unwrap();
    w.admin
        .approve_dataset(first["id"].as_str().unwrap())
        .unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let applied = w
        .scientist
        .apply_scenario(&json!({
            "name": "Tiers", "key_area": "culture and tourism", "purpose": "tiers", "public_interest": true,
            "grants": [{ "dataset": "members", "columns": ["member_id", "tier"] }],
            "term_start": today.to_string(), "term_end": (today + time::Duration::days(30)).to_string(),
        }))
        .unwrap();
    let sid = applied["id"].as_str().unwrap().to_string();
    let active = w.admin.approve_scenario(&sid).unwrap();
    assert_eq!(active["state"], "active", "{active}");
    let sql = "SELECT tier, count(*) AS n FROM members GROUP BY tier";
    let before = w.scientist.submit_job(&sid, sql, &[]).unwrap();
    assert_eq!(before["state"], "succeeded", "{before}");
    // Version 2: five tiers no admin has seen.
    let mut csv = String::from("member_id,tier\n");
    for t in ["a", "b", "c", "d", "e"] {
        csv.push_str(&format!("x{t},{t}\n"));
    }
    let v2 = w.scientist.import_dataset(request, csv.as_bytes()).unwrap();
    assert_eq!(v2["pending"], true, "{v2}");
    let after = w.scientist.submit_job(&sid, sql, &[]).unwrap();
    assert!(
        after["state"] != "succeeded" || after["rows"] == before["rows"],
        "a job read version 2 of social data awaiting an admin's approval: before {before}, after {after}"
    );
}

// ----- 3. the job's state over time as an unrationed oracle over L2 data -----

/// `probe(int64) -> int64`: spins forever if any input equals `c`, else returns 0.
fn probe_module(c: i64) -> Vec<u8> {
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (if (i64.eq (i64.load (i32.add (call $src (local.get $b)) (i32.mul (local.get $i) (i32.const 8)))) (i64.const {c}))
                (then (loop $spin (br $spin))))
            (i64.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8))) (i64.const 0))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    scalar_module("probe", "int64) -> int64", &body, "")
}

#[test]
fn a_jobs_state_after_a_second_is_no_unrationed_membership_oracle_over_l2() {
    let (env, sid, _) = active_scenario();
    let s = &env.world.scientist;
    let who: i64 = target()[..17].parse().unwrap();
    let nobody: i64 = 11_000_019_000_101_000; // not a resident of the data
    let mut seen = Vec::new();
    let modules: Vec<(i64, String)> = [who, nobody]
        .into_iter()
        .map(|c| (c, approve(&env, &sid, &probe_module(c))))
        .collect();
    // Many more probes than the ration of withheld failures (three) allows.
    for _round in 0..3 {
        for (c, probe) in modules.iter().cloned() {
            let sql = "SELECT spot, sum(probe(CAST(substr(resident_id, 1, 17) AS BIGINT))) AS p FROM visits GROUP BY spot";
            let j = match s.enqueue_job(&sid, sql, std::slice::from_ref(&probe)) {
                Ok(j) => j,
                Err(e) => {
                    seen.push((c, format!("refused: {e}")));
                    continue;
                }
            };
            let jid = id(&j);
            std::thread::sleep(Duration::from_millis(2500));
            let now = s.ok("GET", &format!("/v1/jobs/{jid}"), None).unwrap();
            let state = now["state"].as_str().unwrap().to_string();
            if state == "running" || state == "queued" {
                // Ends it before its spin is counted as a data-dependent failure.
                let _ = s.cancel_job(&jid);
            }
            until(s, &jid, 30, |j| {
                j["state"] != "running" && j["state"] != "queued"
            });
            seen.push((c, state));
        }
        let scenario = common::show_scenario(&env, &sid);
        if scenario["state"] != "active" {
            seen.push((0, format!("scenario {}", scenario["state"])));
            break;
        }
    }
    eprintln!("SEEN {seen:?}");
    let present: Vec<&String> = seen
        .iter()
        .filter(|(c, _)| *c == who)
        .map(|(_, s)| s)
        .collect();
    let absent: Vec<&String> = seen
        .iter()
        .filter(|(c, _)| *c == nobody)
        .map(|(_, s)| s)
        .collect();
    let distinguished = present.iter().zip(&absent).filter(|(p, a)| p != a).count();
    assert!(
        distinguished <= 3,
        "membership of one resident read {distinguished} times without the ration stopping it: {seen:?}"
    );
}

// ----- 4. imports -----

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn files(env: &Env) -> Vec<String> {
    let mut v = Vec::new();
    walk(&env.data_dir(), &mut v);
    let mut v: Vec<String> = v
        .into_iter()
        .map(|p| p.display().to_string())
        .filter(|p| {
            !p.ends_with("-wal")
                && !p.ends_with("-shm")
                && !p.contains("audit")
                && !p.ends_with(".db")
                && !p.ends_with(".lock")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn an_upload_cut_off_midway_leaves_no_file_and_no_dataset() {
    let env = setup(true);
    let w = &env.world;
    let before = files(&env);
    let token = w.provider.token().unwrap().to_string();
    let url = w.admin.url().to_string();
    let head = format!(
        "POST /v1/datasets/upload?name=cutoff&level=L1&format=csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n"
    );
    let _ = raw(&url, head.as_bytes(), &|s| {
        let mut body = b"payer,amount\n".to_vec();
        while body.len() < 3 << 20 {
            body.extend_from_slice(b"P0001,12\n");
        }
        let _ = s.write_all(&body);
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    std::thread::sleep(Duration::from_millis(1500));
    let after = files(&env);
    assert_eq!(before, after, "files left behind by a cut-off upload");
    let listed = w.provider.ok("GET", "/v1/datasets", None).unwrap();
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "cutoff"),
        "{listed}"
    );
    // The name is free again.
    w.provider
        .import_dataset(
            json!({"name": "cutoff", "level": "L1", "format": "csv"}),
            b"payer,amount\nP1,1\n",
        )
        .unwrap();
}

#[test]
fn hostile_upload_parameters_are_refused_in_the_apis_format_and_the_server_lives() {
    let env = setup(true);
    let w = &env.world;
    let token = w.provider.token().unwrap().to_string();
    let url = w.admin.url().to_string();
    let huge = format!(
        "[{}]",
        (0..20_000)
            .map(|i| format!(r#"{{"name":"c{i}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let cases: Vec<(&str, String)> = vec![
        ("unknown level", "name=a&level=L9&format=csv".into()),
        ("no level", "name=a&format=csv".into()),
        (
            "dots",
            format!("name={}&level=L1&format=csv", enc("../../etc")),
        ),
        ("nul", "name=a%00b&level=L1&format=csv".into()),
        (
            "unicode",
            format!("name={}&level=L1&format=csv", enc("naïve")),
        ),
        ("format", "name=a&level=L1&format=xlsx".into()),
        (
            "columns not json",
            "name=a&level=L1&format=csv&columns=%7B".into(),
        ),
        (
            "approvers object",
            format!("name=a&level=L1&format=csv&approvers={}", enc("{\"a\":1}")),
        ),
        (
            "huge columns",
            format!("name=a&level=L1&format=csv&columns={}", enc(&huge)),
        ),
        (
            "deep columns",
            format!("name=a&level=L1&format=csv&columns={}", enc(&deep)),
        ),
        (
            "duplicated name",
            "name=a&name=b&level=L1&format=csv".into(),
        ),
        ("L4", "name=a&level=L4&format=csv".into()),
    ];
    for (what, q) in cases {
        let body = "payer,amount\nP1,1\n";
        let req = format!(
            "POST /v1/datasets/upload?{q} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(&url, req.as_bytes(), &|_| {});
        let status = answer.split(' ').nth(1).unwrap_or("").to_string();
        assert!(
            status.starts_with('4'),
            "{what}: {}",
            &answer[..answer.len().min(400)]
        );
        if status != "414" && status != "431" {
            let j = json_of(&answer).unwrap_or(Value::Null);
            assert!(
                j["error"].is_string() && j["message"].is_string(),
                "{what}: {}",
                &answer[..answer.len().min(400)]
            );
        }
        assert!(
            w.provider.ok("GET", "/v1/datasets", None).is_ok(),
            "{what}: server broke"
        );
    }
    let listed = w.provider.ok("GET", "/v1/datasets", None).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["name"] != "a" && d["name"] != "b"),
        "{listed}"
    );
}

fn csv_import(env: &Env, name: &str, csv: &[u8]) -> anyhow::Result<Value> {
    env.world
        .provider
        .import_dataset(json!({"name": name, "level": "L1", "format": "csv"}), csv)
}

#[test]
fn csv_quirks_are_refused_or_read_exactly() {
    let env = setup(true);
    // Two columns named alike.
    assert!(
        csv_import(&env, "dup", b"payer,payer\nP1,P2\n").is_err(),
        "duplicate headers imported"
    );
    assert!(
        csv_import(&env, "dupcase", b"payer,PAYER\nP1,P2\n").is_err(),
        "case twins imported"
    );
    // A header and nothing else.
    assert!(
        csv_import(&env, "empty", b"payer,amount\n").is_err(),
        "a header-only file imported"
    );
    assert!(
        csv_import(&env, "nothing", b"").is_err(),
        "an empty file imported"
    );
    // A byte order mark: never part of the first column's name.
    if let Ok(d) = csv_import(&env, "bom", "\u{feff}payer,amount\nP1,1\n".as_bytes()) {
        let names: Vec<String> = d["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains('\u{feff}')),
            "BOM kept in a column name: {names:?}"
        );
    }
    // Another delimiter: never one column named `payer;amount`.
    if let Ok(d) = csv_import(&env, "semi", b"payer;amount\nP1;1\n") {
        let names: Vec<String> = d["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert!(names.iter().all(|n| !n.contains(';')), "{names:?}");
    }
    // A quoted newline is one value, not two rows.
    let d = csv_import(&env, "quoted", b"payer,note\nP1,\"two\nlines\"\nP2,plain\n").unwrap();
    assert_eq!(d["rows"], 2, "{d}");
    // Ragged rows are refused, not padded or cut.
    assert!(
        csv_import(&env, "ragged", b"payer,amount\nP1,1,extra\nP2\n").is_err(),
        "ragged rows imported"
    );
    assert!(env.world.provider.ok("GET", "/v1/datasets", None).is_ok());
}

#[test]
fn two_uploads_of_one_name_racing_make_one_dataset_with_consecutive_versions() {
    let env = setup(true);
    let w = &env.world;
    let big: String = std::iter::once("payer,amount\n".to_string())
        .chain((0..200_000).map(|i| format!("P{i},{i}\n")))
        .collect();
    let results: Vec<anyhow::Result<Value>> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|k| {
                let c = if k % 2 == 0 {
                    w.provider.clone()
                } else {
                    w.scientist.clone()
                };
                let big = &big;
                scope.spawn(move || {
                    c.import_dataset(
                        json!({"name": "raced", "level": "L2", "format": "csv"}),
                        big.as_bytes(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Value> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!ok.is_empty(), "{results:?}");
    let orgs: std::collections::HashSet<&str> = ok
        .iter()
        .map(|d| d["provider_org"].as_str().unwrap())
        .collect();
    assert_eq!(orgs.len(), 1, "one name, two orgs' data: {ok:?}");
    let ids: std::collections::HashSet<&str> =
        ok.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{ok:?}");
    let mut versions: Vec<i64> = ok.iter().map(|d| d["version"].as_i64().unwrap()).collect();
    versions.sort();
    assert_eq!(
        versions,
        (1..=versions.len() as i64).collect::<Vec<_>>(),
        "{results:?}"
    );
}

/// A new version may not drop a protective tag (it would apply to older versions scenarios
/// are pinned to); dropping the tagged column altogether does the same.
#[test]
fn a_new_version_without_the_entity_column_is_refused() {
    let env = setup(true);
    let w = &env.world;
    let v1 = w
        .provider
        .import_dataset(
            json!({"name": "payments", "level": "L2", "format": "csv",
                   "columns": [{"name": "payer", "tags": ["entity"]}, {"name": "region", "tags": ["dimension"]}]}),
            b"payer,region,amount\nP1,n,1\nP2,s,2\n",
        )
        .unwrap();
    assert_eq!(v1["version"], 1);
    let v2 = w.provider.import_dataset(
        json!({"name": "payments", "level": "L2", "format": "csv",
               "columns": [{"name": "region", "tags": ["dimension"]}]}),
        b"region,amount\nn,1\ns,2\n",
    );
    assert!(
        v2.is_err(),
        "version 2 dropped the entity column and with it the tag: {v2:?}"
    );
}

#[test]
fn a_queued_job_of_a_suspended_scenario_does_not_run_after_it_is_resumed_without_a_recheck() {
    // Suspend and resume while a job waits: it runs only if every check still holds; a job
    // queued before a revoke never runs.
    let (env, sid, hash) = active_scenario();
    let spin = approve(&env, &sid, &spinning_module());
    let s = &env.world.scientist;
    let busy: Vec<String> = (0..2)
        .map(|_| {
            id(&s
                .enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin))
                .unwrap())
        })
        .collect();
    for b in &busy {
        until(s, b, 20, |j| j["state"] == "running");
    }
    let waiting = id(&s
        .enqueue_job(&sid, DEMO_SQL, std::slice::from_ref(&hash))
        .unwrap());
    env.world.admin.change_scenario(&sid, "revoke").unwrap();
    for b in &busy {
        let _ = env.world.admin.cancel_job(b);
    }
    let end = until(s, &waiting, 60, |j| {
        j["state"] != "queued" && j["state"] != "running"
    });
    assert_eq!(end["state"], "failed", "{end}");
    for b in &busy {
        let e = until(s, b, 30, |j| j["state"] != "running");
        assert_eq!(e["state"], "failed", "{e}");
    }
}
