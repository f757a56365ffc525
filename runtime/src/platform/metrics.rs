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
    /// Wall-clock seconds and guest fuel of the jobs that ended (as their records show them).
    pub job_seconds: f64,
    pub guest_fuel: u64,
    /// Bytes of the dataset versions imported.
    pub import_bytes: u64,
    /// Alerts raised, by kind, and those not acknowledged yet.
    pub alerts: BTreeMap<String, u64>,
    pub alerts_open: BTreeMap<String, u64>,
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
        (counts.job_seconds, counts.guest_fuel) = db.query_row(
            "SELECT COALESCE(SUM(json_extract(resources, '$.wall_ms')), 0) / 1000.0,
                    COALESCE(SUM(json_extract(resources, '$.fuel')), 0)
             FROM jobs WHERE finished_at IS NOT NULL AND resources IS NOT NULL",
            [],
            |r| Ok((r.get::<_, f64>(0)?, r.get::<_, i64>(1)? as u64)),
        )?;
        counts.import_bytes = db.query_row(
            "SELECT COALESCE(SUM(bytes), 0) FROM dataset_versions",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        let by_kind = |sql: &str| -> Result<BTreeMap<String, u64>> {
            Ok(db
                .prepare(sql)?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<_>>()?)
        };
        counts.alerts = by_kind("SELECT kind, COUNT(*) FROM alerts GROUP BY kind")?;
        counts.alerts_open = by_kind(
            "SELECT kind, COUNT(*) FROM alerts WHERE acknowledged_at IS NULL GROUP BY kind",
        )?;
        (counts.audit_entries, counts.audit_broken) = self.audit.state();
        Ok(counts)
    }
}
