//! The web console: server-rendered pages for the people who decide (reviewers, admins) and
//! follow (scientists), with no script at all. Every page is a view of the same platform calls
//! the JSON API makes, under the same policy checks, and every action on a page is audited as
//! the same call through the API.
//!
//! Sign-in exchanges a token for a session cookie (HttpOnly, SameSite=Strict, expiring, ended
//! by sign-out or by the token's rotation; with `serve --secure-cookies`, behind a TLS proxy,
//! `Secure` and named `__Host-...` so no other host of the site can set it). Every form carries
//! the session's CSRF token and every post is refused without it; the sign-in form carries a
//! token of its own, bound to a short-lived cookie. Every answer forbids scripts, framing,
//! other origins and caching (Content-Security-Policy and friends): the API's `edge` adds the
//! headers to every answer on a console path, errors and refusals included.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;
use tidegate_policy::{AuditAction, Principal};
use tidegate_runtime::{Error, ListQuery, Listing, Platform, Session};

use crate::report::{STYLE, escape, export_sections, text};

type AppState = Arc<Platform>;

/// The console's cookies: `Secure` and with the `__Host-` prefix when the server is told it
/// is reached over TLS (`serve --secure-cookies`), plain for a server on loopback.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cookies {
    pub(crate) secure: bool,
}

impl Cookies {
    fn session(self) -> &'static str {
        if self.secure {
            "__Host-tg_session"
        } else {
            "tg_session"
        }
    }

    fn sign_in(self) -> &'static str {
        if self.secure {
            "__Host-tg_sign_in"
        } else {
            "tg_sign_in"
        }
    }

    /// A cookie the console sets: HttpOnly, SameSite=Strict, for the whole site.
    fn set(self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let cookie = format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            if self.secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&cookie).expect("a cookie of tokens is a header value")
    }
}

/// Whether a request carries a session cookie of either naming (checked before its body is
/// read: a post without one is not the console's to read).
pub(crate) fn has_session_cookie(headers: &HeaderMap) -> bool {
    cookie(headers, "tg_session").is_some() || cookie(headers, "__Host-tg_session").is_some()
}

/// The most bytes a console form post may have.
pub(crate) const FORM_LIMIT: u64 = 16 << 10;

/// How long a sign-in form stays good.
const SIGN_IN_SECONDS: i64 = 600;

/// The headers of every console answer.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the console's security headers to an answer.
pub(crate) fn harden(response: Response) -> Response {
    let mut response = response;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether a path is the console's (it authenticates by its cookie, not a bearer token).
pub(crate) fn is_console(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}

/// A console error: the page says what went wrong (never a data value: the platform's
/// messages hold none), with the status the problem calls for.
struct PageError(Error);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::Refused(_) => StatusCode::FORBIDDEN,
            Error::Unauthenticated(_) => {
                return Redirect::to("/console/sign-in").into_response();
            }
            Error::Limit(_) | Error::WhileRunning(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadInput(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Integrity(_) | Error::Internal(_) => {
                tracing::error!(error = %self.0, "console request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = format!(
            "<p class=\"error\">{}</p><p><a href=\"/console\">Back to the console</a></p>",
            escape(&self.0.to_string())
        );
        (status, axum::response::Html(page("Not done", None, &body))).into_response()
    }
}

type PageResult = Result<Response, PageError>;

/// A page's two lists of one kind: what waits for the caller and all it may see, 100 of each.
async fn queue_and_all<T: Send + 'static>(
    p: AppState,
    s: &Session,
    list: fn(&Platform, &Principal, &ListQuery) -> Result<Listing<T>, Error>,
) -> Result<(Listing<T>, Listing<T>), PageError> {
    let actor = s.principal.clone();
    blocking(move || {
        let page = |queue| ListQuery {
            queue,
            limit: Some(100),
            ..ListQuery::default()
        };
        Ok((
            list(&p, &actor, &page(true))?,
            list(&p, &actor, &page(false))?,
        ))
    })
    .await
}

/// [`crate::api::on_blocking_pool`], answered as a console page.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, PageError> {
    crate::api::on_blocking_pool(f).await.map_err(PageError)
}

/// A cookie of the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The request's session, or the redirect to sign in. S2: a principal without a training
/// that holds today is refused every page but home (which shows their training state).
async fn session(p: &AppState, c: Cookies, headers: &HeaderMap) -> Result<Session, PageError> {
    let s = any_session(p, c, headers).await?;
    tidegate_policy::can_act_untrained(&s.principal, false)
        .map_err(|r| PageError(Error::from(r)))?;
    Ok(s)
}

/// The request's session, trained or not (home and signing out only).
async fn any_session(p: &AppState, c: Cookies, headers: &HeaderMap) -> Result<Session, PageError> {
    let Some(secret) = cookie(headers, c.session()) else {
        return Err(PageError(Error::Unauthenticated("sign in".into())));
    };
    let p = Arc::clone(p);
    blocking(move || p.session(&secret)).await
}

