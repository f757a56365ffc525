//! R-EXIT: lifecycles that close themselves. A scenario whose term has ended, or that an admin
//! revoked, is closed: its queued and running jobs stop, its results and intermediate files
//! are destroyed (keys wiped, files deleted), the bundles it released stay with their owners,
//! and the platform signs a closing receipt of what it destroyed. An org whose authorization
//! has run out exits as `exit_org` has it. The sweep does both; the server runs it at start and
//! hourly, and a revocation closes its scenario at once.

use super::*;

use crate::documents::{
    CLOSING_RECEIPT_FORMAT, ClosingReceipt, ClosingReceiptBody, Destroyed, DestroyedKind,
};

/// What one sweep closed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SweepReport {
    pub scenarios_closed: Vec<String>,
    pub orgs_expired: Vec<String>,
    /// Scenarios and orgs whose closing failed (logged; the next sweep tries again).
    #[serde(default)]
    pub failed: Vec<String>,
    /// The audit log's entries the sweep verified (its chain and signed checkpoints).
    #[serde(default)]
    pub audit_entries_verified: u64,
    /// The first entry that failed verification, when one did (an alert was raised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_first_bad: Option<u64>,
}

/// The actor the log names for what the platform does by itself.
pub const SWEEP_ACTOR: &str = "platform:sweep";

