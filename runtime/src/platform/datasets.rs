//! Datasets: import (with its quality report and tag proposals), approval of social data, listing.

use super::directory::dataset_context;
use super::*;

impl Platform {
    pub fn import_dataset(&self, actor: &Principal, req: ImportRequest) -> Result<DatasetView> {
        // A provider imports public data; an operating unit's scientist imports its own
        // enterprise ("social") data, which waits for an admin's approval.
        let social = !actor.has_role(Role::Provider);
        if social {
            tidegate_policy::can_import_social(actor, req.level)?;
        } else {
            tidegate_policy::can_import(actor, req.level)?;
        }
        use base64::Engine as _;
        if req.data_base64.len() > MAX_INLINE_IMPORT_BYTES / 3 * 4 + 4 {
            return Err(Error::Limit(format!(
                "a file inside a JSON body is at most {MAX_INLINE_IMPORT_BYTES} bytes; \
                 stream larger ones to /v1/datasets/upload"
            )));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(req.data_base64.as_bytes())
            .map_err(|_| Error::BadInput("data_base64 is not base64".into()))?;
        self.import_file(actor, req, FileBytes::Memory(data.into()))
    }

    /// Imports a file that was streamed to the data directory, sealed as it arrived.
    pub fn import_staged(
        &self,
        actor: &Principal,
        req: ImportRequest,
        upload: StagedUpload,
    ) -> Result<DatasetView> {
        let file = upload.finish()?;
        self.import_file(actor, req, FileBytes::Sealed(Arc::new(file)))
    }

    /// Reads the file batch by batch into a new dataset version: each batch is counted for
    /// the quality report and written on as compressed Parquet, sealed into the version's
    /// object as it goes; the metadata lock is held only to choose the version and to commit.
    fn import_file(
        &self,
        actor: &Principal,
        req: ImportRequest,
        file: FileBytes,
    ) -> Result<DatasetView> {
        let social = !actor.has_role(Role::Provider);
        if social {
            tidegate_policy::can_import_social(actor, req.level)?;
        } else {
            tidegate_policy::can_import(actor, req.level)?;
        }
        tidegate_policy::check_dataset_name(&req.name).map_err(|r| Error::BadInput(r.reason))?;
        if file.len() > MAX_IMPORT_BYTES {
            return Err(Error::Limit(format!(
                "an import is at most {MAX_IMPORT_BYTES} bytes"
            )));
        }
        let table = reading::open_table(&req.format, file, &req.columns)?;
        let columns = column_specs(&table.schema, &req.columns)?;
        let mocks = super::mocks::declared_mocks(&columns, &req.columns)?;
        let _claim = ImportClaim::take(&self.importing, &req.name)?;

        let (id, version, existing, approvers, rules) = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (id, version, existing, approvers) =
                self.import_target(&db, actor, &req, &columns)?;
            // S17: the rules named now, or the dataset's own.
            let rules: Vec<tidegate_policy::QualityRule> = match &req.quality_rules {
                Some(rules) => rules.clone(),
                None if existing => db
                    .query_row(
                        "SELECT quality_rules FROM datasets WHERE id = ?1",
                        params![id],
                        |r| r.get::<_, String>(0),
                    )
                    .map(|s| from_json(&s))??,
                None => Vec::new(),
            };
            tidegate_policy::check_quality_rules(&rules, &columns)
                .map_err(|r| Error::BadInput(r.reason))?;
            (id, version, existing, approvers, rules)
        };
        let object = format!("{id}/v{version}");
        let context = dataset_context(&actor.org, &id, version);
        let dek = DataKey::generate();
        let sink =
            reading::ObjectSink::create(&self.object_path("datasets", &object), &dek, &context)?;
        let writer = reading::stored_parquet_writer(sink, Arc::clone(&table.schema))?;
        let (sink, quality) = reading::pipeline(table.batches, writer, &columns, &rules)?;
        let rows = quality.rows();
        if rows == 0 {
            return Err(Error::BadInput("the file holds no rows".into()));
        }
        // S17: an import that breaks a rule declared to refuse stores nothing (the sealed
        // file, never committed, goes with the sink); one declared to quarantine is stored
        // sealed until an admin unseals it.
        let broken: Vec<(Value, tidegate_policy::OnFail)> = quality
            .rule_results()
            .into_iter()
            .filter_map(|(r, f)| f.map(|f| (r, f)))
            .collect();
        let verdict =
            tidegate_policy::quality_verdict(&broken.iter().map(|(_, f)| *f).collect::<Vec<_>>());
        let named = |wanted: tidegate_policy::OnFail| {
            broken
                .iter()
                .filter(|(_, f)| *f == wanted)
                .map(|(r, _)| {
                    format!(
                        "{} on `{}`",
                        r["rule"]["check"].as_str().unwrap_or("?"),
                        r["column"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if verdict == tidegate_policy::OnFail::Refuse {
            return Err(Error::BadInput(format!(
                "the file breaks quality rules declared to refuse it: {}; nothing was stored",
                named(tidegate_policy::OnFail::Refuse)
            )));
        }
        let mut quality = quality.report();
        let quarantine = (verdict == tidegate_policy::OnFail::Quarantine).then(|| {
            quality["quarantined"] = json!(true);
            json!({
                "format": "tidegate-quarantine-v1",
                "dataset": id,
                "name": req.name,
                "version": version,
                "reason": format!("the import broke quality rules: {}", named(tidegate_policy::OnFail::Quarantine)),
                "by": actor.id,
                "at": crate::now_rfc3339(),
            })
        });
        let (content_hash, stored_bytes) = sink.commit()?;
        let wrapped = self.master.wrap(&dek, &context);

        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.transaction()?;
        let now = crate::now_rfc3339();
        if !existing {
            tx.execute(
                "INSERT INTO datasets (id, name, org_id, level, origin, columns, created_at, approvers, mock)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    req.name,
                    actor.org,
                    req.level.to_string(),
                    if social { "social-pending" } else { "public" },
                    to_json(&columns),
                    now,
                    to_json(&approvers),
                    to_json(&mocks)
                ],
            )?;
        } else {
            tx.execute(
                "UPDATE datasets SET level = ?2, columns = ?3 WHERE id = ?1",
                params![id, req.level.to_string(), to_json(&columns)],
            )?;
            // A new version of a unit's own data waits for an admin again, as the first did.
            if social {
                tx.execute(
                    "UPDATE datasets SET origin = 'social-pending' WHERE id = ?1",
                    params![id],
                )?;
            }
            // A new version keeps the mock metadata unless the import declares some; what it
            // keeps is checked again against the new columns and tags.
            let mocks = if mocks.is_empty() {
                super::mocks::still_holding(Self::mock_specs(&tx, &id)?, &columns)
            } else {
                mocks
            };
            tx.execute(
                "UPDATE datasets SET mock = ?2 WHERE id = ?1",
                params![id, to_json(&mocks)],
            )?;
            if !approvers.is_empty() {
                tx.execute(
                    "UPDATE datasets SET approvers = ?2 WHERE id = ?1",
                    params![id, to_json(&approvers)],
                )?;
            }
        }
        tx.execute(
            "INSERT INTO dataset_versions (dataset_id, version, content_hash, rows, bytes, wrapped_key,
                                           quality, created_at, context, sealed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                id,
                version,
                content_hash,
                rows as i64,
                stored_bytes as i64,
                wrapped,
                quality.to_string(),
                now,
                context,
                quarantine.as_ref().map(|q| q.to_string())
            ],
        )?;
        tx.execute(
            "UPDATE datasets SET quality_rules = ?2 WHERE id = ?1",
            params![id, to_json(&rules)],
        )?;
        self.audit.append_at(
            now,
            &actor.id,
            crate::audit::Action::DatasetImport,
            &id,
            crate::audited::DatasetImport {
                version,
                level: req.level,
                rows: rows as u64,
                content_hash: content_hash.clone(),
                approvers,
                bytes: stored_bytes,
                social,
                quality_rules: rules.len(),
                quarantined: quarantine.is_some(),
            }
            .to_value(),
        )?;
        tx.commit()?;
        let approvers = Self::dataset_row(&db, &id)?.approvers;
        let mock = Self::mock_specs(&db, &id)?;
        let (privacy_budget, privacy_drawn) = Self::budget_of(&db, &id)?;
        Ok(DatasetView {
            id,
            name: req.name,
            level: req.level,
            origin: if social {
                Origin::Social
            } else {
                Origin::Public
            },
            provider_org: actor.org.clone(),
            columns,
            version,
            rows: Some(rows as i64),
            content_hash: Some(content_hash),
            quality: Some(quality),
            pending: social,
            approvers,
            privacy_budget,
            privacy_drawn,
            mock,
        })
    }

    /// Where an import goes: the dataset's id (new or existing), the version it adds, whether
    /// the dataset exists, and the orgs it names as approvers. Refused when the name is
    /// another provider's, the new version breaks the old one's contract, or the approvers
    /// are not the provider's to name.
    fn import_target(
        &self,
        db: &Connection,
        actor: &Principal,
        req: &ImportRequest,
        columns: &[ColumnSpec],
    ) -> Result<(String, i64, bool, Vec<String>)> {
        let social = !actor.has_role(Role::Provider);
        if social && !req.approvers.is_empty() {
            return Err(Error::BadInput(
                "only a provider names further approvers of its data".into(),
            ));
        }
        let mut approvers = Vec::new();
        for org in &req.approvers {
            let org = Self::org_id(db, org)?;
            if org == actor.org {
                return Err(Error::BadInput(
                    "the provider approves its own data's scenarios already".into(),
                ));
            }
            if !approvers.contains(&org) {
                approvers.push(org);
            }
        }
        let existing: Option<(String, String)> = db
            .query_row(
                "SELECT id, org_id FROM datasets WHERE name = ?1",
                params![req.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (id, version) = match &existing {
            Some((id, org)) if org == &actor.org => {
                let old = Self::dataset_row(db, id)?;
                tidegate_policy::check_new_version(old.level, req.level, &old.columns, columns)?;
                let v: i64 = db.query_row(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions WHERE dataset_id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                (id.clone(), v)
            }
            Some(_) => {
                return Err(Error::Refused(format!(
                    "a dataset named {} belongs to another provider",
                    req.name
                )));
            }
            None => (new_id("ds"), 1),
        };
        Ok((id, version, existing.is_some(), approvers))
    }

    /// A dataset's privacy budget and the epsilon scenarios have drawn from it.
    fn budget_of(db: &Connection, id: &str) -> Result<(tidegate_policy::DatasetBudget, f64)> {
        Ok(db.query_row(
            "SELECT dp_total, dp_per_org,
                    (SELECT COALESCE(SUM(epsilon), 0) FROM budget_draws WHERE dataset_id = ?1)
             FROM datasets WHERE id = ?1",
            params![id],
            |r| {
                Ok((
                    tidegate_policy::DatasetBudget {
                        total: r.get(0)?,
                        per_org: r.get(1)?,
                    },
                    r.get(2)?,
                ))
            },
        )?)
    }

    pub(super) fn dataset_row(db: &Connection, name_or_id: &str) -> Result<DatasetRow> {
        db.query_row(
            "SELECT id, name, org_id, level, origin, columns, approvers FROM datasets
             WHERE id = ?1 OR name = ?1",
            params![name_or_id],
            |r| {
                Ok((
                    r.get::<_, String>("id")?,
                    r.get::<_, String>("name")?,
                    r.get::<_, String>("org_id")?,
                    r.get::<_, String>("level")?,
                    r.get::<_, String>("origin")?,
                    r.get::<_, String>("columns")?,
                    r.get::<_, String>("approvers")?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("dataset {name_or_id}")))
        .and_then(|(id, name, org, level, origin, columns, approvers)| {
            Ok(DatasetRow {
                id,
                name,
                org,
                level: level.parse().map_err(Error::Integrity)?,
                origin: if origin.starts_with("social") {
                    Origin::Social
                } else {
                    Origin::Public
                },
                pending: origin == "social-pending",
                columns: from_json(&columns)?,
                approvers: from_json(&approvers)?,
            })
        })
    }

    pub(super) fn latest_version(db: &Connection, id: &str) -> Result<VersionRow> {
        db.query_row(
            "SELECT version, content_hash, rows, wrapped_key, quality FROM dataset_versions
             WHERE dataset_id = ?1 ORDER BY version DESC LIMIT 1",
            params![id],
            VersionRow::from_row,
        )
        .map_err(Error::from)
    }

    pub(super) fn dataset_version(db: &Connection, id: &str, version: i64) -> Result<VersionRow> {
        db.query_row(
            "SELECT version, content_hash, rows, wrapped_key, quality FROM dataset_versions
             WHERE dataset_id = ?1 AND version = ?2",
            params![id, version],
            VersionRow::from_row,
        )
        .map_err(Error::from)
    }

    /// R-IMPORT: an admin approves an operating unit's social data for use in its scenarios.
    pub fn approve_dataset(&self, actor: &Principal, id: &str) -> Result<()> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::require_training(actor)?;
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let d = Self::dataset_row(&db, id)?;
        if !d.pending {
            return Err(Error::BadInput(format!(
                "dataset {} awaits no approval",
                d.name
            )));
        }
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE datasets SET origin = 'social' WHERE id = ?1",
            params![d.id],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::DatasetApprove,
            &d.id,
            crate::audited::DatasetApprove { org: d.org.clone() }.to_value(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// R-GATE 7: a dataset's provider sets its differential privacy budget: the epsilon all
    /// scenarios together may draw from it, and the most one org may.
    pub fn set_dataset_budget(
        &self,
        actor: &Principal,
        id: &str,
        budget: tidegate_policy::DatasetBudget,
    ) -> Result<DatasetView> {
        tidegate_policy::require_role(actor, Role::Provider)?;
        tidegate_policy::require_training(actor)?;
        {
            let mut db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let d = Self::dataset_row(&db, id)?;
            if d.org != actor.org {
                return Err(Error::NotFound(format!("dataset {id}")));
            }
            let drawn: f64 = db.query_row(
                "SELECT COALESCE(SUM(epsilon), 0) FROM budget_draws WHERE dataset_id = ?1",
                params![d.id],
                |r| r.get(0),
            )?;
            budget.validate(drawn).map_err(Error::BadInput)?;
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE datasets SET dp_total = ?2, dp_per_org = ?3 WHERE id = ?1",
                params![d.id, budget.total, budget.per_org],
            )?;
            self.audit.append(
                &actor.id,
                crate::audit::Action::DatasetBudget,
                &d.id,
                crate::audited::DatasetBudget {
                    total: budget.total,
                    per_org: budget.per_org,
                }
                .to_value(),
            )?;
            tx.commit()?;
        }
        self.list_datasets(actor)?
            .into_iter()
            .find(|d| d.id == id || d.name == id)
            .ok_or_else(|| Error::NotFound(format!("dataset {id}")))
    }

    pub fn list_datasets(&self, actor: &Principal) -> Result<Vec<DatasetView>> {
        tidegate_policy::require_training(actor)?;
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let oversees = tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?);
        let ids: Vec<String> = db
            .prepare("SELECT id FROM datasets ORDER BY created_at")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut visible = Vec::new();
        for id in &ids {
            let d = Self::dataset_row(&db, id)?;
            if tidegate_policy::can_list_dataset(
                actor,
                oversees,
                &d.org,
                d.origin,
                d.pending,
                &d.approvers,
            ) {
                visible.push(d);
            }
        }
        visible
            .into_iter()
            .map(|d| {
                let id = &d.id;
                let VersionRow {
                    version,
                    content_hash,
                    rows,
                    quality,
                    ..
                } = Self::latest_version(&db, id)?;
                let steward = oversees || d.org == actor.org || d.approvers.contains(&actor.org);
                let (privacy_budget, privacy_drawn) = Self::budget_of(&db, id)?;
                // Public to the dataset's stewards: the ranges and counts are the provider's to
                // publish through its mocks, not to every reader of the catalogue.
                let mock = if steward {
                    Self::mock_specs(&db, id)?
                } else {
                    BTreeMap::new()
                };
                Ok(DatasetView {
                    id: d.id,
                    name: d.name,
                    level: d.level,
                    origin: d.origin,
                    provider_org: d.org,
                    columns: d.columns,
                    version,
                    rows: steward.then_some(rows),
                    content_hash: steward.then_some(content_hash),
                    quality: steward.then(|| from_json(&quality)).transpose()?,
                    pending: d.pending,
                    approvers: d.approvers,
                    privacy_budget,
                    privacy_drawn,
                    mock,
                })
            })
            .collect()
    }

    // ----- Scenarios -----
}

/// A dataset name reserved for one import while it runs; released when dropped.
struct ImportClaim<'a> {
    names: &'a Mutex<HashSet<String>>,
    name: String,
}

impl<'a> ImportClaim<'a> {
    fn take(names: &'a Mutex<HashSet<String>>, name: &str) -> Result<ImportClaim<'a>> {
        let mut held = names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !held.insert(name.to_string()) {
            return Err(Error::Refused(format!(
                "another import of {name} is under way; try again when it has finished"
            )));
        }
        Ok(ImportClaim {
            names,
            name: name.to_string(),
        })
    }
}

impl Drop for ImportClaim<'_> {
    fn drop(&mut self) {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

/// A `dataset_versions` row as the platform reads it, by column name.
pub(super) struct VersionRow {
    pub(super) version: i64,
    pub(super) content_hash: String,
    pub(super) rows: i64,
    pub(super) wrapped_key: Vec<u8>,
    /// The import's quality report, JSON.
    pub(super) quality: String,
}

impl VersionRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(VersionRow {
            version: r.get("version")?,
            content_hash: r.get("content_hash")?,
            rows: r.get("rows")?,
            wrapped_key: r.get("wrapped_key")?,
            quality: r.get("quality")?,
        })
    }
}
