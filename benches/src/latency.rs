//! Workload (l): the API under load. A real server on a loopback port (in this process) runs
//! two gated jobs over `rows` visits while a provider streams a second import of the same
//! size; meanwhile a client times `GET /healthz` and an authenticated `GET /v1/jobs/{id}`,
//! one after the other, until the load is done. The jobs are queued (the submission answers
//! at once) and run on the server's worker threads, never on the HTTP workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tidegate_runtime::Platform;
use tidegate_server::{Client, World, spawn_server};

const SQL: &str = "SELECT spot, count(*) AS visits, sum(spend) AS total, avg(spend) AS mean \
                   FROM visits GROUP BY spot";

/// The visits of the demo's schema as a Parquet file, a quarter as many visitors as rows.
fn write_visits(path: &std::path::Path, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("resident_id", DataType::Utf8, false),
        Field::new("mobile", DataType::Utf8, false),
        Field::new("spot", DataType::Utf8, false),
        Field::new("visit_date", DataType::Date32, false),
        Field::new("spend", DataType::Float64, false),
    ]));
    let file = std::fs::File::create(path).expect("file");
    let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), None).expect("writer");
    let mut rng = StdRng::seed_from_u64(23);
    let subjects = (rows / 4).max(1) as u64;
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(65_536);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| format!("p{:09}", rng.random_range(0..subjects))),
            )),
            Arc::new(StringArray::from_iter_values((0..n).map(|_| {
                format!("138{:08}", rng.random_range(0..100_000_000u64))
            }))),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| format!("spot {}", rng.random_range(0..40))),
            )),
            Arc::new(Date32Array::from_iter_values(
                (0..n).map(|_| 20_454 + rng.random_range(0..365)),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|_| rng.random_range(0.0..500.0)),
            )),
        ];
        w.write(&RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch"))
            .expect("write");
        done += n;
    }
    w.close().expect("close");
}

fn import(
    provider: &Client,
    name: &str,
    file: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    provider.upload_dataset(
        &json!({
            "name": name, "level": "L2", "format": "parquet",
            "columns": [
                { "name": "resident_id", "tags": ["pii:resident_id", "entity"] },
                { "name": "mobile", "tags": ["pii:mobile"] },
                { "name": "spot", "tags": ["dimension"] },
                { "name": "visit_date", "tags": ["quasi"] },
                { "name": "spend", "tags": ["sensitive"] },
            ],
        }),
        &mut std::fs::File::open(file)?,
    )
}

/// Milliseconds at the 50th and 99th percentiles and the largest.
fn summary(mut ms: Vec<f64>) -> String {
    if ms.is_empty() {
        return "no samples".into();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} requests)",
        at(0.5),
        at(0.99),
        ms[ms.len() - 1],
        ms.len()
    )
}

/// A new data directory under `work`, served on a loopback port by this process, with the
/// story's orgs and trained principals: the server's address, its runtime (the server stops
/// when it is dropped) and the principals' clients.
pub(crate) fn serve(work: &std::path::Path) -> (String, tokio::runtime::Runtime, World) {
    let (url, server, world, _) = serve_platform(work);
    (url, server, world)
}

/// [`serve`], and the platform it serves.
pub(crate) fn serve_platform(
    work: &std::path::Path,
) -> (String, tokio::runtime::Runtime, World, Arc<Platform>) {
    let (platform, token) =
        Platform::init(&work.join("data"), &work.join("keys/master.key"), "admin").expect("init");
    let platform = Arc::new(platform);
    let (url, server) = spawn_server(Arc::clone(&platform)).expect("server");
    let world = World::onboard(Client::new(&url, Some(&token)), true).expect("onboard");
    (url, server, world, platform)
}

pub(crate) fn api_under_load(rows: usize) {
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("visits.parquet");
    write_visits(&file, rows);
    let (url, _server, world) = serve(work.path());
    import(&world.provider, "visits", &file).expect("import");
    let (_, scenario) = world.open_scenario().expect("scenario");
    let sid = scenario["id"].as_str().expect("id").to_string();

    let started = Instant::now();
    let jobs: Vec<String> = (0..2)
        .map(|_| {
            world.scientist.enqueue_job(&sid, SQL, &[]).expect("queued")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let submitted = started.elapsed();
    let importing = Arc::new(AtomicBool::new(true));
    let importer = {
        let provider = world.provider.clone();
        let importing = Arc::clone(&importing);
        let file = file.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let outcome = import(&provider, "visits_again", &file);
            importing.store(false, Ordering::SeqCst);
            (t.elapsed(), outcome.is_ok())
        })
    };
    let probe = Client::new(&url, None);
    let (mut health, mut reads) = (Vec::new(), Vec::new());
    let mut ended = vec![None; jobs.len()];
    loop {
        let t = Instant::now();
        probe.ok("GET", "/healthz", None).expect("healthz");
        health.push(t.elapsed().as_secs_f64() * 1e3);
        for (i, job) in jobs.iter().enumerate() {
            let t = Instant::now();
            let seen = world
                .scientist
                .ok("GET", &format!("/v1/jobs/{job}"), None)
                .expect("job");
            reads.push(t.elapsed().as_secs_f64() * 1e3);
            if ended[i].is_none() && !matches!(seen["state"].as_str(), Some("queued" | "running")) {
                ended[i] = Some((
                    started.elapsed(),
                    seen["state"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        if ended.iter().all(Option::is_some) && !importing.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (import_time, imported) = importer.join().expect("importer");
    println!("(l) the API while two {rows}-row gated jobs and a {rows}-row import run:");
    println!(
        "    both jobs accepted in {:.1} ms; ended: {}; the import {} in {:.1} s",
        submitted.as_secs_f64() * 1e3,
        ended
            .iter()
            .flatten()
            .map(|(t, state)| format!("{state} after {:.1} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        if imported { "succeeded" } else { "failed" },
        import_time.as_secs_f64()
    );
    println!("    GET /healthz: {}", summary(health));
    println!("    GET /v1/jobs/ID (authenticated): {}", summary(reads));
}
