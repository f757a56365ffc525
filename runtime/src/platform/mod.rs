//! The platform: one data directory with its metadata database, encrypted objects, audit log
//! and signing key (`directory.rs`), and the workflows of SPEC.md from onboarding to release,
//! one file each; this file holds what they share: the `Platform`, its stored rows, helpers.
//!
//! Every workflow asks `tidegate-policy` first, changes state inside one SQLite transaction,
//! and appends its audit entry before that transaction commits: an action whose entry cannot
//! be made durable does not happen.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
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
use crate::audited::Detail;
use crate::bundle::{self, Signer};
use crate::crypto::{
    DataKey, MasterKey, PseudonymKey, random_bytes, random_token, sha256_hex, write_atomic,
};
use crate::error::{Error, Result};
use crate::gate::{self, GateInput};
use crate::job::{self, EngineLimits};
use crate::metering::{Event, Ledger, PRICE_ITEMS, ScenarioTerms};
use crate::sandbox::{GuestLimits, JobMeter, Sandbox};
use crate::storage::{SealedSource, SealedStore, from_parquet, to_parquet_with_schema};
use crate::tables::{TableData, TableInput};

mod alerts;
mod billing;
mod custody;
mod datasets;
mod directory;
mod evaluation;
mod executor_jobs;
mod exports;
mod jobs;
mod lifecycle;
mod lists;
mod metrics;
mod mocks;
mod modules;
mod onboarding;
mod policy;
mod providers;
mod public;
mod queue;
mod reading;
mod scenarios;
mod schema;
mod sessions;
mod traceability;
mod views;

pub use alerts::{ALERT_SIGNING_CONTEXT, AlertSettings, AlertView, verify_alert};
pub use custody::SampleView;
pub use directory::StagedUpload;
pub use evaluation::EvaluationRequest;
pub use executor_jobs::ExecutorJobs;
use executor_jobs::JobBudgets;
pub use lifecycle::{SWEEP_ACTOR, SweepReport};
pub use lists::{ExportSummary, JobSummary, ListQuery, Listing, ModuleSummary};
pub use metrics::PlatformCounts;
pub use mocks::{MOCK_MARKER, MockFile};
pub use modules::ModuleDetail;
pub use providers::{
    ContributionReport, DatasetContribution, DatasetUsage, ProductUse, ScenarioUse,
};
pub use public::PublicRecord;
pub use reading::local_table;
use reading::{FileBytes, column_specs};
use schema::open_db;
pub use sessions::{SESSION_SECONDS, Session};
pub use traceability::{AuditQuery, AuditSearch, TrainingState};
pub use views::*;

pub const AUDIT_FILE: &str = "audit.log";
pub const PUBLIC_KEY_FILE: &str = "platform.pub";
/// The gate's memory of one dataset: every exact release over it, and the sums alone once a
/// cell over it has been suppressed for dominance.
type Remembrance = (
    Arc<tidegate_policy::Ledger>,
    Option<Arc<tidegate_policy::Ledger>>,
);

pub(crate) const EXPORT_MAX_ROWS: u64 = 10_000;
pub(crate) const EXPORT_MAX_BYTES: u64 = 10 << 20;
/// The largest file an import takes (staged sealed on disk, read batch by batch).
const MAX_IMPORT_BYTES: u64 = 64 << 30;
/// The largest file an import takes inside a JSON body (base64, held in memory).
const MAX_INLINE_IMPORT_BYTES: usize = 1 << 30;

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
    crate::clock::today()
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

/// A state stored as text, read back as its enum; another spelling is an integrity failure.
fn stored_state<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(Error::Integrity)
}

/// [`stored_state`] of column `i` of a row.
fn stored_state_at<T: std::str::FromStr<Err = String>>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Integrity(format!("stored JSON: {e}")))
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
    /// S17: the version's rows failing its provider's quality rules (summed over the rules),
    /// as its import counted them; none when no rule was declared.
    rule_failures: Option<u64>,
}

/// A stored job with what only the runtime sees.
struct JobRecord {
    view: JobView,
    result_hash: Option<String>,
    wrapped: Option<Vec<u8>>,
    shape: Option<String>,
    plan: Option<String>,
    inputs: Vec<StoredInput>,
}

/// A dataset version a job read, as the job's record keeps it (and its bundle's manifest
/// shows it). Every field is required: a record without one is an integrity failure, never a
/// default that would make two jobs' data look the same or different.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredInput {
    dataset: String,
    name: String,
    version: i64,
    content_hash: String,
    /// S17: the rows of the version read failing its quality rules (see [`JobInput`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule_failures: Option<u64>,
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
type PreparedJob = (
    Vec<TableInput>,
    crate::sandbox::Functions,
    Vec<SealedSource>,
    u64,
);

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
    /// S15: when each (principal, read action, object) was last logged, and each (principal,
    /// address) seen: a read is logged once an hour, not at every poll.
    reads_logged: Mutex<HashMap<(String, &'static str, String), Instant>>,
    addresses_seen: Mutex<HashSet<(String, String)>>,
    /// S19: the signed public record last built, when, and how many audited changes of state
    /// the log held then.
    public_record: Mutex<Option<(Instant, u64, Arc<PublicRecord>)>>,
    /// One verification of the audit log at a time (each reads the whole log): requests and
    /// sweeps that arrive meanwhile wait their turn instead of multiplying the work.
    audit_check: Mutex<()>,
    /// S15: refused sign-ins per address not logged yet, and when the last was logged.
    refused_sign_ins: Mutex<HashMap<String, (Instant, u64)>>,
    signer: Arc<Signer>,
    /// Dataset names with an import under way: one import of a name at a time, so the version
    /// an import chose before writing its object is still the next one when it commits.
    importing: Mutex<HashSet<String>>,
    /// Mocks being made now (a few at a time: each is made in memory).
    mocking: std::sync::atomic::AtomicUsize,
    /// Jobs accepted and waiting for a worker.
    queue: Arc<queue::JobQueue>,
    /// Jobs whose cancellation was asked for while they ran: whatever they end with, they
    /// end cancelled.
    cancels: Mutex<HashSet<String>>,
    /// What each running job reads (its sealed inputs and their plaintext size): its progress.
    reading: Mutex<HashMap<String, (Vec<SealedSource>, u64)>>,
    /// The gate's memory per dataset, built from the stored audit records the first time an
    /// export over the dataset asks, and kept as exports pass (R-GATE 6).
    ledgers: Mutex<HashMap<String, Remembrance>>,
    /// Held by an export request from its first read to its record, and by an org's exit:
    /// one release at a time is checked against the memory, while other requests go on.
    gate: Mutex<()>,
    /// Where jobs' inputs run: on this process's engine, or on a Ballista cluster.
    cluster: Mutex<Option<crate::cluster::Cluster>>,
    /// Held while the platform is open: one process per data directory.
    _lock: fs::File,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // The workers end once the queue closes; a job they are running holds the platform.
        self.queue.close();
    }
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Platform({})", self.dir.display())
    }
}

/// Who moves an export when the gate does.
const GATE_ACTOR: &str = "export gate";
