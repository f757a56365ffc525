//! A blocking client of the HTTP API, used by the CLI, the demo and the tests. Request bodies
//! are the API's own types (`crate::wire`, `tidegate_runtime`); answers come back as JSON to
//! print as the server gave them, and are decoded into those types where the client reads them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tidegate_runtime::{JobRequest, JobView};

use crate::wire::{
    ApiErrorBody, AuthorizationBody, BudgetRequest, BundleAnswer, ExitBody, ExportBody, FreezeBody,
    ModuleBody, NoteBody, OrgBody, PolicyBody, PriceBody, PrincipalRequest, PruneBody, ReasonBody,
    RepinBody, ReviewBody, SourceCheckBody, StateBody, TrainingBody,
};

/// One principal's connection to a server.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// The HTTP status and JSON body of an answer, for callers that inspect refusals.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The body of a 2xx answer; otherwise an error with the server's message and status.
    pub fn into_result(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            let message = ApiErrorBody::deserialize(&self.body)
                .map(|e| e.message)
                .unwrap_or_else(|_| "the server gave no message".into());
            Err(anyhow!("{message} ({})", self.status))
        }
    }
}

/// An answer read as the API type it is documented as.
pub(crate) fn decode<T: DeserializeOwned>(answer: &Value, what: &str) -> Result<T> {
    T::deserialize(answer).with_context(|| format!("the server's answer is not {what}"))
}

