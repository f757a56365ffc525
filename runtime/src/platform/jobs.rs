//! Modules and jobs: upload and review of modules, running a job in its own runtime under the scenario's grant, cancellation.

use super::*;
use tidegate_policy::JobState;

impl Platform {
    /// Runs the inputs of the jobs started from now on `cluster` (their scans, joins, filters
    /// and functions; the aggregation, the gate and everything after stay here), or, with
    /// `None`, here again.
    pub fn use_cluster(&self, cluster: Option<crate::cluster::Cluster>) {
        *self
            .cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cluster;
    }

    fn cluster(&self) -> Option<crate::cluster::Cluster> {
        self.cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn upload_module(
        &self,
        actor: &Principal,
        scenario: &str,
        wasm: &[u8],
    ) -> Result<ModuleView> {
        self.upload_module_with_source(actor, scenario, wasm, None)
    }

    /// Uploads a module with its source archive (issue 19, item 3), read and checked here but
    /// never unpacked or built. A module uploaded without one may be given its source later by
    /// uploading it again with it; a module's source is given once.
    pub fn upload_module_with_source(
        &self,
        actor: &Principal,
        scenario: &str,
        wasm: &[u8],
        source: Option<&[u8]>,
    ) -> Result<ModuleView> {
        let s = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Self::scenario_row(&db, scenario)?
        };
        if actor.org != s.org && !actor.has_role(Role::Admin) {
            return Err(Error::NotFound(format!("scenario {scenario}")));
        }
        tidegate_policy::can_upload_module(actor, &s.org, s.view.state)?;
        let validated = match self.sandbox.load(wasm) {
            Ok(v) => v,
            Err(e) => {
                // R-MONITOR: a module failing validation is an event worth an alert.
                self.audit.append(
                    &actor.id,
                    crate::audit::Action::ModuleRejected,
                    scenario,
                    crate::audited::ModuleRejected {
                        hash: sha256_hex(wasm),
                        reason: e.to_string(),
                    }
                    .to_value(),
                )?;
                self.raise_alert_now(alerts::Raised {
                    kind: tidegate_policy::AlertKind::ModuleInvalid,
                    org: Some(&s.org),
                    scenario: Some(scenario),
                    evidence: json!({ "hash": sha256_hex(wasm), "uploaded_by": actor.id }),
                })?;
                return Err(e);
            }
        };
        let source = source
            .map(|bytes| crate::source::read_source_archive(bytes).map(|a| (bytes, a.sha256)))
            .transpose()?;
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO modules (hash, scenario_id, uploaded_by, org_id, functions, wasm, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                validated.hash,
                scenario,
                actor.id,
                actor.org,
                to_json(&validated.functions),
                wasm,
                crate::now_rfc3339()
            ],
        )?;
        if let Some((bytes, sha)) = &source {
            let held: Option<String> = tx.query_row(
                "SELECT source_sha256 FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                params![validated.hash, scenario],
                |r| r.get(0),
            )?;
            match held {
                None => {
                    tx.execute(
                        "UPDATE modules SET source = ?3, source_sha256 = ?4
                         WHERE hash = ?1 AND scenario_id = ?2",
                        params![validated.hash, scenario, bytes, sha],
                    )?;
                }
                Some(held) if held == *sha => {}
                Some(_) => {
                    return Err(Error::BadInput(
                        "this module already has another source in this scenario; a module's source is given once".into(),
                    ));
                }
            }
        }
        self.audit.append(
            &actor.id,
            crate::audit::Action::ModuleUpload,
            &validated.hash,
            crate::audited::ModuleUpload {
                scenario: scenario.to_string(),
                functions: validated.functions.iter().map(|f| f.name.clone()).collect(),
                source: source.as_ref().map(|(_, sha)| sha.to_string()),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(ModuleView {
            hash: validated.hash.clone(),
            scenario: scenario.into(),
            uploaded_by: actor.id.clone(),
            functions: validated.functions.clone(),
            approved_by: None,
        })
    }

    /// R-MODULE: algorithm review binds the exact hash to the scenario.
    pub fn approve_module(
        &self,
        actor: &Principal,
        scenario: &str,
        hash: &str,
        note: &str,
    ) -> Result<ModuleView> {
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // (org, uploaded by, functions, approved by, revoked by, the recorded rebuild)
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = db
            .query_row(
                "SELECT org_id, uploaded_by, functions, approved_by, revoked_by, source_check
                 FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                params![hash, scenario],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let (org, uploaded_by, functions, approved_by, revoked_by, check) =
            row.ok_or_else(|| Error::NotFound(format!("module {hash} in scenario {scenario}")))?;
        tidegate_policy::can_approve_module(actor, Self::org_kind(&db, &actor.org)?, &org)?;
        let rebuilt = check
            .map(|c| from_json::<crate::source::SourceCheck>(&c))
            .transpose()?
            .map(|c| c.matches);
        tidegate_policy::check_source_rebuild(rebuilt)?;
        if approved_by.is_some() {
            return Err(Error::BadInput(
                "this module is already approved for this scenario".into(),
            ));
        }
        if revoked_by.is_some() {
            return Err(Error::Refused(
                "this module's approval for this scenario was revoked; it is not approved again"
                    .into(),
            ));
        }
        if note.trim().is_empty() {
            return Err(Error::BadInput(
                "an algorithm review names the functions and what they compute: give a note".into(),
            ));
        }
        let tx = db.transaction()?;
        let now = crate::now_rfc3339();
        tx.execute(
            "UPDATE modules SET approved_by = ?3, approval_note = ?4, approved_at = ?5 WHERE hash = ?1 AND scenario_id = ?2",
            params![hash, scenario, actor.id, note, now],
        )?;
        self.audit.append_at(
            now,
            &actor.id,
            crate::audit::Action::ModuleApprove,
            hash,
            crate::audited::ModuleApprove {
                scenario: scenario.to_string(),
                note: note.to_string(),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(ModuleView {
            hash: hash.into(),
            scenario: scenario.into(),
            uploaded_by,
            functions: from_json(&functions)?,
            approved_by: Some(actor.id.clone()),
        })
    }

    // ----- Jobs -----

    /// What a job of `actor` in `scenario` runs over, checked now: the scenario is the
    /// actor's org's and may run jobs, every module is approved for it, and each grant's
    /// dataset version (pinned or newest) with its key.
    fn job_inputs(
        &self,
        actor: &Principal,
        scenario: &str,
        module_hashes: &[String],
    ) -> Result<CheckedJob> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = Self::scenario_row(&db, scenario)?;
        if actor.org != s.org {
            return Err(Error::NotFound(format!("scenario {scenario}")));
        }
        let mut unapproved = Vec::new();
        let mut modules = Vec::new();
        for hash in module_hashes {
            let row: Option<(Vec<u8>, Option<String>)> = db
                .query_row(
                    "SELECT wasm, approved_by FROM modules WHERE hash = ?1 AND scenario_id = ?2",
                    params![hash, s.id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                Some((wasm, Some(_))) => modules.push(wasm),
                _ => unapproved.push(hash.clone()),
            }
        }
        tidegate_policy::can_run_job(actor, &s.org, s.view.state, &unapproved)?;
        let mut inputs = Vec::new();
        let mut level = Level::L1;
        for g in &s.grants {
            let d = Self::dataset_row(&db, &g.dataset)?;
            let super::datasets::VersionRow {
                version,
                content_hash: hash,
                rows,
                wrapped_key: wrapped,
                ..
            } = Self::granted_version(&db, &d, g.version)?;
            level = level.max(d.level);
            let context = Self::stored_dataset_context(&db, &d.id, version)?;
            let rule_failures = Self::rule_failures(&db, &d.id, version)?;
            inputs.push(JobInput {
                rule_failures,
                context,
                dataset: d,
                columns: g.columns.clone(),
                version,
                content_hash: hash,
                wrapped,
                rows: rows as u64,
            });
        }
        let root = self.pseudonym_root(&db)?;
        let pseudonyms = root.pseudonym_key(&s.id);
        let subjects = root.subject_key();
        Ok(CheckedJob {
            scenario: s,
            inputs,
            modules,
            level,
            pseudonyms,
            subjects,
        })
    }

    /// R-JOB: accepts a job for the queue and answers at once (state `queued`); the server's
    /// workers run it (see [`Platform::start_workers`]), and `get_job` follows it. Everything
    /// the job needs is checked now and again when it starts.
    pub fn enqueue_job(&self, actor: &Principal, req: JobRequest) -> Result<JobView> {
        let id = self.insert_job(actor, &req)?;
        self.queue.push(&actor.org, &id);
        self.get_job(actor, &id)
    }

    /// Accepts a job and runs it to its end in the caller, outside the queue (tools and
    /// tests that hold the platform itself).
    pub async fn submit_job(&self, actor: &Principal, req: JobRequest) -> Result<JobView> {
        let id = self.insert_job(actor, &req)?;
        self.run_job(&id).await?;
        self.get_job(actor, &id)
    }

    /// Records a job as `queued`, after the checks of [`Platform::job_inputs`].
    fn insert_job(&self, actor: &Principal, req: &JobRequest) -> Result<String> {
        let CheckedJob {
            scenario,
            inputs,
            level,
            ..
        } = self.job_inputs(actor, &req.scenario, &req.modules)?;
        let id = new_id("job");
        let now = crate::now_rfc3339();
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let waiting: u64 = db.query_row(
            "SELECT count(*) FROM jobs j JOIN scenarios s ON s.id = j.scenario_id
             WHERE s.org_id = ?1 AND j.state = 'queued'",
            params![scenario.org],
            |r| r.get(0),
        )?;
        tidegate_policy::can_queue_job(waiting)?;
        // R-EXIT: the scenario's quotas, approved with it.
        tidegate_policy::can_submit_within_quota(
            &Self::quota_use(&db, &scenario.id)?,
            &scenario.export_rules,
        )?;
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO jobs (id, scenario_id, submitted_by, sql, modules, state, level, inputs, created_at, policy_version)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?9)",
            params![id, scenario.id, actor.id, req.sql, to_json(&req.modules), level.to_string(), to_json(&inputs_json(&inputs)), now, Self::policy_version(&tx)?],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::JobStart,
            &id,
            crate::audited::JobStart {
                scenario: scenario.id.clone(),
                modules: req.modules.clone(),
                sql_sha256: sha256_hex(req.sql.as_bytes()),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// S17: the rows of a dataset version failing its quality rules, summed over the rules,
    /// from the version's import report; none when the version was checked against no rule.
    pub(super) fn rule_failures(
        db: &Connection,
        dataset: &str,
        version: i64,
    ) -> Result<Option<u64>> {
        let quality: String = db.query_row(
            "SELECT quality FROM dataset_versions WHERE dataset_id = ?1 AND version = ?2",
            params![dataset, version],
            |r| r.get(0),
        )?;
        Ok(super::providers::rule_failures_in(&from_json(&quality)?))
    }

    /// R-EXIT: what scenario `sid` used of its quotas: the jobs it submitted and the CPU and
    /// fuel of its jobs that ended in the last 24 hours, and the bytes of the results it keeps,
    /// each as its scientists see them (over L2 or L3 data, rounded up).
    pub(super) fn quota_use(db: &Connection, sid: &str) -> Result<tidegate_policy::QuotaUse> {
        let day_ago = (crate::clock::now() - time::Duration::days(1))
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut used = tidegate_policy::QuotaUse {
            jobs: db.query_row(
                "SELECT count(*) FROM jobs WHERE scenario_id = ?1 AND created_at > ?2",
                params![sid, day_ago],
                |r| r.get(0),
            )?,
            ..Default::default()
        };
        let mut stmt = db.prepare(
            "SELECT resources, finished_at > ?2, wrapped_key IS NOT NULL FROM jobs
             WHERE scenario_id = ?1 AND resources IS NOT NULL
               AND (finished_at > ?2 OR wrapped_key IS NOT NULL)",
        )?;
        let rows = stmt.query_map(params![sid, day_ago], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })?;
        for row in rows {
            let (resources, recent, stored) = row?;
            let r: ResourceUse = serde_json::from_str(&resources)
                .map_err(|e| Error::Integrity(format!("a job's resources: {e}")))?;
            if recent {
                used.cpu_ms = used.cpu_ms.saturating_add(r.cpu_ms);
                used.fuel = used.fuel.saturating_add(r.fuel);
            }
            if stored {
                used.stored_bytes = used.stored_bytes.saturating_add(r.output_bytes);
            }
        }
        Ok(used)
    }

    /// Ends a job that is in state `from` and will not run on (refused when it came to
    /// start, cancelled while queued, interrupted by a stop): `failed` with `why`, in the log.
    /// Whether it was in that state.
    pub(super) fn fail_unrun_job(&self, id: &str, from: &str, by: &str, why: &str) -> Result<bool> {
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.end_unrun(&mut db, id, from, by, why)
    }

    /// [`Platform::fail_unrun_job`] under a metadata lock already held.
    fn end_unrun(
        &self,
        db: &mut Connection,
        id: &str,
        from: &str,
        by: &str,
        why: &str,
    ) -> Result<bool> {
        let finished = crate::now_rfc3339();
        let tx = db.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = 'failed', error = ?2, resources = ?3, finished_at = ?4
             WHERE id = ?1 AND state = ?5",
            params![id, why, to_json(&ResourceUse::default()), finished, from],
        )?;
        if changed == 1 {
            self.audit.append_at(
                finished,
                by,
                crate::audit::Action::JobEnd,
                id,
                crate::audited::JobEnd {
                    state: JobState::Failed,
                    rows: None,
                    error: Some(why.to_string()),
                    withheld: None,
                    resources: ResourceUse::default(),
                    exact_resources: None,
                    result_sha256: None,
                }
                .to_value(),
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Runs a queued job to its end: `running` while it runs, then `succeeded` with its
    /// encrypted result or `failed` with a reason that shows nothing of the data. Its checks
    /// are made again first (a scenario suspended, a module revoked, a principal frozen since
    /// the job was queued refuse it). A job no longer queued (cancelled, or taken by another
    /// worker) is left alone.
    pub async fn run_job(&self, id: &str) -> Result<()> {
        // A span per job (exported when the server names a trace collector): its id, never
        // its query or data.
        let span = tracing::info_span!("job", otel.name = "job", job.id = %id);
        tracing::Instrument::instrument(self.run_queued_job(id), span).await
    }

    /// [`Platform::run_job`] inside its span.
    async fn run_queued_job(&self, id: &str) -> Result<()> {
        let (actor, sql, module_hashes, scenario_id, quota) = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let job = Self::job_row(&db, id)?.view;
            if job.state != JobState::Queued {
                return Ok(());
            }
            let rules = Self::scenario_row(&db, &job.scenario)?.export_rules;
            let used = Self::quota_use(&db, &job.scenario)?;
            (
                Self::principal_where(&db, "id", &job.submitted_by)?
                    .ok_or_else(|| Error::Integrity(format!("job {id} names no principal")))?,
                job.sql,
                job.modules,
                job.scenario,
                (used, rules),
            )
        };
        let id = id.to_string();
        // R-EXIT: the job runs with at most what is left of its scenario's daily CPU and fuel
        // quotas (a scenario with none left refuses it below).
        let (full_fuel, full_wall_ms) = (
            GuestLimits::default().fuel,
            EngineLimits::default().wall_time.as_millis() as u64,
        );
        let (fuel, wall_ms) =
            tidegate_policy::job_budgets_within_quota(&quota.0, &quota.1, full_fuel, full_wall_ms);
        let capped = (fuel < full_fuel, wall_ms < full_wall_ms);
        // The meter is where a suspension or a cancellation reaches a running job: it is
        // listed before the job is checked and marked running, so that a suspension after the
        // check, or a cancellation of a job seen running, always reaches it.
        let meter = Arc::new(JobMeter::new(GuestLimits {
            fuel,
            ..GuestLimits::default()
        }));
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(scenario_id.clone())
            .or_default()
            .push((id.clone(), Arc::clone(&meter)));
        let CheckedJob {
            scenario,
            inputs,
            modules,
            level,
            pseudonyms,
            subjects,
        } = match self
            .job_inputs(&actor, &scenario_id, &module_hashes)
            .and_then(|checked| {
                tidegate_policy::can_submit_within_quota(
                    &tidegate_policy::QuotaUse {
                        // Counted when it was submitted.
                        jobs: 0,
                        ..quota.0
                    },
                    &quota.1,
                )?;
                Ok(checked)
            }) {
            Ok(checked) => checked,
            Err(e) => {
                self.unlist_running(&scenario_id, &id);
                self.fail_unrun_job(
                    &id,
                    "queued",
                    &actor.id,
                    &format!("refused when it came to start: {e}"),
                )?;
                return Ok(());
            }
        };
        let taken = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Its own budgets, where the cluster's executors read them: they hold its guests
            // to its fuel, its tasks to its engine memory, and stop it at its deadline.
            let budgets = JobBudgets {
                fuel,
                memory_bytes: scenario.export_rules.job_memory_bytes(),
                wall_ms,
                started_ms: JobBudgets::now_ms(),
            };
            db.execute(
                "UPDATE jobs SET state = 'running', inputs = ?2, level = ?3, limits = ?4
                 WHERE id = ?1 AND state = 'queued'",
                params![
                    id,
                    to_json(&inputs_json(&inputs)),
                    level.to_string(),
                    to_json(&budgets)
                ],
            )
        };
        if taken.as_ref().map_or(true, |n| *n == 0) {
            self.unlist_running(&scenario_id, &id);
            return taken.map(|_| ()).map_err(Error::from);
        }
        let req = JobRequest {
            scenario: scenario.id.clone(),
            sql,
            modules: module_hashes,
        };
        let started = Instant::now();
        let (outcome, cost, scanned) = match self.prepare(&inputs, &modules, &meter, pseudonyms) {
            Ok((tables, udfs, sources, rows_scanned)) => {
                let total = sources.iter().map(SealedSource::len).sum();
                self.reading
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.clone(), (sources.clone(), total));
                let cancel_meter = Arc::clone(&meter);
                let cancelled = async move {
                    while !cancel_meter.is_cancelled() {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                };
                let (output, cost) = job::run_query_isolated(
                    req.sql.clone(),
                    tables,
                    udfs,
                    EngineLimits {
                        spill_dir: Some(self.spill_dir()),
                        wall_time: std::time::Duration::from_millis(wall_ms),
                        cluster: self.cluster().map(|c| c.for_job(&id)),
                        ..job::scenario_limits(&scenario.export_rules, scenario.k, level, subjects)
                    },
                    cancelled,
                )
                .await;
                // What the scan decrypted and decoded: the granted columns' chunks only; a
                // failed job reports what it read before it stopped.
                let bytes_scanned = sources.iter().map(SealedSource::bytes_read).sum();
                (output, cost, (rows_scanned, bytes_scanned))
            }
            Err(e) => (Err(e), job::JobCost::default(), (0, 0)),
        };
        self.unlist_running(&scenario.id, &id);
        self.reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        let mut resources = ResourceUse {
            fuel: meter.fuel_used(),
            guest_calls: meter.calls(),
            peak_guest_memory_bytes: meter.peak_memory(),
            guest_output_bytes: meter.output_bytes(),
            wall_ms: started.elapsed().as_millis() as u64,
            cpu_ms: cost.cpu_ms,
            rows_scanned: scanned.0,
            bytes_scanned: scanned.1,
            ..ResourceUse::default()
        };
        // What its tasks used on the cluster's executors: this process's (CPU time), and other
        // processes' (their records of guests and CPU time).
        let mut executors_limit = None;
        if let Some(cluster) = self.cluster() {
            resources.cpu_ms = resources.cpu_ms.saturating_add(cluster.take_cpu_ms(&id));
            let (there, limit) = self.cluster_usage(&id);
            resources.add_executors(&there);
            executors_limit = limit;
        }
        // The job's fuel is one budget for the whole cluster: executors that together burnt
        // more than it (each is held to the job's fuel less what the others had recorded)
        // fail the job, whatever it computed. Over L1 data a job whose guests met a limit on
        // an executor ends as it would have here, with that limit (the coordinator hears only
        // that a task failed); over L2 or L3 data, as here, it shows that it failed, never why
        // (R-GATE 7: a limit a guest reaches may depend on a value).
        let while_running = |e: Error| {
            if level > Level::L1 {
                Error::WhileRunning(Box::new(e))
            } else {
                e
            }
        };
        let outcome = match (outcome, executors_limit) {
            (Ok(_), _) if resources.fuel > fuel => Err(while_running(Error::Limit(
                "the job's fuel budget ran out on the cluster's executors".into(),
            ))),
            (Err(e), Some(limit)) if level <= Level::L1 && !matches!(e, Error::Limit(_)) => {
                Err(Error::Limit(limit))
            }
            (other, _) => other,
        };
        // The result and its sets for the gate's memory are encoded, sealed and written before
        // the metadata lock is taken: a job over millions of rows never holds every other
        // request behind its writes. (A job cancelled meanwhile has them removed below.)
        let sealed = match &outcome {
            Ok(output) => Some(self.seal_result(&id, output, &inputs)?),
            Err(_) => None,
        };
        let finished = crate::now_rfc3339();
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A cancellation asked for while it ran decides how it ends, whatever it ended with
        // (a fast job may finish before its meter is looked at); asked and checked under the
        // metadata lock, so none is acknowledged and then lost.
        let cancelled = self
            .cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        // A scenario closed while the job ran keeps nothing of it (its results are destroyed).
        let closed = Self::scenario_closed(&db, &scenario_id)?;
        // R-EXIT: a result is kept only within the scenario's storage quota (counted as its
        // scientist sees it).
        let over_storage = match &sealed {
            Some(s) if !(cancelled || closed) => {
                let bytes = if level > Level::L1 {
                    s.output_bytes.div_ceil(1 << 20) << 20
                } else {
                    s.output_bytes
                };
                let stored = Self::quota_use(&db, &scenario_id)?.stored_bytes;
                tidegate_policy::can_store_result(stored, bytes, &scenario.export_rules).err()
            }
            _ => None,
        };
        let outcome = if let Some(refusal) = over_storage {
            let _ = fs::remove_file(self.object_path("results", &id));
            let _ = fs::remove_file(self.object_path("subjects", &id));
            Err(Error::from(refusal))
        } else if cancelled || closed {
            if sealed.is_some() {
                let _ = fs::remove_file(self.object_path("results", &id));
                let _ = fs::remove_file(self.object_path("subjects", &id));
            }
            Err(Error::Refused(if closed {
                "the scenario closed while the job ran; its result was not kept".into()
            } else {
                crate::sandbox::CANCELLED.into()
            }))
        } else {
            outcome
        };
        let tx = db.transaction()?;
        let mut suspend = false;
        match outcome {
            Ok(output) => {
                resources.peak_engine_memory_bytes = output.peak_engine_memory_bytes;
                resources.spilled_bytes = output.spilled_bytes;
                let SealedResult {
                    rows,
                    visible,
                    output_bytes,
                    result_hash,
                    wrapped,
                    subjects_key,
                } = sealed.ok_or_else(|| Error::Internal("a result was not sealed".into()))?;
                resources.output_bytes = output_bytes;
                // R-GATE 7: over L2 or L3 data the job shows nothing derived from the data:
                // no row count, and its resources in coarse units (the audit log keeps both).
                let shown_rows = (level <= Level::L1).then_some(rows as i64);
                let shown_resources = resources.shown_at(level);
                tx.execute(
                    "UPDATE jobs SET state = 'succeeded', rows = ?2, schema = ?3, resources = ?4,
                     shape = ?5, plan = ?6, result_hash = ?7, wrapped_key = ?8, finished_at = ?9,
                     subjects_key = ?10
                     WHERE id = ?1 AND state = 'running'",
                    params![
                        id,
                        shown_rows,
                        to_json(&visible),
                        to_json(&shown_resources),
                        to_json(&output.shape),
                        output.plan,
                        result_hash,
                        wrapped,
                        finished,
                        subjects_key
                    ],
                )?;
                self.audit.append_at(
                    finished.clone(),
                    &actor.id,
                    crate::audit::Action::JobEnd,
                    &id,
                    crate::audited::JobEnd {
                        state: JobState::Succeeded,
                        rows: Some(rows as u64),
                        error: None,
                        withheld: None,
                        resources: shown_resources,
                        exact_resources: Some(resources),
                        result_sha256: Some(result_hash),
                    }
                    .to_value(),
                )?;
            }
            Err(e) => {
                // A job that ran out of what was left of a daily quota says so.
                let message = match &e {
                    Error::Limit(m) if capped.1 && m.contains("wall-clock") => {
                        "the job ran out of what was left of its scenario's daily CPU quota \
                         (cpu_seconds_per_day)"
                            .to_string()
                    }
                    Error::Limit(m) if capped.0 && m.contains("fuel budget") => {
                        "the job ran out of what was left of its scenario's daily fuel quota \
                         (gigafuel_per_day)"
                            .to_string()
                    }
                    _ => e.to_string(),
                };
                let shown_resources = resources.shown_at(level);
                let withheld = matches!(e, Error::WhileRunning(_));
                // The operator's log names the job and the kind of failure; its cause, which
                // may quote the data, is in the audit log only.
                tracing::warn!(job = %id, kind = e.cause().kind(), withheld, "a job failed");
                tx.execute(
                    "UPDATE jobs SET state = 'failed', error = ?2, resources = ?3, finished_at = ?4, withheld = ?5
                     WHERE id = ?1 AND state = 'running'",
                    params![id, message, to_json(&shown_resources), finished, withheld],
                )?;
                // The cause a data-dependent failure hides from the job is kept here, for the
                // authority; `withheld` counts such failures.
                self.audit.append_at(
                    finished.clone(),
                    &actor.id,
                    crate::audit::Action::JobEnd,
                    &id,
                    crate::audited::JobEnd {
                        state: JobState::Failed,
                        rows: None,
                        error: Some(e.cause().to_string()),
                        withheld: Some(withheld),
                        resources: shown_resources,
                        exact_resources: Some(resources),
                        result_sha256: None,
                    }
                    .to_value(),
                )?;
                if withheld {
                    suspend = self.ration_withheld(&tx, &scenario.id, &finished)?;
                }
            }
        }
        tx.commit()?;
        drop(db);
        if suspend {
            self.cancel_jobs(std::slice::from_ref(&scenario.id));
        }
        Ok(())
    }

    /// A finished job's result and its sets of subjects, sealed and written (each under a
    /// fresh data key; only the wrapped keys go into the metadata).
    fn seal_result(
        &self,
        id: &str,
        output: &crate::job::JobOutput,
        inputs: &[JobInput],
    ) -> Result<SealedResult> {
        let rows: usize = output.batches.iter().map(RecordBatch::num_rows).sum();
        let schema = output
            .batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let visible: Vec<(String, String)> = crate::hidden::visible_schema(&schema)
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect();
        let parquet = to_parquet_with_schema(&output.batches, schema)?;
        let result_hash = sha256_hex(&parquet);
        let wrapped = self.store_object("results", id, &parquet)?;
        // Each row's sets of subjects, for the gate's memory, sealed like the result. Per
        // dataset the job read: each dataset's memory is given only its own rows.
        let subjects_key = match &output.subject_sets {
            Some(tables) => {
                // A dataset whose rows no cell holds: an empty set for every result row.
                let none = tidegate_policy::DatasetRows {
                    sets: vec![Vec::new(); rows],
                    values: vec![0; rows],
                };
                let parts: Vec<(String, &tidegate_policy::DatasetRows)> = inputs
                    .iter()
                    .map(|i| &i.dataset.id)
                    .enumerate()
                    .map(|(t, dataset)| {
                        let rows = tables
                            .iter()
                            .find(|(at, _)| *at == t)
                            .map_or(&none, |(_, r)| r);
                        (dataset.clone(), rows)
                    })
                    .collect();
                Some(self.store_object_streamed("subjects", id, |sink| {
                    tidegate_policy::write_by_dataset(&parts, sink)
                })?)
            }
            None => None,
        };
        Ok(SealedResult {
            rows,
            visible,
            output_bytes: parquet.len() as u64,
            result_hash,
            wrapped,
            subjects_key,
        })
    }

    pub(super) fn prepare(
        &self,
        inputs: &[JobInput],
        modules: &[Vec<u8>],
        meter: &Arc<JobMeter>,
        pseudonyms: PseudonymKey,
    ) -> Result<PreparedJob> {
        let mut tables = Vec::new();
        let mut sources = Vec::new();
        let mut rows_scanned = 0u64;
        for input in inputs {
            let d = &input.dataset;
            let object = format!("{}/v{}", d.id, input.version);
            let sealed = self.sealed_source("datasets", &object, &input.context, &input.wrapped)?;
            let path = format!("datasets/{object}.parquet");
            let mut store = SealedStore::default();
            store.insert(&path, sealed.clone());
            sources.push(sealed);
            rows_scanned += input.rows;
            let columns = input
                .columns
                .iter()
                .map(|g| {
                    d.columns
                        .iter()
                        .find(|c| &c.name == g)
                        .cloned()
                        .ok_or_else(|| Error::Integrity(format!("granted column {g} is gone")))
                })
                .collect::<Result<Vec<_>>>()?;
            tables.push(TableInput {
                name: d.name.clone(),
                columns,
                data: TableData::Sealed {
                    store: Arc::new(store),
                    object: path,
                    entity: d
                        .columns
                        .iter()
                        .find(|c| c.has_tag(ColumnTag::Entity))
                        .map(|c| c.name.clone()),
                },
            });
        }
        let mut udfs = crate::sandbox::Functions::default();
        for wasm in modules {
            let module = self.sandbox.load(wasm)?;
            udfs.extend(self.sandbox.udfs(&module, meter));
        }
        // The runtime's own functions come last, so that no module can take their names.
        udfs.scalars.push(crate::masking::pseudonym_udf(pseudonyms));
        udfs.scalars.extend(crate::masking::desensitization_udfs());
        Ok((tables, udfs, sources, rows_scanned))
    }

    pub(super) fn job_row(db: &Connection, id: &str) -> Result<JobRecord> {
        db.query_row(
            "SELECT id, scenario_id, submitted_by, sql, modules, state, error, rows, schema, resources,
                    level, created_at, finished_at, result_hash, wrapped_key, shape, plan, inputs
             FROM jobs WHERE id = ?1",
            params![id],
            JobColumns::from_row,
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("job {id}")))?
        .into_record()
    }

    /// Cancels a job: a queued one never runs; a running one stops at its next check and
    /// ends `failed`. Its unit's scientists or the authority's admins may; a finished job is
    /// left as it is.
    pub fn cancel_job(&self, actor: &Principal, id: &str) -> Result<JobView> {
        let (job, org, kind) = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let job = Self::job_row(&db, id)?.view;
            let org = Self::scenario_row(&db, &job.scenario)?.org;
            (job, org, Self::org_kind(&db, &actor.org)?)
        };
        if actor.org != org && !tidegate_policy::oversees_all_orgs(actor, kind) {
            return Err(Error::NotFound(format!("job {id}")));
        }
        tidegate_policy::can_cancel_job(actor, &org, kind)?;
        // Decided under the metadata lock, as a job's start and end are: a cancel either
        // finds the job queued (it never runs), running (it ends cancelled, whatever it ends
        // with), or ended (refused): it is never acknowledged and then lost.
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.stop_job(
                &mut db,
                id,
                &job.scenario,
                &actor.id,
                "cancelled before it started",
            )?;
        }
        self.get_job(actor, id)
    }

    /// R-EXIT: a job's own scientist discards its stored result (keys, then files), freeing
    /// room under the scenario's storage quota. Exports requested from it keep their own
    /// files; a new export of the job is refused (it has no result).
    pub fn discard_result(&self, actor: &Principal, id: &str) -> Result<JobView> {
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let job = Self::job_row(&db, id)?.view;
        let org = Self::scenario_row(&db, &job.scenario)?.org;
        let kind = Self::org_kind(&db, &actor.org)?;
        if actor.org != org && !tidegate_policy::oversees_all_orgs(actor, kind) {
            return Err(Error::NotFound(format!("job {id}")));
        }
        tidegate_policy::can_discard_result(actor, &org)?;
        let tx = db.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET wrapped_key = NULL, subjects_key = NULL
             WHERE id = ?1 AND wrapped_key IS NOT NULL",
            params![id],
        )?;
        if changed == 0 {
            return Err(Error::BadInput(format!("job {id} keeps no result")));
        }
        self.audit.append(
            &actor.id,
            crate::audit::Action::JobDiscard,
            id,
            crate::audited::JobDiscard {
                scenario: job.scenario.clone(),
            }
            .to_value(),
        )?;
        tx.commit()?;
        drop(db);
        // The keys are gone with the commit; a file left by a crash here is unreadable.
        Self::remove_files(&[
            self.object_path("results", id),
            self.object_path("subjects", id),
        ])?;
        self.get_job(actor, id)
    }

