//! The tamper-evident audit log: an append-only file of JSON lines, each carrying the hash of
//! the one before. An entry is fsynced before the action it records is acknowledged.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::sha256_hex;
use crate::error::{Error, Result};

/// A signed checkpoint is written after every this many entries, and on demand (shutdown).
pub const CHECKPOINT_EVERY: u64 = 100;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry. `detail` holds identifiers, counts and decisions, never data values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: Value,
    pub prev: String,
    pub hash: String,
}

/// The fields an entry's hash covers, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    object: &'a str,
    detail: &'a Value,
    prev: &'a str,
}

fn entry_hash(e: &AuditEntry) -> String {
    let body = serde_json::to_vec(&Hashed {
        seq: e.seq,
        at: &e.at,
        actor: &e.actor,
        action: &e.action,
        object: &e.object,
        detail: &e.detail,
        prev: &e.prev,
    })
    .expect("an audit entry serializes");
    sha256_hex(&body)
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerdict {
    pub entries: u64,
    /// Signed checkpoints found (and checked against the public key, when one was given).
    pub checkpoints: u64,
    /// The first bad entry (1-based line number) and what is wrong with it.
    pub first_bad: Option<(u64, String)>,
    pub head: String,
}

struct Tail {
    file: fs::File,
    seq: u64,
    head: String,
    /// The sequence number of the last signed checkpoint.
    checkpointed: u64,
    /// Set after a failed write: the log accepts nothing more until restarted.
    broken: bool,
}

/// Signs a checkpoint message with the platform key.
pub type CheckpointSigner = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A signed statement that the log held `seq` entries ending in `head`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: String,
    pub at: String,
    pub signature: String,
}

fn checkpoint_message(seq: u64, head: &str) -> Vec<u8> {
    format!("tidegate-audit-checkpoint-v1|{seq}|{head}").into_bytes()
}

fn checkpoint_signed(cp: &Checkpoint, public_key: &[u8]) -> bool {
    let signature = hex::decode(&cp.signature).unwrap_or_default();
    crate::crypto::ed25519_verifies(
        public_key,
        &checkpoint_message(cp.seq, &cp.head),
        &signature,
    )
}

/// The checkpoints file beside a log.
pub fn checkpoints_path(log: &Path) -> PathBuf {
    log.with_extension("checkpoints")
}

pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    signer: Option<CheckpointSigner>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. A torn final line, left by a crash before its
    /// fsync returned, was never acknowledged and is cut off; any other damage is refused.
    pub fn open(path: &Path) -> Result<AuditLog> {
        let verdict = verify_file(path, None)?;
        if let Some((line, why)) = &verdict.first_bad {
            let torn = *line == verdict.entries + 1 && !ends_with_newline(path)?;
            if !torn {
                return Err(Error::Integrity(format!(
                    "the audit log fails verification at entry {line}: {why}"
                )));
            }
            truncate_after_last_newline(path)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                seq: verdict.entries,
                head: verdict.head,
                broken: false,
                checkpointed: verdict.entries.min(last_checkpoint_seq(path)),
            }),
            signer: None,
        })
    }

    /// Makes every later write fail as a full or failing disk would, by swapping the file for a
    /// read-only handle.
    #[cfg(test)]
    pub(crate) fn fail_writes_for_test(&self) {
        let mut tail = self.tail.lock().expect("audit lock");
        tail.file = fs::File::open(&self.path).expect("the log exists");
    }

    /// Signs checkpoints with `signer` from now on.
    pub fn with_signer(mut self, signer: CheckpointSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Writes a signed checkpoint of the current head, if anything was appended since the last.
    pub fn checkpoint(&self) -> Result<()> {
        let mut tail = self.tail.lock().expect("audit lock");
        self.write_checkpoint(&mut tail)
    }

    fn write_checkpoint(&self, tail: &mut Tail) -> Result<()> {
        let Some(sign) = &self.signer else {
            return Ok(());
        };
        if tail.checkpointed == tail.seq {
            return Ok(());
        }
        let cp = Checkpoint {
            seq: tail.seq,
            head: tail.head.clone(),
            at: crate::now_rfc3339(),
            signature: hex::encode(sign(&checkpoint_message(tail.seq, &tail.head))),
        };
        let mut line = serde_json::to_vec(&cp)?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(checkpoints_path(&self.path))?;
        f.write_all(&line)?;
        f.sync_data()?;
        tail.checkpointed = tail.seq;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry and makes it durable; an error means the action must not happen.
    pub fn append(&self, actor: &str, action: &str, object: &str, detail: Value) -> Result<u64> {
        self.append_at(crate::now_rfc3339(), actor, action, object, detail)
    }

    /// [`AuditLog::append`] with the time the caller also records in the metadata, so that the
    /// metadata and the log agree to the instant (metering is reproduced from the log).
    pub fn append_at(
        &self,
        at: String,
        actor: &str,
        action: &str,
        object: &str,
        detail: Value,
    ) -> Result<u64> {
        let mut tail = self.tail.lock().expect("audit lock");
        if tail.broken {
            return Err(Error::Internal(
                "the audit log could not be written earlier; actions are refused until restart"
                    .into(),
            ));
        }
        let mut entry = AuditEntry {
            seq: tail.seq + 1,
            at,
            actor: actor.to_string(),
            action: action.to_string(),
            object: object.to_string(),
            detail,
            prev: tail.head.clone(),
            hash: String::new(),
        };
        entry.hash = entry_hash(&entry);
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        let written = tail
            .file
            .write_all(&line)
            .and_then(|()| tail.file.sync_data());
        if let Err(e) = written {
            // After a failed write or fsync the file's state is unknown (fsyncgate): stop.
            tail.broken = true;
            return Err(Error::Internal(format!(
                "the audit entry could not be made durable ({e}); the action was not performed"
            )));
        }
        tail.seq = entry.seq;
        tail.head = entry.hash;
        if tail.seq.is_multiple_of(CHECKPOINT_EVERY)
            && let Err(e) = self.write_checkpoint(&mut tail)
        {
            // The entry itself is durable; without checkpoints the log stops taking actions.
            tracing::error!(error = %e, "audit checkpoint failed");
            tail.broken = true;
        }
        Ok(tail.seq)
    }
}

fn ends_with_newline(path: &Path) -> Result<bool> {
    let bytes = fs::read(path)?;
    Ok(bytes.last().is_none_or(|b| *b == b'\n'))
}

fn truncate_after_last_newline(path: &Path) -> Result<()> {
    let bytes = fs::read(path)?;
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(keep as u64)?;
    f.sync_all()?;
    Ok(())
}

fn read_checkpoints(log: &Path) -> Result<Vec<Checkpoint>> {
    let bytes = match fs::read(checkpoints_path(log)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice(line) {
            Ok(cp) => out.push(cp),
            // A torn last line was never acknowledged.
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(_) => {
                return Err(Error::Integrity(format!(
                    "audit checkpoint {} is not well formed",
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

fn last_checkpoint_seq(log: &Path) -> u64 {
    read_checkpoints(log)
        .ok()
        .and_then(|c| c.last().map(|c| c.seq))
        .unwrap_or(0)
}

/// Checks the whole chain in the file at `path`, and the signed checkpoints beside it (their
/// signatures too when `public_key` is given), and names the first bad entry. Truncation is
/// detected back to the last checkpoint.
pub fn verify_file(path: &Path, public_key: Option<&[u8]>) -> Result<AuditVerdict> {
    let mut verdict = verify_chain(path)?;
    let checkpoints = read_checkpoints(path)?;
    verdict.checkpoints = checkpoints.len() as u64;
    let hashes = chain_hashes(path, verdict.entries)?;
    for (i, cp) in checkpoints.iter().enumerate() {
        if let Some(key) = public_key
            && !checkpoint_signed(cp, key)
        {
            return Err(Error::Integrity(format!(
                "audit checkpoint {} (entry {}) has no valid signature of this platform",
                i + 1,
                cp.seq
            )));
        }
        let problem = if cp.seq > verdict.entries {
            Some((
                verdict.entries + 1,
                format!(
                    "missing: a signed checkpoint covers {} entries (truncated or deleted)",
                    cp.seq
                ),
            ))
        } else if cp.seq > 0 && hashes[cp.seq as usize - 1] != cp.head {
            Some((
                cp.seq,
                "does not match the signed checkpoint (changed)".to_string(),
            ))
        } else {
            None
        };
        if let Some((n, why)) = problem
            && verdict.first_bad.as_ref().is_none_or(|(m, _)| n < *m)
        {
            verdict.first_bad = Some((n, why));
        }
    }
    Ok(verdict)
}

/// The hashes of the first `n` entries as stored.
fn chain_hashes(path: &Path, n: u64) -> Result<Vec<String>> {
    let Ok(file) = fs::File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(n as usize);
    for line in BufReader::new(file).split(b'\n').take(n as usize) {
        let entry: AuditEntry = serde_json::from_slice(&line?)?;
        out.push(entry.hash);
    }
    Ok(out)
}

fn verify_chain(path: &Path) -> Result<AuditVerdict> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AuditVerdict {
                entries: 0,
                checkpoints: 0,
                first_bad: None,
                head: GENESIS.into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut head = GENESIS.to_string();
    let mut entries = 0u64;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let n = i as u64 + 1;
        let bad = |why: &str| {
            Ok(AuditVerdict {
                entries,
                checkpoints: 0,
                first_bad: Some((n, why.to_string())),
                head: head.clone(),
            })
        };
        let line = line?;
        let entry: AuditEntry = match serde_json::from_slice(&line) {
            Ok(e) => e,
            Err(_) => return bad("not a well-formed entry"),
        };
        if entry.seq != n {
            return bad(&format!(
                "sequence number {} where {n} was expected (deleted or reordered)",
                entry.seq
            ));
        }
        if entry.prev != head {
            return bad("does not link to the entry before it (deleted or reordered)");
        }
        if entry_hash(&entry) != entry.hash {
            return bad("its hash does not match its content (changed)");
        }
        head = entry.hash;
        entries = n;
    }
    Ok(AuditVerdict {
        entries,
        checkpoints: 0,
        first_bad: None,
        head,
    })
}

/// Every entry of the log, after the whole log (and with `public_key`, its checkpoints'
/// signatures) verified: what an auditor recomputes statements from.
pub fn read_verified(log: &Path, public_key: Option<&[u8]>) -> Result<Vec<AuditEntry>> {
    let verdict = verify_file(log, public_key)?;
    if let Some((n, why)) = verdict.first_bad {
        return Err(Error::Integrity(format!(
            "the audit log fails verification at entry {n}: {why}"
        )));
    }
    let file = fs::File::open(log)?;
    let mut entries = Vec::with_capacity(verdict.entries as usize);
    for line in BufReader::new(file)
        .split(b'\n')
        .take(verdict.entries as usize)
    {
        entries.push(serde_json::from_slice(&line?)?);
    }
    Ok(entries)
}

/// A slice of the log for an auditor: the entries in a range, and the signed checkpoints that
/// fall inside it. It verifies on its own: each entry links to the one before, the first to
/// the hash it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSlice {
    pub entries: Vec<AuditEntry>,
    pub checkpoints: Vec<Checkpoint>,
}

/// The entries whose sequence number, or whose date (`YYYY-MM-DD`), lies in `from..=to`.
pub fn export_slice(log: &Path, from: &str, to: &str) -> Result<AuditSlice> {
    let verdict = verify_file(log, None)?;
    if let Some((n, why)) = verdict.first_bad {
        return Err(Error::Integrity(format!(
            "the audit log fails verification at entry {n}: {why}"
        )));
    }
    let by_seq = (from.parse::<u64>(), to.parse::<u64>());
    let inside = |e: &AuditEntry| match by_seq {
        (Ok(a), Ok(b)) => (a..=b).contains(&e.seq),
        _ => {
            let day = e.at.get(..10).unwrap_or("");
            from <= day && day <= to
        }
    };
    let file = fs::File::open(log)?;
    let mut entries = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let e: AuditEntry = serde_json::from_slice(&line?)?;
        if inside(&e) {
            entries.push(e);
        }
    }
    let (first, last) = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => (f.seq, l.seq),
        _ => return Err(Error::BadInput("no audit entries in that range".into())),
    };
    let checkpoints = read_checkpoints(log)?
        .into_iter()
        .filter(|c| (first..=last).contains(&c.seq))
        .collect();
    Ok(AuditSlice {
        entries,
        checkpoints,
    })
}

/// Verifies a slice offline; with `public_key`, its checkpoints' signatures too. Returns the
/// number of entries and checkpoints verified.
pub fn verify_slice(slice: &AuditSlice, public_key: Option<&[u8]>) -> Result<(u64, u64)> {
    let mut previous: Option<&AuditEntry> = None;
    for e in &slice.entries {
        if let Some(p) = previous
            && (e.seq != p.seq + 1 || e.prev != p.hash)
        {
            return Err(Error::Integrity(format!(
                "entry {} does not follow entry {} (deleted or reordered)",
                e.seq, p.seq
            )));
        }
        if entry_hash(e) != e.hash {
            return Err(Error::Integrity(format!(
                "entry {}: its hash does not match its content (changed)",
                e.seq
            )));
        }
        previous = Some(e);
    }
    for cp in &slice.checkpoints {
        let entry = slice
            .entries
            .iter()
            .find(|e| e.seq == cp.seq)
            .ok_or_else(|| {
                Error::Integrity(format!("checkpoint {} lies outside the slice", cp.seq))
            })?;
        if entry.hash != cp.head {
            return Err(Error::Integrity(format!(
                "entry {} does not match its signed checkpoint (changed)",
                cp.seq
            )));
        }
        if let Some(key) = public_key
            && !checkpoint_signed(cp, key)
        {
            return Err(Error::Integrity(format!(
                "checkpoint {} has no valid signature of this platform",
                cp.seq
            )));
        }
    }
    Ok((slice.entries.len() as u64, slice.checkpoints.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append("p_1", "test.step", &format!("o_{i}"), json!({ "i": i }))
                .unwrap();
        }
        (dir, path)
    }

    fn rewrite_line(path: &Path, line: usize, f: impl Fn(&str) -> String) {
        let text = fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[line - 1] = f(&lines[line - 1]);
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_untouched_log_verifies() {
        let (_d, path) = log_with(5);
        let v = verify_file(&path, None).unwrap();
        assert_eq!((v.entries, v.first_bad), (5, None));
    }

    #[test]
    fn a_changed_entry_is_named() {
        let (_d, path) = log_with(5);
        rewrite_line(&path, 3, |l| l.replace("\"i\":2", "\"i\":9"));
        let v = verify_file(&path, None).unwrap();
        assert_eq!(
            v.first_bad,
            Some((3, "its hash does not match its content (changed)".into()))
        );
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let (_d, path) = log_with(5);
        let text = fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        fs::write(&path, kept.join("\n") + "\n").unwrap();
        let v = verify_file(&path, None).unwrap();
        assert_eq!(v.first_bad.map(|b| b.0), Some(2));
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_continues() {
        let (_d, path) = log_with(3);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"at\"").unwrap();
        drop(f);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.append("p", "a", "o", json!({})).unwrap(), 4);
        assert_eq!(verify_file(&path, None).unwrap().first_bad, None);
    }

    /// A fresh log whose checkpoints are signed with a new key; returns its public key too.
    fn signed_log() -> (tempfile::TempDir, PathBuf, AuditLog, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        let log = AuditLog::open(&path)
            .unwrap()
            .with_signer(Box::new(move |m| pair.sign(m).as_ref().to_vec()));
        (dir, path, log, public)
    }

    #[test]
    fn signed_checkpoints_catch_truncation_and_forged_signatures() {
        let (_dir, path, log, public) = signed_log();
        for i in 0..250 {
            log.append("p", "test.step", &format!("o_{i}"), json!({}))
                .unwrap();
        }
        log.checkpoint().unwrap();
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!((v.entries, v.checkpoints, v.first_bad), (250, 3, None));
        // Cut the log back to 150 entries: the checkpoints at 200 and 250 reveal it.
        let text = fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().take(150).collect();
        fs::write(&path, kept.join("\n") + "\n").unwrap();
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!(
            v.first_bad,
            Some((
                151,
                "missing: a signed checkpoint covers 200 entries (truncated or deleted)".into()
            ))
        );
        // A checkpoint whose signature is not the platform's is refused.
        let cps = fs::read_to_string(checkpoints_path(&path))
            .unwrap()
            .replace("\"seq\":100", "\"seq\":99");
        fs::write(checkpoints_path(&path), cps).unwrap();
        assert!(verify_file(&path, Some(&public)).is_err());
    }

    #[test]
    fn an_exported_slice_verifies_offline_and_a_changed_one_does_not() {
        let (_dir, path, log, public) = signed_log();
        for i in 0..150 {
            log.append("p", "test.step", &format!("o_{i}"), json!({ "i": i }))
                .unwrap();
        }
        let slice = export_slice(&path, "90", "120").unwrap();
        assert_eq!(slice.entries.len(), 31);
        assert_eq!(slice.checkpoints.len(), 1, "the checkpoint at entry 100");
        assert_eq!(verify_slice(&slice, Some(&public)).unwrap(), (31, 1));
        let mut changed = slice.clone();
        changed.entries[5].detail = json!({ "i": 0 });
        assert_eq!(
            verify_slice(&changed, Some(&public))
                .unwrap_err()
                .to_string(),
            "integrity: entry 95: its hash does not match its content (changed)"
        );
        let mut gap = slice;
        gap.entries.remove(3);
        assert!(verify_slice(&gap, Some(&public)).is_err());
        let today = crate::now_rfc3339()[..10].to_string();
        assert_eq!(
            export_slice(&path, &today, &today).unwrap().entries.len(),
            150
        );
    }

    #[test]
    fn a_damaged_log_refuses_to_open() {
        let (_d, path) = log_with(3);
        rewrite_line(&path, 2, |l| l.replace("p_1", "p_2"));
        assert!(matches!(AuditLog::open(&path), Err(Error::Integrity(_))));
    }
}
