//! The annual evaluation (S13): the authority's admin writes, once per org and year, how the
//! unit complied with its agreement, what its products did, and whether it may reapply; the
//! platform signs it and the annual report carries it with the year's incidents (refused
//! modules, freezes, suspensions, alerts by kind).

use super::*;
use crate::documents::{Evaluation, Incidents, SignedEvaluation};

/// What the admin writes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationRequest {
    pub org: String,
    pub year: i32,
    /// How the unit kept its agreement: terms, rules, reviews.
    pub compliance: String,
    /// The products released and their effect.
    pub products: String,
    /// Whether the unit may apply for new scenarios.
    pub may_reapply: bool,
}

/// The most bytes of one field of an evaluation.
const MAX_TEXT: usize = 8 << 10;

impl Platform {
    /// The year's incidents of an org, by what the metadata holds: alerts by kind, modules
    /// refused at upload, freezes and suspensions (from the alerts and the scenarios' log).
    pub(super) fn incidents(db: &Connection, org: &str, year: i32) -> Result<Incidents> {
        let like = format!("{year:04}%");
        let alerts: BTreeMap<String, i64> = db
            .prepare(
                "SELECT kind, count(*) FROM alerts WHERE org_id = ?1 AND raised_at LIKE ?2
                 GROUP BY kind",
            )?
            .query_map(params![org, like], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let count = |kind: &str| alerts.get(kind).copied().unwrap_or(0);
        Ok(Incidents {
            refused_modules: count("module_invalid"),
            freezes: count("freeze"),
            limit_breaches: count("limit_breaches"),
            alerts,
        })
    }

    /// S13: the authority's admin writes an org's evaluation for a year that has begun; once
    /// (an evaluation is a record, not a draft). Signed by the platform; audited.
    pub fn evaluate_org(
        &self,
        actor: &Principal,
        req: &EvaluationRequest,
    ) -> Result<SignedEvaluation> {
        let mut db = self.lock_db();
        tidegate_policy::can_evaluate_org(actor, Self::org_kind(&db, &actor.org)?)?;
        let org = Self::org_id(&db, &req.org)?;
        if Self::org_kind(&db, &org)? != tidegate_policy::OrgKind::Operator {
            return Err(Error::BadInput(
                "only an operating unit is evaluated".into(),
            ));
        }
        if req.year > today().year() || req.year < 2000 {
            return Err(Error::BadInput(format!(
                "{} is not a year that has begun",
                req.year
            )));
        }
        for (what, text) in [("compliance", &req.compliance), ("products", &req.products)] {
            if text.trim().is_empty() || text.len() > MAX_TEXT {
                return Err(Error::BadInput(format!(
                    "the evaluation's {what} is 1 to {MAX_TEXT} bytes"
                )));
            }
        }
        let now = crate::now_rfc3339();
        let evaluation = Evaluation {
            format: crate::documents::EVALUATION_FORMAT.into(),
            org: org.clone(),
            year: req.year,
            compliance: req.compliance.clone(),
            products: req.products.clone(),
            incidents: Self::incidents(&db, &org, req.year)?,
            may_reapply: req.may_reapply,
            written_by: actor.id.clone(),
            at: now.clone(),
        };
        let body = crate::documents::signed_bytes(&evaluation)?;
        let signed = SignedEvaluation {
            signature: hex::encode(self.signer.sign(&body)),
            evaluation,
        };
        let tx = db.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO evaluations (org_id, year, body, written_by, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![org, req.year, to_json(&signed), actor.id, now],
        )?;
        if inserted == 0 {
            return Err(Error::Refused(format!(
                "org {org} was evaluated for {} already",
                req.year
            )));
        }
        self.audit.append_at(
            now,
            &actor.id,
            crate::audit::Action::OrgEvaluate,
            &org,
            crate::audited::OrgEvaluate {
                year: req.year,
                may_reapply: req.may_reapply,
                sha256: sha256_hex(&body),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(signed)
    }

    /// An org's signed evaluation for a year, if written.
    pub(super) fn evaluation(
        db: &Connection,
        org: &str,
        year: i32,
    ) -> Result<Option<SignedEvaluation>> {
        db.query_row(
            "SELECT body FROM evaluations WHERE org_id = ?1 AND year = ?2",
            params![org, year],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(|b| crate::documents::read_stored(&b, "evaluation"))
        .transpose()
    }

    /// Whether the latest evaluation of an org says it may not reapply.
    pub(super) fn barred_from_reapplying(db: &Connection, org: &str) -> Result<Option<i32>> {
        let latest: Option<(i32, String)> = db
            .query_row(
                "SELECT year, body FROM evaluations WHERE org_id = ?1 ORDER BY year DESC LIMIT 1",
                params![org],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match latest {
            Some((year, body)) => {
                let signed: SignedEvaluation = crate::documents::read_stored(&body, "evaluation")?;
                (!signed.evaluation.may_reapply).then_some(year)
            }
            None => None,
        })
    }
}
