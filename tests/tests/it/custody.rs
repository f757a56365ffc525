//! Custody of a dataset version: the authority's admins seal it (kept, and no job reads it),
//! unseal it, or destroy it (key and file; the scenarios pinned to it suspended), each with a
//! record signed by the platform.

use tidegate_runtime::PUBLIC_KEY_FILE;

use crate::common::{active_scenario, job};
use crate::console::{Browser, token};

const SQL: &str = "SELECT spot, count(*) AS n FROM visits GROUP BY spot";

fn platform_key(env: &crate::common::Env) -> Vec<u8> {
    let text = std::fs::read_to_string(env.data_dir().join(PUBLIC_KEY_FILE)).unwrap();
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn verifies(env: &crate::common::Env, signed: &tidegate_runtime::CustodyRecord) {
    tidegate_runtime::verify_document(&signed.record, &signed.signature, &platform_key(env))
        .unwrap();
}

#[test]
fn a_sealed_version_is_kept_and_read_by_no_job_until_it_is_unsealed() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    assert_eq!(job(&env, &sid, SQL, &[])["state"], "succeeded");
    // Only the authority's admins keep custody, and always with a reason.
    for who in [&w.provider, &w.scientist, &w.reviewer] {
        let e = who
            .dataset_custody("visits", 1, "seal", "inspection")
            .unwrap_err()
            .to_string();
        assert!(e.contains("(403)"), "{e}");
    }
    let e = w
        .admin
        .dataset_custody("visits", 1, "seal", " ")
        .unwrap_err()
        .to_string();
    assert!(e.contains("reason"), "{e}");

    let sealed = w
        .admin
        .dataset_custody("visits", 1, "seal", "a complaint is under inspection")
        .unwrap();
    assert_eq!(sealed.record.format, "tidegate-sealing-record-v1");
    assert_eq!(sealed.record.version, 1);
    verifies(&env, &sealed);
    let refused = refused(&env, &sid);
    assert!(
        refused.contains("(403)") && refused.contains("sealed"),
        "{refused}"
    );
    let mock = w
        .scientist
        .mock_dataset(&sid, "visits", 10, 0)
        .unwrap_err()
        .to_string();
    assert!(
        mock.contains("sealed"),
        "no mock of a sealed version: {mock}"
    );
    let twice = w
        .admin
        .dataset_custody("visits", 1, "seal", "again")
        .unwrap_err()
        .to_string();
    assert!(twice.contains("sealed already"), "{twice}");

    let unsealed = w
        .admin
        .dataset_custody("visits", 1, "unseal", "the inspection found nothing")
        .unwrap();
    verifies(&env, &unsealed);
    assert_eq!(job(&env, &sid, SQL, &[])["state"], "succeeded");
}

#[test]
fn a_destroyed_version_loses_its_key_and_file_and_suspends_the_scenarios_pinned_to_it() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let datasets = env.data_dir().join("objects").join("datasets");
    let files_before = walk(&env.data_dir());
    let destroyed = w
        .admin
        .dataset_custody("visits", 1, "destroy", "the retention period ended")
        .unwrap();
    let certificate = &destroyed.record;
    assert_eq!(certificate.format, "tidegate-destruction-certificate-v1");
    assert_eq!(
        certificate.scenarios_suspended.as_deref(),
        Some(&[sid.clone()][..])
    );
    verifies(&env, &destroyed);
    // The version's file is gone from the data directory.
    let files_after = walk(&env.data_dir());
    let gone: Vec<_> = files_before
        .iter()
        .filter(|f| !files_after.contains(f))
        .collect();
    assert!(
        gone.iter()
            .any(|f| f.contains("datasets") && f.contains("v1")),
        "the version's file was deleted: {gone:?} (under {})",
        datasets.display()
    );
    // Its scenario is suspended; nothing reads the version again.
    let scenario = w
        .scientist
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    assert_eq!(scenario["state"], "suspended");
    // Resumed by an admin, it still reads the destroyed version: refused.
    w.admin.change_scenario(&sid, "resume").unwrap();
    let refused = refused(&env, &sid);
    assert!(refused.contains("destroyed"), "{refused}");
    for action in ["seal", "destroy", "unseal"] {
        let e = w
            .admin
            .dataset_custody("visits", 1, action, "again")
            .unwrap_err()
            .to_string();
        assert!(e.contains("destroyed"), "{action}: {e}");
    }
}

/// A job's submission, refused: the answer.
fn refused(env: &crate::common::Env, sid: &str) -> String {
    env.world
        .scientist
        .submit_job(sid, SQL, &[])
        .unwrap_err()
        .to_string()
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn a_provider_and_an_admin_inspect_a_sample_and_no_one_else_does() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let sample = w.provider.sample_dataset("visits", 1, 7).unwrap();
    assert_eq!(sample["rows"].as_array().unwrap().len(), 7);
    assert_eq!(
        sample["columns"],
        serde_json::json!(["resident_id", "mobile", "spot", "visit_date", "spend"])
    );
    let from_admin = w.admin.sample_dataset("visits", 1, 3).unwrap();
    assert_eq!(from_admin["rows"].as_array().unwrap().len(), 3);
    // A unit's scientist (granted the dataset) and a reviewer do not; sizes are the policy's.
    for who in [&w.scientist, &w.reviewer] {
        let e = who.sample_dataset("visits", 1, 5).unwrap_err().to_string();
        assert!(e.contains("(403)"), "{e}");
    }
    let e = w
        .provider
        .sample_dataset("visits", 1, 101)
        .unwrap_err()
        .to_string();
    assert!(e.contains("from 1 to 100"), "{e}");
    // The console shows the provider a sample on a page of its own; the scientist is refused.
    let mut provider = Browser::new(w.provider.url());
    provider.sign_in(&token(&w.provider));
    let page = provider.get("/console/datasets/visits/versions/1/sample?rows=4");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("4 random rows"), "{}", page.body);
    assert_eq!(
        page.body.matches("<tr>").count(),
        5,
        "a header and four rows"
    );
    let mut scientist = Browser::new(w.scientist.url());
    scientist.sign_in(&token(&w.scientist));
    let refused = scientist.get("/console/datasets/visits/versions/1/sample");
    assert_eq!(refused.status, 403, "{}", refused.body);
    // A sealed version is kept for inspection; a destroyed one has nothing to show.
    w.admin
        .dataset_custody("visits", 1, "seal", "inspection")
        .unwrap();
    assert!(w.provider.sample_dataset("visits", 1, 2).is_ok());
    w.admin
        .dataset_custody("visits", 1, "destroy", "retention ended")
        .unwrap();
    let e = w
        .provider
        .sample_dataset("visits", 1, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("destroyed"), "{e}");
    let _ = sid;
}