/// The session of a form post whose CSRF token is the session's; refused otherwise (a form
/// posted from another site never carries it).
async fn posted(
    p: &AppState,
    c: Cookies,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Session, PageError> {
    let s = session(p, c, headers).await?;
    if !same_secret(csrf, &s.csrf) {
        return Err(PageError(Error::Refused(
            "the form is not one this console gave (its CSRF token is missing or wrong): open the page again".into(),
        )));
    }
    Ok(s)
}

/// A whole page: the style sheet, the navigation for a signed-in principal, the body.
fn page(title: &str, s: Option<&Session>, body: &str) -> String {
    let nav = match s {
        Some(s) => format!(
            "<nav><a href=\"/console\">Home</a><a href=\"/console/reviews\">Review queue</a>\
             <a href=\"/console/modules\">Modules</a>\
             <a href=\"/console/scenarios\">Scenarios</a><a href=\"/console/exports\">Exports</a>\
             <a href=\"/console/jobs\">Jobs</a><a href=\"/console/datasets\">Datasets</a>\
             <a href=\"/console/directory\">Directory</a><a href=\"/console/prices\">Prices</a>\
             <a href=\"/console/alerts\">Alerts</a><a href=\"/console/audit\">Audit log</a>\
             <form method=\"post\" action=\"/console/sign-out\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out {}</button></form></nav>",
            escape(&s.csrf),
            escape(&s.principal.id),
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} - Tidegate</title><link rel=\"stylesheet\" href=\"/console/style.css\"></head>\
         <body>{nav}\n{body}</body></html>\n",
        escape(title)
    )
}

fn html(title: &str, s: &Session, body: &str) -> Response {
    axum::response::Html(page(title, Some(s), body)).into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn root() -> Response {
    Redirect::to("/console").into_response()
}

/// The sign-in form, with a token bound to a cookie; both name when the form stops being
/// good (a random value and its end, in Unix seconds).
async fn sign_in_form(Extension(c): Extension<Cookies>) -> Response {
    let nonce = format!(
        "{}.{}",
        tidegate_runtime::random_token(),
        tidegate_runtime::clock::now().unix_timestamp() + SIGN_IN_SECONDS
    );
    let body = format!(
        "<h1>Sign in to Tidegate</h1>\
         <form method=\"post\" action=\"/console/sign-in\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{nonce}\">\
         <p><label for=\"token\">Your token</label><br>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required size=\"70\"></p>\
         <p><button type=\"submit\">Sign in</button></p></form>\
         <p>The token is the one your admin gave you; the console keeps a session of 8 hours instead.</p>"
    );
    let mut response = axum::response::Html(page("Sign in", None, &body)).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        c.set(c.sign_in(), &nonce, SIGN_IN_SECONDS as u64),
    );
    response
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn sign_in(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    connected: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<SignIn>,
) -> PageResult {
    let bound = cookie(&headers, c.sign_in()).unwrap_or_default();
    let good_until = bound
        .rsplit_once('.')
        .and_then(|(_, t)| t.parse::<i64>().ok())
        .unwrap_or(0);
    if bound.is_empty()
        || !same_secret(&bound, &f.csrf)
        || good_until < tidegate_runtime::clock::now().unix_timestamp()
    {
        return Err(PageError(Error::Refused(
            "the sign-in form is not one this console gave, or it is too old: open it again".into(),
        )));
    }
    // A session the browser already had ends: one browser, one session.
    if let Some(old) = cookie(&headers, c.session()) {
        let p = Arc::clone(&p);
        blocking(move || p.sign_out(&old)).await?;
    }
    let address = connected.map(|Extension(c)| c.0.ip().to_string());
    let signer = Arc::clone(&p);
    let (secret, _) = match blocking(move || signer.sign_in(f.token.trim())).await {
        Ok(s) => s,
        Err(PageError(Error::Unauthenticated(_))) => {
            // S15: a refused sign-in is in the log, with where it came from.
            blocking(move || p.note_refused_sign_in(address.as_deref())).await?;
            return Ok((
                StatusCode::UNAUTHORIZED,
                axum::response::Html(page(
                    "Sign in",
                    None,
                    "<p class=\"error\">That token is unknown or revoked.</p><p><a href=\"/console/sign-in\">Try again</a></p>",
                )),
            )
                .into_response());
        }
        Err(e) => return Err(e),
    };
    let mut response = Redirect::to("/console").into_response();
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        c.set(
            c.session(),
            &secret,
            tidegate_runtime::SESSION_SECONDS as u64,
        ),
    );
    h.append(header::SET_COOKIE, c.set(c.sign_in(), "", 0));
    Ok(response)
}

#[derive(Deserialize)]
struct Csrf {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<Csrf>,
) -> PageResult {
    // Signing out needs no current training.
    let s = any_session(&p, c, &headers).await?;
    if !same_secret(&f.csrf, &s.csrf) {
        return Err(PageError(Error::Refused(
            "the form is not one this console gave (its CSRF token is missing or wrong): open the page again".into(),
        )));
    }
    let secret = cookie(&headers, c.session()).unwrap_or_default();
    blocking(move || p.sign_out(&secret)).await?;
    let mut response = Redirect::to("/console/sign-in").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, c.set(c.session(), "", 0));
    Ok(response)
}

