//! `tidegate audit`: the audit log's hash chain verified, a slice of it exported and verified
//! offline, an org's statement recomputed from it; old segments pruned (admin, through the
//! server).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;

use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Verify the chain in a data directory; names the first bad entry.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// The platform public key (hex) to check checkpoint signatures with; keep a copy
        /// outside the data directory. Defaults to DATA_DIR/platform.pub.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Write the entries from..=to (sequence numbers or YYYY-MM-DD dates) with their
    /// checkpoints to a file an auditor can verify on its own.
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete sealed audit segments whose entries are all older than a date at least 180 days
    /// back (admin, through the server; the prune itself is audited).
    Prune {
        /// YYYY-MM-DD
        #[arg(long)]
        before: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Recompute an org's statement from the audit log alone, offline, after verifying it.
    Statement {
        #[arg(long)]
        data_dir: PathBuf,
        /// The org's id, as the log names it.
        #[arg(long)]
        org: String,
        /// YYYY-MM
        #[arg(long)]
        period: String,
        /// Count storage up to this RFC 3339 time (now by default).
        #[arg(long)]
        as_of: Option<String>,
        /// The platform public key (hex). Defaults to DATA_DIR/platform.pub.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Search the log through the server by org, principal, action and time (the authority's
    /// auditors and admins; the search is audited).
    Search {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        /// job.start, session.refused, export.read, ...
        #[arg(long)]
        action: Option<String>,
        /// RFC 3339 time or YYYY-MM-DD
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 time or YYYY-MM-DD
        #[arg(long)]
        to: Option<String>,
        /// At most this many entries, the newest (200 by default).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Verify an exported slice offline.
    VerifySlice {
        file: PathBuf,
        /// The platform public key (hex) for the checkpoints' signatures.
        #[arg(long)]
        key: PathBuf,
    },
}

pub(super) fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Search {
            org,
            principal,
            action,
            from,
            to,
            limit,
            remote,
        } => print(
            &remote
                .client()?
                .search_audit(&tidegate_runtime::AuditQuery {
                    org,
                    principal,
                    action,
                    from,
                    to,
                    limit,
                })?,
        ),
        AuditCommand::Verify { data_dir, key } => {
            let key_path = key.unwrap_or_else(|| data_dir.join(tidegate_runtime::PUBLIC_KEY_FILE));
            let key = read_public_key(&key_path)?;
            let log = data_dir.join(tidegate_runtime::AUDIT_FILE);
            let v = tidegate_runtime::verify_audit_file(&log, Some(&key))?;
            match v.first_bad {
                None => println!(
                    "audit log verified: {} entries, {} signed checkpoints, head {}",
                    v.entries, v.checkpoints, v.head
                ),
                Some((n, why)) => bail!(
                    "audit log broken at entry {n}: {why} ({} entries before it verify)",
                    v.entries
                ),
            }
        }
        AuditCommand::Export {
            data_dir,
            from,
            to,
            out,
        } => {
            let log = data_dir.join(tidegate_runtime::AUDIT_FILE);
            let slice = tidegate_runtime::export_audit_slice(&log, &from, &to)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&slice)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "{} entries and {} signed checkpoints written to {}",
                slice.entries.len(),
                slice.checkpoints.len(),
                out.display()
            );
        }
        AuditCommand::Statement {
            data_dir,
            org,
            period,
            as_of,
            key,
        } => {
            let key_path = key.unwrap_or_else(|| data_dir.join(tidegate_runtime::PUBLIC_KEY_FILE));
            let key = read_public_key(&key_path)?;
            let entries = tidegate_runtime::read_audit_log(
                &data_dir.join(tidegate_runtime::AUDIT_FILE),
                Some(&key),
            )?;
            let ledger = tidegate_runtime::ledger_from_audit(&entries)?;
            let as_of = match as_of {
                Some(t) => {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .with_context(|| format!("`{t}` is not an RFC 3339 time"))?
                }
                None => tidegate_runtime::clock::now(),
            };
            print(&serde_json::to_value(
                tidegate_runtime::statement_from_ledger(&ledger, &org, &period, as_of)?,
            )?);
        }
        AuditCommand::Prune { before, remote } => print(&remote.client()?.prune_audit(&before)?),
        AuditCommand::VerifySlice { file, key } => {
            let slice: tidegate_runtime::AuditSlice = serde_json::from_slice(
                &std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
            )
            .context("not an audit slice")?;
            let key = read_public_key(&key)?;
            let (entries, checkpoints) = tidegate_runtime::verify_audit_slice(&slice, Some(&key))?;
            println!("audit slice verified: {entries} entries, {checkpoints} signed checkpoints");
        }
    }
    Ok(())
}

/// The platform public key from a hex file.
/// `tidegate verify-signed`: a signed document of the platform checked offline. The signed
/// value is the one field beside `signature` (`record`, `certificate`, `receipt` or
/// `evaluation`), and its `format` must be one of that field's kinds.
pub(super) fn verify_signed(file: &Path, key: &Path) -> Result<()> {
    let key = read_public_key(key)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).context("the file is not a signed JSON document")?;
    let signature = doc["signature"]
        .as_str()
        .ok_or_else(|| anyhow!("the document has no signature"))?;
    let (name, signed) = ["record", "certificate", "receipt", "evaluation"]
        .iter()
        .find_map(|n| doc.get(*n).map(|v| (*n, v)))
        .ok_or_else(|| {
            anyhow!("the document holds no record, certificate, receipt or evaluation")
        })?;
    // Each field holds the documents of its kinds only: a signature is not taken for a
    // document of another kind.
    let formats: &[&str] = match name {
        "record" => &[
            "tidegate-public-record-v1",
            "tidegate-sealing-record-v1",
            "tidegate-unsealing-record-v1",
            "tidegate-destruction-certificate-v1",
        ],
        "certificate" => &["tidegate-exit-certificate-v1"],
        "receipt" => &["tidegate-closing-receipt-v1"],
        _ => &["tidegate-evaluation-v1"],
    };
    let format = signed["format"].as_str().unwrap_or_default();
    if !formats.contains(&format) {
        bail!(
            "the {name} is of format `{}`, not one a {name} may have ({})",
            tidegate_runtime::defuse(format, 80),
            formats.join(", ")
        );
    }
    tidegate_runtime::verify_certificate(signed, signature, &key)?;
    println!(
        "{name} verified: signed by the platform's key ({})",
        signed["format"].as_str().unwrap_or("no format named")
    );
    Ok(())
}

fn read_public_key(path: &Path) -> Result<Vec<u8>> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|k| hex::decode(k.trim()).ok())
        .ok_or_else(|| anyhow!("cannot read a hex public key from {}", path.display()))
}
