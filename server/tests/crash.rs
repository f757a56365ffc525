//! Crash safety: the real `tidegate` binary is killed with SIGKILL at seeded random points while
//! it imports, runs jobs, writes results, reviews, releases and appends to the audit log, and
//! while it rotates the master key. After every kill the data directory must open, every
//! acknowledged action must be there, every stored object must decrypt, the audit chain must
//! verify, and no temporary file may be left visible.
//!
//! `TIDEGATE_CRASH_ITERATIONS` sets the number of kills (default 24); `TIDEGATE_CRASH_SEED`
//! the seed (default 1).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidegate_policy::{ExportState, JobState};
use tidegate_runtime::{MasterKey, Platform};
use tidegate_server::{Client, World, visitor_csv};

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running `tidegate serve` on a free loopback port.
struct Server {
    child: Child,
    url: String,
}

fn serve(data: &Path, key: &Path) -> Server {
    serve_with(data, key, &[])
}

fn serve_with(data: &Path, key: &Path, more: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--master-key")
        .arg(key)
        .args(more)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server says where it listens")
            .expect("utf-8");
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

/// What the server acknowledged before it was killed.
#[derive(Debug, Clone)]
enum Ack {
    Import(i64),
    Active(String),
    /// A job the server accepted: after a kill it is queued or ended, never `running`.
    Accepted(String),
    Job(String),
    Export(String),
    Approved(String),
    Released(String),
}

/// The story's principals pointed at another address.
fn retarget(w: &World, url: &str) -> World {
    let at = |c: &Client| Client::new(url, c.token());
    World {
        admin: at(&w.admin),
        provider: at(&w.provider),
        scientist: at(&w.scientist),
        reviewer: at(&w.reviewer),
        auditor: at(&w.auditor),
        ..w.clone()
    }
}

/// Acts until the server stops answering, recording each acknowledged action.
fn drive(w: &World, acks: &Mutex<Vec<Ack>>, bundles: &Path) -> anyhow::Result<()> {
    let ack = |a: Ack| acks.lock().unwrap().push(a);
    let today = time::OffsetDateTime::now_utc().date();
    for round in 0.. {
        let imported = w.import_visits(&visitor_csv(1_500))?;
        ack(Ack::Import(imported["version"].as_i64().unwrap()));
        let applied = w.scientist.apply_scenario(&serde_json::json!({
            "name": format!("round {round}"), "key_area": "tourism", "purpose": "footfall",
            "public_interest": true,
            "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot"] }],
            "term_start": today.to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
        }))?;
        let sid = applied["id"].as_str().unwrap().to_string();
        w.admin.approve_scenario(&sid)?;
        w.provider.approve_scenario(&sid)?;
        ack(Ack::Active(sid.clone()));
        let queued = w.scientist.enqueue_job(
            &sid,
            "SELECT spot, count(*) AS visits FROM visits GROUP BY spot",
            &[],
        )?;
        let job_id = queued["id"].as_str().unwrap().to_string();
        ack(Ack::Accepted(job_id.clone()));
        let job = w.scientist.wait_job(&job_id, &mut |_| {})?;
        anyhow::ensure!(job["state"] == "succeeded", "{job}");
        ack(Ack::Job(job_id.clone()));
        let export = w.scientist.request_export(&job_id)?;
        let export_id = export["id"].as_str().unwrap().to_string();
        ack(Ack::Export(export_id.clone()));
        w.reviewer.review_export(&export_id, "approve", "ok")?;
        ack(Ack::Approved(export_id.clone()));
        w.scientist
            .download_bundle(&export_id, &bundles.join(&export_id))?;
        ack(Ack::Released(export_id));
    }
    Ok(())
}

fn temporary_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            temporary_files(&path, out);
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(".tmp-"))
        {
            out.push(path);
        }
    }
}

/// Opens the directory the way a restarted server does and checks everything acknowledged.
fn check(data: &Path, key: &Path, tokens: &[String; 3], acks: &[Ack]) {
    let platform = Platform::open(data, MasterKey::load(key).unwrap())
        .expect("the data directory opens after a kill");
    let mut leftovers = Vec::new();
    temporary_files(data, &mut leftovers);
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    platform
        .verify_storage()
        .expect("every stored object decrypts");
    let [admin, scientist, _] = tokens;
    let admin = platform.authenticate(admin).unwrap();
    let scientist = platform.authenticate(scientist).unwrap();
    let verdict = platform.verify_audit(&admin).unwrap();
    assert_eq!(verdict.first_bad, None, "the audit chain verifies");
    let visits_version = platform
        .list_datasets(&admin)
        .unwrap()
        .into_iter()
        .find(|d| d.name == "visits")
        .map(|d| d.version);
    for a in acks {
        match a {
            Ack::Import(v) => assert!(visits_version >= Some(*v), "import v{v} lost"),
            Ack::Active(id) => assert_eq!(
                platform.get_scenario(&admin, id).unwrap().state,
                tidegate_policy::ScenarioState::Active
            ),
            Ack::Accepted(id) => {
                let job = platform.get_job(&admin, id).unwrap();
                assert_ne!(job.state, JobState::Running, "{job:?}");
                if job.state == JobState::Failed {
                    assert!(
                        job.error
                            .as_deref()
                            .unwrap_or("")
                            .starts_with("interrupted"),
                        "{job:?}"
                    );
                }
            }
            Ack::Job(id) => assert_eq!(
                platform.get_job(&admin, id).unwrap().state,
                JobState::Succeeded
            ),
            Ack::Export(id) => {
                platform.get_export(&scientist, id).unwrap();
            }
            Ack::Approved(id) => {
                let state = platform.get_export(&scientist, id).unwrap().state;
                assert!(
                    state == ExportState::Approved || state == ExportState::Released,
                    "{state}"
                );
            }
            Ack::Released(id) => {
                assert_eq!(
                    platform.get_export(&scientist, id).unwrap().state,
                    ExportState::Released
                )
            }
        }
    }
}

