//! The tamper-evident audit log: append-only JSON lines, each carrying the hash of the one
//! before. An entry is fsynced before the action it records is acknowledged. The log is kept in
//! segments: the active file (`audit.log`) and, once it holds `segment_entries` entries, sealed
//! read-only segments named by their first sequence number (`audit.log.000000000001`). Only
//! whole sealed segments older than the retention period (at least 180 days) can be pruned;
//! a pruned log starts from an anchor that a signed checkpoint vouches for.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use tidegate_policy::AuditAction as Action;

use crate::crypto::sha256_hex;
use crate::error::{Error, Result};

/// A signed checkpoint is written after every this many entries, and on demand (shutdown).
pub const CHECKPOINT_EVERY: u64 = 100;

/// Entries per segment by default.
pub const SEGMENT_ENTRIES: u64 = 10_000;

/// Audit entries are kept at least this long (DOMAIN.md: logs at least 6 months).
pub const RETENTION_DAYS: i64 = 180;

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
    /// Entries in the active file.
    active: u64,
    /// The sequence number of the last signed checkpoint.
    checkpointed: u64,
    /// Set after a failed write: the log accepts nothing more until restarted.
    broken: bool,
    /// Entries of actions that change state (not reads or sign-ins) appended since the log
    /// was opened.
    changes: u64,
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
    segment_entries: u64,
}

/// Where a pruned log starts: the sequence number and hash of the last pruned entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub head: String,
}

/// The anchor file beside a log.
fn anchor_path(log: &Path) -> PathBuf {
    log.with_extension("pruned")
}