    /// Stops a job under the metadata lock: queued, it never runs (ended with `why`);
    /// running, it ends cancelled; ended, refused.
    pub(super) fn stop_job(
        &self,
        db: &mut Connection,
        id: &str,
        scenario: &str,
        by: &str,
        why: &str,
    ) -> Result<()> {
        let state = Self::job_row(db, id)?.view.state;
        match state.as_str() {
            "queued" => {
                self.end_unrun(db, id, "queued", by, why)?;
                self.queue.remove(id);
            }
            "running" => {
                self.cancels
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.to_string());
                let running = self
                    .running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (_, meter) in running
                    .get(scenario)
                    .into_iter()
                    .flatten()
                    .filter(|(j, _)| j == id)
                {
                    meter.cancel();
                }
            }
            ended => {
                return Err(Error::Refused(format!("the job has already {ended}")));
            }
        }
        Ok(())
    }

    fn unlist_running(&self, scenario: &str, id: &str) {
        if let Some(jobs) = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(scenario)
        {
            jobs.retain(|(j, _)| j != id);
        }
    }

    pub fn get_job(&self, actor: &Principal, id: &str) -> Result<JobView> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let job = Self::job_row(&db, id)?.view;
        let s = Self::scenario_row(&db, &job.scenario)?;
        let visible = actor.org == s.org
            || tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?);
        if !visible {
            return Err(Error::NotFound(format!("job {id}")));
        }
        let mut job = job;
        if job.state == JobState::Running
            && let Some((sources, total)) = self
                .reading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(id)
        {
            let read: u64 = sources.iter().map(SealedSource::bytes_read).sum();
            let percent = (read.saturating_mul(100) / (*total).max(1)).min(99) as u8;
            job.progress_percent = Some(if job.level > Level::L1 {
                percent / 10 * 10
            } else {
                percent
            });
        }
        Ok(job)
    }

    // ----- Export, review, release -----
}

