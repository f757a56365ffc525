//! The JSON HTTP API: bearer tokens on every route but the public key and health check, and
//! the policy's role checks inside every platform call.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use tidegate_policy::{AuditAction, Principal};
use tidegate_runtime::{Error, ImportRequest, JobRequest, Listing, Platform, ScenarioRequest};

use crate::wire::{
    AlertsQuery, ApiErrorBody, ApprovedAnswer, AuditAnswer, AuditProblem, AuthorizationAnswer,
    AuthorizationBody, BudgetRequest, BundleAnswer, BundleFile, ExitBody, ExportBody, FormatQuery,
    FreezeBody, FrozenAnswer, ModuleBody, NoteBody, OrgBody, PolicyBody, PriceBody, PrincipalBody,
    PruneBody, PublicKeyAnswer, ReasonBody, RepinBody, ReportQuery, ReviewBody, SourceCheckBody,
    StateBody, StatementQuery, TokenAnswer, TrainedAnswer, TrainingBody, UpdatedAnswer,
    UploadQuery,
};

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
            Error::WhileRunning(_) => (StatusCode::UNPROCESSABLE_ENTITY, "failed"),
            Error::BadInput(_) => (StatusCode::BAD_REQUEST, "bad_input"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Integrity(_) => (StatusCode::INTERNAL_SERVER_ERROR, "integrity"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        error_response(status, class, self.0.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The errors every route may answer, all in the one format.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description of answers, never built
enum Errors {
    /// A malformed body, query string or path, or a request the platform cannot take.
    #[response(status = 400)]
    BadInput(ApiErrorBody),
    /// No valid bearer token.
    #[response(status = 401)]
    Unauthenticated(ApiErrorBody),
    /// Refused by policy (role, state, training, a frozen org).
    #[response(status = 403)]
    Refused(ApiErrorBody),
    /// No such thing, or not the caller's to see.
    #[response(status = 404)]
    NotFound(ApiErrorBody),
    /// A body over the route's limit.
    #[response(status = 413)]
    TooLarge(ApiErrorBody),
    /// A limit reached or a job failed.
    #[response(status = 422)]
    Limit(ApiErrorBody),
    /// The platform's own fault (an integrity check, an internal error).
    #[response(status = 500)]
    Internal(ApiErrorBody),
}

/// The API's contract: OpenAPI 3.1, generated from the handlers' own types and served at
/// `/v1/openapi.json`. Every route of the router is registered through it (`routes!`), so no
/// route can be served without being described.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Tidegate", description = "Public-data authorized operation: datasets, scenarios, modules, jobs, the export gate and reviews. Bearer tokens on every route but the health check, the public key and this document; errors are `{error, message}`."),
    modifiers(&BearerScheme),
    components(schemas(ApiErrorBody)),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// A response in the API's one error format, with the status the problem calls for.
fn error_response(status: StatusCode, class: &str, message: String) -> Response {
    let body = ApiErrorBody {
        error: class.to_string(),
        message,
    };
    (status, Json(body)).into_response()
}

/// A rejected body or query string, in the API's error format: what is wrong and how to fix it.
fn rejected(status: StatusCode, what: &str, detail: String) -> Response {
    let class = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "bad_content_type",
        _ => "bad_input",
    };
    let hint = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => " (send `Content-Type: application/json`)",
        _ => "",
    };
    error_response(
        status,
        class,
        format!(
            "the request's {what} was refused: {}{hint}",
            tidegate_runtime::defuse(&detail, 500)
        ),
    )
}

/// A JSON request body; when it is malformed, of the wrong type or shape, or too large, the
/// answer is the API's error format.
pub(crate) struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(rejected(r.status(), "body", r.body_text())),
        }
    }
}

/// A query string, with the same error format.
pub(crate) struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Params(v)),
            Err(r) => Err(rejected(r.status(), "query string", r.body_text())),
        }
    }
}

/// The authenticated principal of a request. The edge authenticates every request but the
/// public ones before any handler runs and hands the principal on; a handler asking for it
/// where none was set (a route the edge let through unauthenticated) answers 401, never runs
/// without one.
pub(crate) struct Actor(Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Actor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Response> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Actor)
            .ok_or_else(|| {
                ApiError(Error::Unauthenticated(
                    "send `Authorization: Bearer TOKEN`".into(),
                ))
                .into_response()
            })
    }
}

/// A path parameter; one that cannot be read (not UTF-8, say) is answered in the API's format.
pub(crate) struct Param<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for Param<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Param(v)),
            Err(r) => Err(rejected(r.status(), "path", r.body_text())),
        }
    }
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; the routes are listed in README.md".into(),
    )
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; the routes are listed in README.md".into(),
    )
}

/// The bearer token of a request (the scheme is case-insensitive, as HTTP's are).
fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_string())
        }
        _ => Err(ApiError(Error::Unauthenticated(
            "send `Authorization: Bearer TOKEN`".into(),
        ))),
    }
}

/// Routes anyone may call: no token, no body.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/v1/public-key" | "/v1/openapi.json" | "/public" | "/public/record.json"
    )
}

/// The most bytes a request body may have on `path`: a console form's 16 KiB; files (a
/// dataset, a module) on the routes that take them, a few hundred KiB of JSON elsewhere.
fn body_limit(method: &axum::http::Method, path: &str) -> u64 {
    if crate::console::is_console(path) {
        return crate::console::FORM_LIMIT;
    }
    if *method != axum::http::Method::POST {
        return JSON_LIMIT;
    }
    if path == "/v1/datasets/upload" {
        STREAM_LIMIT
    } else if path == "/v1/datasets"
        || (path.starts_with("/v1/scenarios/") && path.ends_with("/modules"))
    {
        UPLOAD_LIMIT
    } else {
        JSON_LIMIT
    }
}

/// Bodies of uploads inside JSON: a dataset file or a module, base64.
const UPLOAD_LIMIT: u64 = 1536 << 20;
/// An authenticated client is sending a body within the route's limit that will be refused:
/// read it to its end (keeping nothing) so that it reads the refusal, not a reset connection.
async fn drain(chunks: &mut axum::body::BodyDataStream) {
    use futures::StreamExt;
    while let Some(Ok(_)) = chunks.next().await {}
}

/// A dataset file streamed as the body: sealed to disk as it arrives, never held whole.
const STREAM_LIMIT: u64 = 64 << 30;
/// Bodies of every other request.
const JSON_LIMIT: u64 = 256 << 10;

