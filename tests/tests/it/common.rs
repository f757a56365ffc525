//! What the end-to-end tests share: a fresh data directory behind a real server on a loopback
//! port, the story's principals, and a scenario ready to run jobs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tidegate_runtime::Platform;
use tidegate_server::{Client, VISITOR_UDF_WASM, World, spawn_server, visitor_csv};

pub(crate) const ROWS: usize = 3_000;

/// The demo's query without its sum: an aggregate with a module's scalar inside `avg`.
pub(crate) const DEMO_SQL: &str = "SELECT spot, count(*) AS visits, avg(age_at_visit(resident_id, visit_date)) AS avg_age FROM visits GROUP BY spot";

/// Where the Python tools of the tests (Selenium, an OpenAPI validator) are installed, or
/// None where they are not (a plain `cargo test`); `scripts/test` installs and requires them.
pub(crate) fn python_tools() -> Option<String> {
    match std::env::var("TIDEGATE_PYTHON_TOOLS") {
        Ok(path) => Some(path),
        Err(_) if std::env::var_os("TIDEGATE_REQUIRE_TOOLS").is_some() => {
            panic!("TIDEGATE_PYTHON_TOOLS is not set: run scripts/install-test-tools")
        }
        Err(_) => {
            eprintln!(
                "the Python test tools are not here: run scripts/test (or scripts/install-test-tools)"
            );
            None
        }
    }
}

/// Runs the test named `name` (`module::test`) again, alone, in a child process of this test
/// binary, and tells whether this is that child: there the caller goes on with the test's
/// body; here the test passes when the child ran it and it passed. For a test that measures
/// the whole process (its memory) or may abort it (a stack overflow): the tests of every
/// module run as threads of one process, and would disturb the measure or be taken down.
pub(crate) fn in_a_process_of_its_own(name: &str) -> bool {
    const CHILD: &str = "TIDEGATE_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |text: &str| text.lines().rev().take(6).collect::<Vec<_>>().join(" | ");
    assert!(
        out.status.success(),
        "{name} failed in a process of its own ({}): {}",
        out.status,
        tail(&stderr)
    );
    // A name that matches no test passes too: it must have run exactly this one.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "no test named {name} ran in the child process: {}",
        tail(&stdout)
    );
    false
}

/// The message of an action that must be refused.
pub(crate) fn refusal(result: anyhow::Result<Value>) -> String {
    result.expect_err("the action is refused").to_string()
}

pub(crate) fn is_frozen_refusal(message: &str) -> bool {
    message.contains("is frozen by the authority")
}

/// Sends raw bytes to the server, does `then` with the connection, and returns the whole
/// answer.
pub(crate) fn raw(url: &str, request: &[u8], then: &dyn Fn(&mut TcpStream)) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer and close before it has read the whole request (a header over
    // its limit): the write then fails, and the answer is still there to read.
    let _ = s.write_all(request);
    then(&mut s);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of a raw answer, if it has one.
pub(crate) fn json_of(answer: &str) -> Option<Value> {
    let at = answer.find("\r\n\r\n")? + 4;
    serde_json::from_str(answer[at..].trim()).ok()
}

/// A new org of `kind` with one trained principal holding `roles`; its client and ids.
pub(crate) fn outsider(
    w: &World,
    org: &str,
    kind: &str,
    roles: &[&str],
) -> (Client, String, String) {
    let o = w.admin.create_org(org, kind).unwrap();
    let org_id = o["id"].as_str().unwrap().to_string();
    let p = w
        .admin
        .create_principal(&format!("{org}.p"), &org_id, roles)
        .unwrap();
    let pid = p["id"].as_str().unwrap().to_string();
    w.admin.record_training(&pid, "training").unwrap();
    (w.admin.as_token(p["token"].as_str().unwrap()), org_id, pid)
}

/// A second scenario over the visits (a draft, or applied for at once).
pub(crate) fn scenario_request(draft: bool) -> Value {
    let today = time::OffsetDateTime::now_utc().date();
    json!({
        "name": "Second product",
        "key_area": "culture and tourism",
        "purpose": "visits per spot",
        "public_interest": true,
        "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot"] }],
        "term_start": (today - time::Duration::days(1)).to_string(),
        "term_end": (today + time::Duration::days(30)).to_string(),
        "planned_products": ["visits per spot"],
        "draft": draft,
    })
}

