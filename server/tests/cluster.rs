//! A cluster of processes: the real `tidegate scheduler`, two `tidegate executor`s reading the
//! data directory, and `tidegate serve --cluster`, each a process of its own on loopback. A
//! job with a module runs on the executors to the same result as on one process, leaves only
//! sealed files behind, and a process without the cluster's secret is not let in, nor taken
//! for the scheduler.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tidegate_runtime::Platform;
use tidegate_server::{Client, VISITOR_UDF_WASM, World, visitor_csv};

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

const SQL: &str = "SELECT spot, count(*) AS visits, \
    round(avg(age_at_visit(resident_id, visit_date)), 1) AS avg_age, \
    round(sum(spend), 2) AS total_spend FROM visits GROUP BY spot ORDER BY spot";

/// A child process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tidegate ARGS` and waits for the stderr line holding `ready`; answers the process
/// and the rest of that line after `ready`. A process that exits first fails the test with
/// what it said.
fn start(args: &[&str], ready: &str) -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    let rest = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(at) = line.find(ready) {
                    break line[at + ready.len()..].trim().to_string();
                }
                said.push(line);
            }
            _ => panic!("`tidegate {}` ended: {}", args.join(" "), said.join("\n")),
        }
    };
    // Keep draining stderr so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Running(child), rest)
}

/// What `tidegate ARGS` says when it exits (it must, and with a failure).
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary starts");
    assert!(
        !out.status.success(),
        "`tidegate {}` succeeded",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A job of [`SQL`] with the module `hash`, as its scientist sees it when it ends.
fn run_job(world: &World, sid: &str, hash: &str) -> serde_json::Value {
    world
        .scientist
        .submit_job(sid, SQL, &[hash.to_string()])
        .unwrap()
}

#[test]
fn a_job_runs_on_executor_processes_as_on_one_process_and_leaves_only_sealed_files() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let key = root.path().join("master.key");
    let secret = root.path().join("cluster.secret");
    let (platform, admin) = Platform::init(&data, &key, "admin").unwrap();
    drop(platform);
    let (data_s, key_s, secret_s) = (
        data.to_str().unwrap(),
        key.to_str().unwrap(),
        secret.to_str().unwrap(),
    );

    // The scheduler makes the cluster's secret, readable by its owner only.
    let (_scheduler, at) = start(
        &["scheduler", "--listen", "127.0.0.1:0", "--secret", secret_s],
        "scheduler listening on",
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the secret is open to others");

    // A process holding another secret is not let in.
    let other = root.path().join("other.secret");
    std::fs::write(&other, "22".repeat(32)).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    // `tidegate executor`'s arguments for the scheduler at `at`, a secret and a work directory.
    let executor = |secret: &str, work: &Path| -> Vec<String> {
        let args = [
            "executor",
            "--data-dir",
            data_s,
            "--master-key",
            key_s,
            "--scheduler",
            &at,
            "--secret",
            secret,
            "--work-dir",
            work.to_str().unwrap(),
        ];
        args.map(str::to_string).to_vec()
    };
    let args = executor(other.to_str().unwrap(), &root.path().join("work-x"));
    let said = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        said.contains("no scheduler of this cluster answers"),
        "{said}"
    );

    // A process of another cluster that took a port where the server looks for its
    // scheduler: the server does not join it (and sends it nothing: the handshake fails
    // before any call).
    let (_impostor, impostor_at) = start(
        &[
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            other.to_str().unwrap(),
        ],
        "scheduler listening on",
    );
    let said = refused(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_s,
        "--master-key",
        key_s,
        "--cluster",
        &impostor_at,
        "--cluster-secret",
        secret_s,
    ]);
    assert!(
        said.contains("no scheduler of this cluster answers"),
        "{said}"
    );

    // Two executors, each reading the data directory with the master key.
    let work: Vec<PathBuf> = (0..2)
        .map(|i| root.path().join(format!("work-{i}")))
        .collect();
    let _executors: Vec<Running> = work
        .iter()
        .map(|w| {
            let args = executor(secret_s, w);
            start(
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                "shuffle served on",
            )
            .0
        })
        .collect();

    // The server, sending jobs' inputs to the cluster.
    let (_server, url) = start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_s,
            "--master-key",
            key_s,
            "--cluster",
            &at,
            "--cluster-secret",
            secret_s,
        ],
        "on http://",
    );
    let world = World::onboard(Client::new(&format!("http://{url}"), Some(&admin)), true).unwrap();
    let csv = visitor_csv(3_000);
    world.import_visits(&csv).unwrap();
    let (_, scenario) = world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    let (module, _) = world.publish_module(&sid, VISITOR_UDF_WASM).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    // A reader of the executors' directories while the job runs (Ballista removes a job's
    // files once it is done): every file it finds, and whether one held a resident's id.
    let resident = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, work, resident) = (stop.clone(), work.clone(), resident.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            loop {
                let last = stop.load(std::sync::atomic::Ordering::Relaxed);
                for f in work.iter().flat_map(|w| files(w)) {
                    if let Ok(bytes) = std::fs::read(&f) {
                        let plain = bytes
                            .windows(resident.len())
                            .any(|w| w == resident.as_bytes());
                        *seen.entry(f).or_insert(false) |= plain;
                    }
                }
                if last {
                    return seen;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let there = run_job(&world, &sid, &hash);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert_eq!(there["state"], "succeeded", "{there}");
    // Its guests ran on the executors only; their fuel and CPU time are on the job's meter
    // (in the coarse units a scientist sees over L2 data).
    for used in ["fuel", "guest_calls", "cpu_ms"] {
        assert!(
            there["resources"][used].as_u64().unwrap() > 0,
            "{used} of the executors is not on the job's meter: {there}"
        );
    }

    // The executors ran its stages: they wrote sealed files, and none held a resident's id.
    assert!(
        seen.keys()
            .any(|f| f.extension().is_some_and(|e| e == "sealed")),
        "the executors wrote no shuffle file: {seen:?}"
    );
    for (f, plain) in &seen {
        assert!(!plain, "{} holds a resident's id in plaintext", f.display());
    }

    // The same job on one process: the same rows.
    let local = tempfile::tempdir().unwrap();
    let (platform, admin) =
        Platform::init(&local.path().join("data"), &local.path().join("k"), "admin").unwrap();
    let platform = std::sync::Arc::new(platform);
    let (url, _runtime) = tidegate_server::spawn_server(platform).unwrap();
    let world = World::onboard(Client::new(&url, Some(&admin)), true).unwrap();
    world.import_visits(&csv).unwrap();
    let (_, scenario) = world.open_scenario().unwrap();
    let sid = scenario["id"].as_str().unwrap().to_string();
    world.publish_module(&sid, VISITOR_UDF_WASM).unwrap();
    let here = run_job(&world, &sid, &hash);
    assert_eq!(here["state"], "succeeded", "{here}");
    for field in ["rows", "schema", "shape"] {
        assert_eq!(here[field], there[field], "{field}");
    }
}
