//! The console's review story in a real browser: headless Chromium (Debian's package) driven
//! through ChromeDriver by `tests/browser/review_story.py`. `scripts/test` installs both
//! (`scripts/install-test-tools`) and requires the test to run; a plain `cargo test` without
//! them says so and skips it.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use serde_json::{Value, json};

/// Where Selenium is installed, or None where the browser is not (a plain `cargo test`).
fn selenium() -> Option<String> {
    python_tools()
}

fn exported(env: &Env, sid: &str, module: &str) -> String {
    let e = export_of(env, sid, DEMO_SQL, &[module.to_string()]);
    assert_eq!(e["state"], "in_review", "{e}");
    e["id"].as_str().unwrap().to_string()
}

/// Runs `steps` of the story in Chromium; panics with what the browser saw when one fails.
fn in_chromium(selenium: &str, story: &Value, steps: &[&str]) {
    let mut story = story.clone();
    story["steps"] = json!(steps);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/review_story.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(story.to_string())
        .env("PYTHONPATH", selenium)
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "the story in Chromium ({steps:?}):\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn a_returned_export_is_amended_and_approved_by_a_second_reviewer_and_an_admin_approves_a_scenario_in_chromium()
 {
    let Some(selenium) = selenium() else {
        return;
    };
    let (env, sid, module) = active_scenario();
    let w = &env.world;
    let returned = exported(&env, &sid, &module);
    let tampered = exported(&env, &sid, &module);
    let (second_reviewer, _, _) = outsider(w, "second-review-office", "authority", &["reviewer"]);
    let (stranger, _, _) = outsider(w, "other-analytics", "operator", &["scientist"]);
    let applied = w
        .scientist
        .apply_scenario(&scenario_request(false))
        .unwrap();
    let pending = applied["id"].as_str().unwrap().to_string();
    // A test artifact, in the target directory's folder for them.
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-review-page.png");
    let mut story = json!({
        "url": w.admin.url(),
        "reviewer": w.reviewer.token().unwrap(),
        "second_reviewer": second_reviewer.token().unwrap(),
        "admin": w.admin.token().unwrap(),
        "outsider": stranger.token().unwrap(),
        "returned": returned,
        "tampered": tampered,
        "scenario": pending,
        "screenshot": screenshot,
    });
    in_chromium(&selenium, &story, &["return"]);
    // The scientist answers the returned request with a new job's result, linked to it.
    let job = job(&env, &sid, DEMO_SQL, std::slice::from_ref(&module));
    let amended = w
        .scientist
        .request_export_with(job["id"].as_str().unwrap(), None, Some(&returned))
        .unwrap();
    assert_eq!(amended["amends"], returned.as_str(), "{amended}");
    story["amended"] = amended["id"].clone();
    in_chromium(
        &selenium,
        &story,
        &["approve_amended", "approve_scenario", "outsider"],
    );

    // What the pages did, as the API tells it.
    let state = |id: &str| -> Value { seen_by_reviewer(&env, &json!({ "id": id })) };
    let r = state(&returned);
    assert_eq!(r["state"], "returned", "{r}");
    assert_eq!(r["amended_by"], amended["id"], "{r}");
    assert!(
        r.to_string()
            .contains("Please explain why the age column is needed")
    );
    assert_eq!(state(amended["id"].as_str().unwrap())["state"], "approved");
    assert_eq!(
        state(&tampered)["state"],
        "in_review",
        "the forged form changed nothing"
    );
    let s = w
        .admin
        .ok("GET", &format!("/v1/scenarios/{pending}"), None)
        .unwrap();
    assert!(
        s["approvals"].as_array().is_some_and(|a| !a.is_empty()),
        "{s}"
    );
    let png = std::fs::read(&screenshot).expect("the review page's screenshot is kept");
    assert!(
        png.starts_with(b"\x89PNG"),
        "a PNG at {}",
        screenshot.display()
    );
    eprintln!("the review page: {}", screenshot.display());
}
