//! The data directory: creating and opening it (its lock, its metadata and migrations, its
//! signing and pseudonym keys), rotating its master key, and the sealed objects every workflow
//! stores and loads through it, uploads staged on their way to an import among them.

use super::*;

pub(super) const DB_FILE: &str = "meta.sqlite";
const SIGNING_KEY_FILE: &str = "signing.key";
/// The re-wrapped signing key while a master key rotation is in flight.
const SIGNING_KEY_NEXT: &str = "signing.key.next";

const LOCK_FILE: &str = "lock";

/// The context the pseudonym root key is wrapped under.
const PSEUDONYM_ROOT: &str = "pseudonym-root";

/// What a stored dataset version is bound to, in every chunk's additional data and in its
/// wrapped key: its org, the dataset and the version. A file moved to another dataset, version
/// or org does not open.
pub(super) fn dataset_context(org: &str, dataset: &str, version: i64) -> String {
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

/// The context a staged upload is sealed under.
const UPLOAD_CONTEXT: &str = "upload";

/// An upload on its way to an import: sealed as it arrives, chunk by chunk, under a key that
/// lives only in this process, in a temporary file of the data directory. The file goes when
/// the upload is dropped, and after a crash (when no key can read it any more) the next open
/// removes it.
pub struct StagedUpload {
    path: PathBuf,
    key: DataKey,
    writer: Option<crate::crypto::SealingWriter>,
}

impl std::fmt::Debug for StagedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagedUpload({})", self.path.display())
    }
}

impl StagedUpload {
    /// Appends the next bytes of the file; refused past the largest import.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::Internal("the upload is already finished".into()))?;
        if writer.len() + bytes.len() as u64 > MAX_IMPORT_BYTES {
            return Err(Error::Limit(format!(
                "an import is at most {MAX_IMPORT_BYTES} bytes"
            )));
        }
        writer.write(bytes)
    }

    /// The file, sealed, for reading range by range. Its name goes when the upload is
    /// dropped; the reader keeps the open file until it is dropped too.
    pub(super) fn finish(mut self) -> Result<crate::crypto::SealedReader> {
        if let Some(writer) = self.writer.take() {
            writer.finish()?;
        }
        self.key.reader(UPLOAD_CONTEXT, fs::File::open(&self.path)?)
    }
}

