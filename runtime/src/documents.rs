//! The platform's documents, typed: the signed ones (closing receipts, exit certificates,
//! custody records, evaluations), the annual report that carries evaluations, and the policy
//! document with the changes it makes.
//!
//! A signed document is signed over the JSON bytes of its *value*, whose keys serde_json keeps
//! in sorted order: exactly what a verifier rebuilds from a saved copy (`tidegate
//! verify-signed`, [`verify_certificate`]). So the order of a struct's fields never
//! changes a signature ([`signed_bytes`]); a stored document is read back only when it
//! serializes to the very value it was stored as ([`read_stored`]), so what the API serves
//! still verifies.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidegate_policy::{ExportRules, ScenarioState};

use crate::error::{Error, Result};
use crate::records::GrantRequest;

pub(crate) const CLOSING_RECEIPT_FORMAT: &str = "tidegate-closing-receipt-v1";
pub(crate) const EXIT_CERTIFICATE_FORMAT: &str = "tidegate-exit-certificate-v1";
pub(crate) const EVALUATION_FORMAT: &str = "tidegate-evaluation-v1";
pub(crate) const POLICY_FORMAT: &str = "tidegate-policy-v1";

/// The bytes a document is signed over: its JSON value, keys sorted.
pub(crate) fn signed_bytes<T: Serialize>(document: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(document)?)?)
}

/// Checks a typed document's signature (hex) with the platform's public key (raw 32 bytes),
/// over the bytes [`signed_bytes`] gives.
pub fn verify_document<T: Serialize>(
    document: &T,
    signature: &str,
    public_key: &[u8],
) -> Result<()> {
    verify_certificate(&serde_json::to_value(document)?, signature, public_key)
}

/// Serializes a signed body as the bytes it was signed over (keys sorted), so that the JSON
/// served, saved or printed holds the very bytes a verifier hashes.
fn as_signed<T: Serialize, S: serde::Serializer>(
    body: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serde_json::to_value(body)
        .map_err(serde::ser::Error::custom)?
        .serialize(serializer)
}

/// A stored document read back as its type, only if it serializes to the same value (a field
/// the type would drop or reshape would make its signature fail for whoever verifies it).
pub(crate) fn read_stored<T: Serialize + DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let stored: Value = serde_json::from_str(text)
        .map_err(|_| Error::Integrity(format!("a stored {what} is not JSON")))?;
    let typed: T = serde_json::from_value(stored.clone())
        .map_err(|_| Error::Integrity(format!("a stored {what} is not one")))?;
    if serde_json::to_value(&typed)? != stored {
        return Err(Error::Integrity(format!(
            "a stored {what} does not read back as it was signed"
        )));
    }
    Ok(typed)
}

/// What a closing, an exit or a destruction destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DestroyedKind {
    /// A job's result (and the sets of subjects kept with it).
    Result,
    /// An export's file.
    Export,
    /// The groups the gate kept for differencing an export.
    ExportGroups,
    /// A module's bytes.
    Module,
    /// The gate's memory of an export's released cells.
    GateMemory,
    /// A version of an org's own (social) dataset.
    SocialDataset,
    /// A dataset version's data key.
    DataKey,
    /// A dataset version's file.
    DatasetFile,
}

/// One thing destroyed: its kind, its id, and the SHA-256 of what it held where the reader may
/// know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Destroyed {
    pub kind: DestroyedKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Destroyed {
    pub fn new(kind: DestroyedKind, id: &str, sha256: Option<&str>) -> Destroyed {
        Destroyed {
            kind,
            id: id.to_string(),
            sha256: sha256.map(str::to_string),
        }
    }
}

/// `tidegate-closing-receipt-v1`: a scenario closed, why, when, and what went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClosingReceiptBody {
    pub format: String,
    pub scenario: String,
    /// "revoked", or the end of its term.
    pub reason: String,
    pub at: String,
    /// The queued jobs that will never run.
    pub jobs_stopped: Vec<String>,
    /// By kind and id only: the hash of a result the gate never released could be matched
    /// against guesses of its values.
    pub destroyed: Vec<Destroyed>,
    pub kept: String,
}

/// The signed receipt of a scenario's closing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClosingReceipt {
    #[serde(serialize_with = "as_signed")]
    pub receipt: ClosingReceiptBody,
    /// The platform's Ed25519 signature over the receipt's JSON bytes (keys sorted), hex.
    pub signature: String,
}

