//! The platform: one data directory with its metadata database, encrypted objects, audit log
//! and signing key, and the workflows of SPEC.md from onboarding to release.
//!
//! Every workflow asks `tidegate-policy` first, changes state inside one SQLite transaction,
//! and appends its audit entry before that transaction commits: an action whose entry cannot
//! be made durable does not happen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType as ArrowType, Field, Schema};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidegate_policy::{
    CheckOutcome, ColumnSpec, ColumnTag, DataType, ExportEvent, ExportRules, GateReport, Level,
    Origin, Principal, QueryShape, Role, ScenarioApprovals, ScenarioState, default_threshold,
};
use time::Date;

use crate::audit::AuditLog;
use crate::bundle::{self, Signer};
use crate::crypto::{
    DataKey, MasterKey, PseudonymKey, random_bytes, random_token, sha256_hex, write_atomic,
};
use crate::error::{Error, Result};
use crate::gate::{self, GateInput};
use crate::job::{self, EngineLimits, TableData, TableInput};
use crate::metering::{Event, Ledger, PRICE_ITEMS, ScenarioTerms};
use crate::sandbox::{GuestLimits, JobMeter, Sandbox};
use crate::storage::{SealedSource, SealedStore, from_parquet, to_parquet, to_parquet_with_schema};

pub const AUDIT_FILE: &str = "audit.log";
pub const PUBLIC_KEY_FILE: &str = "platform.pub";
const DB_FILE: &str = "meta.sqlite";
const SIGNING_KEY_FILE: &str = "signing.key";
/// The re-wrapped signing key while a master key rotation is in flight.
const SIGNING_KEY_NEXT: &str = "signing.key.next";
const EXPORT_MAX_ROWS: u64 = 10_000;
const EXPORT_MAX_BYTES: u64 = 10 << 20;
const MAX_IMPORT_BYTES: usize = 1 << 30;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, org_id TEXT NOT NULL REFERENCES orgs(id),
    roles TEXT NOT NULL, trained_at TEXT, training TEXT, token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, org_id TEXT NOT NULL REFERENCES orgs(id),
    level TEXT NOT NULL, origin TEXT NOT NULL, columns TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dataset_versions (
    dataset_id TEXT NOT NULL REFERENCES datasets(id), version INTEGER NOT NULL,
    content_hash TEXT NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL, quality TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS scenarios (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, org_id TEXT NOT NULL REFERENCES orgs(id),
    key_area TEXT NOT NULL, purpose TEXT NOT NULL, public_interest INTEGER NOT NULL,
    grants TEXT NOT NULL, term_start TEXT NOT NULL, term_end TEXT NOT NULL,
    k INTEGER NOT NULL, planned_products TEXT NOT NULL, state TEXT NOT NULL,
    applied_by TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenario_approvals (
    scenario_id TEXT NOT NULL REFERENCES scenarios(id), principal_id TEXT NOT NULL,
    as_role TEXT NOT NULL, org_id TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules (
    hash TEXT NOT NULL, scenario_id TEXT NOT NULL REFERENCES scenarios(id),
    uploaded_by TEXT NOT NULL, org_id TEXT NOT NULL, functions TEXT NOT NULL, wasm BLOB NOT NULL,
    approved_by TEXT, approval_note TEXT, approved_at TEXT, created_at TEXT NOT NULL,
    PRIMARY KEY (hash, scenario_id));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, scenario_id TEXT NOT NULL REFERENCES scenarios(id),
    submitted_by TEXT NOT NULL, sql TEXT NOT NULL, modules TEXT NOT NULL, state TEXT NOT NULL,
    error TEXT, rows INTEGER, schema TEXT, resources TEXT, level TEXT NOT NULL,
    shape TEXT, plan TEXT, inputs TEXT NOT NULL, result_hash TEXT, wrapped_key BLOB,
    created_at TEXT NOT NULL, finished_at TEXT, policy_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id), requested_by TEXT NOT NULL,
    org_id TEXT NOT NULL, state TEXT NOT NULL, gate_report TEXT NOT NULL, result_hash TEXT,
    wrapped_key BLOB, required_approvals INTEGER NOT NULL, decision_comment TEXT,
    created_at TEXT NOT NULL, released_at TEXT);
CREATE TABLE IF NOT EXISTS export_reviews (
    export_id TEXT NOT NULL REFERENCES exports(id), reviewer_id TEXT NOT NULL,
    decision TEXT NOT NULL, comment TEXT NOT NULL, result_hash TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prices (
    category TEXT PRIMARY KEY, unit TEXT NOT NULL, fen_per_unit INTEGER NOT NULL);
"#;

/// The price table's items by key, unit and default price: see [`PRICE_ITEMS`].
fn price_item(key: &str) -> Result<(&'static str, i64)> {
    PRICE_ITEMS
        .iter()
        .find(|(k, ..)| *k == key)
        .map(|(_, _, unit, default)| (*unit, *default))
        .ok_or_else(|| {
            Error::BadInput(format!(
                "unknown price category {key}: one of {}",
                PRICE_ITEMS.map(|c| c.0).join(", ")
            ))
        })
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(random_bytes::<8>()))
}

fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

fn parse_date(s: &str) -> Result<Date> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| Error::BadInput(format!("`{s}` is not a date of the form YYYY-MM-DD")))
}

fn hash_token(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("a view serializes")
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Integrity(format!("stored JSON: {e}")))
}