/// Runs before any extractor reads the body: a declared length over the route's limit is
/// refused with 413 at once, and a request without a valid token with 401, so that no
/// unauthenticated request makes the server read or hold its body. The principal goes to the
/// handler through the [`Actor`] extractor.
async fn edge(
    State(p): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_string();
    if is_public(&path) {
        return next.run(request).await;
    }
    // The console's pages sign in by their session cookie (and its forms by their CSRF
    // token), never by a bearer token: see `console.rs`. Every answer on its paths carries its
    // security headers (refusals and the fallbacks' answers too); a form post over its limit,
    // or without a session (but the sign-in form's), is answered before its body is read.
    let console = crate::console::is_console(&path);
    let limit = body_limit(request.method(), &path);
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return match console {
            true => crate::console::harden(too_large(limit)),
            false => too_large(limit),
        };
    }
    if console {
        if request.method() == axum::http::Method::POST
            && path != "/console/sign-in"
            && !crate::console::has_session_cookie(request.headers())
        {
            return crate::console::harden(close(
                axum::response::Redirect::to("/console/sign-in").into_response(),
            ));
        }
        return crate::console::harden(next.run(request).await);
    }
    let token = match bearer(request.headers()) {
        Ok(token) => token,
        Err(e) => return refuse_unread(request, e.into_response()).await,
    };
    // S15: the peer's address, for the log's record of a token used from a new one.
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    // S2: without a current training, only one's own training state may be read.
    let own_training = request.method() == axum::http::Method::GET && path == "/v1/me";
    let actor = match blocking(move || {
        let actor = p.authenticate(&token)?;
        tidegate_policy::can_act_untrained(&actor, own_training)?;
        if let Some(address) = address {
            p.note_address(&actor, &address)?;
        }
        Ok(actor)
    })
    .await
    {
        Ok(actor) => actor,
        Err(e) => return refuse_unread(request, e.into_response()).await,
    };
    request.extensions_mut().insert(actor);
    next.run(request).await
}

/// A response after which the connection closes: the body the client may still be sending
/// is never read.
fn close(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The most of a refused request's body read (and dropped) before its answer, and for how long.
const REFUSED_BODY_DRAIN: usize = 256 << 10;
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A refusal of a request whose body was not read: up to [`REFUSED_BODY_DRAIN`] bytes of it are
/// read and dropped first (for at most [`REFUSED_BODY_WAIT`]), so that a client still sending a
/// small body reads the refusal instead of a reset connection (closing on unread bytes resets
/// it). A larger or slower body is cut off, as before; nothing of it is kept.
async fn refuse_unread(request: axum::extract::Request, answer: Response) -> Response {
    use futures::StreamExt;
    let mut body = request.into_body().into_data_stream();
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > REFUSED_BODY_DRAIN {
                break;
            }
        }
    })
    .await;
    close(answer)
}

fn too_large(limit: u64) -> Response {
    close(error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body is over this route's limit of {limit} bytes"),
    ))
}

/// Runs blocking platform work (SQLite, crypto, file I/O) off the async workers, for the API
/// and the console alike (a worker that panicked is an internal error).
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker: {e}")))?
}

/// [`on_blocking_pool`], answered in the API's error format.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    on_blocking_pool(f).await.map_err(ApiError)
}

#[utoipa::path(post, path = "/v1/orgs", request_body = OrgBody, responses((status = 200, description = "the new org (admin)", body = tidegate_runtime::OrgView), Errors))]
async fn create_org(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<OrgBody>,
) -> ApiResult<tidegate_runtime::OrgView> {
    let org = blocking(move || p.create_org(&actor, &b.name, &b.kind)).await?;
    Ok(Json(org))
}

#[utoipa::path(post, path = "/v1/orgs/{id}/freeze", params(("id" = String, Path, description = "the id")), request_body = FreezeBody, responses((status = 200, description = "the scenarios the freeze changed (admin)", body = FrozenAnswer), Errors))]
async fn freeze_org(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<FreezeBody>,
) -> ApiResult<FrozenAnswer> {
    let scenarios = blocking(move || p.freeze_org(&actor, &id, b.freeze)).await?;
    Ok(Json(FrozenAnswer { scenarios }))
}

#[utoipa::path(post, path = "/v1/orgs/{id}/exit", params(("id" = String, Path, description = "the id")), request_body = ExitBody, responses((status = 200, description = "the signed certificate of what was destroyed (admin)", body = tidegate_runtime::ExitCertificate), Errors))]
async fn exit_org(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<ExitBody>,
) -> ApiResult<tidegate_runtime::ExitCertificate> {
    Ok(Json(
        blocking(move || p.exit_org(&actor, &id, &b.reason)).await?,
    ))
}

#[utoipa::path(post, path = "/v1/principals", request_body = PrincipalBody, responses((status = 200, description = "the new principal, with its token shown once (admin)", body = tidegate_runtime::PrincipalView), Errors))]
async fn create_principal(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<PrincipalBody>,
) -> ApiResult<tidegate_runtime::PrincipalView> {
    let v = blocking(move || p.create_principal(&actor, &b.name, &b.org, &b.roles)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/principals/{id}/token", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the new token (its holder, or an admin revoking it)", body = TokenAnswer), Errors))]
async fn rotate_token(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<TokenAnswer> {
    let token = blocking(move || p.rotate_token(&actor, &id)).await?;
    Ok(Json(TokenAnswer { token }))
}

#[utoipa::path(post, path = "/v1/principals/{id}/training", params(("id" = String, Path, description = "the id")), request_body = TrainingBody, responses((status = 200, description = "training recorded (admin)", body = TrainedAnswer), Errors))]
async fn record_training(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<TrainingBody>,
) -> ApiResult<TrainedAnswer> {
    blocking(move || p.record_training_until(&actor, &id, &b.course, b.valid_until.as_deref()))
        .await?;
    Ok(Json(TrainedAnswer { trained: true }))
}

#[utoipa::path(post, path = "/v1/datasets", request_body = tidegate_runtime::ImportRequest, responses((status = 200, description = "the imported version (provider)", body = tidegate_runtime::DatasetView), Errors))]
async fn import_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<ImportRequest>,
) -> ApiResult<tidegate_runtime::DatasetView> {
    let v = blocking(move || p.import_dataset(&actor, b)).await?;
    Ok(Json(v))
}

