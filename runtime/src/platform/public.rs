//! The public record (S19): what anyone may read without signing in, signed by the platform so
//! that a copy verifies offline: the authorized units, their scenarios (purpose, key area, term,
//! state), the products released (title, date, scenario; their figures only where the
//! scenario's approved rules publish them), and the fees charged this year by category.
//! Drafts, applications still waiting for approvals, datasets, jobs, principals and every
//! unpublished result stay out.

use super::*;

/// The record and the platform's signature over its JSON bytes (hex).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicRecord {
    /// `tidegate-public-record-v1`.
    #[schema(value_type = Object)]
    pub record: Value,
    pub signature: String,
    /// The signed document's JSON and its page, made once per build and shared by every
    /// request that the build answers (anonymous requests copy nothing).
    #[serde(skip)]
    #[schema(ignore)]
    pub rendered: Rendered,
}

/// What a build of the public record is served as, made on first use (the build is shared
/// behind an `Arc`, and so is this).
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    json: std::sync::OnceLock<bytes::Bytes>,
    html: std::sync::OnceLock<bytes::Bytes>,
}

impl PublicRecord {
    /// The signed document as JSON bytes.
    pub fn json(&self) -> bytes::Bytes {
        self.rendered
            .json
            .get_or_init(|| {
                bytes::Bytes::from(serde_json::to_vec(self).expect("the record serializes"))
            })
            .clone()
    }

    /// The record as a page, rendered by `render` the first time it is asked for.
    pub fn html(&self, render: impl FnOnce(&Value) -> String) -> bytes::Bytes {
        self.rendered
            .html
            .get_or_init(|| bytes::Bytes::from(render(&self.record)))
            .clone()
    }
}

/// The most bytes of figures (as CSV) one record carries; products past it are listed with
/// their titles and a word on where their figures are.
const MAX_FIGURES_BYTES: usize = 16 << 20;

/// A released product: (export, scenario, released at) and (requested public, flagged,
/// result hash, wrapped key).
type ProductRow = (
    (String, String, Option<String>),
    (bool, bool, Option<String>, Option<Vec<u8>>),
);

/// An authorized unit: id, name, since, until, exited.
type UnitRow = (String, String, String, Option<String>, Option<String>);

/// How long one signed record answers every request when no change was audited since (anyone
/// may ask; the record is built at most this often, or once per audited change of state,
/// never for a read or a sign-in, so no stream of requests holds the metadata lock).
const PUBLIC_RECORD_SECONDS: u64 = 60;

impl Platform {
    /// The public record, signed: the one built in the last minute if no action that changes
    /// state was audited since, or a new one. Every change the record shows is audited (an
    /// approval, a release, a revocation, a policy change), so a withdrawal takes effect at
    /// once; a term's end shows within the minute. Requests that arrive while it is built
    /// wait for that one build.
    pub fn public_record(&self) -> Result<Arc<PublicRecord>> {
        let mut cached = self
            .public_record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Reads and sign-ins, which anyone with a token or none can cause, do not count.
        let appended = self.audit.changes();
        if let Some((at, seq, record)) = cached.as_ref()
            && at.elapsed().as_secs() < PUBLIC_RECORD_SECONDS
            && *seq == appended
        {
            return Ok(Arc::clone(record));
        }
        let record = Arc::new(self.build_public_record()?);
        *cached = Some((Instant::now(), appended, Arc::clone(&record)));
        Ok(record)
    }

