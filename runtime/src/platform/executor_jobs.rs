//! What an executor of another process than the platform's learns of a job: the platform's
//! metadata, read-only, and its stored objects, opened with the master key the executor was
//! given the way the server is. Nothing of a job travels in its plan but the job's id.

use rusqlite::OpenFlags;
use tidegate_policy::JobState;

use super::*;
use crate::cluster::{JobSource, ResolvedJob};

/// Where executors record what each job used on them: `DIR/JOB/EXECUTOR.json`, one file per
/// executor, rewritten whole as it grows; the platform takes them (renamed to `.JOB.charged`)
/// and adds them to the job's meter when the job ends, and charges what later records add.
pub(super) const CLUSTER_USAGE: &str = "cluster-usage";

/// A running job's own budgets, written by the platform when it starts the job: an executor
/// gives the job's guests its fuel (what was left of the scenario's daily quota), its tasks
/// its engine memory, and stops it at its deadline.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(super) struct JobBudgets {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub wall_ms: u64,
    /// When the job started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

impl JobBudgets {
    pub(super) fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// These budgets, at most the platform's per-job limits and within the range of a
    /// scenario's memory quota, whatever the row says.
    fn within_the_platforms(self) -> JobBudgets {
        let mib = |m: u64| m << 20;
        JobBudgets {
            fuel: self.fuel.min(GuestLimits::default().fuel),
            memory_bytes: self.memory_bytes.clamp(
                mib(*tidegate_policy::JOB_MEMORY_MIB_RANGE.start()),
                mib(*tidegate_policy::JOB_MEMORY_MIB_RANGE.end()),
            ),
            wall_ms: self
                .wall_ms
                .min(job::EngineLimits::default().wall_time.as_millis() as u64),
            started_ms: self.started_ms,
        }
    }

    /// Until when (ms since the epoch) the executors' records of the job are charged to it:
    /// a quarter of an hour past its deadline.
    fn charged_until_ms(&self) -> u64 {
        self.started_ms
            .saturating_add(self.wall_ms)
            .saturating_add(KEEP_RECORDS.as_millis() as u64)
    }

    /// How long the job may still run: to its deadline, and never longer than any job may
    /// run from now (a clock set back does not lengthen it).
    fn remaining(&self) -> std::time::Duration {
        let end = self.started_ms.saturating_add(self.wall_ms);
        std::time::Duration::from_millis(end.saturating_sub(Self::now_ms()).min(self.wall_ms))
    }
}

/// The platform's jobs as an executor sees them: each running job's approved modules (loaded
/// in the executor's own sandbox), its runtime functions and its sealed tables.
pub struct ExecutorJobs {
    dir: PathBuf,
    master: MasterKey,
    db: Mutex<Connection>,
    sandbox: Arc<Sandbox>,
    /// This executor's name in the usage records (random).
    instance: String,
    /// What it last recorded per job: a record only grows (tasks finish in any order).
    recorded: Mutex<HashMap<String, UsageRecord>>,
}

impl std::fmt::Debug for ExecutorJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExecutorJobs({})", self.dir.display())
    }
}

impl ExecutorJobs {
    /// Opens the data directory `dir` for reading only (the platform's server keeps it, and
    /// writes; nothing here does), with the platform's master key.
    pub fn open(dir: &Path, master: MasterKey) -> Result<ExecutorJobs> {
        let path = dir.join(directory::DB_FILE);
        if !path.exists() {
            return Err(Error::BadInput(format!(
                "{} is not a Tidegate data directory",
                dir.display()
            )));
        }
        let db = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The server writes meanwhile: a read waits for its lock rather than failing.
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        let at: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if at != schema::SCHEMA_VERSION {
            return Err(Error::Refused(format!(
                "the data directory is at schema version {at}; this executor reads version {} (run the server's version)",
                schema::SCHEMA_VERSION
            )));
        }
        let expected: Option<String> = db
            .query_row(
                "SELECT value FROM settings WHERE key = 'master_key'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if expected.is_some_and(|e| e != master.fingerprint()) {
            return Err(Error::Refused(
                "this is not the data directory's master key".into(),
            ));
        }
        Ok(ExecutorJobs {
            dir: dir.to_path_buf(),
            master,
            db: Mutex::new(db),
            sandbox: Arc::new(Sandbox::new()?),
            instance: hex::encode(random_bytes::<8>()),
            recorded: Mutex::default(),
        })
    }

