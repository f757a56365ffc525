//! Module review you can see (issue 18, item 2): a module's manifest, structure and history,
//! its bytes for the reviewer to read, and revoking an approval (jobs using it stop; exports
//! computed with it are flagged and can no longer be approved or downloaded).

use super::*;
use crate::source::{BuiltWith, SourceCheck, SourceView, built_with, read_source_archive};
use tidegate_policy::JobState;

/// A module as its reviewer reads it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleDetail {
    pub hash: String,
    pub scenario: String,
    pub org: String,
    pub uploaded_by: String,
    pub uploaded_at: String,
    pub functions: Vec<crate::sandbox::FunctionSig>,
    pub structure: crate::sandbox::ModuleFacts,
    /// `awaiting`, `approved` or `revoked`.
    pub state: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub approval_note: Option<String>,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<String>,
    pub revoke_reason: Option<String>,
    /// The scenario's jobs that called it, and the export requests made from them.
    pub jobs: Vec<String>,
    pub exports: Vec<String>,
    /// What the module says it was built with (toolchain, guest SDK): claims that a rebuild
    /// from its source checks.
    pub built_with: BuiltWith,
    /// The module's source, listed (its files' text: `GET .../source` or the console), if it
    /// was uploaded with one.
    pub source: Option<SourceView>,
    /// The latest recorded rebuild of the source.
    pub source_check: Option<SourceCheck>,
    /// `rebuilt: bytes match`, `rebuilt: bytes differ`, `source given, not rebuilt yet` or
    /// `no source: unverifiable`.
    pub source_review: String,
}

struct ModuleRow {
    org: String,
    uploaded_by: String,
    uploaded_at: String,
    functions: String,
    wasm: Vec<u8>,
    approved_by: Option<String>,
    approved_at: Option<String>,
    approval_note: Option<String>,
    revoked_by: Option<String>,
    revoked_at: Option<String>,
    revoke_reason: Option<String>,
    source: Option<Vec<u8>>,
    source_check: Option<String>,
}

/// A module's stored source, listed (`with_text`: each UTF-8 file's text too).
fn stored_source(bytes: Option<&[u8]>, with_text: bool) -> Result<Option<SourceView>> {
    bytes
        .map(|bytes| {
            read_source_archive(bytes)
                .map(|a| SourceView::of(&a, bytes.len() as u64, with_text))
                .map_err(|e| Error::Integrity(format!("the stored source: {e}")))
        })
        .transpose()
}

