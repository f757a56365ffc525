//! Metering: prices, statements from the ledger, annual reports.

use super::*;
use tidegate_policy::JobState;

impl Platform {
    /// The admin sets the price of a category (fen per unit).
    pub fn set_price(&self, actor: &Principal, category: &str, fen_per_unit: i64) -> Result<()> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        let (unit, _) = price_item(category)?;
        if fen_per_unit < 0 {
            return Err(Error::BadInput("a price is not negative".into()));
        }
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO prices VALUES (?1, ?2, ?3) ON CONFLICT(category) DO UPDATE SET fen_per_unit = ?3",
            params![category, unit, fen_per_unit],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::PriceSet,
            category,
            crate::audited::PriceSet {
                fen_per_unit,
                unit: unit.to_string(),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// R-METER: an org's statement for a month (`YYYY-MM`): one line per scenario and
    /// category. Public-interest scenarios and a provider's use of products of its own data
    /// are free. Admins, auditors and the org's own members may read it.
    pub fn statement(
        &self,
        actor: &Principal,
        org: &str,
        period: &str,
        as_of: Option<&str>,
    ) -> Result<crate::metering::Statement> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let org = Self::org_id(&db, org)?;
        if !(actor.org == org
            || tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?))
        {
            return Err(Error::NotFound(format!("org {org}")));
        }
        let as_of = match as_of {
            Some(t) => {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| Error::BadInput("as_of is an RFC 3339 time".into()))?
            }
            None => crate::clock::now(),
        };
        let ledger = Self::ledger(&db)?;
        crate::metering::statement(&ledger, &org, period, as_of)
    }

    /// The metered events as the metadata records them; the audit log yields the same ledger
    /// (`metering::ledger_from_audit`).
    pub(super) fn ledger(db: &Connection) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        for (key, ..) in PRICE_ITEMS {
            let fen: Option<i64> = db
                .query_row(
                    "SELECT fen_per_unit FROM prices WHERE category = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(fen) = fen {
                ledger.prices.insert(key.to_string(), fen);
            }
        }
        let exited: HashMap<String, String> = db
            .prepare("SELECT id, exited_at FROM orgs WHERE exited_at IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let scenario_ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in scenario_ids {
            let s = Self::scenario_row(db, &id)?;
            let mut own_data = true;
            for g in &s.grants {
                own_data &= Self::dataset_row(db, &g.dataset)?.org == s.org;
            }
            ledger.scenarios.insert(
                id,
                ScenarioTerms {
                    org: s.org,
                    name: s.name,
                    public_interest: s.view.public_interest,
                    own_data,
                },
            );
        }
        let org_of = |scenario: &str| -> Result<String> {
            ledger
                .scenarios
                .get(scenario)
                .map(|s| s.org.clone())
                .ok_or_else(|| Error::Integrity(format!("scenario {scenario} is gone")))
        };
        let mut events = Vec::new();
        let jobs: Vec<(String, String, Option<String>, bool)> = db
            .prepare(
                "SELECT scenario_id, finished_at, resources, state = 'succeeded' FROM jobs
                 WHERE finished_at IS NOT NULL ORDER BY finished_at",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (scenario, at, resources, succeeded) in jobs {
            let used: ResourceUse = resources
                .map(|r| from_json(&r))
                .transpose()?
                .unwrap_or_default();
            events.push(Event::Job {
                scenario: scenario.clone(),
                at: at.clone(),
                fuel: used.fuel,
                bytes_scanned: used.bytes_scanned,
            });
            if succeeded {
                let org = org_of(&scenario)?;
                events.push(Event::Stored {
                    until: exited.get(&org).cloned(),
                    org,
                    scenario: Some(scenario),
                    bytes: used.output_bytes,
                    from: at,
                });
            }
        }
        let modules: Vec<(String, String)> = db
            .prepare("SELECT scenario_id, approved_at FROM modules WHERE approved_at IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (scenario, at) in modules {
            events.push(Event::ModuleApproved { scenario, at });
        }
        let exports: Vec<(String, String, Option<i64>, Option<String>)> = db
            .prepare(
                "SELECT j.scenario_id, e.created_at, e.bytes, e.released_at
                 FROM exports e JOIN jobs j ON e.job_id = j.id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (scenario, created, bytes, released) in exports {
            if let Some(bytes) = bytes {
                let org = org_of(&scenario)?;
                events.push(Event::Stored {
                    until: exited.get(&org).cloned(),
                    org,
                    scenario: Some(scenario.clone()),
                    bytes: bytes as u64,
                    from: created,
                });
            }
            if let Some(at) = released {
                events.push(Event::Released { scenario, at });
            }
        }
        let downloads: Vec<(String, String, String)> = db
            .prepare(
                "SELECT d.org_id, j.scenario_id, d.at FROM provider_downloads d
                 JOIN exports e ON d.export_id = e.id JOIN jobs j ON e.job_id = j.id
                 ORDER BY d.at",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (org, scenario, at) in downloads {
            events.push(Event::ProviderDownload { org, scenario, at });
        }
        let social: Vec<(String, i64, String)> = db
            .prepare(
                "SELECT d.org_id, v.bytes, v.created_at FROM dataset_versions v
                 JOIN datasets d ON v.dataset_id = d.id WHERE d.origin LIKE 'social%'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (org, bytes, from) in social {
            events.push(Event::Stored {
                until: exited.get(&org).cloned(),
                org,
                scenario: None,
                bytes: bytes as u64,
                from,
            });
        }
        ledger.events = events;
        Ok(ledger)
    }

    /// R-REPORT: an org's annual report: its scenarios, jobs, exports, resource use and
    /// incidents (failed jobs, refused modules, rejected exports), as data.
    pub fn annual_report(
        &self,
        actor: &Principal,
        org: &str,
        year: i32,
    ) -> Result<crate::documents::AnnualReport> {
        use crate::documents::{AnnualIncidents, AnnualReport, AnnualScenario, AnnualTotals};
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let org = Self::org_id(&db, org)?;
        if !(actor.org == org
            || tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?))
        {
            return Err(Error::NotFound(format!("org {org}")));
        }
        if !(2000..=today().year() + 1).contains(&year) {
            return Err(Error::BadInput(format!(
                "{year} is not a year of the platform"
            )));
        }
        let like = format!("{year:04}%");
        let scenario_ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios WHERE org_id = ?1 AND created_at <= ?2 ORDER BY created_at")?
            .query_map(params![org, format!("{year:04}-12-31T23:59:59Z")], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut scenarios = Vec::new();
        let (mut jobs_total, mut jobs_failed, mut exports_released, mut exports_rejected) =
            (0, 0, 0, 0);
        let mut used = ResourceUse::default();
        for sid in &scenario_ids {
            let s = Self::scenario_row(&db, sid)?;
            let mut stmt = db.prepare(
                "SELECT state, resources FROM jobs WHERE scenario_id = ?1 AND created_at LIKE ?2",
            )?;
            let (mut jobs, mut failed) = (0, 0);
            for row in stmt.query_map(params![sid, like], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })? {
                let (state, resources) = row?;
                jobs += 1;
                failed += i64::from(stored_state::<JobState>(&state)? == JobState::Failed);
                if let Some(r) = resources {
                    let r: ResourceUse = from_json(&r)?;
                    used.fuel += r.fuel;
                    used.rows_scanned += r.rows_scanned;
                    used.bytes_scanned += r.bytes_scanned;
                    used.output_bytes += r.output_bytes;
                    used.wall_ms += r.wall_ms;
                }
            }
            let count_exports = |state: &str| -> Result<i64> {
                Ok(db.query_row(
                    "SELECT count(*) FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = ?1 AND e.state = ?2 AND e.created_at LIKE ?3",
                    params![sid, state, like],
                    |r| r.get(0),
                )?)
            };
            let (released, rejected) = (count_exports("released")?, count_exports("rejected")?);
            jobs_total += jobs;
            jobs_failed += failed;
            exports_released += released;
            exports_rejected += rejected;
            scenarios.push(AnnualScenario {
                id: s.id,
                name: s.name,
                key_area: s.view.key_area,
                state: s.view.state,
                public_interest: s.view.public_interest,
                term: (s.view.term_start, s.view.term_end),
                jobs,
                jobs_failed: failed,
                exports_released: released,
                exports_rejected: rejected,
            });
        }
        Ok(AnnualReport {
            year,
            scenarios,
            totals: AnnualTotals {
                jobs: jobs_total,
                jobs_failed,
                exports_released,
                exports_rejected,
                fuel: used.fuel,
                rows_scanned: used.rows_scanned,
                bytes_scanned: used.bytes_scanned,
                output_bytes: used.output_bytes,
                wall_ms: used.wall_ms,
            },
            incidents: AnnualIncidents {
                failed_jobs: jobs_failed,
                rejected_exports: exports_rejected,
                monitoring: Self::incidents(&db, &org, year)?,
            },
            evaluation: Self::evaluation(&db, &org, year)?,
            may_reapply: Self::barred_from_reapplying(&db, &org)?.is_none(),
            org,
        })
    }
}
