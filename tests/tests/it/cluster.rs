//! Jobs on a Ballista cluster in this process (a scheduler and two executors on loopback):
//! the same results as here, the same guests under the same limits, and no plaintext in the
//! executors' work directories.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    Cluster, DataKey, EngineLimits, GuestLimits, JobMeter, Sandbox, SealedSource, SealedStore,
    TableData, TableInput, run_query_isolated,
};
use tidegate_server::BENCH_UDF_WASM;

use crate::common::walk;

/// A value no query computes: found in a file, it was written there in plaintext.
const MARKER: &str = "MARKER-4c1f9e-in-the-clear";

/// `rows` rows of (k utf8, x float64, n int64): 5 groups, one of them named by the marker;
/// held in memory.
fn table(rows: usize) -> Vec<TableInput> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("x", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let batches = (0..rows)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|chunk| {
            let k: StringArray = chunk
                .iter()
                .map(|i| {
                    Some(if i % 5 == 0 {
                        MARKER.to_string()
                    } else {
                        format!("g{}", i % 5)
                    })
                })
                .collect();
            let x: Float64Array = chunk
                .iter()
                .map(|i| (i % 13 != 0).then_some(0.25 * (i % 89) as f64))
                .collect();
            let n: Int64Array = chunk.iter().map(|i| Some(*i as i64 % 97)).collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(x), Arc::new(n)])
                .unwrap()
        })
        .collect();
    let col = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    };
    vec![TableInput {
        name: "t".into(),
        columns: vec![
            col("k", ColType::Utf8),
            col("x", ColType::Float64),
            col("n", ColType::Int64),
        ],
        data: TableData::Memory(batches),
    }]
}

/// The same table stored sealed, as the platform stores a dataset: Parquet in the store's
/// encrypted format, in `dir`.
fn sealed_table(rows: usize, dir: &std::path::Path) -> Vec<TableInput> {
    let mut tables = table(rows);
    let TableData::Memory(batches) = &tables[0].data else {
        unreachable!()
    };
    let mut parquet = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut parquet, batches[0].schema(), None).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    let key = DataKey::generate();
    let path = dir.join("t.sealed");
    std::fs::write(&path, key.seal_object("t", &parquet)).unwrap();
    let reader = key
        .reader("t", std::fs::File::open(&path).unwrap())
        .unwrap();
    let mut store = SealedStore::default();
    store.insert("t.parquet", SealedSource::new(reader));
    tables[0].data = TableData::Sealed {
        store: Arc::new(store),
        object: "t.parquet".into(),
        entity: None,
    };
    tables
}

async fn query(
    sql: &str,
    tables: &[TableInput],
    cluster: Option<&Cluster>,
) -> Result<Vec<RecordBatch>, tidegate_runtime::Error> {
    query_with(
        sql,
        tables,
        EngineLimits {
            cluster: cluster.cloned(),
            ..EngineLimits::default()
        },
    )
    .await
}

async fn query_with(
    sql: &str,
    tables: &[TableInput],
    limits: EngineLimits,
) -> Result<Vec<RecordBatch>, tidegate_runtime::Error> {
    let sandbox = Arc::new(Sandbox::new()?);
    let module = sandbox.load(BENCH_UDF_WASM)?;
    let meter = Arc::new(JobMeter::new(GuestLimits::default()));
    // On a runtime of its own, as the platform runs a job: the cluster's servers run on this
    // test's runtime.
    let (out, _) = run_query_isolated(
        sql.to_string(),
        tables.to_vec(),
        sandbox.udfs(&module, &meter),
        limits,
        std::future::pending(),
    )
    .await;
    Ok(out?.batches)
}

/// The rows of a result as text, sorted.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out: Vec<String> = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

