//! R-MONITOR: alerts. Raised where the behaviour happens (an export's gate, a job's end, an
//! upload, a freeze, a failed verification of the log), in the same transaction as what
//! raised them; each names the org, the scenario and its evidence (ids and counts, never a
//! data value), is in the audit log, on the console, in `tidegate alerts`, and is delivered
//! to the webhook an admin set (at least once: undelivered alerts are sent again). An admin
//! acknowledges it (audited). One alert of a kind stays open per scenario (or org) until it is
//! acknowledged: a behaviour that goes on does not flood the queue.

use super::*;
use tidegate_policy::{AlertKind, AlertThresholds};

/// An alert as the authority sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertView {
    pub id: String,
    pub kind: AlertKind,
    pub org: Option<String>,
    pub scenario: Option<String>,
    /// What raised it: ids and counts.
    #[schema(value_type = Object)]
    pub evidence: Value,
    pub raised_at: String,
    /// How many times its behaviour was seen while it was open, and the last time.
    pub occurrences: u64,
    pub last_raised_at: String,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub note: Option<String>,
}

/// Where alerts are sent, and when they are raised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertSettings {
    /// An `http://` or `https://` URL that receives each alert as a JSON POST.
    pub webhook: Option<String>,
    #[serde(default)]
    pub thresholds: AlertThresholds,
}

/// What an alert's signature covers before its body: the documents the platform signs are
/// told apart by more than their `format` field.
pub const ALERT_SIGNING_CONTEXT: &[u8] = b"tidegate-alert-v1\n";

fn alert_message(body: &[u8]) -> Vec<u8> {
    [ALERT_SIGNING_CONTEXT, body].concat()
}

/// Checks an alert a webhook received: `signature_hex` (its `X-Tidegate-Signature` header)
/// over the context and `body`, by the platform's public key.
pub fn verify_alert(body: &[u8], signature_hex: &str, public_key: &[u8]) -> Result<()> {
    let signature = hex::decode(signature_hex)
        .map_err(|_| Error::Integrity("the signature is not hex".into()))?;
    if crate::crypto::ed25519_verifies(public_key, &alert_message(body), &signature) {
        Ok(())
    } else {
        Err(Error::Integrity(
            "the alert's signature does not verify: it is not the platform's".into(),
        ))
    }
}

/// What `raise_alert` needs to name.
pub(super) struct Raised<'a> {
    pub kind: AlertKind,
    pub org: Option<&'a str>,
    pub scenario: Option<&'a str>,
    pub evidence: Value,
}

/// A webhook's scheme and host, without the path or query that may hold its secret.
fn webhook_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // A `user:password@` before the host is a secret too.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}/...")
}

/// The columns [`Platform::alert_from_row`] reads, in its order.
const ALERT_COLUMNS: &str = "id, kind, org_id, scenario_id, evidence, raised_at, acknowledged_by, \
     acknowledged_at, note, occurrences, last_raised_at";

/// The actor the log names for alerts the platform raises.
const MONITOR_ACTOR: &str = "platform:monitor";

