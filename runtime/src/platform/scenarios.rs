//! Scenarios and their orgs: application, approvals, drafts, repinning, suspension and revocation, freeze and exit.

use super::*;

impl Platform {
    pub fn apply_scenario(&self, actor: &Principal, req: ScenarioRequest) -> Result<ScenarioView> {
        tidegate_policy::can_apply_for_scenario(actor)?;
        let (start, end) = (parse_date(&req.term_start)?, parse_date(&req.term_end)?);
        tidegate_policy::check_new_term(start, end, today())
            .map_err(|r| Error::BadInput(r.reason))?;
        tidegate_policy::check_name("the scenario's name", &req.name)
            .map_err(|r| Error::BadInput(r.reason))?;
        if req.grants.is_empty() {
            return Err(Error::BadInput(
                "a scenario names at least one dataset".into(),
            ));
        }
        tidegate_policy::validate_export_rules(
            &req.export_rules,
            EXPORT_MAX_ROWS,
            EXPORT_MAX_BYTES,
        )?;
        let id = new_id("sc");
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // S13: a unit its latest annual evaluation bars from reapplying applies for nothing.
        if let Some(year) = Self::barred_from_reapplying(&db, &actor.org)? {
            return Err(Error::Refused(format!(
                "the authority's evaluation of {year} says your unit may not apply again"
            )));
        }
        let mut level = Level::L1;
        let mut grants = Vec::new();
        for g in &req.grants {
            let d = Self::dataset_row(&db, &g.dataset)?;
            if d.level == Level::L4 {
                return Err(Error::Refused("L4 data can never be granted".into()));
            }
            if d.pending {
                return Err(Error::Refused(format!(
                    "dataset {} is social data awaiting an admin's approval",
                    d.name
                )));
            }
            if d.origin == Origin::Social && d.org != actor.org {
                return Err(Error::Refused(format!(
                    "dataset {} is another org's social data",
                    d.name
                )));
            }
            for c in &g.columns {
                if !d.columns.iter().any(|spec| &spec.name == c) {
                    return Err(Error::BadInput(format!(
                        "dataset {} has no column {c}",
                        d.name
                    )));
                }
            }
            level = level.max(d.level);
            grants.push(GrantRequest {
                dataset: d.id,
                columns: g.columns.clone(),
                version: None,
            });
        }
        // The scenario may ask for a stricter threshold, never a weaker one than the default.
        let k = tidegate_policy::scenario_threshold(req.k, level);
        let state = if req.draft {
            ScenarioState::Draft
        } else {
            ScenarioState::PendingApprovals
        };
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO scenarios (id, name, org_id, key_area, purpose, public_interest, grants,
                 term_start, term_end, k, planned_products, state, applied_by, created_at, export_rules)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                id, req.name, actor.org, req.key_area, req.purpose, req.public_interest,
                to_json(&grants), req.term_start, req.term_end, k as i64,
                to_json(&req.planned_products), state.as_str(), actor.id, crate::now_rfc3339(),
                to_json(&req.export_rules)
            ],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::ScenarioApply,
            &id,
            crate::audited::ScenarioApply {
                name: req.name.clone(),
                public_interest: req.public_interest,
                grants: grants.clone(),
                term: [req.term_start.clone(), req.term_end.clone()],
                k,
                export_rules: serde_json::to_value(&req.export_rules)?,
                state,
            }
            .to_value(),
        )?;
        tx.commit()?;
        drop(db);
        self.get_scenario(actor, &id)
    }

    pub(super) fn scenario_row(db: &Connection, id: &str) -> Result<ScenarioRow> {
        let ScenarioColumns {
            id,
            name,
            org,
            key_area,
            purpose,
            public_interest,
            grants,
            term_start: ts,
            term_end: te,
            k,
            planned_products: products,
            state,
            export_rules: rules,
        } = db
            .query_row(
                "SELECT id, name, org_id, key_area, purpose, public_interest, grants, term_start,
                        term_end, k, planned_products, state, export_rules
                 FROM scenarios WHERE id = ?1",
                params![id],
                ScenarioColumns::from_row,
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("scenario {id}")))?;
        let export_rules: ExportRules = from_json(&rules)?;
        let grants: Vec<GrantRequest> = from_json(&grants)?;
        let stored_state: ScenarioState = state.parse().map_err(Error::Integrity)?;
        let (term_start, term_end) = (parse_date(&ts)?, parse_date(&te)?);
        let approvals: Vec<ApprovalView> = db
            .prepare("SELECT principal_id, as_role, at FROM scenario_approvals WHERE scenario_id = ?1 ORDER BY at")?
            .query_map(params![id], |r| {
                Ok(ApprovalView { by: r.get(0)?, as_role: r.get(1)?, at: r.get(2)?, comment: None })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let approvals_state = Self::approvals_state(db, &id, &grants)?;
        let effective =
            tidegate_policy::scenario_state(stored_state, term_start, term_end, today());
        let view = ScenarioView {
            id: id.clone(),
            name: name.clone(),
            org: org.clone(),
            key_area,
            purpose,
            public_interest,
            grants: grants.clone(),
            term_start: ts,
            term_end: te,
            k: k as u64,
            planned_products: from_json(&products)?,
            export_rules: export_rules.clone(),
            state: effective,
            approvals,
            missing_approvals: if stored_state == ScenarioState::PendingApprovals {
                approvals_state.missing()
            } else {
                Vec::new()
            },
        };
        Ok(ScenarioRow {
            id,
            name,
            org,
            grants,
            term_start,
            term_end,
            k: k as u64,
            export_rules,
            stored_state,
            view,
        })
    }

    pub(super) fn approvals_state(
        db: &Connection,
        id: &str,
        grants: &[GrantRequest],
    ) -> Result<ScenarioApprovals> {
        let mut a = ScenarioApprovals {
            applied_by: db.query_row(
                "SELECT applied_by FROM scenarios WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?,
            ..ScenarioApprovals::default()
        };
        // The provider of each public dataset approves, and every org the dataset names; social
        // data was approved by an admin when it was imported.
        for g in grants {
            let d = Self::dataset_row(db, &g.dataset)?;
            if d.origin == Origin::Public {
                a.require(&d.org, format!("provider of {}", d.name));
            }
            for org in &d.approvers {
                a.require(org, format!("named approver of {}", d.name));
            }
        }
        let mut stmt =
            db.prepare("SELECT as_role, org_id FROM scenario_approvals WHERE scenario_id = ?1")?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (role, org) = row?;
            if role == "admin" {
                a.admin_approved = true;
            } else {
                a.orgs_approved.insert(org);
            }
        }
        Ok(a)
    }

    /// Whether `actor` may see the scenario at all (others get "not found").
    pub(super) fn can_see_scenario(
        db: &Connection,
        actor: &Principal,
        s: &ScenarioRow,
    ) -> Result<bool> {
        if actor.org == s.org
            || tidegate_policy::oversees_all_orgs(actor, Self::org_kind(db, &actor.org)?)
        {
            return Ok(true);
        }
        for g in &s.grants {
            let d = Self::dataset_row(db, &g.dataset)?;
            if actor.has_role(Role::Provider)
                && (d.org == actor.org || d.approvers.contains(&actor.org))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn get_scenario(&self, actor: &Principal, id: &str) -> Result<ScenarioView> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = Self::scenario_row(&db, id)?;
        if !Self::can_see_scenario(&db, actor, &s)? {
            return Err(Error::NotFound(format!("scenario {id}")));
        }
        Ok(s.view)
    }

    /// R-SCENARIO: the applying org submits its draft; the approvals it needs are asked for.
    pub fn submit_scenario(&self, actor: &Principal, id: &str) -> Result<ScenarioView> {
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let s = Self::scenario_row(&db, id)?;
            if actor.org != s.org {
                return Err(Error::NotFound(format!("scenario {id}")));
            }
            tidegate_policy::can_submit_scenario(actor, &s.org, s.stored_state)?;
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE scenarios SET state = 'pending_approvals' WHERE id = ?1 AND state = 'draft'",
                params![id],
            )?;
            self.audit.append(
                &actor.id,
                crate::audit::Action::ScenarioSubmit,
                id,
                crate::audited::ScenarioSubmit {}.to_value(),
            )?;
            tx.commit()?;
        }
        self.get_scenario(actor, id)
    }

    /// A grant is pinned to the dataset version current at approval. The dataset's provider
    /// moves it to the newest version; the granted columns must still exist there.
    pub fn repin_grant(&self, actor: &Principal, id: &str, dataset: &str) -> Result<ScenarioView> {
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let s = Self::scenario_row(&db, id)?;
            if !Self::can_see_scenario(&db, actor, &s)? {
                return Err(Error::NotFound(format!("scenario {id}")));
            }
            let d = Self::dataset_row(&db, dataset)?;
            let Some(at) = s.grants.iter().position(|g| g.dataset == d.id) else {
                return Err(Error::BadInput(format!(
                    "scenario {id} does not grant dataset {}",
                    d.name
                )));
            };
            tidegate_policy::can_repin_grant(actor, &d.org, s.view.state)?;
            if let Some(missing) = s.grants[at]
                .columns
                .iter()
                .find(|c| !d.columns.iter().any(|spec| &spec.name == *c))
            {
                return Err(Error::Refused(format!(
                    "the newest version of {} has no column {missing}, which the scenario grants",
                    d.name
                )));
            }
            let newest = Self::latest_version(&db, &d.id)?.version;
            let from = s.grants[at].version;
            if from == Some(newest) {
                return Err(Error::BadInput(format!(
                    "the grant is already at version {newest} of {}",
                    d.name
                )));
            }
            let mut grants = s.grants.clone();
            grants[at].version = Some(newest);
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE scenarios SET grants = ?2 WHERE id = ?1",
                params![id, to_json(&grants)],
            )?;
            self.audit.append(
                &actor.id,
                crate::audit::Action::ScenarioRepin,
                id,
                crate::audited::ScenarioRepin {
                    dataset: d.id.clone(),
                    from,
                    to: newest,
                }
                .to_value(),
            )?;
            tx.commit()?;
        }
        self.get_scenario(actor, id)
    }

    /// R-SCENARIO: the admin and the provider of every requested dataset approve; the last
    /// approval makes the scenario active.
    pub fn approve_scenario(&self, actor: &Principal, id: &str) -> Result<ScenarioView> {
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let s = Self::scenario_row(&db, id)?;
            if !Self::can_see_scenario(&db, actor, &s)? {
                return Err(Error::NotFound(format!("scenario {id}")));
            }
            let mut approvals = Self::approvals_state(&db, id, &s.grants)?;
            let as_admin =
                tidegate_policy::can_approve_scenario(actor, &approvals, s.stored_state)?;
            tidegate_policy::can_activate_scenario(Self::frozen(&db, &s.org)?.is_some())?;
            if as_admin {
                approvals.admin_approved = true;
            } else {
                approvals.orgs_approved.insert(actor.org.clone());
            }
            let activates = approvals.complete();
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO scenario_approvals VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    actor.id,
                    if as_admin { "admin" } else { "provider" },
                    actor.org,
                    crate::now_rfc3339()
                ],
            )?;
            let mut draws = Vec::new();
            if activates {
                // R-GATE 7: a private scenario draws its budget from every dataset it reads, at
                // activation; the datasets' budgets and each org's cap bound what any number
                // of scenarios can spend.
                if let Some(asked) = s.export_rules.privacy_budget {
                    let datasets: std::collections::BTreeSet<&str> =
                        s.grants.iter().map(|g| g.dataset.as_str()).collect();
                    for dataset in datasets {
                        let (name, total, per_org): (String, f64, f64) = tx.query_row(
                            "SELECT name, dp_total, dp_per_org FROM datasets WHERE id = ?1",
                            params![dataset],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )?;
                        let (drawn, by_org): (f64, f64) = tx.query_row(
                            "SELECT COALESCE(SUM(epsilon), 0),
                                    COALESCE(SUM(CASE WHEN org_id = ?2 THEN epsilon END), 0)
                             FROM budget_draws WHERE dataset_id = ?1",
                            params![dataset, s.org],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        tidegate_policy::DatasetBudget { total, per_org }
                            .can_draw(&name, asked, drawn, by_org)
                            .map_err(Error::Refused)?;
                        tx.execute(
                            "INSERT INTO budget_draws VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![dataset, id, s.org, asked, crate::now_rfc3339()],
                        )?;
                        draws.push(crate::audited::BudgetDraw {
                            dataset: dataset.to_string(),
                            epsilon: asked,
                        });
                    }
                }
                let mut pinned = s.grants.clone();
                for g in &mut pinned {
                    g.version = Some(Self::latest_version(&tx, &g.dataset)?.version);
                }
                tx.execute(
                    "UPDATE scenarios SET state = 'active', grants = ?2 WHERE id = ?1",
                    params![id, to_json(&pinned)],
                )?;
            }
            self.audit.append(
                &actor.id,
                crate::audit::Action::ScenarioApprove,
                id,
                crate::audited::ScenarioApprove {
                    as_role: if as_admin { "admin" } else { "provider" }.to_string(),
                    activated: activates,
                    budget_draws: draws,
                }
                .to_value(),
            )?;
            tx.commit()?;
        }
        self.get_scenario(actor, id)
    }

    /// R-EXIT: ends an org's authorization. Its scenarios end as exited and their running jobs
    /// cancelled, its tokens closed, its results, export files and modules destroyed (keys
    /// wiped, files deleted, SQLite pages overwritten and the WAL truncated); the logs stay. The
    /// platform signs an exit certificate listing what was destroyed, with hashes.
    pub fn exit_org(
        &self,
        actor: &Principal,
        org: &str,
        reason: &str,
    ) -> Result<crate::documents::ExitCertificate> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let org = Self::org_id(&self.lock_db(), org)?;
        if org == actor.org {
            return Err(Error::Refused("an admin cannot exit their own org".into()));
        }
        self.exit_org_as(&actor.id, &org, reason)
    }

    /// [`Platform::exit_org`] once decided: by an admin (`actor`), or by the sweep when the
    /// org's authorization ran out.
    pub(super) fn exit_org_as(
        &self,
        actor: &str,
        org: &str,
        reason: &str,
    ) -> Result<crate::documents::ExitCertificate> {
        use crate::documents::{Destroyed, DestroyedKind};
        // No export is between its gate and its record while the org's data goes.
        let _gate = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let org = Self::org_id(&db, org)?;
        let scenarios: Vec<String> = db
            .prepare("SELECT id FROM scenarios WHERE org_id = ?1")?
            .query_map(params![org], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut destroyed = Vec::new();
        let mut files = Vec::new();
        let tx = db.transaction()?;
        for sid in &scenarios {
            Self::destroy_scenario_results(
                &tx,
                self,
                sid,
                false,
                true,
                &mut destroyed,
                &mut files,
            )?;
            let modules: Vec<String> = tx
                .prepare("SELECT hash FROM modules WHERE scenario_id = ?1 AND length(wasm) > 0")?
                .query_map(params![sid], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for hash in modules {
                destroyed.push(Destroyed::new(DestroyedKind::Module, &hash, Some(&hash)));
            }
            tx.execute(
                "UPDATE modules SET wasm = x'' WHERE scenario_id = ?1",
                params![sid],
            )?;
            tx.execute(
                "UPDATE scenarios SET state = 'exited', closed_at = ?2 WHERE id = ?1",
                params![sid, crate::now_rfc3339()],
            )?;
        }
        // The org's social data goes too: its versions' keys and files.
        let social: Vec<(String, i64, String)> = tx
            .prepare(
                "SELECT v.dataset_id, v.version, v.content_hash FROM dataset_versions v
                 JOIN datasets d ON v.dataset_id = d.id
                 WHERE d.org_id = ?1 AND d.origin LIKE 'social%' AND length(v.wrapped_key) > 0",
            )?
            .query_map(params![org], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // The gate's memory of the org's data goes too: every audit record over one of its
        // datasets. (The records of what the exiting org itself released over others' data
        // stay: those cells are out in the world, and later releases are judged with them.)
        let memories: Vec<(String, String)> = tx
            .prepare("SELECT e.id, e.audit_datasets FROM exports e WHERE e.audit_key IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let theirs: BTreeSet<String> = social.iter().map(|(d, _, _)| d.clone()).collect();
        for (export, datasets) in memories {
            if from_json::<Vec<String>>(&datasets)?
                .iter()
                .any(|d| theirs.contains(d))
            {
                destroyed.push(Destroyed::new(DestroyedKind::GateMemory, &export, None));
                files.push(self.object_path("audit", &export));
                tx.execute(
                    "UPDATE exports SET audit_key = NULL WHERE id = ?1",
                    params![export],
                )?;
            }
        }
        for (dataset, version, hash) in social {
            let object = format!("{dataset}/v{version}");
            destroyed.push(Destroyed::new(
                DestroyedKind::SocialDataset,
                &object,
                Some(&hash),
            ));
            files.push(self.object_path("datasets", &object));
            tx.execute(
                "UPDATE dataset_versions SET wrapped_key = x'' WHERE dataset_id = ?1 AND version = ?2",
                params![dataset, version],
            )?;
        }
        // Close every token of the org: no stored hash can match a token any more.
        tx.execute(
            "UPDATE principals SET token_hash = 'closed:' || id WHERE org_id = ?1",
            params![org],
        )?;
        let now = crate::now_rfc3339();
        let certificate = crate::documents::ExitCertificateBody {
            format: crate::documents::EXIT_CERTIFICATE_FORMAT.into(),
            org: org.clone(),
            reason: reason.to_string(),
            at: now.clone(),
            scenarios_exited: scenarios.clone(),
            destroyed,
            kept: "audit log and its checkpoints (retention of at least 180 days)".into(),
        };
        let body = crate::documents::signed_bytes(&certificate)?;
        let signature = hex::encode(self.signer.sign(&body));
        tx.execute(
            "UPDATE orgs SET exited_at = ?2 WHERE id = ?1",
            params![org, now],
        )?;
        self.audit.append_at(
            now.clone(),
            actor,
            crate::audit::Action::OrgExit,
            &org,
            crate::audited::OrgExit {
                destroyed: certificate.destroyed.len(),
                certificate_sha256: sha256_hex(&body),
            }
            .to_value(),
        )?;
        tx.commit()?;
        // The memory in use is rebuilt from the records that remain.
        self.ledgers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        // Cancel what still runs, then remove the files; the keys are already gone.
        self.cancel_jobs(&scenarios);
        Self::remove_files(&files)?;
        // Overwritten pages may linger in the WAL until a checkpoint truncates it.
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(crate::documents::ExitCertificate {
            certificate,
            signature,
        })
    }

    /// Cancels the running jobs of these scenarios: their guests trap at the next epoch tick.
    pub(super) fn cancel_jobs(&self, scenarios: &[String]) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in scenarios {
            for (_, meter) in running.get(id).into_iter().flatten() {
                meter.cancel();
            }
        }
    }

    /// R-MONITOR: an admin freezes an org with one command (every active scenario of the org
    /// is suspended and its running jobs cancelled) or lifts the freeze (the scenarios the
    /// freeze suspended are resumed; one suspended on its own stays so). Returns them.
    pub fn freeze_org(&self, actor: &Principal, org: &str, freeze: bool) -> Result<Vec<String>> {
        let (from, to, action) = if freeze {
            ("active", "suspended", crate::audit::Action::OrgFreeze)
        } else {
            ("suspended", "active", crate::audit::Action::OrgUnfreeze)
        };
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let org = Self::org_id(&db, org)?;
        tidegate_policy::can_freeze_org(actor, Self::org_kind(&db, &org)?)?;
        let already = Self::frozen(&db, &org)?;
        let changed: Vec<String> = if freeze {
            db.prepare("SELECT id FROM scenarios WHERE org_id = ?1 AND state = ?2")?
                .query_map(params![org, from], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            // Only what the freeze suspended: a scenario stopped on its own stays stopped.
            already.clone().unwrap_or_default()
        };
        let tx = db.transaction()?;
        for id in &changed {
            tx.execute(
                "UPDATE scenarios SET state = ?2 WHERE id = ?1 AND state = ?3",
                params![id, to, from],
            )?;
        }
        if freeze {
            // A second freeze adds to what the first suspended: the unfreeze restores both.
            let mut suspended = already.unwrap_or_default();
            for id in &changed {
                if !suspended.contains(id) {
                    suspended.push(id.clone());
                }
            }
            Self::set_frozen(&tx, &org, Some(&suspended))?;
        } else {
            Self::set_frozen(&tx, &org, None)?;
        }
        self.audit.append(
            &actor.id,
            action,
            &org,
            crate::audited::value(&crate::audited::OrgFreeze {
                scenarios: changed.clone(),
            }),
        )?;
        if freeze {
            // R-MONITOR: a freeze is an alert of its own, for whoever watches the queue.
            self.raise_alert(
                &tx,
                super::alerts::Raised {
                    kind: tidegate_policy::AlertKind::Freeze,
                    org: Some(&org),
                    scenario: None,
                    evidence: json!({ "frozen_by": actor.id, "scenarios_suspended": changed }),
                },
            )?;
        }
        tx.commit()?;
        if freeze {
            self.cancel_jobs(&changed);
        }
        Ok(changed)
    }

    /// Whether `org` is frozen, and the scenarios its freeze suspended (the unfreeze restores
    /// them).
    pub(super) fn frozen(db: &Connection, org: &str) -> Result<Option<Vec<String>>> {
        db.query_row(
            "SELECT value FROM settings WHERE key = 'frozen:' || ?1",
            params![org],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(|s| from_json(&s))
        .transpose()
    }

    /// Records `org` frozen with the scenarios its freeze suspended, or lifts the freeze.
    fn set_frozen(db: &Connection, org: &str, suspended: Option<&[String]>) -> Result<()> {
        match suspended {
            Some(ids) => db.execute(
                "INSERT INTO settings VALUES ('frozen:' || ?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![org, to_json(&ids)],
            )?,
            None => db.execute(
                "DELETE FROM settings WHERE key = 'frozen:' || ?1",
                params![org],
            )?,
        };
        Ok(())
    }

    /// R-GATE 7: after a job that stopped while running or an export refused for what the
    /// data holds (each may tell one bit about one value), counts the scenario's such
    /// outcomes since an admin last resumed it; at [`tidegate_policy::MAX_WITHHELD_FAILURES`]
    /// the scenario is suspended (a risk stop, an alert in the log). Returns whether it was;
    /// the caller cancels its jobs after the commit.
    pub(super) fn ration_withheld(
        &self,
        tx: &rusqlite::Transaction<'_>,
        scenario: &str,
        at: &str,
    ) -> Result<bool> {
        let failures: i64 = tx.query_row(
            "SELECT (SELECT count(*) FROM jobs j WHERE j.scenario_id = s.id AND j.withheld = 1
                       AND j.finished_at > COALESCE(s.failures_cleared_at, ''))
                  + (SELECT count(*) FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = s.id AND e.withheld = 1
                       AND e.created_at > COALESCE(s.failures_cleared_at, ''))
             FROM scenarios s WHERE s.id = ?1",
            params![scenario],
            |r| r.get(0),
        )?;
        // R-MONITOR: repeated breaches raise an alert before they suspend the scenario.
        let t = Self::alert_settings_in(tx)?.thresholds;
        if failures as u64 >= t.breaches {
            let org: String = tx.query_row(
                "SELECT org_id FROM scenarios WHERE id = ?1",
                params![scenario],
                |r| r.get(0),
            )?;
            self.raise_alert(
                tx,
                super::alerts::Raised {
                    kind: tidegate_policy::AlertKind::LimitBreaches,
                    org: Some(&org),
                    scenario: Some(scenario),
                    evidence: json!({ "failures_since_resumed": failures }),
                },
            )?;
        }
        if (failures as u64) < tidegate_policy::MAX_WITHHELD_FAILURES {
            return Ok(false);
        }
        let suspended = tx.execute(
            "UPDATE scenarios SET state = 'suspended' WHERE id = ?1 AND state = 'active'",
            params![scenario],
        )?;
        if suspended > 0 {
            self.audit.append_at(
                at.to_string(),
                GATE_ACTOR,
                crate::audit::Action::ScenarioSuspend,
                scenario,
                crate::audited::ScenarioRationed {
                    reason:
                        "jobs that stopped while running or exports refused for what the data holds"
                            .into(),
                    failures,
                    alert: true,
                }
                .to_value(),
            )?;
        }
        Ok(suspended > 0)
    }

    /// R-SCENARIO: an admin suspends, resumes or revokes a scenario; suspending or revoking
    /// cancels its running jobs at once.
    pub fn change_scenario(
        &self,
        actor: &Principal,
        id: &str,
        action: &str,
    ) -> Result<ScenarioView> {
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let s = Self::scenario_row(&db, id)?;
            let next = tidegate_policy::can_change_scenario(actor, s.view.state, action)?;
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE scenarios SET state = ?2 WHERE id = ?1",
                params![id, next.as_str()],
            )?;
            if action == "resume" {
                // The admin looked at the failures that suspended it: they count no more.
                tx.execute(
                    "UPDATE scenarios SET failures_cleared_at = ?2 WHERE id = ?1",
                    params![id, crate::now_rfc3339()],
                )?;
            }
            // An admin's own decision on a scenario during a freeze stands after it: the
            // unfreeze no longer restores it.
            if let Some(mut suspended) = Self::frozen(&tx, &s.org)? {
                suspended.retain(|x| x != id);
                Self::set_frozen(&tx, &s.org, Some(&suspended))?;
            }
            self.audit.append(
                &actor.id,
                match next {
                    ScenarioState::Active => crate::audit::Action::ScenarioResume,
                    ScenarioState::Suspended => crate::audit::Action::ScenarioSuspend,
                    _ => crate::audit::Action::ScenarioRevoke,
                },
                id,
                crate::audited::value(&crate::audited::ScenarioChange {
                    from: s.view.state,
                    to: next,
                }),
            )?;
            tx.commit()?;
            if next != ScenarioState::Active {
                self.cancel_jobs(&[id.to_string()]);
            }
        }
        // R-EXIT: a revoked scenario closes at once (its results destroyed, a receipt signed).
        self.close_scenario(id)?;
        self.get_scenario(actor, id)
    }

    // ----- Modules -----
}

/// A `scenarios` row as stored, read by column name.
struct ScenarioColumns {
    id: String,
    name: String,
    org: String,
    key_area: String,
    purpose: String,
    public_interest: bool,
    grants: String,
    term_start: String,
    term_end: String,
    k: i64,
    planned_products: String,
    state: String,
    export_rules: String,
}

impl ScenarioColumns {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ScenarioColumns {
            id: r.get("id")?,
            name: r.get("name")?,
            org: r.get("org_id")?,
            key_area: r.get("key_area")?,
            purpose: r.get("purpose")?,
            public_interest: r.get("public_interest")?,
            grants: r.get("grants")?,
            term_start: r.get("term_start")?,
            term_end: r.get("term_end")?,
            k: r.get("k")?,
            planned_products: r.get("planned_products")?,
            state: r.get("state")?,
            export_rules: r.get("export_rules")?,
        })
    }
}
