//! A job whose gate work needs more than its scenario's engine memory writes it to disk sealed,
//! never in plaintext, gives the result it would have given in memory, and leaves nothing
//! behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::common::{preview_of, setup};

const MARKER: &[u8] = b"ZQXMARKER";

/// Visits whose every subject id carries the marker: 20 spots, 30,000 visitors, 10 visits each.
fn marked_csv(rows: usize) -> String {
    let mut csv = String::from("visitor,spot,spend\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "ZQXMARKER{:06},spot {},{}.{:02}\n",
            (i * 7919) % 30_000,
            i % 20,
            i % 500,
            i % 100
        ));
    }
    csv
}

/// The bytes a job spilled, as the audit log keeps them for the authority.
fn exact_spill(env: &crate::common::Env, job: &str) -> u64 {
    let log =
        tidegate_runtime::read_audit_log(&env.data_dir().join(tidegate_runtime::AUDIT_FILE), None)
            .unwrap();
    let end = log
        .iter()
        .rev()
        .find(|e| e.object == job && e.detail["exact_resources"].is_object())
        .expect("the job's end is audited");
    end.detail["exact_resources"]["spilled_bytes"]
        .as_u64()
        .unwrap()
}

fn scenario(world: &tidegate_server::World, name: &str, rules: Value) -> String {
    let today = time::OffsetDateTime::now_utc().date();
    let applied = world
        .scientist
        .apply_scenario(&json!({
            "name": name,
            "key_area": "culture and tourism",
            "purpose": "visits and spending per spot",
            "grants": [{ "dataset": "marked", "columns": ["visitor", "spot", "spend"] }],
            "term_start": (today - time::Duration::days(1)).to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
            "export_rules": rules,
        }))
        .unwrap();
    let sid = applied["id"].as_str().unwrap().to_string();
    world.admin.approve_scenario(&sid).unwrap();
    let active = world.provider.approve_scenario(&sid).unwrap();
    assert_eq!(active["state"], "active", "{active}");
    sid
}

#[test]
fn a_gated_job_over_its_scenarios_memory_spills_sealed_gives_the_same_release_and_leaves_nothing() {
    let env = setup(true);
    env.world
        .provider
        .import_dataset(
            json!({
                "name": "marked", "level": "L2", "format": "csv",
                "columns": [
                    { "name": "visitor", "data_type": "utf8", "tags": ["entity"] },
                    { "name": "spot", "data_type": "utf8", "tags": ["dimension"] },
                    { "name": "spend", "data_type": "float64", "tags": ["sensitive"] },
                ],
            }),
            marked_csv(300_000).as_bytes(),
        )
        .unwrap();
    let small = scenario(&env.world, "Small budget", json!({ "job_memory_mib": 64 }));
    let roomy = scenario(&env.world, "Default budget", json!({}));
    let today = time::OffsetDateTime::now_utc().date();
    let refused = crate::common::refusal(env.world.scientist.apply_scenario(&json!({
        "name": "Too little memory",
        "key_area": "culture and tourism",
        "purpose": "visits per spot",
        "grants": [{ "dataset": "marked", "columns": ["visitor", "spot"] }],
        "term_start": today.to_string(),
        "term_end": (today + time::Duration::days(30)).to_string(),
        "export_rules": { "job_memory_mib": 1 },
    })));
    assert!(
        refused.contains("job_memory_mib must be from 64 to 16384"),
        "{refused}"
    );

    // While the job runs, everything under the spill directory is read, again and again.
    let spill = env.data_dir().join("spill");
    let done = Arc::new(AtomicBool::new(false));
    let (seen, leaked) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let watcher = {
        let (spill, done, seen, leaked) = (
            spill.clone(),
            Arc::clone(&done),
            Arc::clone(&seen),
            Arc::clone(&leaked),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                for dir in std::fs::read_dir(&spill).into_iter().flatten().flatten() {
                    for file in std::fs::read_dir(dir.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        if let Ok(bytes) = std::fs::read(file.path()) {
                            seen.fetch_add(1, Ordering::SeqCst);
                            if bytes.windows(MARKER.len()).any(|w| w == MARKER) {
                                leaked.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
            }
        })
    };
    let sql = "SELECT spot, count(*) AS n, sum(spend) AS total FROM marked GROUP BY spot";
    let spilled = crate::common::export_of(&env, &small, sql, &[]);
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let job = env
        .world
        .scientist
        .get_job(spilled["job"].as_str().unwrap())
        .unwrap();
    // Over L2 data the scientist is not told how much the job spilled; the audit log is.
    assert_eq!(job["resources"]["spilled_bytes"], 0, "{job}");
    assert!(
        exact_spill(&env, spilled["job"].as_str().unwrap()) > 0,
        "the 64 MiB budget made the job spill"
    );
    assert!(
        seen.load(Ordering::SeqCst) > 0,
        "the reader saw the spill's files while the job ran"
    );
    assert!(
        !leaked.load(Ordering::SeqCst),
        "a spill file held a subject's id in plaintext ({} reads)",
        seen.load(Ordering::SeqCst)
    );
    let left: Vec<_> = std::fs::read_dir(&spill)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(left.is_empty(), "the job left {left:?}");

    let in_memory = crate::common::export_of(&env, &roomy, sql, &[]);
    assert_eq!(exact_spill(&env, in_memory["job"].as_str().unwrap()), 0);
    // The same rows (in whatever order the query, with no ORDER BY, gives them).
    let sorted = |export: &Value| {
        let mut lines: Vec<String> = preview_of(&env, export).lines().map(String::from).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&spilled), sorted(&in_memory));
    assert_eq!(sorted(&spilled).len(), 21);
}
