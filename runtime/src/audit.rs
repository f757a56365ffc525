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
    /// The first bad entry (1-based line number) and what is wrong with it.
    pub first_bad: Option<(u64, String)>,
    pub head: String,
}

struct Tail {
    file: fs::File,
    seq: u64,
    head: String,
    /// Set after a failed write: the log accepts nothing more until restarted.
    broken: bool,
}

pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. A torn final line, left by a crash before its
    /// fsync returned, was never acknowledged and is cut off; any other damage is refused.
    pub fn open(path: &Path) -> Result<AuditLog> {
        let verdict = verify_file(path)?;
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
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry and makes it durable; an error means the action must not happen.
    pub fn append(&self, actor: &str, action: &str, object: &str, detail: Value) -> Result<u64> {
        let mut tail = self.tail.lock().expect("audit lock");
        if tail.broken {
            return Err(Error::Internal(
                "the audit log could not be written earlier; actions are refused until restart"
                    .into(),
            ));
        }
        let mut entry = AuditEntry {
            seq: tail.seq + 1,
            at: crate::now_rfc3339(),
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

/// Checks the whole chain in the file at `path` and names the first bad entry.
pub fn verify_file(path: &Path) -> Result<AuditVerdict> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AuditVerdict {
                entries: 0,
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
        first_bad: None,
        head,
    })
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
        let v = verify_file(&path).unwrap();
        assert_eq!((v.entries, v.first_bad), (5, None));
    }

    #[test]
    fn a_changed_entry_is_named() {
        let (_d, path) = log_with(5);
        rewrite_line(&path, 3, |l| l.replace("\"i\":2", "\"i\":9"));
        let v = verify_file(&path).unwrap();
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
        let v = verify_file(&path).unwrap();
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
        assert_eq!(verify_file(&path).unwrap().first_bad, None);
    }

    #[test]
    fn a_damaged_log_refuses_to_open() {
        let (_d, path) = log_with(3);
        rewrite_line(&path, 2, |l| l.replace("p_1", "p_2"));
        assert!(matches!(AuditLog::open(&path), Err(Error::Integrity(_))));
    }
}
