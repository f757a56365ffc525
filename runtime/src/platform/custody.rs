//! Custody of a dataset version (R-CUSTODY): the authority's admins seal it (no job may read
//! it; it is kept for inspection), unseal it, or destroy it (its key and its file; scenarios
//! pinned to it are suspended), each with a reason, an audit entry and a record signed with
//! the platform's key.

use super::*;
use crate::documents::{CustodyRecord, CustodyRecordBody, Destroyed, DestroyedKind};

/// A sample of a dataset version, for inspection: its columns and rows as text.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SampleView {
    pub dataset: String,
    pub version: i64,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// What custody did to a version, as its record says.
#[derive(Clone, Copy)]
enum Custody {
    Seal,
    Unseal,
    Destroy,
}

impl Platform {
    /// Seals a dataset version: from now on no job reads it (queued and new jobs are refused,
    /// running jobs of scenarios granting the dataset are cancelled); it is kept as it is.
    pub fn seal_dataset_version(
        &self,
        actor: &Principal,
        dataset: &str,
        version: i64,
        reason: &str,
    ) -> Result<CustodyRecord> {
        self.custody(actor, dataset, version, reason, Custody::Seal)
    }

    /// Lifts a version's seal: jobs may read it again.
    pub fn unseal_dataset_version(
        &self,
        actor: &Principal,
        dataset: &str,
        version: i64,
        reason: &str,
    ) -> Result<CustodyRecord> {
        self.custody(actor, dataset, version, reason, Custody::Unseal)
    }

    /// Destroys a dataset version: its data key is erased and its file deleted, active
    /// scenarios pinned to it are suspended and their jobs stop; a signed destruction
    /// certificate says what was destroyed. Exports already released stay with their owners.
    pub fn destroy_dataset_version(
        &self,
        actor: &Principal,
        dataset: &str,
        version: i64,
        reason: &str,
    ) -> Result<CustodyRecord> {
        self.custody(actor, dataset, version, reason, Custody::Destroy)
    }

