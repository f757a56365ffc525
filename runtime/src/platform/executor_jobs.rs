//! What an executor of another process than the platform's learns of a job: the platform's
//! metadata, read-only, and its stored objects, opened with the master key the executor was
//! given the way the server is. Nothing of a job travels in its plan but the job's id.

use rusqlite::OpenFlags;
use tidegate_policy::JobState;

use super::*;
use crate::cluster::{JobSource, ResolvedJob};

/// Where executors record what each job used on them: `DIR/JOB/EXECUTOR.json`, one file per
/// executor, rewritten whole after each task; the platform adds them to the job's meter when
/// the job ends, and removes them.
pub(super) const CLUSTER_USAGE: &str = "cluster-usage";

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
    recorded: Mutex<HashMap<String, ResourceUse>>,
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
        // Each executor gives a job's guests at most the platform's per-job limits.
        let meter = Arc::new(JobMeter::new(GuestLimits::default()));
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
        })
    }

    fn record(&self, job: &str, used: &ResourceUse) -> Result<()> {
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
        record.raise_to(used);
        write_atomic(
            &dir.join(format!("{}.json", self.instance)),
            to_json(record).as_bytes(),
        )
    }
}

/// Whether `id` is a plain id of the platform's: letters, digits and `_`, not too long.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Platform {
    /// What job `id` used on the cluster's executors (their records added up; the most memory
    /// any guest held), and the records removed.
    pub(super) fn cluster_usage(&self, id: &str) -> ResourceUse {
        let mut total = ResourceUse::default();
        if !plain_id(id) {
            return total;
        }
        let dir = self.dir.join(CLUSTER_USAGE).join(id);
        let Ok(entries) = fs::read_dir(&dir) else {
            return total;
        };
        for entry in entries.flatten() {
            // Records only (`EXECUTOR.json`), never a write under way.
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Some(used) = fs::read_to_string(entry.path())
                .ok()
                .and_then(|text| serde_json::from_str::<ResourceUse>(&text).ok())
            else {
                continue;
            };
            total.add_executors(&used);
        }
        let _ = fs::remove_dir_all(&dir);
        total
    }
}