    /// A released export's rows as the bundle's CSV has them (header, then rows of text),
    /// after checking that the stored result is the one its reviewers approved.
    fn released_figures(
        &self,
        id: &str,
        hash: Option<String>,
        wrapped: Option<Vec<u8>>,
    ) -> Result<(Value, usize)> {
        let wrapped = wrapped.ok_or_else(|| Error::Integrity("no result".into()))?;
        let parquet = self.load_object("exports", id, &wrapped)?;
        let sha = sha256_hex(&parquet);
        if hash.as_deref() != Some(sha.as_str()) {
            return Err(Error::Integrity("the result changed after approval".into()));
        }
        let csv = gate::to_csv(&from_parquet(parquet)?)?;
        let size = csv.len();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(csv.as_slice());
        let columns: Vec<String> = reader
            .headers()
            .map_err(|e| Error::Internal(format!("released figures: {e}")))?
            .iter()
            .map(str::to_string)
            .collect();
        let rows: Vec<Vec<String>> = reader
            .records()
            .map(|r| r.map(|r| r.iter().map(str::to_string).collect()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Internal(format!("released figures: {e}")))?;
        Ok((
            json!({ "result_sha256": sha, "columns": columns, "rows": rows }),
            size,
        ))
    }

    fn build_public_record(&self) -> Result<PublicRecord> {
        let db = self.lock_db();
        let units: Vec<UnitRow> = db
            .prepare(
                "SELECT id, name, created_at, authorized_until, exited_at FROM orgs
                 WHERE kind = 'operator' ORDER BY created_at, id",
            )?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let ids: Vec<String> = db
            .prepare(
                "SELECT id FROM scenarios
                 WHERE state NOT IN ('draft', 'pending_approvals') ORDER BY created_at, id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut scenarios = Vec::new();
        // Read once each: the products below are of these scenarios.
        let mut rows: BTreeMap<String, ScenarioRow> = BTreeMap::new();
        for id in &ids {
            let s = Self::scenario_row(&db, id)?;
            // Only what was authorized: an application revoked before every approval was
            // given is not public.
            if !Self::approvals_state(&db, id, &s.grants)?
                .missing()
                .is_empty()
            {
                continue;
            }
            scenarios.push(json!({
                "id": s.id,
                "name": s.name,
                "org": s.org,
                "purpose": s.view.purpose,
                "key_area": s.view.key_area,
                "public_interest": s.view.public_interest,
                "term": [s.view.term_start, s.view.term_end],
                "state": s.view.state,
                "planned_products": s.view.planned_products,
            }));
            rows.insert(id.clone(), s);
        }
        let products: Vec<ProductRow> = db
            .prepare(
                "SELECT e.id, j.scenario_id, e.released_at,
                        e.public_figures, e.flag IS NOT NULL, e.result_hash, e.wrapped_key
                 FROM exports e JOIN jobs j ON e.job_id = j.id
                 WHERE e.state = 'released' ORDER BY e.released_at, e.id",
            )?
            .query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut published = Vec::new();
        for ((id, scenario, released_at), (public, flagged, hash, wrapped)) in products {
            if !rows.contains_key(&scenario) {
                rows.insert(scenario.clone(), Self::scenario_row(&db, &scenario)?);
            }
            let s = &rows[&scenario];
            let figures = tidegate_policy::publishes_figures(
                public,
                flagged,
                &s.export_rules,
                s.stored_state,
            )
            .then_some((hash, wrapped));
            published.push((
                json!({
                    "export": id,
                    "title": s.view.planned_products.first().unwrap_or(&s.name),
                    "scenario": scenario,
                    "released_at": released_at,
                }),
                figures,
            ));
        }
        // Fees charged this year, by org and category, month by month to now.
        let now = crate::clock::now();
        let ledger = Self::ledger(&db)?;
        let mut fees = Vec::new();
        for (org, ..) in &units {
            let mut by_category: BTreeMap<String, i64> = BTreeMap::new();
            for month in 1..=u8::from(now.month()) {
                let period = format!("{}-{month:02}", now.year());
                let st = crate::metering::statement(&ledger, org, &period, now)?;
                for line in &st.lines {
                    *by_category.entry(line.category.clone()).or_default() += line.amount_fen;
                }
            }
            fees.push(json!({ "org": org, "year": now.year(), "fen_by_category": by_category }));
        }
        drop(db);
        // The figures of products whose scenarios publish them, read after the metadata lock
        // is let go: exactly the rows of the signed bundle, or a word on why they are not.
        let mut room = MAX_FIGURES_BYTES;
        let products: Vec<Value> = published
            .into_iter()
            .map(|(mut product, figures)| {
                if let Some((hash, wrapped)) = figures {
                    let id = product["export"].as_str().unwrap_or_default().to_string();
                    product["figures"] = match self.released_figures(&id, hash, wrapped) {
                        Ok((f, size)) if size <= room => {
                            room -= size;
                            f
                        }
                        Ok(_) => json!({ "withheld": "the record carries at most 16 MiB of figures; this product's are in its signed bundle" }),
                        Err(e) => {
                            tracing::warn!(export = %id, error = %e, "released figures not published");
                            json!({ "withheld": "the released result could not be read or does not match what was approved" })
                        }
                    };
                }
                product
            })
            .collect();
        let record = json!({
            "format": "tidegate-public-record-v1",
            "generated_at": crate::now_rfc3339(),
            "units": units.iter().map(|(id, name, since, until, exited)| json!({
                "id": id,
                "name": name,
                "authorized_since": since,
                "authorized_until": until,
                "exited_at": exited,
            })).collect::<Vec<_>>(),
            "scenarios": scenarios,
            "products": products,
            "fees": fees,
            "numbers": "released products are listed; their figures only where the scenario's approved rules publish them",
        });
        let body = serde_json::to_vec(&record)?;
        Ok(PublicRecord {
            signature: hex::encode(self.signer.sign(&body)),
            record,
            rendered: Rendered::default(),
        })
    }
}
