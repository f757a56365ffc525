//! The details of the audited actions that code reads back: the metering ledger rebuilds every
//! statement from the audit log alone (R-METER). One type per action (two for the policy's),
//! written by the action and read by the ledger through the same type, and tied to its action
//! by [`Detail::ACTION`]: a renamed or retyped field fails to compile instead of silently
//! billing nothing. Optional fields are written only when present, as before these types;
//! fields added after the first release default when absent, so older logs still replay.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidegate_policy::{
    AlertKind, AlertThresholds, Decision, ExportState, JobState, Level, ScenarioState,
};

use crate::audit::{Action, AuditEntry};
use crate::error::{Error, Result};
use crate::records::{GrantRequest, ResourceUse};

/// An audit entry's detail of one action.
pub(crate) trait Detail: Serialize + DeserializeOwned {
    const ACTION: Action;

    /// The detail as the log stores it.
    fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an audit detail serializes")
    }

    /// The detail of `entry`, which must be of this action; a missing or mistyped field is
    /// an integrity error naming the entry, never its values.
    fn read(entry: &AuditEntry) -> Result<Self> {
        if entry.action != Self::ACTION.as_str() {
            return Err(Error::Integrity(format!(
                "audit entry {} is {}, not {}",
                entry.seq,
                entry.action,
                Self::ACTION
            )));
        }
        serde_json::from_value(entry.detail.clone()).map_err(|e| {
            // Serde names a missing field without a value; other messages may quote one.
            let e = e.to_string();
            let field = if e.starts_with("missing field") {
                format!(": {}", e.split(" at line").next().unwrap_or_default())
            } else {
                String::new()
            };
            Error::Integrity(format!(
                "audit entry {} ({}): its detail is not what the action writes{field}",
                entry.seq, entry.action,
            ))
        })
    }
}

macro_rules! details {
    ($($ty:ident => $action:ident),+ $(,)?) => {
        $(impl Detail for $ty {
            const ACTION: Action = Action::$action;
        })+
    };
}

details! {
    PlatformInit => PlatformInit,
    PrincipalCreate => PrincipalCreate,
    DatasetImport => DatasetImport,
    ScenarioApply => ScenarioApply,
    JobStart => JobStart,
    JobEnd => JobEnd,
    ModuleApprove => ModuleApprove,
    ExportRequest => ExportRequest,
    ExportDownload => ExportDownload,
    OrgExit => OrgExit,
    PriceSet => PriceSet,
    PolicyChanges => PolicyApply,
    AlertSettings => PolicyApply,
}

/// The platform's first entry: its authority's org is the entry's object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PlatformInit {
    pub admin: String,
    pub public_key: String,
}

/// A principal created in an org; the principal is the entry's object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PrincipalCreate {
    pub org: String,
    /// Role names, comma-separated.
    pub roles: String,
}

/// A dataset version imported; the dataset is the entry's object, its importer the actor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DatasetImport {
    pub version: i64,
    pub level: Level,
    pub rows: u64,
    pub content_hash: String,
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Bytes stored (sealed).
    pub bytes: u64,
    /// An operating unit's own (social) data, stored at its cost.
    pub social: bool,
    #[serde(default)]
    pub quality_rules: usize,
    #[serde(default)]
    pub quarantined: bool,
}

/// A scenario applied for; the scenario is the entry's object, its applicant the actor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioApply {
    pub name: String,
    pub public_interest: bool,
    pub grants: Vec<GrantRequest>,
    pub term: [String; 2],
    pub k: u64,
    /// As approved; kept as written, so that tightening what a rule accepts never stops an
    /// older log from replaying (the ledger does not read them).
    #[serde(default)]
    pub export_rules: Value,
    pub state: ScenarioState,
}

/// A job accepted; the job is the entry's object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobStart {
    pub scenario: String,
    pub modules: Vec<String>,
    pub sql_sha256: String,
}

/// A job ended; the job is the entry's object. `resources` as its scientist sees and pays
/// for them, `exact_resources` as measured (for the authority).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobEnd {
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Why it failed: may quote the data, so it is the authority's to read, never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A failure that depended on the data, hidden from the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<bool>,
    pub resources: ResourceUse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_resources: Option<ResourceUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_sha256: Option<String>,
}

/// A module's algorithm review approved it for a scenario; the module's hash is the object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModuleApprove {
    pub scenario: String,
    pub note: String,
}

/// One check of the gate, as an export request's entry records it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CheckPassed {
    pub name: String,
    pub passed: bool,
}

/// An export requested and checked by the gate; the export is the entry's object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExportRequest {
    pub job: String,
    /// Bytes of the result kept for its reviewers (none when the gate refused it).
    pub bytes: Option<u64>,
    pub gate_passed: bool,
    pub checks: Vec<CheckPassed>,
    pub groups_suppressed: u64,
    pub result_sha256: Option<String>,
    pub state: ExportState,
    #[serde(default)]
    pub epsilon: Option<f64>,
    #[serde(default)]
    pub amends: Option<String>,
    /// Requested under rules that publish the figures of released products.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_figures: bool,
}

