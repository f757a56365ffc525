//! The platform's counts for `/metrics` (R-MONITOR): jobs and exports by state, the export
//! gate's refusals by check, and the audit log's entries. Labels are states and check names
//! only: never an identifier, a name or a value.

use super::*;

/// What `/metrics` shows of the platform's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlatformCounts {
    /// Jobs by state.
    pub jobs: BTreeMap<String, u64>,
    /// Export requests by state.
    pub exports: BTreeMap<String, u64>,
    /// Export requests the gate refused, by the check that failed (one request may count
    /// under several checks).
    pub gate_refusals: BTreeMap<String, u64>,
    /// Entries in the audit log, and whether a failed write has stopped it.
    pub audit_entries: u64,
    pub audit_broken: bool,
}

impl Platform {
    /// The counts behind `/metrics` (the authority's admins and auditors).
    pub fn counts(&self, actor: &Principal) -> Result<PlatformCounts> {
        let db = self.lock_db();
        tidegate_policy::can_read_metrics(actor, Self::org_kind(&db, &actor.org)?)?;
        let by_state = |table: &str| -> Result<BTreeMap<String, u64>> {
            Ok(db
                .prepare(&format!(
                    "SELECT state, COUNT(*) FROM {table} GROUP BY state"
                ))?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<_>>()?)
        };
        let mut counts = PlatformCounts {
            jobs: by_state("jobs")?,
            exports: by_state("exports")?,
            ..PlatformCounts::default()
        };
        // The gate's refusals: requests it kept nothing of.
        let reports: Vec<String> = db
            .prepare("SELECT gate_report FROM exports WHERE result_hash IS NULL")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for report in reports {
            let report: GateReport = from_json(&report)?;
            for check in report.checks.iter().filter(|c| !c.passed) {
                *counts.gate_refusals.entry(check.name.clone()).or_insert(0) += 1;
            }
        }
        (counts.audit_entries, counts.audit_broken) = self.audit.state();
        Ok(counts)
    }
}