const QUERIES: &[&str] = &[
    "SELECT k, count(*) AS c, sum(plus_one(x)) AS s FROM t GROUP BY k",
    // A join: its sides are shuffled between the executors.
    "SELECT a.k, count(*) AS c, avg(plus_one(b.x)) AS m FROM t a JOIN t b ON a.n = b.n WHERE a.x > 3 GROUP BY a.k",
    // Rows the query writes itself travel in the plan; the table's from its sealed store.
    "SELECT k, count(*) AS c FROM (SELECT k FROM t UNION ALL SELECT 'x' UNION ALL SELECT NULL) s GROUP BY k",
];

/// Every file of `dir`'s tree, read while it is there: what each held (files the cluster
/// removes meanwhile are skipped).
fn read_all(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    walk(dir)
        .into_iter()
        .filter_map(|f| std::fs::read(&f).ok().map(|bytes| (f, bytes)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_on_the_cluster_gives_what_it_gives_here_and_leaves_no_plaintext() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let tables = sealed_table(3_000, data.path());
    let cluster = Cluster::standalone(2, work.path()).await.unwrap();
    // A reader of the executors' directories while the jobs run (Ballista removes a job's
    // files once it is done): every file it finds, and whether one held the marker.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, dir) = (Arc::clone(&stop), work.path().to_path_buf());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (f, bytes) in read_all(&dir) {
                    let plain = bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
                    *seen.entry(f).or_insert(false) |= plain;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            seen
        })
    };
    for sql in QUERIES {
        let here = rows(&query(sql, &tables, None).await.unwrap());
        let there = rows(&query(sql, &tables, Some(&cluster)).await.unwrap());
        assert!(!here.is_empty(), "{sql}");
        assert_eq!(here, there, "{sql}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = reader.join().unwrap();
    for (f, bytes) in read_all(work.path()) {
        let plain = bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
        *seen.entry(f).or_insert(false) |= plain;
    }
    // The executors wrote the stages' output, sealed: no file held the marker.
    let mut sealed = 0;
    for (entry, plain) in &seen {
        assert!(!plain, "{} holds a value in plaintext", entry.display());
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if let Some(tag) = name.strip_suffix(".sealed") {
            sealed += 1;
            // Named by a keyed hash: a listing shows nothing a fetch could name the file by
            // (Ballista's own name, `data-{file}.arrow`, is what a fetch sends).
            assert!(
                tag.len() == 64 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
                "{name} is not named by a keyed hash"
            );
        }
        // Only the user running the cluster may list or read its directories.
        use std::os::unix::fs::PermissionsExt;
        let dir = entry.parent().unwrap();
        if let Ok(meta) = std::fs::metadata(dir) {
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{} is open to others",
                dir.display()
            );
        }
    }
    assert!(sealed > 0, "the reader saw no shuffle file");
    assert!(
        cluster.shuffle_bytes() > 0,
        "the executors wrote no shuffle output"
    );
}

/// An executor stops mid-job, as a crash would: the job ends with the whole result it gives
/// here, or fails (here at its deadline); never with part of one, and leaves no plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_executor_dies_fails_or_gives_its_whole_result() {
    let data = tempfile::tempdir().unwrap();
    let tables = sealed_table(20_000, data.path());
    let sql = QUERIES[1];
    let here = rows(&query(sql, &tables, None).await.unwrap());
    // One executor at once, then both a moment after the job starts.
    for (delay, stopped) in [(0, &[1][..]), (30, &[0, 1][..])] {
        let work = tempfile::tempdir().unwrap();
        let cluster = Cluster::standalone(2, work.path()).await.unwrap();
        let limits = EngineLimits {
            cluster: Some(cluster.clone()),
            wall_time: std::time::Duration::from_secs(15),
            ..EngineLimits::default()
        };
        let crash = async {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            for &i in stopped {
                cluster.stop_executor(i);
            }
        };
        let (there, ()) = tokio::join!(query_with(sql, &tables, limits), crash);
        match there {
            Ok(batches) => assert_eq!(rows(&batches), here, "after {delay} ms"),
            Err(e) => {
                let e = e.to_string();
                eprintln!("stopped {stopped:?} after {delay} ms: {e}");
                assert!(!e.contains(MARKER), "{e}");
            }
        }
        for entry in walk(work.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));
        }
    }
}