// ----- Views: what the API returns -----

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrincipalView {
    pub id: String,
    pub name: String,
    pub org: String,
    pub roles: Vec<Role>,
    pub trained: bool,
    /// Present once, in the answer that created the principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnInput {
    pub name: String,
    /// Declared type; inferred from the file when absent.
    #[serde(default)]
    pub data_type: Option<DataType>,
    #[serde(default)]
    pub tags: Vec<ColumnTag>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    pub name: String,
    pub level: Level,
    /// `csv` or `parquet`.
    pub format: String,
    /// Columns with declared types and tags; columns not listed keep their inferred type and
    /// get no tags.
    #[serde(default)]
    pub columns: Vec<ColumnInput>,
    /// Orgs (names or ids) whose approval every scenario requesting this dataset needs besides
    /// the admin's and the provider's, e.g. the province for data it returned. A new version
    /// keeps the list unless the import names one.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The file, base64.
    pub data_base64: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetView {
    pub id: String,
    pub name: String,
    pub level: Level,
    pub origin: Origin,
    pub provider_org: String,
    pub columns: Vec<ColumnSpec>,
    pub version: i64,
    pub rows: i64,
    pub content_hash: String,
    pub quality: Value,
    /// Social data awaiting an admin's approval; not usable until approved.
    #[serde(default)]
    pub pending: bool,
    /// Orgs whose approval a scenario requesting the dataset needs, besides the provider's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRequest {
    pub dataset: String,
    pub columns: Vec<String>,
    /// The dataset version the grant is pinned to, set when the scenario becomes active: a
    /// new import does not reach a running authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioRequest {
    pub name: String,
    pub key_area: String,
    pub purpose: String,
    #[serde(default)]
    pub public_interest: bool,
    pub grants: Vec<GrantRequest>,
    pub term_start: String,
    pub term_end: String,
    #[serde(default)]
    pub k: Option<u64>,
    #[serde(default)]
    pub planned_products: Vec<String>,
    /// Masking, privacy budget and size limits of the scenario's exports.
    #[serde(default)]
    pub export_rules: ExportRules,
    /// Keep the application as a draft; `submit` asks for approvals later.
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalView {
    pub by: String,
    pub as_role: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One step of an export request's review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportStep {
    pub state: String,
    pub at: String,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioView {
    pub id: String,
    pub name: String,
    pub org: String,
    pub key_area: String,
    pub purpose: String,
    pub public_interest: bool,
    pub grants: Vec<GrantRequest>,
    pub term_start: String,
    pub term_end: String,
    pub k: u64,
    pub planned_products: Vec<String>,
    #[serde(default)]
    pub export_rules: ExportRules,
    pub state: ScenarioState,
    pub approvals: Vec<ApprovalView>,
    pub missing_approvals: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleView {
    pub hash: String,
    pub scenario: String,
    pub uploaded_by: String,
    pub functions: Vec<crate::sandbox::FunctionSig>,
    pub approved_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub scenario: String,
    pub sql: String,
    /// Hashes of the modules whose functions the query calls.
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResourceUse {
    pub fuel: u64,
    pub guest_calls: u64,
    pub peak_guest_memory_bytes: u64,
    pub guest_output_bytes: u64,
    pub wall_ms: u64,
    /// CPU time of the job's own threads (query engine and guests).
    #[serde(default)]
    pub cpu_ms: u64,
    /// The most memory the query engine's operators reserved at once.
    #[serde(default)]
    pub peak_engine_memory_bytes: u64,
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub output_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub scenario: String,
    pub submitted_by: String,
    pub sql: String,
    pub modules: Vec<String>,
    pub state: String,
    pub error: Option<String>,
    pub rows: Option<i64>,
    pub schema: Vec<(String, String)>,
    pub resources: Option<ResourceUse>,
    pub level: Level,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportView {
    pub id: String,
    pub job: String,
    pub requested_by: String,
    pub state: String,
    pub gate_report: GateReport,
    pub result_hash: Option<String>,
    pub required_approvals: u64,
    pub reviews: Vec<ApprovalView>,
    /// Every state the request went through, with who moved it and their comment (R-REVIEW).
    #[serde(default)]
    pub history: Vec<ExportStep>,
    /// The released rows as CSV, shown to reviewers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// The query, its plan and module hashes, shown to reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// The scenario's other exports that passed the gate, shown to reviewers beside this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Value>,
}

struct DatasetRow {
    id: String,
    name: String,
    org: String,
    level: Level,
    origin: Origin,
    columns: Vec<ColumnSpec>,
    pending: bool,
    approvers: Vec<String>,
}

/// A dataset version a job reads, with the columns its scenario grants.
struct JobInput {
    dataset: DatasetRow,
    columns: Vec<String>,
    version: i64,
    content_hash: String,
    wrapped: Vec<u8>,
    /// What the stored version is bound to (org, dataset, version).
    context: String,
    rows: u64,
}

/// A stored job with what only the runtime sees.
struct JobRecord {
    view: JobView,
    result_hash: Option<String>,
    wrapped: Option<Vec<u8>>,
    shape: Option<String>,
    plan: Option<String>,
    inputs: Vec<Value>,
}

struct ScenarioRow {
    id: String,
    name: String,
    org: String,
    grants: Vec<GrantRequest>,
    term_start: Date,
    term_end: Date,
    k: u64,
    export_rules: ExportRules,
    stored_state: ScenarioState,
    view: ScenarioView,
}

/// A job ready to run: its tables, its guests' functions, the sealed sources it reads (for the
/// bytes scanned) and the rows of its inputs.
type PreparedJob = (Vec<TableInput>, job::Functions, Vec<SealedSource>, u64);

/// A stored object's wrapped data key: kind, name, the context bound to it, the wrapped key.
type WrappedKey = (String, String, String, Vec<u8>);

/// A running job's id and its meter, through which it is cancelled.
type RunningJob = (String, Arc<JobMeter>);

/// The running platform over one data directory.
pub struct Platform {
    dir: PathBuf,
    master: MasterKey,
    db: Mutex<Connection>,
    audit: AuditLog,
    sandbox: Arc<Sandbox>,
    /// Running jobs by scenario, so that suspending a scenario cancels them.
    running: Mutex<HashMap<String, Vec<RunningJob>>>,
    signer: Arc<Signer>,
    /// Held while the platform is open: one process per data directory.
    _lock: fs::File,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Platform({})", self.dir.display())
    }
}

/// Schema changes after the first schema, in order: `(version, statements)`. A data directory
/// records the version it is at (`PRAGMA user_version`); opening it applies the missing steps
/// in one transaction each, so a kill halfway leaves the last complete version.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        "ALTER TABLE datasets ADD COLUMN approvers TEXT NOT NULL DEFAULT '[]';
         ALTER TABLE scenarios ADD COLUMN export_rules TEXT NOT NULL DEFAULT '{}';",
    ),
    (
        3,
        "ALTER TABLE orgs ADD COLUMN exited_at TEXT;
         ALTER TABLE exports ADD COLUMN bytes INTEGER;",
    ),
    (4, "ALTER TABLE dataset_versions ADD COLUMN context TEXT;"),
    (5, "ALTER TABLE exports ADD COLUMN groups_key BLOB;"),
    (6, "ALTER TABLE exports ADD COLUMN epsilon REAL;"),
    (
        7,
        "CREATE TABLE export_events (
             export_id TEXT NOT NULL REFERENCES exports(id), at TEXT NOT NULL,
             state TEXT NOT NULL, actor TEXT NOT NULL, comment TEXT);
         INSERT INTO export_events SELECT id, created_at, state, requested_by, NULL FROM exports;",
    ),
];

/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 7;

/// Who moves an export when the gate does.
const GATE_ACTOR: &str = "export gate";

const LOCK_FILE: &str = "lock";

/// The context the pseudonym root key is wrapped under.
const PSEUDONYM_ROOT: &str = "pseudonym-root";

/// What a stored dataset version is bound to, in every chunk's additional data and in its
/// wrapped key: its org, the dataset and the version. A file moved to another dataset, version
/// or org does not open.
fn dataset_context(org: &str, dataset: &str, version: i64) -> String {
    format!("datasets/{org}/{dataset}/v{version}")
}

/// Takes the data directory's exclusive lock, or says who holds it. The kernel releases it
/// when the process ends, however it ends.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Refused(format!(
            "another tidegate process has {} open; stop it first",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Removes what an interrupted atomic write left behind: temporary files are never referred
/// to by the metadata, and the write they belonged to was never acknowledged.
fn remove_temporary_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_temporary_files(&path)?;
        } else if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn open_db(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let at: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if at > SCHEMA_VERSION {
        return Err(Error::Refused(format!(
            "the data directory is at schema version {at}, written by a newer Tidegate; this one knows up to {SCHEMA_VERSION}"
        )));
    }
    if at == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", 1)?;
        tx.commit()?;
    }
    for (version, statements) in MIGRATIONS {
        let at: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if at >= *version {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(statements)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

impl Platform {
    /// Creates a new data directory: metadata, master key (outside the directory), signing
    /// key and the first admin. Returns the platform and the admin's token, shown once.
    pub fn init(
        dir: &Path,
        master_key_path: &Path,
        admin_name: &str,
    ) -> Result<(Platform, String)> {
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        if dir.join(DB_FILE).exists() {
            return Err(Error::BadInput(format!(
                "{} already holds a Tidegate data directory",
                dir.display()
            )));
        }
        let abs_dir = fs::canonicalize(dir)?;
        let key_parent = master_key_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(key_parent)?;
        if fs::canonicalize(key_parent)?.starts_with(&abs_dir) {
            return Err(Error::Refused(
                "the master key must not be stored inside the data directory".into(),
            ));
        }
        let master = MasterKey::create(master_key_path)?;
        let (signer, stored) = Signer::generate(&master)?;
        write_atomic(&dir.join(SIGNING_KEY_FILE), &stored)?;
        write_atomic(
            &dir.join(PUBLIC_KEY_FILE),
            signer.public_key_hex().as_bytes(),
        )?;
        let platform = Platform::assemble(dir, master, signer, lock)?;
        let token = random_token();
        {
            let mut db = platform.db.lock().expect("db");
            let tx = db.transaction()?;
            let now = crate::now_rfc3339();
            let org = new_id("org");
            let admin = new_id("p");
            tx.execute(
                "INSERT INTO settings VALUES ('master_key', ?1), ('policy_version', '1')",
                params![platform.master.fingerprint()],
            )?;
            tx.execute(
                "INSERT INTO orgs (id, name, kind, created_at) VALUES (?1, 'data-authority', 'authority', ?2)",
                params![org, now],
            )?;
            tx.execute(
                "INSERT INTO principals VALUES (?1, ?2, ?3, 'admin', ?4, 'bootstrap', ?5, ?4)",
                params![admin, admin_name, org, now, hash_token(&token)],
            )?;
            platform.audit.append(
                &admin,
                "platform.init",
                &org,
                json!({ "admin": admin, "public_key": platform.signer.public_key_hex() }),
            )?;
            tx.commit()?;
        }
        Ok((platform, token))
    }

    /// Opens an existing data directory with its master key.
    pub fn open(dir: &Path, master: MasterKey) -> Result<Platform> {
        if !dir.join(DB_FILE).exists() {
            return Err(Error::BadInput(format!(
                "{} is not a Tidegate data directory; run `tidegate init` first",
                dir.display()
            )));
        }
        let lock = lock_dir(dir)?;
        let expected: Option<String> = open_db(&dir.join(DB_FILE))?
            .query_row(
                "SELECT value FROM settings WHERE key = 'master_key'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(expected) = &expected
            && *expected != master.fingerprint()
        {
            return Err(Error::Refused(format!(
                "this is not the data directory's master key (it expects key {expected}, this is {})",
                master.fingerprint()
            )));
        }
        // A rotation that committed but was killed before its last rename finishes here.
        let next = dir.join(SIGNING_KEY_NEXT);
        if next.exists() {
            match Signer::load(&master, &fs::read(&next)?) {
                Ok(_) => {
                    fs::rename(&next, dir.join(SIGNING_KEY_FILE))?;
                    fs::File::open(dir)?.sync_all()?;
                }
                Err(_) => fs::remove_file(&next)?,
            }
        }
        let signer = Signer::load(&master, &fs::read(dir.join(SIGNING_KEY_FILE))?)?;
        Platform::assemble(dir, master, signer, lock)
    }

    /// Every wrapped data key in the metadata, with the object it belongs to.
    /// Every wrapped data key with its object: kind, name, the context bound to it.
    fn wrapped_keys(db: &Connection) -> Result<Vec<WrappedKey>> {
        let mut out = Vec::new();
        let mut q = |sql: &str, kind: &str| -> Result<()> {
            let mut stmt = db.prepare(sql)?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for row in rows {
                let (name, context, wrapped) = row?;
                out.push((kind.to_string(), name, context, wrapped));
            }
            Ok(())
        };
        // Versions written before schema 4 bound the name only.
        q(
            "SELECT dataset_id || '/v' || version,
                    COALESCE(context, 'datasets/' || dataset_id || '/v' || version), wrapped_key
             FROM dataset_versions WHERE length(wrapped_key) > 0",
            "datasets",
        )?;
        q(
            "SELECT id, 'results/' || id, wrapped_key FROM jobs WHERE wrapped_key IS NOT NULL",
            "results",
        )?;
        q(
            "SELECT id, 'exports/' || id, wrapped_key FROM exports WHERE wrapped_key IS NOT NULL",
            "exports",
        )?;
        q(
            "SELECT id, 'gate/' || id, groups_key FROM exports WHERE groups_key IS NOT NULL",
            "gate",
        )?;
        Ok(out)
    }

    /// The platform's pseudonym root key, made (and stored wrapped by the master key) the first
    /// time a scenario needs one. Each scenario's key is derived from it and the scenario's id.
    fn pseudonym_root(&self, db: &Connection) -> Result<DataKey> {
        if let Some(root) = Self::stored_pseudonym_root(db, &self.master)? {
            return Ok(root);
        }
        let root = DataKey::generate();
        db.execute(
            "INSERT INTO settings VALUES ('pseudonym_root', ?1)",
            params![hex::encode(self.master.wrap(&root, PSEUDONYM_ROOT))],
        )?;
        Ok(root)
    }

    /// The pseudonym root key, if one was made, unwrapped with `master`.
    fn stored_pseudonym_root(db: &Connection, master: &MasterKey) -> Result<Option<DataKey>> {
        let stored: Option<String> = db
            .query_row(
                "SELECT value FROM settings WHERE key = 'pseudonym_root'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        stored
            .map(|hex_wrapped| {
                let wrapped = hex::decode(hex_wrapped)
                    .map_err(|_| Error::Integrity("the pseudonym root key is not hex".into()))?;
                master.unwrap(&wrapped, PSEUDONYM_ROOT)
            })
            .transpose()
    }

    /// The context a stored dataset version is bound to.
    fn stored_dataset_context(db: &Connection, id: &str, version: i64) -> Result<String> {
        let stored: Option<String> = db.query_row(
            "SELECT context FROM dataset_versions WHERE dataset_id = ?1 AND version = ?2",
            params![id, version],
            |r| r.get(0),
        )?;
        Ok(stored.unwrap_or_else(|| format!("datasets/{id}/v{version}")))
    }

    /// Re-wraps every data key and the signing key under a new master key created at
    /// `new_key_path`, without re-encrypting any data. Offline: no server may be running on
    /// `dir`. Safe against a kill at any point: before the metadata commits, the old key still
    /// opens everything; after, the new one does, and opening finishes the last step.
    pub fn rotate_master_key(dir: &Path, old: MasterKey, new_key_path: &Path) -> Result<u64> {
        let platform = Platform::open(dir, old)?;
        if let Some(parent) = new_key_path.parent().filter(|p| !p.as_os_str().is_empty())
            && fs::canonicalize(parent)
                .ok()
                .zip(fs::canonicalize(dir).ok())
                .is_some_and(|(p, d)| p.starts_with(d))
        {
            return Err(Error::Refused(
                "the master key must not be stored inside the data directory".into(),
            ));
        }
        let new = MasterKey::create(new_key_path)?;
        let stored = fs::read(dir.join(SIGNING_KEY_FILE))?;
        write_atomic(
            &dir.join(SIGNING_KEY_NEXT),
            &Signer::rewrap(&platform.master, &new, &stored)?,
        )?;
        let mut db = platform.db.lock().expect("db");
        let keys = Self::wrapped_keys(&db)?;
        let tx = db.transaction()?;
        for (kind, name, context, wrapped) in &keys {
            let dek = platform.master.unwrap(wrapped, context)?;
            let rewrapped = new.wrap(&dek, context);
            match kind.as_str() {
                "datasets" => {
                    let (id, version) = name.split_once("/v").expect("named by us");
                    tx.execute(
                        "UPDATE dataset_versions SET wrapped_key = ?3 WHERE dataset_id = ?1 AND version = ?2",
                        params![id, version.parse::<i64>().unwrap_or(0), rewrapped],
                    )?;
                }
                "results" => {
                    tx.execute(
                        "UPDATE jobs SET wrapped_key = ?2 WHERE id = ?1",
                        params![name, rewrapped],
                    )?;
                }
                "gate" => {
                    tx.execute(
                        "UPDATE exports SET groups_key = ?2 WHERE id = ?1",
                        params![name, rewrapped],
                    )?;
                }
                _ => {
                    tx.execute(
                        "UPDATE exports SET wrapped_key = ?2 WHERE id = ?1",
                        params![name, rewrapped],
                    )?;
                }
            }
        }
        if let Some(root) = Self::stored_pseudonym_root(&tx, &platform.master)? {
            tx.execute(
                "UPDATE settings SET value = ?1 WHERE key = 'pseudonym_root'",
                params![hex::encode(new.wrap(&root, PSEUDONYM_ROOT))],
            )?;
        }
        tx.execute(
            "INSERT INTO settings VALUES ('master_key', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![new.fingerprint()],
        )?;
        platform.audit.append(
            "platform",
            "keys.rotate",
            "master_key",
            json!({ "rewrapped": keys.len(), "from": platform.master.fingerprint(), "to": new.fingerprint() }),
        )?;
        #[cfg(test)]
        if std::env::var_os("TIDEGATE_TEST_KILL_AFTER_COMMIT").is_some() {
            tx.commit()?;
            return Ok(keys.len() as u64);
        }
        tx.commit()?;
        fs::rename(dir.join(SIGNING_KEY_NEXT), dir.join(SIGNING_KEY_FILE))?;
        fs::File::open(dir)?.sync_all()?;
        Ok(keys.len() as u64)
    }

    /// Unwraps every data key and decrypts every object: what an admin runs after a rotation
    /// or a restore. Returns how many objects were checked.
    pub fn verify_storage(&self) -> Result<u64> {
        self.scan_objects(|_, _| {})
    }

    /// Decrypts every object the platform can still decrypt and shows each to `inspect`, in
    /// process only (nothing of it is served): what an operator's check, and the exit test's
    /// search for destroyed data, go through. Returns how many objects there were.
    pub fn scan_objects(&self, mut inspect: impl FnMut(&str, &[u8])) -> Result<u64> {
        let keys = Self::wrapped_keys(&self.db.lock().expect("db"))?;
        for (kind, name, context, wrapped) in &keys {
            let plaintext = self.load_object_as(kind, name, context, wrapped)?;
            inspect(&format!("{kind}/{name}"), &plaintext);
        }
        Ok(keys.len() as u64)
    }

    fn assemble(dir: &Path, master: MasterKey, signer: Signer, lock: fs::File) -> Result<Platform> {
        // A write killed before its rename left a temporary file nothing refers to.
        remove_temporary_files(dir)?;
        let signer = Arc::new(signer);
        let checkpoints = Arc::clone(&signer);
        let audit = AuditLog::open(&dir.join(AUDIT_FILE))?
            .with_signer(Box::new(move |message| checkpoints.sign(message)));
        fs::create_dir_all(dir.join("objects"))?;
        Ok(Platform {
            dir: dir.to_path_buf(),
            db: Mutex::new(open_db(&dir.join(DB_FILE))?),
            audit,
            sandbox: Arc::new(Sandbox::new()?),
            running: Mutex::new(HashMap::new()),
            master,
            signer,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn public_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }

    fn object_path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir
            .join("objects")
            .join(kind)
            .join(format!("{name}.tge"))
    }

    /// Encrypts `plaintext` under a fresh data key and writes it atomically; returns the
    /// wrapped key to store beside the metadata. The object's name (`kind/name`) is bound to
    /// every chunk and to the wrapped key.
    fn store_object(&self, kind: &str, name: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.store_object_as(kind, name, &format!("{kind}/{name}"), plaintext)
    }

    /// [`Platform::store_object`] binding `context` instead of the name alone (a dataset
    /// version binds its org, dataset and version: [`dataset_context`]).
    fn store_object_as(
        &self,
        kind: &str,
        name: &str,
        context: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let dek = DataKey::generate();
        write_atomic(
            &self.object_path(kind, name),
            &dek.seal_object(context, plaintext),
        )?;
        Ok(self.master.wrap(&dek, context))
    }

    /// A stored object as a Parquet source that decrypts only the ranges a scan reads.
    fn sealed_source(
        &self,
        kind: &str,
        name: &str,
        context: &str,
        wrapped: &[u8],
    ) -> Result<SealedSource> {
        let dek = self.master.unwrap(wrapped, context)?;
        let file = fs::File::open(self.object_path(kind, name))?;
        Ok(SealedSource::new(dek.reader(context, file)?))
    }

    fn load_object(&self, kind: &str, name: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        self.load_object_as(kind, name, &format!("{kind}/{name}"), wrapped)
    }

    fn load_object_as(
        &self,
        kind: &str,
        name: &str,
        context: &str,
        wrapped: &[u8],
    ) -> Result<Vec<u8>> {
        let dek = self.master.unwrap(wrapped, context)?;
        dek.open_object(context, &fs::read(self.object_path(kind, name))?)
    }

    // ----- Onboarding -----

    /// Resolves a bearer token to its principal.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let db = self.db.lock().expect("db");
        let row = db
            .query_row(
                "SELECT id, org_id, roles, trained_at FROM principals WHERE token_hash = ?1",
                params![hash_token(token)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let (id, org, roles, trained) =
            row.ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))?;
        Ok(Principal {
            id,
            org,
            roles: roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(|r| r.parse().map_err(Error::Integrity))
                .collect::<Result<_>>()?,
            trained: trained.is_some(),
        })
    }

    pub fn create_org(&self, actor: &Principal, name: &str, kind: &str) -> Result<OrgView> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        if !matches!(kind, "authority" | "provider" | "operator") {
            return Err(Error::BadInput(
                "an org's kind is authority, provider or operator".into(),
            ));
        }
        let id = new_id("org");
        let mut db = self.db.lock().expect("db");
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO orgs (id, name, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, kind, crate::now_rfc3339()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::BadInput(format!("an org named {name} already exists"))
            }
            e => e.into(),
        })?;
        self.audit.append(
            &actor.id,
            "org.create",
            &id,
            json!({ "name": name, "kind": kind }),
        )?;
        tx.commit()?;
        Ok(OrgView {
            id,
            name: name.into(),
            kind: kind.into(),
        })
    }

    fn org_id(db: &Connection, name_or_id: &str) -> Result<String> {
        db.query_row(
            "SELECT id FROM orgs WHERE id = ?1 OR name = ?1",
            params![name_or_id],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("org {name_or_id}")))
    }

    pub fn create_principal(
        &self,
        actor: &Principal,
        name: &str,
        org: &str,
        roles: &[Role],
    ) -> Result<PrincipalView> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        if roles.is_empty() {
            return Err(Error::BadInput(
                "a principal needs at least one role".into(),
            ));
        }
        // R-SOD: whoever reviews outputs does not also produce them.
        if roles.contains(&Role::Reviewer) && roles.contains(&Role::Scientist) {
            return Err(Error::Refused(
                "separation of duties: a principal cannot be both scientist and reviewer".into(),
            ));
        }
        let id = new_id("p");
        let token = random_token();
        let roles_text = roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut db = self.db.lock().expect("db");
        let org_id = Self::org_id(&db, org)?;
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO principals VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5, ?6)",
            params![
                id,
                name,
                org_id,
                roles_text,
                hash_token(&token),
                crate::now_rfc3339()
            ],
        )?;
        self.audit.append(
            &actor.id,
            "principal.create",
            &id,
            json!({ "org": org_id, "roles": roles_text }),
        )?;
        tx.commit()?;
        Ok(PrincipalView {
            id,
            name: name.into(),
            org: org_id,
            roles: roles.to_vec(),
            trained: false,
            token: Some(token),
        })
    }

    /// R-ONBOARD: an admin records that a principal passed training.
    pub fn record_training(&self, actor: &Principal, principal: &str, course: &str) -> Result<()> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        let mut db = self.db.lock().expect("db");
        let tx = db.transaction()?;
        let n = tx.execute(
            "UPDATE principals SET trained_at = ?2, training = ?3 WHERE id = ?1",
            params![principal, crate::now_rfc3339(), course],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("principal {principal}")));
        }
        self.audit.append(
            &actor.id,
            "principal.training",
            principal,
            json!({ "course": course }),
        )?;
        tx.commit()?;
        Ok(())
    }

    // ----- Import -----

    pub fn import_dataset(&self, actor: &Principal, req: ImportRequest) -> Result<DatasetView> {
        // A provider imports public data; an operating unit's scientist imports its own
        // enterprise ("social") data, which waits for an admin's approval.
        let social = !actor.has_role(Role::Provider);
        if social {
            tidegate_policy::can_import_social(actor, req.level)?;
        } else {
            tidegate_policy::can_import(actor, req.level)?;
        }
        let name_ok = req.name.len() <= 64
            && req.name.starts_with(|c: char| c.is_ascii_lowercase())
            && req
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Err(Error::BadInput(
                "a dataset name is its SQL table name: [a-z][a-z0-9_]*, at most 64 characters"
                    .into(),
            ));
        }
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(req.data_base64.as_bytes())
            .map_err(|_| Error::BadInput("data_base64 is not base64".into()))?;
        if data.len() > MAX_IMPORT_BYTES {
            return Err(Error::Limit(format!(
                "an import is at most {MAX_IMPORT_BYTES} bytes"
            )));
        }
        let batches = read_table(&req.format, &data, &req.columns)?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| Error::BadInput("the file holds no rows".into()))?;
        let columns = column_specs(&schema, &req.columns)?;
        let quality = quality_report(&batches, &columns);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let parquet = to_parquet(&batches)?;
        let content_hash = sha256_hex(&parquet);

        let mut db = self.db.lock().expect("db");
        if social && !req.approvers.is_empty() {
            return Err(Error::BadInput(
                "only a provider names further approvers of its data".into(),
            ));
        }
        let mut approvers = Vec::new();
        for org in &req.approvers {
            let org = Self::org_id(&db, org)?;
            if org == actor.org {
                return Err(Error::BadInput(
                    "the provider approves its own data's scenarios already".into(),
                ));
            }
            if !approvers.contains(&org) {
                approvers.push(org);
            }
        }
        let existing: Option<(String, String)> = db
            .query_row(
                "SELECT id, org_id FROM datasets WHERE name = ?1",
                params![req.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (id, version) = match &existing {
            Some((id, org)) if org == &actor.org => {
                let v: i64 = db.query_row(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions WHERE dataset_id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                (id.clone(), v)
            }
            Some(_) => {
                return Err(Error::Refused(format!(
                    "a dataset named {} belongs to another provider",
                    req.name
                )));
            }
            None => (new_id("ds"), 1),
        };
        let object = format!("{id}/v{version}");
        let context = dataset_context(&actor.org, &id, version);
        let wrapped = self.store_object_as("datasets", &object, &context, &parquet)?;
        let tx = db.transaction()?;
        let now = crate::now_rfc3339();
        if existing.is_none() {
            tx.execute(
                "INSERT INTO datasets VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    req.name,
                    actor.org,
                    req.level.to_string(),
                    if social { "social-pending" } else { "public" },
                    to_json(&columns),
                    now,
                    to_json(&approvers)
                ],
            )?;
        } else {
            tx.execute(
                "UPDATE datasets SET level = ?2, columns = ?3 WHERE id = ?1",
                params![id, req.level.to_string(), to_json(&columns)],
            )?;
            if !approvers.is_empty() {
                tx.execute(
                    "UPDATE datasets SET approvers = ?2 WHERE id = ?1",
                    params![id, to_json(&approvers)],
                )?;
            }
        }
        tx.execute(
            "INSERT INTO dataset_versions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                version,
                content_hash,
                rows as i64,
                parquet.len() as i64,
                wrapped,
                quality.to_string(),
                now,
                context
            ],
        )?;
        self.audit.append_at(
            now,
            &actor.id,
            "dataset.import",
            &id,
            json!({ "version": version, "level": req.level, "rows": rows, "content_hash": content_hash,
                    "approvers": approvers, "bytes": parquet.len(), "social": social }),
        )?;
        tx.commit()?;
        let approvers = Self::dataset_row(&db, &id)?.approvers;
        Ok(DatasetView {
            id,
            name: req.name,
            level: req.level,
            origin: if social {
                Origin::Social
            } else {
                Origin::Public
            },
            provider_org: actor.org.clone(),
            columns,
            version,
            rows: rows as i64,
            content_hash,
            quality,
            pending: social,
            approvers,
        })
    }

    fn dataset_row(db: &Connection, name_or_id: &str) -> Result<DatasetRow> {
        db.query_row(
            "SELECT id, name, org_id, level, origin, columns, approvers FROM datasets
             WHERE id = ?1 OR name = ?1",
            params![name_or_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("dataset {name_or_id}")))
        .and_then(|(id, name, org, level, origin, columns, approvers)| {
            Ok(DatasetRow {
                id,
                name,
                org,
                level: level.parse().map_err(Error::Integrity)?,
                origin: if origin.starts_with("social") {
                    Origin::Social
                } else {
                    Origin::Public
                },
                pending: origin == "social-pending",
                columns: from_json(&columns)?,
                approvers: from_json(&approvers)?,
            })
        })
    }

    fn latest_version(db: &Connection, id: &str) -> Result<(i64, String, i64, Vec<u8>, String)> {
        db.query_row(
            "SELECT version, content_hash, rows, wrapped_key, quality FROM dataset_versions
             WHERE dataset_id = ?1 ORDER BY version DESC LIMIT 1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .map_err(Error::from)
    }

    fn dataset_version(
        db: &Connection,
        id: &str,
        version: i64,
    ) -> Result<(i64, String, i64, Vec<u8>, String)> {
        db.query_row(
            "SELECT version, content_hash, rows, wrapped_key, quality FROM dataset_versions
             WHERE dataset_id = ?1 AND version = ?2",
            params![id, version],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .map_err(Error::from)
    }

    /// R-IMPORT: an admin approves an operating unit's social data for use in its scenarios.
    pub fn approve_dataset(&self, actor: &Principal, id: &str) -> Result<()> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let mut db = self.db.lock().expect("db");
        let d = Self::dataset_row(&db, id)?;
        if !d.pending {
            return Err(Error::BadInput(format!(
                "dataset {} awaits no approval",
                d.name
            )));
        }
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE datasets SET origin = 'social' WHERE id = ?1",
            params![d.id],
        )?;
        self.audit
            .append(&actor.id, "dataset.approve", &d.id, json!({ "org": d.org }))?;
        tx.commit()?;
        Ok(())
    }

    pub fn list_datasets(&self, actor: &Principal) -> Result<Vec<DatasetView>> {
        tidegate_policy::require_training(actor)?;
        let db = self.db.lock().expect("db");
        let ids: Vec<String> = db
            .prepare("SELECT id FROM datasets ORDER BY created_at")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter()
            .map(|id| {
                let d = Self::dataset_row(&db, id)?;
                let (version, content_hash, rows, _, quality) = Self::latest_version(&db, id)?;
                Ok(DatasetView {
                    id: d.id,
                    name: d.name,
                    level: d.level,
                    origin: d.origin,
                    provider_org: d.org,
                    columns: d.columns,
                    version,
                    rows,
                    content_hash,
                    quality: from_json(&quality)?,
                    pending: d.pending,
                    approvers: d.approvers,
                })
            })
            .collect()
    }

    // ----- Scenarios -----

    pub fn apply_scenario(&self, actor: &Principal, req: ScenarioRequest) -> Result<ScenarioView> {
        tidegate_policy::can_apply_for_scenario(actor)?;
        let (start, end) = (parse_date(&req.term_start)?, parse_date(&req.term_end)?);
        if end < start {
            return Err(Error::BadInput("the term ends before it starts".into()));
        }
        if req.grants.is_empty() {
            return Err(Error::BadInput(
                "a scenario names at least one dataset".into(),
            ));
        }
        tidegate_policy::validate_export_rules(
            &req.export_rules,
            EXPORT_MAX_ROWS,
            EXPORT_MAX_BYTES,
        )?;
        let id = new_id("sc");
        let mut db = self.db.lock().expect("db");
        let mut level = Level::L1;
        let mut grants = Vec::new();
        for g in &req.grants {
            let d = Self::dataset_row(&db, &g.dataset)?;
            if d.level == Level::L4 {
                return Err(Error::Refused("L4 data can never be granted".into()));
            }
            if d.pending {
                return Err(Error::Refused(format!(
                    "dataset {} is social data awaiting an admin's approval",
                    d.name
                )));
            }
            if d.origin == Origin::Social && d.org != actor.org {
                return Err(Error::Refused(format!(
                    "dataset {} is another org's social data",
                    d.name
                )));
            }
            for c in &g.columns {
                if !d.columns.iter().any(|spec| &spec.name == c) {
                    return Err(Error::BadInput(format!(
                        "dataset {} has no column {c}",
                        d.name
                    )));
                }
            }
            level = level.max(d.level);
            grants.push(GrantRequest {
                dataset: d.id,
                columns: g.columns.clone(),
                version: None,
            });
        }
        // The scenario may ask for a stricter threshold, never a weaker one than the default.
        let k = req.k.unwrap_or(0).max(default_threshold(level));
        let state = if req.draft {
            ScenarioState::Draft
        } else {
            ScenarioState::PendingApprovals
        };
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO scenarios VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                id, req.name, actor.org, req.key_area, req.purpose, req.public_interest,
                to_json(&grants), req.term_start, req.term_end, k as i64,
                to_json(&req.planned_products), state.as_str(), actor.id, crate::now_rfc3339(),
                to_json(&req.export_rules)
            ],
        )?;
        self.audit.append(
            &actor.id,
            "scenario.apply",
            &id,
            json!({ "name": req.name, "public_interest": req.public_interest,
                    "grants": grants, "term": [req.term_start, req.term_end], "k": k,
                    "export_rules": req.export_rules, "state": state }),
        )?;
        tx.commit()?;
        drop(db);
        self.get_scenario(actor, &id)
    }

    fn scenario_row(db: &Connection, id: &str) -> Result<ScenarioRow> {
        let row = db
            .query_row(
                "SELECT id, name, org_id, key_area, purpose, public_interest, grants, term_start,
                        term_end, k, planned_products, state, export_rules
                 FROM scenarios WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        (
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ),
                        (
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, bool>(5)?,
                        ),
                        (
                            r.get::<_, String>(6)?,
                            r.get::<_, String>(7)?,
                            r.get::<_, String>(8)?,
                        ),
                        (
                            r.get::<_, i64>(9)?,
                            r.get::<_, String>(10)?,
                            r.get::<_, String>(11)?,
                            r.get::<_, String>(12)?,
                        ),
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("scenario {id}")))?;
        let (
            (id, name, org),
            (key_area, purpose, public_interest),
            (grants, ts, te),
            (k, products, state, rules),
        ) = row;
        let export_rules: ExportRules = from_json(&rules)?;
        let grants: Vec<GrantRequest> = from_json(&grants)?;
        let stored_state: ScenarioState = state.parse().map_err(Error::Integrity)?;
        let (term_start, term_end) = (parse_date(&ts)?, parse_date(&te)?);
        let approvals: Vec<ApprovalView> = db
            .prepare("SELECT principal_id, as_role, at FROM scenario_approvals WHERE scenario_id = ?1 ORDER BY at")?
            .query_map(params![id], |r| {
                Ok(ApprovalView { by: r.get(0)?, as_role: r.get(1)?, at: r.get(2)?, comment: None })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let approvals_state = Self::approvals_state(db, &id, &grants)?;
        let effective =
            tidegate_policy::scenario_state(stored_state, term_start, term_end, today());
        let view = ScenarioView {
            id: id.clone(),
            name: name.clone(),
            org: org.clone(),
            key_area,
            purpose,
            public_interest,
            grants: grants.clone(),
            term_start: ts,
            term_end: te,
            k: k as u64,
            planned_products: from_json(&products)?,
            export_rules: export_rules.clone(),
            state: effective,
            approvals,
            missing_approvals: if stored_state == ScenarioState::PendingApprovals {
                approvals_state.missing()
            } else {
                Vec::new()
            },
        };
        Ok(ScenarioRow {
            id,
            name,
            org,
            grants,
            term_start,
            term_end,
            k: k as u64,
            export_rules,
            stored_state,
            view,
        })
    }

    fn approvals_state(
        db: &Connection,
        id: &str,
        grants: &[GrantRequest],
    ) -> Result<ScenarioApprovals> {
        let mut a = ScenarioApprovals::default();
        // The provider of each public dataset approves, and every org the dataset names; social
        // data was approved by an admin when it was imported.
        for g in grants {
            let d = Self::dataset_row(db, &g.dataset)?;
            if d.origin == Origin::Public {
                a.require(&d.org, format!("provider of {}", d.name));
            }
            for org in &d.approvers {
                a.require(org, format!("named approver of {}", d.name));
            }
        }
        let mut stmt =
            db.prepare("SELECT as_role, org_id FROM scenario_approvals WHERE scenario_id = ?1")?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (role, org) = row?;
            if role == "admin" {
                a.admin_approved = true;
            } else {
                a.orgs_approved.insert(org);
            }
        }
        Ok(a)
    }

    /// Whether `actor` may see the scenario at all (others get "not found").
    fn can_see_scenario(db: &Connection, actor: &Principal, s: &ScenarioRow) -> Result<bool> {
        if actor.org == s.org
            || actor.has_role(Role::Admin)
            || actor.has_role(Role::Reviewer)
            || actor.has_role(Role::Auditor)
        {
            return Ok(true);
        }
        for g in &s.grants {
            let d = Self::dataset_row(db, &g.dataset)?;
            if actor.has_role(Role::Provider)
                && (d.org == actor.org || d.approvers.contains(&actor.org))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn get_scenario(&self, actor: &Principal, id: &str) -> Result<ScenarioView> {
        let db = self.db.lock().expect("db");
        let s = Self::scenario_row(&db, id)?;
        if !Self::can_see_scenario(&db, actor, &s)? {
            return Err(Error::NotFound(format!("scenario {id}")));
        }
        Ok(s.view)
    }

    /// R-SCENARIO: the applying org submits its draft; the approvals it needs are asked for.
    pub fn submit_scenario(&self, actor: &Principal, id: &str) -> Result<ScenarioView> {
        {
            let mut db = self.db.lock().expect("db");
            let s = Self::scenario_row(&db, id)?;
            if actor.org != s.org {
                return Err(Error::NotFound(format!("scenario {id}")));
            }
            tidegate_policy::can_submit_scenario(actor, &s.org, s.stored_state)?;
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE scenarios SET state = 'pending_approvals' WHERE id = ?1 AND state = 'draft'",
                params![id],
            )?;
            self.audit
                .append(&actor.id, "scenario.submit", id, json!({}))?;
            tx.commit()?;
        }
        self.get_scenario(actor, id)
    }

    /// A grant is pinned to the dataset version current at approval. The dataset's provider
    /// moves it to the newest version; the granted columns must still exist there.
    pub fn repin_grant(&self, actor: &Principal, id: &str, dataset: &str) -> Result<ScenarioView> {
        {
            let mut db = self.db.lock().expect("db");
            let s = Self::scenario_row(&db, id)?;
            if !Self::can_see_scenario(&db, actor, &s)? {
                return Err(Error::NotFound(format!("scenario {id}")));
            }
            let d = Self::dataset_row(&db, dataset)?;
            let Some(at) = s.grants.iter().position(|g| g.dataset == d.id) else {
                return Err(Error::BadInput(format!(
                    "scenario {id} does not grant dataset {}",
                    d.name
                )));
            };
            tidegate_policy::can_repin_grant(actor, &d.org, s.view.state)?;
            if let Some(missing) = s.grants[at]
                .columns
                .iter()
                .find(|c| !d.columns.iter().any(|spec| &spec.name == *c))
            {
                return Err(Error::Refused(format!(
                    "the newest version of {} has no column {missing}, which the scenario grants",
                    d.name
                )));
            }
            let newest = Self::latest_version(&db, &d.id)?.0;
            let from = s.grants[at].version;
            if from == Some(newest) {
                return Err(Error::BadInput(format!(
                    "the grant is already at version {newest} of {}",
                    d.name
                )));
            }
            let mut grants = s.grants.clone();
            grants[at].version = Some(newest);
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE scenarios SET grants = ?2 WHERE id = ?1",
                params![id, to_json(&grants)],
            )?;
            self.audit.append(
                &actor.id,
                "scenario.repin",
                id,
                json!({ "dataset": d.id, "from": from, "to": newest }),
            )?;
            tx.commit()?;
        }
        self.get_scenario(actor, id)
    }

    /// R-SCENARIO: the admin and the provider of every requested dataset approve; the last
    /// approval makes the scenario active.
    pub fn approve_scenario(&self, actor: &Principal, id: &str) -> Result<ScenarioView> {
        {
            let mut db = self.db.lock().expect("db");
            let s = Self::scenario_row(&db, id)?;
            if !Self::can_see_scenario(&db, actor, &s)? {
                return Err(Error::NotFound(format!("scenario {id}")));
            }
            let mut approvals = Self::approvals_state(&db, id, &s.grants)?;
            let as_admin =
                tidegate_policy::can_approve_scenario(actor, &approvals, s.stored_state)?;
            if as_admin {
                approvals.admin_approved = true;
            } else {
                approvals.orgs_approved.insert(actor.org.clone());
            }
            let activates = approvals.complete();
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO scenario_approvals VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    actor.id,
                    if as_admin { "admin" } else { "provider" },
                    actor.org,
                    crate::now_rfc3339()
                ],
            )?;
            if activates {
                let mut pinned = s.grants.clone();
                for g in &mut pinned {
                    g.version = Some(Self::latest_version(&tx, &g.dataset)?.0);
                }
                tx.execute(
                    "UPDATE scenarios SET state = 'active', grants = ?2 WHERE id = ?1",
                    params![id, to_json(&pinned)],
                )?;
            }
            self.audit.append(
                &actor.id,
                "scenario.approve",
                id,
                json!({ "as": if as_admin { "admin" } else { "provider" }, "activated": activates }),
            )?;
            tx.commit()?;
        }
        self.get_scenario(actor, id)
    }

    /// R-EXIT: ends an org's authorization. Its scenarios end as exited and their running jobs
    /// cancelled, its tokens closed, its results, export files and modules destroyed (keys
    /// wiped, files deleted, SQLite pages overwritten and the WAL truncated); the logs stay. The
    /// platform signs an exit certificate listing what was destroyed, with hashes.
    pub fn exit_org(&self, actor: &Principal, org: &str, reason: &str) -> Result<Value> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let mut db = self.db.lock().expect("db");
        let org = Self::org_id(&db, org)?;
        if org == actor.org {
            return Err(Error::Refused("an admin cannot exit their own org".into()));
        }
        let scenarios: Vec<String> = db
            .prepare("SELECT id FROM scenarios WHERE org_id = ?1")?
            .query_map(params![org], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut destroyed = Vec::new();
        let mut files = Vec::new();
        let tx = db.transaction()?;
        for sid in &scenarios {
            let jobs: Vec<(String, Option<String>)> = tx
                .prepare("SELECT id, result_hash FROM jobs WHERE scenario_id = ?1 AND wrapped_key IS NOT NULL")?
                .query_map(params![sid], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (job, hash) in jobs {
                destroyed.push(json!({ "kind": "result", "id": job, "sha256": hash }));
                files.push(self.object_path("results", &job));
            }
            tx.execute(
                "UPDATE jobs SET wrapped_key = NULL WHERE scenario_id = ?1",
                params![sid],
            )?;
            let exports: Vec<(String, Option<String>)> = tx
                .prepare(
                    "SELECT e.id, e.result_hash FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = ?1 AND e.wrapped_key IS NOT NULL",
                )?
                .query_map(params![sid], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (export, hash) in exports {
                destroyed.push(json!({ "kind": "export", "id": export, "sha256": hash }));
                files.push(self.object_path("exports", &export));
                // The groups the gate kept for differencing go with it.
                files.push(self.object_path("gate", &export));
                tx.execute(
                    "UPDATE exports SET wrapped_key = NULL, groups_key = NULL WHERE id = ?1",
                    params![export],
                )?;
            }
            let modules: Vec<String> = tx
                .prepare("SELECT hash FROM modules WHERE scenario_id = ?1 AND length(wasm) > 0")?
                .query_map(params![sid], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for hash in modules {
                destroyed.push(json!({ "kind": "module", "id": hash, "sha256": hash }));
            }
            tx.execute(
                "UPDATE modules SET wasm = x'' WHERE scenario_id = ?1",
                params![sid],
            )?;
            tx.execute(
                "UPDATE scenarios SET state = 'exited' WHERE id = ?1",
                params![sid],
            )?;
        }
        // The org's social data goes too: its versions' keys and files.
        let social: Vec<(String, i64, String)> = tx
            .prepare(
                "SELECT v.dataset_id, v.version, v.content_hash FROM dataset_versions v
                 JOIN datasets d ON v.dataset_id = d.id
                 WHERE d.org_id = ?1 AND d.origin LIKE 'social%' AND length(v.wrapped_key) > 0",
            )?
            .query_map(params![org], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (dataset, version, hash) in social {
            let object = format!("{dataset}/v{version}");
            destroyed.push(json!({ "kind": "social_dataset", "id": object, "sha256": hash }));
            files.push(self.object_path("datasets", &object));
            tx.execute(
                "UPDATE dataset_versions SET wrapped_key = x'' WHERE dataset_id = ?1 AND version = ?2",
                params![dataset, version],
            )?;
        }
        // Close every token of the org: no stored hash can match a token any more.
        tx.execute(
            "UPDATE principals SET token_hash = 'closed:' || id WHERE org_id = ?1",
            params![org],
        )?;
        let now = crate::now_rfc3339();
        let certificate = json!({
            "format": "tidegate-exit-certificate-v1",
            "org": org,
            "reason": reason,
            "at": now,
            "scenarios_exited": scenarios,
            "destroyed": destroyed,
            "kept": "audit log and its checkpoints (retention of at least 180 days)",
        });
        let body = serde_json::to_vec(&certificate)?;
        let signature = hex::encode(self.signer.sign(&body));
        tx.execute(
            "UPDATE orgs SET exited_at = ?2 WHERE id = ?1",
            params![org, now],
        )?;
        self.audit.append_at(
            now.clone(),
            &actor.id,
            "org.exit",
            &org,
            json!({ "destroyed": destroyed.len(), "certificate_sha256": sha256_hex(&body) }),
        )?;
        tx.commit()?;
        // Cancel what still runs, then remove the files; the keys are already gone.
        self.cancel_jobs(&scenarios);
        for f in files {
            match fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Overwritten pages may linger in the WAL until a checkpoint truncates it.
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(json!({ "certificate": certificate, "signature": signature }))
    }

    /// Cancels the running jobs of these scenarios: their guests trap at the next epoch tick.
    fn cancel_jobs(&self, scenarios: &[String]) {
        let running = self.running.lock().expect("running jobs");
        for id in scenarios {
            for (_, meter) in running.get(id).into_iter().flatten() {
                meter.cancel();
            }
        }
    }

    /// R-MONITOR: an admin freezes an org with one command (every active scenario of the org
    /// is suspended and its running jobs cancelled) or lifts the freeze (the scenarios the
    /// freeze suspended are resumed; one suspended on its own stays so). Returns them.
    pub fn freeze_org(&self, actor: &Principal, org: &str, freeze: bool) -> Result<Vec<String>> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let (from, to, action) = if freeze {
            ("active", "suspended", "org.freeze")
        } else {
            ("suspended", "active", "org.unfreeze")
        };
        let mut db = self.db.lock().expect("db");
        let org = Self::org_id(&db, org)?;
        let key = format!("frozen:{org}");
        let changed: Vec<String> = if freeze {
            db.prepare("SELECT id FROM scenarios WHERE org_id = ?1 AND state = ?2")?
                .query_map(params![org, from], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            // Only what the freeze suspended: a scenario stopped on its own stays stopped.
            let stored: Option<String> = db
                .query_row(
                    "SELECT value FROM settings WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?;
            stored
                .map(|s| from_json(&s))
                .transpose()?
                .unwrap_or_default()
        };
        let tx = db.transaction()?;
        for id in &changed {
            tx.execute(
                "UPDATE scenarios SET state = ?2 WHERE id = ?1 AND state = ?3",
                params![id, to, from],
            )?;
        }
        if freeze {
            tx.execute(
                "INSERT INTO settings VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, to_json(&changed)],
            )?;
        } else {
            tx.execute("DELETE FROM settings WHERE key = ?1", params![key])?;
        }
        self.audit
            .append(&actor.id, action, &org, json!({ "scenarios": changed }))?;
        tx.commit()?;
        if freeze {
            self.cancel_jobs(&changed);
        }
        Ok(changed)
    }

    /// R-SCENARIO: an admin suspends, resumes or revokes a scenario; suspending or revoking
    /// cancels its running jobs at once.
    pub fn change_scenario(
        &self,
        actor: &Principal,
        id: &str,
        action: &str,
    ) -> Result<ScenarioView> {
        {
            let mut db = self.db.lock().expect("db");
            let s = Self::scenario_row(&db, id)?;
            let next = tidegate_policy::can_change_scenario(actor, s.view.state, action)?;
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE scenarios SET state = ?2 WHERE id = ?1",
                params![id, next.as_str()],
            )?;
            self.audit.append(
                &actor.id,
                &format!("scenario.{action}"),
                id,
                json!({ "from": s.view.state, "to": next }),
            )?;
            tx.commit()?;
            if next != ScenarioState::Active {
                self.cancel_jobs(&[id.to_string()]);
            }
        }
        self.get_scenario(actor, id)
    }

    // ----- Modules -----

    pub fn upload_module(
        &self,
        actor: &Principal,
        scenario: &str,
        wasm: &[u8],
    ) -> Result<ModuleView> {
        let s = {
            let db = self.db.lock().expect("db");
            Self::scenario_row(&db, scenario)?
        };
        if actor.org != s.org && !actor.has_role(Role::Admin) {
            return Err(Error::NotFound(format!("scenario {scenario}")));
        }
        tidegate_policy::can_upload_module(actor, &s.org, s.view.state)?;
        let validated = match self.sandbox.load(wasm) {
            Ok(v) => v,
            Err(e) => {
                // R-MONITOR: a module failing validation is an event worth an alert.
                self.audit.append(
                    &actor.id,
                    "module.rejected",
                    scenario,
                    json!({ "hash": sha256_hex(wasm), "reason": e.to_string() }),
                )?;
                return Err(e);
            }
        };
        let mut db = self.db.lock().expect("db");
        let tx = db.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO modules VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL, NULL, ?7)",
            params![
                validated.hash,
                scenario,
                actor.id,
                actor.org,
                to_json(&validated.functions),
                wasm,
                crate::now_rfc3339()
            ],
        )?;
        self.audit.append(
            &actor.id,
            "module.upload",
            &validated.hash,
            json!({ "scenario": scenario, "functions": validated.functions.iter().map(|f| &f.name).collect::<Vec<_>>() }),
        )?;
        tx.commit()?;
        Ok(ModuleView {
            hash: validated.hash.clone(),
            scenario: scenario.into(),
            uploaded_by: actor.id.clone(),
            functions: validated.functions.clone(),
            approved_by: None,
        })
    }

    /// R-MODULE: algorithm review binds the exact hash to the scenario.
    pub fn approve_module(
        &self,
        actor: &Principal,
        scenario: &str,
        hash: &str,
        note: &str,
    ) -> Result<ModuleView> {
        let mut db = self.db.lock().expect("db");
        let row: Option<(String, String, String, Option<String>)> = db
            .query_row(
                "SELECT org_id, uploaded_by, functions, approved_by FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                params![hash, scenario],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (org, uploaded_by, functions, approved_by) =
            row.ok_or_else(|| Error::NotFound(format!("module {hash} in scenario {scenario}")))?;
        tidegate_policy::can_approve_module(actor, &org)?;
        if approved_by.is_some() {
            return Err(Error::BadInput(
                "this module is already approved for this scenario".into(),
            ));
        }
        if note.trim().is_empty() {
            return Err(Error::BadInput(
                "an algorithm review names the functions and what they compute: give a note".into(),
            ));
        }
        let tx = db.transaction()?;
        let now = crate::now_rfc3339();
        tx.execute(
            "UPDATE modules SET approved_by = ?3, approval_note = ?4, approved_at = ?5 WHERE hash = ?1 AND scenario_id = ?2",
            params![hash, scenario, actor.id, note, now],
        )?;
        self.audit.append_at(
            now,
            &actor.id,
            "module.approve",
            hash,
            json!({ "scenario": scenario, "note": note }),
        )?;
        tx.commit()?;
        Ok(ModuleView {
            hash: hash.into(),
            scenario: scenario.into(),
            uploaded_by,
            functions: from_json(&functions)?,
            approved_by: Some(actor.id.clone()),
        })
    }

    // ----- Jobs -----

    /// R-JOB: runs a query of the scenario over its granted columns only, with approved
    /// modules only, and stores the result encrypted. The scientist gets status, row count,
    /// schema and resource use, never rows.
    pub async fn submit_job(&self, actor: &Principal, req: JobRequest) -> Result<JobView> {
        let (scenario, inputs, modules, level, pseudonyms) = {
            let db = self.db.lock().expect("db");
            let s = Self::scenario_row(&db, &req.scenario)?;
            if actor.org != s.org {
                return Err(Error::NotFound(format!("scenario {}", req.scenario)));
            }
            let mut unapproved = Vec::new();
            let mut modules = Vec::new();
            for hash in &req.modules {
                let row: Option<(Vec<u8>, Option<String>)> = db
                    .query_row(
                        "SELECT wasm, approved_by FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                        params![hash, s.id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match row {
                    Some((wasm, Some(_))) => modules.push(wasm),
                    _ => unapproved.push(hash.clone()),
                }
            }
            tidegate_policy::can_run_job(actor, &s.org, s.view.state, &unapproved)?;
            let mut inputs = Vec::new();
            let mut level = Level::L1;
            for g in &s.grants {
                let d = Self::dataset_row(&db, &g.dataset)?;
                let (version, hash, rows, wrapped, _) = match g.version {
                    Some(v) => Self::dataset_version(&db, &d.id, v)?,
                    None => Self::latest_version(&db, &d.id)?,
                };
                level = level.max(d.level);
                let context = Self::stored_dataset_context(&db, &d.id, version)?;
                inputs.push(JobInput {
                    context,
                    dataset: d,
                    columns: g.columns.clone(),
                    version,
                    content_hash: hash,
                    wrapped,
                    rows: rows as u64,
                });
            }
            let pseudonyms = self.pseudonym_root(&db)?.pseudonym_key(&s.id);
            (s, inputs, modules, level, pseudonyms)
        };
        let id = new_id("job");
        let inputs_json: Vec<Value> = inputs
            .iter()
            .map(|i| json!({ "dataset": i.dataset.id, "name": i.dataset.name, "version": i.version, "content_hash": i.content_hash }))
            .collect();
        let now = crate::now_rfc3339();
        {
            let mut db = self.db.lock().expect("db");
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO jobs (id, scenario_id, submitted_by, sql, modules, state, level, inputs, created_at, policy_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?9)",
                params![id, scenario.id, actor.id, req.sql, to_json(&req.modules), level.to_string(), to_json(&inputs_json), now, Self::policy_version(&tx)?],
            )?;
            self.audit.append(
                &actor.id,
                "job.start",
                &id,
                json!({ "scenario": scenario.id, "modules": req.modules, "sql_sha256": sha256_hex(req.sql.as_bytes()) }),
            )?;
            tx.commit()?;
        }
        let started = Instant::now();
        let meter = Arc::new(JobMeter::new(GuestLimits::default()));
        self.running
            .lock()
            .expect("running jobs")
            .entry(scenario.id.clone())
            .or_default()
            .push((id.clone(), Arc::clone(&meter)));
        let (outcome, cost) = match self.prepare(&inputs, &modules, &meter, pseudonyms) {
            Ok((tables, udfs, sources, rows_scanned)) => {
                let cancel_meter = Arc::clone(&meter);
                let cancelled = async move {
                    while !cancel_meter.is_cancelled() {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                };
                let (output, cost) = job::run_query_isolated(
                    req.sql.clone(),
                    tables,
                    udfs,
                    EngineLimits {
                        privacy: scenario.export_rules.contribution_bounds(),
                        ..EngineLimits::default()
                    },
                    cancelled,
                )
                .await;
                // What the scan decrypted and decoded: the granted columns' chunks only.
                let bytes_scanned = sources.iter().map(SealedSource::bytes_read).sum();
                (output.map(|o| (o, rows_scanned, bytes_scanned)), cost)
            }
            Err(e) => (Err(e), job::JobCost::default()),
        };
        if let Some(jobs) = self
            .running
            .lock()
            .expect("running jobs")
            .get_mut(&scenario.id)
        {
            jobs.retain(|(j, _)| j != &id);
        }
        let mut resources = ResourceUse {
            fuel: meter.fuel_used(),
            guest_calls: meter.calls(),
            peak_guest_memory_bytes: meter.peak_memory(),
            guest_output_bytes: meter.output_bytes(),
            wall_ms: started.elapsed().as_millis() as u64,
            cpu_ms: cost.cpu_ms,
            ..ResourceUse::default()
        };
        let finished = crate::now_rfc3339();
        let mut db = self.db.lock().expect("db");
        let tx = db.transaction()?;
        match outcome {
            Ok((output, scanned_rows, scanned_bytes)) => {
                resources.rows_scanned = scanned_rows;
                resources.bytes_scanned = scanned_bytes;
                resources.peak_engine_memory_bytes = output.peak_engine_memory_bytes;
                let rows: usize = output.batches.iter().map(RecordBatch::num_rows).sum();
                let schema = output
                    .batches
                    .first()
                    .map(|b| b.schema())
                    .unwrap_or_else(|| Arc::new(Schema::empty()));
                let visible: Vec<(String, String)> = job::visible_schema(&schema)
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().to_string()))
                    .collect();
                let parquet = to_parquet_with_schema(&output.batches, schema)?;
                resources.output_bytes = parquet.len() as u64;
                let result_hash = sha256_hex(&parquet);
                let wrapped = self.store_object("results", &id, &parquet)?;
                tx.execute(
                    "UPDATE jobs SET state = 'succeeded', rows = ?2, schema = ?3, resources = ?4,
                     shape = ?5, plan = ?6, result_hash = ?7, wrapped_key = ?8, finished_at = ?9 WHERE id = ?1",
                    params![id, rows as i64, to_json(&visible), to_json(&resources), to_json(&output.shape), output.plan, result_hash, wrapped, finished],
                )?;
                self.audit.append_at(
                    finished.clone(),
                    &actor.id,
                    "job.end",
                    &id,
                    json!({ "state": "succeeded", "rows": rows, "resources": resources, "result_sha256": result_hash }),
                )?;
            }
            Err(e) => {
                let message = e.to_string();
                tx.execute(
                    "UPDATE jobs SET state = 'failed', error = ?2, resources = ?3, finished_at = ?4 WHERE id = ?1",
                    params![id, message, to_json(&resources), finished],
                )?;
                self.audit.append_at(
                    finished.clone(),
                    &actor.id,
                    "job.end",
                    &id,
                    json!({ "state": "failed", "error": message, "resources": resources }),
                )?;
            }
        }
        tx.commit()?;
        drop(db);
        self.get_job(actor, &id)
    }

    fn prepare(
        &self,
        inputs: &[JobInput],
        modules: &[Vec<u8>],
        meter: &Arc<JobMeter>,
        pseudonyms: PseudonymKey,
    ) -> Result<PreparedJob> {
        let mut tables = Vec::new();
        let mut sources = Vec::new();
        let mut rows_scanned = 0u64;
        for input in inputs {
            let d = &input.dataset;
            let object = format!("{}/v{}", d.id, input.version);
            let sealed = self.sealed_source("datasets", &object, &input.context, &input.wrapped)?;
            let path = format!("datasets/{object}.parquet");
            let mut store = SealedStore::default();
            store.insert(&path, sealed.clone());
            sources.push(sealed);
            rows_scanned += input.rows;
            let columns = input
                .columns
                .iter()
                .map(|g| {
                    d.columns
                        .iter()
                        .find(|c| &c.name == g)
                        .cloned()
                        .ok_or_else(|| Error::Integrity(format!("granted column {g} is gone")))
                })
                .collect::<Result<Vec<_>>>()?;
            tables.push(TableInput {
                name: d.name.clone(),
                columns,
                data: TableData::Sealed {
                    store: Arc::new(store),
                    object: path,
                    entity: d
                        .columns
                        .iter()
                        .find(|c| c.has_tag(ColumnTag::Entity))
                        .map(|c| c.name.clone()),
                },
            });
        }
        let mut udfs = job::Functions::default();
        for wasm in modules {
            let module = self.sandbox.load(wasm)?;
            udfs.extend(self.sandbox.udfs(&module, meter));
        }
        // The runtime's own functions come last, so that no module can take their names.
        udfs.scalars.push(job::pseudonym_udf(pseudonyms));
        udfs.scalars.extend(job::desensitization_udfs());
        Ok((tables, udfs, sources, rows_scanned))
    }

    fn job_row(db: &Connection, id: &str) -> Result<JobRecord> {
        db.query_row(
            "SELECT id, scenario_id, submitted_by, sql, modules, state, error, rows, schema, resources,
                    level, created_at, finished_at, result_hash, wrapped_key, shape, plan, inputs
             FROM jobs WHERE id = ?1",
            params![id],
            |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?),
                    (r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, Option<String>>(6)?, r.get::<_, Option<i64>>(7)?),
                    (r.get::<_, Option<String>>(8)?, r.get::<_, Option<String>>(9)?, r.get::<_, String>(10)?, r.get::<_, String>(11)?),
                    (r.get::<_, Option<String>>(12)?, r.get::<_, Option<String>>(13)?, r.get::<_, Option<Vec<u8>>>(14)?),
                    (r.get::<_, Option<String>>(15)?, r.get::<_, Option<String>>(16)?, r.get::<_, String>(17)?),
                ))
            },
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("job {id}")))
        .and_then(|((id, scenario, by, sql), (modules, state, error, rows), (schema, resources, level, created), (finished, hash, wrapped), (shape, plan, inputs))| {
            Ok(JobRecord {
                view: JobView {
                    id,
                    scenario,
                    submitted_by: by,
                    sql,
                    modules: from_json(&modules)?,
                    state,
                    error,
                    rows,
                    schema: schema.map(|s| from_json(&s)).transpose()?.unwrap_or_default(),
                    resources: resources.map(|s| from_json(&s)).transpose()?,
                    level: level.parse().map_err(Error::Integrity)?,
                    created_at: created,
                    finished_at: finished,
                },
                result_hash: hash,
                wrapped,
                shape,
                plan,
                inputs: from_json(&inputs)?,
            })
        })
    }

    pub fn get_job(&self, actor: &Principal, id: &str) -> Result<JobView> {
        let db = self.db.lock().expect("db");
        let job = Self::job_row(&db, id)?.view;
        let s = Self::scenario_row(&db, &job.scenario)?;
        let visible =
            actor.org == s.org || actor.has_role(Role::Admin) || actor.has_role(Role::Auditor);
        if !visible {
            return Err(Error::NotFound(format!("job {id}")));
        }
        Ok(job)
    }

    // ----- Export, review, release -----

    /// R-GATE: runs the gate over a job's result; a passing result goes to review.
    pub fn request_export(&self, actor: &Principal, job_id: &str) -> Result<ExportView> {
        self.request_export_spending(actor, job_id, None)
    }

    /// Asks for an export; a scenario that uses differential privacy spends `epsilon` of its
    /// budget on it when the gate passes (R-GATE 7), in the same transaction that records it.
    pub fn request_export_spending(
        &self,
        actor: &Principal,
        job_id: &str,
        epsilon: Option<f64>,
    ) -> Result<ExportView> {
        let mut db = self.db.lock().expect("db");
        let JobRecord {
            view: job,
            result_hash,
            wrapped,
            shape,
            inputs,
            ..
        } = Self::job_row(&db, job_id)?;
        let s = Self::scenario_row(&db, &job.scenario)?;
        if actor.org != s.org {
            return Err(Error::NotFound(format!("job {job_id}")));
        }
        tidegate_policy::can_request_export(actor, &s.org, s.view.state)?;
        let (Some(result_hash), Some(wrapped), Some(shape)) = (result_hash, wrapped, shape) else {
            return Err(Error::BadInput(format!(
                "job {job_id} has no result to export ({})",
                job.state
            )));
        };
        let shape: QueryShape = from_json(&shape)?;
        let parquet = self.load_object("results", job_id, &wrapped)?;
        if sha256_hex(&parquet) != result_hash {
            return Err(Error::Integrity(format!(
                "the stored result of job {job_id} changed"
            )));
        }
        let batches = from_parquet(parquet)?;
        let pseudonyms = self.pseudonym_root(&db)?.pseudonym_key(&s.id);
        // R-GATE 6: what the scenario's earlier exports released, to compare with.
        let earlier_keys: Vec<(String, Vec<u8>)> = db
            .prepare(
                "SELECT e.id, e.groups_key FROM exports e JOIN jobs j ON e.job_id = j.id
                 WHERE j.scenario_id = ?1 AND e.groups_key IS NOT NULL ORDER BY e.created_at",
            )?
            .query_map(params![s.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut earlier = Vec::with_capacity(earlier_keys.len());
        for (export, key) in &earlier_keys {
            earlier.push(from_json::<gate::Groups>(
                &String::from_utf8(self.load_object("gate", export, key)?)
                    .map_err(|_| Error::Integrity(format!("the groups of export {export}")))?,
            )?);
        }
        let mut unapproved = 0;
        for hash in &job.modules {
            let approved: Option<Option<String>> = db
                .query_row(
                    "SELECT approved_by FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                    params![hash, s.id],
                    |r| r.get(0),
                )
                .optional()?;
            if !matches!(approved, Some(Some(_))) {
                unapproved += 1;
            }
        }
        let provenance = if unapproved > 0 {
            CheckOutcome::Fail(format!(
                "{unapproved} module(s) of the job are no longer approved"
            ))
        } else {
            CheckOutcome::Pass(format!(
                "job {job_id} of active scenario {} with {} approved module(s) over {}",
                s.id,
                job.modules.len(),
                inputs
                    .iter()
                    .map(|i| format!("{}@v{}", i["name"].as_str().unwrap_or("?"), i["version"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        let outcome = gate::evaluate(
            &GateInput {
                level: job.level,
                threshold_k: s.k,
                shape: &shape,
                provenance,
                max_rows: s.export_rules.max_rows.unwrap_or(EXPORT_MAX_ROWS),
                max_bytes: s.export_rules.max_bytes.unwrap_or(EXPORT_MAX_BYTES),
                masking: &s.export_rules.masking,
                privacy: match s.export_rules.privacy_budget {
                    Some(budget) => Some(gate::PrivacySpend {
                        budget,
                        spent: db.query_row(
                            "SELECT COALESCE(SUM(e.epsilon), 0) FROM exports e JOIN jobs j ON e.job_id = j.id
                             WHERE j.scenario_id = ?1",
                            params![s.id],
                            |r| r.get(0),
                        )?,
                        epsilon,
                    }),
                    None => None,
                },
                earlier: &earlier,
                pseudonyms: Some(&pseudonyms),
            },
            &batches,
        )?;
        let id = new_id("ex");
        let passed = outcome.report.passed();
        // The export is stored as Parquet (typed); the CSV of a preview or a bundle is derived
        // from it. The approval binds the Parquet's hash.
        let parquet = if passed {
            let schema = outcome
                .released
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            to_parquet_with_schema(&outcome.released, schema)?
        } else {
            Vec::new()
        };
        let (hash, wrapped, groups_key) = if passed {
            (
                Some(sha256_hex(&parquet)),
                Some(self.store_object("exports", &id, &parquet)?),
                Some(self.store_object("gate", &id, to_json(&outcome.groups).as_bytes())?),
            )
        } else {
            (None, None, None)
        };
        let checked =
            tidegate_policy::next_export_state("submitted", ExportEvent::Checked { passed })?;
        let state = match checked {
            "checked" => tidegate_policy::next_export_state(checked, ExportEvent::SentToReview)?,
            refused => refused,
        };
        let required = tidegate_policy::required_export_approvals(job.level) as i64;
        let now = crate::now_rfc3339();
        let stored_bytes = passed.then_some(parquet.len() as i64);
        // The noise of a kept release is paid for; a refused one showed nobody anything.
        let epsilon = outcome.epsilon_spent.filter(|_| passed);
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO exports VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?12, ?13, ?14)",
            params![
                id,
                job_id,
                actor.id,
                actor.org,
                state,
                to_json(&outcome.report),
                hash,
                wrapped,
                required,
                (!passed).then_some("the export gate refused the result"),
                now,
                stored_bytes,
                groups_key,
                epsilon
            ],
        )?;
        let mut steps = vec![("submitted", actor.id.as_str()), (checked, GATE_ACTOR)];
        if state != checked {
            steps.push((state, GATE_ACTOR));
        }
        for (step, by) in steps {
            Self::record_export_step(&tx, &id, &now, step, by, None)?;
        }
        self.audit.append_at(
            now,
            &actor.id,
            "export.request",
            &id,
            json!({
                "job": job_id,
                "bytes": stored_bytes,
                "gate_passed": passed,
                "checks": outcome.report.checks.iter().map(|c| json!({ "name": c.name, "passed": c.passed })).collect::<Vec<_>>(),
                "groups_suppressed": outcome.report.groups_suppressed,
                "result_sha256": hash,
                "state": state,
                "epsilon": epsilon,
            }),
        )?;
        tx.commit()?;
        drop(db);
        self.get_export(actor, &id)
    }

    fn record_export_step(
        db: &Connection,
        id: &str,
        at: &str,
        state: &str,
        by: &str,
        comment: Option<&str>,
    ) -> Result<()> {
        db.execute(
            "INSERT INTO export_events VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, at, state, by, comment],
        )?;
        Ok(())
    }

    fn export_row(db: &Connection, id: &str) -> Result<(ExportView, String, Option<Vec<u8>>)> {
        let row = db
            .query_row(
                "SELECT id, job_id, requested_by, org_id, state, gate_report, result_hash, wrapped_key, required_approvals
                 FROM exports WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                        (r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?),
                        (r.get::<_, Option<String>>(6)?, r.get::<_, Option<Vec<u8>>>(7)?, r.get::<_, i64>(8)?),
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("export {id}")))?;
        let ((id, job, by), (org, state, report), (hash, wrapped, required)) = row;
        let reviews: Vec<ApprovalView> = db
            .prepare("SELECT reviewer_id, decision, at, comment FROM export_reviews WHERE export_id = ?1 ORDER BY at")?
            .query_map(params![id], |r| {
                Ok(ApprovalView { by: r.get(0)?, as_role: r.get(1)?, at: r.get(2)?, comment: Some(r.get(3)?) })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let history: Vec<ExportStep> = db
            .prepare("SELECT state, at, actor, comment FROM export_events WHERE export_id = ?1 ORDER BY rowid")?
            .query_map(params![id], |r| {
                Ok(ExportStep { state: r.get(0)?, at: r.get(1)?, by: r.get(2)?, comment: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok((
            ExportView {
                id,
                history,
                job,
                requested_by: by,
                state,
                gate_report: from_json(&report)?,
                result_hash: hash,
                required_approvals: required as u64,
                reviews,
                preview: None,
                query: None,
                plan: None,
                modules: Vec::new(),
                earlier: Vec::new(),
            },
            org,
            wrapped,
        ))
    }

    pub fn get_export(&self, actor: &Principal, id: &str) -> Result<ExportView> {
        let db = self.db.lock().expect("db");
        let (mut view, org, wrapped) = Self::export_row(&db, id)?;
        let is_reviewer = actor.has_role(Role::Reviewer) && actor.org != org;
        if !(actor.org == org
            || is_reviewer
            || actor.has_role(Role::Auditor)
            || actor.has_role(Role::Admin))
        {
            return Err(Error::NotFound(format!("export {id}")));
        }
        if is_reviewer {
            let JobRecord {
                view: job, plan, ..
            } = Self::job_row(&db, &view.job)?;
            if let Some(w) = wrapped {
                let csv = gate::to_csv(&from_parquet(self.load_object("exports", id, &w)?)?)?;
                view.preview = Some(
                    String::from_utf8_lossy(&csv)
                        .lines()
                        .take(50)
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            view.earlier = db
                .prepare(
                    "SELECT e.id, e.state, e.result_hash, e.created_at, e.released_at, j.sql
                     FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = ?1 AND e.id != ?2 AND e.result_hash IS NOT NULL
                     ORDER BY e.created_at",
                )?
                .query_map(params![job.scenario, id], |r| {
                    Ok(json!({
                        "id": r.get::<_, String>(0)?,
                        "state": r.get::<_, String>(1)?,
                        "result_sha256": r.get::<_, String>(2)?,
                        "requested_at": r.get::<_, String>(3)?,
                        "released_at": r.get::<_, Option<String>>(4)?,
                        "query": r.get::<_, String>(5)?,
                    }))
                })?
                .collect::<rusqlite::Result<_>>()?;
            view.query = Some(job.sql);
            view.plan = plan;
            view.modules = job.modules;
        }
        Ok(view)
    }

    /// The state and term of a job's scenario are checked again at every export step.
    fn require_active_scenario_of_job(db: &Connection, job: &str) -> Result<()> {
        let scenario: String = db.query_row(
            "SELECT scenario_id FROM jobs WHERE id = ?1",
            params![job],
            |r| r.get(0),
        )?;
        let state = Self::scenario_row(db, &scenario)?.view.state;
        if state != ScenarioState::Active {
            return Err(Error::Refused(format!(
                "the scenario is {}; a suspended, expired or revoked scenario exports nothing",
                state.as_str()
            )));
        }
        Ok(())
    }

    /// R-REVIEW: approve, return or reject; approval binds the exact result hash.
    pub fn review_export(
        &self,
        actor: &Principal,
        id: &str,
        decision: &str,
        comment: &str,
    ) -> Result<ExportView> {
        {
            let mut db = self.db.lock().expect("db");
            let (view, org, _) = Self::export_row(&db, id)?;
            let approved_by: Vec<String> = view
                .reviews
                .iter()
                .filter(|r| r.as_role == "approve")
                .map(|r| r.by.clone())
                .collect();
            tidegate_policy::can_review_export(actor, &view.requested_by, &org, &approved_by)?;
            Self::require_active_scenario_of_job(&db, &view.job)?;
            let new_state = tidegate_policy::next_export_state(
                &view.state,
                ExportEvent::Reviewed {
                    decision,
                    approvals: approved_by.len() as u64 + u64::from(decision == "approve"),
                    required: view.required_approvals,
                },
            )
            .map_err(|r| Error::BadInput(r.reason))?;
            let hash = view
                .result_hash
                .clone()
                .ok_or_else(|| Error::Internal("no result hash".into()))?;
            let now = crate::now_rfc3339();
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO export_reviews VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, actor.id, decision, comment, hash, now],
            )?;
            Self::record_export_step(&tx, id, &now, new_state, &actor.id, Some(comment))?;
            tx.execute(
                "UPDATE exports SET state = ?2, decision_comment = ?3 WHERE id = ?1",
                params![id, new_state, comment],
            )?;
            self.audit.append(
                &actor.id,
                "export.review",
                id,
                json!({ "decision": decision, "state": new_state, "result_sha256": hash }),
            )?;
            tx.commit()?;
        }
        self.get_export(actor, id)
    }

    /// R-RELEASE: the requester downloads the signed bundle of an approved export.
    pub fn download_bundle(&self, actor: &Principal, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut db = self.db.lock().expect("db");
        let (view, org, wrapped) = Self::export_row(&db, id)?;
        if actor.org != org {
            return Err(Error::NotFound(format!("export {id}")));
        }
        tidegate_policy::require_role(actor, Role::Scientist)?;
        tidegate_policy::require_training(actor)?;
        Self::require_active_scenario_of_job(&db, &view.job)?;
        let next = tidegate_policy::next_export_state(&view.state, ExportEvent::Released)?;
        let wrapped =
            wrapped.ok_or_else(|| Error::Internal("approved export without a result".into()))?;
        let parquet = self.load_object("exports", id, &wrapped)?;
        let hash = sha256_hex(&parquet);
        // Approval binds the exact result: anything that changed since voids it.
        let approvals: Vec<&ApprovalView> = view
            .reviews
            .iter()
            .filter(|r| r.as_role == "approve")
            .collect();
        let bound: Vec<String> = db
            .prepare("SELECT result_hash FROM export_reviews WHERE export_id = ?1 AND decision = 'approve'")?
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if view.result_hash.as_deref() != Some(hash.as_str()) || bound.iter().any(|b| b != &hash) {
            return Err(Error::Integrity(
                "the result changed after approval; the approval is void".into(),
            ));
        }
        let JobRecord {
            view: job,
            plan,
            inputs,
            ..
        } = Self::job_row(&db, &view.job)?;
        let s = Self::scenario_row(&db, &job.scenario)?;
        let now = crate::now_rfc3339();
        let manifest = json!({
            "format": "tidegate-bundle-v1",
            "export": view.id,
            "scenario": { "id": s.id, "name": s.name, "org": s.org, "term": [s.term_start.to_string(), s.term_end.to_string()] },
            "job": { "id": job.id, "query": job.sql, "plan_sha256": plan.as_deref().map(|p| sha256_hex(p.as_bytes())), "submitted_by": job.submitted_by, "level": job.level },
            "modules": job.modules,
            "inputs": inputs,
            "policy_version": db.query_row(
                "SELECT policy_version FROM jobs WHERE id = ?1",
                params![job.id],
                |r| r.get::<_, i64>(0),
            )?,
            "gate_report": view.gate_report,
            "requested_by": view.requested_by,
            "reviewers": approvals.iter().map(|r| json!({ "id": r.by, "at": r.at })).collect::<Vec<_>>(),
            "result_sha256": hash,
            "released_at": now,
        });
        let csv = gate::to_csv(&from_parquet(parquet.clone())?)?;
        let files = bundle::build(
            &self.signer,
            manifest,
            vec![
                ("result.csv".to_string(), csv),
                ("result.parquet".to_string(), parquet),
            ],
        )?;
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE exports SET state = ?3, released_at = COALESCE(released_at, ?2) WHERE id = ?1",
            params![id, now, next],
        )?;
        if view.state != next {
            Self::record_export_step(&tx, id, &now, next, &actor.id, None)?;
        }
        self.audit.append_at(
            now,
            &actor.id,
            "export.download",
            id,
            json!({ "result_sha256": hash }),
        )?;
        tx.commit()?;
        Ok(files)
    }

    /// The admin sets the price of a category (fen per unit).
    pub fn set_price(&self, actor: &Principal, category: &str, fen_per_unit: i64) -> Result<()> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        let (unit, _) = price_item(category)?;
        if fen_per_unit < 0 {
            return Err(Error::BadInput("a price is not negative".into()));
        }
        let mut db = self.db.lock().expect("db");
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO prices VALUES (?1, ?2, ?3) ON CONFLICT(category) DO UPDATE SET fen_per_unit = ?3",
            params![category, unit, fen_per_unit],
        )?;
        self.audit.append(
            &actor.id,
            "price.set",
            category,
            json!({ "fen_per_unit": fen_per_unit, "unit": unit }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// R-METER: an org's statement for a month (`YYYY-MM`): one line per scenario and
    /// category. Public-interest scenarios and a provider's use of products of its own data
    /// are free. Admins, auditors and the org's own members may read it.
    pub fn statement(
        &self,
        actor: &Principal,
        org: &str,
        period: &str,
        as_of: Option<&str>,
    ) -> Result<Value> {
        let db = self.db.lock().expect("db");
        let org = Self::org_id(&db, org)?;
        if !(actor.org == org || actor.has_role(Role::Admin) || actor.has_role(Role::Auditor)) {
            return Err(Error::NotFound(format!("org {org}")));
        }
        let as_of = match as_of {
            Some(t) => {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| Error::BadInput("as_of is an RFC 3339 time".into()))?
            }
            None => time::OffsetDateTime::now_utc(),
        };
        let ledger = Self::ledger(&db)?;
        crate::metering::statement(&ledger, &org, period, as_of)
    }

    /// The metered events as the metadata records them; the audit log yields the same ledger
    /// (`metering::ledger_from_audit`).
    fn ledger(db: &Connection) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        for (key, ..) in PRICE_ITEMS {
            let fen: Option<i64> = db
                .query_row(
                    "SELECT fen_per_unit FROM prices WHERE category = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(fen) = fen {
                ledger.prices.insert(key.to_string(), fen);
            }
        }
        let exited: HashMap<String, String> = db
            .prepare("SELECT id, exited_at FROM orgs WHERE exited_at IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let scenario_ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in scenario_ids {
            let s = Self::scenario_row(db, &id)?;
            let mut own_data = true;
            for g in &s.grants {
                own_data &= Self::dataset_row(db, &g.dataset)?.org == s.org;
            }
            ledger.scenarios.insert(
                id,
                ScenarioTerms {
                    org: s.org,
                    name: s.name,
                    public_interest: s.view.public_interest,
                    own_data,
                },
            );
        }
        let org_of = |scenario: &str| -> Result<String> {
            ledger
                .scenarios
                .get(scenario)
                .map(|s| s.org.clone())
                .ok_or_else(|| Error::Integrity(format!("scenario {scenario} is gone")))
        };
        let mut events = Vec::new();
        let jobs: Vec<(String, String, Option<String>, bool)> = db
            .prepare(
                "SELECT scenario_id, finished_at, resources, state = 'succeeded' FROM jobs
                 WHERE finished_at IS NOT NULL ORDER BY finished_at",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (scenario, at, resources, succeeded) in jobs {
            let used: ResourceUse = resources
                .map(|r| from_json(&r))
                .transpose()?
                .unwrap_or_default();
            events.push(Event::Job {
                scenario: scenario.clone(),
                at: at.clone(),
                fuel: used.fuel,
                bytes_scanned: used.bytes_scanned,
            });
            if succeeded {
                let org = org_of(&scenario)?;
                events.push(Event::Stored {
                    until: exited.get(&org).cloned(),
                    org,
                    scenario: Some(scenario),
                    bytes: used.output_bytes,
                    from: at,
                });
            }
        }
        let modules: Vec<(String, String)> = db
            .prepare("SELECT scenario_id, approved_at FROM modules WHERE approved_at IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (scenario, at) in modules {
            events.push(Event::ModuleApproved { scenario, at });
        }
        let exports: Vec<(String, String, Option<i64>, Option<String>)> = db
            .prepare(
                "SELECT j.scenario_id, e.created_at, e.bytes, e.released_at
                 FROM exports e JOIN jobs j ON e.job_id = j.id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (scenario, created, bytes, released) in exports {
            if let Some(bytes) = bytes {
                let org = org_of(&scenario)?;
                events.push(Event::Stored {
                    until: exited.get(&org).cloned(),
                    org,
                    scenario: Some(scenario.clone()),
                    bytes: bytes as u64,
                    from: created,
                });
            }
            if let Some(at) = released {
                events.push(Event::Released { scenario, at });
            }
        }
        let social: Vec<(String, i64, String)> = db
            .prepare(
                "SELECT d.org_id, v.bytes, v.created_at FROM dataset_versions v
                 JOIN datasets d ON v.dataset_id = d.id WHERE d.origin LIKE 'social%'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (org, bytes, from) in social {
            events.push(Event::Stored {
                until: exited.get(&org).cloned(),
                org,
                scenario: None,
                bytes: bytes as u64,
                from,
            });
        }
        ledger.events = events;
        Ok(ledger)
    }

    /// R-REPORT: an org's annual report: its scenarios, jobs, exports, resource use and
    /// incidents (failed jobs, refused modules, rejected exports), as data.
    pub fn annual_report(&self, actor: &Principal, org: &str, year: i32) -> Result<Value> {
        let db = self.db.lock().expect("db");
        let org = Self::org_id(&db, org)?;
        if !(actor.org == org || actor.has_role(Role::Admin) || actor.has_role(Role::Auditor)) {
            return Err(Error::NotFound(format!("org {org}")));
        }
        let like = format!("{year:04}%");
        let scenario_ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios WHERE org_id = ?1 AND created_at <= ?2 ORDER BY created_at")?
            .query_map(params![org, format!("{year:04}-12-31T23:59:59Z")], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut scenarios = Vec::new();
        let (mut jobs_total, mut jobs_failed, mut exports_released, mut exports_rejected) =
            (0, 0, 0, 0);
        let mut used = ResourceUse::default();
        for sid in &scenario_ids {
            let s = Self::scenario_row(&db, sid)?;
            let mut stmt = db.prepare(
                "SELECT state, resources FROM jobs WHERE scenario_id = ?1 AND created_at LIKE ?2",
            )?;
            let (mut jobs, mut failed) = (0, 0);
            for row in stmt.query_map(params![sid, like], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })? {
                let (state, resources) = row?;
                jobs += 1;
                failed += i64::from(state == "failed");
                if let Some(r) = resources {
                    let r: ResourceUse = from_json(&r)?;
                    used.fuel += r.fuel;
                    used.rows_scanned += r.rows_scanned;
                    used.bytes_scanned += r.bytes_scanned;
                    used.output_bytes += r.output_bytes;
                    used.wall_ms += r.wall_ms;
                }
            }
            let count_exports = |state: &str| -> Result<i64> {
                Ok(db.query_row(
                    "SELECT count(*) FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = ?1 AND e.state = ?2 AND e.created_at LIKE ?3",
                    params![sid, state, like],
                    |r| r.get(0),
                )?)
            };
            let (released, rejected) = (count_exports("released")?, count_exports("rejected")?);
            jobs_total += jobs;
            jobs_failed += failed;
            exports_released += released;
            exports_rejected += rejected;
            scenarios.push(json!({
                "id": s.id, "name": s.name, "key_area": s.view.key_area, "state": s.view.state,
                "public_interest": s.view.public_interest, "term": [s.view.term_start, s.view.term_end],
                "jobs": jobs, "jobs_failed": failed, "exports_released": released,
                "exports_rejected": rejected,
            }));
        }
        Ok(json!({
            "org": org,
            "year": year,
            "scenarios": scenarios,
            "totals": {
                "jobs": jobs_total, "jobs_failed": jobs_failed,
                "exports_released": exports_released, "exports_rejected": exports_rejected,
                "fuel": used.fuel, "rows_scanned": used.rows_scanned,
                "bytes_scanned": used.bytes_scanned, "output_bytes": used.output_bytes,
                "wall_ms": used.wall_ms,
            },
            "incidents": {
                "failed_jobs": jobs_failed,
                "rejected_exports": exports_rejected,
            },
        }))
    }

    fn policy_version(db: &Connection) -> Result<i64> {
        let v: Option<String> = db
            .query_row(
                "SELECT value FROM settings WHERE key = 'policy_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    /// Policy as code: the scenarios' rules and the price table as one versioned document.
    pub fn export_policy(&self, actor: &Principal) -> Result<Value> {
        if !(actor.has_role(Role::Admin) || actor.has_role(Role::Auditor)) {
            return Err(Error::Refused(
                "only admins and auditors read the policy document".into(),
            ));
        }
        let db = self.db.lock().expect("db");
        let mut prices = serde_json::Map::new();
        for (category, _, _, default) in PRICE_ITEMS {
            let fen: Option<i64> = db
                .query_row(
                    "SELECT fen_per_unit FROM prices WHERE category = ?1",
                    params![category],
                    |r| r.get(0),
                )
                .optional()?;
            prices.insert(category.to_string(), json!(fen.unwrap_or(default)));
        }
        let ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios ORDER BY created_at")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut scenarios = Vec::new();
        for id in ids {
            let s = Self::scenario_row(&db, &id)?;
            scenarios.push(json!({
                "id": s.id, "name": s.name, "org": s.org, "state": s.stored_state,
                "k": s.k, "term_start": s.view.term_start, "term_end": s.view.term_end,
                "grants": s.grants, "export_rules": s.export_rules,
            }));
        }
        Ok(json!({
            "format": "tidegate-policy-v1",
            "version": Self::policy_version(&db)?,
            "prices": prices,
            "scenarios": scenarios,
        }))
    }

    /// Applies a policy document as one new version: price changes, and per scenario its
    /// threshold k (never below its level's default), the end of its term, its state (suspend,
    /// resume, revoke), its export rules and narrower grants (widening one needs a new
    /// application and its approvals). Shows the difference; with `dry_run` changes nothing.
    pub fn apply_policy(&self, actor: &Principal, doc: &Value, dry_run: bool) -> Result<Value> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let mut db = self.db.lock().expect("db");
        let current = Self::policy_version(&db)?;
        if doc["format"] != "tidegate-policy-v1" {
            return Err(Error::BadInput("not a tidegate-policy-v1 document".into()));
        }
        if doc["version"].as_i64() != Some(current) {
            return Err(Error::Refused(format!(
                "the document was exported at version {}, the policy is now at version {current}: export it again",
                doc["version"]
            )));
        }
        let mut changes = Vec::new();
        let mut statements: Vec<(String, Vec<rusqlite::types::Value>)> = Vec::new();
        let mut cancel = Vec::new();
        for (category, value) in doc["prices"].as_object().into_iter().flatten() {
            let known = price_item(category)?;
            let fen = value.as_i64().filter(|f| *f >= 0).ok_or_else(|| {
                Error::BadInput(format!(
                    "the price of {category} is not a whole number of fen"
                ))
            })?;
            let old: i64 = db
                .query_row(
                    "SELECT fen_per_unit FROM prices WHERE category = ?1",
                    params![category],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(known.1);
            if old != fen {
                changes.push(json!({ "price": category, "from": old, "to": fen }));
                statements.push((
                    "INSERT INTO prices VALUES (?1, ?2, ?3) ON CONFLICT(category) DO UPDATE SET fen_per_unit = ?3".into(),
                    vec![category.clone().into(), known.0.to_string().into(), fen.into()],
                ));
            }
        }
        for wanted in doc["scenarios"].as_array().into_iter().flatten() {
            let id = wanted["id"]
                .as_str()
                .ok_or_else(|| Error::BadInput("a scenario without an id".into()))?;
            let s = Self::scenario_row(&db, id)?;
            if let Some(k) = wanted["k"].as_u64()
                && k != s.k
            {
                let mut level = Level::L1;
                for g in &s.grants {
                    level = level.max(Self::dataset_row(&db, &g.dataset)?.level);
                }
                if k < default_threshold(level) {
                    return Err(Error::Refused(format!(
                        "scenario {id}: k = {k} is below the {level} minimum of {}",
                        default_threshold(level)
                    )));
                }
                changes.push(json!({ "scenario": id, "k": { "from": s.k, "to": k } }));
                statements.push((
                    "UPDATE scenarios SET k = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), (k as i64).into()],
                ));
            }
            if let Some(end) = wanted["term_end"].as_str()
                && end != s.view.term_end
            {
                if parse_date(end)? < s.term_start {
                    return Err(Error::BadInput(format!(
                        "scenario {id}: the term ends before it starts"
                    )));
                }
                changes.push(
                    json!({ "scenario": id, "term_end": { "from": s.view.term_end, "to": end } }),
                );
                statements.push((
                    "UPDATE scenarios SET term_end = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), end.to_string().into()],
                ));
            }
            if !wanted["export_rules"].is_null() {
                let rules: ExportRules = serde_json::from_value(wanted["export_rules"].clone())
                    .map_err(|e| Error::BadInput(format!("scenario {id}: export_rules: {e}")))?;
                if rules != s.export_rules {
                    tidegate_policy::validate_export_rules(
                        &rules,
                        EXPORT_MAX_ROWS,
                        EXPORT_MAX_BYTES,
                    )
                    .map_err(|r| Error::Refused(format!("scenario {id}: {r}")))?;
                    changes.push(json!({ "scenario": id, "export_rules": { "from": s.export_rules, "to": rules } }));
                    statements.push((
                        "UPDATE scenarios SET export_rules = ?2 WHERE id = ?1".into(),
                        vec![id.to_string().into(), to_json(&rules).into()],
                    ));
                }
            }
            if !wanted["grants"].is_null() {
                let grants: Vec<GrantRequest> = serde_json::from_value(wanted["grants"].clone())
                    .map_err(|e| Error::BadInput(format!("scenario {id}: grants: {e}")))?;
                if let Some(narrowed) = narrowed_grants(id, &s.grants, &grants)? {
                    changes.push(
                        json!({ "scenario": id, "grants": { "from": s.grants, "to": narrowed } }),
                    );
                    statements.push((
                        "UPDATE scenarios SET grants = ?2 WHERE id = ?1".into(),
                        vec![id.to_string().into(), to_json(&narrowed).into()],
                    ));
                }
            }
            if let Some(state) = wanted["state"].as_str()
                && state != s.stored_state.as_str()
            {
                let action = match state {
                    "suspended" => "suspend",
                    "active" => "resume",
                    "revoked" => "revoke",
                    other => {
                        return Err(Error::BadInput(format!(
                            "scenario {id}: state {other} cannot be set"
                        )));
                    }
                };
                let next = tidegate_policy::can_change_scenario(actor, s.stored_state, action)?;
                changes.push(
                    json!({ "scenario": id, "state": { "from": s.stored_state, "to": next } }),
                );
                statements.push((
                    "UPDATE scenarios SET state = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), next.as_str().to_string().into()],
                ));
                if next != ScenarioState::Active {
                    cancel.push(id.to_string());
                }
            }
        }
        let to = if changes.is_empty() || dry_run {
            current
        } else {
            current + 1
        };
        let answer = json!({ "from_version": current, "to_version": to, "dry_run": dry_run, "changes": changes });
        if dry_run || changes.is_empty() {
            return Ok(answer);
        }
        let tx = db.transaction()?;
        for (sql, values) in &statements {
            tx.execute(sql, rusqlite::params_from_iter(values.iter()))?;
        }
        tx.execute(
            "INSERT INTO settings VALUES ('policy_version', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![to.to_string()],
        )?;
        self.audit.append(
            &actor.id,
            "policy.apply",
            &format!("v{to}"),
            json!({ "changes": changes }),
        )?;
        tx.commit()?;
        self.cancel_jobs(&cancel);
        Ok(answer)
    }

    /// Lets an auditor check the chain through the API.
    pub fn verify_audit(&self, actor: &Principal) -> Result<crate::audit::AuditVerdict> {
        if !(actor.has_role(Role::Auditor) || actor.has_role(Role::Admin)) {
            return Err(Error::Refused(
                "only auditors and admins verify the audit log".into(),
            ));
        }
        let key = hex::decode(self.signer.public_key_hex())
            .map_err(|_| Error::Internal("public key encoding".into()))?;
        crate::audit::verify_file(self.audit.path(), Some(&key))
    }

    /// Retention (R-AUDIT): an admin prunes the audit log's sealed segments whose entries are
    /// all older than `before`, which must lie at least 180 days back. Nothing younger is ever
    /// deleted, by this or by anything else (an exit keeps the logs). The prune is audited.
    pub fn prune_audit(&self, actor: &Principal, before: &str) -> Result<Value> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let before = parse_date(before)?;
        let pruned = self.audit.prune(before, today())?;
        self.audit.append(
            &actor.id,
            "audit.prune",
            "audit",
            json!({ "before": before.to_string(), "entries": pruned }),
        )?;
        Ok(json!({ "before": before.to_string(), "entries_pruned": pruned }))
    }

    /// Writes a signed checkpoint of the audit log now (at shutdown, and by the demo).
    pub fn checkpoint(&self) -> Result<()> {
        self.audit.checkpoint()
    }
}

/// Checks an exit certificate's signature with the platform public key (raw 32 bytes).
/// The grants a policy document asks for, when they differ from the current ones and only
/// narrow them: fewer datasets, fewer columns, the same pinned versions. Widening is refused.
fn narrowed_grants(
    scenario: &str,
    current: &[GrantRequest],
    wanted: &[GrantRequest],
) -> Result<Option<Vec<GrantRequest>>> {
    let mut narrowed = Vec::new();
    for w in wanted {
        let Some(c) = current.iter().find(|c| c.dataset == w.dataset) else {
            return Err(Error::Refused(format!(
                "scenario {scenario}: dataset {} is not granted; widening a grant needs a new application and its approvals",
                w.dataset
            )));
        };
        if let Some(extra) = w.columns.iter().find(|col| !c.columns.contains(col)) {
            return Err(Error::Refused(format!(
                "scenario {scenario}: column {extra} of {} is not granted; widening a grant needs a new application and its approvals",
                w.dataset
            )));
        }
        if w.version != c.version {
            return Err(Error::Refused(format!(
                "scenario {scenario}: the pinned version of {} moves only by its provider (scenario repin)",
                w.dataset
            )));
        }
        if w.columns.is_empty() {
            return Err(Error::BadInput(format!(
                "scenario {scenario}: a grant of {} names no column; drop the dataset instead",
                w.dataset
            )));
        }
    }
    // In the current order, so that a reordered document is no change.
    for c in current {
        if let Some(w) = wanted.iter().find(|w| w.dataset == c.dataset) {
            narrowed.push(GrantRequest {
                dataset: c.dataset.clone(),
                columns: c
                    .columns
                    .iter()
                    .filter(|col| w.columns.contains(col))
                    .cloned()
                    .collect(),
                version: c.version,
            });
        }
    }
    if narrowed.is_empty() {
        return Err(Error::BadInput(format!(
            "scenario {scenario}: a scenario keeps at least one dataset; revoke it instead"
        )));
    }
    let same = narrowed.len() == current.len()
        && narrowed
            .iter()
            .zip(current)
            .all(|(n, c)| n.dataset == c.dataset && n.columns == c.columns);
    Ok((!same).then_some(narrowed))
}

pub fn verify_certificate(
    certificate: &Value,
    signature_hex: &str,
    public_key: &[u8],
) -> Result<()> {
    let body = serde_json::to_vec(certificate)?;
    let signature = hex::decode(signature_hex)
        .map_err(|_| Error::Integrity("the signature is not hex".into()))?;
    if crate::crypto::ed25519_verifies(public_key, &body, &signature) {
        Ok(())
    } else {
        Err(Error::Integrity(
            "the certificate's signature does not verify".into(),
        ))
    }
}

// ----- Table helpers -----

fn arrow_type(t: DataType) -> ArrowType {
    match t {
        DataType::Utf8 => ArrowType::Utf8,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Float64 => ArrowType::Float64,
        DataType::Boolean => ArrowType::Boolean,
        DataType::Date32 => ArrowType::Date32,
    }
}

fn our_type(t: &ArrowType) -> Option<DataType> {
    Some(match t {
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => DataType::Utf8,
        ArrowType::Int32 => DataType::Int32,
        ArrowType::Int64 => DataType::Int64,
        ArrowType::Float64 => DataType::Float64,
        ArrowType::Boolean => DataType::Boolean,
        ArrowType::Date32 => DataType::Date32,
        _ => return None,
    })
}

/// Reads a local CSV or Parquet file (by its extension) as a table for `tidegate dev run`:
/// all columns, no tags.
pub fn local_table(name: &str, path: &Path) -> Result<TableInput> {
    let data = fs::read(path)
        .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", path.display())))?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") | Some("pq") => "parquet",
        _ => "csv",
    };
    let batches = read_table(format, &data, &[])?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::BadInput(format!("{} holds no rows", path.display())))?;
    Ok(TableInput {
        name: name.to_string(),
        columns: column_specs(&schema, &[])?,
        data: TableData::Memory(batches),
    })
}

/// Reads a CSV or Parquet file; declared column types override inference.
fn read_table(format: &str, data: &[u8], declared: &[ColumnInput]) -> Result<Vec<RecordBatch>> {
    let batches = match format {
        "csv" => {
            let format = arrow::csv::reader::Format::default().with_header(true);
            let (inferred, _) = format
                .infer_schema(std::io::Cursor::new(data), Some(1000))
                .map_err(|e| Error::BadInput(format!("the CSV cannot be read: {e}")))?;
            let fields: Vec<Field> = inferred
                .fields()
                .iter()
                .map(|f| {
                    let t = declared
                        .iter()
                        .find(|c| &c.name == f.name())
                        .and_then(|c| c.data_type)
                        .map(arrow_type)
                        .unwrap_or_else(|| f.data_type().clone());
                    Field::new(f.name(), t, true)
                })
                .collect();
            let reader = arrow::csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
                .with_header(true)
                .with_batch_size(8192)
                .build(std::io::Cursor::new(data))
                .map_err(|e| Error::BadInput(format!("the CSV cannot be read: {e}")))?;
            reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| csv_error(&e))?
        }
        "parquet" => from_parquet(data.to_vec())
            .map_err(|_| Error::BadInput("the Parquet file cannot be read".into()))?,
        other => {
            return Err(Error::BadInput(format!(
                "unknown format `{other}`: csv or parquet"
            )));
        }
    };
    // Normalize string views and large strings to plain UTF-8, and apply declared types.
    batches
        .into_iter()
        .map(|b| {
            let schema = b.schema();
            let mut fields = Vec::new();
            let mut cols: Vec<ArrayRef> = Vec::new();
            for (f, c) in schema.fields().iter().zip(b.columns()) {
                let want = declared
                    .iter()
                    .find(|d| &d.name == f.name())
                    .and_then(|d| d.data_type)
                    .map(arrow_type)
                    .or_else(|| our_type(f.data_type()).map(arrow_type))
                    .ok_or_else(|| {
                        Error::BadInput(format!(
                            "column {} has an unsupported type {}",
                            f.name(),
                            f.data_type()
                        ))
                    })?;
                let c = if c.data_type() == &want {
                    Arc::clone(c)
                } else {
                    arrow::compute::cast(c, &want).map_err(|_| {
                        Error::BadInput(format!("column {} cannot be read as {want}", f.name()))
                    })?
                };
                fields.push(Field::new(f.name(), want, true));
                cols.push(c);
            }
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
                .map_err(|e| Error::Internal(format!("batch: {e}")))
        })
        .collect()
}

/// CSV parse errors quote the offending value; report only where it is.
fn csv_error(e: &arrow::error::ArrowError) -> Error {
    let text = e.to_string();
    let location = text
        .find("line")
        .map(|i| {
            text[i..]
                .chars()
                .take_while(|c| *c != ':')
                .collect::<String>()
        })
        .unwrap_or_default();
    Error::BadInput(format!(
        "the CSV has a value that does not parse as its column's type {location}"
    ))
}

fn column_specs(schema: &Schema, declared: &[ColumnInput]) -> Result<Vec<ColumnSpec>> {
    for d in declared {
        if schema.field_with_name(&d.name).is_err() {
            return Err(Error::BadInput(format!(
                "the file has no column {}",
                d.name
            )));
        }
        if d.name.starts_with("__tg") {
            return Err(Error::BadInput(
                "column names starting with __tg are reserved".into(),
            ));
        }
    }
    let specs: Vec<ColumnSpec> = schema
        .fields()
        .iter()
        .map(|f| ColumnSpec {
            name: f.name().clone(),
            data_type: our_type(f.data_type()).expect("normalized above"),
            tags: declared
                .iter()
                .find(|d| &d.name == f.name())
                .map(|d| d.tags.clone())
                .unwrap_or_default(),
        })
        .collect();
    if specs
        .iter()
        .filter(|c| c.has_tag(ColumnTag::Entity))
        .count()
        > 1
    {
        return Err(Error::BadInput(
            "at most one column is the `entity` key".into(),
        ));
    }
    Ok(specs)
}

/// R-IMPORT's data quality report: rows, nulls per column, duplicates of the entity key.
fn quality_report(batches: &[RecordBatch], columns: &[ColumnSpec]) -> Value {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut nulls = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        let n: usize = batches.iter().map(|b| b.column(i).null_count()).sum();
        nulls.insert(c.name.clone(), n);
    }
    let entity_duplicates = columns
        .iter()
        .position(|c| c.has_tag(ColumnTag::Entity))
        .map(|i| {
            let mut seen = HashSet::new();
            let mut dup = 0usize;
            for b in batches {
                let col = b.column(i);
                for row in 0..col.len() {
                    let key =
                        arrow::util::display::array_value_to_string(col, row).unwrap_or_default();
                    if !seen.insert(sha256_hex(key.as_bytes())) {
                        dup += 1;
                    }
                }
            }
            dup
        });
    json!({ "rows": rows, "nulls": nulls, "entity_duplicate_rows": entity_duplicates })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_of_an_older_schema_is_migrated_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO orgs VALUES ('org1', 'bureau', 'provider', 'then')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO datasets VALUES ('ds1', 'visits', 'org1', 'L2', 'public', '[]', 'then')",
                [],
            )
            .unwrap();
        }
        let conn = open_db(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let approvers: String = conn
            .query_row("SELECT approvers FROM datasets WHERE id = 'ds1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(approvers, "[]");
        drop(conn);
        // Opening again changes nothing.
        drop(open_db(&path).unwrap());
    }

    #[test]
    fn one_process_at_a_time_opens_a_data_directory_and_leftover_temporary_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (platform, _) = Platform::init(&data, &dir.path().join("master.key"), "admin").unwrap();
        let key = || MasterKey::load(&dir.path().join("master.key")).unwrap();
        let second = Platform::open(&data, key()).unwrap_err().to_string();
        assert!(second.contains("another tidegate process"), "{second}");
        drop(platform);
        let leftover = data.join("objects").join(".x.tge.tmp-0123456789ab");
        fs::write(&leftover, b"half").unwrap();
        let _platform = Platform::open(&data, key()).unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn a_data_directory_of_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = open_db(&path).unwrap_err().to_string();
        assert!(err.contains("written by a newer Tidegate"), "{err}");
    }

    #[test]
    fn an_action_whose_audit_entry_cannot_be_made_durable_does_not_happen() {
        let dir = tempfile::tempdir().unwrap();
        let (platform, token) = Platform::init(
            &dir.path().join("data"),
            &dir.path().join("master.key"),
            "admin",
        )
        .unwrap();
        let admin = platform.authenticate(&token).unwrap();
        platform.create_org(&admin, "before", "operator").unwrap();
        platform.audit.fail_writes_for_test();
        let err = platform
            .create_org(&admin, "after", "operator")
            .unwrap_err();
        assert!(
            err.to_string().contains("could not be made durable"),
            "{err}"
        );
        // The org does not exist, and every later action is refused as well.
        let count: i64 = platform
            .db
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM orgs WHERE name = 'after'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(count, 0);
        let err = platform
            .create_org(&admin, "later", "operator")
            .unwrap_err();
        assert!(err.to_string().contains("refused until restart"), "{err}");
    }

    #[test]
    fn pseudonyms_survive_a_master_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (platform, _) = Platform::init(&data, &dir.path().join("old.key"), "admin").unwrap();
        let before = {
            let db = platform.db.lock().unwrap();
            platform
                .pseudonym_root(&db)
                .unwrap()
                .pseudonym_key("sc_1")
                .pseudonym("13812345678")
        };
        drop(platform);
        let old = MasterKey::load(&dir.path().join("old.key")).unwrap();
        Platform::rotate_master_key(&data, old, &dir.path().join("new.key")).unwrap();
        let platform =
            Platform::open(&data, MasterKey::load(&dir.path().join("new.key")).unwrap()).unwrap();
        let db = platform.db.lock().unwrap();
        let after = platform
            .pseudonym_root(&db)
            .unwrap()
            .pseudonym_key("sc_1")
            .pseudonym("13812345678");
        assert_eq!(before, after);
    }

    /// A new data directory under `dir` (master key `dir/KEY`) with a trained provider.
    fn platform_with_provider(dir: &Path, key: &str) -> (Platform, Principal) {
        let (platform, token) = Platform::init(&dir.join("data"), &dir.join(key), "admin").unwrap();
        let admin = platform.authenticate(&token).unwrap();
        let org = platform.create_org(&admin, "bureau", "provider").unwrap();
        let p = platform
            .create_principal(&admin, "p", &org.id, &[Role::Provider])
            .unwrap();
        platform.record_training(&admin, &p.id, "t").unwrap();
        let provider = platform.authenticate(p.token.as_deref().unwrap()).unwrap();
        (platform, provider)
    }

    /// Imports a two-row table under `name`.
    fn import_small(platform: &Platform, provider: &Principal, name: &str) -> DatasetView {
        use base64::Engine as _;
        platform
            .import_dataset(
                provider,
                ImportRequest {
                    name: name.into(),
                    level: Level::L2,
                    format: "csv".into(),
                    columns: vec![],
                    approvers: vec![],
                    data_base64: base64::engine::general_purpose::STANDARD
                        .encode("a,b\n1,x\n2,y\n"),
                },
            )
            .unwrap()
    }

    #[test]
    fn a_dataset_file_moved_to_another_dataset_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let (platform, provider) = platform_with_provider(dir.path(), "master.key");
        let first = import_small(&platform, &provider, "first");
        let second = import_small(&platform, &provider, "second");
        assert_eq!(platform.verify_storage().unwrap(), 2);
        let path = |d: &DatasetView| platform.object_path("datasets", &format!("{}/v1", d.id));
        fs::copy(path(&first), path(&second)).unwrap();
        assert!(matches!(
            platform.verify_storage(),
            Err(Error::Integrity(_))
        ));
    }

    #[test]
    fn a_rotation_killed_after_its_commit_completes_when_opened_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (platform, provider) = platform_with_provider(dir.path(), "old.key");
        import_small(&platform, &provider, "t");
        drop(platform);
        let old = || MasterKey::load(&dir.path().join("old.key")).unwrap();
        // SAFETY of the test: the variable is read only by this crate's rotation code.
        unsafe { std::env::set_var("TIDEGATE_TEST_KILL_AFTER_COMMIT", "1") };
        let n = Platform::rotate_master_key(&data, old(), &dir.path().join("new.key")).unwrap();
        unsafe { std::env::remove_var("TIDEGATE_TEST_KILL_AFTER_COMMIT") };
        assert_eq!(n, 1);
        assert!(
            data.join(SIGNING_KEY_NEXT).exists(),
            "killed before the rename"
        );
        let err = Platform::open(&data, old()).unwrap_err();
        assert!(
            err.to_string()
                .contains("not the data directory's master key"),
            "{err}"
        );
        let new = MasterKey::load(&dir.path().join("new.key")).unwrap();
        let reopened = Platform::open(&data, new).unwrap();
        assert!(
            !data.join(SIGNING_KEY_NEXT).exists(),
            "opening finished the rotation"
        );
        assert_eq!(reopened.verify_storage().unwrap(), 1);
    }

    #[test]
    fn the_master_key_is_refused_inside_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let err = Platform::init(&data, &data.join("keys/master.key"), "admin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused: the master key must not be stored inside the data directory"
        );
    }
}