/// A scenario `scientist` applies for with `request`, approved by the admin and the provider.
pub(crate) fn approved_scenario(
    w: &tidegate_server::World,
    scientist: &tidegate_server::Client,
    request: &Value,
) -> String {
    let applied = scientist.apply_scenario(request).unwrap();
    let sid = applied["id"].as_str().unwrap().to_string();
    w.admin.approve_scenario(&sid).unwrap();
    w.provider.approve_scenario(&sid).unwrap();
    sid
}

/// A scenario over the visits' resident, spot and spend with export rules `rules`, approved.
pub(crate) fn scenario_with(env: &Env, rules: Value) -> String {
    let w = &env.world;
    let mut request = scenario_request(false);
    request["export_rules"] = rules;
    request["grants"] =
        json!([{ "dataset": "visits", "columns": ["resident_id", "spot", "spend"] }]);
    approved_scenario(w, &w.scientist, &request)
}

/// A module whose `f(float64) -> float64` loops two billion times on every call, then traps.
pub(crate) fn burner() -> Vec<u8> {
    scalar_module(
        "f",
        "float64) -> float64",
        "(block $d (loop $l
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 2000000000)))))
         unreachable",
        "",
    )
}

/// The statement of `org` for `period` as of `as_of`, rebuilt from the audit log alone.
pub(crate) fn statement_from_audit_log(
    env: &Env,
    org: &str,
    period: &str,
    as_of: time::OffsetDateTime,
) -> tidegate_runtime::Statement {
    let entries = tidegate_runtime::read_audit_log(
        &env.data_dir().join(tidegate_runtime::AUDIT_FILE),
        Some(&platform_key(env)),
    )
    .unwrap();
    tidegate_runtime::statement_from_ledger(
        &tidegate_runtime::ledger_from_audit(&entries).unwrap(),
        org,
        period,
        as_of,
    )
    .unwrap()
}

/// The platform's public key, as the data directory holds it (hex in `platform.pub`).
pub(crate) fn platform_key(env: &Env) -> Vec<u8> {
    let text =
        std::fs::read_to_string(env.data_dir().join(tidegate_runtime::PUBLIC_KEY_FILE)).unwrap();
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

pub(crate) struct Env {
    pub(crate) _runtime: tokio::runtime::Runtime,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) world: World,
}

impl Env {
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

pub(crate) fn setup(train: bool) -> Env {
    setup_on(train, Placement::Here)
}

/// Where a platform's jobs run their inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// On the platform's own engine.
    Here,
    /// On an in-process cluster whose executors share the platform's registry of jobs.
    Cluster,
    /// On an in-process cluster of two executors that share nothing with the platform or
    /// each other but the cluster's secret: each looks jobs up in the data directory,
    /// read-only, as an executor process does (`tidegate executor`).
    ExecutorsReading,
}

/// [`setup`], with the jobs' inputs placed as `placement` says.
pub(crate) fn setup_on(train: bool, placement: Placement) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (platform, token) = Platform::init(
        &dir.path().join("data"),
        &dir.path().join("keys/master.key"),
        "admin",
    )
    .unwrap();
    let platform = Arc::new(platform);
    let (url, runtime) = spawn_server(Arc::clone(&platform)).unwrap();
    let work = dir.path().join("cluster");
    let cluster = match placement {
        Placement::Here => None,
        Placement::Cluster => {
            Some(runtime.block_on(tidegate_runtime::Cluster::standalone(2, &work)))
        }
        Placement::ExecutorsReading => {
            // Two executors, each with its own view of the data directory (as two processes).
            let sources = (0..2)
                .map(|_| {
                    let master =
                        tidegate_runtime::MasterKey::load(&dir.path().join("keys/master.key"))
                            .unwrap();
                    let jobs =
                        tidegate_runtime::ExecutorJobs::open(&dir.path().join("data"), master);
                    Arc::new(jobs.unwrap()) as Arc<dyn tidegate_runtime::JobSource>
                })
                .collect();
            Some(
                runtime.block_on(tidegate_runtime::Cluster::standalone_reading(
                    &work, sources,
                )),
            )
        }
    };
    platform.use_cluster(cluster.map(Result::unwrap));
    let world = World::onboard(Client::new(&url, Some(&token)), train).unwrap();
    Env {
        _runtime: runtime,
        dir,
        world,
    }
}