/// `tidegate-exit-certificate-v1`: an org exited, and everything of it that went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitCertificateBody {
    pub format: String,
    pub org: String,
    pub reason: String,
    pub at: String,
    pub scenarios_exited: Vec<String>,
    /// With the SHA-256 of what each file held (for the authority).
    pub destroyed: Vec<Destroyed>,
    pub kept: String,
}

/// The signed certificate of an org's exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitCertificate {
    #[serde(serialize_with = "as_signed")]
    pub certificate: ExitCertificateBody,
    /// The platform's Ed25519 signature over the certificate's JSON bytes (keys sorted), hex.
    pub signature: String,
}

/// A custody action on a dataset version: `tidegate-sealing-record-v1`,
/// `tidegate-unsealing-record-v1` or `tidegate-destruction-certificate-v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustodyRecordBody {
    pub format: String,
    pub dataset: String,
    pub name: String,
    pub version: i64,
    /// The SHA-256 of the version's content.
    pub sha256: String,
    pub reason: String,
    pub by: String,
    pub at: String,
    /// A destruction's key and file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<Vec<Destroyed>>,
    /// A destruction's scenarios pinned to the version, suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenarios_suspended: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// The signed record of a custody action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustodyRecord {
    #[serde(serialize_with = "as_signed")]
    pub record: CustodyRecordBody,
    /// The platform's Ed25519 signature over the record's JSON bytes (keys sorted), hex.
    pub signature: String,
}

/// An org's year of monitoring: alerts by kind and the ones an evaluation names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Incidents {
    pub alerts: BTreeMap<String, i64>,
    pub refused_modules: i64,
    pub freezes: i64,
    pub limit_breaches: i64,
}

/// `tidegate-evaluation-v1`: the authority's evaluation of an operating unit's year (S13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub format: String,
    pub org: String,
    pub year: i32,
    pub compliance: String,
    pub products: String,
    pub incidents: Incidents,
    pub may_reapply: bool,
    pub written_by: String,
    pub at: String,
}

/// A signed evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedEvaluation {
    #[serde(serialize_with = "as_signed")]
    pub evaluation: Evaluation,
    /// The platform's Ed25519 signature over the evaluation's JSON bytes (keys sorted), hex.
    pub signature: String,
}

/// R-REPORT: an org's year.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnnualReport {
    pub org: String,
    pub year: i32,
    pub scenarios: Vec<AnnualScenario>,
    pub totals: AnnualTotals,
    pub incidents: AnnualIncidents,
    /// S13: the authority's evaluation of the year, signed, once written.
    pub evaluation: Option<SignedEvaluation>,
    /// Whether the org's latest evaluation lets it apply for new scenarios.
    pub may_reapply: bool,
}

/// One scenario of an org in a year.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnnualScenario {
    pub id: String,
    pub name: String,
    pub key_area: String,
    pub state: ScenarioState,
    pub public_interest: bool,
    /// Its first and last day.
    pub term: (String, String),
    pub jobs: i64,
    pub jobs_failed: i64,
    pub exports_released: i64,
    pub exports_rejected: i64,
}

/// An org's year in sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnnualTotals {
    pub jobs: i64,
    pub jobs_failed: i64,
    pub exports_released: i64,
    pub exports_rejected: i64,
    pub fuel: u64,
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub output_bytes: u64,
    pub wall_ms: u64,
}

/// What went wrong in an org's year.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnnualIncidents {
    pub failed_jobs: i64,
    pub rejected_exports: i64,
    pub monitoring: Incidents,
}

/// Policy as code: the scenarios' rules and the price table as one versioned document. An
/// admin exports it, edits it and applies it; a field it does not know is refused, never
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// `tidegate-policy-v1`.
    pub format: String,
    /// The policy version it was exported at; applying it at another is refused.
    pub version: i64,
    /// Fen per unit by price category.
    #[serde(default)]
    pub prices: BTreeMap<String, i64>,
    #[serde(default)]
    pub scenarios: Vec<PolicyScenario>,
}

/// A scenario in a policy document. `name`, `org` and `term_start` are shown for the reader
/// and never applied; every other field left out stays as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyScenario {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// `active`, `suspended` or `revoked` (applied); others are shown only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ScenarioState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<GrantRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_rules: Option<ExportRules>,
}