async fn home(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = any_session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let training = {
        let p = Arc::clone(&p);
        blocking(move || p.training_state(&actor)).await?
    };
    let training_html = format!(
        "<p>Your training: {} (passed {}, valid until {}){}</p>",
        escape(training.course.as_deref().unwrap_or("none recorded")),
        escape(training.trained_at.as_deref().unwrap_or("-")),
        escape(training.valid_until.as_deref().unwrap_or("no end")),
        if training.current {
            ""
        } else {
            ". <strong class=\"error\">It does not hold today: you can do nothing else here until an admin records a passed training.</strong>"
        }
    );
    if !training.current {
        return Ok(html(
            "Home",
            &s,
            &format!("<h1>Tidegate console</h1>{training_html}"),
        ));
    }
    let roles: Vec<String> = s
        .principal
        .roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect();
    let body = format!(
        "<h1>Tidegate console</h1><p>Signed in as <strong>{}</strong> of org {} ({}). The session ends at {} (Unix time) or when you sign out.</p>\
         <ul><li><a href=\"/console/reviews\">Exports waiting for your review</a></li>\
         <li><a href=\"/console/scenarios\">Scenarios</a> (those waiting for your approval first)</li>\
         <li><a href=\"/console/exports\">Exports you may see</a></li>\
         <li><a href=\"/console/jobs\">Jobs you may see</a></li>\
         <li><a href=\"/console/modules\">Modules</a> (those waiting for your review first)</li>\
         <li><a href=\"/console/datasets\">Datasets</a> and <a href=\"/console/directory\">the directory</a></li>\
         <li><a href=\"/console/alerts\">Alerts</a> and <a href=\"/console/audit\">the audit log</a> (the authority's admins and auditors)</li></ul>{training_html}",
        escape(&s.principal.id),
        escape(&s.principal.org),
        escape(&roles.join(", ")),
        s.expires_at
    );
    Ok(html("Home", &s, &body))
}

/// A table of list items (JSON), with the first column a link.
fn table(items: &[Value], columns: &[&str], link: &dyn Fn(&Value) -> String) -> String {
    if items.is_empty() {
        return "<p>Nothing here.</p>".into();
    }
    let mut out = String::from("<table><tr>");
    for c in columns {
        out.push_str(&format!("<th>{}</th>", escape(c)));
    }
    out.push_str("</tr>\n");
    for item in items {
        out.push_str("<tr>");
        for (i, c) in columns.iter().enumerate() {
            let v = text(&item[*c]);
            if i == 0 {
                out.push_str(&format!(
                    "<td><a href=\"{}\">{v}</a></td>",
                    escape(&link(item))
                ));
            } else {
                out.push_str(&format!("<td>{v}</td>"));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>");
    out
}

fn values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).expect("a view serializes"))
        .collect()
}

fn export_link(e: &Value) -> String {
    format!("/console/exports/{}", e["id"].as_str().unwrap_or_default())
}

async fn reviews(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let q = ListQuery {
        queue: true,
        limit: Some(100),
        ..ListQuery::default()
    };
    let listing = blocking(move || p.list_exports(&actor, &q)).await?;
    let body = format!(
        "<h1>Exports waiting for your review</h1><p>Oldest first.</p>{}",
        table(
            &values(&listing.items),
            &[
                "id",
                "state",
                "scenario",
                "org",
                "requested_by",
                "requested_at",
                "approvals",
                "required_approvals",
                "public_figures"
            ],
            &export_link
        )
    );
    Ok(html("Review queue", &s, &body))
}

async fn exports(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let q = ListQuery {
        limit: Some(100),
        ..ListQuery::default()
    };
    let listing = blocking(move || p.list_exports(&actor, &q)).await?;
    let body = format!(
        "<h1>Exports</h1><p>Newest first.</p>{}",
        table(
            &values(&listing.items),
            &[
                "id",
                "state",
                "scenario",
                "requested_by",
                "requested_at",
                "approvals",
                "required_approvals"
            ],
            &export_link
        )
    );
    Ok(html("Exports", &s, &body))
}

async fn jobs(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let q = ListQuery {
        limit: Some(100),
        ..ListQuery::default()
    };
    let listing = blocking(move || p.list_jobs(&actor, &q)).await?;
    let body = format!(
        "<h1>Jobs</h1><p>Newest first.</p>{}",
        table(
            &values(&listing.items),
            &[
                "id",
                "state",
                "scenario",
                "submitted_by",
                "created_at",
                "finished_at"
            ],
            &|v| format!("/console/jobs/{}", v["id"].as_str().unwrap_or_default())
        )
    );
    Ok(html("Jobs", &s, &body))
}

/// The review page: the export with every check, and the decision form.
async fn export_page(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let export = blocking(move || {
        let v = p.get_export(&actor, &id)?;
        p.record_read(&actor, AuditAction::ExportRead, &id)?;
        Ok(v)
    })
    .await?;
    let decide = if export.state == tidegate_policy::ExportState::InReview {
        format!(
            "<h2>Decision</h2><form method=\"post\" action=\"/console/exports/{id}/review\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p><label for=\"comment\">Comment (required: say what you checked)</label><br>\
             <textarea id=\"comment\" name=\"comment\" rows=\"4\" required></textarea></p>{publish}\
             <p><button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"return\">Return to the scientist</button>\
             <button type=\"submit\" name=\"decision\" value=\"reject\">Reject</button></p></form>",
            id = escape(&export.id),
            csrf = escape(&s.csrf),
            publish = if export.public_figures {
                "<p><input type=\"checkbox\" id=\"publish\" name=\"publish\" value=\"yes\"> \
                 <label for=\"publish\">I approve these rows for the public record (needed to \
                 approve: the scenario publishes its figures)</label></p>"
            } else {
                ""
            },
        )
    } else {
        String::new()
    };
    // The signed bundle's files, for the requesting org once the export is approved.
    let files = if matches!(export.state.as_str(), "approved" | "released") {
        format!(
            "<h2>Signed bundle</h2><ul>{}</ul><p>Verify it offline with <code>tidegate verify DIR --key PUBKEY</code> and the platform's public key.</p>",
            BUNDLE_FILES
                .iter()
                .map(|f| format!(
                    "<li><a href=\"/console/exports/{}/files/{f}\">{f}</a></li>",
                    escape(&export.id)
                ))
                .collect::<String>()
        )
    } else {
        String::new()
    };
    let body = format!("{}{decide}{files}", export_sections(&export));
    Ok(html(&format!("Export {}", export.id), &s, &body))
}