impl Platform {
    fn module_row(db: &Connection, scenario: &str, hash: &str) -> Result<ModuleRow> {
        db.query_row(
            "SELECT org_id, uploaded_by, created_at, functions, wasm, approved_by, approved_at,
                    approval_note, revoked_by, revoked_at, revoke_reason, source, source_check
             FROM modules WHERE hash = ?1 AND scenario_id = ?2",
            params![hash, scenario],
            |r| {
                Ok(ModuleRow {
                    org: r.get(0)?,
                    uploaded_by: r.get(1)?,
                    uploaded_at: r.get(2)?,
                    functions: r.get(3)?,
                    wasm: r.get(4)?,
                    approved_by: r.get(5)?,
                    approved_at: r.get(6)?,
                    approval_note: r.get(7)?,
                    revoked_by: r.get(8)?,
                    revoked_at: r.get(9)?,
                    revoke_reason: r.get(10)?,
                    source: r.get(11)?,
                    source_check: r.get(12)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("module {hash} in scenario {scenario}")))
    }

    /// The module, if the caller may read it: its org, or the authority's offices (others
    /// are told it does not exist).
    fn readable_module(
        db: &Connection,
        actor: &Principal,
        scenario: &str,
        hash: &str,
    ) -> Result<ModuleRow> {
        let row = Self::module_row(db, scenario, hash)?;
        if row.org != actor.org
            && !tidegate_policy::oversees_all_orgs(actor, Self::org_kind(db, &actor.org)?)
        {
            return Err(Error::NotFound(format!(
                "module {hash} in scenario {scenario}"
            )));
        }
        Ok(row)
    }

    /// The scenario's jobs that called the module (ids), oldest first.
    fn jobs_calling(
        db: &Connection,
        scenario: &str,
        hash: &str,
    ) -> Result<Vec<(String, JobState)>> {
        let jobs: Vec<(String, String, String)> = db
            .prepare(
                "SELECT id, modules, state FROM jobs WHERE scenario_id = ?1 ORDER BY created_at, id",
            )?
            .query_map(params![scenario], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for (id, modules, state) in jobs {
            if from_json::<Vec<String>>(&modules)?
                .iter()
                .any(|m| m == hash)
            {
                out.push((id, stored_state(&state)?));
            }
        }
        Ok(out)
    }

    pub fn get_module(
        &self,
        actor: &Principal,
        scenario: &str,
        hash: &str,
    ) -> Result<ModuleDetail> {
        let db = self.lock_db();
        let row = Self::readable_module(&db, actor, scenario, hash)?;
        let jobs: Vec<String> = Self::jobs_calling(&db, scenario, hash)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut exports = Vec::new();
        for job in &jobs {
            let ids: Vec<String> = db
                .prepare("SELECT id FROM exports WHERE job_id = ?1 ORDER BY created_at, id")?
                .query_map(params![job], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            exports.extend(ids);
        }
        let state = match (&row.approved_by, &row.revoked_by) {
            (_, Some(_)) => "revoked",
            (Some(_), None) => "approved",
            (None, None) => "awaiting",
        };
        let source = stored_source(row.source.as_deref(), false)?;
        let source_check: Option<SourceCheck> =
            row.source_check.as_deref().map(from_json).transpose()?;
        Ok(ModuleDetail {
            built_with: built_with(&row.wasm),
            source_review: crate::source::source_review(source.is_some(), source_check.as_ref())
                .to_string(),
            source,
            source_check,
            hash: hash.to_string(),
            scenario: scenario.to_string(),
            structure: crate::sandbox::module_facts(&row.wasm).map_err(Error::Integrity)?,
            functions: from_json(&row.functions)?,
            org: row.org,
            uploaded_by: row.uploaded_by,
            uploaded_at: row.uploaded_at,
            state: state.to_string(),
            approved_by: row.approved_by,
            approved_at: row.approved_at,
            approval_note: row.approval_note,
            revoked_by: row.revoked_by,
            revoked_at: row.revoked_at,
            revoke_reason: row.revoke_reason,
            jobs,
            exports,
        })
    }

    /// The module's bytes, for its reviewer to read (audited).
    pub fn module_bytes(&self, actor: &Principal, scenario: &str, hash: &str) -> Result<Vec<u8>> {
        let db = self.lock_db();
        let row = Self::readable_module(&db, actor, scenario, hash)?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::ModuleDownload,
            hash,
            crate::audited::ModuleDownload {
                scenario: scenario.to_string(),
                source: None,
                bytes: row.wasm.len(),
            }
            .to_value(),
        )?;
        Ok(row.wasm)
    }

    /// The module's source archive (a tar), for its reviewer to read and rebuild (audited).
    pub fn module_source(&self, actor: &Principal, scenario: &str, hash: &str) -> Result<Vec<u8>> {
        let db = self.lock_db();
        let row = Self::readable_module(&db, actor, scenario, hash)?;
        let source = row.source.ok_or_else(|| {
            Error::NotFound(format!(
                "a source for module {hash} in scenario {scenario} (it was uploaded without one)"
            ))
        })?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::ModuleDownload,
            hash,
            crate::audited::ModuleDownload {
                scenario: scenario.to_string(),
                source: Some(sha256_hex(&source)),
                bytes: source.len(),
            }
            .to_value(),
        )?;
        Ok(source)
    }

    /// The module's source with each file's text, for the review page (`None`: no source).
    pub fn module_source_view(
        &self,
        actor: &Principal,
        scenario: &str,
        hash: &str,
    ) -> Result<Option<SourceView>> {
        let db = self.lock_db();
        let row = Self::readable_module(&db, actor, scenario, hash)?;
        stored_source(row.source.as_deref(), true)
    }

    /// Records a reviewer's rebuild of a module's source (`tidegate module verify-source`):
    /// the archive rebuilt must be the module's stored source, and whether the bytes match is
    /// decided here, from the hashes. Recorded by those who may approve the module.
    pub fn record_source_check(
        &self,
        actor: &Principal,
        scenario: &str,
        hash: &str,
        source_sha256: &str,
        rebuilt_sha256: &str,
        toolchain: &str,
    ) -> Result<ModuleDetail> {
        {
            let db = self.lock_db();
            let row = Self::readable_module(&db, actor, scenario, hash)?;
            tidegate_policy::can_approve_module(actor, Self::org_kind(&db, &actor.org)?, &row.org)?;
            let Some(source) = &row.source else {
                return Err(Error::BadInput(
                    "this module was uploaded without a source: there is nothing to rebuild".into(),
                ));
            };
            if sha256_hex(source) != source_sha256 {
                return Err(Error::BadInput(
                    "the rebuilt archive is not this module's source (its SHA-256 differs)".into(),
                ));
            }
            let is_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_hash(rebuilt_sha256) {
                return Err(Error::BadInput(
                    "rebuilt_sha256 must be a SHA-256 in hex".into(),
                ));
            }
            let toolchain = crate::source::printable(toolchain)
                .ok_or_else(|| Error::BadInput("name the toolchain that rebuilt it".into()))?;
            let check = SourceCheck {
                by: actor.id.clone(),
                at: crate::now_rfc3339(),
                source_sha256: source_sha256.to_string(),
                rebuilt_sha256: rebuilt_sha256.to_ascii_lowercase(),
                toolchain,
                matches: rebuilt_sha256.eq_ignore_ascii_case(hash),
            };
            db.execute(
                "UPDATE modules SET source_check = ?3 WHERE hash = ?1 AND scenario_id = ?2",
                params![hash, scenario, to_json(&check)],
            )?;
            self.audit.append(
                &actor.id,
                crate::audit::Action::ModuleVerify,
                hash,
                crate::audited::ModuleVerify {
                    scenario: scenario.to_string(),
                    source: check.source_sha256.clone(),
                    rebuilt: check.rebuilt_sha256.clone(),
                    toolchain: check.toolchain.clone(),
                    matches: check.matches,
                }
                .to_value(),
            )?;
        }
        self.get_module(actor, scenario, hash)
    }

    /// Revokes a module's approval for a scenario (the authority's reviewers and admins):
    /// its queued and running jobs stop, no job may call it again, and the export requests
    /// computed with it are flagged: none of them is approved or downloaded any more.
    pub fn revoke_module(
        &self,
        actor: &Principal,
        scenario: &str,
        hash: &str,
        reason: &str,
    ) -> Result<ModuleDetail> {
        {
            let mut db = self.lock_db();
            let row = Self::readable_module(&db, actor, scenario, hash)?;
            tidegate_policy::can_revoke_module(actor, Self::org_kind(&db, &actor.org)?)?;
            if row.approved_by.is_none() {
                return Err(Error::BadInput(
                    "this module is not approved for this scenario; there is nothing to revoke"
                        .into(),
                ));
            }
            if reason.trim().is_empty() {
                return Err(Error::BadInput(
                    "a revocation says why: give a reason".into(),
                ));
            }
            let jobs = Self::jobs_calling(&db, scenario, hash)?;
            let now = crate::now_rfc3339();
            let flag = format!("computed with module {hash}, whose approval was revoked: {reason}");
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE modules SET approved_by = NULL, revoked_by = ?3, revoked_at = ?4,
                        revoke_reason = ?5
                 WHERE hash = ?1 AND scenario_id = ?2",
                params![hash, scenario, actor.id, now, reason],
            )?;
            let mut flagged = 0usize;
            for (job, _) in &jobs {
                flagged += tx.execute(
                    "UPDATE exports SET flag = ?2 WHERE job_id = ?1 AND flag IS NULL",
                    params![job, flag],
                )?;
            }
            self.audit.append(
                &actor.id,
                crate::audit::Action::ModuleRevoke,
                hash,
                crate::audited::ModuleRevoke {
                    scenario: scenario.to_string(),
                    reason: reason.to_string(),
                    exports_flagged: flagged,
                }
                .to_value(),
            )?;
            tx.commit()?;
            for (job, state) in &jobs {
                if matches!(state, JobState::Queued | JobState::Running) {
                    // A job that ended meanwhile is left as it ended.
                    let _ = self.stop_job(
                        &mut db,
                        job,
                        scenario,
                        &actor.id,
                        "its module's approval was revoked",
                    );
                }
            }
        }
        self.get_module(actor, scenario, hash)
    }
}