    fn state(&self, job: &str) -> Result<Option<String>> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(db
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![job], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

impl JobSource for ExecutorJobs {
    fn running(&self, job: &str) -> Result<bool> {
        Ok(self.state(job)?.as_deref() == Some(JobState::Running.as_str()))
    }

    fn resolve(&self, id: &str) -> Result<ResolvedJob> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let job = Platform::job_row(&db, id)?;
        if job.view.state != JobState::Running {
            return Err(Error::Refused(format!("job {id} is not running")));
        }
        let scenario = Platform::scenario_row(&db, &job.view.scenario)?;
        // A job of a scenario no longer active (suspended, revoked, past its term) does not
        // start here, whatever its coordinator does.
        if scenario.view.state != ScenarioState::Active {
            return Err(Error::Refused(format!("job {id}'s scenario is not active")));
        }
        // The job's own budgets, as the platform started it with them; a running job without
        // them does not run here.
        let budgets: JobBudgets = db
            .query_row("SELECT limits FROM jobs WHERE id = ?1", params![id], |r| {
                r.get::<_, Option<String>>(0)
            })?
            .and_then(|text| serde_json::from_str::<JobBudgets>(&text).ok())
            .ok_or_else(|| Error::Refused(format!("job {id} has no budgets to run with")))?
            .within_the_platforms();
        // Each executor gives the job's guests at most the job's fuel, less what its other
        // executors burnt as they record it (`JobSource::used_elsewhere`).
        let meter = Arc::new(JobMeter::new(GuestLimits {
            fuel: budgets.fuel,
            ..GuestLimits::default()
        }));
        let mut udfs = crate::sandbox::Functions::default();
        for hash in &job.view.modules {
            // Only a module approved for the job's scenario and not revoked, whose bytes are
            // the hash the job names.
            let wasm: Option<Vec<u8>> = db
                .query_row(
                    "SELECT wasm FROM modules WHERE hash = ?1 AND scenario_id = ?2
                     AND approved_by IS NOT NULL AND revoked_at IS NULL",
                    params![hash, scenario.id],
                    |r| r.get(0),
                )
                .optional()?;
            let wasm = wasm.filter(|w| sha256_hex(w) == *hash).ok_or_else(|| {
                Error::Refused(format!(
                    "module {hash} is not approved for the job's scenario"
                ))
            })?;
            let module = self.sandbox.load(&wasm)?;
            udfs.extend(self.sandbox.udfs(&module, &meter));
        }
        // What a guest computes for a row depends on its batch alone, whatever the job's
        // release (the executor does not know whether the gate measures it).
        meter.make_scalars_stateless();
        let root = Platform::stored_pseudonym_root(&db, &self.master)?
            .ok_or_else(|| Error::Integrity("a running job with no pseudonym key".into()))?;
        udfs.scalars.push(crate::masking::pseudonym_udf(
            root.pseudonym_key(&scenario.id),
        ));
        udfs.scalars.extend(crate::masking::desensitization_udfs());
        let functions = udfs
            .scalars
            .into_iter()
            .map(|u| (crate::sandbox::guest_scalar_module(&u), Arc::new(u)))
            .collect();
        // The job's tables, in its order, each the stored version it reads.
        let mut stores: Vec<Arc<dyn datafusion::object_store::ObjectStore>> = Vec::new();
        for input in &job.inputs {
            let version = Platform::dataset_version(&db, &input.dataset, input.version)?;
            if version.content_hash != input.content_hash {
                return Err(Error::Integrity(format!(
                    "dataset {} v{} is not the version the job read",
                    input.dataset, input.version
                )));
            }
            let context = Platform::stored_dataset_context(&db, &input.dataset, input.version)?;
            let object = format!("{}/v{}", input.dataset, input.version);
            let sealed = directory::open_sealed(
                &self.dir,
                &self.master,
                "datasets",
                &object,
                &context,
                &version.wrapped_key,
            )?;
            let mut store = SealedStore::default();
            store.insert(&format!("datasets/{object}.parquet"), sealed);
            stores.push(Arc::new(store));
        }
        Ok(ResolvedJob {
            functions,
            stores,
            meter,
            memory_bytes: usize::try_from(budgets.memory_bytes).unwrap_or(usize::MAX),
            deadline: std::time::Instant::now() + budgets.remaining(),
        })
    }

    fn used_elsewhere(&self, job: &str) -> Result<ResourceUse> {
        if !plain_id(job) {
            return Err(Error::BadInput("a malformed job id".into()));
        }
        let dir = self.dir.join(CLUSTER_USAGE).join(job);
        let own = format!("{}.json", self.instance);
        let mut total = ResourceUse::default();
        for (name, record) in read_records(&dir) {
            if name != own {
                total.add_executors(&record.used);
            }
        }
        Ok(total)
    }

    fn record(&self, job: &str, used: &ResourceUse, limit: Option<String>) -> Result<()> {
        // A job id names a directory: the platform's ids only (`job_` and hex).
        if !plain_id(job) {
            return Err(Error::BadInput("a malformed job id".into()));
        }
        // Only the cluster's user lists what jobs ran and what they used.
        let dir = self.dir.join(CLUSTER_USAGE).join(job);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)?;
        let mut recorded = self
            .recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = recorded.entry(job.to_string()).or_default();
        record.used.raise_to(used);
        if record.limit.is_none() {
            record.limit = limit;
        }
        write_atomic(
            &dir.join(format!("{}.json", self.instance)),
            to_json(record).as_bytes(),
        )
    }