/// A dataset file streamed as the body: sealed into the data directory as it arrives, never
/// held whole in the request; imported when it has all arrived.
#[utoipa::path(post, path = "/v1/datasets/upload", params(UploadQuery), request_body(content = Vec<u8>, description = "the dataset file, streamed", content_type = "application/octet-stream"), responses((status = 200, description = "the imported version (provider)", body = tidegate_runtime::DatasetView), Errors))]
async fn upload_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Params(q): Params<UploadQuery>,
    body: axum::body::Body,
) -> ApiResult<tidegate_runtime::DatasetView> {
    use futures::StreamExt;
    let parse = |what: &str, text: Option<&str>| -> Result<Value, ApiError> {
        text.map_or(Ok(json!([])), |t| {
            serde_json::from_str(t)
                .map_err(|e| ApiError(Error::BadInput(format!("{what} is not a JSON list: {e}"))))
        })
    };
    let mut chunks = body.into_data_stream();
    let request = (|| -> Result<ImportRequest, ApiError> {
        Ok(ImportRequest {
            name: q.name,
            level: q.level,
            format: q.format,
            columns: serde_json::from_value(parse("columns", q.columns.as_deref())?)
                .map_err(|e| ApiError(Error::BadInput(format!("columns: {e}"))))?,
            approvers: serde_json::from_value(parse("approvers", q.approvers.as_deref())?)
                .map_err(|e| ApiError(Error::BadInput(format!("approvers: {e}"))))?,
            data_base64: String::new(),
            quality_rules: q
                .quality_rules
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| ApiError(Error::BadInput(format!("quality_rules: {e}"))))?,
        })
    })();
    let request = match request {
        Ok(request) => request,
        Err(refused) => {
            drain(&mut chunks).await;
            return Err(refused);
        }
    };
    let level = request.level;
    let (staging, who) = (Arc::clone(&p), actor.clone());
    let upload = match blocking(move || staging.stage_upload(&who, level)).await {
        Ok(upload) => upload,
        Err(refused) => {
            drain(&mut chunks).await;
            return Err(refused);
        }
    };
    // The chunks are sealed and written on the blocking pool, fed through a short queue: the
    // async worker only moves bytes, and a slow disk holds the client back, not the server.
    let (feed, mut fed) = tokio::sync::mpsc::channel::<axum::body::Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let mut upload = upload;
        while let Some(chunk) = fed.blocking_recv() {
            upload.write(&chunk)?;
        }
        Ok(upload)
    });
    let mut cut = false;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            cut = true;
            break;
        };
        if feed.send(chunk).await.is_err() {
            // The writer stopped on an error: it is the answer.
            break;
        }
    }
    drop(feed);
    let written = writer.await;
    if cut {
        // What was written, and its temporary file, are gone before the answer is sent.
        let _ = tokio::task::spawn_blocking(move || drop(written)).await;
        return Err(ApiError(Error::BadInput(
            "the upload was cut off before its end; nothing was imported".into(),
        )));
    }
    let upload = written
        .map_err(|e| ApiError(Error::Internal(format!("worker: {e}"))))?
        .map_err(ApiError)?;
    let v = blocking(move || p.import_staged(&actor, request, upload)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/datasets/{id}/approve", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the approval recorded", body = ApprovedAnswer), Errors))]
async fn approve_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<ApprovedAnswer> {
    blocking(move || p.approve_dataset(&actor, &id)).await?;
    Ok(Json(ApprovedAnswer { approved: true }))
}

#[utoipa::path(post, path = "/v1/datasets/{id}/budget", params(("id" = String, Path, description = "the id")), request_body = BudgetRequest, responses((status = 200, description = "the dataset with its differential privacy budget (provider, admin)", body = tidegate_runtime::DatasetView), Errors))]
async fn set_dataset_budget(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(req): Body<BudgetRequest>,
) -> ApiResult<tidegate_runtime::DatasetView> {
    let budget = tidegate_policy::DatasetBudget {
        total: req.total,
        per_org: req.per_org,
    };
    let v = blocking(move || p.set_dataset_budget(&actor, &id, budget)).await?;
    Ok(Json(v))
}

/// One handler per list: the same query (`state`, `scenario`, `queue`, `limit`, `after`),
/// scoped by the platform to what the caller may open.
macro_rules! list_handler {
    ($name:ident, $method:ident, $path:literal, $item:ty) => {
        #[utoipa::path(get, path = $path, params(tidegate_runtime::ListQuery),
            responses((status = 200, description = "a page of what the caller may open, and the cursor of the next", body = Listing<$item>), Errors))]
        async fn $name(
            State(p): State<AppState>,
            Actor(actor): Actor,
            Params(q): Params<tidegate_runtime::ListQuery>,
        ) -> ApiResult<Listing<$item>> {
            Ok(Json(blocking(move || p.$method(&actor, &q)).await?))
        }
    };
}

list_handler!(
    list_exports,
    list_exports,
    "/v1/exports",
    tidegate_runtime::ExportSummary
);
list_handler!(
    list_jobs,
    list_jobs,
    "/v1/jobs",
    tidegate_runtime::JobSummary
);
list_handler!(
    list_modules,
    list_modules,
    "/v1/modules",
    tidegate_runtime::ModuleSummary
);
list_handler!(
    list_scenarios,
    list_scenarios,
    "/v1/scenarios",
    tidegate_runtime::ScenarioView
);
list_handler!(list_orgs, list_orgs, "/v1/orgs", tidegate_runtime::OrgView);
list_handler!(
    list_principals,
    list_principals,
    "/v1/principals",
    tidegate_runtime::PrincipalView
);

#[utoipa::path(get, path = "/v1/datasets", responses((status = 200, description = "the datasets the caller may see", body = Vec<tidegate_runtime::DatasetView>), Errors))]
async fn list_datasets(
    State(p): State<AppState>,
    Actor(actor): Actor,
) -> ApiResult<Vec<tidegate_runtime::DatasetView>> {
    let v = blocking(move || p.list_datasets(&actor)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/scenarios", request_body = tidegate_runtime::ScenarioRequest, responses((status = 200, description = "the scenario applied for (scientist)", body = tidegate_runtime::ScenarioView), Errors))]
async fn apply_scenario(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<ScenarioRequest>,
) -> ApiResult<tidegate_runtime::ScenarioView> {
    let v = blocking(move || p.apply_scenario(&actor, b)).await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/v1/scenarios/{id}", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the scenario", body = tidegate_runtime::ScenarioView), Errors))]
