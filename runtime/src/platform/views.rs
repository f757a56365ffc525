//! What the platform shows and takes: the views and requests of its API (serialized as the
//! HTTP API's bodies, described in its OpenAPI document).

use super::*;
pub use crate::records::{GrantRequest, ResourceUse};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrincipalView {
    pub id: String,
    pub name: String,
    pub org: String,
    pub roles: Vec<Role>,
    pub trained: bool,
    /// Present once, in the answer that created the principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ColumnInput {
    pub name: String,
    /// Declared type; inferred from the file when absent.
    #[serde(default)]
    pub data_type: Option<DataType>,
    #[serde(default)]
    pub tags: Vec<ColumnTag>,
    /// Public metadata for the column's mock (value ranges, categories, NULL rate, distinct
    /// values), from which scientists' stand-in data is generated; never real values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<tidegate_policy::MockSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportRequest {
    pub name: String,
    pub level: Level,
    /// `csv` or `parquet`.
    pub format: String,
    /// Columns with declared types and tags; columns not listed keep their inferred type and
    /// get no tags.
    #[serde(default)]
    pub columns: Vec<ColumnInput>,
    /// Orgs (names or ids) whose approval every scenario requesting this dataset needs besides
    /// the admin's and the provider's, e.g. the province for data it returned. A new version
    /// keeps the list unless the import names one.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The file, base64 (empty when the file comes as a streamed upload).
    #[serde(default)]
    pub data_base64: String,
    /// S17: the provider's quality rules for the dataset, checked on this import and every
    /// later one; none keeps the rules the dataset has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_rules: Option<Vec<tidegate_policy::QualityRule>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetView {
    pub id: String,
    pub name: String,
    pub level: Level,
    pub origin: Origin,
    pub provider_org: String,
    pub columns: Vec<ColumnSpec>,
    pub version: i64,
    /// Rows, content hash and quality report: shown to the dataset's own org, the orgs it names
    /// as approvers and the authority's overseers; never to another org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Value>,
    /// Social data awaiting an admin's approval; not usable until approved.
    #[serde(default)]
    pub pending: bool,
    /// Orgs whose approval a scenario requesting the dataset needs, besides the provider's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The dataset's differential privacy budget, set by its provider, and the epsilon
    /// scenarios have drawn from it (R-GATE 7).
    #[serde(default)]
    pub privacy_budget: tidegate_policy::DatasetBudget,
    #[serde(default)]
    pub privacy_drawn: f64,
    /// The mock metadata its provider declared, by column (public to whoever sees the
    /// dataset): what its mocks are generated from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mock: BTreeMap<String, tidegate_policy::MockSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScenarioRequest {
    pub name: String,
    pub key_area: String,
    pub purpose: String,
    #[serde(default)]
    pub public_interest: bool,
    pub grants: Vec<GrantRequest>,
    pub term_start: String,
    pub term_end: String,
    #[serde(default)]
    pub k: Option<u64>,
    #[serde(default)]
    pub planned_products: Vec<String>,
    /// Masking, privacy budget and size limits of the scenario's exports.
    #[serde(default)]
    pub export_rules: ExportRules,
    /// Keep the application as a draft; `submit` asks for approvals later.
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalView {
    pub by: String,
    pub as_role: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One step of an export request's review.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportStep {
    pub state: tidegate_policy::ExportState,
    pub at: String,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScenarioView {
    pub id: String,
    pub name: String,
    pub org: String,
    pub key_area: String,
    pub purpose: String,
    pub public_interest: bool,
    pub grants: Vec<GrantRequest>,
    pub term_start: String,
    pub term_end: String,
    pub k: u64,
    pub planned_products: Vec<String>,
    #[serde(default)]
    pub export_rules: ExportRules,
    pub state: ScenarioState,
    pub approvals: Vec<ApprovalView>,
    pub missing_approvals: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleView {
    pub hash: String,
    pub scenario: String,
    pub uploaded_by: String,
    pub functions: Vec<crate::sandbox::FunctionSig>,
    pub approved_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRequest {
    pub scenario: String,
    pub sql: String,
    /// Hashes of the modules whose functions the query calls.
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub scenario: String,
    pub submitted_by: String,
    pub sql: String,
    pub modules: Vec<String>,
    pub state: tidegate_policy::JobState,
    pub error: Option<String>,
    pub rows: Option<i64>,
    pub schema: Vec<(String, String)>,
    pub resources: Option<ResourceUse>,
    pub level: Level,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// While it runs: how much of its input it has read, in percent (whole tens over L2/L3
    /// data); a gated job reads its input more than once, so it stays under 100 until done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
    /// S17: the inputs whose version has rows failing its provider's quality rules (named,
    /// never counted: how many is the provider's to see).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality_warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportView {
    pub id: String,
    pub job: String,
    pub requested_by: String,
    pub state: tidegate_policy::ExportState,
    pub gate_report: GateReport,
    pub result_hash: Option<String>,
    pub required_approvals: u64,
    pub reviews: Vec<ApprovalView>,
    /// Every state the request went through, with who moved it and their comment (R-REVIEW).
    #[serde(default)]
    pub history: Vec<ExportStep>,
    /// The released rows as CSV, shown to reviewers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// The query, its plan and module hashes, shown to reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// The scenario's other exports that passed the gate, and every export over the same
    /// data, shown to reviewers beside this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierExport>,
    /// Why it can no longer be approved or downloaded (a module of it lost its approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// The returned export this request answers, and the request that answered this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amends: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amended_by: Option<String>,
    /// Requested under rules that publish the figures of released products: approving it
    /// puts its rows in the public record (S19).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_figures: bool,
}

/// An export a reviewer reads beside the one under review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EarlierExport {
    pub id: String,
    pub state: tidegate_policy::ExportState,
    pub result_sha256: Option<String>,
    pub requested_at: String,
    pub released_at: Option<String>,
    pub query: String,
    /// Another scenario's export over the same data (the gate's memory judged this one with
    /// it); none for the scenario's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// Set on another scenario's export: it read the same data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same_data: bool,
}

impl EarlierExport {
    /// Reads `id, state, result_hash, created_at, released_at, sql` (and `scenario_id`, for
    /// another scenario's) by column name.
    pub(super) fn from_row(r: &rusqlite::Row<'_>, other: bool) -> rusqlite::Result<Self> {
        let state: String = r.get("state")?;
        Ok(EarlierExport {
            id: r.get("id")?,
            state: state.parse().map_err(|e: String| {
                rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
            })?,
            result_sha256: r.get("result_hash")?,
            requested_at: r.get("created_at")?,
            released_at: r.get("released_at")?,
            query: r.get("sql")?,
            scenario: if other {
                Some(r.get("scenario_id")?)
            } else {
                None
            },
            same_data: other,
        })
    }
}