/// A plan the scheduler and every executor would decode whole is bounded (1 MiB): a query
/// that writes more rows of its own than that is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_too_large_for_the_cluster_is_refused_before_it_is_sent() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let tables = sealed_table(100, data.path());
    let cluster = Cluster::standalone(2, work.path()).await.unwrap();
    // A short query (few tokens, 120 KiB) whose plan repeats its one long literal 12 times.
    let literal = "x".repeat(120 << 10);
    let union = ["SELECT s FROM v"; 12].join(" UNION ALL ");
    let sql = format!(
        "WITH v AS (SELECT '{literal}' AS s) \
         SELECT t.k, count(*) AS c FROM t JOIN ({union}) u ON t.k = u.s GROUP BY t.k"
    );
    let refused = query(&sql, &tables, Some(&cluster))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("too large to send"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_held_in_memory_is_not_sent_to_the_cluster() {
    let work = tempfile::tempdir().unwrap();
    let cluster = Cluster::standalone(2, work.path()).await.unwrap();
    let refused = query(QUERIES[0], &table(100), Some(&cluster))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("reads sealed tables only"), "{refused}");
}

#[test]
fn the_demo_runs_on_the_cluster_to_its_signed_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = tidegate_server::run_demo(&tidegate_server::DemoOptions {
        data_dir: Some(dir.path().to_path_buf()),
        rows: 2_000,
        quiet: true,
        cluster: true,
    })
    .unwrap();
    assert!(outcome.bundle_dir.exists());
}

/// What a job of `sql` came to, as its scientist and then a reviewer of its export see it:
/// refused (and why), or its shape, the gate's full report and the released rows (sorted).
fn outcome(env: &crate::common::Env, sid: &str, sql: &str, modules: &[String]) -> String {
    let j = crate::common::job(env, sid, sql, modules);
    let out = format!(
        "state {}\nerror {}\nrows {}\nschema {}\nshape {}\n",
        j["state"], j["error"], j["rows"], j["schema"], j["shape"]
    );
    if j["state"] == "failed" {
        return without_ids(&out);
    }
    let requested = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    let seen = crate::common::seen_by_reviewer(env, &requested);
    let mut preview: Vec<&str> = seen["preview"].as_str().unwrap_or("").lines().collect();
    preview.sort();
    // Each check's detail with its ids blanked and its parts sorted (earlier exports are
    // listed in the order of their random ids).
    let report = &seen["gate_report"];
    let checks: Vec<String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let detail = without_ids(c["detail"].as_str().unwrap()).replace(": ", ", ");
            let mut parts: Vec<&str> = detail.split(", ").collect();
            parts.sort();
            format!("{} {} {}", c["name"], c["passed"], parts.join(", "))
        })
        .collect();
    without_ids(&format!(
        "{out}export {}\nchecks\n{}\ngroups {} suppressed {} differencing {} released {}\npreview\n{}\n",
        seen["state"],
        checks.join("\n"),
        report["groups_total"],
        report["groups_suppressed"],
        report["differencing_suppressed"],
        report["rows_released"],
        preview.join("\n")
    ))
}

/// `text` with each platform's own ids (`job_`, `sc_`... and 16 hex digits) blanked.
fn without_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('_') {
        let (before, after) = rest.split_at(at + 1);
        out += before;
        let hex = after.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
        let word = before[..at]
            .bytes()
            .rev()
            .take_while(u8::is_ascii_lowercase)
            .count();
        if hex == 16 && word > 0 {
            out += "<id>";
            rest = &after[16..];
        } else {
            rest = after;
        }
    }
    out + rest
}