async fn get_scenario(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::ScenarioView> {
    let v = blocking(move || p.get_scenario(&actor, &id)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/reports/annual/evaluation", request_body = tidegate_runtime::EvaluationRequest, responses((status = 200, description = "the signed evaluation of an org's year (the authority's admins, once per org and year)", body = tidegate_runtime::SignedEvaluation), Errors))]
async fn evaluate_org(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<tidegate_runtime::EvaluationRequest>,
) -> ApiResult<tidegate_runtime::SignedEvaluation> {
    Ok(Json(blocking(move || p.evaluate_org(&actor, &b)).await?))
}

#[utoipa::path(get, path = "/v1/me", responses((status = 200, description = "your own training state: the one thing a principal without a current training may read", body = tidegate_runtime::TrainingState), Errors))]
async fn me(
    State(p): State<AppState>,
    Actor(actor): Actor,
) -> ApiResult<tidegate_runtime::TrainingState> {
    Ok(Json(blocking(move || p.training_state(&actor)).await?))
}

#[utoipa::path(get, path = "/v1/audit/entries", params(tidegate_runtime::AuditQuery), responses((status = 200, description = "the log's entries by org, principal, action and time (the authority's auditors and admins)", body = tidegate_runtime::AuditSearch), Errors))]
async fn search_audit(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Params(q): Params<tidegate_runtime::AuditQuery>,
) -> ApiResult<tidegate_runtime::AuditSearch> {
    Ok(Json(blocking(move || p.search_audit(&actor, &q)).await?))
}

#[utoipa::path(get, path = "/v1/alerts", params(AlertsQuery), responses((status = 200, description = "the alerts, newest first (the authority's admins and auditors)", body = Vec<tidegate_runtime::AlertView>), Errors))]
async fn list_alerts(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Params(q): Params<AlertsQuery>,
) -> ApiResult<Vec<tidegate_runtime::AlertView>> {
    Ok(Json(
        blocking(move || p.alerts(&actor, q.open.unwrap_or(false))).await?,
    ))
}

#[utoipa::path(post, path = "/v1/alerts/{id}/acknowledge", params(("id" = String, Path, description = "the id")), request_body = NoteBody, responses((status = 200, description = "the alert, acknowledged (the authority's admins)", body = tidegate_runtime::AlertView), Errors))]
async fn acknowledge_alert(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<NoteBody>,
) -> ApiResult<tidegate_runtime::AlertView> {
    Ok(Json(
        blocking(move || p.acknowledge_alert(&actor, &id, &b.note)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/alerts/settings", responses((status = 200, description = "where alerts go and when they are raised", body = tidegate_runtime::AlertSettings), Errors))]
async fn alert_settings(
    State(p): State<AppState>,
    Actor(actor): Actor,
) -> ApiResult<tidegate_runtime::AlertSettings> {
    Ok(Json(blocking(move || p.alert_settings(&actor)).await?))
}

#[utoipa::path(post, path = "/v1/alerts/settings", request_body = tidegate_runtime::AlertSettings, responses((status = 200, description = "the settings, set (the authority's admins)", body = tidegate_runtime::AlertSettings), Errors))]
async fn set_alert_settings(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<tidegate_runtime::AlertSettings>,
) -> ApiResult<tidegate_runtime::AlertSettings> {
    Ok(Json(
        blocking(move || {
            p.set_alert_settings(&actor, &b)?;
            Ok(b)
        })
        .await?,
    ))
}

#[utoipa::path(get, path = "/v1/scenarios/{id}/closing", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the signed receipt of what the scenario's closing destroyed", body = tidegate_runtime::ClosingReceipt), Errors))]
async fn closing_receipt(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::ClosingReceipt> {
    Ok(Json(
        blocking(move || p.closing_receipt(&actor, &id)).await?,
    ))
}

#[utoipa::path(post, path = "/v1/orgs/{id}/authorization", params(("id" = String, Path, description = "the id")), request_body = AuthorizationBody, responses((status = 200, description = "the org's authorization set (admin)", body = AuthorizationAnswer), Errors))]
async fn set_org_authorization(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<AuthorizationBody>,
) -> ApiResult<AuthorizationAnswer> {
    let until = b.until.clone();
    blocking(move || p.set_org_authorization(&actor, &id, b.until.as_deref())).await?;
    Ok(Json(AuthorizationAnswer {
        authorized_until: until,
    }))
}

#[utoipa::path(post, path = "/v1/sweep", responses((status = 200, description = "the scenarios the lifecycle sweep closed and the orgs it exited (admin)", body = tidegate_runtime::SweepReport), Errors))]
async fn sweep(
    State(p): State<AppState>,
    Actor(actor): Actor,
) -> ApiResult<tidegate_runtime::SweepReport> {
    Ok(Json(blocking(move || p.sweep_now(&actor)).await?))
}

#[utoipa::path(post, path = "/v1/scenarios/{id}/approve", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the scenario with the approval", body = tidegate_runtime::ScenarioView), Errors))]
async fn approve_scenario(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::ScenarioView> {
    let v = blocking(move || p.approve_scenario(&actor, &id)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/scenarios/{id}/state", params(("id" = String, Path, description = "the id")), request_body = StateBody, responses((status = 200, description = "the scenario in its new state", body = tidegate_runtime::ScenarioView), Errors))]
async fn change_scenario(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<StateBody>,
) -> ApiResult<tidegate_runtime::ScenarioView> {
    let v = blocking(move || match b.action.as_str() {
        "submit" => p.submit_scenario(&actor, &id),
        _ => p.change_scenario(&actor, &id, &b.action),
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/scenarios/{id}/repin", params(("id" = String, Path, description = "the id")), request_body = RepinBody, responses((status = 200, description = "the scenario with the grant on the newest version", body = tidegate_runtime::ScenarioView), Errors))]
async fn repin_grant(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<RepinBody>,
) -> ApiResult<tidegate_runtime::ScenarioView> {
    let v = blocking(move || p.repin_grant(&actor, &id, &b.dataset)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/scenarios/{id}/modules", params(("id" = String, Path, description = "the id")), request_body = ModuleBody, responses((status = 200, description = "the validated module, awaiting review", body = tidegate_runtime::ModuleView), Errors))]
async fn upload_module(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<ModuleBody>,
) -> ApiResult<tidegate_runtime::ModuleView> {
    let v = blocking(move || {
        let wasm = base64::engine::general_purpose::STANDARD
            .decode(b.wasm_base64.as_bytes())
            .map_err(|_| Error::BadInput("wasm_base64 is not base64".into()))?;
        let source = b
            .source_base64
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|_| Error::BadInput("source_base64 is not base64".into()))
            })
            .transpose()?;
        p.upload_module_with_source(&actor, &id, &wasm, source.as_deref())
    })
    .await?;
    Ok(Json(v))
}

/// The module's source archive (`application/x-tar`), for its reviewer to read and rebuild.
#[utoipa::path(get, path = "/v1/scenarios/{id}/modules/{hash}/source", params(("id" = String, Path, description = "the id"), ("hash" = String, Path, description = "the module's SHA-256 hash")), responses((status = 200, description = "the source archive (audited)", content_type = "application/x-tar", body = Vec<u8>), Errors))]
async fn module_source(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, hash)): Param<(String, String)>,
) -> Result<Response, ApiError> {
    let bytes = blocking(move || p.module_source(&actor, &id, &hash)).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        bytes,
    )
        .into_response())
}

/// Records a reviewer's rebuild of the module's source: the platform decides from the hashes
/// whether the bytes match.
#[utoipa::path(post, path = "/v1/scenarios/{id}/modules/{hash}/verification", params(("id" = String, Path, description = "the id"), ("hash" = String, Path, description = "the module's SHA-256 hash")), request_body = SourceCheckBody, responses((status = 200, description = "the module with the recorded rebuild", body = tidegate_runtime::ModuleDetail), Errors))]
async fn record_source_check(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, hash)): Param<(String, String)>,
    Body(b): Body<SourceCheckBody>,
) -> ApiResult<tidegate_runtime::ModuleDetail> {
    let v = blocking(move || {
        p.record_source_check(
            &actor,
            &id,
            &hash,
            &b.source_sha256,
            &b.rebuilt_sha256,
            &b.toolchain,
        )
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/scenarios/{id}/modules/{hash}/approve", params(("id" = String, Path, description = "the id"), ("hash" = String, Path, description = "the module's SHA-256 hash")), request_body = NoteBody, responses((status = 200, description = "the approved module (reviewer)", body = tidegate_runtime::ModuleView), Errors))]
async fn approve_module(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, hash)): Param<(String, String)>,
    Body(b): Body<NoteBody>,
) -> ApiResult<tidegate_runtime::ModuleView> {
    let v = blocking(move || p.approve_module(&actor, &id, &hash, &b.note)).await?;
    Ok(Json(v))
}

/// A module as its reviewer reads it: manifest, structure, state and history.
#[utoipa::path(get, path = "/v1/scenarios/{id}/modules/{hash}", params(("id" = String, Path, description = "the id"), ("hash" = String, Path, description = "the module's SHA-256 hash")), responses((status = 200, description = "the module as its reviewer reads it", body = tidegate_runtime::ModuleDetail), Errors))]
async fn get_module(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, hash)): Param<(String, String)>,
) -> ApiResult<tidegate_runtime::ModuleDetail> {
    let v = blocking(move || {
        let v = p.get_module(&actor, &id, &hash)?;
        p.record_read(&actor, AuditAction::ModuleRead, &hash)?;
        Ok(v)
    })
    .await?;
    Ok(Json(v))
}

/// The module's bytes (`application/wasm`), for its reviewer to read.
#[utoipa::path(get, path = "/v1/scenarios/{id}/modules/{hash}/wasm", params(("id" = String, Path, description = "the id"), ("hash" = String, Path, description = "the module's SHA-256 hash")), responses((status = 200, description = "the module bytes (audited)", content_type = "application/wasm", body = Vec<u8>), Errors))]
async fn module_bytes(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, hash)): Param<(String, String)>,
) -> Result<Response, ApiError> {
    let bytes = blocking(move || p.module_bytes(&actor, &id, &hash)).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/wasm")],
        bytes,
    )
        .into_response())
}

/// Seals a dataset version (the authority's admins): no job may read it; it is kept.
#[utoipa::path(post, path = "/v1/datasets/{id}/versions/{version}/seal", params(("id" = String, Path, description = "the dataset's id or name"), ("version" = i64, Path, description = "the version")), request_body = ReasonBody, responses((status = 200, description = "the signed sealing record", body = tidegate_runtime::CustodyRecord), Errors))]
async fn seal_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, version)): Param<(String, i64)>,
    Body(b): Body<ReasonBody>,
) -> ApiResult<tidegate_runtime::CustodyRecord> {
    let v = blocking(move || p.seal_dataset_version(&actor, &id, version, &b.reason)).await?;
    Ok(Json(v))
}