fn read_anchor(log: &Path) -> Result<Option<Anchor>> {
    match fs::read(anchor_path(log)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|_| {
            Error::Integrity("the audit log's prune anchor is not well formed".into())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A sealed segment's path: the log's name and its first sequence number.
fn segment_path(log: &Path, first: u64) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first:012}"));
    log.with_file_name(name)
}

/// The sealed segments of a log in order, with their first sequence numbers.
fn sealed_segments(log: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let prefix = format!(
        "{}.",
        log.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|rest| rest.len() == 12)
            .and_then(|rest| rest.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Every line of the log after its anchor: sealed segments first, then the active file. A
/// segment the anchor already covers (a prune killed before it deleted the file) is skipped.
fn lines(log: &Path) -> Result<impl Iterator<Item = std::io::Result<Vec<u8>>>> {
    let covered_to = read_anchor(log)?.map_or(0, |a| a.seq);
    let segments = sealed_segments(log)?;
    let mut readers = Vec::new();
    for (k, (_, path)) in segments.iter().enumerate() {
        let last_seq = match segments.get(k + 1) {
            Some((next_first, _)) => next_first - 1,
            None => last_entry(path)?.map_or(0, |e| e.seq),
        };
        if last_seq <= covered_to {
            continue;
        }
        readers.push(BufReader::new(fs::File::open(path)?).split(b'\n'));
    }
    match fs::File::open(log) {
        Ok(f) => readers.push(BufReader::new(f).split(b'\n')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(readers.into_iter().flatten())
}

fn last_entry(path: &Path) -> Result<Option<AuditEntry>> {
    let text = fs::read_to_string(path)?;
    text.lines()
        .last()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|_| Error::Integrity(format!("{} ends in a damaged entry", path.display())))
}

fn count_lines(path: &Path) -> Result<u64> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes.iter().filter(|b| **b == b'\n').count() as u64),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
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
                active: count_lines(path)?,
                broken: false,
                changes: 0,
                checkpointed: verdict.entries.min(last_checkpoint_seq(path)),
            }),
            signer: None,
            segment_entries: SEGMENT_ENTRIES,
        })
    }

    /// Seals the active file into a segment every `n` entries (tests use small segments).
    pub fn with_segment_entries(mut self, n: u64) -> Self {
        self.segment_entries = n.max(1);
        self
    }

    /// Seals the active file: a signed checkpoint of its last entry (the anchor a later prune
    /// relies on), then a rename to a read-only segment, then a fresh active file.
    fn seal(&self, tail: &mut Tail) -> Result<()> {
        self.write_checkpoint(tail)?;
        let sealed = segment_path(&self.path, tail.seq - tail.active + 1);
        fs::rename(&self.path, &sealed)?;
        fs::set_permissions(&sealed, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
        tail.file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        tail.active = 0;
        Ok(())
    }

    /// Deletes the sealed segments whose every entry is older than `before`, which must lie at
    /// least [`RETENTION_DAYS`] in the past (`today` is the current date). The last pruned
    /// entry becomes the anchor the log verifies from; a signed checkpoint vouches for it.
    /// Returns how many entries were pruned.
    pub fn prune(&self, before: time::Date, today: time::Date) -> Result<u64> {
        let _tail = self.lock_tail()?;
        if before > today - time::Duration::days(RETENTION_DAYS) {
            return Err(Error::Refused(format!(
                "audit entries are kept at least {RETENTION_DAYS} days: prune only before {}",
                today - time::Duration::days(RETENTION_DAYS)
            )));
        }
        let checkpoints = read_checkpoints(&self.path)?;
        let segments = sealed_segments(&self.path)?;
        let mut anchor = read_anchor(&self.path)?;
        let previous = anchor.as_ref().map_or(0, |a| a.seq);
        let mut pruned = Vec::new();
        for (_, path) in &segments {
            let Some(last) = last_entry(path)? else {
                break;
            };
            let old = last.at.get(..10).unwrap_or("") < before.to_string().as_str();
            let vouched = checkpoints
                .iter()
                .any(|c| c.seq == last.seq && c.head == last.hash);
            if !old || !vouched {
                break;
            }
            anchor = Some(Anchor {
                seq: last.seq,
                head: last.hash,
            });
            pruned.push(path.clone());
        }
        let Some(anchor) = anchor.filter(|_| !pruned.is_empty()) else {
            return Ok(0);
        };
        // The anchor first, durably: a kill between the two steps leaves segments the anchor
        // already covers, which verification skips.
        crate::crypto::write_atomic(&anchor_path(&self.path), &serde_json::to_vec(&anchor)?)?;
        for path in &pruned {
            fs::remove_file(path)?;
        }
        Ok(anchor.seq.saturating_sub(previous))
    }

    /// Makes every later write fail as a full or failing disk would, by swapping the file for a
    /// read-only handle.
    #[cfg(test)]
    pub(crate) fn fail_writes_for_test(&self) {
        let mut tail = self.lock_tail().expect("audit lock");
        tail.file = fs::File::open(&self.path).expect("the log exists");
    }

    /// Signs checkpoints with `signer` from now on.
    pub fn with_signer(mut self, signer: CheckpointSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Writes a signed checkpoint of the current head, if anything was appended since the last.
    pub fn checkpoint(&self) -> Result<()> {
        let mut tail = self.lock_tail()?;
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

    /// Entries appended so far (the last sequence number), and whether a failed write has
    /// stopped the log.
    pub fn state(&self) -> (u64, bool) {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (tail.seq, tail.broken)
    }

    /// The last entry this process knows the log holds: its sequence number and hash.
    pub fn written(&self) -> (u64, String) {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (tail.seq, tail.head.clone())
    }

    /// How many entries of actions that change state (not reads or sign-ins) were appended
    /// since the log was opened: a cache of what the metadata shows compares it.
    pub fn changes(&self) -> u64 {
        self.tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .changes
    }

    /// The writer's state, for a change. A panic while it was held leaves the file's tail
    /// unknown, so every later write is refused (fail closed, never a second panic).
    fn lock_tail(&self) -> Result<std::sync::MutexGuard<'_, Tail>> {
        self.tail.lock().map_err(|_| {
            Error::Internal(
                "the audit log's writer failed earlier; actions are refused until restart".into(),
            )
        })
    }

    /// Appends an entry and makes it durable; an error means the action must not happen.
    pub fn append(&self, actor: &str, action: Action, object: &str, detail: Value) -> Result<u64> {
        self.append_at(crate::now_rfc3339(), actor, action, object, detail)
    }

    /// [`AuditLog::append`] with the time the caller also records in the metadata, so that the
    /// metadata and the log agree to the instant (metering is reproduced from the log).
    pub fn append_at(
        &self,
        at: String,
        actor: &str,
        action: Action,
        object: &str,
        detail: Value,
    ) -> Result<u64> {
        let mut tail = self.lock_tail()?;
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
            action: action.as_str().to_string(),
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
        if action.changes_state() {
            tail.changes += 1;
        }
        tail.active += 1;
        if tail.active >= self.segment_entries
            && let Err(e) = self.seal(&mut tail)
        {
            tracing::error!(error = %e, "sealing an audit segment failed");
            tail.broken = true;
        }
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
    let anchor = read_anchor(path)?;
    let mut verdict = verify_chain(path, anchor.as_ref())?;
    let checkpoints = read_checkpoints(path)?;
    verdict.checkpoints = checkpoints.len() as u64;
    let start = anchor.as_ref().map_or(0, |a| a.seq);
    let hashes = chain_hashes(path, verdict.entries.saturating_sub(start))?;
    // A pruned log starts where a signed checkpoint says the pruned part ended.
    if let Some(a) = &anchor
        && !checkpoints.iter().any(|c| {
            c.seq == a.seq
                && c.head == a.head
                && public_key.is_none_or(|key| checkpoint_signed(c, key))
        })
    {
        return Err(Error::Integrity(format!(
            "the audit log's prune anchor (entry {}) has no signed checkpoint",
            a.seq
        )));
    }
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
        } else if cp.seq > start && hashes.get((cp.seq - start) as usize - 1) != Some(&cp.head) {
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

/// The hashes of the first `n` entries kept, as stored.
fn chain_hashes(path: &Path, n: u64) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(n as usize);
    for line in lines(path)?.take(n as usize) {
        let entry: AuditEntry = serde_json::from_slice(&line?)?;
        out.push(entry.hash);
    }
    Ok(out)
}

fn verify_chain(path: &Path, anchor: Option<&Anchor>) -> Result<AuditVerdict> {
    let (start, mut head) = match anchor {
        Some(a) => (a.seq, a.head.clone()),
        None => (0, GENESIS.to_string()),
    };
    let mut entries = start;
    for (i, line) in lines(path)?.enumerate() {
        let n = start + i as u64 + 1;
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
    let mut entries = Vec::new();
    for line in lines(log)? {
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
    let mut entries = Vec::new();
    for line in lines(log)? {
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
            log.append(
                "p_1",
                Action::PolicyApply,
                &format!("o_{i}"),
                json!({ "i": i }),
            )
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
        assert_eq!(
            log.append("p", Action::PolicyApply, "o", json!({}))
                .unwrap(),
            4
        );
        assert_eq!(verify_file(&path, None).unwrap().first_bad, None);
    }

    #[test]
    fn a_panic_while_writing_makes_later_appends_fail_instead_of_panicking() {
        let (_d, path) = log_with(2);
        let log = AuditLog::open(&path).unwrap();
        let panicked = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = log.tail.lock().unwrap();
                panic!("a writer dies holding the tail");
            })
            .join()
        });
        assert!(panicked.is_err());
        let refused = log.append("p", Action::PolicyApply, "o", json!({}));
        assert!(matches!(refused, Err(Error::Internal(m)) if m.contains("refused until restart")));
        assert!(log.checkpoint().is_err());
        assert_eq!(verify_file(&path, None).unwrap().entries, 2);
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
            log.append("p", Action::PolicyApply, &format!("o_{i}"), json!({}))
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
            log.append(
                "p",
                Action::PolicyApply,
                &format!("o_{i}"),
                json!({ "i": i }),
            )
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

    fn writable(path: &Path) {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_segmented_log_verifies_across_segments_and_names_a_change_in_a_sealed_one() {
        let (_dir, path, log, public) = signed_log();
        let log = log.with_segment_entries(10);
        for i in 0..35 {
            log.append(
                "p",
                Action::PolicyApply,
                &format!("o_{i}"),
                json!({ "i": i }),
            )
            .unwrap();
        }
        let firsts: Vec<u64> = sealed_segments(&path)
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(firsts, vec![1, 11, 21]);
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!((v.entries, v.first_bad), (35, None));
        drop(log);
        let reopened = AuditLog::open(&path).unwrap().with_segment_entries(10);
        assert_eq!(
            reopened
                .append("p", Action::PolicyApply, "o", json!({}))
                .unwrap(),
            36
        );

        let middle = segment_path(&path, 11);
        writable(&middle);
        rewrite_line(&middle, 3, |l| l.replace("\"i\":12", "\"i\":0"));
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!(
            v.first_bad,
            Some((13, "its hash does not match its content (changed)".into()))
        );
        fs::remove_file(&middle).unwrap();
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!(
            v.first_bad.map(|b| b.0),
            Some(11),
            "a deleted segment is named"
        );
    }

    /// Appends `n` entries dated long before the retention period.
    fn append_old(log: &AuditLog, n: u64) {
        for i in 0..n {
            log.append_at(
                "2025-01-02T00:00:00Z".into(),
                "p",
                Action::PolicyApply,
                &format!("o_{i}"),
                json!({}),
            )
            .unwrap();
        }
    }

    #[test]
    fn only_segments_past_the_retention_period_are_pruned_and_the_rest_still_verifies() {
        let (_dir, path, log, public) = signed_log();
        let log = log.with_segment_entries(10);
        append_old(&log, 20);
        for i in 0..15 {
            log.append("p", Action::PolicyApply, &format!("o_{i}"), json!({}))
                .unwrap();
        }
        let today = crate::clock::now().date();
        let refused = log.prune(today, today).unwrap_err().to_string();
        assert!(refused.contains("kept at least 180 days"), "{refused}");
        let cutoff = today - time::Duration::days(RETENTION_DAYS);
        assert_eq!(log.prune(cutoff, today).unwrap(), 20);
        assert_eq!(log.prune(cutoff, today).unwrap(), 0, "nothing young goes");
        assert_eq!(
            sealed_segments(&path).unwrap().len(),
            1,
            "the young segment stays"
        );
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!((v.entries, v.first_bad), (35, None));
        assert_eq!(read_verified(&path, Some(&public)).unwrap()[0].seq, 21);

        // The anchor is only as good as the signed checkpoint behind it.
        let anchor = anchor_path(&path);
        let kept = fs::read(&anchor).unwrap();
        fs::write(
            &anchor,
            String::from_utf8(kept.clone())
                .unwrap()
                .replace("\"seq\":20", "\"seq\":19"),
        )
        .unwrap();
        assert!(verify_file(&path, Some(&public)).is_err());
        fs::remove_file(&anchor).unwrap();
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!(
            v.first_bad.map(|b| b.0),
            Some(1),
            "entries 1-20 are missing"
        );
        fs::write(&anchor, kept).unwrap();
    }

    #[test]
    fn a_prune_killed_before_it_deleted_the_segments_still_verifies() {
        let (_dir, path, log, public) = signed_log();
        let log = log.with_segment_entries(10);
        append_old(&log, 25);
        // The anchor written, the segments not yet deleted.
        let last = last_entry(&segment_path(&path, 11)).unwrap().unwrap();
        crate::crypto::write_atomic(
            &anchor_path(&path),
            &serde_json::to_vec(&Anchor {
                seq: last.seq,
                head: last.hash,
            })
            .unwrap(),
        )
        .unwrap();
        let v = verify_file(&path, Some(&public)).unwrap();
        assert_eq!((v.entries, v.first_bad), (25, None));
    }

    #[test]
    fn a_damaged_log_refuses_to_open() {
        let (_d, path) = log_with(3);
        rewrite_line(&path, 2, |l| l.replace("p_1", "p_2"));
        assert!(matches!(AuditLog::open(&path), Err(Error::Integrity(_))));
    }
}