impl Drop for StagedUpload {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
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
            let mut db = platform
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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
                "INSERT INTO principals (id, name, org_id, roles, trained_at, training, token_hash, created_at)
                 VALUES (?1, ?2, ?3, 'admin', ?4, 'bootstrap', ?5, ?4)",
                params![admin, admin_name, org, now, hash_token(&token)],
            )?;
            platform.audit.append(
                &admin,
                crate::audit::Action::PlatformInit,
                &org,
                crate::audited::PlatformInit {
                    admin: admin.clone(),
                    public_key: platform.signer.public_key_hex(),
                }
                .to_value(),
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
        let platform = Platform::assemble(dir, master, signer, lock)?;
        // What jobs killed with the process left of their spill: sealed under keys that died
        // with them, removed.
        crate::spill::sweep(&platform.spill_dir());
        platform.resume_jobs()?;
        Ok(platform)
    }

    /// Where jobs write the gate's sealed spill files (one directory per job).
    pub(crate) fn spill_dir(&self) -> PathBuf {
        self.dir.join("spill")
    }

    /// After a stop: a job that was running when the process died cannot go on (its engine
    /// state died with it) and ends `failed`, interrupted; queued jobs wait for the workers
    /// again, in the order they were accepted.
    fn resume_jobs(&self) -> Result<()> {
        let (running, queued) = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ids = |state: &str| -> Result<Vec<(String, String)>> {
                let mut stmt = db.prepare(
                    "SELECT j.id, s.org_id FROM jobs j JOIN scenarios s ON s.id = j.scenario_id
                     WHERE j.state = ?1 ORDER BY j.created_at, j.rowid",
                )?;
                let rows = stmt.query_map(params![state], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            };
            (ids("running")?, ids("queued")?)
        };
        for (job, _) in running {
            self.fail_unrun_job(
                &job,
                "running",
                "platform",
                "interrupted: the server stopped while the job ran; submit it again",
            )?;
        }
        for (job, org) in queued {
            self.queue.push(&org, &job);
        }
        Ok(())
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
        q(
            "SELECT id, 'subjects/' || id, subjects_key FROM jobs WHERE subjects_key IS NOT NULL",
            "subjects",
        )?;
        q(
            "SELECT id, 'audit/' || id, audit_key FROM exports WHERE audit_key IS NOT NULL",
            "audit",
        )?;
        Ok(out)
    }

    /// The platform's pseudonym root key, made (and stored wrapped by the master key) the first
    /// time a scenario needs one. Each scenario's key is derived from it and the scenario's id.
    pub(super) fn pseudonym_root(&self, db: &Connection) -> Result<DataKey> {
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
    pub(super) fn stored_pseudonym_root(
        db: &Connection,
        master: &MasterKey,
    ) -> Result<Option<DataKey>> {
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
    pub(super) fn stored_dataset_context(
        db: &Connection,
        id: &str,
        version: i64,
    ) -> Result<String> {
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
        let mut db = platform
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
                "subjects" => {
                    tx.execute(
                        "UPDATE jobs SET subjects_key = ?2 WHERE id = ?1",
                        params![name, rewrapped],
                    )?;
                }
                "audit" => {
                    tx.execute(
                        "UPDATE exports SET audit_key = ?2 WHERE id = ?1",
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
            crate::audit::Action::KeysRotate,
            "master_key",
            crate::audited::KeysRotate {
                rewrapped: keys.len(),
                from: platform.master.fingerprint(),
                to: new.fingerprint(),
            }
            .to_value(),
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
        let keys = Self::wrapped_keys(
            &self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )?;
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
            reads_logged: Mutex::new(HashMap::new()),
            addresses_seen: Mutex::new(HashSet::new()),
            public_record: Mutex::new(None),
            audit_check: Mutex::new(()),
            refused_sign_ins: Mutex::new(HashMap::new()),
            importing: Mutex::new(HashSet::new()),
            mocking: std::sync::atomic::AtomicUsize::new(0),
            queue: Arc::new(queue::JobQueue::default()),
            cancels: Mutex::new(HashSet::new()),
            reading: Mutex::new(HashMap::new()),
            ledgers: Mutex::new(HashMap::new()),
            gate: Mutex::new(()),
            cluster: Mutex::new(None),
            master,
            signer,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts an upload for an import by `actor`, after the checks that need no file: who may
    /// import at this level. The file then streams into [`StagedUpload::write`].
    pub fn stage_upload(&self, actor: &Principal, level: Level) -> Result<StagedUpload> {
        if actor.has_role(Role::Provider) {
            tidegate_policy::can_import(actor, level)?;
        } else {
            tidegate_policy::can_import_social(actor, level)?;
        }
        let dir = self.dir.join("objects");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!(".upload.tmp-{}", hex::encode(random_bytes::<8>())));
        let key = DataKey::generate();
        let writer = crate::crypto::SealingWriter::create(&path, &key, UPLOAD_CONTEXT)?;
        Ok(StagedUpload {
            path,
            key,
            writer: Some(writer),
        })
    }

    pub fn public_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }

    pub(super) fn object_path(&self, kind: &str, name: &str) -> PathBuf {
        object_file(&self.dir, kind, name)
    }

    /// Encrypts `plaintext` under a fresh data key and writes it atomically; returns the
    /// wrapped key to store beside the metadata. The object's name (`kind/name`) is bound to
    /// every chunk and to the wrapped key.
    pub(super) fn store_object(&self, kind: &str, name: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.store_object_as(kind, name, &format!("{kind}/{name}"), plaintext)
    }

    /// [`Platform::store_object`] for an object `write` produces piece by piece (giving each
    /// to the sink it is handed): each piece is sealed and written on a thread of its own
    /// while the next is made, so neither the whole plaintext nor the whole ciphertext is
    /// ever held, and making and writing share the machine's cores. The object appears under
    /// its name only once complete and synced; on any error (of `write`, of the disk) the
    /// partial file goes.
    pub(super) fn store_object_streamed(
        &self,
        kind: &str,
        name: &str,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
    ) -> Result<Vec<u8>> {
        let context = format!("{kind}/{name}");
        let dek = DataKey::generate();
        let mut object =
            super::reading::ObjectSink::create(&self.object_path(kind, name), &dek, &context)?
                .unhashed()
                .behind();
        // Pieces in flight, and their buffers given back to be filled again.
        let (send, pieces) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (give_back, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::scope(|s| {
            let sealing = s.spawn(move || -> Result<super::reading::ObjectSink> {
                for piece in pieces {
                    std::io::Write::write_all(&mut object, &piece)?;
                    let _ = give_back.send(piece);
                }
                Ok(object)
            });
            let mut sink = |piece: &[u8]| -> Result<()> {
                let mut buf = empty.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(piece);
                // Refused only when the sealing thread stopped: its error is the cause.
                send.send(buf)
                    .map_err(|_| Error::Internal("the object's writer stopped".into()))
            };
            let made = write(&mut sink);
            drop(send);
            let sealed = sealing
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the object's writer panicked".into())));
            // A sink dropped unplaced (any error) takes its temporary file with it.
            match (made, sealed) {
                (Ok(()), Ok(object)) => object.place(),
                (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
            }
        })?;
        Ok(self.master.wrap(&dek, &context))
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
    pub(super) fn sealed_source(
        &self,
        kind: &str,
        name: &str,
        context: &str,
        wrapped: &[u8],
    ) -> Result<SealedSource> {
        open_sealed(&self.dir, &self.master, kind, name, context, wrapped)
    }

    pub(super) fn load_object(&self, kind: &str, name: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
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
}

/// Where the data directory `dir` keeps the stored object `kind/name`.
fn object_file(dir: &Path, kind: &str, name: &str) -> PathBuf {
    dir.join("objects").join(kind).join(format!("{name}.tge"))
}

/// The stored object `kind/name` of the data directory `dir`, opened for reading by range
/// under its data key (`wrapped` under `master`, bound to `context`).
pub(super) fn open_sealed(
    dir: &Path,
    master: &MasterKey,
    kind: &str,
    name: &str,
    context: &str,
    wrapped: &[u8],
) -> Result<SealedSource> {
    let dek = master.unwrap(wrapped, context)?;
    let file = fs::File::open(object_file(dir, kind, name))?;
    Ok(SealedSource::new(dek.reader(context, file)?))
}

#[cfg(test)]
mod tests {
    use super::schema::{SCHEMA, SCHEMA_VERSION};
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
    fn an_object_written_in_pieces_reads_back_whole_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (platform, _) = Platform::init(&data, &dir.path().join("master.key"), "admin").unwrap();
        let chunk = 1 << 20;
        let path = |job| platform.object_path("subjects", job);
        // Empty, exactly one sealed chunk, two chunks and a bit, and more than the writer
        // keeps in the page cache (written out and dropped behind it), in pieces of odd sizes.
        let mut keys = Vec::new();
        for (job, len) in [
            ("job0", 0),
            ("job1", chunk),
            ("job2", 2 * chunk + 7),
            ("job5", 19 * chunk + 3),
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wrapped = platform
                .store_object_streamed("subjects", job, |w| plain.chunks(77_777).try_for_each(w))
                .unwrap();
            assert_eq!(
                platform.load_object("subjects", job, &wrapped).unwrap(),
                plain,
                "{job}"
            );
            keys.push(wrapped);
        }
        let sealed = fs::read(path("job2")).unwrap();
        // Opened under its own name only: the same bytes and key under another name fail.
        fs::write(path("job3"), &sealed).unwrap();
        assert!(platform.load_object("subjects", "job3", &keys[2]).is_err());
        // Its final chunk dropped, the well-formed rest is refused (not marked final).
        let first_two = 4 + 2 * (4 + 12 + chunk + 16);
        fs::write(path("job2"), &sealed[..first_two]).unwrap();
        assert!(platform.load_object("subjects", "job2", &keys[2]).is_err());
        fs::write(path("job2"), &sealed).unwrap();
        assert!(platform.load_object("subjects", "job2", &keys[2]).is_ok());
        // A write that fails halfway leaves no object and no temporary file.
        let failed = platform.store_object_streamed("subjects", "job6", |w| {
            w(&sealed[..2_000_000])?;
            Err(Error::Internal("the disk is full".into()))
        });
        assert!(failed.is_err());
        let left: Vec<_> = fs::read_dir(path("job6").parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 5, "job0 to job3 and job5 only: {left:?}");
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
                    quality_rules: None,
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