/// Lifts a dataset version's seal (the authority's admins).
#[utoipa::path(post, path = "/v1/datasets/{id}/versions/{version}/unseal", params(("id" = String, Path, description = "the dataset's id or name"), ("version" = i64, Path, description = "the version")), request_body = ReasonBody, responses((status = 200, description = "the signed unsealing record", body = tidegate_runtime::CustodyRecord), Errors))]
async fn unseal_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, version)): Param<(String, i64)>,
    Body(b): Body<ReasonBody>,
) -> ApiResult<tidegate_runtime::CustodyRecord> {
    let v = blocking(move || p.unseal_dataset_version(&actor, &id, version, &b.reason)).await?;
    Ok(Json(v))
}

/// Destroys a dataset version (the authority's admins): its key and file; scenarios pinned to
/// it are suspended. Answers the signed destruction certificate.
#[utoipa::path(post, path = "/v1/datasets/{id}/versions/{version}/destroy", params(("id" = String, Path, description = "the dataset's id or name"), ("version" = i64, Path, description = "the version")), request_body = ReasonBody, responses((status = 200, description = "the signed destruction certificate", body = tidegate_runtime::CustodyRecord), Errors))]
async fn destroy_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, version)): Param<(String, i64)>,
    Body(b): Body<ReasonBody>,
) -> ApiResult<tidegate_runtime::CustodyRecord> {
    let v = blocking(move || p.destroy_dataset_version(&actor, &id, version, &b.reason)).await?;
    Ok(Json(v))
}

/// What a sample asks for: its rows.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SampleQuery {
    /// How many rows (1 to 100; default 20).
    #[serde(default = "default_sample_rows")]
    rows: u64,
}

