//! Exports: the gate, the review state machine, release of signed bundles.

use super::*;
use tidegate_policy::{Decision, ExportState};

impl Platform {
    /// R-GATE: runs the gate over a job's result; a passing result goes to review.
    pub fn request_export(&self, actor: &Principal, job_id: &str) -> Result<ExportView> {
        self.request_export_spending(actor, job_id, None)
    }

    /// Asks for an export; a scenario that uses differential privacy spends `epsilon` of its
    /// budget on it when the gate passes (R-GATE 7), in the same transaction that records it.
    pub fn request_export_spending(
        &self,
        actor: &Principal,
        job_id: &str,
        epsilon: Option<f64>,
    ) -> Result<ExportView> {
        self.request_export_amending(actor, job_id, epsilon, None)
    }

    /// Asks for an export that, when `amends` names one, answers a request a reviewer returned:
    /// the new request is linked to it (and it to the new one), for the reviewer to read side
    /// by side. Only a returned export of the same scenario and org, not amended before.
    pub fn request_export_amending(
        &self,
        actor: &Principal,
        job_id: &str,
        epsilon: Option<f64>,
        amends: Option<&str>,
    ) -> Result<ExportView> {
        // One export through the gate at a time, so that each is checked against every earlier
        // release; the metadata lock is let go while the gate works (other requests go on) and
        // taken again to record the outcome.
        let _gate = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let JobRecord {
            view: job,
            result_hash,
            wrapped,
            shape,
            inputs,
            ..
        } = Self::job_row(&db, job_id)?;
        let s = Self::scenario_row(&db, &job.scenario)?;
        if actor.org != s.org {
            return Err(Error::NotFound(format!("job {job_id}")));
        }
        tidegate_policy::can_request_export(actor, &s.org, s.view.state)?;
        if let Some(earlier) = amends {
            let found: Option<(String, String, String, Option<String>)> = db
                .query_row(
                    "SELECT e.state, e.org_id, j.scenario_id, e.amended_by
                     FROM exports e JOIN jobs j ON e.job_id = j.id WHERE e.id = ?1",
                    params![earlier],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((state, _, scenario, amended_by)) = found.filter(|f| f.1 == actor.org) else {
                return Err(Error::NotFound(format!("export {earlier}")));
            };
            if stored_state::<ExportState>(&state)? != ExportState::Returned {
                return Err(Error::BadInput(format!(
                    "export {earlier} is {state}: only a returned export is amended"
                )));
            }
            if scenario != job.scenario {
                return Err(Error::BadInput(format!(
                    "export {earlier} is of another scenario than job {job_id}"
                )));
            }
            if let Some(by) = amended_by {
                return Err(Error::BadInput(format!(
                    "export {earlier} was amended already, by {by}"
                )));
            }
        }
        let (Some(result_hash), Some(wrapped), Some(shape)) = (result_hash, wrapped, shape) else {
            return Err(Error::BadInput(format!(
                "job {job_id} has no result to export ({})",
                job.state
            )));
        };
        let shape: QueryShape = from_json(&shape)?;
        let parquet = self.load_object("results", job_id, &wrapped)?;
        if sha256_hex(&parquet) != result_hash {
            return Err(Error::Integrity(format!(
                "the stored result of job {job_id} changed"
            )));
        }
        let batches = from_parquet(parquet)?;
        let pseudonyms = self.pseudonym_root(&db)?.pseudonym_key(&s.id);
        // R-GATE 6: what the scenario's earlier exports released, to compare with.
        let earlier_keys: Vec<(String, Vec<u8>, String)> = db
            .prepare(
                "SELECT e.id, e.groups_key, j.inputs FROM exports e JOIN jobs j ON e.job_id = j.id
                 WHERE j.scenario_id = ?1 AND e.groups_key IS NOT NULL AND e.audit_key IS NULL
                 ORDER BY e.created_at",
            )?
            .query_map(params![s.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // Which dataset versions a job read: the same data, or newer.
        let versions = |inputs: &[StoredInput]| -> BTreeSet<(String, i64)> {
            inputs
                .iter()
                .map(|i| (i.dataset.clone(), i.version))
                .collect()
        };
        let ours = versions(&inputs);
        let mut earlier = Vec::with_capacity(earlier_keys.len());
        for (export, key, their_inputs) in &earlier_keys {
            earlier.push(gate::Earlier {
                groups: from_json::<gate::Groups>(
                    &String::from_utf8(self.load_object("gate", export, key)?)
                        .map_err(|_| Error::Integrity(format!("the groups of export {export}")))?,
                )?,
                same_data: versions(&from_json::<Vec<StoredInput>>(their_inputs)?) == ours,
            });
        }
        // R-GATE 6, the gate's memory: each row's sets of subjects, and everything released
        // over the datasets with subjects that the job read, by any scenario of any org.
        // (Earlier exports kept before subjects were remembered are compared by key above.)
        let subjects_key: Option<Vec<u8>> = db.query_row(
            "SELECT subjects_key FROM jobs WHERE id = ?1",
            params![job_id],
            |r| r.get(0),
        )?;
        // The datasets with subjects the job read: the gate's memory is kept per dataset.
        let mut with_subjects: Vec<String> = Vec::new();
        for i in &inputs {
            let dataset = Self::dataset_row(&db, &i.dataset)?;
            if dataset.columns.iter().any(|c| c.has_tag(ColumnTag::Entity))
                && !with_subjects.contains(&dataset.id)
            {
                with_subjects.push(dataset.id);
            }
        }
        // Per dataset, each result row's sets of its stored rows.
        let sets = match &subjects_key {
            Some(w) => {
                let bytes = self.load_object("subjects", job_id, w)?;
                // Sets kept before each dataset was given its own rows named a join's rows
                // otherwise and a row read twice once: such a job is run again.
                if !tidegate_policy::kept_by_dataset(&bytes) {
                    return Err(Error::BadInput(format!(
                        "job {job_id} ran before the export gate remembered each dataset's rows apart; run the job again to export its result"
                    )));
                }
                Some(
                    tidegate_policy::decode_by_dataset(&bytes, &with_subjects)
                        .ok_or_else(|| Error::Integrity(format!("the subjects of job {job_id}")))?,
                )
            }
            None => None,
        };
        // A job that ran before the gate remembered releases has no sets: its exact release
        // over data with subjects would go unremembered, so it is not exported; run it again.
        if sets.is_none()
            && !with_subjects.is_empty()
            && job.level > Level::L1
            && shape.aggregated
            && s.export_rules.privacy_budget.is_none()
            && shape.privacy.is_none()
        {
            return Err(Error::BadInput(format!(
                "job {job_id} ran before the export gate remembered what each release holds; run the job again to export its result"
            )));
        }
        // The memory of sums is kept once a cell over the data is suppressed for dominance:
        // loaded now if this result may have such a cell (the gate decides which).
        let may_dominate = batches.iter().any(|b| {
            b.column_by_name(crate::hidden::DOMINATED)
                .and_then(|c| arrow::array::AsArray::as_boolean_opt(c))
                .is_some_and(|c| c.true_count() > 0)
        });
        let memories = match sets {
            Some(sets) => with_subjects
                .iter()
                .zip(sets)
                .map(|(d, rows)| {
                    let (ledger, values) = self.gate_memory(&db, d)?;
                    let value_ledger = match values {
                        None if may_dominate => Some(self.sums_memory(&db, d)?),
                        v => v,
                    };
                    Ok(gate::DatasetMemory {
                        dataset: d.clone(),
                        ledger,
                        value_ledger,
                        rows,
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)?,
            None => None,
        };
        let id = new_id("ex");
        let unapproved = Self::unapproved_modules(&db, &job.modules, &s.id)?;
        let provenance = if unapproved > 0 {
            CheckOutcome::Fail(format!(
                "{unapproved} module(s) of the job are no longer approved"
            ))
        } else {
            CheckOutcome::Pass(format!(
                "job {job_id} of active scenario {} with {} approved module(s) over {}",
                s.id,
                job.modules.len(),
                inputs
                    .iter()
                    .map(|i| format!("{}@v{}", i.name, i.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        tidegate_policy::check_epsilon(epsilon, s.export_rules.privacy_budget.is_some())
            .map_err(|r| Error::BadInput(r.reason))?;
        let spent: f64 = db.query_row(
            "SELECT COALESCE(SUM(e.epsilon), 0) FROM exports e JOIN jobs j ON e.job_id = j.id
             WHERE j.scenario_id = ?1",
            params![s.id],
            |r| r.get(0),
        )?;
        drop(db);
        let outcome = gate::evaluate(
            &GateInput {
                level: job.level,
                threshold_k: s.k,
                shape: &shape,
                provenance,
                max_rows: s.export_rules.max_rows.unwrap_or(EXPORT_MAX_ROWS),
                max_bytes: s.export_rules.max_bytes.unwrap_or(EXPORT_MAX_BYTES),
                masking: &s.export_rules.masking,
                privacy: s
                    .export_rules
                    .privacy_budget
                    .map(|budget| gate::PrivacySpend {
                        budget,
                        spent,
                        epsilon,
                    }),
                earlier: &earlier,
                pseudonyms: Some(&pseudonyms),
                dominance: s.export_rules.dominance_rule(),
                memory: memories.as_ref().map(|datasets| gate::Memory {
                    origin: &id,
                    datasets,
                }),
            },
            &batches,
        )?;
        let passed = outcome.report.passed();
        // The export is stored as Parquet (typed); the CSV of a preview or a bundle is derived
        // from it. The approval binds the Parquet's hash.
        let parquet = if passed {
            let schema = outcome
                .released
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            to_parquet_with_schema(&outcome.released, schema)?
        } else {
            Vec::new()
        };
        let (hash, wrapped, groups_key) = if passed {
            (
                Some(sha256_hex(&parquet)),
                Some(self.store_object("exports", &id, &parquet)?),
                Some(self.store_object("gate", &id, to_json(&outcome.groups).as_bytes())?),
            )
        } else {
            (None, None, None)
        };
        // What the release adds to the gate's memory: its cells' sets and the sets it
        // suppressed for fewer than k subjects, sealed, with the datasets they are over.
        let remembered = outcome.remembered.as_ref().filter(|_| passed);
        // Four lists per dataset, in the order of the datasets named with them.
        let (audit_key, audit_datasets) = match remembered {
            Some(r) if !r.datasets.is_empty() => (
                Some(
                    self.store_object(
                        "audit",
                        &id,
                        &tidegate_policy::encode_sets(
                            &r.datasets
                                .iter()
                                .flat_map(|k| {
                                    [
                                        k.released.clone(),
                                        k.protected.clone(),
                                        k.value_released.clone(),
                                        k.dominated.clone(),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        ),
                    )?,
                ),
                Some(to_json(
                    &r.datasets.iter().map(|k| &k.dataset).collect::<Vec<_>>(),
                )),
            ),
            _ => (None, None),
        };
        let checked = tidegate_policy::next_export_state(
            ExportState::Submitted,
            ExportEvent::Checked { passed },
        )?;
        let state = match checked {
            ExportState::Checked => {
                tidegate_policy::next_export_state(checked, ExportEvent::SentToReview)?
            }
            refused => refused,
        };
        let required =
            tidegate_policy::required_export_approvals(job.level, outcome.report.flagged()) as i64;
        let stored_bytes = passed.then_some(parquet.len() as i64);
        // The noise of a kept release is paid for; a refused one showed nobody anything.
        let epsilon = outcome.epsilon_spent.filter(|_| passed);
        // A refusal for what L2 or L3 data holds may tell one bit: rationed with the jobs that
        // stopped while running.
        let withheld = job.level > Level::L1 && outcome.report.failed_on_the_data();
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What may have changed while the gate worked: the scenario's state (a freeze, a
        // revocation) and its modules' approvals. Exports and the gate's memory cannot (the
        // gate's lock), nor the data (an org's exit takes it too).
        let now_s = Self::scenario_row(&db, &job.scenario)?;
        tidegate_policy::can_request_export(actor, &now_s.org, now_s.view.state)?;
        if now_s.k != s.k || to_json(&now_s.export_rules) != to_json(&s.export_rules) {
            return Err(Error::BadInput(format!(
                "the rules of scenario {} changed while the result was checked; ask again",
                s.id
            )));
        }
        if unapproved == 0 && Self::unapproved_modules(&db, &job.modules, &s.id)? > 0 {
            return Err(Error::BadInput(format!(
                "a module of job {job_id} was revoked while its result was checked; ask again"
            )));
        }
        // The time of the record is taken under the lock, so that it is after anything the
        // metadata says happened before it (a resume's clearing of the failures counted).
        let now = crate::now_rfc3339();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO exports (id, job_id, requested_by, org_id, state, gate_report, result_hash,
                 wrapped_key, required_approvals, decision_comment, created_at, released_at, bytes,
                 groups_key, epsilon, withheld, audit_key, audit_datasets, amends, public_figures)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            params![
                id,
                job_id,
                actor.id,
                actor.org,
                state.as_str(),
                to_json(&outcome.report),
                hash,
                wrapped,
                required,
                (!passed).then_some("the export gate refused the result"),
                now,
                stored_bytes,
                groups_key,
                epsilon,
                withheld,
                audit_key,
                audit_datasets,
                amends,
                s.export_rules.public_figures
            ],
        )?;
        // A request the gate refused answers nothing: the returned one may be amended again.
        if let Some(earlier) = amends.filter(|_| passed) {
            let n = tx.execute(
                "UPDATE exports SET amended_by = ?2 WHERE id = ?1 AND amended_by IS NULL",
                params![earlier, id],
            )?;
            if n != 1 {
                return Err(Error::BadInput(format!(
                    "export {earlier} was amended already"
                )));
            }
        }
        let mut steps = vec![
            (ExportState::Submitted, actor.id.as_str()),
            (checked, GATE_ACTOR),
        ];
        if state != checked {
            steps.push((state, GATE_ACTOR));
        }
        for (step, by) in steps {
            Self::record_export_step(&tx, &id, &now, step, by, None)?;
        }
        self.audit.append_at(
            now.clone(),
            &actor.id,
            crate::audit::Action::ExportRequest,
            &id,
            crate::audited::ExportRequest {
                job: job_id.to_string(),
                bytes: stored_bytes.map(|b| b as u64),
                gate_passed: passed,
                checks: outcome
                    .report
                    .checks
                    .iter()
                    .map(|c| crate::audited::CheckPassed {
                        name: c.name.clone(),
                        passed: c.passed,
                    })
                    .collect(),
                groups_suppressed: outcome.report.groups_suppressed,
                result_sha256: hash.clone(),
                state,
                epsilon,
                amends: amends.map(str::to_string),
                public_figures: s.export_rules.public_figures,
            }
            .to_value(),
        )?;
        // R-MONITOR: what this export says of the scenario's pattern.
        self.watch_export(
            &tx,
            &now_s,
            &id,
            &outcome.report,
            spent + epsilon.unwrap_or(0.0),
        )?;
        let suspend = withheld && self.ration_withheld(&tx, &job.scenario, &now)?;
        tx.commit()?;
        if let Some(r) = remembered {
            let mut kept = self
                .ledgers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for k in &r.datasets {
                kept.insert(
                    k.dataset.clone(),
                    (Arc::clone(&k.ledger), k.value_ledger.clone()),
                );
            }
        }
        drop(db);
        if suspend {
            self.cancel_jobs(std::slice::from_ref(&job.scenario));
        }
        self.get_export(actor, &id)
    }

    /// How many of `modules` are not (or no longer) approved for `scenario`.
    fn unapproved_modules(db: &Connection, modules: &[String], scenario: &str) -> Result<usize> {
        let mut unapproved = 0;
        for hash in modules {
            let approved: Option<Option<String>> = db
                .query_row(
                    "SELECT approved_by FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                    params![hash, scenario],
                    |r| r.get(0),
                )
                .optional()?;
            if !matches!(approved, Some(Some(_))) {
                unapproved += 1;
            }
        }
        Ok(unapproved)
    }

    pub(super) fn record_export_step(
        db: &Connection,
        id: &str,
        at: &str,
        state: ExportState,
        by: &str,
        comment: Option<&str>,
    ) -> Result<()> {
        db.execute(
            "INSERT INTO export_events VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, at, state.as_str(), by, comment],
        )?;
        Ok(())
    }

    pub(super) fn export_row(
        db: &Connection,
        id: &str,
    ) -> Result<(ExportView, String, Option<Vec<u8>>)> {
        let row = db
            .query_row(
                "SELECT id, job_id, requested_by, org_id, state, gate_report, result_hash, wrapped_key,
                        required_approvals, flag, amends, amended_by, public_figures
                 FROM exports WHERE id = ?1",
                params![id],
                |r| {
                    Ok(ExportColumns {
                        id: r.get("id")?,
                        job: r.get("job_id")?,
                        requested_by: r.get("requested_by")?,
                        org: r.get("org_id")?,
                        state: r.get("state")?,
                        gate_report: r.get("gate_report")?,
                        result_hash: r.get("result_hash")?,
                        wrapped_key: r.get("wrapped_key")?,
                        required_approvals: r.get("required_approvals")?,
                        flag: r.get("flag")?,
                        amends: r.get("amends")?,
                        amended_by: r.get("amended_by")?,
                        public_figures: r.get("public_figures")?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("export {id}")))?;
        let ExportColumns {
            id,
            job,
            requested_by: by,
            org,
            state,
            gate_report: report,
            result_hash: hash,
            wrapped_key: wrapped,
            required_approvals: required,
            flag,
            amends,
            amended_by,
            public_figures,
        } = row;
        let reviews: Vec<ApprovalView> = db
            .prepare("SELECT reviewer_id, decision, at, comment FROM export_reviews WHERE export_id = ?1 ORDER BY at")?
            .query_map(params![id], |r| {
                Ok(ApprovalView { by: r.get(0)?, as_role: r.get(1)?, at: r.get(2)?, comment: Some(r.get(3)?) })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let history: Vec<ExportStep> = db
            .prepare("SELECT state, at, actor, comment FROM export_events WHERE export_id = ?1 ORDER BY rowid")?
            .query_map(params![id], |r| {
                Ok(ExportStep { state: stored_state_at(r, 0)?, at: r.get(1)?, by: r.get(2)?, comment: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok((
            ExportView {
                id,
                history,
                job,
                requested_by: by,
                state: stored_state(&state)?,
                gate_report: from_json(&report)?,
                result_hash: hash,
                required_approvals: required as u64,
                reviews,
                preview: None,
                query: None,
                plan: None,
                modules: Vec::new(),
                earlier: Vec::new(),
                flag,
                amends,
                amended_by,
                public_figures,
            },
            org,
            wrapped,
        ))
    }

    pub fn get_export(&self, actor: &Principal, id: &str) -> Result<ExportView> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut view, org, wrapped) = Self::export_row(&db, id)?;
        // Across orgs only the authority's offices: its reviewers (with the preview they judge
        // from), auditors and admins.
        let oversees = tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?);
        let is_reviewer = oversees && actor.has_role(Role::Reviewer) && actor.org != org;
        if !(actor.org == org || oversees) {
            return Err(Error::NotFound(format!("export {id}")));
        }
        if !oversees {
            // R-GATE 7: the requesting org reads which checks passed, not the counts of groups
            // and rows behind them (those tell about the data without any release).
            view.gate_report = view.gate_report.redacted();
        }
        if is_reviewer {
            let JobRecord {
                view: job, plan, ..
            } = Self::job_row(&db, &view.job)?;
            if let Some(w) = wrapped {
                // The first 50 rows as CSV (cut by rows, not lines: a value may hold a newline).
                let mut left = 50usize;
                let first: Vec<RecordBatch> = from_parquet(self.load_object("exports", id, &w)?)?
                    .into_iter()
                    .map(|b| {
                        let n = b.num_rows().min(left);
                        left -= n;
                        b.slice(0, n)
                    })
                    .collect();
                let csv = gate::to_csv(&first)?;
                view.preview = Some(String::from_utf8_lossy(&csv).into_owned());
            }
            view.earlier = db
                .prepare(
                    "SELECT e.id, e.state, e.result_hash, e.created_at, e.released_at, j.sql
                     FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = ?1 AND e.id != ?2 AND e.result_hash IS NOT NULL
                     ORDER BY e.created_at",
                )?
                .query_map(params![job.scenario, id], |r| {
                    super::views::EarlierExport::from_row(r, false)
                })?
                .collect::<rusqlite::Result<_>>()?;
            // And every export the gate's memory judged this one with: the exports over the
            // same datasets, of any scenario and org (R-GATE 6), with their queries.
            let ours: Option<String> = db.query_row(
                "SELECT audit_datasets FROM exports WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            let ours: Vec<String> = ours.map(|d| from_json(&d)).transpose()?.unwrap_or_default();
            if !ours.is_empty() {
                let others: Vec<(super::views::EarlierExport, String)> = db
                    .prepare(
                        "SELECT e.id, e.state, e.result_hash, e.created_at, e.released_at, j.sql,
                                j.scenario_id, e.audit_datasets
                         FROM exports e JOIN jobs j ON e.job_id = j.id
                         WHERE e.id != ?1 AND j.scenario_id != ?2 AND e.audit_datasets IS NOT NULL
                         ORDER BY e.created_at",
                    )?
                    .query_map(params![id, job.scenario], |r| {
                        Ok((
                            super::views::EarlierExport::from_row(r, true)?,
                            r.get("audit_datasets")?,
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                for (other, datasets) in others {
                    if !from_json::<Vec<String>>(&datasets)?
                        .iter()
                        .any(|d| ours.contains(d))
                    {
                        continue;
                    }
                    view.earlier.push(other);
                }
            }
            view.query = Some(job.sql);
            view.plan = plan;
            view.modules = job.modules;
        }
        Ok(view)
    }

    /// The state and term of a job's scenario are checked again at every export step.
    pub(super) fn require_active_scenario_of_job(db: &Connection, job: &str) -> Result<()> {
        let scenario: String = db.query_row(
            "SELECT scenario_id FROM jobs WHERE id = ?1",
            params![job],
            |r| r.get(0),
        )?;
        let state = Self::scenario_row(db, &scenario)?.view.state;
        if state != ScenarioState::Active {
            return Err(Error::Refused(format!(
                "the scenario is {}; a suspended, expired or revoked scenario exports nothing",
                state.as_str()
            )));
        }
        Ok(())
    }

    /// R-REVIEW: approve, return or reject; approval binds the exact result hash.
    /// A reviewer's decision. Approving an export whose scenario publishes its figures needs
    /// `publish`: the reviewer says they approve the rows for anyone to read.
    pub fn review_export(
        &self,
        actor: &Principal,
        id: &str,
        decision: &str,
        comment: &str,
        publish: bool,
    ) -> Result<ExportView> {
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (view, org, _) = Self::export_row(&db, id)?;
            let approved_by: Vec<String> = view
                .reviews
                .iter()
                .filter(|r| r.as_role == "approve")
                .map(|r| r.by.clone())
                .collect();
            tidegate_policy::can_review_export(
                actor,
                Self::org_kind(&db, &actor.org)?,
                &view.requested_by,
                &org,
                &approved_by,
            )?;
            Self::require_active_scenario_of_job(&db, &view.job)?;
            let decision: Decision = decision
                .parse()
                .map_err(|_| Error::BadInput("a decision is approve, return or reject".into()))?;
            if let (Some(flag), Decision::Approve) = (&view.flag, decision) {
                return Err(Error::Refused(format!(
                    "this export request is not approved: it was {flag}; return or reject it"
                )));
            }
            if decision == Decision::Approve && view.public_figures && !publish {
                return Err(Error::BadInput(
                    "its scenario publishes its figures: once released, every row of this result is in the public record; approve it with publish (CLI: --publish) or return it"
                        .into(),
                ));
            }
            let new_state = tidegate_policy::next_export_state(
                view.state,
                ExportEvent::Reviewed {
                    decision,
                    approvals: approved_by.len() as u64 + u64::from(decision == Decision::Approve),
                    required: view.required_approvals,
                },
            )
            .map_err(|r| Error::BadInput(r.reason))?;
            let hash = view
                .result_hash
                .clone()
                .ok_or_else(|| Error::Internal("no result hash".into()))?;
            let now = crate::now_rfc3339();
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO export_reviews VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, actor.id, decision.as_str(), comment, hash, now],
            )?;
            Self::record_export_step(&tx, id, &now, new_state, &actor.id, Some(comment))?;
            tx.execute(
                "UPDATE exports SET state = ?2, decision_comment = ?3 WHERE id = ?1",
                params![id, new_state.as_str(), comment],
            )?;
            self.audit.append(
                &actor.id,
                crate::audit::Action::ExportReview,
                id,
                crate::audited::ExportReview {
                    decision,
                    state: new_state,
                    result_sha256: hash,
                    publish: view.public_figures && decision == Decision::Approve,
                }
                .to_value(),
            )?;
            tx.commit()?;
        }
        self.get_export(actor, id)
    }

    /// R-RELEASE: the requester downloads the signed bundle of an approved export.
    pub fn download_bundle(&self, actor: &Principal, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (view, org, wrapped) = Self::export_row(&db, id)?;
        let released = view.state == ExportState::Released;
        let JobRecord {
            view: job,
            plan,
            inputs,
            ..
        } = Self::job_row(&db, &view.job)?;
        let input_orgs = Self::input_orgs(&db, &inputs)?;
        let downloader =
            match tidegate_policy::can_download_bundle(actor, &org, &input_orgs, released) {
                Ok(d) => d,
                // Another org learns nothing of the export, not even that it exists.
                Err(_) if actor.org != org => return Err(Error::NotFound(format!("export {id}"))),
                Err(r) => return Err(r.into()),
            };
        // R-EXIT: after a scenario's term ended, a released bundle stays with its requester and
        // its data's providers (its file is kept for that); after a revocation nothing is
        // downloaded, and everything else waits for an active scenario.
        let kept_after_close = released
            && (view.requested_by == actor.id
                || downloader == tidegate_policy::Downloader::Provider)
            && Self::scenario_closed(&db, &job.scenario)?
            && Self::scenario_row(&db, &job.scenario)?.stored_state != ScenarioState::Revoked;
        if !kept_after_close {
            Self::require_active_scenario_of_job(&db, &view.job)?;
        }
        if let Some(flag) = &view.flag {
            return Err(Error::Refused(format!(
                "this export is not released: it was {flag}"
            )));
        }
        let next = tidegate_policy::next_export_state(view.state, ExportEvent::Released)?;
        let wrapped =
            wrapped.ok_or_else(|| Error::Internal("approved export without a result".into()))?;
        let parquet = self.load_object("exports", id, &wrapped)?;
        let hash = sha256_hex(&parquet);
        // Approval binds the exact result: anything that changed since voids it.
        let approvals: Vec<&ApprovalView> = view
            .reviews
            .iter()
            .filter(|r| r.as_role == "approve")
            .collect();
        let bound: Vec<String> = db
            .prepare("SELECT result_hash FROM export_reviews WHERE export_id = ?1 AND decision = 'approve'")?
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if view.result_hash.as_deref() != Some(hash.as_str()) || bound.iter().any(|b| b != &hash) {
            return Err(Error::Integrity(
                "the result changed after approval; the approval is void".into(),
            ));
        }
        let s = Self::scenario_row(&db, &job.scenario)?;
        let now = crate::now_rfc3339();
        let manifest = json!({
            "format": "tidegate-bundle-v1",
            "export": view.id,
            "scenario": { "id": s.id, "name": s.name, "org": s.org, "term": [s.term_start.to_string(), s.term_end.to_string()] },
            "job": { "id": job.id, "query": job.sql, "plan_sha256": plan.as_deref().map(|p| sha256_hex(p.as_bytes())), "submitted_by": job.submitted_by, "level": job.level },
            "modules": job.modules,
            "inputs": inputs,
            "policy_version": db.query_row(
                "SELECT policy_version FROM jobs WHERE id = ?1",
                params![job.id],
                |r| r.get::<_, i64>(0),
            )?,
            "gate_report": view.gate_report,
            "requested_by": view.requested_by,
            "reviewers": approvals.iter().map(|r| json!({ "id": r.by, "at": r.at })).collect::<Vec<_>>(),
            "result_sha256": hash,
            "released_at": now,
            "public_figures": view.public_figures,
        });
        let csv = gate::to_csv(&from_parquet(parquet.clone())?)?;
        let files = bundle::build(
            &self.signer,
            manifest,
            vec![
                ("result.csv".to_string(), csv),
                ("result.parquet".to_string(), parquet),
            ],
        )?;
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE exports SET state = ?3, released_at = COALESCE(released_at, ?2) WHERE id = ?1",
            params![id, now, next.as_str()],
        )?;
        if view.state != next {
            Self::record_export_step(&tx, id, &now, next, &actor.id, None)?;
        }
        // S11: a provider's download of a product of its data is free (the metering counts an
        // export's release once, at its requester's first download); its statement shows it
        // at zero.
        if downloader == tidegate_policy::Downloader::Provider {
            tx.execute(
                "INSERT INTO provider_downloads (export_id, org_id, at) VALUES (?1, ?2, ?3)",
                params![id, actor.org, now],
            )?;
        }
        self.audit.append_at(
            now,
            &actor.id,
            crate::audit::Action::ExportDownload,
            id,
            crate::audited::ExportDownload {
                result_sha256: hash,
                by_provider: downloader == tidegate_policy::Downloader::Provider,
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(files)
    }

    /// The gate's memory of a dataset: every release recorded over it, in the order they
    /// were, built from the sealed audit records the first time it is asked for.
    pub(super) fn gate_memory(&self, db: &Connection, dataset: &str) -> Result<Remembrance> {
        if let Some(l) = self
            .ledgers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(dataset)
        {
            return Ok(l.clone());
        }
        let seed = self.pseudonym_root(db)?.subject_key().seed();
        let mut ledger = tidegate_policy::Ledger::new(seed);
        let mut dominated = false;
        for (export, rows) in self.audit_records(db, dataset)? {
            ledger.add_all_released(&export, &rows[0]);
            for set in &rows[1] {
                ledger.add_protected(&export, set.clone());
            }
            dominated |= rows.get(3).is_some_and(|d| !d.is_empty());
        }
        let memory = (
            Arc::new(ledger),
            if dominated {
                Some(self.sums_memory(db, dataset)?)
            } else {
                None
            },
        );
        self.ledgers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(dataset.to_string(), memory.clone());
        Ok(memory)
    }

    /// The memory of the sums released over `dataset`, with the cells suppressed because a
    /// few subjects dominate them, built from the sealed audit records (in records written
    /// before sums were told apart, every released set is taken for a sum's).
    pub(super) fn sums_memory(
        &self,
        db: &Connection,
        dataset: &str,
    ) -> Result<Arc<tidegate_policy::Ledger>> {
        let seed = self.pseudonym_root(db)?.subject_key().seed();
        // Another seed than the whole memory's: the two ledgers' weights are independent.
        let mut ledger = tidegate_policy::Ledger::new(seed ^ 0x7375_6d73);
        for (export, rows) in self.audit_records(db, dataset)? {
            match (rows.get(2), rows.get(3)) {
                (Some(sums), Some(dominated)) => {
                    ledger.add_all_released(&export, sums);
                    for set in dominated {
                        ledger.add_protected(&export, set.clone());
                    }
                }
                // Written before sums were told apart: every released set is taken for a
                // sum's (more refusals, never fewer).
                _ => ledger.add_all_released(&export, &rows[0]),
            }
        }
        Ok(Arc::new(ledger))
    }

    /// Every sealed audit record over `dataset`, in the order they were written: per export,
    /// its released sets, the sets it suppressed for fewer than k subjects, and (since sums
    /// are told apart) its released sums and the sums it suppressed for dominance.
    fn audit_records(
        &self,
        db: &Connection,
        dataset: &str,
    ) -> Result<Vec<(String, Vec<Vec<tidegate_policy::SubjectSet>>)>> {
        let records: Vec<(String, Vec<u8>, String)> = db
            .prepare(
                "SELECT id, audit_key, audit_datasets FROM exports
                 WHERE audit_key IS NOT NULL ORDER BY created_at, rowid",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for (export, key, datasets) in records {
            let datasets = from_json::<Vec<String>>(&datasets)?;
            let Some(at) = datasets.iter().position(|d| d == dataset) else {
                continue;
            };
            let mut rows = tidegate_policy::decode_sets(&self.load_object("audit", &export, &key)?)
                .ok_or_else(|| Error::Integrity(format!("the audit record of export {export}")))?;
            // Four lists per dataset, in the order of its datasets; written before each
            // dataset was given only its own rows, two or four lists for all of them.
            if datasets.len() > 1 && rows.len() == 4 * datasets.len() {
                rows = rows.drain(4 * at..4 * at + 4).collect();
            } else if rows.len() != 2 && rows.len() != 4 {
                return Err(Error::Integrity(format!(
                    "the audit record of export {export}"
                )));
            }
            out.push((export, rows));
        }
        Ok(out)
    }
}

/// An `exports` row as stored, read by column name.
struct ExportColumns {
    id: String,
    job: String,
    requested_by: String,
    org: String,
    state: String,
    gate_report: String,
    result_hash: Option<String>,
    wrapped_key: Option<Vec<u8>>,
    required_approvals: i64,
    flag: Option<String>,
    amends: Option<String>,
    amended_by: Option<String>,
    public_figures: bool,
}