/// What a job's `inputs` column records: each dataset version it reads, by content hash.
fn inputs_json(inputs: &[JobInput]) -> Vec<StoredInput> {
    inputs
        .iter()
        .map(|i| StoredInput {
            dataset: i.dataset.id.clone(),
            name: i.dataset.name.clone(),
            version: i.version,
            content_hash: i.content_hash.clone(),
            rule_failures: i.rule_failures,
        })
        .collect()
}

/// What a job runs over, as [`Platform::job_inputs`] checked it.
struct CheckedJob {
    scenario: ScenarioRow,
    inputs: Vec<JobInput>,
    modules: Vec<Vec<u8>>,
    level: Level,
    pseudonyms: PseudonymKey,
    subjects: crate::crypto::SubjectKey,
}

/// A finished job's result as written, before its metadata is.
struct SealedResult {
    rows: usize,
    visible: Vec<(String, String)>,
    output_bytes: u64,
    result_hash: String,
    wrapped: Vec<u8>,
    subjects_key: Option<Vec<u8>>,
}

/// A `jobs` row as stored, read by column name.
struct JobColumns {
    id: String,
    scenario: String,
    submitted_by: String,
    sql: String,
    modules: String,
    state: String,
    error: Option<String>,
    rows: Option<i64>,
    schema: Option<String>,
    resources: Option<String>,
    level: String,
    created_at: String,
    finished_at: Option<String>,
    result_hash: Option<String>,
    wrapped_key: Option<Vec<u8>>,
    shape: Option<String>,
    plan: Option<String>,
    inputs: String,
}

