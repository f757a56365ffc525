//! The metadata's SQLite schema, its migrations and opening a database.

use super::*;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, org_id TEXT NOT NULL REFERENCES orgs(id),
    roles TEXT NOT NULL, trained_at TEXT, training TEXT, token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, org_id TEXT NOT NULL REFERENCES orgs(id),
    level TEXT NOT NULL, origin TEXT NOT NULL, columns TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dataset_versions (
    dataset_id TEXT NOT NULL REFERENCES datasets(id), version INTEGER NOT NULL,
    content_hash TEXT NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL, quality TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS scenarios (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, org_id TEXT NOT NULL REFERENCES orgs(id),
    key_area TEXT NOT NULL, purpose TEXT NOT NULL, public_interest INTEGER NOT NULL,
    grants TEXT NOT NULL, term_start TEXT NOT NULL, term_end TEXT NOT NULL,
    k INTEGER NOT NULL, planned_products TEXT NOT NULL, state TEXT NOT NULL,
    applied_by TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenario_approvals (
    scenario_id TEXT NOT NULL REFERENCES scenarios(id), principal_id TEXT NOT NULL,
    as_role TEXT NOT NULL, org_id TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules (
    hash TEXT NOT NULL, scenario_id TEXT NOT NULL REFERENCES scenarios(id),
    uploaded_by TEXT NOT NULL, org_id TEXT NOT NULL, functions TEXT NOT NULL, wasm BLOB NOT NULL,
    approved_by TEXT, approval_note TEXT, approved_at TEXT, created_at TEXT NOT NULL,
    PRIMARY KEY (hash, scenario_id));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, scenario_id TEXT NOT NULL REFERENCES scenarios(id),
    submitted_by TEXT NOT NULL, sql TEXT NOT NULL, modules TEXT NOT NULL, state TEXT NOT NULL,
    error TEXT, rows INTEGER, schema TEXT, resources TEXT, level TEXT NOT NULL,
    shape TEXT, plan TEXT, inputs TEXT NOT NULL, result_hash TEXT, wrapped_key BLOB,
    created_at TEXT NOT NULL, finished_at TEXT, policy_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id), requested_by TEXT NOT NULL,
    org_id TEXT NOT NULL, state TEXT NOT NULL, gate_report TEXT NOT NULL, result_hash TEXT,
    wrapped_key BLOB, required_approvals INTEGER NOT NULL, decision_comment TEXT,
    created_at TEXT NOT NULL, released_at TEXT);
CREATE TABLE IF NOT EXISTS export_reviews (
    export_id TEXT NOT NULL REFERENCES exports(id), reviewer_id TEXT NOT NULL,
    decision TEXT NOT NULL, comment TEXT NOT NULL, result_hash TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prices (
    category TEXT PRIMARY KEY, unit TEXT NOT NULL, fen_per_unit INTEGER NOT NULL);
"#;

/// Schema changes after the first schema, in order: `(version, statements)`. A data directory
/// records the version it is at (`PRAGMA user_version`); opening it applies the missing steps
/// in one transaction each, so a kill halfway leaves the last complete version.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        "ALTER TABLE datasets ADD COLUMN approvers TEXT NOT NULL DEFAULT '[]';
         ALTER TABLE scenarios ADD COLUMN export_rules TEXT NOT NULL DEFAULT '{}';",
    ),
    (
        3,
        "ALTER TABLE orgs ADD COLUMN exited_at TEXT;
         ALTER TABLE exports ADD COLUMN bytes INTEGER;",
    ),
    (4, "ALTER TABLE dataset_versions ADD COLUMN context TEXT;"),
    (5, "ALTER TABLE exports ADD COLUMN groups_key BLOB;"),
    (6, "ALTER TABLE exports ADD COLUMN epsilon REAL;"),
    (
        7,
        "CREATE TABLE export_events (
             export_id TEXT NOT NULL REFERENCES exports(id), at TEXT NOT NULL,
             state TEXT NOT NULL, actor TEXT NOT NULL, comment TEXT);
         INSERT INTO export_events SELECT id, created_at, state, requested_by, NULL FROM exports;",
    ),
    (
        8,
        "ALTER TABLE datasets ADD COLUMN dp_total REAL NOT NULL DEFAULT 10;
         ALTER TABLE datasets ADD COLUMN dp_per_org REAL NOT NULL DEFAULT 3;
         CREATE TABLE budget_draws (
             dataset_id TEXT NOT NULL REFERENCES datasets(id),
             scenario_id TEXT NOT NULL REFERENCES scenarios(id),
             org_id TEXT NOT NULL, epsilon REAL NOT NULL, at TEXT NOT NULL,
             PRIMARY KEY (dataset_id, scenario_id));
         ALTER TABLE jobs ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE exports ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE scenarios ADD COLUMN failures_cleared_at TEXT;",
    ),
    (
        9,
        "ALTER TABLE jobs ADD COLUMN subjects_key BLOB;
         ALTER TABLE exports ADD COLUMN audit_key BLOB;
         ALTER TABLE exports ADD COLUMN audit_datasets TEXT;",
    ),
    (
        10,
        "ALTER TABLE modules ADD COLUMN revoked_by TEXT;
         ALTER TABLE modules ADD COLUMN revoked_at TEXT;
         ALTER TABLE modules ADD COLUMN revoke_reason TEXT;
         ALTER TABLE exports ADD COLUMN flag TEXT;",
    ),
    (
        11,
        "CREATE TABLE sessions (
             id_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL REFERENCES principals(id),
             token_hash TEXT NOT NULL, csrf TEXT NOT NULL, created_at TEXT NOT NULL,
             expires_at INTEGER NOT NULL, ended_at TEXT);
         CREATE INDEX sessions_by_principal ON sessions(principal_id);",
    ),
    (
        12,
        "ALTER TABLE exports ADD COLUMN amends TEXT;
         ALTER TABLE exports ADD COLUMN amended_by TEXT;",
    ),
    (
        13,
        "ALTER TABLE datasets ADD COLUMN mock TEXT NOT NULL DEFAULT '{}';",
    ),
    (
        14,
        "ALTER TABLE dataset_versions ADD COLUMN sealed TEXT;
         ALTER TABLE dataset_versions ADD COLUMN destroyed TEXT;",
    ),
    (
        15,
        "ALTER TABLE modules ADD COLUMN source BLOB;
         ALTER TABLE modules ADD COLUMN source_sha256 TEXT;
         ALTER TABLE modules ADD COLUMN source_check TEXT;",
    ),
    (
        16,
        "ALTER TABLE scenarios ADD COLUMN closed_at TEXT;
         ALTER TABLE scenarios ADD COLUMN closing TEXT;
         ALTER TABLE orgs ADD COLUMN authorized_until TEXT;
         UPDATE scenarios SET closed_at = (SELECT exited_at FROM orgs WHERE orgs.id = scenarios.org_id)
             WHERE state = 'exited';
         CREATE INDEX jobs_by_scenario ON jobs(scenario_id, created_at);
         ALTER TABLE principals ADD COLUMN training_until TEXT;
         UPDATE principals SET training_until = date(trained_at, '+365 days')
             WHERE trained_at IS NOT NULL AND NOT (training = 'bootstrap' AND roles = 'admin'
                 AND created_at = (SELECT MIN(created_at) FROM principals));
         CREATE TABLE principal_addresses (
             principal_id TEXT NOT NULL REFERENCES principals(id), address TEXT NOT NULL,
             first_seen TEXT NOT NULL, PRIMARY KEY (principal_id, address));
         CREATE TABLE alerts (
             id TEXT PRIMARY KEY, kind TEXT NOT NULL, org_id TEXT, scenario_id TEXT,
             evidence TEXT NOT NULL, raised_at TEXT NOT NULL, acknowledged_by TEXT,
             acknowledged_at TEXT, note TEXT, delivered_at TEXT,
             occurrences INTEGER NOT NULL DEFAULT 1, last_raised_at TEXT);
         CREATE TABLE evaluations (
             org_id TEXT NOT NULL REFERENCES orgs(id), year INTEGER NOT NULL, body TEXT NOT NULL,
             written_by TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (org_id, year));
         CREATE INDEX alerts_open ON alerts(kind, acknowledged_at);",
    ),
    (
        17,
        "ALTER TABLE datasets ADD COLUMN quality_rules TEXT NOT NULL DEFAULT '[]';",
    ),
    (
        18,
        "CREATE TABLE provider_downloads (
             export_id TEXT NOT NULL REFERENCES exports(id), org_id TEXT NOT NULL, at TEXT NOT NULL);",
    ),
    (
        19,
        "ALTER TABLE exports ADD COLUMN public_figures INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        // A running job's own budgets (fuel, engine memory, deadline), for the cluster's
        // executors to hold it to.
        20,
        "ALTER TABLE jobs ADD COLUMN limits TEXT;",
    ),
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = 20;

pub(super) fn open_db(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    migrate(&mut conn)?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let at: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if at > SCHEMA_VERSION {
        return Err(Error::Refused(format!(
            "the data directory is at schema version {at}, written by a newer Tidegate; this one knows up to {SCHEMA_VERSION}"
        )));
    }
    if at == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", 1)?;
        tx.commit()?;
    }
    for (version, statements) in MIGRATIONS {
        let at: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if at >= *version {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(statements)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}