    fn custody(
        &self,
        actor: &Principal,
        dataset: &str,
        version: i64,
        reason: &str,
        what: Custody,
    ) -> Result<CustodyRecord> {
        tidegate_policy::can_keep_custody(actor, reason)?;
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let d = Self::dataset_row(&db, dataset)?;
        let state: Option<(String, Option<String>, Option<String>)> = db
            .query_row(
                "SELECT content_hash, sealed, destroyed FROM dataset_versions
                 WHERE dataset_id = ?1 AND version = ?2",
                params![d.id, version],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((content_hash, sealed, destroyed)) = state else {
            return Err(Error::NotFound(format!("version {version} of {}", d.name)));
        };
        if destroyed.is_some() {
            return Err(Error::Refused(format!(
                "version {version} of {} was destroyed",
                d.name
            )));
        }
        match (what, sealed.is_some()) {
            (Custody::Seal, true) => {
                return Err(Error::Refused(format!(
                    "version {version} of {} is sealed already",
                    d.name
                )));
            }
            (Custody::Unseal, false) => {
                return Err(Error::Refused(format!(
                    "version {version} of {} is not sealed",
                    d.name
                )));
            }
            _ => {}
        }
        // The scenarios that grant the dataset, and those pinned to this version.
        let mut granting = Vec::new();
        let mut pinned = Vec::new();
        let rows: Vec<(String, String, String)> = db
            .prepare("SELECT id, grants, state FROM scenarios")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (sid, grants, state) in rows {
            for g in from_json::<Vec<GrantRequest>>(&grants)? {
                if Self::dataset_row(&db, &g.dataset).is_ok_and(|x| x.id == d.id) {
                    granting.push(sid.clone());
                    if g.version == Some(version) && state == "active" {
                        pinned.push(sid.clone());
                    }
                }
            }
        }
        let now = crate::now_rfc3339();
        let (format, action) = match what {
            Custody::Seal => (
                "tidegate-sealing-record-v1",
                crate::audit::Action::DatasetSeal,
            ),
            Custody::Unseal => (
                "tidegate-unsealing-record-v1",
                crate::audit::Action::DatasetUnseal,
            ),
            Custody::Destroy => (
                "tidegate-destruction-certificate-v1",
                crate::audit::Action::DatasetDestroy,
            ),
        };
        let mut record = CustodyRecordBody {
            format: format.into(),
            dataset: d.id.clone(),
            name: d.name.clone(),
            version,
            sha256: content_hash.clone(),
            reason: reason.to_string(),
            by: actor.id.clone(),
            at: now.clone(),
            destroyed: None,
            scenarios_suspended: None,
            kept: None,
        };
        let object = format!("{}/v{version}", d.id);
        let tx = db.transaction()?;
        match what {
            Custody::Seal => {
                tx.execute(
                    "UPDATE dataset_versions SET sealed = ?3 WHERE dataset_id = ?1 AND version = ?2",
                    params![d.id, version, to_json(&record)],
                )?;
            }
            Custody::Unseal => {
                tx.execute(
                    "UPDATE dataset_versions SET sealed = NULL WHERE dataset_id = ?1 AND version = ?2",
                    params![d.id, version],
                )?;
            }
            Custody::Destroy => {
                record.destroyed = Some(vec![
                    Destroyed::new(DestroyedKind::DataKey, &object, None),
                    Destroyed::new(DestroyedKind::DatasetFile, &object, Some(&content_hash)),
                ]);
                record.scenarios_suspended = Some(pinned.clone());
                record.kept = Some(
                    "the audit log, the version's metadata and quality report, and exports already released"
                        .into(),
                );
                tx.execute(
                    "UPDATE dataset_versions SET wrapped_key = x'', sealed = NULL, destroyed = ?3
                     WHERE dataset_id = ?1 AND version = ?2",
                    params![d.id, version, now],
                )?;
                for sid in &pinned {
                    tx.execute(
                        "UPDATE scenarios SET state = 'suspended' WHERE id = ?1 AND state = 'active'",
                        params![sid],
                    )?;
                }
            }
        }
        let body = crate::documents::signed_bytes(&record)?;
        let signature = hex::encode(self.signer.sign(&body));
        self.audit.append_at(
            now,
            &actor.id,
            action,
            &d.id,
            crate::audited::value(&crate::audited::DatasetCustody {
                version,
                reason: reason.to_string(),
                scenarios_suspended: pinned.clone(),
                record_sha256: sha256_hex(&body),
            }),
        )?;
        tx.commit()?;
        if !matches!(what, Custody::Unseal) {
            // Whatever still reads the dataset stops (a running job of a scenario granting it
            // may be reading this version); it may be run again.
            self.cancel_jobs(&granting);
        }
        if matches!(what, Custody::Destroy) {
            match fs::remove_file(self.object_path("datasets", &object)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            // Overwritten pages may linger in the WAL until a checkpoint truncates it.
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(CustodyRecord { record, signature })
    }

    /// A sample of a dataset version's rows, drawn at random, for its provider or the
    /// authority's admins to inspect its quality inside the domain (a sealed version too: it
    /// is kept for inspection). Shown, never exported; audited.
    pub fn sample_dataset_version(
        &self,
        actor: &Principal,
        dataset: &str,
        version: i64,
        rows: u64,
    ) -> Result<SampleView> {
        let (d, wrapped, context) = {
            let db = self
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let d = Self::dataset_row(&db, dataset)?;
            tidegate_policy::can_sample_dataset(actor, &d.org, rows)?;
            let found: Option<(Vec<u8>, Option<String>)> = db
                .query_row(
                    "SELECT wrapped_key, destroyed FROM dataset_versions
                     WHERE dataset_id = ?1 AND version = ?2",
                    params![d.id, version],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((wrapped, destroyed)) = found else {
                return Err(Error::NotFound(format!("version {version} of {}", d.name)));
            };
            if destroyed.is_some() {
                return Err(Error::Refused(format!(
                    "version {version} of {} was destroyed",
                    d.name
                )));
            }
            let context = Self::stored_dataset_context(&db, &d.id, version)?;
            (d, wrapped, context)
        };
        let object = format!("{}/v{version}", d.id);
        let sealed = self.sealed_source("datasets", &object, &context, &wrapped)?;
        let path = format!("datasets/{object}.parquet");
        let mut store = SealedStore::default();
        store.insert(&path, sealed);
        let table = TableInput {
            name: d.name.clone(),
            columns: d.columns.clone(),
            data: TableData::Sealed {
                store: Arc::new(store),
                object: path,
                entity: None,
            },
        };
        // Dataset names are plain SQL names ([a-z][a-z0-9_]*); column names are plain too
        // (`check_column_names`), quoted to keep their case.
        let columns: Vec<String> = d
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY random() LIMIT {rows}",
            columns.join(", "),
            d.name
        );
        let (out, _) = futures::executor::block_on(job::run_query_isolated(
            sql,
            vec![table],
            crate::sandbox::Functions::default(),
            EngineLimits::default(),
            std::future::pending(),
        ));
        let out = out?;
        let mut columns = Vec::new();
        let mut values = Vec::new();
        for b in &out.batches {
            let b = crate::hidden::drop_hidden(b)?;
            if columns.is_empty() {
                columns = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
            }
            let shown = b
                .columns()
                .iter()
                .map(|c| {
                    arrow::util::display::ArrayFormatter::try_new(
                        c.as_ref(),
                        &arrow::util::display::FormatOptions::default().with_null("NULL"),
                    )
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Internal(format!("sample: {e}")))?;
            for i in 0..b.num_rows() {
                values.push(shown.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
        self.audit.append_at(
            crate::now_rfc3339(),
            &actor.id,
            crate::audit::Action::DatasetSample,
            &d.id,
            crate::audited::DatasetSample {
                version,
                rows: values.len(),
            }
            .to_value(),
        )?;
        Ok(SampleView {
            dataset: d.name,
            version,
            columns,
            rows: values,
        })
    }

    /// The version a grant reads (pinned, or the newest, which a unit's own data must have had
    /// approved), refused when custody has taken it out of use.
    pub(super) fn granted_version(
        db: &Connection,
        dataset: &DatasetRow,
        pinned: Option<i64>,
    ) -> Result<super::datasets::VersionRow> {
        let version = match pinned {
            Some(v) => Self::dataset_version(db, &dataset.id, v)?,
            None if dataset.pending => {
                return Err(Error::Refused(format!(
                    "the newest version of {} awaits an admin's approval",
                    dataset.name
                )));
            }
            None => Self::latest_version(db, &dataset.id)?,
        };
        Self::readable_version(db, dataset, version.version)?;
        Ok(version)
    }

    /// Refuses a version that custody has taken out of use.
    pub(super) fn readable_version(
        db: &Connection,
        dataset: &DatasetRow,
        version: i64,
    ) -> Result<()> {
        let (sealed, destroyed): (Option<String>, Option<String>) = db.query_row(
            "SELECT sealed, destroyed FROM dataset_versions WHERE dataset_id = ?1 AND version = ?2",
            params![dataset.id, version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if destroyed.is_some() {
            return Err(Error::Refused(format!(
                "version {version} of {} was destroyed by the authority",
                dataset.name
            )));
        }
        if let Some(record) = sealed {
            /// What a seal's record says it is: a custody seal or an import's quarantine.
            #[derive(Deserialize)]
            struct Seal {
                format: String,
            }
            let quarantined = from_json::<Seal>(&record)?.format == "tidegate-quarantine-v1";
            return Err(Error::Refused(if quarantined {
                format!(
                    "version {version} of {} is quarantined (sealed): it broke its provider's quality rules; no job may read it until an admin unseals it",
                    dataset.name
                )
            } else {
                format!(
                    "version {version} of {} is sealed by the authority: no job may read it",
                    dataset.name
                )
            }));
        }
        Ok(())
    }
}