impl Platform {
    /// The alert settings in force (defaults until an admin sets them).
    pub(super) fn alert_settings_in(db: &Connection) -> Result<AlertSettings> {
        let stored: Option<String> = db
            .query_row("SELECT value FROM settings WHERE key = 'alerts'", [], |r| {
                r.get(0)
            })
            .optional()?;
        stored
            .map(|s| from_json(&s))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Raises an alert inside `tx`; while one of its kind for the same scenario (or org, when
    /// it names no scenario) is still open, that one counts the new occurrence, takes its
    /// evidence and is delivered again. Returns whether a new alert was raised.
    pub(super) fn raise_alert(&self, tx: &Connection, raised: Raised<'_>) -> Result<bool> {
        let now = crate::now_rfc3339();
        let open: Option<String> = tx
            .query_row(
                "SELECT id FROM alerts WHERE kind = ?1 AND acknowledged_at IS NULL
                 AND COALESCE(scenario_id, '') = COALESCE(?2, '')
                 AND COALESCE(org_id, '') = COALESCE(?3, '')",
                params![raised.kind.as_str(), raised.scenario, raised.org],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = open {
            tx.execute(
                "UPDATE alerts SET occurrences = occurrences + 1, last_raised_at = ?2,
                     evidence = ?3, delivered_at = NULL WHERE id = ?1",
                params![id, now, to_json(&raised.evidence)],
            )?;
            self.audit.append_at(
                now,
                MONITOR_ACTOR,
                crate::audit::Action::AlertRaise,
                &id,
                crate::audited::AlertRaisedAgain {
                    kind: raised.kind,
                    again: true,
                    evidence: raised.evidence.clone(),
                }
                .to_value(),
            )?;
            return Ok(false);
        }
        let id = new_id("alert");
        tx.execute(
            "INSERT INTO alerts (id, kind, org_id, scenario_id, evidence, raised_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                raised.kind.as_str(),
                raised.org,
                raised.scenario,
                to_json(&raised.evidence),
                now
            ],
        )?;
        self.audit.append_at(
            now,
            MONITOR_ACTOR,
            crate::audit::Action::AlertRaise,
            &id,
            crate::audited::AlertRaise {
                kind: raised.kind,
                org: raised.org.map(str::to_string),
                scenario: raised.scenario.map(str::to_string),
                evidence: raised.evidence.clone(),
            }
            .to_value(),
        )?;
        Ok(true)
    }

    /// R-MONITOR, after an export's gate (inside its transaction): suppressed groups many
    /// times in a row, a differencing pattern, a privacy budget nearly spent.
    pub(super) fn watch_export(
        &self,
        tx: &Connection,
        scenario: &ScenarioRow,
        export: &str,
        report: &GateReport,
        spent: f64,
    ) -> Result<()> {
        let t = Self::alert_settings_in(tx)?.thresholds;
        let latest: Vec<String> = tx
            .prepare(
                "SELECT e.gate_report FROM exports e JOIN jobs j ON e.job_id = j.id
                 WHERE j.scenario_id = ?1 ORDER BY e.created_at DESC, e.rowid DESC LIMIT ?2",
            )?
            .query_map(params![scenario.id, t.suppressed_in_a_row as i64], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        let suppressed: Vec<u64> = latest
            .iter()
            .map(|r| from_json::<GateReport>(r).map(|r| r.groups_suppressed))
            .collect::<Result<_>>()?;
        if tidegate_policy::suppressed_in_a_row(&suppressed, &t) {
            self.raise_alert(
                tx,
                Raised {
                    kind: AlertKind::SuppressedGroups,
                    org: Some(&scenario.org),
                    scenario: Some(&scenario.id),
                    evidence: json!({ "export": export, "exports_in_a_row": suppressed.len(), "groups_suppressed": suppressed }),
                },
            )?;
        }
        if let Some(check) = report.checks.iter().find(|c| c.name == "differencing")
            && (!check.passed || check.flagged || report.differencing_suppressed > 0)
        {
            self.raise_alert(
                tx,
                Raised {
                    kind: AlertKind::Differencing,
                    org: Some(&scenario.org),
                    scenario: Some(&scenario.id),
                    evidence: json!({
                        "export": export,
                        "refused": !check.passed,
                        "flagged": check.flagged,
                        "groups_suppressed_as_near_identical": report.differencing_suppressed,
                    }),
                },
            )?;
        }
        if let Some(total) = scenario.export_rules.privacy_budget
            && tidegate_policy::budget_nearly_spent(spent, total, &t)
        {
            self.raise_alert(
                tx,
                Raised {
                    kind: AlertKind::Budget,
                    org: Some(&scenario.org),
                    scenario: Some(&scenario.id),
                    evidence: json!({ "export": export, "epsilon_spent": spent, "epsilon_total": total }),
                },
            )?;
        }
        Ok(())
    }

    /// R-MONITOR: the alerts, newest first (the authority's admins and auditors); with `open`,
    /// only those not acknowledged yet.
    pub fn alerts(&self, actor: &Principal, open: bool) -> Result<Vec<AlertView>> {
        let db = self.lock_db();
        tidegate_policy::can_read_alerts(actor, Self::org_kind(&db, &actor.org)?)?;
        let rows = db
            .prepare(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 = 0 OR acknowledged_at IS NULL)
                     ORDER BY raised_at DESC, rowid DESC LIMIT 1000"
            ))?
            .query_map(params![open], Self::alert_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    fn alert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AlertView>> {
        let kind: String = r.get(1)?;
        let evidence: String = r.get(4)?;
        Ok((|| {
            Ok(AlertView {
                id: r.get(0)?,
                kind: kind.parse().map_err(Error::Integrity)?,
                org: r.get(2)?,
                scenario: r.get(3)?,
                evidence: from_json(&evidence)?,
                raised_at: r.get(5)?,
                acknowledged_by: r.get(6)?,
                acknowledged_at: r.get(7)?,
                note: r.get(8)?,
                occurrences: r.get::<_, i64>(9)? as u64,
                last_raised_at: r.get::<_, Option<String>>(10)?.unwrap_or(r.get(5)?),
            })
        })())
    }

    /// R-MONITOR: an admin acknowledges an alert with a note (audited); the next occurrence of
    /// its behaviour raises a new one.
    pub fn acknowledge_alert(&self, actor: &Principal, id: &str, note: &str) -> Result<AlertView> {
        let mut db = self.lock_db();
        tidegate_policy::can_handle_alerts(actor, Self::org_kind(&db, &actor.org)?)?;
        if note.trim().is_empty() {
            return Err(Error::BadInput(
                "say what was done about the alert in a note".into(),
            ));
        }
        let tx = db.transaction()?;
        let now = crate::now_rfc3339();
        let n = tx.execute(
            "UPDATE alerts SET acknowledged_by = ?2, acknowledged_at = ?3, note = ?4
             WHERE id = ?1 AND acknowledged_at IS NULL",
            params![id, actor.id, now, note],
        )?;
        if n == 0 {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM alerts WHERE id = ?1)",
                params![id],
                |r| r.get(0),
            )?;
            return Err(if exists {
                Error::Refused(format!("alert {id} was acknowledged already"))
            } else {
                Error::NotFound(format!("alert {id}"))
            });
        }
        self.audit.append_at(
            now,
            &actor.id,
            crate::audit::Action::AlertAcknowledge,
            id,
            crate::audited::AlertAcknowledge {
                note: note.to_string(),
            }
            .to_value(),
        )?;
        let view = tx.query_row(
            &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
            params![id],
            Self::alert_from_row,
        )??;
        tx.commit()?;
        Ok(view)
    }

    /// R-MONITOR: an admin sets where alerts go and when they are raised (audited as a
    /// policy change).
    pub fn set_alert_settings(&self, actor: &Principal, settings: &AlertSettings) -> Result<()> {
        let mut db = self.lock_db();
        tidegate_policy::can_handle_alerts(actor, Self::org_kind(&db, &actor.org)?)?;
        tidegate_policy::validate_alert_thresholds(&settings.thresholds)?;
        if let Some(url) = &settings.webhook {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://"))
                || url.len() > 2048
                || url.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(Error::BadInput(
                    "the webhook is an http:// or https:// URL".into(),
                ));
            }
        }
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO settings VALUES ('alerts', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![to_json(settings)],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::PolicyApply,
            "alerts",
            crate::audited::AlertSettings {
                webhook: settings.webhook.as_deref().map(webhook_origin),
                thresholds: settings.thresholds,
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The alert settings (the authority's admins and auditors). The webhook is shown whole
    /// to admins only: its path and query often hold a secret.
    pub fn alert_settings(&self, actor: &Principal) -> Result<AlertSettings> {
        let db = self.lock_db();
        tidegate_policy::can_read_alerts(actor, Self::org_kind(&db, &actor.org)?)?;
        let mut settings = Self::alert_settings_in(&db)?;
        if !actor.has_role(Role::Admin) {
            settings.webhook = settings.webhook.as_deref().map(webhook_origin);
        }
        Ok(settings)
    }

    /// An alert as its webhook receives it: the JSON body (`tidegate-alert-v1`) and the
    /// platform's Ed25519 signature, in hex, which the server sends as the
    /// `X-Tidegate-Signature` header. The signature is over [`ALERT_SIGNING_CONTEXT`] followed
    /// by the body's exact bytes, so no other signed document of the platform (a public
    /// record anyone can fetch, a certificate) passes as an alert; the receiver checks it with
    /// the platform's public key (`GET /v1/public-key`), as [`verify_alert`] does.
    pub fn alert_delivery(&self, alert: &AlertView) -> Result<(Vec<u8>, String)> {
        let body = serde_json::to_vec(&json!({ "format": "tidegate-alert-v1", "alert": alert }))?;
        let signature = hex::encode(self.signer.sign(&alert_message(&body)));
        Ok((body, signature))
    }

    /// The webhook and the alerts not delivered to it yet, oldest first: for the server's
    /// delivery loop.
    pub fn undelivered_alerts(&self) -> Result<Option<(String, Vec<AlertView>)>> {
        let db = self.lock_db();
        let Some(webhook) = Self::alert_settings_in(&db)?.webhook else {
            return Ok(None);
        };
        let rows = db
            .prepare(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE delivered_at IS NULL
                     ORDER BY raised_at, rowid LIMIT 100"
            ))?
            .query_map([], Self::alert_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some((webhook, rows.into_iter().collect::<Result<_>>()?)))
    }

    /// Records that the webhook took an alert.
    /// The webhook took the alert as it was at `occurrences`: an occurrence raised while it
    /// was being sent stays undelivered and goes with the next round.
    pub fn alert_delivered(&self, id: &str, occurrences: u64) -> Result<()> {
        self.lock_db().execute(
            "UPDATE alerts SET delivered_at = ?2 WHERE id = ?1 AND occurrences = ?3",
            params![id, crate::now_rfc3339(), occurrences as i64],
        )?;
        Ok(())
    }

    /// Raises an alert in a transaction of its own (for events outside one).
    pub(super) fn raise_alert_now(&self, raised: Raised<'_>) -> Result<()> {
        let db = self.lock_db();
        let tx = db.unchecked_transaction()?;
        self.raise_alert(&tx, raised)?;
        tx.commit()?;
        Ok(())
    }
}