/// A world with the visits imported, an active scenario and an approved module.
pub(crate) fn active_scenario() -> (Env, String, String) {
    active_scenario_on(Placement::Here)
}

/// [`active_scenario`], with the jobs' inputs on an in-process cluster when `cluster`.
pub(crate) fn active_scenario_on(placement: Placement) -> (Env, String, String) {
    let env = setup_on(true, placement);
    env.world.import_visits(&visitor_csv(ROWS)).unwrap();
    let (_, scenario) = env.world.open_scenario().unwrap();
    assert_eq!(scenario["state"], "active", "{scenario}");
    let sid = scenario["id"].as_str().unwrap().to_string();
    let (module, _) = env.world.publish_module(&sid, VISITOR_UDF_WASM).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    (env, sid, hash)
}

pub(crate) fn job(env: &Env, sid: &str, sql: &str, modules: &[String]) -> Value {
    env.world.scientist.submit_job(sid, sql, modules).unwrap()
}

/// A module of the ABI with one function, `f(int64) -> int64`, that returns `constant` for
/// every row.
pub(crate) fn constant_module(constant: i64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 40)
            (data (i32.const 16) "\20\00\00\00\18\00\00\00")
            (data (i32.const 32) "scalar f(int64) -> int64")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const {INPUT})
            (func (export "tg_error") (result i32) i32.const 16)
            (func (export "tg_scalar") (param $fn i32) (param $b i32) (result i32)
                (local $n i32) (local $i i32)
                (local.set $n (i32.load (local.get $b)))
                (block $done (loop $next
                    (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                    (i64.store (i32.add (i32.const 1048640) (i32.mul (local.get $i) (i32.const 8))) (i64.const {constant}))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br $next)))
                (i32.store (i32.const 1048576) (i32.const 2))
                (i32.store (i32.const 1048580) (local.get $n))
                (i32.store (i32.const 1048584) (i32.const 0))
                (i32.store (i32.const 1048588) (i32.const 0))
                (i32.store (i32.const 1048592) (i32.const 0))
                (i32.store (i32.const 1048596) (i32.const 1048640))
                (i32.store (i32.const 1048600) (i32.mul (local.get $n) (i32.const 8)))
                i32.const 1048576))"#
    ))
    .unwrap()
}

/// The resident an attack aims at: the attacker knows their ID (a row of the demo CSV).
pub(crate) fn target() -> String {
    visitor_csv(ROWS)
        .lines()
        .nth(100)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string()
}

/// The preview of an export as a reviewer sees it, or nothing when nothing was kept.
pub(crate) fn released(env: &Env, export: &Value) -> String {
    let seen = seen_by_reviewer(env, export);
    seen["preview"].as_str().unwrap_or("").to_string()
}

/// A scenario as its scientist sees it.
pub(crate) fn show_scenario(env: &Env, sid: &str) -> Value {
    env.world
        .scientist
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap()
}