#[derive(Deserialize)]
struct Decision {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    comment: String,
    /// `yes` when the reviewer ticked the box approving the rows for the public record.
    #[serde(default)]
    publish: String,
}

async fn review(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<Decision>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    if f.comment.trim().is_empty() {
        return Err(PageError(Error::BadInput(
            "a decision needs a comment: say what you checked".into(),
        )));
    }
    let publish = f.publish == "yes";
    let v = blocking(move || p.review_export(&s.principal, &id, &f.decision, &f.comment, publish))
        .await?;
    Ok(Redirect::to(&format!("/console/exports/{}", v.id)).into_response())
}

async fn scenarios(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let (queue, all) = queue_and_all(p, &s, Platform::list_scenarios).await?;
    let link = |v: &Value| {
        format!(
            "/console/scenarios/{}",
            v["id"].as_str().unwrap_or_default()
        )
    };
    let columns = ["id", "name", "org", "state", "key_area", "term_end"];
    let body = format!(
        "<h1>Scenarios waiting for your approval</h1>{}<h1>Scenarios you may see</h1>{}",
        table(&values(&queue.items), &columns, &link),
        table(&values(&all.items), &columns, &link)
    );
    Ok(html("Scenarios", &s, &body))
}

async fn scenario_page(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let v = blocking(move || p.get_scenario(&actor, &id)).await?;
    let view = serde_json::to_value(&v).expect("a view serializes");
    let grants: String = v
        .grants
        .iter()
        .map(|g| {
            let g = serde_json::to_value(g).expect("a grant serializes");
            format!("<li>{}: {}</li>", text(&g["dataset"]), text(&g["columns"]))
        })
        .collect();
    let approvals: String = v
        .approvals
        .iter()
        .map(|a| {
            let a = serde_json::to_value(a).expect("an approval serializes");
            format!(
                "<li>{} by {} at {}</li>",
                text(&a["as_role"]),
                text(&a["by"]),
                text(&a["at"])
            )
        })
        .collect();
    let approve = if v.missing_approvals.is_empty() {
        String::new()
    } else {
        format!(
            "<form method=\"post\" action=\"/console/scenarios/{id}/approve\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Approve this scenario</button></form>",
            id = escape(&v.id),
            csrf = escape(&s.csrf)
        )
    };
    let body = format!(
        "<h1>Scenario {name}: {state}</h1><p>Org {org}; key area {area}; term {start} to {end}; k = {k}.</p>\
         <h2>Purpose</h2><p>{purpose}</p><h2>Grants</h2><ul>{grants}</ul>\
         <h2>Export rules</h2><pre>{rules}</pre>\
         <h2>Approvals</h2><ul>{approvals}</ul><p>Still missing: {missing}</p>{approve}",
        name = text(&view["name"]),
        state = text(&view["state"]),
        org = text(&view["org"]),
        area = text(&view["key_area"]),
        start = text(&view["term_start"]),
        end = text(&view["term_end"]),
        k = text(&view["k"]),
        purpose = text(&view["purpose"]),
        rules = escape(&serde_json::to_string_pretty(&view["export_rules"]).unwrap_or_default()),
        missing = escape(&v.missing_approvals.join(", ")),
    );
    Ok(html(&format!("Scenario {}", v.name), &s, &body))
}

async fn approve_scenario(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<Csrf>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    let v = blocking(move || p.approve_scenario(&s.principal, &id)).await?;
    Ok(Redirect::to(&format!("/console/scenarios/{}", v.id)).into_response())
}

/// A view as a table of its fields: text as text, lists and objects as indented JSON. Every
/// value escaped.
fn details(v: &Value) -> String {
    let mut out = String::from("<table>");
    for (k, field) in v.as_object().into_iter().flatten() {
        let shown = match field {
            Value::Array(_) | Value::Object(_) => format!(
                "<pre>{}</pre>",
                escape(&serde_json::to_string_pretty(field).unwrap_or_default())
            ),
            other => text(other),
        };
        out.push_str(&format!(
            "<tr><th>{}</th><td>{shown}</td></tr>\n",
            escape(k)
        ));
    }
    out.push_str("</table>");
    out
}

async fn modules(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let (queue, all) = queue_and_all(p, &s, Platform::list_modules).await?;
    let link = |v: &Value| {
        format!(
            "/console/modules/{}/{}",
            v["scenario"].as_str().unwrap_or_default(),
            v["hash"].as_str().unwrap_or_default()
        )
    };
    let columns = [
        "hash",
        "scenario",
        "org",
        "uploaded_by",
        "functions",
        "approved_by",
        "uploaded_at",
    ];
    let body = format!(
        "<h1>Modules waiting for your review</h1>{}<h1>Modules you may see</h1>{}",
        table(&values(&queue.items), &columns, &link),
        table(&values(&all.items), &columns, &link)
    );
    Ok(html("Modules", &s, &body))
}