/// The same jobs, among them the gate's attacks (subqueries, self-joins and outer joins,
/// unions with constant rows, casts and nested keys, limits under an aggregate, a targeted
/// resident, a module's function), run on three platforms holding the same data, one
/// embedded, one on a cluster sharing its registry and one on a cluster whose executors look
/// jobs up in the data directory (as executor processes do), in the same order: the same
/// refusals, the same gate reports and the same released rows.
#[test]
fn the_gate_decides_the_same_on_the_cluster_as_here() {
    let target = crate::common::target();
    let attacks = [
        crate::common::DEMO_SQL.to_string(),
        "SELECT spot, count(*) AS n, sum(spend) AS s FROM visits GROUP BY spot".into(),
        "SELECT spot, count(*) AS n FROM visits a JOIN visits b USING (spot) GROUP BY spot".into(),
        "SELECT spot, count(*) AS n FROM visits a FULL JOIN visits b USING (spot, resident_id) GROUP BY spot".into(),
        "SELECT named_struct('s', spot) AS k, count(*) AS n FROM visits GROUP BY named_struct('s', spot)".into(),
        "SELECT spot, count(*) AS n FROM (SELECT spot FROM visits UNION ALL SELECT 'x' UNION ALL SELECT NULL) t GROUP BY spot".into(),
        "SELECT spot, count(*) AS n FROM (SELECT spot FROM visits LIMIT 5 OFFSET 2) t GROUP BY spot".into(),
        "SELECT v.spot, count(*) AS n FROM (VALUES (1)) AS t(x) LEFT JOIN visits v ON t.x = 1 GROUP BY v.spot".into(),
        "SELECT spot, sum(spend) FILTER (WHERE spend > 1) AS s, avg(spend) AS a FROM visits GROUP BY spot".into(),
        "SELECT spot, sum(spend) AS s FROM visits v JOIN visits w USING (spot, spend) GROUP BY spot".into(),
        "SELECT t.spot, t.n FROM (SELECT spot, count(*) AS n FROM visits GROUP BY spot) AS t ORDER BY t.n".into(),
        format!("SELECT spot, count(*) AS n, sum(spend) AS s FROM visits WHERE resident_id = '{target}' GROUP BY spot"),
        format!(
            "SELECT spot, count(*) AS n, sum(CASE WHEN resident_id = '{target}' THEN spend ELSE 0 END) AS s \
             FROM visits GROUP BY spot"
        ),
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot HAVING count(*) < 3".into(),
        "SELECT resident_id, count(*) AS n FROM visits GROUP BY resident_id".into(),
    ];
    use crate::common::Placement;
    let (here, here_sid, here_module) = crate::common::active_scenario_on(Placement::Here);
    let (there, there_sid, there_module) = crate::common::active_scenario_on(Placement::Cluster);
    let (apart, apart_sid, apart_module) =
        crate::common::active_scenario_on(Placement::ExecutorsReading);
    let mut released = 0;
    for sql in &attacks {
        let modules = |m: &String| {
            if sql.contains("age_at_visit") {
                vec![m.clone()]
            } else {
                vec![]
            }
        };
        let a = outcome(&here, &here_sid, sql, &modules(&here_module));
        let b = outcome(&there, &there_sid, sql, &modules(&there_module));
        assert_eq!(a, b, "{sql}");
        let c = outcome(&apart, &apart_sid, sql, &modules(&apart_module));
        assert_eq!(a, c, "{sql}");
        released += usize::from(
            a.split("preview\n")
                .nth(1)
                .is_some_and(|rows| !rows.trim().is_empty()),
        );
    }
    // Not only refusals: some of the jobs released rows, and they were the same.
    assert!(released >= 3, "{released} jobs released rows");
}

