//! Workload (n): jobs at city scale. A real server (in this process) imports the visits and
//! the spots lookup table from the Parquet files `scripts/bench-scale gen` writes, and runs
//! three gated jobs (a plain GROUP BY, one calling a WebAssembly function, one joining the two
//! tables) under the scenario's default engine budget; plain DataFusion runs the same SQL over
//! the plaintext files in the same process. Prints a table, then the measurements as one JSON
//! line for `scripts/bench-scale table`, which sets them against DuckDB on the same files.

use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use serde_json::{Value, json};
use tidegate_server::{Client, World};

/// The three queries, as the platform runs them and as plain DataFusion does (the module's
/// `plus_one` written as an expression).
const QUERIES: [(&str, &str, &str); 3] = [
    (
        "plain",
        "SELECT spot, count(*) AS n, sum(spend) AS total, avg(spend) AS mean FROM visits GROUP BY spot",
        "SELECT spot, count(*) AS n, sum(spend) AS total, avg(spend) AS mean FROM visits GROUP BY spot",
    ),
    (
        "udf",
        "SELECT spot, count(*) AS n, sum(plus_one(spend)) AS total FROM visits GROUP BY spot",
        "SELECT spot, count(*) AS n, sum(spend + 1) AS total FROM visits GROUP BY spot",
    ),
    (
        "join",
        "SELECT s.district, count(*) AS n, sum(v.spend) AS total \
         FROM visits v JOIN spots s ON v.spot = s.spot GROUP BY s.district",
        "SELECT s.district, count(*) AS n, sum(v.spend) AS total \
         FROM visits v JOIN spots s ON v.spot = s.spot GROUP BY s.district",
    ),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The process's peak resident memory, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn upload(provider: &Client, meta: Value, file: &Path) -> anyhow::Result<Value> {
    provider.upload_dataset(&meta, &mut std::fs::File::open(file)?)
}