/// A module as its reviewer reads it, with the approve and revoke forms.
async fn module_page(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path((scenario, hash)): Path<(String, String)>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let (m, source) = blocking(move || {
        let m = p.get_module(&actor, &scenario, &hash)?;
        p.record_read(&actor, AuditAction::ModuleRead, &hash)?;
        Ok((m, p.module_source_view(&actor, &scenario, &hash)?))
    })
    .await?;
    let v = serde_json::to_value(&m).expect("a view serializes");
    let source_html = source_section(&m, source.as_ref());
    let action = |what: &str| {
        format!(
            "/console/modules/{}/{}/{what}",
            escape(&m.scenario),
            escape(&m.hash)
        )
    };
    let forms = match m.state.as_str() {
        "awaiting" => format!(
            "<h2>Decision</h2><form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p><label for=\"note\">What you checked (required)</label><br>\
             <textarea id=\"note\" name=\"note\" rows=\"3\" required></textarea></p>\
             <p><button type=\"submit\">Approve this module</button></p></form>",
            action("approve"),
            csrf = escape(&s.csrf)
        ),
        "approved" => format!(
            "<h2>Revoke the approval</h2><p>Its jobs stop; exports computed with it are flagged and never approved.</p>\
             <form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p><label for=\"reason\">Why (required)</label><br>\
             <textarea id=\"reason\" name=\"reason\" rows=\"3\" required></textarea></p>\
             <p><button type=\"submit\">Revoke</button></p></form>",
            action("revoke"),
            csrf = escape(&s.csrf)
        ),
        _ => String::new(),
    };
    let body = format!(
        "<h1>Module {}: {}</h1><p class=\"source-review\"><strong>Source: {}</strong></p>{}{source_html}{forms}",
        escape(&m.hash),
        escape(&m.state),
        escape(&m.source_review),
        details(&v)
    );
    Ok(html("Module", &s, &body))
}

/// The module's source on its review page: what the rebuild said, what the module says it was
/// built with, and every file's text (escaped; a file that is not text is named only).
fn source_section(
    m: &tidegate_runtime::ModuleDetail,
    source: Option<&tidegate_runtime::source::SourceView>,
) -> String {
    let mut out = String::from("<h2>Source</h2>");
    let with = &m.built_with;
    out.push_str(&format!(
        "<p>Built with (as the module says): {}; SDK: {}.</p>",
        escape(with.toolchain.as_deref().unwrap_or("not recorded")),
        escape(with.sdk.as_deref().unwrap_or("not recorded"))
    ));
    let Some(source) = source else {
        out.push_str(
            "<p>This module was uploaded without its source: it cannot be rebuilt, only read as WebAssembly. It may still be approved.</p>",
        );
        return out;
    };
    match &m.source_check {
        Some(c) => out.push_str(&format!(
            "<p>Rebuilt by {} at {} with {}: {} (rebuilt {}).</p>",
            escape(&c.by),
            escape(&c.at),
            escape(&c.toolchain),
            if c.matches { "bytes match" } else { "bytes differ" },
            escape(&c.rebuilt_sha256)
        )),
        None => out.push_str(
            "<p>Not rebuilt yet: <code>tidegate module verify-source --hash HASH --scenario ID</code> rebuilds it and records the verdict here.</p>",
        ),
    }
    out.push_str(&format!(
        "<p>Archive {} ({} bytes), recipe: {}.</p>",
        escape(&source.sha256),
        source.bytes,
        escape(&serde_json::to_string(&source.recipe).expect("a recipe serializes"))
    ));
    for f in &source.files {
        match &f.text {
            Some(text) => out.push_str(&format!(
                "<details><summary>{} ({} bytes)</summary><pre>{}</pre></details>",
                escape(&f.path),
                f.bytes,
                escape(text)
            )),
            None => out.push_str(&format!(
                "<p>{} ({} bytes, not text)</p>",
                escape(&f.path),
                f.bytes
            )),
        }
    }
    out
}

#[derive(Deserialize)]
struct ModuleDecision {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    reason: String,
}

async fn approve_module(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path((scenario, hash)): Path<(String, String)>,
    axum::Form(f): axum::Form<ModuleDecision>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    let v = blocking(move || p.approve_module(&s.principal, &scenario, &hash, &f.note)).await?;
    Ok(Redirect::to(&format!("/console/modules/{}/{}", v.scenario, v.hash)).into_response())
}

async fn revoke_module(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path((scenario, hash)): Path<(String, String)>,
    axum::Form(f): axum::Form<ModuleDecision>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    let v = blocking(move || p.revoke_module(&s.principal, &scenario, &hash, &f.reason)).await?;
    Ok(Redirect::to(&format!("/console/modules/{}/{}", v.scenario, v.hash)).into_response())
}

