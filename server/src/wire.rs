//! The API's wire contract: the request bodies, query strings and answers of the HTTP API, in
//! one place for the handlers that read and write them (`api.rs`) and the client and CLI that
//! send and read them (`client.rs`, `cli/`). Each derives both `Serialize` and `Deserialize`,
//! and its `utoipa` schema: the OpenAPI document at `/v1/openapi.json` is generated from these
//! types, so their field names, doc comments and serde attributes are the contract.
//!
//! The platform's own request and view types (`tidegate_runtime::JobRequest`, `ScenarioRequest`,
//! `ImportRequest`, `JobView`, `ExportView`...) are bodies and answers too; they live in the
//! runtime and are used from there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidegate_policy::{ExportRules, Role};
use tidegate_runtime::GrantRequest;

// ----- Request bodies -----

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct OrgBody {
    pub(crate) name: String,
    pub(crate) kind: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct FreezeBody {
    pub(crate) freeze: bool,
}

/// The last day of an org's authorization (YYYY-MM-DD), or none.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct AuthorizationBody {
    pub(crate) until: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ExitBody {
    pub(crate) reason: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct PrincipalBody {
    pub(crate) name: String,
    pub(crate) org: String,
    pub(crate) roles: Vec<Role>,
}

/// A principal to create, as the client sends it: a [`PrincipalBody`] whose roles are the
/// names the caller gave, for the server to read (and to refuse an unknown one in its own
/// words, as it refuses every other malformed body).
#[derive(Serialize)]
pub(crate) struct PrincipalRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) org: &'a str,
    pub(crate) roles: &'a [&'a str],
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct TrainingBody {
    pub(crate) course: String,
    /// The training's last day (YYYY-MM-DD); a year from today when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) valid_until: Option<String>,
}

/// `open=true`: only the alerts not acknowledged yet.
#[derive(Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AlertsQuery {
    pub(crate) open: Option<bool>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct BudgetRequest {
    pub(crate) total: f64,
    pub(crate) per_org: f64,
}

/// A scenario application as the CLI sends it: a `tidegate_runtime::ScenarioRequest` whose
/// masking rules are the text the user wrote, for the server to parse (and to refuse a wrong
/// one in its own words). A test holds the two to the same shape.
#[derive(Serialize)]
pub(crate) struct ScenarioApplication {
    pub(crate) name: String,
    pub(crate) key_area: String,
    pub(crate) purpose: String,
    pub(crate) public_interest: bool,
    pub(crate) grants: Vec<GrantRequest>,
    pub(crate) term_start: String,
    pub(crate) term_end: String,
    pub(crate) k: Option<u64>,
    pub(crate) planned_products: Vec<String>,
    pub(crate) export_rules: ExportRulesText,
    pub(crate) draft: bool,
}

