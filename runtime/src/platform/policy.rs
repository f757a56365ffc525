//! Policy as code, and the audit log's verification, pruning and checkpoints.

use super::*;
use crate::documents::{
    Change, POLICY_FORMAT, PolicyApplied, PolicyChange, PolicyDocument, PolicyScenario, Pruned,
    ScenarioChange,
};

impl Platform {
    pub(super) fn policy_version(db: &Connection) -> Result<i64> {
        let v: Option<String> = db
            .query_row(
                "SELECT value FROM settings WHERE key = 'policy_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    /// Policy as code: the scenarios' rules and the price table as one versioned document.
    pub fn export_policy(&self, actor: &Principal) -> Result<PolicyDocument> {
        let kind = Self::org_kind(
            &self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            &actor.org,
        )?;
        if !((actor.has_role(Role::Admin) || actor.has_role(Role::Auditor))
            && tidegate_policy::oversees_all_orgs(actor, kind))
        {
            return Err(Error::Refused(
                "only the authority's admins and auditors read the policy document".into(),
            ));
        }
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut prices = BTreeMap::new();
        for (category, _, _, default) in PRICE_ITEMS {
            let fen: Option<i64> = db
                .query_row(
                    "SELECT fen_per_unit FROM prices WHERE category = ?1",
                    params![category],
                    |r| r.get(0),
                )
                .optional()?;
            prices.insert(category.to_string(), fen.unwrap_or(default));
        }
        let ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios ORDER BY created_at")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut scenarios = Vec::new();
        for id in ids {
            let s = Self::scenario_row(&db, &id)?;
            scenarios.push(PolicyScenario {
                id: s.id,
                name: Some(s.name),
                org: Some(s.org),
                state: Some(s.stored_state),
                k: Some(s.k),
                term_start: Some(s.view.term_start),
                term_end: Some(s.view.term_end),
                grants: Some(s.grants),
                export_rules: Some(s.export_rules),
            });
        }
        Ok(PolicyDocument {
            format: POLICY_FORMAT.into(),
            version: Self::policy_version(&db)?,
            prices,
            scenarios,
        })
    }

    /// Applies a policy document as one new version: price changes, and per scenario its
    /// threshold k (never below its level's default), the end of its term, its state (suspend,
    /// resume, revoke), its export rules and narrower grants (widening one needs a new
    /// application and its approvals). Shows the difference; with `dry_run` changes nothing.
    pub fn apply_policy(
        &self,
        actor: &Principal,
        doc: &PolicyDocument,
        dry_run: bool,
    ) -> Result<PolicyApplied> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = Self::policy_version(&db)?;
        if doc.format != POLICY_FORMAT {
            return Err(Error::BadInput(format!("not a {POLICY_FORMAT} document")));
        }
        if doc.version != current {
            return Err(Error::Refused(format!(
                "the document was exported at version {}, the policy is now at version {current}: export it again",
                doc.version
            )));
        }
        let mut changes = Vec::new();
        let mut statements: Vec<(String, Vec<rusqlite::types::Value>)> = Vec::new();
        let mut cancel = Vec::new();
        for (category, &fen) in &doc.prices {
            let known = price_item(category)?;
            if fen < 0 {
                return Err(Error::BadInput(format!(
                    "the price of {category} is not a whole number of fen"
                )));
            }
            let old: i64 = db
                .query_row(
                    "SELECT fen_per_unit FROM prices WHERE category = ?1",
                    params![category],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(known.1);
            if old != fen {
                changes.push(PolicyChange::Price {
                    price: category.to_string(),
                    from: old,
                    to: fen,
                });
                statements.push((
                    "INSERT INTO prices VALUES (?1, ?2, ?3) ON CONFLICT(category) DO UPDATE SET fen_per_unit = ?3".into(),
                    vec![category.clone().into(), known.0.to_string().into(), fen.into()],
                ));
            }
        }
        for wanted in &doc.scenarios {
            let id = wanted.id.as_str();
            let s = Self::scenario_row(&db, id)?;
            let closed = Self::scenario_closed(&db, id)?;
            if let Some(k) = wanted.k
                && k != s.k
            {
                let mut level = Level::L1;
                for g in &s.grants {
                    level = level.max(Self::dataset_row(&db, &g.dataset)?.level);
                }
                if k < default_threshold(level) {
                    return Err(Error::Refused(format!(
                        "scenario {id}: k = {k} is below the {level} minimum of {}",
                        default_threshold(level)
                    )));
                }
                refuse_closed(id, closed)?;
                changes.push(change(id, ScenarioChange::K(Change { from: s.k, to: k })));
                statements.push((
                    "UPDATE scenarios SET k = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), (k as i64).into()],
                ));
            }
            if let Some(end) = wanted.term_end.as_deref()
                && end != s.view.term_end
            {
                if parse_date(end)? < s.term_start {
                    return Err(Error::BadInput(format!(
                        "scenario {id}: the term ends before it starts"
                    )));
                }
                refuse_closed(id, closed)?;
                changes.push(change(
                    id,
                    ScenarioChange::TermEnd(Change {
                        from: s.view.term_end.clone(),
                        to: end.to_string(),
                    }),
                ));
                statements.push((
                    "UPDATE scenarios SET term_end = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), end.to_string().into()],
                ));
            }
            if let Some(rules) = wanted.export_rules.clone()
                && rules != s.export_rules
            {
                tidegate_policy::validate_export_rules(&rules, EXPORT_MAX_ROWS, EXPORT_MAX_BYTES)
                    .map_err(|r| Error::Refused(format!("scenario {id}: {r}")))?;
                // A private scenario drew its budget from its datasets when it was approved:
                // the budget it holds changes only by a new scenario, which draws again.
                let drawn: i64 = db.query_row(
                    "SELECT count(*) FROM budget_draws WHERE scenario_id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                // Once approved, a scenario holds the budget it drew (or none), whatever its
                // state: resuming a suspended one draws nothing.
                let approved = !matches!(
                    s.stored_state,
                    ScenarioState::Draft | ScenarioState::PendingApprovals
                );
                if rules.privacy_budget != s.export_rules.privacy_budget && (drawn > 0 || approved)
                {
                    return Err(Error::Refused(format!(
                        "scenario {id}: its privacy budget was drawn from its datasets when it was approved; apply for a new scenario to draw another"
                    )));
                }
                // A closed scenario's rules change no more, except to withdraw the
                // publication of its figures.
                let withdraws_only = ExportRules {
                    public_figures: true,
                    ..rules.clone()
                } == s.export_rules
                    && !rules.public_figures;
                if !withdraws_only {
                    refuse_closed(id, closed)?;
                }
                statements.push((
                    "UPDATE scenarios SET export_rules = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), to_json(&rules).into()],
                ));
                changes.push(change(
                    id,
                    ScenarioChange::ExportRules(Box::new(Change {
                        from: s.export_rules.clone(),
                        to: rules,
                    })),
                ));
            }
            if let Some(grants) = &wanted.grants
                && let Some(narrowed) = narrowed_grants(id, &s.grants, grants)?
            {
                refuse_closed(id, closed)?;
                statements.push((
                    "UPDATE scenarios SET grants = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), to_json(&narrowed).into()],
                ));
                changes.push(change(
                    id,
                    ScenarioChange::Grants(Change {
                        from: s.grants.clone(),
                        to: narrowed,
                    }),
                ));
            }
            if let Some(state) = wanted.state
                && state != s.stored_state
            {
                let action = match state {
                    ScenarioState::Suspended => "suspend",
                    ScenarioState::Active => "resume",
                    ScenarioState::Revoked => "revoke",
                    other => {
                        return Err(Error::BadInput(format!(
                            "scenario {id}: state {} cannot be set",
                            other.as_str()
                        )));
                    }
                };
                let next = tidegate_policy::can_change_scenario(actor, s.stored_state, action)?;
                refuse_closed(id, closed)?;
                changes.push(change(
                    id,
                    ScenarioChange::State(Change {
                        from: s.stored_state,
                        to: next,
                    }),
                ));
                statements.push((
                    "UPDATE scenarios SET state = ?2 WHERE id = ?1".into(),
                    vec![id.to_string().into(), next.as_str().to_string().into()],
                ));
                if next != ScenarioState::Active {
                    cancel.push(id.to_string());
                }
            }
        }
        let to = if changes.is_empty() || dry_run {
            current
        } else {
            current + 1
        };
        let answer = PolicyApplied {
            from_version: current,
            to_version: to,
            dry_run,
            changes,
        };
        if dry_run || answer.changes.is_empty() {
            return Ok(answer);
        }
        let tx = db.transaction()?;
        for (sql, values) in &statements {
            tx.execute(sql, rusqlite::params_from_iter(values.iter()))?;
        }
        tx.execute(
            "INSERT INTO settings VALUES ('policy_version', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![to.to_string()],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::PolicyApply,
            &format!("v{to}"),
            crate::audited::PolicyChanges {
                changes: answer
                    .changes
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<serde_json::Result<_>>()?,
            }
            .to_value(),
        )?;
        tx.commit()?;
        drop(db);
        self.cancel_jobs(&cancel);
        // R-EXIT: a scenario the document revoked, or whose term it ended, closes now.
        for wanted in &doc.scenarios {
            self.close_scenario(&wanted.id)?;
        }
        Ok(answer)
    }

    /// Lets an auditor check the chain through the API.
    pub fn verify_audit(&self, actor: &Principal) -> Result<crate::audit::AuditVerdict> {
        if !(actor.has_role(Role::Auditor) || actor.has_role(Role::Admin)) {
            return Err(Error::Refused(
                "only auditors and admins verify the audit log".into(),
            ));
        }
        self.judge_audit(&actor.id)
    }

    /// The sweep's verification of the audit log: the entries verified, and the first bad
    /// one (an alert was raised for it).
    pub(super) fn verify_audit_scheduled(&self) -> Result<(u64, Option<u64>)> {
        let v = self.judge_audit(super::SWEEP_ACTOR)?;
        Ok((v.entries, v.first_bad.map(|(n, _)| n)))
    }

    /// The audit log judged against its chain, its signed checkpoints and what this process
    /// wrote to it (R-MONITOR). Only what the log held when a read began is judged (an append
    /// racing the read may leave a half-written last line); a log shorter than that, or whose
    /// last entry is not the one written, is bad. A failure must show in two reads before it
    /// is an alert; a log or checkpoint file that cannot be read as one is an alert too (and
    /// an error to the caller). Alerts name the entry, never its content.
    fn judge_audit(&self, by: &str) -> Result<crate::audit::AuditVerdict> {
        let _one_at_a_time = self
            .audit_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = hex::decode(self.signer.public_key_hex())
            .map_err(|_| Error::Internal("public key encoding".into()))?;
        let once = || -> Result<crate::audit::AuditVerdict> {
            let (held, head) = self.audit.written();
            let mut v = crate::audit::verify_file(self.audit.path(), Some(&key))?;
            v.first_bad = v.first_bad.filter(|(n, _)| *n <= held);
            if v.first_bad.is_none() {
                if v.entries < held {
                    v.first_bad = Some((
                        v.entries + 1,
                        format!(
                            "missing: the platform wrote {held} entries (truncated or deleted)"
                        ),
                    ));
                } else if v.entries == held && v.head != head {
                    v.first_bad = Some((
                        held,
                        "is not the entry the platform wrote last (changed)".to_string(),
                    ));
                }
            }
            v.entries = v.entries.min(held);
            Ok(v)
        };
        let judged = match once() {
            Ok(v) if v.first_bad.is_none() => Ok(v),
            _ => once(),
        };
        let evidence = match &judged {
            Ok(v) => v
                .first_bad
                .as_ref()
                .map(|(entry, _)| json!({ "first_bad_entry": entry, "verified_by": by })),
            Err(_) => Some(json!({
                "unreadable": "the log, its checkpoints or its prune anchor could not be read as such",
                "verified_by": by,
            })),
        };
        if let Some(evidence) = evidence {
            tracing::error!(verified_by = by, "the audit log failed verification");
            // A log that no longer takes entries still answers with its verdict.
            if let Err(e) = self.raise_alert_now(super::alerts::Raised {
                kind: tidegate_policy::AlertKind::AuditFailure,
                org: None,
                scenario: None,
                evidence,
            }) {
                tracing::error!(error = %e, "the audit log failed verification and the alert could not be raised");
            }
        }
        judged
    }

    /// Retention (R-AUDIT): an admin prunes the audit log's sealed segments whose entries are
    /// all older than `before`, which must lie at least 180 days back. Nothing younger is ever
    /// deleted, by this or by anything else (an exit keeps the logs). The prune is audited.
    pub fn prune_audit(&self, actor: &Principal, before: &str) -> Result<Pruned> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let before = parse_date(before)?;
        let pruned = self.audit.prune(before, today())?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::AuditPrune,
            "audit",
            crate::audited::AuditPrune {
                before: before.to_string(),
                entries: pruned,
            }
            .to_value(),
        )?;
        Ok(Pruned {
            before: before.to_string(),
            entries_pruned: pruned,
        })
    }

    /// Writes a signed checkpoint of the audit log now (at shutdown, and by the demo).
    pub fn checkpoint(&self) -> Result<()> {
        self.audit.checkpoint()
    }
}

/// R-EXIT: a closed scenario's results are destroyed; nothing of it changes again (a longer
/// term would run jobs whose results are thrown away).
/// A change to one field of a scenario.
fn change(scenario: &str, field: ScenarioChange) -> PolicyChange {
    PolicyChange::Scenario {
        scenario: scenario.to_string(),
        field,
    }
}

fn refuse_closed(id: &str, closed: bool) -> Result<()> {
    if closed {
        Err(Error::Refused(format!(
            "scenario {id} is closed: its results were destroyed; apply for a new scenario"
        )))
    } else {
        Ok(())
    }
}

/// The grants a policy document asks for, when they differ from the current ones and only
/// narrow them: fewer datasets, fewer columns, the same pinned versions. Widening is refused.
fn narrowed_grants(
    scenario: &str,
    current: &[GrantRequest],
    wanted: &[GrantRequest],
) -> Result<Option<Vec<GrantRequest>>> {
    let mut narrowed = Vec::new();
    for w in wanted {
        let Some(c) = current.iter().find(|c| c.dataset == w.dataset) else {
            return Err(Error::Refused(format!(
                "scenario {scenario}: dataset {} is not granted; widening a grant needs a new application and its approvals",
                w.dataset
            )));
        };
        if let Some(extra) = w.columns.iter().find(|col| !c.columns.contains(col)) {
            return Err(Error::Refused(format!(
                "scenario {scenario}: column {extra} of {} is not granted; widening a grant needs a new application and its approvals",
                w.dataset
            )));
        }
        if w.version != c.version {
            return Err(Error::Refused(format!(
                "scenario {scenario}: the pinned version of {} moves only by its provider (scenario repin)",
                w.dataset
            )));
        }
        if w.columns.is_empty() {
            return Err(Error::BadInput(format!(
                "scenario {scenario}: a grant of {} names no column; drop the dataset instead",
                w.dataset
            )));
        }
    }
    // In the current order, so that a reordered document is no change.
    for c in current {
        if let Some(w) = wanted.iter().find(|w| w.dataset == c.dataset) {
            narrowed.push(GrantRequest {
                dataset: c.dataset.clone(),
                columns: c
                    .columns
                    .iter()
                    .filter(|col| w.columns.contains(col))
                    .cloned()
                    .collect(),
                version: c.version,
            });
        }
    }
    if narrowed.is_empty() {
        return Err(Error::BadInput(format!(
            "scenario {scenario}: a scenario keeps at least one dataset; revoke it instead"
        )));
    }
    let same = narrowed.len() == current.len()
        && narrowed
            .iter()
            .zip(current)
            .all(|(n, c)| n.dataset == c.dataset && n.columns == c.columns);
    Ok((!same).then_some(narrowed))
}