async fn job_page(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let j = blocking(move || {
        let v = p.get_job(&actor, &id)?;
        p.record_read(&actor, AuditAction::JobRead, &id)?;
        Ok(v)
    })
    .await?;
    let v = serde_json::to_value(&j).expect("a view serializes");
    let body = format!(
        "<h1>Job {}: {}</h1>{}",
        escape(&j.id),
        escape(j.state.as_str()),
        details(&v)
    );
    Ok(html("Job", &s, &body))
}

async fn datasets(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let list = blocking(move || p.list_datasets(&actor)).await?;
    let mut body = String::from("<h1>Datasets</h1>");
    if s.principal.has_role(tidegate_policy::Role::Provider) {
        let year = tidegate_runtime::clock::now().year();
        body.push_str(&format!(
            "<p><a href=\"/console/orgs/{}/contribution?year={year}\">Your data's contribution in {year}</a>: its use, its quality and the fees it earned</p>",
            escape(&s.principal.org)
        ));
    }
    if list.is_empty() {
        body.push_str("<p>Nothing here.</p>");
    }
    for d in &list {
        let v = serde_json::to_value(d).expect("a view serializes");
        body.push_str(&format!(
            "<h2>{}</h2>{}<p><a href=\"/console/datasets/{}/versions/{}/sample\">Inspect a sample of version {}</a> (its provider and the authority's admins; audited)</p>",
            text(&v["name"]),
            details(&v),
            escape(&d.id),
            d.version,
            d.version
        ));
    }
    Ok(html("Datasets", &s, &body))
}

#[derive(Deserialize)]
struct SampleQuery {
    rows: Option<u64>,
}

/// A sample of a dataset version for quality inspection, seen here and never exported
/// (its provider and the authority's admins; each drawing is audited).
async fn dataset_sample(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path((dataset, version)): Path<(String, i64)>,
    axum::extract::Query(q): axum::extract::Query<SampleQuery>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let rows = q.rows.unwrap_or(20);
    let sample =
        blocking(move || p.sample_dataset_version(&actor, &dataset, version, rows)).await?;
    let mut body = format!(
        "<h1>Sample of {} version {}</h1><p>{} random rows, for inspection inside the domain: this page is not an export, and the drawing is in the audit log.</p><table><tr>",
        escape(&sample.dataset),
        sample.version,
        sample.rows.len()
    );
    for c in &sample.columns {
        body.push_str(&format!("<th>{}</th>", escape(c)));
    }
    body.push_str("</tr>\n");
    for row in &sample.rows {
        body.push_str("<tr>");
        for cell in row {
            body.push_str(&format!("<td>{}</td>", escape(cell)));
        }
        body.push_str("</tr>\n");
    }
    body.push_str("</table>");
    Ok(html("Sample", &s, &body))
}

/// The directory (the authority's admins and auditors): orgs, with freeze and reports, and
/// principals, with their training.
async fn directory(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let (actor, p2) = (s.principal.clone(), Arc::clone(&p));
    let page = ListQuery {
        limit: Some(200),
        ..ListQuery::default()
    };
    let q = page.clone();
    let orgs = blocking(move || p2.list_orgs(&actor, &q)).await?;
    let actor = s.principal.clone();
    let principals = blocking(move || p.list_principals(&actor, &page)).await?;
    let csrf = escape(&s.csrf);
    let now = tidegate_runtime::clock::now();
    let year = now.year();
    let period = format!("{year}-{:02}", u8::from(now.month()));
    let mut body = String::from(
        "<h1>Orgs</h1><table><tr><th>org</th><th>name</th><th>kind</th><th>reports</th><th>freeze</th></tr>\n",
    );
    for o in &orgs.items {
        let id = escape(&o.id);
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{}</td><td>{}</td>\
             <td><a href=\"/console/orgs/{id}/annual?year={year}\">annual report {year}</a>, \
             <a href=\"/console/orgs/{id}/statement?period={period}\">statement {period}</a>, \
             <a href=\"/console/orgs/{id}/contribution?year={year}\">data contribution {year}</a></td>\
             <td><form method=\"post\" action=\"/console/orgs/{id}/freeze\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" name=\"freeze\" value=\"true\">Freeze</button>\
             <button type=\"submit\" name=\"freeze\" value=\"false\">Unfreeze</button></form></td></tr>\n",
            escape(&o.name),
            escape(&o.kind),
        ));
    }
    body.push_str(
        "</table><h1>Principals</h1><table><tr><th>principal</th><th>name</th><th>org</th><th>roles</th><th>trained</th><th>record training</th></tr>\n",
    );
    for pr in &principals.items {
        let v = serde_json::to_value(pr).expect("a view serializes");
        let id = escape(&pr.id);
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><form method=\"post\" action=\"/console/principals/{id}/training\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input name=\"course\" required placeholder=\"course\" aria-label=\"course\">\
             <button type=\"submit\">Record</button></form></td></tr>\n",
            escape(&pr.name),
            escape(&pr.org),
            text(&v["roles"]),
            if pr.trained { "yes" } else { "no" },
        ));
    }
    body.push_str("</table>");
    Ok(html("Directory", &s, &body))
}

#[derive(Deserialize)]
struct Freeze {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    freeze: bool,
}

async fn freeze_org(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<Freeze>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    let who = s.principal.clone();
    let changed = blocking(move || p.freeze_org(&who, &id, f.freeze)).await?;
    let body = format!(
        "<p class=\"notice\">The org is {}; {} scenario(s) changed.</p><p><a href=\"/console/directory\">Back to the directory</a></p>",
        if f.freeze { "frozen" } else { "unfrozen" },
        changed.len()
    );
    Ok(html("Freeze", &s, &body))
}