/// A scenario's export rules with the masking rules as text: column to rule.
#[derive(Serialize)]
pub(crate) struct ExportRulesText {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) masking: BTreeMap<String, String>,
    /// Every other rule, as the platform reads it; its own `masking` stays empty.
    #[serde(flatten)]
    pub(crate) rules: ExportRules,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct StateBody {
    pub(crate) action: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct RepinBody {
    pub(crate) dataset: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ModuleBody {
    pub(crate) wasm_base64: String,
    /// The module's source archive (a tar made by `tidegate module build`), base64; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source_base64: Option<String>,
}

/// A reviewer's rebuild of a module's source (`tidegate module verify-source`).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceCheckBody {
    /// The SHA-256 of the archive rebuilt (the module's stored source).
    pub(crate) source_sha256: String,
    /// The SHA-256 of the bytes the rebuild gave.
    pub(crate) rebuilt_sha256: String,
    /// The toolchain that rebuilt it.
    pub(crate) toolchain: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct NoteBody {
    pub(crate) note: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonBody {
    pub(crate) reason: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ExportBody {
    pub(crate) job: String,
    /// What to spend of a differentially private scenario's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) epsilon: Option<f64>,
    /// The returned export this request answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) amends: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ReviewBody {
    pub(crate) decision: String,
    #[serde(default)]
    pub(crate) comment: String,
    /// Needed to approve an export whose scenario publishes its figures: the reviewer
    /// approves its rows for the public record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) publish: bool,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct PriceBody {
    pub(crate) category: String,
    pub(crate) fen_per_unit: i64,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct PruneBody {
    /// YYYY-MM-DD; at least 180 days ago.
    pub(crate) before: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyBody {
    pub(crate) document: tidegate_runtime::PolicyDocument,
    #[serde(default)]
    pub(crate) dry_run: bool,
}

// ----- Query strings -----

#[derive(Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    pub(crate) name: String,
    pub(crate) level: tidegate_policy::Level,
    pub(crate) format: String,
    /// The declared columns, as JSON.
    #[serde(default)]
    pub(crate) columns: Option<String>,
    /// Further approvers, as a JSON list.
    #[serde(default)]
    pub(crate) approvers: Option<String>,
    /// The dataset's quality rules, as a JSON list (none keeps the dataset's).
    #[serde(default)]
    pub(crate) quality_rules: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FormatQuery {
    #[serde(default)]
    pub(crate) format: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatementQuery {
    pub(crate) org: String,
    pub(crate) period: String,
    /// Count storage up to this RFC 3339 time instead of now, to reproduce a statement.
    pub(crate) as_of: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportQuery {
    pub(crate) org: String,
    pub(crate) year: i32,
    #[serde(default)]
    pub(crate) format: Option<String>,
}

// ----- Answers -----

/// The API's one error format: a class (`bad_input`, `unauthenticated`, `refused`,
/// `not_found`, `too_large`, `limit`, `failed`, `internal`, ...) and a message without data
/// values.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ApiErrorBody {
    pub(crate) error: String,
    pub(crate) message: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct AuthorizationAnswer {
    /// The org's last day (`YYYY-MM-DD`), or none: no end set.
    pub(crate) authorized_until: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct FrozenAnswer {
    /// The scenarios the freeze changed.
    pub(crate) scenarios: Vec<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenAnswer {
    /// The new token, shown once.
    pub(crate) token: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct TrainedAnswer {
    pub(crate) trained: bool,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ApprovedAnswer {
    pub(crate) approved: bool,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct UpdatedAnswer {
    pub(crate) updated: bool,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct BundleFile {
    pub(crate) name: String,
    pub(crate) base64: String,
}

/// A signed release bundle: the result (CSV and Parquet), its manifest and the signature.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct BundleAnswer {
    pub(crate) files: Vec<BundleFile>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct AuditProblem {
    /// The first bad entry (1-based).
    pub(crate) entry: u64,
    pub(crate) problem: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct AuditAnswer {
    pub(crate) entries: u64,
    pub(crate) checkpoints: u64,
    pub(crate) first_bad: Option<AuditProblem>,
    pub(crate) head: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct PublicKeyAnswer {
    /// The Ed25519 public key, hex.
    pub(crate) public_key: String,
    pub(crate) algorithm: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's text-carrying forms read as the server's types, field for field: what the
    /// server reads back and writes again is what was sent.
    #[test]
    fn the_clients_text_forms_read_as_the_servers_types() {
        let application = ScenarioApplication {
            name: "footfall".into(),
            key_area: "tourism".into(),
            purpose: "visits per spot".into(),
            public_interest: true,
            grants: vec![GrantRequest {
                dataset: "visits".into(),
                columns: vec!["spot".into(), "spend".into()],
                version: None,
            }],
            term_start: "2026-01-01".into(),
            term_end: "2099-12-31".into(),
            k: Some(20),
            planned_products: vec!["report".into()],
            export_rules: ExportRulesText {
                masking: BTreeMap::from([("spot".to_string(), "round:2".to_string())]),
                rules: ExportRules {
                    privacy_budget: Some(1.5),
                    contribution_bound: Some(100.0),
                    count_bound: Some(2),
                    max_groups_per_subject: Some(3),
                    max_rows: Some(5),
                    max_bytes: Some(4096),
                    ..ExportRules::default()
                },
            },
            draft: true,
        };
        let sent = serde_json::to_value(&application).unwrap();
        let read: tidegate_runtime::ScenarioRequest = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), sent);

        let principal = PrincipalRequest {
            name: "wang",
            org: "org_1",
            roles: &["scientist", "reviewer"],
        };
        let sent = serde_json::to_value(&principal).unwrap();
        let read: PrincipalBody = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), sent);
    }
}