#[test]
fn every_acknowledged_action_survives_sigkill_and_nothing_half_written_is_visible() {
    let iterations = env_or("TIDEGATE_CRASH_ITERATIONS", 24);
    let mut rng = StdRng::seed_from_u64(env_or("TIDEGATE_CRASH_SEED", 1));
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut key = keys.join("master-0.key");
    let (platform, admin_token) = Platform::init(&data, &key, "admin").unwrap();
    drop(platform);

    let server = serve(&data, &key);
    let world = World::onboard(Client::new(&server.url, Some(&admin_token)), true).unwrap();
    let tokens = [
        admin_token.clone(),
        world.scientist.token().unwrap().to_string(),
        world.reviewer.token().unwrap().to_string(),
    ];
    let mut server = Some(server);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut rotations = 0;
    for i in 0..iterations {
        let mut running = server.take().unwrap_or_else(|| serve(&data, &key));
        let w = retarget(&world, &running.url);
        let (driver_acks, bundles) = (Arc::clone(&acks), root.path().join("bundles"));
        let driver = std::thread::spawn(move || drive(&w, &driver_acks, &bundles));
        std::thread::sleep(Duration::from_millis(rng.random_range(20..700)));
        running.child.kill().unwrap();
        running.child.wait().unwrap();
        // The driver stops at its first unanswered request.
        assert!(driver.join().unwrap().is_err());
        check(&data, &key, &tokens, &acks.lock().unwrap());

        // Every third kill lands inside a master key rotation instead.
        if i % 3 == 2 {
            let next = keys.join(format!("master-{}.key", i + 1));
            let mut rotate = Command::new(BIN)
                .args(["keys", "rotate", "--data-dir"])
                .arg(&data)
                .arg("--master-key")
                .arg(&key)
                .arg("--new-master-key")
                .arg(&next)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
            let _ = rotate.kill();
            rotate.wait().unwrap();
            // Exactly one of the two keys opens the directory: the new one once the rotation
            // committed, the old one before.
            let with = |k: &Path| {
                MasterKey::load(k)
                    .ok()
                    .and_then(|m| Platform::open(&data, m).ok())
                    .is_some()
            };
            let (old_opens, new_opens) = (with(&key), next.exists() && with(&next));
            assert!(old_opens != new_opens, "old {old_opens}, new {new_opens}");
            if new_opens {
                key = next;
                rotations += 1;
            }
            check(&data, &key, &tokens, &acks.lock().unwrap());
        }
    }
    let acks = acks.lock().unwrap();
    let released = acks
        .iter()
        .filter(|a| matches!(a, Ack::Released(_)))
        .count();
    eprintln!(
        "{iterations} kills, {} acknowledged actions ({released} releases), {rotations} completed rotations",
        acks.len()
    );
    assert!(
        released > 0,
        "the harness must reach a release before some kill"
    );
}

/// A module of the ABI whose one function spins until its time limit.
fn spinning_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
            (memory (export "memory") 4)
            (data (i32.const 16) "\20\00\00\00\1b\00\00\00")
            (data (i32.const 32) "scalar spin(int64) -> int64")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const 65536)
            (func (export "tg_error") (result i32) i32.const 16)
            (func (export "tg_scalar") (param i32 i32) (result i32) (loop (br 0)) unreachable))"#,
    )
    .unwrap()
}

#[test]
fn a_job_running_when_the_server_is_killed_ends_interrupted_and_a_queued_one_waits_again() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let key = root.path().join("keys/master.key");
    let (platform, admin_token) = Platform::init(&data, &key, "admin").unwrap();
    drop(platform);
    let mut server = serve_with(&data, &key, &["--workers", "1"]);
    let world = World::onboard(Client::new(&server.url, Some(&admin_token)), true).unwrap();
    world.import_visits(&visitor_csv(600)).unwrap();
    let (_, scenario) = world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    let (module, _) = world.publish_module(&sid, &spinning_module()).unwrap();
    let spin = vec![module["hash"].as_str().unwrap().to_string()];
    let sql = "SELECT spot, sum(spin(length(spot))) FROM visits GROUP BY spot";
    let running = world.scientist.enqueue_job(&sid, sql, &spin).unwrap();
    let running = running["id"].as_str().unwrap().to_string();
    let queued = world.scientist.enqueue_job(&sid, sql, &spin).unwrap();
    let queued = queued["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while world
        .scientist
        .ok("GET", &format!("/v1/jobs/{running}"), None)
        .unwrap()["state"]
        != "running"
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let platform = Platform::open(&data, MasterKey::load(&key).unwrap()).unwrap();
    let admin = platform.authenticate(&admin_token).unwrap();
    let job = platform.get_job(&admin, &running).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.error.as_deref(),
        Some("interrupted: the server stopped while the job ran; submit it again")
    );
    assert_eq!(
        platform.get_job(&admin, &queued).unwrap().state,
        JobState::Queued
    );
    assert_eq!(platform.verify_audit(&admin).unwrap().first_bad, None);
}