#[derive(Deserialize)]
struct Training {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    course: String,
}

async fn record_training(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<Training>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    let who = s.principal.clone();
    blocking(move || p.record_training(&who, &id, &f.course)).await?;
    Ok(Redirect::to("/console/directory").into_response())
}

/// R-MONITOR: the alerts, open first; an admin acknowledges one with a note.
async fn alerts(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let alerts = blocking(move || p.alerts(&actor, false)).await?;
    let mut body = String::from("<h1>Alerts</h1>");
    if alerts.is_empty() {
        body.push_str("<p>No alert has been raised.</p>");
    }
    for open in [true, false] {
        let these: Vec<_> = alerts
            .iter()
            .filter(|a| a.acknowledged_at.is_none() == open)
            .collect();
        if these.is_empty() {
            continue;
        }
        body.push_str(if open {
            "<h2>Open</h2>"
        } else {
            "<h2>Acknowledged</h2>"
        });
        for a in these {
            body.push_str(&format!(
                "<section><h3>{} <small>{}</small></h3><p>Org {}, scenario {}, raised {}</p><pre>{}</pre>",
                escape(a.kind.as_str()),
                escape(&a.id),
                escape(a.org.as_deref().unwrap_or("-")),
                escape(a.scenario.as_deref().unwrap_or("-")),
                escape(&a.raised_at),
                escape(&serde_json::to_string_pretty(&a.evidence).unwrap_or_default()),
            ));
            match &a.acknowledged_at {
                Some(at) => body.push_str(&format!(
                    "<p>Acknowledged by {} at {}: {}</p>",
                    escape(a.acknowledged_by.as_deref().unwrap_or("-")),
                    escape(at),
                    escape(a.note.as_deref().unwrap_or(""))
                )),
                None => body.push_str(&format!(
                    "<form method=\"post\" action=\"/console/alerts/{}/acknowledge\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <label>What was done <input name=\"note\" required size=\"50\"></label> \
                     <button type=\"submit\">Acknowledge</button></form>",
                    escape(&a.id),
                    escape(&s.csrf)
                )),
            }
            body.push_str("</section>");
        }
    }
    Ok(html("Alerts", &s, &body))
}

#[derive(Deserialize)]
struct Acknowledgement {
    csrf: String,
    note: String,
}

async fn acknowledge_alert(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<Acknowledgement>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    let who = s.principal.clone();
    blocking(move || p.acknowledge_alert(&who, &id, &f.note)).await?;
    Ok(Redirect::to("/console/alerts").into_response())
}

/// S15: the audit log searched by org, principal, action and time (the authority's auditors
/// and admins).
async fn audit_search(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<tidegate_runtime::AuditQuery>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let field = |name: &str, value: &Option<String>| {
        format!(
            "<label>{name} <input name=\"{name}\" value=\"{}\"></label> ",
            escape(value.as_deref().unwrap_or(""))
        )
    };
    let form = format!(
        "<form method=\"get\" action=\"/console/audit\">{}{}{}{}{}<button type=\"submit\">Search</button></form>",
        field("org", &q.org),
        field("principal", &q.principal),
        field("action", &q.action),
        field("from", &q.from),
        field("to", &q.to),
    );
    let found = blocking(move || p.search_audit(&actor, &q)).await?;
    let mut rows = String::from(
        "<table><tr><th>#</th><th>at</th><th>actor</th><th>action</th><th>object</th><th>detail</th></tr>",
    );
    for e in &found.entries {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            e.seq,
            escape(&e.at),
            escape(&e.actor),
            escape(&e.action),
            escape(&e.object),
            escape(&e.detail.to_string())
        ));
    }
    rows.push_str("</table>");
    let body = format!(
        "<h1>Audit log</h1>{form}<p>{} entries matched; the newest {} shown.</p>{rows}",
        found.matched,
        found.entries.len()
    );
    Ok(html("Audit log", &s, &body))
}

#[derive(Deserialize)]
struct YearQuery {
    year: i32,
}

async fn annual(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(org): Path<String>,
    axum::extract::Query(q): axum::extract::Query<YearQuery>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let report = blocking(move || {
        crate::api::read_report(&p, &actor, &format!("annual:{org}:{}", q.year), || {
            p.annual_report(&actor, &org, q.year)
        })
    })
    .await?;
    let body = format!(
        "<h1>Annual report {}</h1>{}",
        report.year,
        details(&serde_json::to_value(&report).map_err(tidegate_runtime::Error::from)?)
    );
    Ok(html("Annual report", &s, &body))
}

#[derive(Deserialize)]
struct PeriodQuery {
    period: String,
}

async fn statement(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(org): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PeriodQuery>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let st = blocking(move || {
        crate::api::read_report(&p, &actor, &format!("statement:{org}:{}", q.period), || {
            p.statement(&actor, &org, &q.period, None)
        })
    })
    .await?;
    let st = serde_json::to_value(&st).expect("a statement serializes");
    let body = format!("<h1>Statement</h1>{}", details(&st));
    Ok(html("Statement", &s, &body))
}