/// A value before and after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change<T> {
    pub from: T,
    pub to: T,
}

/// One change a policy document makes: a price, or one field of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PolicyChange {
    Price {
        price: String,
        from: i64,
        to: i64,
    },
    Scenario {
        scenario: String,
        #[serde(flatten)]
        field: ScenarioChange,
    },
}

/// The field of a scenario a policy document changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioChange {
    K(Change<u64>),
    TermEnd(Change<String>),
    ExportRules(Box<Change<ExportRules>>),
    Grants(Change<Vec<GrantRequest>>),
    State(Change<ScenarioState>),
}

/// What applying a policy document did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyApplied {
    pub from_version: i64,
    pub to_version: i64,
    pub dry_run: bool,
    pub changes: Vec<PolicyChange>,
}

/// Audit entries pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pruned {
    /// Entries older than this day were pruned (those in sealed segments past retention).
    pub before: String,
    pub entries_pruned: u64,
}

/// Checks an exit certificate's signature with the platform public key (raw 32 bytes).
pub fn verify_certificate(
    certificate: &Value,
    signature_hex: &str,
    public_key: &[u8],
) -> Result<()> {
    let body = serde_json::to_vec(certificate)?;
    let signature = hex::decode(signature_hex)
        .map_err(|_| Error::Integrity("the signature is not hex".into()))?;
    if crate::crypto::ed25519_verifies(public_key, &body, &signature) {
        Ok(())
    } else {
        Err(Error::Integrity(
            "the certificate's signature does not verify".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_signed_over_its_sorted_keys_whatever_the_order_of_its_fields() {
        let receipt = ClosingReceiptBody {
            format: CLOSING_RECEIPT_FORMAT.into(),
            scenario: "sc_1".into(),
            reason: "revoked".into(),
            at: "2026-12-01T00:00:00Z".into(),
            jobs_stopped: vec!["j_1".into()],
            destroyed: vec![Destroyed::new(DestroyedKind::ExportGroups, "ex_1", None)],
            kept: "modules".into(),
        };
        let bytes = signed_bytes(&receipt).unwrap();
        let rebuilt: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(serde_json::to_vec(&rebuilt).unwrap(), bytes);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"at":"#), "{text}");
        assert!(text.contains(r#"{"id":"ex_1","kind":"export_groups"}"#));
    }

    /// The text of `served` holds the bytes `body` is signed over, as they are.
    fn served_as_signed<W: Serialize, B: Serialize>(served: &W, body: &B) {
        let served = serde_json::to_string(served).unwrap();
        let signed = String::from_utf8(signed_bytes(body).unwrap()).unwrap();
        assert!(
            served.contains(&signed),
            "{served}\n does not hold\n{signed}"
        );
    }

    #[test]
    fn every_signed_document_is_served_in_the_bytes_it_was_signed_over() {
        let destroyed = vec![
            Destroyed::new(DestroyedKind::Result, "job_1", Some("ab")),
            Destroyed::new(DestroyedKind::ExportGroups, "ex_1", None),
        ];
        let receipt = ClosingReceipt {
            receipt: ClosingReceiptBody {
                format: CLOSING_RECEIPT_FORMAT.into(),
                scenario: "sc_1".into(),
                reason: "revoked".into(),
                at: "t".into(),
                jobs_stopped: vec![],
                destroyed: destroyed.clone(),
                kept: "k".into(),
            },
            signature: "00".into(),
        };
        served_as_signed(&receipt, &receipt.receipt);
        let certificate = ExitCertificate {
            certificate: ExitCertificateBody {
                format: EXIT_CERTIFICATE_FORMAT.into(),
                org: "org_1".into(),
                reason: "r".into(),
                at: "t".into(),
                scenarios_exited: vec!["sc_1".into()],
                destroyed: destroyed.clone(),
                kept: "k".into(),
            },
            signature: "00".into(),
        };
        served_as_signed(&certificate, &certificate.certificate);
        let record = CustodyRecord {
            record: CustodyRecordBody {
                format: "tidegate-destruction-certificate-v1".into(),
                dataset: "ds_1".into(),
                name: "visits".into(),
                version: 1,
                sha256: "ab".into(),
                reason: "r".into(),
                by: "p_1".into(),
                at: "t".into(),
                destroyed: Some(destroyed),
                scenarios_suspended: Some(vec![]),
                kept: Some("k".into()),
            },
            signature: "00".into(),
        };
        served_as_signed(&record, &record.record);
        let evaluation = SignedEvaluation {
            evaluation: Evaluation {
                format: EVALUATION_FORMAT.into(),
                org: "org_1".into(),
                year: 2026,
                compliance: "c".into(),
                products: "p".into(),
                incidents: Incidents {
                    alerts: BTreeMap::from([("freeze".into(), 1)]),
                    refused_modules: 0,
                    freezes: 1,
                    limit_breaches: 0,
                },
                may_reapply: true,
                written_by: "p_1".into(),
                at: "t".into(),
            },
            signature: "00".into(),
        };
        served_as_signed(&evaluation, &evaluation.evaluation);
        // Inside the annual report too.
        let report = AnnualReport {
            org: "org_1".into(),
            year: 2026,
            scenarios: vec![],
            totals: AnnualTotals::default(),
            incidents: AnnualIncidents::default(),
            evaluation: Some(evaluation.clone()),
            may_reapply: true,
        };
        served_as_signed(&report, &evaluation.evaluation);
    }

    #[test]
    fn a_stored_document_that_would_not_read_back_as_signed_is_refused() {
        let stored = r#"{"receipt":{"format":"tidegate-closing-receipt-v1","scenario":"sc_1",
            "reason":"revoked","at":"t","jobs_stopped":[],"destroyed":[],"kept":"k"},
            "signature":"00"}"#;
        let read: ClosingReceipt = read_stored(stored, "closing receipt").unwrap();
        assert_eq!(read.receipt.scenario, "sc_1");
        let extra = stored.replace(r#""kept":"k""#, r#""kept":"k","note":"x""#);
        assert!(read_stored::<ClosingReceipt>(&extra, "closing receipt").is_err());
        let null_hash = stored.replace(
            r#""destroyed":[]"#,
            r#""destroyed":[{"kind":"result","id":"j","sha256":null}]"#,
        );
        assert!(matches!(
            read_stored::<ClosingReceipt>(&null_hash, "closing receipt"),
            Err(Error::Integrity(m)) if m.contains("as it was signed")
        ));
    }

    #[test]
    fn policy_changes_keep_the_shape_the_audit_log_has_always_held() {
        let changes = vec![
            PolicyChange::Price {
                price: "result_export".into(),
                from: 5000,
                to: 6000,
            },
            PolicyChange::Scenario {
                scenario: "sc_1".into(),
                field: ScenarioChange::K(Change { from: 10, to: 20 }),
            },
        ];
        let value = serde_json::to_value(&changes).unwrap();
        assert_eq!(
            value,
            serde_json::json!([
                { "price": "result_export", "from": 5000, "to": 6000 },
                { "scenario": "sc_1", "k": { "from": 10, "to": 20 } },
            ])
        );
        let back: Vec<PolicyChange> = serde_json::from_value(value).unwrap();
        assert_eq!(back, changes);
    }

    #[test]
    fn a_policy_document_with_a_field_it_does_not_know_is_refused() {
        let doc = serde_json::json!({
            "format": POLICY_FORMAT, "version": 1,
            "scenarios": [{ "id": "sc_1", "kk": 20 }],
        });
        assert!(serde_json::from_value::<PolicyDocument>(doc).is_err());
        let typo = serde_json::json!({ "format": POLICY_FORMAT, "version": 1, "price": {} });
        assert!(serde_json::from_value::<PolicyDocument>(typo).is_err());
        // Nor deeper: in a grant (an optional field misspelt would leave the grant as it was)
        // or in the export rules' dominance.
        let in_grant = serde_json::json!({
            "format": POLICY_FORMAT, "version": 1,
            "scenarios": [{ "id": "sc_1", "grants": [
                { "dataset": "visits", "columns": ["spot"], "verison": 2 },
            ] }],
        });
        assert!(serde_json::from_value::<PolicyDocument>(in_grant).is_err());
        let in_dominance = serde_json::json!({
            "format": POLICY_FORMAT, "version": 1,
            "scenarios": [{ "id": "sc_1", "export_rules": { "dominance": {
                "n": 2, "k_percent": 40.0, "p_percent": 10.0, "p_precent": 5.0,
            } } }],
        });
        assert!(serde_json::from_value::<PolicyDocument>(in_dominance).is_err());
    }
}