impl JobColumns {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(JobColumns {
            id: r.get("id")?,
            scenario: r.get("scenario_id")?,
            submitted_by: r.get("submitted_by")?,
            sql: r.get("sql")?,
            modules: r.get("modules")?,
            state: r.get("state")?,
            error: r.get("error")?,
            rows: r.get("rows")?,
            schema: r.get("schema")?,
            resources: r.get("resources")?,
            level: r.get("level")?,
            created_at: r.get("created_at")?,
            finished_at: r.get("finished_at")?,
            result_hash: r.get("result_hash")?,
            wrapped_key: r.get("wrapped_key")?,
            shape: r.get("shape")?,
            plan: r.get("plan")?,
            inputs: r.get("inputs")?,
        })
    }

    /// The job as the platform uses it: JSON columns decoded, states parsed.
    fn into_record(self) -> Result<JobRecord> {
        let inputs: Vec<StoredInput> = from_json(&self.inputs)?;
        let quality_warnings = inputs
            .iter()
            .filter(|i| i.rule_failures.is_some_and(|n| n > 0))
            .map(|i| {
                format!(
                    "{} version {}: some rows fail its provider's quality rules",
                    i.name, i.version
                )
            })
            .collect();
        Ok(JobRecord {
            view: JobView {
                id: self.id,
                scenario: self.scenario,
                submitted_by: self.submitted_by,
                sql: self.sql,
                modules: from_json(&self.modules)?,
                state: stored_state(&self.state)?,
                error: self.error,
                rows: self.rows,
                schema: self
                    .schema
                    .map(|s| from_json(&s))
                    .transpose()?
                    .unwrap_or_default(),
                resources: self.resources.map(|s| from_json(&s)).transpose()?,
                level: self.level.parse().map_err(Error::Integrity)?,
                created_at: self.created_at,
                finished_at: self.finished_at,
                progress_percent: None,
                quality_warnings,
            },
            result_hash: self.result_hash,
            wrapped: self.wrapped_key,
            shape: self.shape,
            plan: self.plan,
            inputs,
        })
    }
}