/// S18: a provider's contribution report for a year.
async fn contribution(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path(org): Path<String>,
    axum::extract::Query(q): axum::extract::Query<YearQuery>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let actor = s.principal.clone();
    let report = blocking(move || {
        crate::api::read_report(
            &p,
            &actor,
            &format!("contribution:{org}:{}", q.year),
            || p.contribution_report(&actor, &org, q.year),
        )
    })
    .await?;
    let report = serde_json::to_value(report).expect("serializes");
    let body = format!(
        "<h1>Data contribution {}</h1>{}",
        crate::report::text(&report["year"]),
        details(&report)
    );
    Ok(html("Contribution", &s, &body))
}

/// The price list (admins set it): one form per item.
async fn prices(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    let mut body = String::from(
        "<h1>Prices</h1><p>In fen per unit; a new price applies from now.</p><table><tr><th>item</th><th>unit</th><th>default</th><th>set</th></tr>\n",
    );
    for (item, _, unit, default) in tidegate_runtime::PRICE_ITEMS {
        body.push_str(&format!(
            "<tr><td>{item}</td><td>{}</td><td>{default}</td><td><form method=\"post\" action=\"/console/prices\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"category\" value=\"{item}\">\
             <input name=\"fen_per_unit\" type=\"number\" min=\"0\" required aria-label=\"fen per unit\">\
             <button type=\"submit\">Set</button></form></td></tr>\n",
            escape(unit),
            escape(&s.csrf)
        ));
    }
    body.push_str("</table>");
    Ok(html("Prices", &s, &body))
}

#[derive(Deserialize)]
struct Price {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    fen_per_unit: i64,
}

async fn set_price(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<Price>,
) -> PageResult {
    let s = posted(&p, c, &headers, &f.csrf).await?;
    blocking(move || p.set_price(&s.principal, &f.category, f.fen_per_unit)).await?;
    Ok(Redirect::to("/console/prices").into_response())
}

/// The files of a signed bundle.
const BUNDLE_FILES: [&str; 4] = [
    "result.csv",
    "result.parquet",
    "manifest.json",
    "manifest.sig",
];

/// One file of an approved export's signed bundle, downloaded by its org (the download is the
/// release, audited by the platform as through the API).
async fn bundle_file(
    State(p): State<AppState>,
    Extension(c): Extension<Cookies>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> PageResult {
    let s = session(&p, c, &headers).await?;
    // Only the bundle's own files (asking for another releases nothing).
    if !BUNDLE_FILES.contains(&name.as_str()) {
        return Err(PageError(Error::NotFound(
            "no such file in the bundle".into(),
        )));
    }
    let files = blocking(move || p.download_bundle(&s.principal, &id)).await?;
    let Some((name, bytes)) = files.into_iter().find(|(n, _)| *n == name) else {
        return Err(PageError(Error::NotFound(
            "no such file in the bundle".into(),
        )));
    };
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(['"', '\\'], "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// The console's routes, to merge into the API's router.
pub(crate) fn routes(cookies: Cookies) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(root))
        .route("/console", get(home))
        .route("/console/style.css", get(style))
        .route("/console/sign-in", get(sign_in_form).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/reviews", get(reviews))
        .route("/console/exports", get(exports))
        .route("/console/exports/{id}", get(export_page))
        .route("/console/exports/{id}/review", post(review))
        .route("/console/jobs", get(jobs))
        .route("/console/scenarios", get(scenarios))
        .route("/console/scenarios/{id}", get(scenario_page))
        .route("/console/scenarios/{id}/approve", post(approve_scenario))
        .route("/console/modules", get(modules))
        .route("/console/modules/{scenario}/{hash}", get(module_page))
        .route(
            "/console/modules/{scenario}/{hash}/approve",
            post(approve_module),
        )
        .route(
            "/console/modules/{scenario}/{hash}/revoke",
            post(revoke_module),
        )
        .route("/console/jobs/{id}", get(job_page))
        .route("/console/datasets", get(datasets))
        .route(
            "/console/datasets/{dataset}/versions/{version}/sample",
            get(dataset_sample),
        )
        .route("/console/directory", get(directory))
        .route("/console/orgs/{id}/freeze", post(freeze_org))
        .route("/console/orgs/{id}/annual", get(annual))
        .route("/console/orgs/{id}/statement", get(statement))
        .route("/console/orgs/{id}/contribution", get(contribution))
        .route("/console/principals/{id}/training", post(record_training))
        .route("/console/prices", get(prices).post(set_price))
        .route("/console/alerts", get(alerts))
        .route("/console/alerts/{id}/acknowledge", post(acknowledge_alert))
        .route("/console/audit", get(audit_search))
        .route("/console/exports/{id}/files/{name}", get(bundle_file))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT as usize))
        .layer(Extension(cookies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_over_tls_are_secure_and_host_only() {
        let c = Cookies { secure: true };
        let set = c.set(c.session(), "tg_abc", 60);
        let set = set.to_str().unwrap();
        assert!(
            set.starts_with("__Host-tg_session=tg_abc; Path=/;"),
            "{set}"
        );
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
            assert!(set.contains(attribute), "{set}");
        }
        let plain = Cookies::default().set("tg_session", "x", 1);
        assert!(!plain.to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("tg_abc", "tg_abc"));
        assert!(!same_secret("tg_abc", "tg_abd"));
        assert!(!same_secret("tg_abc", "tg_ab"));
        assert!(!same_secret("", "x"));
    }
}