/// Runs `sql` as a job of scenario `sid` over L2 data and expects it refused before it ran
/// (R-GATE 2: nothing the gate cannot check runs): returns the refusal.
pub(crate) fn refused_before_running(
    env: &Env,
    sid: &str,
    sql: &str,
    modules: &[String],
) -> String {
    let j = job(env, sid, sql, modules);
    assert_eq!(j["state"], "failed", "{sql}: {j}");
    // No guest ran and no output was made (the scan's footer may have been read to plan it).
    assert_eq!(j["resources"]["guest_calls"], 0, "{sql}: {j}");
    assert_eq!(j["resources"]["fuel"], 0, "{sql}: {j}");
    assert_eq!(j["resources"]["output_bytes"], 0, "{sql}: {j}");
    let error = j["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("refused: "), "{sql}: {error}");
    assert!(
        error.ends_with(
            "must be one grouped aggregate the export gate can check; nothing else runs"
        ),
        "{sql}: {error}"
    );
    error
}

/// Runs `sql` as a job of scenario `sid` and asks for the export of its result.
/// The export comes back as a reviewer of another org sees it, with the gate's numbers; the
/// requesting scientist reads which checks passed and none of the counts (checked here).
pub(crate) fn export_of(env: &Env, sid: &str, sql: &str, modules: &[String]) -> Value {
    let j = job(env, sid, sql, modules);
    assert_eq!(j["state"], "succeeded", "{j}");
    let requested = env
        .world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap();
    full_report(env, &requested)
}

/// An export the requesting scientist holds, as the reviewers see it, after checking that the
/// scientist's own copy of the gate report has no count of groups or rows.
pub(crate) fn full_report(env: &Env, requested: &Value) -> Value {
    let report = &requested["gate_report"];
    assert_eq!(report["redacted"], true, "{requested}");
    for count in ["groups_total", "groups_suppressed", "rows_released"] {
        assert_eq!(report[count], 0, "{requested}");
    }
    let seen = seen_by_reviewer(env, requested);
    assert_eq!(seen["state"], requested["state"]);
    seen
}

/// The export as a reviewer of another org sees it (preview, query, earlier exports).
pub(crate) fn seen_by_reviewer(env: &Env, export: &Value) -> Value {
    env.world
        .reviewer
        .ok(
            "GET",
            &format!("/v1/exports/{}", export["id"].as_str().unwrap()),
            None,
        )
        .unwrap()
}

/// The rows a reviewer is shown, as CSV.
pub(crate) fn preview_of(env: &Env, export: &Value) -> String {
    let seen = seen_by_reviewer(env, export);
    seen["preview"]
        .as_str()
        .unwrap_or_else(|| panic!("no preview in {seen}"))
        .to_string()
}

/// A check of an export's gate report: whether it passed, and its numbers.
pub(crate) fn gate_check(export: &Value, name: &str) -> (bool, String) {
    let c = export["gate_report"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {export}"));
    (
        c["passed"].as_bool().unwrap(),
        c["detail"].as_str().unwrap().to_string(),
    )
}

/// Where the host may write its input (returned by `tg_alloc`) and where hand-written guests
/// put their output descriptor and data.
pub(crate) const INPUT: u32 = 65_536;
pub(crate) const OUT: u32 = 1 << 20;
pub(crate) const OUT_DATA: u32 = OUT + 64;

/// A module of the Tidegate ABI with one scalar `name` of the given signature (`ARGS) -> RET`),
/// whose `tg_scalar` body is `body`; `extra` adds fields to the module. Helpers for bodies:
/// `$desc` writes an output descriptor at [`OUT`], `$rows` and `$src` read the input batch,
/// and the globals `$seen` and `$calls` keep state between calls.
pub(crate) fn scalar_module(name: &str, sig: &str, body: &str, extra: &str) -> Vec<u8> {
    let manifest = format!("scalar {name}({sig}");
    let len = manifest.len();
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 40)
            (global $seen (mut i64) (i64.const -1))
            (global $calls (mut i32) (i32.const 0))
            (data (i32.const 16) "\20\00\00\00\{len:02x}\00\00\00")
            (data (i32.const 32) "{manifest}")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const {INPUT})
            (func (export "tg_error") (result i32) i32.const 16)
            (func $desc (param $ty i32) (param $n i32) (param $validity i32) (param $offsets i32) (param $data i32) (param $len i32) (result i32)
                (i32.store (i32.const {OUT}) (local.get $ty))
                (i32.store (i32.const {o4}) (local.get $n))
                (i32.store (i32.const {o8}) (i32.const 0))
                (i32.store (i32.const {o12}) (local.get $validity))
                (i32.store (i32.const {o16}) (local.get $offsets))
                (i32.store (i32.const {o20}) (local.get $data))
                (i32.store (i32.const {o24}) (local.get $len))
                i32.const {OUT})
            (func $rows (param $b i32) (result i32) (i32.load (local.get $b)))
            (func $src (param $b i32) (result i32) (i32.load (i32.add (local.get $b) (i32.const 28))))
            {extra}
            (func (export "tg_scalar") (param $fn i32) (param $b i32) (result i32)
                (local $n i32) (local $i i32)
                {body}))"#,
        o4 = OUT + 4,
        o8 = OUT + 8,
        o12 = OUT + 12,
        o16 = OUT + 16,
        o20 = OUT + 20,
        o24 = OUT + 24,
    ))
    .expect("the test module is valid text")
}