fn default_sample_rows() -> u64 {
    20
}

/// A sample of a dataset version, drawn at random, for its provider and the authority's
/// admins to inspect (audited).
#[utoipa::path(get, path = "/v1/datasets/{id}/versions/{version}/sample", params(("id" = String, Path, description = "the dataset's id or name"), ("version" = i64, Path, description = "the version"), SampleQuery), responses((status = 200, description = "the sample's columns and rows, as text", body = tidegate_runtime::SampleView), Errors))]
async fn sample_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, version)): Param<(String, i64)>,
    Params(q): Params<SampleQuery>,
) -> ApiResult<tidegate_runtime::SampleView> {
    let v = blocking(move || p.sample_dataset_version(&actor, &id, version, q.rows)).await?;
    Ok(Json(v))
}

/// S18: where a dataset is used, for its provider and the authority.
#[utoipa::path(get, path = "/v1/datasets/{id}/usage", params(("id" = String, Path, description = "the dataset's id or name")), responses((status = 200, description = "the scenarios granting the dataset, the jobs that read it and the products released from it (its provider, the authority's admins and auditors)", body = tidegate_runtime::DatasetUsage), Errors))]
async fn dataset_usage(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::DatasetUsage> {
    Ok(Json(blocking(move || p.dataset_usage(&actor, &id)).await?))
}

/// What a mock asks for: its rows and its seed.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MockQuery {
    /// How many rows (1 to 1,000,000; default 1,000).
    #[serde(default = "default_mock_rows")]
    rows: u64,
    /// The same seed gives the same mock (default 0).
    #[serde(default)]
    seed: u64,
}

fn default_mock_rows() -> u64 {
    1_000
}

/// A mock of a dataset as the scenario grants it (its granted columns and entity key), made
/// from its provider's declared metadata, never from its values: Parquet whose file metadata
/// marks it as a mock (`tidegate.mock = true`). For the scenario's scientists; audited.
#[utoipa::path(get, path = "/v1/scenarios/{id}/datasets/{dataset}/mock", params(("id" = String, Path, description = "the scenario's id"), ("dataset" = String, Path, description = "a dataset the scenario grants, by name or id"), MockQuery), responses((status = 200, description = "the mock, as Parquet", content_type = "application/vnd.apache.parquet", body = Vec<u8>), Errors))]
async fn mock_dataset(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, dataset)): Param<(String, String)>,
    Params(q): Params<MockQuery>,
) -> Result<Response, ApiError> {
    let mock = blocking(move || p.mock_dataset(&actor, &id, &dataset, q.rows, q.seed)).await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.apache.parquet".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-mock.parquet\"", mock.dataset),
            ),
        ],
        mock.parquet,
    )
        .into_response())
}