    fn forget(&self, job: &str) {
        self.recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(job);
    }
}

/// Whether `id` is a plain id of the platform's: letters, digits and `_`, not too long.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An executor's record of what a job used there.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct UsageRecord {
    #[serde(flatten)]
    used: ResourceUse,
    /// The first limit the job's guests met there (the platform's words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
}

/// The largest usage record read (a record is a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 4096;

/// The usage records in `dir` by file name (`EXECUTOR.json`): regular files only, opened
/// without following links, at most [`MAX_RECORD_BYTES`] each; temporary files (a write under
/// way), anything else and records that do not parse are skipped.
fn read_records(dir: &Path) -> Vec<(String, UsageRecord)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(entry.path())
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let mut text = String::new();
        if file
            .take(MAX_RECORD_BYTES + 1)
            .read_to_string(&mut text)
            .is_err()
            || text.len() as u64 > MAX_RECORD_BYTES
        {
            continue;
        }
        if let Ok(record) = serde_json::from_str::<UsageRecord>(&text) {
            records.push((name, record));
        }
    }
    records
}

/// The records of job `id` the platform charged when the job ended (`.ID.charged`), kept to
/// charge only what later records add.
fn charged_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!(".{id}.charged"))
}

/// How long after a job's deadline its records are still charged, and its charged records
/// kept: longer than an executor keeps a job it no longer sees running.
const KEEP_RECORDS: std::time::Duration = std::time::Duration::from_secs(900);

impl Platform {
    /// What job `id` used on the cluster's executors (their records added up; the most memory
    /// any guest held), and the first limit its guests met there. The records are taken
    /// whole (renamed to the job's charged records): a record written after is charged later,
    /// for what it adds ([`Platform::collect_late_cluster_usage`]).
    pub(super) fn cluster_usage(&self, id: &str) -> (ResourceUse, Option<String>) {
        let mut total = ResourceUse::default();
        let mut limit = None;
        if !plain_id(id) {
            return (total, limit);
        }
        let root = self.dir.join(CLUSTER_USAGE);
        let charged = charged_dir(&root, id);
        if fs::rename(root.join(id), &charged).is_err() {
            return (total, limit);
        }
        for (_, record) in read_records(&charged) {
            total.add_executors(&record.used);
            limit = limit.or(record.limit);
        }
        (total, limit)
    }