impl Client {
    pub fn new(url: &str, token: Option<&str>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(900)))
            .build()
            .into();
        Client {
            url: url.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            agent,
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same server, as another principal.
    pub fn as_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// A GET of `url` with the bearer token.
    fn get_request(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let req = self.agent.get(url);
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// Sends a request and returns the answer whatever its status.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let url = format!("{}{path}", self.url);
        let response = match (method, body) {
            ("GET", _) => self.get_request(&url).call(),
            (_, body) => {
                let mut req = self.agent.post(&url);
                if let Some(t) = &self.token {
                    req = req.header("Authorization", format!("Bearer {t}"));
                }
                req.send_json(body.cloned().unwrap_or(json!({})))
            }
        };
        let mut response = response.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let body: Value = response
            .body_mut()
            .with_config()
            .limit(2 << 30)
            .read_json()
            .unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// Sends a request and turns a non-2xx answer into an error with the server's message.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call(method, path, body)?.into_result()
    }

    /// POSTs a request body of the API's types. It goes as a JSON value, keys sorted, as every
    /// body of this client always has: the bytes on the wire do not depend on the type's field
    /// order.
    fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value> {
        let body = serde_json::to_value(body).context("a request body is JSON")?;
        self.ok("POST", path, Some(&body))
    }

    /// A GET answered with one of the API's types.
    fn get_as<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        decode(&self.ok("GET", path, None)?, what)
    }

    /// A POST answered with one of the API's types.
    fn post_as<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        what: &str,
    ) -> Result<T> {
        decode(&self.post(path, body)?, what)
    }

    /// A page of a list (`/v1/exports`, `/v1/jobs`, `/v1/modules`, `/v1/scenarios`,
    /// `/v1/orgs`, `/v1/principals`): `{items, next}`.
    pub fn list(&self, path: &str, q: &tidegate_runtime::ListQuery) -> Result<Value> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &q.state {
            pairs.push(("state", s.clone()));
        }
        if let Some(s) = &q.scenario {
            pairs.push(("scenario", s.clone()));
        }
        if q.queue {
            pairs.push(("queue", "true".into()));
        }
        if let Some(n) = q.limit {
            pairs.push(("limit", n.to_string()));
        }
        if let Some(a) = &q.after {
            pairs.push(("after", a.clone()));
        }
        let url = format!("{}{path}", self.url);
        let mut response = self
            .get_request(&url)
            .query_pairs(pairs)
            .call()
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        Answer { status, body }.into_result()
    }

    pub fn create_org(&self, name: &str, kind: &str) -> Result<Value> {
        self.post(
            "/v1/orgs",
            &OrgBody {
                name: name.into(),
                kind: kind.into(),
            },
        )
    }

    /// Freezes an org (every active scenario suspended, jobs cancelled) or lifts it (admin).
    pub fn freeze_org(&self, org: &str, freeze: bool) -> Result<Value> {
        self.post(&format!("/v1/orgs/{org}/freeze"), &FreezeBody { freeze })
    }

    /// Ends an org's authorization (admin); returns the signed exit certificate.
    pub fn exit_org(&self, org: &str, reason: &str) -> Result<tidegate_runtime::ExitCertificate> {
        self.post_as(
            &format!("/v1/orgs/{org}/exit"),
            &ExitBody {
                reason: reason.into(),
            },
            "an exit certificate",
        )
    }

    /// Gives a principal a new token and closes the old one at once: an admin for anyone
    /// (revocation), anyone for themselves (rotation). The answer holds the new token.
    pub fn rotate_token(&self, principal: &str) -> Result<Value> {
        // No body: `call` sends `{}`.
        self.ok("POST", &format!("/v1/principals/{principal}/token"), None)
    }

    /// Creates a principal (admin); the answer holds its token, shown once. The roles go by
    /// the names given, for the server to read (and to refuse an unknown one).
    pub fn create_principal(&self, name: &str, org: &str, roles: &[&str]) -> Result<Value> {
        self.post("/v1/principals", &PrincipalRequest { name, org, roles })
    }

    pub fn record_training(&self, principal: &str, course: &str) -> Result<Value> {
        self.record_training_until(principal, course, None)
    }

    /// Records a passed course, valid to its last day `until` (a year when none).
    pub fn record_training_until(
        &self,
        principal: &str,
        course: &str,
        until: Option<&str>,
    ) -> Result<Value> {
        self.post(
            &format!("/v1/principals/{principal}/training"),
            &TrainingBody {
                course: course.into(),
                valid_until: until.map(str::to_string),
            },
        )
    }

    /// Writes an org's annual evaluation (the authority's admins).
    pub fn evaluate_org(
        &self,
        evaluation: &tidegate_runtime::EvaluationRequest,
    ) -> Result<tidegate_runtime::SignedEvaluation> {
        self.post_as(
            "/v1/reports/annual/evaluation",
            evaluation,
            "a signed evaluation",
        )
    }

    /// Where a dataset is used (its provider, the authority).
    pub fn dataset_usage(&self, dataset: &str) -> Result<Value> {
        self.ok("GET", &format!("/v1/datasets/{dataset}/usage"), None)
    }

    /// Your own training state.
    pub fn me(&self) -> Result<Value> {
        self.ok("GET", "/v1/me", None)
    }

    /// The alerts (the authority's admins and auditors); with `open`, the unacknowledged ones.
    pub fn alerts(&self, open: bool) -> Result<Value> {
        self.ok("GET", &format!("/v1/alerts?open={open}"), None)
    }

    /// Acknowledges an alert with a note saying what was done (admin).
    pub fn acknowledge_alert(&self, id: &str, note: &str) -> Result<Value> {
        self.post(
            &format!("/v1/alerts/{id}/acknowledge"),
            &NoteBody { note: note.into() },
        )
    }

    /// Where alerts go and when they are raised.
    pub fn alert_settings(&self) -> Result<Value> {
        self.ok("GET", "/v1/alerts/settings", None)
    }

    /// Sets where alerts go and when they are raised (admin).
    pub fn set_alert_settings(&self, settings: &tidegate_runtime::AlertSettings) -> Result<Value> {
        self.post("/v1/alerts/settings", settings)
    }

    /// Searches the audit log (the authority's auditors and admins).
    pub fn search_audit(&self, q: &tidegate_runtime::AuditQuery) -> Result<Value> {
        let mut params = Vec::new();
        for (name, value) in [
            ("org", &q.org),
            ("principal", &q.principal),
            ("action", &q.action),
            ("from", &q.from),
            ("to", &q.to),
        ] {
            if let Some(v) = value {
                params.push(format!("{name}={}", urlencoded(v)));
            }
        }
        if let Some(n) = q.limit {
            params.push(format!("limit={n}"));
        }
        self.ok(
            "GET",
            &format!("/v1/audit/entries?{}", params.join("&")),
            None,
        )
    }

    /// Imports a dataset file (provider): see [`Client::upload_dataset`].
    pub fn import_dataset(&self, request: impl Serialize, data: &[u8]) -> Result<Value> {
        self.upload_dataset(&request, &mut std::io::Cursor::new(data))
    }

    /// Streams a dataset file to the server as the request's body (no base64, no whole file
    /// in memory on either side); the import's fields go in the query string. The request is
    /// a `tidegate_runtime::ImportRequest`, or any JSON of its shape: the fields present are
    /// sent as they are, for the server to read (a test sends malformed ones on purpose).
    pub fn upload_dataset<R: Serialize + ?Sized>(
        &self,
        request: &R,
        data: &mut dyn std::io::Read,
    ) -> Result<Value> {
        let request = serde_json::to_value(request).context("an import request is JSON")?;
        let url = format!("{}/v1/datasets/upload", self.url);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/octet-stream");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for key in ["name", "level", "format"] {
            if let Some(v) = request[key].as_str() {
                req = req.query(key, v);
            }
        }
        for key in ["columns", "approvers", "quality_rules"] {
            if !request[key].is_null() {
                req = req.query(key, request[key].to_string());
            }
        }
        let mut response = req
            .send(ureq::SendBody::from_reader(data))
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        Answer { status, body }.into_result()
    }

    /// The datasets the caller may see, with their versions and columns.
    pub fn list_datasets(&self) -> Result<Value> {
        self.ok("GET", "/v1/datasets", None)
    }

    /// Approves an operating unit's social data (admin).
    pub fn approve_dataset(&self, id: &str) -> Result<Value> {
        self.ok("POST", &format!("/v1/datasets/{id}/approve"), None)
    }

    /// Sets a dataset's differential privacy budget (its provider).
    pub fn set_dataset_budget(&self, id: &str, total: f64, per_org: f64) -> Result<Value> {
        self.post(
            &format!("/v1/datasets/{id}/budget"),
            &BudgetRequest { total, per_org },
        )
    }

    /// Applies for a scenario (scientist): a `tidegate_runtime::ScenarioRequest`, or any JSON
    /// of its shape.
    pub fn apply_scenario<R: Serialize + ?Sized>(&self, request: &R) -> Result<Value> {
        self.post("/v1/scenarios", request)
    }

    /// A scenario: its grants, term, rules, approvals and state.
    /// The signed receipt of a closed scenario.
    pub fn closing_receipt(&self, id: &str) -> Result<tidegate_runtime::ClosingReceipt> {
        self.get_as(&format!("/v1/scenarios/{id}/closing"), "a closing receipt")
    }

    /// Sets (or, with none, lifts) the last day of an org's authorization (admin).
    pub fn set_org_authorization(&self, org: &str, until: Option<&str>) -> Result<Value> {
        self.post(
            &format!("/v1/orgs/{org}/authorization"),
            &AuthorizationBody {
                until: until.map(str::to_string),
            },
        )
    }

    /// Runs the lifecycle sweep now (admin).
    pub fn sweep(&self) -> Result<Value> {
        self.ok("POST", "/v1/sweep", None)
    }

    pub fn get_scenario(&self, id: &str) -> Result<Value> {
        self.ok("GET", &format!("/v1/scenarios/{id}"), None)
    }

    pub fn approve_scenario(&self, id: &str) -> Result<Value> {
        self.ok("POST", &format!("/v1/scenarios/{id}/approve"), None)
    }

    /// The policy document (admin, auditor).
    pub fn export_policy(&self) -> Result<tidegate_runtime::PolicyDocument> {
        self.get_as("/v1/policy", "a policy document")
    }

    /// Applies a policy document as a new version (admin); with `dry_run`, only the difference.
    pub fn apply_policy(
        &self,
        document: &tidegate_runtime::PolicyDocument,
        dry_run: bool,
    ) -> Result<tidegate_runtime::PolicyApplied> {
        self.post_as(
            "/v1/policy",
            &PolicyBody {
                document: document.clone(),
                dry_run,
            },
            "what a policy document changes",
        )
    }

    /// An org's annual report, as JSON.
    /// S18: a provider's contribution report for a year.
    pub fn contribution_report(
        &self,
        org: &str,
        year: i32,
    ) -> Result<tidegate_runtime::ContributionReport> {
        self.get_as(
            &format!("/v1/reports/contribution?org={org}&year={year}"),
            "a contribution report",
        )
    }

    pub fn annual_report(&self, org: &str, year: i32) -> Result<tidegate_runtime::AnnualReport> {
        self.get_as(
            &format!("/v1/reports/annual?org={org}&year={year}"),
            "an annual report",
        )
    }

    /// An org's statement for a month (`YYYY-MM`).
    pub fn statement(&self, org: &str, period: &str) -> Result<Value> {
        self.ok(
            "GET",
            &format!("/v1/meter/statement?org={org}&period={period}"),
            None,
        )
    }

    /// The statement with storage counted up to `as_of` (RFC 3339), as it can be reproduced
    /// from the audit log.
    pub fn statement_as_of(&self, org: &str, period: &str, as_of: &str) -> Result<Value> {
        let as_of = as_of.replace('+', "%2B").replace(':', "%3A");
        self.ok(
            "GET",
            &format!("/v1/meter/statement?org={org}&period={period}&as_of={as_of}"),
            None,
        )
    }

    /// Sets the price of a category, in fen per unit (admin).
    pub fn set_price(&self, category: &str, fen_per_unit: i64) -> Result<Value> {
        self.post(
            "/v1/prices",
            &PriceBody {
                category: category.into(),
                fen_per_unit,
            },
        )
    }

    /// Prunes audit segments older than `before` (YYYY-MM-DD, at least 180 days ago; admin).
    pub fn prune_audit(&self, before: &str) -> Result<tidegate_runtime::Pruned> {
        self.post_as(
            "/v1/audit/prune",
            &PruneBody {
                before: before.into(),
            },
            "what was pruned",
        )
    }

    /// Moves a scenario's grant of a dataset to the dataset's newest version (its provider).
    pub fn repin_grant(&self, id: &str, dataset: &str) -> Result<Value> {
        self.post(
            &format!("/v1/scenarios/{id}/repin"),
            &RepinBody {
                dataset: dataset.into(),
            },
        )
    }

    /// Submits a draft (its org), or suspends, resumes or revokes a scenario (admin).
    pub fn change_scenario(&self, id: &str, action: &str) -> Result<Value> {
        self.post(
            &format!("/v1/scenarios/{id}/state"),
            &StateBody {
                action: action.into(),
            },
        )
    }

    pub fn upload_module(&self, scenario: &str, wasm: &[u8]) -> Result<Value> {
        self.upload_module_with_source(scenario, wasm, None)
    }

    /// Uploads a module with its source archive (made by `tidegate module build`).
    pub fn upload_module_with_source(
        &self,
        scenario: &str,
        wasm: &[u8],
        source: Option<&[u8]>,
    ) -> Result<Value> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let body = ModuleBody {
            wasm_base64: b64(wasm),
            source_base64: source.map(b64),
        };
        self.post(&format!("/v1/scenarios/{scenario}/modules"), &body)
    }

    /// A module's source archive.
    pub fn module_source(&self, scenario: &str, hash: &str) -> Result<Vec<u8>> {
        self.get_bytes(
            &format!("/v1/scenarios/{scenario}/modules/{hash}/source"),
            16 << 20,
        )
    }

    /// Records a rebuild of a module's source.
    pub fn record_source_check(
        &self,
        scenario: &str,
        hash: &str,
        source_sha256: &str,
        rebuilt_sha256: &str,
        toolchain: &str,
    ) -> Result<Value> {
        self.post(
            &format!("/v1/scenarios/{scenario}/modules/{hash}/verification"),
            &SourceCheckBody {
                source_sha256: source_sha256.into(),
                rebuilt_sha256: rebuilt_sha256.into(),
                toolchain: toolchain.into(),
            },
        )
    }

    pub fn approve_module(&self, scenario: &str, hash: &str, note: &str) -> Result<Value> {
        self.post(
            &format!("/v1/scenarios/{scenario}/modules/{hash}/approve"),
            &NoteBody { note: note.into() },
        )
    }

    /// A module as its reviewer reads it.
    pub fn get_module(&self, scenario: &str, hash: &str) -> Result<Value> {
        self.ok(
            "GET",
            &format!("/v1/scenarios/{scenario}/modules/{hash}"),
            None,
        )
    }

    /// A module's bytes.
    pub fn module_bytes(&self, scenario: &str, hash: &str) -> Result<Vec<u8>> {
        self.get_bytes(
            &format!("/v1/scenarios/{scenario}/modules/{hash}/wasm"),
            64 << 20,
        )
    }

    /// The bytes a GET answers (at most `limit`), or its error.
    fn get_bytes(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.url);
        let mut response = self
            .get_request(&url)
            .call()
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
            // A status outside 2xx is always an error.
            Answer { status, body }.into_result()?;
        }
        Ok(response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()?)
    }

    /// A sample of a dataset version for inspection (its provider, the authority's admins).
    pub fn sample_dataset(&self, dataset: &str, version: i64, rows: u64) -> Result<Value> {
        self.ok(
            "GET",
            &format!("/v1/datasets/{dataset}/versions/{version}/sample?rows={rows}"),
            None,
        )
    }

    /// Seals, unseals or destroys a dataset version (`action`: seal, unseal or destroy; the
    /// authority's admins).
    pub fn dataset_custody(
        &self,
        dataset: &str,
        version: i64,
        action: &str,
        reason: &str,
    ) -> Result<tidegate_runtime::CustodyRecord> {
        self.post_as(
            &format!("/v1/datasets/{dataset}/versions/{version}/{action}"),
            &ReasonBody {
                reason: reason.into(),
            },
            "a custody record",
        )
    }

    /// A mock of a dataset as a scenario grants it: Parquet bytes, marked as a mock.
    pub fn mock_dataset(
        &self,
        scenario: &str,
        dataset: &str,
        rows: u64,
        seed: u64,
    ) -> Result<Vec<u8>> {
        self.get_bytes(
            &format!("/v1/scenarios/{scenario}/datasets/{dataset}/mock?rows={rows}&seed={seed}"),
            1 << 30,
        )
    }

    /// Revokes a module's approval for a scenario (the authority's reviewers and admins).
    pub fn revoke_module(&self, scenario: &str, hash: &str, reason: &str) -> Result<Value> {
        self.post(
            &format!("/v1/scenarios/{scenario}/modules/{hash}/revoke"),
            &ReasonBody {
                reason: reason.into(),
            },
        )
    }

    /// Submits a job and waits for its end (see [`Client::wait_job`]).
    pub fn submit_job(&self, scenario: &str, sql: &str, modules: &[String]) -> Result<Value> {
        let queued: JobView = decode(&self.enqueue_job(scenario, sql, modules)?, "a job")?;
        self.wait_job(&queued.id, &mut |_| {})
    }

    /// Submits a job; the answer comes at once, with the job `queued`.
    pub fn enqueue_job(&self, scenario: &str, sql: &str, modules: &[String]) -> Result<Value> {
        let request = JobRequest {
            scenario: scenario.into(),
            sql: sql.into(),
            modules: modules.to_vec(),
        };
        self.post("/v1/jobs", &request)
    }

    /// Follows a job until it is no longer queued or running; `seen` is shown it each time.
    pub fn wait_job(&self, id: &str, seen: &mut dyn FnMut(&JobView)) -> Result<Value> {
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let job = self.get_job(id)?;
            let view: JobView = decode(&job, "a job")?;
            seen(&view);
            if !matches!(
                view.state,
                tidegate_policy::JobState::Queued | tidegate_policy::JobState::Running
            ) {
                return Ok(job);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// A job: its state, result schema and resources (never its rows).
    pub fn get_job(&self, id: &str) -> Result<Value> {
        self.ok("GET", &format!("/v1/jobs/{id}"), None)
    }

    /// Cancels a queued or running job.
    pub fn cancel_job(&self, id: &str) -> Result<Value> {
        self.ok("POST", &format!("/v1/jobs/{id}/cancel"), None)
    }

    /// Discards a job's stored result (its own scientist), freeing storage quota.
    pub fn discard_result(&self, id: &str) -> Result<Value> {
        self.ok("POST", &format!("/v1/jobs/{id}/discard"), None)
    }

    pub fn request_export(&self, job: &str) -> Result<Value> {
        self.request_export_with(job, None, None)
    }

    /// An export of a differentially private scenario, spending `epsilon` of its budget.
    pub fn request_export_spending(&self, job: &str, epsilon: f64) -> Result<Value> {
        self.request_export_with(job, Some(epsilon), None)
    }

    /// An export request, spending `epsilon` when given, answering the returned export
    /// `amends` when given.
    pub fn request_export_with(
        &self,
        job: &str,
        epsilon: Option<f64>,
        amends: Option<&str>,
    ) -> Result<Value> {
        let body = ExportBody {
            job: job.into(),
            epsilon,
            amends: amends.map(str::to_string),
        };
        self.post("/v1/exports", &body)
    }

    /// An export request: its state, gate report and review history.
    pub fn get_export(&self, id: &str) -> Result<Value> {
        self.ok("GET", &format!("/v1/exports/{id}"), None)
    }

    pub fn review_export(&self, id: &str, decision: &str, comment: &str) -> Result<Value> {
        self.review_export_publishing(id, decision, comment, false)
    }

    /// A decision that, with `publish`, approves the rows of an export whose scenario
    /// publishes its figures for the public record.
    pub fn review_export_publishing(
        &self,
        id: &str,
        decision: &str,
        comment: &str,
        publish: bool,
    ) -> Result<Value> {
        self.post(
            &format!("/v1/exports/{id}/review"),
            &ReviewBody {
                decision: decision.into(),
                comment: comment.into(),
                publish,
            },
        )
    }

    /// Downloads an export's bundle into `dir`.
    pub fn download_bundle(&self, id: &str, dir: &Path) -> Result<()> {
        let v = self.ok("GET", &format!("/v1/exports/{id}/bundle"), None)?;
        let bundle: BundleAnswer = decode(&v, "a bundle")?;
        let mut out = Vec::new();
        for f in bundle.files {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(f.base64)
                .context("a bundle file is not base64")?;
            out.push((f.name, bytes));
        }
        tidegate_runtime::write_bundle(dir, &out)?;
        Ok(())
    }
}

/// A query parameter's value, percent-encoded (all but unreserved characters).
fn urlencoded(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