/// Revokes a module's approval: its jobs stop, exports computed with it are flagged.
#[utoipa::path(post, path = "/v1/scenarios/{id}/modules/{hash}/revoke", params(("id" = String, Path, description = "the id"), ("hash" = String, Path, description = "the module's SHA-256 hash")), request_body = ReasonBody, responses((status = 200, description = "the module, revoked", body = tidegate_runtime::ModuleDetail), Errors))]
async fn revoke_module(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param((id, hash)): Param<(String, String)>,
    Body(b): Body<ReasonBody>,
) -> ApiResult<tidegate_runtime::ModuleDetail> {
    let v = blocking(move || p.revoke_module(&actor, &id, &hash, &b.reason)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/jobs", request_body = tidegate_runtime::JobRequest, responses((status = 200, description = "the job, queued", body = tidegate_runtime::JobView), Errors))]
async fn submit_job(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<JobRequest>,
) -> ApiResult<tidegate_runtime::JobView> {
    // Accepted and queued at once: the handler never waits for the job (or its timing).
    let v = blocking(move || p.enqueue_job(&actor, b)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the job, cancelled", body = tidegate_runtime::JobView), Errors))]
async fn cancel_job(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::JobView> {
    let v = blocking(move || p.cancel_job(&actor, &id)).await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/discard", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the job, its result discarded", body = tidegate_runtime::JobView), Errors))]
async fn discard_result(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::JobView> {
    let v = blocking(move || p.discard_result(&actor, &id)).await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the job", body = tidegate_runtime::JobView), Errors))]
async fn get_job(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<tidegate_runtime::JobView> {
    let v = blocking(move || {
        let v = p.get_job(&actor, &id)?;
        p.record_read(&actor, AuditAction::JobRead, &id)?;
        Ok(v)
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(post, path = "/v1/exports", request_body = ExportBody, responses((status = 200, description = "the export request with its gate report", body = tidegate_runtime::ExportView), Errors))]
async fn request_export(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<ExportBody>,
) -> ApiResult<tidegate_runtime::ExportView> {
    let v =
        blocking(move || p.request_export_amending(&actor, &b.job, b.epsilon, b.amends.as_deref()))
            .await?;
    Ok(Json(v))
}

/// An export with its gate report: JSON, or with `?format=html` the readable page a reviewer
/// works from.
#[utoipa::path(get, path = "/v1/exports/{id}", params(("id" = String, Path, description = "the id"), FormatQuery), responses((status = 200, description = "the export with its gate report (JSON), or its review page (format=html)", content((tidegate_runtime::ExportView = "application/json"), (String = "text/html"))), Errors))]
async fn get_export(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Params(q): Params<FormatQuery>,
) -> Result<Response, ApiError> {
    let v = blocking(move || {
        let v = p.get_export(&actor, &id)?;
        p.record_read(&actor, AuditAction::ExportRead, &id)?;
        Ok(v)
    })
    .await?;
    Ok(match q.format.as_deref() {
        Some("html") => axum::response::Html(crate::report::export_html(&v)).into_response(),
        _ => Json(v).into_response(),
    })
}

#[utoipa::path(post, path = "/v1/exports/{id}/review", params(("id" = String, Path, description = "the id")), request_body = ReviewBody, responses((status = 200, description = "the export after the decision (reviewer)", body = tidegate_runtime::ExportView), Errors))]
async fn review_export(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
    Body(b): Body<ReviewBody>,
) -> ApiResult<tidegate_runtime::ExportView> {
    let v =
        blocking(move || p.review_export(&actor, &id, &b.decision, &b.comment, b.publish)).await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/v1/exports/{id}/bundle", params(("id" = String, Path, description = "the id")), responses((status = 200, description = "the signed bundle (its requesting org; the release)", body = BundleAnswer), Errors))]
async fn download_bundle(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Param(id): Param<String>,
) -> ApiResult<BundleAnswer> {
    // Encoding a bundle of up to the export's size limit is work for the blocking pool too.
    let files = blocking(move || {
        Ok(p.download_bundle(&actor, &id)?
            .into_iter()
            .map(|(name, bytes)| BundleFile {
                name,
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            })
            .collect())
    })
    .await?;
    Ok(Json(BundleAnswer { files }))
}

#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, description = "the verdict on the audit chain (admin, auditor)", body = AuditAnswer), Errors))]
async fn verify_audit(State(p): State<AppState>, Actor(actor): Actor) -> ApiResult<AuditAnswer> {
    let v = blocking(move || p.verify_audit(&actor)).await?;
    Ok(Json(AuditAnswer {
        entries: v.entries,
        checkpoints: v.checkpoints,
        first_bad: v
            .first_bad
            .map(|(entry, problem)| AuditProblem { entry, problem }),
        head: v.head,
    }))
}

#[utoipa::path(post, path = "/v1/prices", request_body = PriceBody, responses((status = 200, description = "the price set (admin)", body = UpdatedAnswer), Errors))]
async fn set_price(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<PriceBody>,
) -> ApiResult<UpdatedAnswer> {
    blocking(move || p.set_price(&actor, &b.category, b.fen_per_unit)).await?;
    Ok(Json(UpdatedAnswer { updated: true }))
}

#[utoipa::path(post, path = "/v1/audit/prune", request_body = PruneBody, responses((status = 200, description = "what was pruned (admin)", body = tidegate_runtime::Pruned), Errors))]
async fn prune_audit(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<PruneBody>,
) -> ApiResult<tidegate_runtime::Pruned> {
    Ok(Json(
        blocking(move || p.prune_audit(&actor, &b.before)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/meter/statement", params(StatementQuery), responses((status = 200, description = "an org's monthly statement", body = tidegate_runtime::Statement), Errors))]
async fn statement(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Params(q): Params<StatementQuery>,
) -> ApiResult<tidegate_runtime::Statement> {
    Ok(Json(
        blocking(move || {
            read_report(
                &p,
                &actor,
                &format!("statement:{}:{}", q.org, q.period),
                || p.statement(&actor, &q.org, &q.period, q.as_of.as_deref()),
            )
        })
        .await?,
    ))
}

#[utoipa::path(get, path = "/v1/reports/annual", params(ReportQuery), responses((status = 200, description = "an org's annual report (JSON, or a page with format=html)", content((tidegate_runtime::AnnualReport = "application/json"), (String = "text/html"))), Errors))]
async fn annual_report(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Params(q): Params<ReportQuery>,
) -> Result<Response, ApiError> {
    let html = q.format.as_deref() == Some("html");
    let report = blocking(move || {
        read_report(&p, &actor, &format!("annual:{}:{}", q.org, q.year), || {
            p.annual_report(&actor, &q.org, q.year)
        })
    })
    .await?;
    Ok(page_or_json(
        report,
        html,
        crate::report::annual_report_html,
    ))
}

/// A report `read` for `actor`, its read audited as `object` (once per principal, object and
/// hour); the API's and the console's reports alike.
pub(crate) fn read_report<T>(
    p: &Platform,
    actor: &Principal,
    object: &str,
    read: impl FnOnce() -> tidegate_runtime::Result<T>,
) -> tidegate_runtime::Result<T> {
    let v = read()?;
    p.record_read(actor, AuditAction::ReportRead, object)?;
    Ok(v)
}

/// A report as its page (`format=html`) or as JSON.
fn page_or_json<T: serde::Serialize>(report: T, html: bool, page: fn(&T) -> String) -> Response {
    if html {
        axum::response::Html(page(&report)).into_response()
    } else {
        Json(report).into_response()
    }
}

#[utoipa::path(get, path = "/v1/reports/contribution", params(ReportQuery), responses((status = 200, description = "a provider's contribution report for a year: per dataset its use, quality and the fees it earned (its provider, the authority's admins and auditors; JSON, or a page with format=html)", content((tidegate_runtime::ContributionReport = "application/json"), (String = "text/html"))), Errors))]
async fn contribution_report(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Params(q): Params<ReportQuery>,
) -> Result<Response, ApiError> {
    let html = q.format.as_deref() == Some("html");
    let report = blocking(move || {
        read_report(
            &p,
            &actor,
            &format!("contribution:{}:{}", q.org, q.year),
            || p.contribution_report(&actor, &q.org, q.year),
        )
    })
    .await?;
    Ok(page_or_json(report, html, crate::report::contribution_html))
}

#[utoipa::path(get, path = "/v1/policy", responses((status = 200, description = "the policy document (admin, auditor)", body = tidegate_runtime::PolicyDocument), Errors))]
async fn export_policy(
    State(p): State<AppState>,
    Actor(actor): Actor,
) -> ApiResult<tidegate_runtime::PolicyDocument> {
    Ok(Json(blocking(move || p.export_policy(&actor)).await?))
}

#[utoipa::path(post, path = "/v1/policy", request_body = PolicyBody, responses((status = 200, description = "what the document changes, applied unless dry_run (admin)", body = tidegate_runtime::PolicyApplied), Errors))]
async fn apply_policy(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Body(b): Body<PolicyBody>,
) -> ApiResult<tidegate_runtime::PolicyApplied> {
    Ok(Json(
        blocking(move || p.apply_policy(&actor, &b.document, b.dry_run)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/public-key", responses((status = 200, description = "the platform's signing key", body = PublicKeyAnswer), Errors), security(()))]
async fn public_key(State(p): State<AppState>) -> Json<PublicKeyAnswer> {
    Json(PublicKeyAnswer {
        public_key: p.public_key_hex(),
        algorithm: "Ed25519".into(),
    })
}

#[utoipa::path(get, path = "/public/record.json", responses((status = 200, description = "the public record (S19), signed: authorized units, their scenarios, released products and fees by category; no sign-in", body = tidegate_runtime::PublicRecord), Errors), security(()))]
async fn public_record(State(p): State<AppState>) -> Result<Response, ApiError> {
    let r = blocking(move || p.public_record()).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r.json(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/public", responses((status = 200, description = "the public record as a page; no sign-in", content_type = "text/html", body = String), Errors), security(()))]
async fn public_page(State(p): State<AppState>) -> Result<Response, ApiError> {
    let r = blocking(move || p.public_record()).await?;
    Ok(crate::console::harden(
        axum::response::Html(r.html(crate::report::public_record_html)).into_response(),
    ))
}

/// The platform's metrics in the Prometheus text format (the authority's admins and
/// auditors; a scraper sends a bearer token as any client does).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "jobs and exports by state, the gate's refusals by check, the audit log's entries, the API's latency by route", content_type = "text/plain", body = String), Errors))]
async fn metrics(
    State(p): State<AppState>,
    Actor(actor): Actor,
    Extension(http): Extension<Arc<crate::metrics::HttpMetrics>>,
) -> Result<Response, ApiError> {
    let counts = blocking(move || p.counts(&actor)).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&counts, &http),
    )
        .into_response())
}

/// The API document, as served.
#[derive(Clone)]
struct ApiDocument(Arc<String>);

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "this document: OpenAPI 3.1", content_type = "application/json", body = Value), Errors), security(()))]
async fn openapi_document(Extension(doc): Extension<ApiDocument>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_string(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok", content_type = "text/plain", body = String), Errors), security(()))]
async fn healthz() -> &'static str {
    "ok"
}

/// The API's routes over one platform (and the console's, with cookies for a server on
/// loopback).
pub fn router(platform: Arc<Platform>) -> Router {
    router_with(platform, false)
}

/// The API's and the console's routes; `secure_cookies` when the server is reached over TLS
/// (the console's cookies are then `Secure` and `__Host-` named).
pub fn router_with(platform: Arc<Platform>, secure_cookies: bool) -> Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
    use utoipa_axum::routes;
    let upload = || DefaultBodyLimit::max(UPLOAD_LIMIT as usize);
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(me))
        .routes(routes!(evaluate_org))
        .routes(routes!(search_audit))
        .routes(routes!(list_alerts))
        .routes(routes!(acknowledge_alert))
        .routes(routes!(alert_settings, set_alert_settings))
        .routes(routes!(public_key))
        .routes(routes!(public_record))
        .routes(routes!(public_page))
        .routes(routes!(openapi_document))
        .routes(routes!(metrics))
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(exit_org))
        .routes(routes!(freeze_org))
        .routes(routes!(set_org_authorization))
        .routes(routes!(sweep))
        .routes(routes!(create_principal, list_principals))
        .routes(routes!(record_training))
        .routes(routes!(rotate_token))
        .routes(routes!(import_dataset).layer(upload()))
        .routes(routes!(list_datasets))
        .routes(routes!(upload_dataset))
        .routes(routes!(approve_dataset))
        .routes(routes!(set_dataset_budget))
        .routes(routes!(mock_dataset))
        .routes(routes!(seal_dataset))
        .routes(routes!(unseal_dataset))
        .routes(routes!(destroy_dataset))
        .routes(routes!(sample_dataset))
        .routes(routes!(dataset_usage))
        .routes(routes!(apply_scenario, list_scenarios))
        .routes(routes!(get_scenario))
        .routes(routes!(closing_receipt))
        .routes(routes!(approve_scenario))
        .routes(routes!(change_scenario))
        .routes(routes!(repin_grant))
        .routes(routes!(upload_module).layer(upload()))
        .routes(routes!(approve_module))
        .routes(routes!(get_module))
        .routes(routes!(module_bytes))
        .routes(routes!(module_source))
        .routes(routes!(record_source_check))
        .routes(routes!(revoke_module))
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(list_modules))
        .routes(routes!(cancel_job))
        .routes(routes!(discard_result))
        .routes(routes!(request_export, list_exports))
        .routes(routes!(get_export))
        .routes(routes!(review_export))
        .routes(routes!(download_bundle))
        .routes(routes!(verify_audit))
        .routes(routes!(prune_audit))
        .routes(routes!(set_price))
        .routes(routes!(export_policy, apply_policy))
        .routes(routes!(statement))
        .routes(routes!(annual_report))
        .routes(routes!(contribution_report))
        .split_for_parts();
    let document = ApiDocument(Arc::new(
        doc.to_pretty_json().expect("the API document serializes"),
    ));
    let http = Arc::new(crate::metrics::HttpMetrics::default());
    api.route_layer(axum::middleware::from_fn_with_state(
        Arc::clone(&http),
        crate::metrics::track,
    ))
    .layer(Extension(document))
    .layer(Extension(http))
    .merge(crate::console::routes(crate::console::Cookies {
        secure: secure_cookies,
    }))
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(DefaultBodyLimit::max(JSON_LIMIT as usize))
    .layer(axum::middleware::from_fn_with_state(
        Arc::clone(&platform),
        edge,
    ))
    .with_state(platform)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    platform: Arc<Platform>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    platform.start_workers(DEFAULT_WORKERS)?;
    // R-MONITOR: alerts to the webhook an admin set.
    tokio::spawn(crate::webhook::deliver_forever(Arc::clone(&platform)));
    // R-EXIT: the lifecycle sweep at start and hourly.
    let swept = Arc::clone(&platform);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            let p = Arc::clone(&swept);
            match on_blocking_pool(move || p.sweep()).await {
                Ok(r) if r.scenarios_closed.is_empty() && r.orgs_expired.is_empty() => {}
                Ok(r) => tracing::info!(
                    scenarios = r.scenarios_closed.len(),
                    orgs = r.orgs_expired.len(),
                    "the lifecycle sweep closed what was over"
                ),
                Err(e) => tracing::error!(error = %e, "the lifecycle sweep failed"),
            }
        }
    });
    // What the cluster's executors recorded for jobs after they ended, charged every minute
    // (records are charged only until a quarter of an hour past a job's deadline).
    let charged = Arc::clone(&platform);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            let p = Arc::clone(&charged);
            if let Err(e) = on_blocking_pool(move || p.collect_late_cluster_usage()).await {
                tracing::error!(error = %e, "late cluster usage could not be charged");
            }
        }
    });
    axum::serve(
        listener,
        router(platform).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// How often the lifecycle sweep runs (it also runs when the server starts).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Jobs run at once by a server unless `tidegate serve --workers N` says otherwise.
pub(crate) const DEFAULT_WORKERS: usize = 2;

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
    platform.start_workers(DEFAULT_WORKERS)?;
    rt.spawn(async move {
        if let Err(e) = serve(platform, listener).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok((url, rt))
}
