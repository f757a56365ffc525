//! The job queue: a job is accepted at once and run by the server's workers, in turn by org;
//! a queued or running job can be cancelled by its unit, never by another.

use std::time::{Duration, Instant};

use serde_json::Value;
use tidegate_server::Client;

use crate::common::{DEMO_SQL, Env, active_scenario, outsider, spinning_module};

const SPIN_SQL: &str = "SELECT spot, sum(spin(length(spot))) FROM visits GROUP BY spot";

/// Approves the spinning module in the scenario; its hash.
fn approve_spinner(env: &Env, sid: &str) -> String {
    let module = env
        .world
        .scientist
        .upload_module(sid, &spinning_module())
        .unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    env.world
        .reviewer
        .approve_module(sid, &hash, "spin: test module")
        .unwrap();
    hash
}

/// Follows `id` until `ok` holds of it; panics after 20 s.
fn until(client: &Client, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = client.ok("GET", &format!("/v1/jobs/{id}"), None).unwrap();
        if ok(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "still {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn id(job: &Value) -> String {
    job["id"].as_str().unwrap().to_string()
}

#[test]
fn a_job_is_accepted_at_once_waits_its_turn_and_is_cancelled_by_its_unit_only() {
    let (env, sid, hash) = active_scenario();
    let spin = approve_spinner(&env, &sid);
    let scientist = &env.world.scientist;
    // Two spinning jobs take both workers; the answers come at once, the jobs not yet done.
    let a = scientist
        .enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin))
        .unwrap();
    let b = scientist
        .enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin))
        .unwrap();
    for job in [&a, &b] {
        assert!(
            matches!(job["state"].as_str(), Some("queued" | "running")),
            "{job}"
        );
    }
    let (a, b) = (id(&a), id(&b));
    for job in [&a, &b] {
        until(scientist, job, |j| j["state"] == "running");
    }
    // A running job shows how far it has read, in whole tens over L2 data, under 100.
    let progress = until(scientist, &a, |j| j["progress_percent"].is_u64());
    let percent = progress["progress_percent"].as_u64().unwrap();
    assert!(percent < 100 && percent % 10 == 0, "{progress}");
    // A third waits in the queue while both run.
    let c = id(&scientist
        .enqueue_job(&sid, DEMO_SQL, std::slice::from_ref(&hash))
        .unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        scientist.ok("GET", &format!("/v1/jobs/{c}"), None).unwrap()["state"],
        "queued"
    );

    // Another unit's scientist sees none of them and cancels none.
    let (stranger, _, _) = outsider(&env.world, "Other Unit", "operator", &["scientist"]);
    let refused = stranger.cancel_job(&a).unwrap_err().to_string();
    assert!(refused.contains("not found"), "{refused}");

    // Cancelled while queued: it never runs.
    let cancelled = scientist.cancel_job(&c).unwrap();
    assert_eq!(cancelled["state"], "failed");
    assert_eq!(cancelled["error"], "cancelled before it started");
    // Cancelled while running: it stops at once, failed, and says so.
    let started = Instant::now();
    scientist.cancel_job(&a).unwrap();
    let stopped = until(scientist, &a, |j| j["state"] == "failed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stopped["error"]
            .as_str()
            .unwrap()
            .contains("the job was cancelled"),
        "{stopped}"
    );
    // The authority's admin stops the other (a risk stop).
    env.world.admin.cancel_job(&b).unwrap();
    until(scientist, &b, |j| j["state"] == "failed");
    // A finished job stays as it ended.
    let again = scientist.cancel_job(&a).unwrap_err().to_string();
    assert!(again.contains("the job has already failed"), "{again}");

    // The workers are free again: a job runs to its end.
    let done = scientist
        .submit_job(&sid, DEMO_SQL, std::slice::from_ref(&hash))
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[test]
fn a_job_queued_before_its_scenario_is_suspended_is_refused_when_it_comes_to_start() {
    let (env, sid, hash) = active_scenario();
    let spin = approve_spinner(&env, &sid);
    let scientist = &env.world.scientist;
    let busy: Vec<String> = (0..2)
        .map(|_| {
            id(&scientist
                .enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin))
                .unwrap())
        })
        .collect();
    for job in &busy {
        until(scientist, job, |j| j["state"] == "running");
    }
    let waiting = id(&scientist
        .enqueue_job(&sid, DEMO_SQL, std::slice::from_ref(&hash))
        .unwrap());
    // Suspending cancels the running jobs; the queued one is checked again when it starts.
    env.world.admin.change_scenario(&sid, "suspend").unwrap();
    let ended = until(scientist, &waiting, |j| j["state"] != "queued");
    let ended = until(scientist, &id(&ended), |j| j["state"] != "running");
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .starts_with("refused when it came to start"),
        "{ended}"
    );
}

#[test]
fn one_unit_cannot_fill_the_queue() {
    let (env, sid, _) = active_scenario();
    let spin = approve_spinner(&env, &sid);
    let scientist = &env.world.scientist;
    let mut accepted = Vec::new();
    let mut refused = None;
    for _ in 0..40 {
        match scientist.enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin)) {
            Ok(job) => accepted.push(id(&job)),
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("a flood is refused");
    assert!(
        refused.contains("the most the queue holds for one unit"),
        "{refused}"
    );
    // 32 waiting, and the (at most two) the workers had taken already.
    assert!((32..=34).contains(&accepted.len()), "{}", accepted.len());
    for job in &accepted {
        let _ = scientist.cancel_job(job);
    }
}

#[test]
fn revoking_a_modules_approval_stops_its_running_and_queued_jobs() {
    let (env, sid, _) = active_scenario();
    let spin = approve_spinner(&env, &sid);
    let scientist = &env.world.scientist;
    let jobs: Vec<String> = (0..3)
        .map(|_| {
            id(&scientist
                .enqueue_job(&sid, SPIN_SQL, std::slice::from_ref(&spin))
                .unwrap())
        })
        .collect();
    // Two run (the server's two workers), the third waits.
    until(scientist, &jobs[0], |j| j["state"] == "running");
    until(scientist, &jobs[1], |j| j["state"] == "running");
    env.world
        .reviewer
        .revoke_module(&sid, &spin, "spins without end")
        .unwrap();
    for job in &jobs {
        let ended = until(scientist, job, |j| {
            !matches!(j["state"].as_str(), Some("queued" | "running"))
        });
        assert_eq!(ended["state"], "failed", "{ended}");
        assert!(
            ended["error"]
                .as_str()
                .is_some_and(|e| e.contains("cancelled") || e.contains("revoked")),
            "{ended}"
        );
    }
}