    /// Charges each ended job for what the cluster's executors recorded after the platform
    /// took its records (a task that ran when the job failed or was stopped records when it
    /// stops): once no record of it has changed for [`LATE_RECORDS_AFTER`], what each
    /// executor's record adds to what was charged of it, in the units its scientist sees, at
    /// most the job's fuel more, with an entry in the audit log. The records are taken by a
    /// rename first (one taker), and merged into the charged ones before the job's row is
    /// updated (a crash between the two loses the charge, never charges it twice). Records of
    /// jobs that do not exist, never ran with budgets or ended long ago are removed uncharged.
    /// Returns how many jobs were charged more.
    pub fn collect_late_cluster_usage(&self) -> Result<usize> {
        let root = self.dir.join(CLUSTER_USAGE);
        let Ok(entries) = fs::read_dir(&root) else {
            return Ok(0);
        };
        let mut charged = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(id) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".charged"))
            {
                // A job's charged records are kept while later ones of it may be charged
                // (they are charged for what they add to these).
                let keep = plain_id(id)
                    && self.late_cutoff_ms(id)?.is_some_and(|cutoff| {
                        JobBudgets::now_ms() <= cutoff.saturating_add(60_000)
                    });
                if !keep {
                    let _ = fs::remove_dir_all(entry.path());
                }
                continue;
            }
            if name.starts_with('.') {
                // What a crash left while it took records.
                if age(&entry.path()).is_some_and(|a| a > KEEP_RECORDS) {
                    let _ = fs::remove_dir_all(entry.path());
                }
                continue;
            }
            if !plain_id(&name) || !settled(&entry.path()) {
                continue;
            }
            match self.charge_late(&root, &name) {
                Ok(true) => charged += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job = %name, error = %e, "late cluster usage not charged")
                }
            }
        }
        Ok(charged)
    }

    /// Until when (ms since the epoch) records of job `id` are charged: a quarter of an hour
    /// past its deadline; none for a job that does not exist or never ran with budgets.
    fn late_cutoff_ms(&self, id: &str) -> Result<Option<u64>> {
        let limits: Option<Option<String>> = self
            .lock_db()
            .query_row("SELECT limits FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(limits
            .flatten()
            .and_then(|l| serde_json::from_str::<JobBudgets>(&l).ok())
            .map(|b| b.charged_until_ms()))
    }

    /// [`Platform::collect_late_cluster_usage`] for job `id`'s records: whether it was charged.
    fn charge_late(&self, root: &Path, id: &str) -> Result<bool> {
        let row: Option<(String, Option<String>, Option<String>)> = self
            .lock_db()
            .query_row(
                "SELECT state, level, limits FROM jobs WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let stale = || {
            let _ = fs::remove_dir_all(root.join(id));
            Ok(false)
        };
        let Some((state, level, limits)) = row else {
            return stale();
        };
        if state
            .parse::<JobState>()
            .map_or(true, |s| matches!(s, JobState::Queued | JobState::Running))
        {
            return Ok(false);
        }
        let Some(budgets) = limits.and_then(|l| serde_json::from_str::<JobBudgets>(&l).ok()) else {
            return stale();
        };
        if JobBudgets::now_ms() > budgets.charged_until_ms() {
            return stale();
        }
        // One taker: whoever renames the directory charges it.
        let taking = root.join(format!(".{id}.taking-{}", hex::encode(random_bytes::<8>())));
        if fs::rename(root.join(id), &taking).is_err() {
            return Ok(false);
        }
        let charged_dir = charged_dir(root, id);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&charged_dir)?;
        let before: HashMap<String, UsageRecord> = read_records(&charged_dir).into_iter().collect();
        let mut late = ResourceUse::default();
        for (name, now) in read_records(&taking) {
            let mut merged = before.get(&name).cloned().unwrap_or_default();
            late.add_executors(&now.used.beyond(&merged.used));
            merged.used.raise_to(&now.used);
            merged.limit = merged.limit.or(now.limit);
            write_atomic(&charged_dir.join(&name), to_json(&merged).as_bytes())?;
        }
        let _ = fs::remove_dir_all(&taking);
        // A forged record cannot charge a job more than its fuel again.
        late.fuel = late.fuel.min(budgets.fuel);
        if late.fuel == 0
            && late.cpu_ms == 0
            && late.guest_calls == 0
            && late.guest_output_bytes == 0
        {
            return Ok(false);
        }
        let db = self.lock_db();
        let resources: Option<String> = db.query_row(
            "SELECT resources FROM jobs WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        let mut used: ResourceUse = resources
            .map(|r| from_json(&r))
            .transpose()?
            .unwrap_or_default();
        used.add_executors(&late);
        // In the units its scientist sees (over L2 or L3 data rounded up once more); a level
        // that does not read is taken as the highest.
        let level = level
            .and_then(|l| l.parse::<Level>().ok())
            .unwrap_or(Level::L4);
        used = used.shown_at(level);
        db.execute(
            "UPDATE jobs SET resources = ?2 WHERE id = ?1",
            params![id, to_json(&used)],
        )?;
        self.audit.append(
            SWEEP_ACTOR,
            crate::audit::Action::JobUsage,
            id,
            crate::audited::JobUsage {
                late,
                resources: used,
            }
            .to_value(),
        )?;
        Ok(true)
    }
}

/// How long ago the newest of `dir` and its entries changed (none when it cannot be read).
fn age(dir: &Path) -> Option<std::time::Duration> {
    let mut newest = fs::symlink_metadata(dir).and_then(|m| m.modified()).ok()?;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(modified);
            }
        }
    }
    // A time in the future (a clock set back) is as old as can be.
    Some(newest.elapsed().unwrap_or(std::time::Duration::MAX))
}

/// How long an ended job's records must stay unchanged before the platform charges them:
/// longer than an executor takes to see that a job ended and stop its tasks.
const LATE_RECORDS_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether no record in `dir` changed for [`LATE_RECORDS_AFTER`].
fn settled(dir: &Path) -> bool {
    age(dir).is_some_and(|a| a >= LATE_RECORDS_AFTER)
}