impl Platform {
    /// Destroys, inside `tx`, a scenario's job results (and the sets of subjects kept with
    /// them) and its exports' files, but the released ones when `keep_released`; the gate's
    /// differencing groups of every export go too (no later export of the scenario needs
    /// them). Files are listed in `files` for deletion after the transaction commits; the keys
    /// are gone with it. With `hashes`, each destroyed result and export is listed with the
    /// SHA-256 of what it held (an exit certificate, for the authority); without, by kind and
    /// id only (a closing receipt the unit reads: the hash of a result the gate never
    /// released could be matched against guesses of its values).
    pub(super) fn destroy_scenario_results(
        tx: &Connection,
        this: &Platform,
        sid: &str,
        keep_released: bool,
        hashes: bool,
        destroyed: &mut Vec<Destroyed>,
        files: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let listed = |kind: DestroyedKind, id: &str, hash: &Option<String>| {
            Destroyed::new(kind, id, hash.as_deref().filter(|_| hashes))
        };
        let jobs: Vec<(String, Option<String>)> = tx
            .prepare(
                "SELECT id, result_hash FROM jobs WHERE scenario_id = ?1 AND wrapped_key IS NOT NULL",
            )?
            .query_map(params![sid], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (job, hash) in jobs {
            destroyed.push(listed(DestroyedKind::Result, &job, &hash));
            files.push(this.object_path("results", &job));
            // The sets of subjects of its rows go with it.
            files.push(this.object_path("subjects", &job));
        }
        tx.execute(
            "UPDATE jobs SET wrapped_key = NULL, subjects_key = NULL WHERE scenario_id = ?1",
            params![sid],
        )?;
        let exports: Vec<(String, Option<String>, String, bool, bool)> = tx
            .prepare(
                "SELECT e.id, e.result_hash, e.state, e.wrapped_key IS NOT NULL,
                        e.groups_key IS NOT NULL
                 FROM exports e JOIN jobs j ON e.job_id = j.id WHERE j.scenario_id = ?1",
            )?
            .query_map(params![sid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (export, hash, state, has_file, has_groups) in exports {
            let released = state == tidegate_policy::ExportState::Released.as_str();
            if has_file && !(keep_released && released) {
                destroyed.push(listed(DestroyedKind::Export, &export, &hash));
                files.push(this.object_path("exports", &export));
                tx.execute(
                    "UPDATE exports SET wrapped_key = NULL WHERE id = ?1",
                    params![export],
                )?;
            }
            if has_groups {
                // The groups the gate kept for differencing go with it.
                destroyed.push(Destroyed::new(DestroyedKind::ExportGroups, &export, None));
                files.push(this.object_path("gate", &export));
                tx.execute(
                    "UPDATE exports SET groups_key = NULL WHERE id = ?1",
                    params![export],
                )?;
            }
        }
        Ok(())
    }

    /// Removes files whose keys are already destroyed (one already gone is no error).
    pub(super) fn remove_files(files: &[PathBuf]) -> Result<()> {
        for f in files {
            match fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// R-EXIT: closes every scenario that is over (revoked, or past its term) and not closed
    /// yet, and exits every org whose authorization has run out. Idempotent: a scenario is
    /// closed once, and a sweep killed halfway is finished by the next (each closing is one
    /// transaction; a file left behind has no key).
    pub fn sweep(&self) -> Result<SweepReport> {
        let today = today();
        let candidates: Vec<(String, String, String)> = {
            let db = self.lock_db();
            db.prepare("SELECT id, state, term_end FROM scenarios WHERE closed_at IS NULL")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut report = SweepReport::default();
        // One item that fails is logged and left for the next sweep; the others go on.
        for (id, state, term_end) in candidates {
            let over = state
                .parse::<ScenarioState>()
                .map_err(Error::Integrity)
                .and_then(|stored| {
                    Ok(tidegate_policy::scenario_closes(
                        stored,
                        parse_date(&term_end)?,
                        today,
                    ))
                });
            match over.and_then(|over| {
                if over {
                    self.close_scenario(&id)
                } else {
                    Ok(None)
                }
            }) {
                Ok(Some(_)) => report.scenarios_closed.push(id),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(scenario = %id, error = %e, "a scenario could not be closed");
                    report.failed.push(id);
                }
            }
        }
        let orgs: Vec<(String, String)> = {
            let db = self.lock_db();
            db.prepare(
                "SELECT id, authorized_until FROM orgs
                 WHERE exited_at IS NULL AND authorized_until IS NOT NULL",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
        };
        for (org, until) in orgs {
            let ended =
                parse_date(&until).map(|u| tidegate_policy::authorization_ended(Some(u), today));
            let exited = ended.and_then(|ended| {
                if ended {
                    self.exit_org_as(
                        SWEEP_ACTOR,
                        &org,
                        &format!("the org's authorization ended on {until}"),
                    )
                    .map(|_| true)
                } else {
                    Ok(false)
                }
            });
            match exited {
                Ok(true) => report.orgs_expired.push(org),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(org = %org, error = %e, "an org could not be exited");
                    report.failed.push(org);
                }
            }
        }
        // What the cluster's executors recorded for jobs after they ended.
        if let Err(e) = self.collect_late_cluster_usage() {
            tracing::error!(error = %e, "late cluster usage could not be charged");
        }
        // R-MONITOR: the audit log verified on every sweep, not only when somebody asks.
        match self.verify_audit_scheduled() {
            Ok((entries, first_bad)) => {
                report.audit_entries_verified = entries;
                report.audit_first_bad = first_bad;
            }
            Err(e) => tracing::error!(error = %e, "the audit log could not be verified"),
        }
        Ok(report)
    }

    /// [`Platform::sweep`] on an admin's word, not waiting for the hour.
    pub fn sweep_now(&self, actor: &Principal) -> Result<SweepReport> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        self.sweep()
    }

    /// Closes one scenario that is over: returns its receipt, or none when it was closed
    /// already (by another sweep, say).
    pub(super) fn close_scenario(&self, id: &str) -> Result<Option<ClosingReceipt>> {
        // No export is between its gate and its record while the scenario's results go.
        let _gate = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut db = self.lock_db();
        let (state, term_end, closed): (String, String, Option<String>) = db
            .query_row(
                "SELECT state, term_end, closed_at FROM scenarios WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("scenario {id}")))?;
        let stored: ScenarioState = state.parse().map_err(Error::Integrity)?;
        if closed.is_some()
            || !tidegate_policy::scenario_closes(stored, parse_date(&term_end)?, today())
        {
            return Ok(None);
        }
        let reason = match stored {
            ScenarioState::Revoked => "revoked".to_string(),
            _ => format!("its term ended on {term_end}"),
        };
        let mut destroyed = Vec::new();
        let mut files = Vec::new();
        let tx = db.transaction()?;
        // A revoked scenario keeps nothing for download; one whose term ended keeps its
        // released bundles for their requesters.
        let keep_released = stored != ScenarioState::Revoked;
        Self::destroy_scenario_results(
            &tx,
            self,
            id,
            keep_released,
            false,
            &mut destroyed,
            &mut files,
        )?;
        // The jobs that were waiting will never run.
        let queued: Vec<String> = tx
            .prepare("SELECT id FROM jobs WHERE scenario_id = ?1 AND state = 'queued'")?
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let now = crate::now_rfc3339();
        let receipt = ClosingReceiptBody {
            format: CLOSING_RECEIPT_FORMAT.into(),
            scenario: id.to_string(),
            reason: reason.clone(),
            at: now.clone(),
            jobs_stopped: queued.clone(),
            destroyed,
            kept: if keep_released {
                "released bundles (their requesters may download them again), modules, the audit log and the gate's memory of released cells"
            } else {
                "modules, the audit log and the gate's memory of released cells (a revoked scenario's bundles stay only with those who downloaded them)"
            }
            .into(),
        };
        let body = crate::documents::signed_bytes(&receipt)?;
        let signature = hex::encode(self.signer.sign(&body));
        let stored_receipt = ClosingReceipt {
            receipt,
            signature: signature.clone(),
        };
        tx.execute(
            "UPDATE scenarios SET closed_at = ?2, closing = ?3 WHERE id = ?1",
            params![id, now, to_json(&stored_receipt)],
        )?;
        self.audit.append_at(
            now.clone(),
            SWEEP_ACTOR,
            crate::audit::Action::ScenarioClose,
            id,
            crate::audited::ScenarioClose {
                reason: reason.to_string(),
                destroyed: stored_receipt.receipt.destroyed.len(),
                receipt_sha256: sha256_hex(&body),
            }
            .to_value(),
        )?;
        tx.commit()?;
        drop(db);
        // What still runs stops at its next epoch tick, and what waits never starts; a job
        // that ends after this finds its scenario closed and keeps nothing (see `run_job`).
        self.cancel_jobs(&[id.to_string()]);
        for job in queued {
            self.fail_unrun_job(
                &job,
                "queued",
                SWEEP_ACTOR,
                "the scenario closed before the job ran",
            )?;
        }
        Self::remove_files(&files)?;
        Ok(Some(stored_receipt))
    }

    /// R-EXIT: an admin sets the last day of an org's authorization (none: until an exit). The
    /// sweep exits the org the day after; a date already past is refused (exit the org instead).
    pub fn set_org_authorization(
        &self,
        actor: &Principal,
        org: &str,
        until: Option<&str>,
    ) -> Result<()> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let until = until
            .map(|u| {
                let date = parse_date(u)?;
                if tidegate_policy::authorization_ended(Some(date), today()) {
                    return Err(Error::BadInput(format!(
                        "{u} is past; to end an org's authorization now, exit it"
                    )));
                }
                Ok(date.to_string())
            })
            .transpose()?;
        let mut db = self.lock_db();
        let org = Self::org_id(&db, org)?;
        if org == actor.org {
            return Err(Error::Refused(
                "an admin cannot set their own org's authorization".into(),
            ));
        }
        let tx = db.transaction()?;
        let n = tx.execute(
            "UPDATE orgs SET authorized_until = ?2 WHERE id = ?1 AND exited_at IS NULL",
            params![org, until],
        )?;
        if n == 0 {
            return Err(Error::Refused(format!("the org {org} has exited")));
        }
        self.audit.append(
            &actor.id,
            crate::audit::Action::OrgAuthorization,
            &org,
            crate::audited::OrgAuthorization {
                until: until.map(|u| u.to_string()),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The signed receipt of a closed scenario, for whoever may see the scenario.
    pub fn closing_receipt(&self, actor: &Principal, id: &str) -> Result<ClosingReceipt> {
        // The scenario's visibility is the scenario view's.
        self.get_scenario(actor, id)?;
        let db = self.lock_db();
        let closing: Option<String> = db.query_row(
            "SELECT closing FROM scenarios WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        match closing {
            Some(c) => crate::documents::read_stored(&c, "closing receipt"),
            None => Err(Error::NotFound(format!(
                "a closing receipt for scenario {id}: it has not closed"
            ))),
        }
    }

    /// Whether a scenario has closed (its results destroyed, or its org exited).
    pub(super) fn scenario_closed(db: &Connection, id: &str) -> Result<bool> {
        Ok(db.query_row(
            "SELECT closed_at IS NOT NULL OR state = 'exited' FROM scenarios WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?)
    }
}