/// A bundle downloaded; the export is the entry's object. The first download by its
/// requester's org releases it; a provider's download of a product of its data is free.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExportDownload {
    pub result_sha256: String,
    #[serde(default)]
    pub by_provider: bool,
}

/// An org left the domain; the org is the entry's object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OrgExit {
    pub destroyed: usize,
    pub certificate_sha256: String,
}

/// A price set; the category is the entry's object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PriceSet {
    pub fen_per_unit: i64,
    pub unit: String,
}

/// A policy document applied; the new version (`vN`) is the entry's object. Each change is
/// its own small record; prices are the ones the ledger reads ([`PriceChange`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PolicyChanges {
    #[serde(default)]
    pub changes: Vec<Value>,
}

/// A price changed by a policy document.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PriceChange {
    pub price: String,
    pub from: i64,
    pub to: i64,
}

impl PolicyChanges {
    /// The prices the document changed, in its order; a price change that is not one is an
    /// integrity error (the ledger never bills nothing for it).
    pub(crate) fn prices(&self) -> Result<Vec<PriceChange>> {
        self.changes
            .iter()
            .filter(|c| c.get("price").is_some())
            .map(|c| {
                serde_json::from_value(c.clone()).map_err(|_| {
                    Error::Integrity("a policy entry's price change is not one".into())
                })
            })
            .collect()
    }
}

/// The alert settings an admin applied (object `alerts`): the webhook's origin only.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AlertSettings {
    pub webhook: Option<String>,
    pub thresholds: AlertThresholds,
}

/// The detail of an action whose kind the caller picks among a few (a read, a token's
/// rotation or revocation, a scenario's state change, a dataset's custody, a freeze): typed,
/// but not read back by the ledger.
pub(crate) fn value(detail: &impl Serialize) -> Value {
    serde_json::to_value(detail).expect("an audit detail serializes")
}

details! {
    SessionStart => SessionStart,
    SessionEnd => SessionEnd,
    SessionRefused => SessionRefused,
    PrincipalNewAddress => PrincipalNewAddress,
    PrincipalTraining => PrincipalTraining,
    OrgCreate => OrgCreate,
    OrgEvaluate => OrgEvaluate,
    OrgAuthorization => OrgAuthorization,
    DatasetApprove => DatasetApprove,
    DatasetBudget => DatasetBudget,
    DatasetSample => DatasetSample,
    DatasetMock => DatasetMock,
    ModuleUpload => ModuleUpload,
    ModuleRejected => ModuleRejected,
    ModuleDownload => ModuleDownload,
    ModuleVerify => ModuleVerify,
    ModuleRevoke => ModuleRevoke,
    JobDiscard => JobDiscard,
    JobUsage => JobUsage,
    ExportReview => ExportReview,
    ScenarioSubmit => ScenarioSubmit,
    ScenarioRepin => ScenarioRepin,
    ScenarioApprove => ScenarioApprove,
    ScenarioClose => ScenarioClose,
    ScenarioRationed => ScenarioSuspend,
    AlertRaise => AlertRaise,
    AlertRaisedAgain => AlertRaise,
    AlertAcknowledge => AlertAcknowledge,
    AuditSearch => AuditSearch,
    AuditPrune => AuditPrune,
    KeysRotate => KeysRotate,
}

/// A console session began (its secret is never logged).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SessionStart {
    pub expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SessionEnd {}

/// Sign-ins refused from one address (a /64 for IPv6), counted since it was first seen.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SessionRefused {
    pub address: String,
    pub refusals: u64,
}

/// A principal's token used from an address it was not seen at before.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PrincipalNewAddress {
    pub address: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PrincipalTraining {
    pub course: String,
    pub valid_until: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OrgCreate {
    pub name: String,
    pub kind: String,
}

/// The authority's signed annual evaluation of a unit (its body's hash).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OrgEvaluate {
    pub year: i32,
    pub may_reapply: bool,
    pub sha256: String,
}

/// The last day of an org's authorization set (none: without end).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OrgAuthorization {
    pub until: Option<String>,
}

/// A freeze or its lifting: the scenarios it suspended or restored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OrgFreeze {
    pub scenarios: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DatasetApprove {
    pub org: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DatasetBudget {
    pub total: f64,
    pub per_org: f64,
}

/// A dataset version sealed, unsealed or destroyed, with the signed record's hash.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DatasetCustody {
    pub version: i64,
    pub reason: String,
    pub scenarios_suspended: Vec<String>,
    pub record_sha256: String,
}

/// Rows a scientist sampled from a granted version (the count, never a value).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DatasetSample {
    pub version: i64,
    pub rows: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DatasetMock {
    pub scenario: String,
    pub rows: u64,
    pub seed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModuleUpload {
    pub scenario: String,
    pub functions: Vec<String>,
    /// The source archive's SHA-256, when one came with it.
    pub source: Option<String>,
}

/// A module refused by validation (why, in the validator's words: never data).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModuleRejected {
    pub hash: String,
    pub reason: String,
}

