//! The public record (S19): what anyone may read without signing in, signed by the platform so
//! that a copy verifies offline: the authorized units, their scenarios (purpose, key area, term,
//! state), the products released (title, date, scenario; never the numbers), and the fees
//! charged this year by category. Drafts, applications still waiting for approvals, datasets,
//! jobs, principals and every result stay out.

use super::*;

/// The record and the platform's signature over its JSON bytes (hex).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicRecord {
    /// `tidegate-public-record-v1`.
    #[schema(value_type = Object)]
    pub record: Value,
    pub signature: String,
}

/// An authorized unit: id, name, since, until, exited.
type UnitRow = (String, String, String, Option<String>, Option<String>);

/// How long one signed record answers every request (anyone may ask; the record is built
/// at most this often, so no stream of anonymous requests holds the metadata lock).
const PUBLIC_RECORD_SECONDS: u64 = 60;

impl Platform {
    /// The public record, signed: the one built in the last minute, or a new one. Requests that
    /// arrive while it is built wait for that one build.
    pub fn public_record(&self) -> Result<Arc<PublicRecord>> {
        let mut cached = self
            .public_record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, record)) = cached.as_ref()
            && at.elapsed().as_secs() < PUBLIC_RECORD_SECONDS
        {
            return Ok(Arc::clone(record));
        }
        let record = Arc::new(self.build_public_record()?);
        *cached = Some((Instant::now(), Arc::clone(&record)));
        Ok(record)
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
        }
        let products: Vec<(String, String, Option<String>, String, String)> = db
            .prepare(
                "SELECT e.id, j.scenario_id, e.released_at, s.name, s.planned_products
                 FROM exports e JOIN jobs j ON e.job_id = j.id JOIN scenarios s ON s.id = j.scenario_id
                 WHERE e.state = 'released' ORDER BY e.released_at, e.id",
            )?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let products: Vec<Value> = products
            .into_iter()
            .map(|(id, scenario, released_at, name, planned)| {
                let planned: Vec<String> = from_json(&planned).unwrap_or_default();
                json!({
                    "export": id,
                    "title": planned.first().cloned().unwrap_or(name),
                    "scenario": scenario,
                    "released_at": released_at,
                })
            })
            .collect();
        // Fees charged this year, by org and category, month by month to now.
        let now = time::OffsetDateTime::now_utc();
        let ledger = Self::ledger(&db)?;
        let mut fees = Vec::new();
        for (org, ..) in &units {
            let mut by_category: BTreeMap<String, i64> = BTreeMap::new();
            for month in 1..=u8::from(now.month()) {
                let period = format!("{}-{month:02}", now.year());
                let st = crate::metering::statement(&ledger, org, &period, now)?;
                for line in st["lines"].as_array().into_iter().flatten() {
                    if let (Some(c), Some(a)) =
                        (line["category"].as_str(), line["amount_fen"].as_i64())
                    {
                        *by_category.entry(c.to_string()).or_default() += a;
                    }
                }
            }
            fees.push(json!({ "org": org, "year": now.year(), "fen_by_category": by_category }));
        }
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
            "numbers": "released products are listed, never their figures",
        });
        let body = serde_json::to_vec(&record)?;
        Ok(PublicRecord {
            signature: hex::encode(self.signer.sign(&body)),
            record,
        })
    }
}
