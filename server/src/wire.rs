//! The API's wire contract: the request bodies, query strings and answers of the HTTP API, in
//! one place for the handlers that read and write them (`api.rs`) and the client and CLI that
//! send and read them (`client.rs`, `cli/`). Each derives both `Serialize` and `Deserialize`,
//! and its `utoipa` schema: the OpenAPI document at `/v1/openapi.json` is generated from these
//! types, so their field names, doc comments and serde attributes are the contract.
//!
//! The platform's own request and view types (`tidegate_runtime::JobRequest`, `ScenarioRequest`,
//! `ImportRequest`, `JobView`, `ExportView`...) are bodies and answers too; they live in the
//! runtime and are used from there.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidegate_policy::Role;

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

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct TrainingBody {
    pub(crate) course: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct BudgetRequest {
    pub(crate) total: f64,
    pub(crate) per_org: f64,
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
    #[serde(default)]
    pub(crate) epsilon: Option<f64>,
    /// The returned export this request answers.
    #[serde(default)]
    pub(crate) amends: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ReviewBody {
    pub(crate) decision: String,
    #[serde(default)]
    pub(crate) comment: String,
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
pub(crate) struct PolicyBody {
    pub(crate) document: Value,
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