/// What an executor of another process may use for a job, it reads in the platform's data
/// directory: only a running job's, only modules approved for the job's scenario and whose
/// bytes are the hash the job names, and its sealed tables.
#[test]
fn an_executor_looks_a_job_up_in_the_data_directory_and_refuses_a_module_not_approved() {
    use tidegate_runtime::JobSource;
    let (env, sid, module) = crate::common::active_scenario();
    let sql = crate::common::DEMO_SQL;
    let job = crate::common::job(&env, &sid, sql, std::slice::from_ref(&module));
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    let master =
        tidegate_runtime::MasterKey::load(&env.dir.path().join("keys/master.key")).unwrap();
    let jobs = tidegate_runtime::ExecutorJobs::open(&env.data_dir(), master).unwrap();
    let db = rusqlite::Connection::open(env.data_dir().join("meta.sqlite")).unwrap();
    let set = |sql: &str, value: &str| {
        db.execute(sql, rusqlite::params![value, id]).unwrap();
    };

    // An ended job is not looked up.
    assert!(!jobs.running(id).unwrap());
    assert!(jobs.resolve(id).is_err());

    // Running (as the platform marks it while it runs): its module's functions, the
    // platform's, and its one sealed table.
    set("UPDATE jobs SET state = ?1 WHERE id = ?2", "running");
    assert!(jobs.running(id).unwrap());
    let resolved = jobs.resolve(id).unwrap();
    let functions = resolved.functions();
    assert!(
        functions.contains(&("age_at_visit".to_string(), Some(module.clone()))),
        "{functions:?}"
    );
    assert!(
        functions
            .iter()
            .any(|(name, m)| name == "tg_pseudonym" && m.is_none())
    );
    assert_eq!(resolved.tables(), 1);
    // The job's own budgets, as the platform started it with them: the fuel of a scenario
    // without a fuel quota and its scenario's engine memory.
    let (fuel, memory, _) = resolved.budgets();
    assert_eq!(fuel, GuestLimits::default().fuel);
    assert_eq!(memory, EngineLimits::default().memory_bytes);
    let budgets: String = db
        .query_row("SELECT limits FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    // Whatever the row says, within the platform's limits: what is left of the time since it
    // started.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let row = |fuel: u64, memory: u64, wall_ms: u64, started_ms: u64| {
        serde_json::json!({
            "fuel": fuel, "memory_bytes": memory, "wall_ms": wall_ms, "started_ms": started_ms
        })
        .to_string()
    };
    set(
        "UPDATE jobs SET limits = ?1 WHERE id = ?2",
        &row(7_000_000_000, 256 << 20, 60_000, now_ms - 20_000),
    );
    let (fuel, memory, left) = jobs.resolve(id).unwrap().budgets();
    assert_eq!((fuel, memory), (7_000_000_000, 256 << 20));
    assert!(
        left > std::time::Duration::from_secs(30) && left <= std::time::Duration::from_secs(40),
        "{left:?}"
    );
    set(
        "UPDATE jobs SET limits = ?1 WHERE id = ?2",
        &row(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
    );
    let (fuel, memory, left) = jobs.resolve(id).unwrap().budgets();
    assert_eq!(fuel, GuestLimits::default().fuel);
    assert_eq!(memory, 16384 << 20);
    assert!(left <= EngineLimits::default().wall_time, "{left:?}");
    // A running job without budgets does not run on an executor.
    db.execute("UPDATE jobs SET limits = NULL WHERE id = ?1", [id])
        .unwrap();
    let refused = jobs.resolve(id).err().unwrap().to_string();
    assert!(refused.contains("no budgets"), "{refused}");
    set("UPDATE jobs SET limits = ?1 WHERE id = ?2", &budgets);

    // A job whose scenario was suspended meanwhile.
    db.execute(
        "UPDATE scenarios SET state = 'suspended' WHERE id = ?1",
        [&sid],
    )
    .unwrap();
    let refused = jobs.resolve(id).err().unwrap().to_string();
    assert!(refused.contains("not active"), "{refused}");
    db.execute(
        "UPDATE scenarios SET state = 'active' WHERE id = ?1",
        [&sid],
    )
    .unwrap();

    // A module the job names that is not approved for its scenario.
    let stranger = "ab".repeat(32);
    set(
        "UPDATE jobs SET modules = ?1 WHERE id = ?2",
        &serde_json::json!([module, stranger]).to_string(),
    );
    let refused = jobs.resolve(id).err().unwrap().to_string();
    assert!(refused.contains("not approved"), "{refused}");

    // Its own module once its approval is gone (revoked).
    set(
        "UPDATE jobs SET modules = ?1 WHERE id = ?2",
        &serde_json::json!([module]).to_string(),
    );
    db.execute(
        "UPDATE modules SET revoked_at = '2026-12-02T00:00:00Z' WHERE hash = ?1",
        rusqlite::params![module],
    )
    .unwrap();
    let refused = jobs.resolve(id).err().unwrap().to_string();
    assert!(refused.contains("not approved"), "{refused}");

    // The data directory with another master key.
    let other = tidegate_runtime::MasterKey::from_hex(&"11".repeat(32)).unwrap();
    assert!(tidegate_runtime::ExecutorJobs::open(&env.data_dir(), other).is_err());
}

/// Executors that look a job up in the data directory give its guests the job's own fuel,
/// what was left of its scenario's daily quota when it started, not a default of their own:
/// a guest that would burn far more is stopped at the quota, on the cluster as here, and the
/// job tells its scientist what it tells here (over L2 data: that it failed, never why).
#[test]
fn executors_hold_a_jobs_guests_to_what_is_left_of_its_scenarios_fuel_quota() {
    use crate::common::Placement;
    let burn = |placement: Placement| {
        let env = crate::common::setup_on(true, placement);
        let w = &env.world;
        w.import_visits(&tidegate_server::visitor_csv(2_000))
            .unwrap();
        let sid = crate::common::scenario_with(&env, serde_json::json!({ "gigafuel_per_day": 1 }));
        let (module, _) = w.publish_module(&sid, &crate::common::burner()).unwrap();
        let hash = module["hash"].as_str().unwrap().to_string();
        let burned = crate::common::job(
            &env,
            &sid,
            "SELECT spot, sum(f(spend)) AS s FROM visits GROUP BY spot",
            &[hash],
        );
        let spent = w
            .scientist
            .submit_job(
                &sid,
                "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
                &[],
            )
            .unwrap_err()
            .to_string();
        assert!(spent.contains("quota of 1 x 10^9 a day"), "{spent}");
        burned
    };
    let here = burn(Placement::Here);
    let there = burn(Placement::ExecutorsReading);
    assert_eq!(there["state"], "failed", "{there}");
    assert_eq!(there["error"], here["error"]);
    // Recorded by the executors, added to the job's meter: the quota, or (two executors
    // burning at once before either hears of the other) at most the quota on each; not the
    // executors' default of fifty times as much (one call alone would burn several times the
    // quota).
    let fuel = there["resources"]["fuel"].as_u64().unwrap();
    assert!(
        (1_000_000_000..=2_000_000_000).contains(&fuel),
        "stopped at the quota: {there}"
    );
    assert_eq!(here["resources"]["fuel"], 1_000_000_000u64);
}

/// A task that still ran when its job ended records what it used after the platform took
/// the job's records: once the records have not changed for half a minute, the server (every
/// minute) or the sweep charges the job for what each executor's record adds to what was charged of
/// it (in the units its scientist sees), once, with an entry in the audit log.
#[test]
fn what_executors_record_after_a_job_ended_is_charged_to_it_once_for_what_it_adds() {
    use crate::common::Placement;
    use std::time::{Duration, SystemTime};
    let (env, sid, module) = crate::common::active_scenario_on(Placement::ExecutorsReading);
    let ended = crate::common::job(&env, &sid, crate::common::DEMO_SQL, &[module]);
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let id = ended["id"].as_str().unwrap().to_string();
    let before = ended["resources"]["fuel"].as_u64().unwrap();
    let usage = env.data_dir().join("cluster-usage");
    // The executors' records, as the platform took them when the job ended: its module's
    // functions ran there only.
    let charged = usage.join(format!(".{id}.charged"));
    let (name, taken) = std::fs::read_dir(&charged)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let used: tidegate_runtime::ResourceUse =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_owned(), used)
        })
        .max_by_key(|(_, used)| used.fuel)
        .unwrap();
    assert!(taken.fuel > 0 && taken.guest_calls > 0, "{taken:?}");

    let long_ago = SystemTime::now() - Duration::from_secs(120);
    let age = |path: &std::path::Path, at: SystemTime| {
        std::fs::File::open(path).unwrap().set_modified(at).unwrap();
    };
    // A task of the job that ran on records its executor's whole use again, grown.
    let record = |fuel: u64, at: SystemTime| {
        let dir = usage.join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let grown = tidegate_runtime::ResourceUse {
            fuel,
            cpu_ms: taken.cpu_ms + 2_500,
            ..taken.clone()
        };
        let file = dir.join(&name);
        std::fs::write(&file, serde_json::to_string(&grown).unwrap()).unwrap();
        age(&file, at);
        age(&dir, at);
    };
    let fuel = || {
        env.world.scientist.get_job(&id).unwrap()["resources"]["fuel"]
            .as_u64()
            .unwrap()
    };
    let usage_entries = || {
        let log =
            std::fs::read_to_string(env.data_dir().join(tidegate_runtime::AUDIT_FILE)).unwrap();
        log.lines().filter(|l| l.contains("\"job.usage\"")).count()
    };

    // Just written: a task may still be recording, so it waits.
    record(taken.fuel + 3_000_000_000, SystemTime::now());
    // Records of a job that never was are removed, uncharged.
    let stranger = usage.join("job_0000");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(
        stranger.join("e.json"),
        serde_json::to_string(&taken).unwrap(),
    )
    .unwrap();
    age(&stranger.join("e.json"), long_ago);
    age(&stranger, long_ago);
    env.world.admin.sweep().unwrap();
    assert_eq!(fuel(), before);
    assert!(!stranger.exists());

    // Settled: what it adds to what was charged of that executor, not its whole use again.
    record(taken.fuel + 3_000_000_000, long_ago);
    env.world.admin.sweep().unwrap();
    assert_eq!(fuel(), before + 3_000_000_000);
    assert!(!usage.join(&id).exists(), "taken");
    assert_eq!(usage_entries(), 1);
    env.world.admin.sweep().unwrap();
    assert_eq!(fuel(), before + 3_000_000_000, "charged once");

    // A later record again: only what it adds to the last.
    record(taken.fuel + 4_000_000_000, long_ago);
    env.world.admin.sweep().unwrap();
    assert_eq!(fuel(), before + 4_000_000_000);
    assert_eq!(usage_entries(), 2);

    // The unit's statement rebuilt from the audit log alone is the platform's, late fuel and
    // all.
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let as_of = time::OffsetDateTime::now_utc() + time::Duration::hours(6);
    let today = as_of.date();
    let period = format!("{:04}-{:02}", today.year(), u8::from(today.month()));
    let w = &env.world;
    let billed = w
        .admin
        .statement_as_of(&w.operator_org, &period, &as_of.format(rfc3339).unwrap())
        .unwrap();
    let replayed = crate::common::statement_from_audit_log(&env, &w.operator_org, &period, as_of);
    assert_eq!(
        serde_json::from_value::<tidegate_runtime::Statement>(billed.clone()).unwrap(),
        replayed
    );
    let consumed: f64 = billed["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["item"] == "resource_consumption")
        .map(|l| l["quantity"].as_f64().unwrap())
        .sum();
    assert!(consumed >= 4.0, "the late fuel is billed: {billed}");
}