/// Runs a job and waits for it closely (every 10 ms): its time as the scientist sees it.
fn timed_job(world: &World, sid: &str, sql: &str, modules: &[String]) -> (f64, Value) {
    let started = Instant::now();
    let queued = world
        .scientist
        .enqueue_job(sid, sql, modules)
        .expect("queued");
    let id = queued["id"].as_str().expect("id").to_string();
    loop {
        let job = world.scientist.get_job(&id).expect("job");
        if !matches!(job["state"].as_str(), Some("queued" | "running")) {
            return (started.elapsed().as_secs_f64(), job);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the audit log keeps of a job's end (its exact resources, a failure's cause), read as
/// the operator of the bench's data directory under `work`.
fn audited_end(work: &Path, job: &Value) -> Option<Value> {
    let id = job["id"].as_str()?;
    let log = tidegate_runtime::read_audit_log(
        &work.join("data").join(tidegate_runtime::AUDIT_FILE),
        None,
    )
    .ok()?;
    log.into_iter()
        .rev()
        .find(|e| e.object == id && e.detail["exact_resources"].is_object())
        .map(|e| e.detail)
}

fn datafusion_time(rt: &tokio::runtime::Runtime, visits: &Path, spots: &Path, sql: &str) -> f64 {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let started = Instant::now();
    rt.block_on(async {
        for (name, path) in [("visits", visits), ("spots", spots)] {
            ctx.register_parquet(
                name,
                path.to_str().expect("utf-8 path"),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
        }
        ctx.sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run")
    });
    started.elapsed().as_secs_f64()
}

/// With `cluster`, each query also runs with its input on an in-process Ballista cluster (a
/// scheduler and two executors on loopback), against the same platform embedded; with
/// `only`, only the query of that name (`plain`, `udf` or `join`).
pub(crate) fn scale(
    rt: &tokio::runtime::Runtime,
    visits: &Path,
    spots: &Path,
    reps: usize,
    cluster: bool,
    only: Option<&str>,
) {
    let work = tempfile::Builder::new()
        .prefix("tidegate-scale-")
        .tempdir_in(visits.parent().unwrap_or(Path::new(".")))
        .expect("a work directory next to the data");
    let (_, _server, world, server_platform) = crate::latency::serve_platform(work.path());
    let cluster = cluster.then(|| {
        rt.block_on(tidegate_runtime::Cluster::standalone(
            2,
            &work.path().join("cluster"),
        ))
        .expect("the cluster")
    });
    let started = Instant::now();
    let dataset = upload(
        &world.provider,
        json!({
            "name": "visits", "level": "L2", "format": "parquet",
            "columns": [
                { "name": "visitor", "tags": ["entity"] },
                { "name": "spot", "tags": ["dimension"] },
                { "name": "spend", "tags": ["sensitive"] },
            ],
        }),
        visits,
    )
    .expect("the visits import");
    let import_s = started.elapsed().as_secs_f64();
    let rows = dataset["rows"].as_u64().expect("rows");
    upload(
        &world.provider,
        json!({
            "name": "spots", "level": "L1", "format": "parquet",
            "columns": [
                { "name": "spot", "tags": ["dimension"] },
                { "name": "district", "tags": ["dimension"] },
            ],
        }),
        spots,
    )
    .expect("the spots import");
    let today = time::OffsetDateTime::now_utc().date();
    let applied = world
        .scientist
        .apply_scenario(&json!({
            "name": "Visits at scale",
            "key_area": "culture and tourism",
            "purpose": "visits and spending per spot and district, measured at scale",
            "grants": [
                { "dataset": "visits", "columns": ["visitor", "spot", "spend"] },
                { "dataset": "spots", "columns": ["spot", "district"] },
            ],
            "term_start": (today - time::Duration::days(1)).to_string(),
            "term_end": (today + time::Duration::days(30)).to_string(),
        }))
        .expect("apply");
    let sid = applied["id"].as_str().expect("id").to_string();
    world.admin.approve_scenario(&sid).expect("admin approves");
    world
        .provider
        .approve_scenario(&sid)
        .expect("provider approves");
    let (module, _) = world
        .publish_module(&sid, tidegate_server::BENCH_UDF_WASM)
        .expect("module");
    let hash = module["hash"].as_str().expect("hash").to_string();

    println!("(n) jobs at scale: {rows} visits (imported in {import_s:.1} s), median of {reps}");
    println!(
        "    {:<6} {:>12} {:>14} {:>8} {:>14} {:>12}",
        "query", "platform s", "DataFusion s", "ratio", "engine peak", "spilled"
    );
    let (mut platform, mut datafusion, mut peaks, mut spilled) =
        (json!({}), json!({}), json!({}), json!({}));
    let (mut on_cluster, mut shuffled) = (json!({}), json!({}));
    for (name, sql, plain_sql) in QUERIES {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let modules = if name == "udf" {
            vec![hash.clone()]
        } else {
            vec![]
        };
        let mut times = Vec::new();
        let mut last = Value::Null;
        for _ in 0..reps {
            let (t, job) = timed_job(&world, &sid, sql, &modules);
            if job["state"] != "succeeded" {
                // The bench is the operator: the cause the scientist is not shown is in the
                // audit log.
                let cause = audited_end(work.path(), &job).map(|end| end["error"].to_string());
                println!("    {name}: the job {} ({cause:?})", job["state"]);
                break;
            }
            times.push(t);
            last = job;
        }
        let df = median(
            (0..reps)
                .map(|_| datafusion_time(rt, visits, spots, plain_sql))
                .collect(),
        );
        datafusion[name] = json!(df);
        if times.is_empty() {
            platform[name] = Value::Null;
            continue;
        }
        let t = median(times);
        let peak = last["resources"]["peak_engine_memory_bytes"]
            .as_f64()
            .unwrap_or(0.0)
            / (1 << 20) as f64;
        // Over L2 data the scientist is not shown how much a job spilled; the audit log is.
        let spill = audited_end(work.path(), &last)
            .and_then(|end| end["exact_resources"]["spilled_bytes"].as_f64())
            .unwrap_or(0.0)
            / (1 << 20) as f64;
        println!(
            "    {name:<6} {t:>12.2} {df:>14.2} {:>7.1}x {:>11.0} MiB {:>8.0} MiB",
            t / df,
            peak,
            spill
        );
        platform[name] = json!(t);
        peaks[name] = json!(peak);
        spilled[name] = json!(spill);
        if let Some(c) = &cluster {
            server_platform.use_cluster(Some(c.clone()));
            let before = c.shuffle_bytes();
            let mut times = Vec::new();
            for _ in 0..reps {
                let (ct, job) = timed_job(&world, &sid, sql, &modules);
                if job["state"] != "succeeded" {
                    let cause = audited_end(work.path(), &job).map(|end| end["error"].to_string());
                    println!(
                        "    {name} on the cluster: the job {} ({cause:?})",
                        job["state"]
                    );
                    break;
                }
                times.push(ct);
            }
            server_platform.use_cluster(None);
            if !times.is_empty() {
                let runs = times.len() as f64;
                let ct = median(times);
                let mib = (c.shuffle_bytes() - before) as f64 / runs / (1 << 20) as f64;
                println!(
                    "    {:<6} {ct:>12.2} s on the cluster, {:.2}x the platform embedded; {mib:.1} MiB shuffled per job",
                    "",
                    ct / t
                );
                on_cluster[name] = json!(ct);
                shuffled[name] = json!(mib);
            }
        }
    }
    println!(
        "    peak resident memory of the process: {:.0} MiB",
        peak_rss_mib()
    );
    println!(
        "{}",
        json!({
            "rows": rows,
            "platform": platform,
            "datafusion": datafusion,
            "peak_engine_mb": peaks,
            "spilled_mb": spilled,
            "peak_rss_mb": peak_rss_mib(),
            "import_s": import_s,
            "cluster": on_cluster,
            "shuffle_mb": shuffled,
        })
    );
}
