//! The JSON HTTP API: bearer tokens on every route but the public key and health check, and
//! the policy's role checks inside every platform call.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tidegate_policy::{Principal, Role};
use tidegate_runtime::{Error, ImportRequest, JobRequest, Platform, ScenarioRequest};

type AppState = Arc<Platform>;

/// An error as the API shows it: a status, a class and a message without data values.
pub(crate) struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, class) = match &self.0 {
            Error::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Limit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "limit"),
            Error::BadInput(_) => (StatusCode::BAD_REQUEST, "bad_input"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Integrity(_) => (StatusCode::INTERNAL_SERVER_ERROR, "integrity"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        (
            status,
            Json(json!({ "error": class, "message": self.0.to_string() })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn principal(platform: &Platform, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Error::Unauthenticated("send `Authorization: Bearer TOKEN`".into()))?;
    Ok(platform.authenticate(token.trim())?)
}

/// Runs blocking platform work (SQLite, crypto, file I/O) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(Error::Internal(format!("worker: {e}"))))?
        .map_err(ApiError)
}

#[derive(Deserialize)]
struct OrgBody {
    name: String,
    kind: String,
}

async fn create_org(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<OrgBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let org = blocking(move || p.create_org(&actor, &b.name, &b.kind)).await?;
    Ok(Json(serde_json::to_value(org).expect("serializes")))
}

#[derive(Deserialize)]
struct FreezeBody {
    freeze: bool,
}

async fn freeze_org(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<FreezeBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let changed = blocking(move || p.freeze_org(&actor, &id, b.freeze)).await?;
    Ok(Json(json!({ "scenarios": changed })))
}

#[derive(Deserialize)]
struct ExitBody {
    reason: String,
}

async fn exit_org(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<ExitBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    Ok(Json(
        blocking(move || p.exit_org(&actor, &id, &b.reason)).await?,
    ))
}

#[derive(Deserialize)]
struct PrincipalBody {
    name: String,
    org: String,
    roles: Vec<Role>,
}

async fn create_principal(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<PrincipalBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.create_principal(&actor, &b.name, &b.org, &b.roles)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct TrainingBody {
    course: String,
}

async fn record_training(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<TrainingBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    blocking(move || p.record_training(&actor, &id, &b.course)).await?;
    Ok(Json(json!({ "trained": true })))
}

async fn import_dataset(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<ImportRequest>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.import_dataset(&actor, b)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn approve_dataset(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    blocking(move || p.approve_dataset(&actor, &id)).await?;
    Ok(Json(json!({ "approved": true })))
}

async fn list_datasets(State(p): State<AppState>, h: HeaderMap) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.list_datasets(&actor)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn apply_scenario(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<ScenarioRequest>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.apply_scenario(&actor, b)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn get_scenario(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.get_scenario(&actor, &id)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn approve_scenario(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.approve_scenario(&actor, &id)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct StateBody {
    action: String,
}

async fn change_scenario(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<StateBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || match b.action.as_str() {
        "submit" => p.submit_scenario(&actor, &id),
        _ => p.change_scenario(&actor, &id, &b.action),
    })
    .await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct RepinBody {
    dataset: String,
}

async fn repin_grant(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<RepinBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.repin_grant(&actor, &id, &b.dataset)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct ModuleBody {
    wasm_base64: String,
}

async fn upload_module(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<ModuleBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(b.wasm_base64.as_bytes())
        .map_err(|_| Error::BadInput("wasm_base64 is not base64".into()))?;
    let v = blocking(move || p.upload_module(&actor, &id, &wasm)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct NoteBody {
    note: String,
}

async fn approve_module(
    State(p): State<AppState>,
    h: HeaderMap,
    Path((id, hash)): Path<(String, String)>,
    Json(b): Json<NoteBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.approve_module(&actor, &id, &hash, &b.note)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn submit_job(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<JobRequest>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = p.submit_job(&actor, b).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn get_job(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.get_job(&actor, &id)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct ExportBody {
    job: String,
    /// What to spend of a differentially private scenario's budget.
    #[serde(default)]
    epsilon: Option<f64>,
}

async fn request_export(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<ExportBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.request_export_spending(&actor, &b.job, b.epsilon)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

#[derive(Deserialize)]
struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

/// An export with its gate report: JSON, or with `?format=html` the readable page a reviewer
/// works from.
async fn get_export(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.get_export(&actor, &id)).await?;
    let v = serde_json::to_value(v).expect("serializes");
    Ok(match q.format.as_deref() {
        Some("html") => axum::response::Html(crate::report::export_html(&v)).into_response(),
        _ => Json(v).into_response(),
    })
}

#[derive(Deserialize)]
struct ReviewBody {
    decision: String,
    #[serde(default)]
    comment: String,
}

async fn review_export(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<ReviewBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.review_export(&actor, &id, &b.decision, &b.comment)).await?;
    Ok(Json(serde_json::to_value(v).expect("serializes")))
}

async fn download_bundle(
    State(p): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let files = blocking(move || p.download_bundle(&actor, &id)).await?;
    let files: Vec<Value> = files
        .into_iter()
        .map(|(name, bytes)| {
            json!({ "name": name, "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        })
        .collect();
    Ok(Json(json!({ "files": files })))
}

async fn verify_audit(State(p): State<AppState>, h: HeaderMap) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    let v = blocking(move || p.verify_audit(&actor)).await?;
    Ok(Json(json!({
        "entries": v.entries,
        "checkpoints": v.checkpoints,
        "first_bad": v.first_bad.map(|(n, why)| json!({ "entry": n, "problem": why })),
        "head": v.head,
    })))
}

#[derive(Deserialize)]
struct PriceBody {
    category: String,
    fen_per_unit: i64,
}

async fn set_price(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<PriceBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    blocking(move || p.set_price(&actor, &b.category, b.fen_per_unit)).await?;
    Ok(Json(json!({ "updated": true })))
}

#[derive(Deserialize)]
struct StatementQuery {
    org: String,
    period: String,
    /// Count storage up to this RFC 3339 time instead of now, to reproduce a statement.
    as_of: Option<String>,
}

#[derive(Deserialize)]
struct PruneBody {
    /// YYYY-MM-DD; at least 180 days ago.
    before: String,
}

async fn prune_audit(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<PruneBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    Ok(Json(
        blocking(move || p.prune_audit(&actor, &b.before)).await?,
    ))
}

async fn statement(
    State(p): State<AppState>,
    h: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<StatementQuery>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    Ok(Json(
        blocking(move || p.statement(&actor, &q.org, &q.period, q.as_of.as_deref())).await?,
    ))
}

#[derive(Deserialize)]
struct ReportQuery {
    org: String,
    year: i32,
    #[serde(default)]
    format: Option<String>,
}

async fn annual_report(
    State(p): State<AppState>,
    h: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let actor = principal(&p, &h)?;
    let report = blocking(move || p.annual_report(&actor, &q.org, q.year)).await?;
    Ok(match q.format.as_deref() {
        Some("html") => {
            axum::response::Html(crate::report::annual_report_html(&report)).into_response()
        }
        _ => Json(report).into_response(),
    })
}

async fn export_policy(State(p): State<AppState>, h: HeaderMap) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    Ok(Json(blocking(move || p.export_policy(&actor)).await?))
}

#[derive(Deserialize)]
struct PolicyBody {
    document: Value,
    #[serde(default)]
    dry_run: bool,
}

async fn apply_policy(
    State(p): State<AppState>,
    h: HeaderMap,
    Json(b): Json<PolicyBody>,
) -> ApiResult<Value> {
    let actor = principal(&p, &h)?;
    Ok(Json(
        blocking(move || p.apply_policy(&actor, &b.document, b.dry_run)).await?,
    ))
}

async fn public_key(State(p): State<AppState>) -> Json<Value> {
    Json(json!({ "public_key": p.public_key_hex(), "algorithm": "Ed25519" }))
}

async fn healthz() -> &'static str {
    "ok"
}

/// The API's routes over one platform.
pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/public-key", get(public_key))
        .route("/v1/orgs", post(create_org))
        .route("/v1/orgs/{id}/exit", post(exit_org))
        .route("/v1/orgs/{id}/freeze", post(freeze_org))
        .route("/v1/principals", post(create_principal))
        .route("/v1/principals/{id}/training", post(record_training))
        .route("/v1/datasets", post(import_dataset).get(list_datasets))
        .route("/v1/datasets/{id}/approve", post(approve_dataset))
        .route("/v1/scenarios", post(apply_scenario))
        .route("/v1/scenarios/{id}", get(get_scenario))
        .route("/v1/scenarios/{id}/approve", post(approve_scenario))
        .route("/v1/scenarios/{id}/state", post(change_scenario))
        .route("/v1/scenarios/{id}/repin", post(repin_grant))
        .route("/v1/scenarios/{id}/modules", post(upload_module))
        .route(
            "/v1/scenarios/{id}/modules/{hash}/approve",
            post(approve_module),
        )
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/exports", post(request_export))
        .route("/v1/exports/{id}", get(get_export))
        .route("/v1/exports/{id}/review", post(review_export))
        .route("/v1/exports/{id}/bundle", get(download_bundle))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/audit/prune", post(prune_audit))
        .route("/v1/prices", post(set_price))
        .route("/v1/policy", get(export_policy).post(apply_policy))
        .route("/v1/meter/statement", get(statement))
        .route("/v1/reports/annual", get(annual_report))
        .layer(DefaultBodyLimit::max(1536 << 20))
        .with_state(platform)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    platform: Arc<Platform>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    axum::serve(listener, router(platform)).await
}

/// Starts the API on a loopback port in a background runtime; returns its base URL and the
/// runtime, which serves for as long as it lives.
pub fn spawn_server(platform: Arc<Platform>) -> std::io::Result<(String, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(SocketAddr::from((
        [127, 0, 0, 1],
        0,
    ))))?;
    let url = format!("http://{}", listener.local_addr()?);
    rt.spawn(async move {
        if let Err(e) = serve(platform, listener).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok((url, rt))
}