/// A module's WebAssembly, or its source archive (`source`), downloaded.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModuleDownload {
    pub scenario: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub bytes: usize,
}

/// A reviewer's rebuild of a module from its source.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModuleVerify {
    pub scenario: String,
    pub source: String,
    pub rebuilt: String,
    pub toolchain: String,
    pub matches: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModuleRevoke {
    pub scenario: String,
    pub reason: String,
    pub exports_flagged: usize,
}

/// What the cluster's executors recorded for an ended job after its end, charged to it; the
/// job is the entry's object. `late` as measured, `resources` the job's as its scientist now
/// sees and pays for them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobUsage {
    pub late: ResourceUse,
    pub resources: ResourceUse,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobDiscard {
    pub scenario: String,
}

/// A reviewer's decision; `publish` when it approved rows for the public record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExportReview {
    pub decision: Decision,
    pub state: ExportState,
    pub result_sha256: String,
    #[serde(default)]
    pub publish: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioSubmit {}

/// A grant moved to a dataset's newer version by its provider.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioRepin {
    pub dataset: String,
    pub from: Option<i64>,
    pub to: i64,
}

/// A privacy budget drawn from a dataset when a scenario was approved.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BudgetDraw {
    pub dataset: String,
    pub epsilon: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioApprove {
    /// `admin` or `provider`.
    #[serde(rename = "as")]
    pub as_role: String,
    pub activated: bool,
    pub budget_draws: Vec<BudgetDraw>,
}

/// A scenario's state changed by an admin (suspended, resumed, revoked).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioChange {
    pub from: ScenarioState,
    pub to: ScenarioState,
}

/// A scenario suspended by the gate's rationing of data-dependent failures.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioRationed {
    pub reason: String,
    pub failures: i64,
    pub alert: bool,
}

/// A scenario closed (its term ended or it was revoked), with its receipt's hash.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioClose {
    pub reason: String,
    pub destroyed: usize,
    pub receipt_sha256: String,
}

/// A new alert: its kind, whom it concerns, and its evidence (ids and counts).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AlertRaise {
    pub kind: AlertKind,
    pub org: Option<String>,
    pub scenario: Option<String>,
    pub evidence: Value,
}

/// An open alert raised again.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AlertRaisedAgain {
    pub kind: AlertKind,
    pub again: bool,
    pub evidence: Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AlertAcknowledge {
    pub note: String,
}

/// An auditor's search of the log: the query and how many entries matched.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuditSearch {
    pub query: Value,
    pub matched: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuditPrune {
    pub before: String,
    pub entries: u64,
}

/// The master key rotated: how many data keys were rewrapped, and the keys' fingerprints.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeysRotate {
    pub rewrapped: usize,
    pub from: String,
    pub to: String,
}

/// A read (of a job, an export, a module, a report) or a token's rotation or revocation:
/// the entry's action, actor and object say it all.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Nothing {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(action: Action, detail: Value) -> AuditEntry {
        AuditEntry {
            seq: 7,
            at: "2026-12-01T00:00:00Z".into(),
            actor: "p".into(),
            action: action.as_str().into(),
            object: "o".into(),
            detail,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_detail_is_read_back_only_from_its_own_action_and_names_no_value_when_wrong() {
        let d = ExportDownload {
            result_sha256: "ab".into(),
            by_provider: true,
        };
        let e = entry(Action::ExportDownload, d.to_value());
        assert!(ExportDownload::read(&e).unwrap().by_provider);
        let wrong = entry(Action::ExportRequest, d.to_value());
        assert!(ExportDownload::read(&wrong).is_err());
        // A download written before `by_provider` existed is the requester's.
        let old = entry(Action::ExportDownload, json!({ "result_sha256": "ab" }));
        assert!(!ExportDownload::read(&old).unwrap().by_provider);
        let bad = entry(
            Action::PriceSet,
            json!({ "fen_per_unit": "secret-value", "unit": "x" }),
        );
        let err = PriceSet::read(&bad).unwrap_err().to_string();
        assert!(err.contains("audit entry 7"), "{err}");
        assert!(!err.contains("secret-value"), "{err}");
    }

    #[test]
    fn optional_fields_are_written_only_when_present() {
        let failed = JobEnd {
            state: JobState::Failed,
            rows: None,
            error: Some("interrupted".into()),
            withheld: None,
            resources: ResourceUse::default(),
            exact_resources: None,
            result_sha256: None,
        };
        let v = failed.to_value();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["error", "resources", "state"]);
        let changes = PolicyChanges {
            changes: vec![
                json!({ "scenario": "sc_1", "k": { "from": 10, "to": 20 } }),
                json!({ "price": "result_export", "from": 5000, "to": 6000 }),
            ],
        };
        let prices: Vec<(String, i64)> = changes
            .prices()
            .unwrap()
            .into_iter()
            .map(|p| (p.price, p.to))
            .collect();
        assert_eq!(prices, [("result_export".to_string(), 6000)]);
    }
}