/// A module of the ABI declaring `manifest`, with 40 pages of memory, input at 64 KiB, a
/// `tg_scalar` that fails, and the functions in `more` (WebAssembly text).
pub(crate) fn abi_module(manifest: &str, more: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 40)
            (data (i32.const 16) "\20\00\00\00\{len:02x}\00\00\00")
            (data (i32.const 32) "{manifest}")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const {INPUT})
            (func (export "tg_error") (result i32) i32.const 16)
            (func (export "tg_scalar") (param i32 i32) (result i32) i32.const 0)
            {more})"#,
        len = manifest.len(),
    ))
    .expect("the test module is valid text")
}

/// A module of the ABI whose one function spins forever.
pub(crate) fn spinning_module() -> Vec<u8> {
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

// ----- Shared by the red-team suites of the gate (rounds 4 and 5) -----

/// The demo data's rows: (resident_id, spot, visit_date, spend).
pub(crate) fn data() -> Vec<(String, String, String, f64)> {
    visitor_csv(ROWS)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

/// The released rows of a preview, as (first cell, every cell).
pub(crate) fn rows(preview: &str) -> Vec<(String, Vec<String>)> {
    preview
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cells: Vec<String> = l
                .split(',')
                .map(|c| c.trim_matches('"').to_string())
                .collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

/// Runs an attack: refused before it ran (empty), or run and exported; returns the preview.
pub(crate) fn attempt(env: &Env, sid: &str, sql: &str) -> String {
    let j = job(env, sid, sql, &[]);
    if j["state"] == "failed" {
        let error = j["error"].as_str().unwrap();
        assert!(error.starts_with("refused: "), "{sql}: {error}");
        eprintln!("REFUSED: {error}");
        return String::new();
    }
    let e = full_report(
        env,
        &env.world
            .scientist
            .request_export(j["id"].as_str().unwrap())
            .unwrap(),
    );
    let p = released(env, &e);
    eprintln!("RELEASED:\n{p}");
    p
}

/// Rows per spot.
pub(crate) fn rows_per_spot() -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, spot, _, _) in data() {
        *m.entry(spot).or_insert(0) += 1;
    }
    m
}

/// A visit that is the only one at its spot on its date (the attacker knows the person was
/// there that day: a quasi-identifier, which may filter rows), and its resident's ID.
pub(crate) fn lone_visit() -> (String, String, String, f64) {
    let d = data();
    let mut at: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, s, v, _) in &d {
        *at.entry((s.clone(), v.clone())).or_insert(0) += 1;
    }
    d.iter()
        .skip(100)
        .find(|(_, s, v, _)| at[&(s.clone(), v.clone())] == 1)
        .cloned()
        .unwrap()
}

/// Runs `sql` over `tables` with the module `wasm` loaded in a fresh sandbox, as a job's
/// engine does; the result's batches, or the error as the scientist would read it.
pub(crate) async fn run_module(
    wasm: &[u8],
    sql: &str,
    tables: &[tidegate_runtime::TableInput],
) -> Result<Vec<arrow::array::RecordBatch>, String> {
    use tidegate_runtime::{EngineLimits, GuestLimits, JobMeter, Sandbox, run_query};
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(wasm).map_err(|e| e.to_string())?;
    let meter = Arc::new(JobMeter::new(GuestLimits::default()));
    run_query(
        sql,
        tables,
        sandbox.udfs(&module, &meter),
        EngineLimits::default(),
    )
    .await
    .map(|o| o.batches)
    .map_err(|e| e.to_string())
}

/// The rank of rows of rationals, by elimination in floating point (small 0/1 systems): an
/// independent check of what released sums determine.
pub(crate) fn rank(rows: &[Vec<f64>]) -> usize {
    let mut m = rows.to_vec();
    let cols = m.first().map_or(0, Vec::len);
    let mut r = 0;
    for c in 0..cols {
        let Some(p) = (r..m.len()).find(|i| m[*i][c].abs() > 1e-9) else {
            continue;
        };
        m.swap(r, p);
        for i in 0..m.len() {
            if i != r && m[i][c].abs() > 1e-9 {
                let f = m[i][c] / m[r][c];
                let pivot = m[r].clone();
                for (x, p) in m[i].iter_mut().zip(&pivot) {
                    *x -= f * p;
                }
            }
        }
        r += 1;
    }
    r
}

/// Every file under `dir`, at any depth (none if `dir` does not exist).
pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
