//! What the end-to-end tests share: a fresh data directory behind a real server on a loopback
//! port, the story's principals, and a scenario ready to run jobs.
#![allow(dead_code)] // each test file uses its own part of this

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tidegate_runtime::Platform;
use tidegate_server::{Client, VISITOR_UDF_WASM, World, spawn_server, visitor_csv};

pub(crate) const ROWS: usize = 3_000;

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
    let dir = tempfile::tempdir().unwrap();
    let (platform, token) = Platform::init(
        &dir.path().join("data"),
        &dir.path().join("keys/master.key"),
        "admin",
    )
    .unwrap();
    let (url, runtime) = spawn_server(Arc::new(platform)).unwrap();
    let world = World::onboard(Client::new(&url, Some(&token)), train).unwrap();
    Env {
        _runtime: runtime,
        dir,
        world,
    }
}

/// A world with the visits imported, an active scenario and an approved module.
pub(crate) fn active_scenario() -> (Env, String, String) {
    let env = setup(true);
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
            (func (export "tg_alloc") (param i32) (result i32) i32.const 65536)
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

/// Runs `sql` as a job of scenario `sid` and asks for the export of its result.
pub(crate) fn export_of(env: &Env, sid: &str, sql: &str, modules: &[String]) -> Value {
    let j = job(env, sid, sql, modules);
    assert_eq!(j["state"], "succeeded", "{j}");
    env.world
        .scientist
        .request_export(j["id"].as_str().unwrap())
        .unwrap()
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
            (func (export "tg_alloc") (param i32) (result i32) i32.const 65536)
            (func (export "tg_error") (result i32) i32.const 16)
            (func (export "tg_scalar") (param i32 i32) (result i32) i32.const 0)
            {more})"#,
        len = manifest.len(),
    ))
    .expect("the test module is valid text")
}
