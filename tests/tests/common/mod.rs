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
