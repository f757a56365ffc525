//! The web console, driven as a browser drives it (plain HTTP with cookies and forms): a token
//! becomes a session cookie, every form carries the session's CSRF token, every answer forbids
//! scripts and framing, and a reviewer finds and decides an export on pages alone.

use std::collections::BTreeMap;

use crate::common::*;
use serde_json::Value;

/// What the server answered: the status, the headers (names in lower case) and the body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the hidden `csrf` field of the form posting to an action ending in `end`.
    fn csrf_of(&self, end: &str) -> String {
        let form = self
            .body
            .split("<form ")
            .find(|f| f.starts_with("method=\"post\" action=\"") && f.contains(&format!("{end}\"")))
            .unwrap_or_else(|| panic!("no form posting to ...{end} in {}", self.body));
        Answer {
            status: self.status,
            headers: Vec::new(),
            body: form.to_string(),
        }
        .csrf()
    }

    /// The value of the hidden `csrf` field of the page's first form that has one.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no form with a CSRF token in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// A browser of one person: it keeps the cookies the server sets and sends them back.
pub(crate) struct Browser {
    url: String,
    cookies: BTreeMap<String, String>,
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        b' ' => "+".to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    pub(crate) fn new(url: &str) -> Browser {
        Browser {
            url: url.to_string(),
            cookies: BTreeMap::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let host = self.url.trim_start_matches("http://").to_string();
        let cookies = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if !cookies.is_empty() {
            request.push_str(&format!("Cookie: {cookies}\r\n"));
        }
        if let Some(b) = body {
            request.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        let text = raw(&self.url, request.as_bytes(), &|_| {});
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
            .collect();
        for (n, v) in &headers {
            if n == "set-cookie" {
                let pair = v.split(';').next().unwrap_or_default();
                if let Some((k, val)) = pair.split_once('=') {
                    if val.is_empty() || v.contains("Max-Age=0") {
                        self.cookies.remove(k);
                    } else {
                        self.cookies.insert(k.to_string(), val.to_string());
                    }
                }
            }
        }
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    }

    pub(crate) fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send("POST", path, Some(&form_encode(fields)))
    }

    /// Signs in with `token` through the sign-in form.
    pub(crate) fn sign_in(&mut self, token: &str) -> Answer {
        let form = self.get("/console/sign-in");
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.csrf();
        self.post("/console/sign-in", &[("token", token), ("csrf", &csrf)])
    }
}

pub(crate) fn token(client: &tidegate_server::Client) -> String {
    client.token().unwrap().to_string()
}

/// An export of the demo's scenario waiting for review.
fn waiting_export() -> (Env, String) {
    let (env, sid, module) = active_scenario();
    let requested = export_of(&env, &sid, DEMO_SQL, &[module]);
    assert_eq!(requested["state"], "in_review", "{requested}");
    let id = requested["id"].as_str().unwrap().to_string();
    (env, id)
}

#[test]
fn a_reviewer_signs_in_finds_the_export_in_the_queue_and_returns_it_with_a_comment() {
    let (env, id) = waiting_export();
    let mut b = Browser::new(env.world.reviewer.url());
    let signed = b.sign_in(&token(&env.world.reviewer));
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert_eq!(signed.header("location"), Some("/console"));
    let cookie = signed
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("tg_session="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(&token(&env.world.reviewer)),
        "the cookie is a session, not the token"
    );

    let queue = b.get("/console/reviews");
    assert_eq!(queue.status, 200, "{}", queue.body);
    assert!(
        queue.body.contains(&format!("/console/exports/{id}")),
        "{}",
        queue.body
    );

    let page = b.get(&format!("/console/exports/{id}"));
    assert_eq!(page.status, 200, "{}", page.body);
    for section in [
        "Gate report",
        "threshold",
        "differencing",
        "Preview",
        "Decision",
    ] {
        assert!(page.body.contains(section), "{section} in {}", page.body);
    }
    let csrf = page.csrf();
    let decided = b.post(
        &format!("/console/exports/{id}/review"),
        &[
            ("csrf", &csrf),
            ("decision", "return"),
            ("comment", "Please drop the age column & explain <why>"),
        ],
    );
    assert_eq!(decided.status, 303, "{}", decided.body);
    // The same state and comment through the API: the page is a view of the same call.
    let seen: Value = seen_by_reviewer(&env, &serde_json::json!({ "id": id }));
    assert_eq!(seen["state"], "returned", "{seen}");
    assert!(
        seen.to_string()
            .contains("Please drop the age column & explain <why>")
    );
    let after = b.get(&format!("/console/exports/{id}"));
    assert!(
        after.body.contains("explain &lt;why&gt;"),
        "escaped: {}",
        after.body
    );
    assert!(!after.body.contains("<why>"));
}

#[test]
fn every_console_answer_forbids_scripts_framing_and_caching() {
    let (env, _) = waiting_export();
    let mut b = Browser::new(env.world.reviewer.url());
    let form = b.get("/console/sign-in");
    b.sign_in(&token(&env.world.reviewer));
    let home = b.get("/console");
    assert_eq!(home.status, 200, "{}", home.body);
    for answer in [&form, &home] {
        let csp = answer.header("content-security-policy").expect("a CSP");
        for rule in [
            "default-src 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(rule), "{csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert!(!answer.body.contains("<script"), "{}", answer.body);
        assert!(
            !answer.body.contains("style=\""),
            "no inline style: {}",
            answer.body
        );
    }
    let css = b.get("/console/style.css");
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
}

#[test]
fn a_form_posted_without_the_session_s_csrf_token_changes_nothing() {
    let (env, id) = waiting_export();
    let mut b = Browser::new(env.world.reviewer.url());
    b.sign_in(&token(&env.world.reviewer));
    for csrf in ["", "tg_0000", "not-the-token"] {
        let forged = b.post(
            &format!("/console/exports/{id}/review"),
            &[("csrf", csrf), ("decision", "approve"), ("comment", "ok")],
        );
        assert_eq!(forged.status, 403, "{}", forged.body);
    }
    let seen = seen_by_reviewer(&env, &serde_json::json!({ "id": id }));
    assert_eq!(seen["state"], "in_review", "{seen}");
    // Nor does a sign-in form the console did not give open a session.
    let mut other = Browser::new(env.world.reviewer.url());
    let forged = other.post(
        "/console/sign-in",
        &[("token", &token(&env.world.reviewer)), ("csrf", "tg_guess")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(!other.cookies.contains_key("tg_session"));
}

#[test]
fn a_page_of_another_org_is_not_found() {
    let (env, id) = waiting_export();
    let (stranger, _, _) = outsider(&env.world, "other-analytics", "operator", &["scientist"]);
    let mut b = Browser::new(env.world.reviewer.url());
    assert_eq!(b.sign_in(&token(&stranger)).status, 303);
    let page = b.get(&format!("/console/exports/{id}"));
    assert_eq!(page.status, 404, "{}", page.body);
    assert!(!page.body.contains("Gate report"));
    let queue = b.get("/console/reviews");
    assert!(!queue.body.contains(&id), "{}", queue.body);
}

#[test]
fn a_session_ends_at_sign_out_and_when_its_token_is_rotated() {
    let (env, _) = waiting_export();
    let mut b = Browser::new(env.world.reviewer.url());
    assert!(
        b.get("/console")
            .header("location")
            .is_some_and(|l| l.ends_with("/console/sign-in"))
    );
    b.sign_in(&token(&env.world.reviewer));
    let home = b.get("/console");
    assert_eq!(home.status, 200);
    let session = b.cookies["tg_session"].clone();
    let out = b.post("/console/sign-out", &[("csrf", &home.csrf())]);
    assert_eq!(out.status, 303, "{}", out.body);
    // The old cookie, sent again, opens nothing.
    b.cookies.insert("tg_session".into(), session);
    assert_eq!(b.get("/console").status, 303);

    b.sign_in(&token(&env.world.reviewer));
    assert_eq!(b.get("/console").status, 200);
    env.world
        .admin
        .ok(
            "POST",
            &format!("/v1/principals/{}/token", env.world.reviewer_id),
            None,
        )
        .unwrap();
    assert_eq!(
        b.get("/console").status,
        303,
        "a rotated token ends its sessions"
    );
}

#[test]
fn an_admin_approves_a_scenario_from_its_page() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let applied = w
        .scientist
        .apply_scenario(&scenario_request(false))
        .unwrap();
    let sid = applied["id"].as_str().unwrap().to_string();
    let mut b = Browser::new(w.admin.url());
    b.sign_in(&token(&w.admin));
    let list = b.get("/console/scenarios");
    assert!(
        list.body.contains(&format!("/console/scenarios/{sid}")),
        "{}",
        list.body
    );
    let page = b.get(&format!("/console/scenarios/{sid}"));
    assert_eq!(page.status, 200, "{}", page.body);
    let approved = b.post(
        &format!("/console/scenarios/{sid}/approve"),
        &[("csrf", &page.csrf())],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let seen = w
        .admin
        .ok("GET", &format!("/v1/scenarios/{sid}"), None)
        .unwrap();
    let approvals = seen["approvals"].to_string();
    assert!(approvals.contains("admin"), "{seen}");
}

/// The returned loop through the API: a returned export is answered once, by a new request of
/// the same scenario that names it; nothing else can be amended.
#[test]
fn only_a_returned_export_is_amended_and_only_once() {
    let (env, id) = waiting_export();
    let w = &env.world;
    let (sid, module) = {
        let e = seen_by_reviewer(&env, &serde_json::json!({ "id": id }));
        let job = w
            .scientist
            .ok(
                "GET",
                &format!("/v1/jobs/{}", e["job"].as_str().unwrap()),
                None,
            )
            .unwrap();
        (
            job["scenario"].as_str().unwrap().to_string(),
            job["modules"][0].as_str().unwrap().to_string(),
        )
    };
    let fresh = || {
        job(&env, &sid, DEMO_SQL, std::slice::from_ref(&module))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let not_returned = refusal(w.scientist.request_export_with(&fresh(), None, Some(&id)));
    assert!(
        not_returned.contains("only a returned export is amended"),
        "{not_returned}"
    );
    w.reviewer.review_export(&id, "return", "say why").unwrap();
    let (stranger, _, _) = outsider(w, "other-analytics", "operator", &["scientist"]);
    let other_org = refusal(stranger.request_export_with(&fresh(), None, Some(&id)));
    assert!(
        other_org.contains("not found") || other_org.contains("job"),
        "{other_org}"
    );
    // An answer the gate refuses answers nothing: the returned export may be amended again.
    let leaky = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS n, sum(spend) * 0 + 0.13812345678 AS x FROM visits GROUP BY spot",
        &[],
    );
    let refused = w
        .scientist
        .request_export_with(leaky["id"].as_str().unwrap(), None, Some(&id))
        .unwrap();
    assert_eq!(refused["state"], "rejected", "{refused}");
    let amended = w
        .scientist
        .request_export_with(&fresh(), None, Some(&id))
        .unwrap();
    assert_eq!(amended["amends"], id.as_str(), "{amended}");
    let again = refusal(w.scientist.request_export_with(&fresh(), None, Some(&id)));
    assert!(again.contains("amended already"), "{again}");
    let earlier = seen_by_reviewer(&env, &serde_json::json!({ "id": id }));
    assert_eq!(earlier["amended_by"], amended["id"], "{earlier}");
}

#[test]
fn refusals_and_unknown_console_paths_carry_the_console_s_headers_too() {
    let (env, id) = waiting_export();
    let mut b = Browser::new(env.world.reviewer.url());
    let answers = [
        b.get("/console/no-such-page"),
        b.get("/console/sign-out"),
        b.send("DELETE", "/console", None),
        // A post without a session is answered before its body is read.
        b.post(
            &format!("/console/exports/{id}/review"),
            &[("csrf", "x"), ("decision", "approve"), ("comment", "x")],
        ),
        b.post(
            "/console/sign-in",
            &[("token", &"x".repeat(20_000)), ("csrf", "x")],
        ),
    ];
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [404, 405, 405, 303, 413], "{statuses:?}");
    for a in &answers {
        let csp = a.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'"), "{} {csp}", a.status);
        assert_eq!(a.header("cache-control"), Some("no-store"));
    }
    let seen = seen_by_reviewer(&env, &serde_json::json!({ "id": id }));
    assert_eq!(seen["state"], "in_review", "{seen}");
}

#[test]
fn a_sign_in_form_without_its_field_or_past_its_time_opens_nothing() {
    let (env, _) = waiting_export();
    let mut b = Browser::new(env.world.reviewer.url());
    let form = b.get("/console/sign-in");
    let csrf = form.csrf();
    // No token field: refused, not an error about the form's shape.
    let missing = b.post("/console/sign-in", &[("csrf", &csrf)]);
    assert_eq!(missing.status, 401, "{}", missing.body);
    // A form whose time is past, with its cookie set to match.
    let old = format!("{}.1000", csrf.split('.').next().unwrap());
    b.cookies.insert("tg_sign_in".into(), old.clone());
    let stale = b.post(
        "/console/sign-in",
        &[
            ("token", env.world.reviewer.token().unwrap()),
            ("csrf", &old),
        ],
    );
    assert_eq!(stale.status, 403, "{}", stale.body);
    assert!(!b.cookies.contains_key("tg_session"));
}

#[test]
fn a_reviewer_reads_a_module_and_approves_it_then_revokes_it_from_its_page() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let uploaded = w
        .scientist
        .upload_module(&sid, &constant_module(7))
        .unwrap();
    let hash = uploaded["hash"].as_str().unwrap().to_string();
    let mut b = Browser::new(w.reviewer.url());
    b.sign_in(&token(&w.reviewer));
    let queue = b.get("/console/modules");
    let page_path = format!("/console/modules/{sid}/{hash}");
    assert!(queue.body.contains(&page_path), "{}", queue.body);
    let page = b.get(&page_path);
    assert_eq!(page.status, 200, "{}", page.body);
    for fact in ["functions", "structure", "awaiting", "Approve this module"] {
        assert!(page.body.contains(fact), "{fact} in {}", page.body);
    }
    let approved = b.post(
        &format!("{page_path}/approve"),
        &[
            ("csrf", &page.csrf_of("/approve")),
            ("note", "returns a constant; nothing read"),
        ],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let seen = w
        .reviewer
        .ok("GET", &format!("/v1/scenarios/{sid}/modules/{hash}"), None)
        .unwrap();
    assert_eq!(seen["state"], "approved", "{seen}");
    let page = b.get(&page_path);
    let revoked = b.post(
        &format!("{page_path}/revoke"),
        &[
            ("csrf", &page.csrf_of("/revoke")),
            ("reason", "found a leak"),
        ],
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    let seen = w
        .reviewer
        .ok("GET", &format!("/v1/scenarios/{sid}/modules/{hash}"), None)
        .unwrap();
    assert_eq!(seen["state"], "revoked", "{seen}");
}

#[test]
fn the_requesting_org_downloads_its_approved_bundle_from_the_export_page() {
    let (env, id) = waiting_export();
    let w = &env.world;
    w.reviewer.review_export(&id, "approve", "fine").unwrap();
    let mut scientist = Browser::new(w.scientist.url());
    scientist.sign_in(&token(&w.scientist));
    let page = scientist.get(&format!("/console/exports/{id}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Signed bundle"), "{}", page.body);
    let csv = scientist.get(&format!("/console/exports/{id}/files/result.csv"));
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains("result.csv")
    );
    assert!(csv.body.starts_with("spot,visits,avg_age"), "{}", csv.body);
    // Another org's principal gets nothing of it.
    let (stranger, _, _) = outsider(w, "other-analytics", "operator", &["scientist"]);
    let mut other = Browser::new(w.scientist.url());
    other.sign_in(&token(&stranger));
    let refused = other.get(&format!("/console/exports/{id}/files/result.csv"));
    assert!(matches!(refused.status, 403 | 404), "{}", refused.status);
    assert!(!refused.body.contains("spot,visits"));
}

#[test]
fn jobs_datasets_and_the_directory_are_pages_too_scoped_as_the_api_is() {
    let (env, _) = waiting_export();
    let w = &env.world;
    let mut admin = Browser::new(w.admin.url());
    admin.sign_in(&token(&w.admin));
    let directory = admin.get("/console/directory");
    assert_eq!(directory.status, 200, "{}", directory.body);
    assert!(
        directory.body.contains(&w.scientist_id),
        "{}",
        directory.body
    );
    let mut scientist = Browser::new(w.scientist.url());
    scientist.sign_in(&token(&w.scientist));
    // The directory is the authority's: the API refuses it to a scientist, and so does the page.
    assert_eq!(scientist.get("/console/directory").status, 403);
    let jobs = scientist.get("/console/jobs");
    let at = jobs.body.find("/console/jobs/job_").expect("a job link");
    let link = &jobs.body[at..at + jobs.body[at..].find('"').unwrap()];
    let job = scientist.get(link);
    assert_eq!(job.status, 200, "{}", job.body);
    assert!(job.body.contains("succeeded"), "{}", job.body);
    let datasets = scientist.get("/console/datasets");
    assert_eq!(datasets.status, 200, "{}", datasets.body);
    assert!(datasets.body.contains("visits"), "{}", datasets.body);
}

#[test]
fn an_admin_freezes_an_org_records_training_sets_a_price_and_reads_its_reports_from_pages() {
    let (env, _) = waiting_export();
    let w = &env.world;
    let mut b = Browser::new(w.admin.url());
    b.sign_in(&token(&w.admin));
    let directory = b.get("/console/directory");
    assert_eq!(directory.status, 200, "{}", directory.body);
    let org = &w.operator_org;
    let frozen = b.post(
        &format!("/console/orgs/{org}/freeze"),
        &[("csrf", &directory.csrf_of("/freeze")), ("freeze", "true")],
    );
    assert_eq!(frozen.status, 200, "{}", frozen.body);
    assert!(frozen.body.contains("frozen"), "{}", frozen.body);
    let refused = refusal(w.scientist.apply_scenario(&scenario_request(true)));
    assert!(is_frozen_refusal(&refused), "{refused}");
    b.post(
        &format!("/console/orgs/{org}/freeze"),
        &[("csrf", &directory.csrf_of("/freeze")), ("freeze", "false")],
    );
    let trained = b.post(
        &format!("/console/principals/{}/training", w.scientist_id),
        &[
            ("csrf", &directory.csrf_of("/training")),
            ("course", "data ethics 2027"),
        ],
    );
    assert_eq!(trained.status, 303, "{}", trained.body);
    let prices = b.get("/console/prices");
    let set = b.post(
        "/console/prices",
        &[
            ("csrf", &prices.csrf_of("/prices")),
            ("category", "storage"),
            ("fen_per_unit", "3"),
        ],
    );
    assert_eq!(set.status, 303, "{}", set.body);
    let year = time::OffsetDateTime::now_utc().year();
    let annual = b.get(&format!("/console/orgs/{org}/annual?year={year}"));
    assert_eq!(annual.status, 200, "{}", annual.body);
    assert!(annual.body.contains("Annual report"), "{}", annual.body);
    let at = directory.body.find("/statement?period=").unwrap();
    let link = &directory.body[at..at + directory.body[at..].find('"').unwrap()];
    let statement = b.get(&format!("/console/orgs/{org}{link}"));
    assert_eq!(statement.status, 200, "{}", statement.body);
    // The same actions are the authority's: a scientist's session is refused them.
    let mut s = Browser::new(w.scientist.url());
    s.sign_in(&token(&w.scientist));
    let home = s.get("/console");
    let refused = s.post(
        &format!("/console/orgs/{org}/freeze"),
        &[("csrf", &home.csrf()), ("freeze", "true")],
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
}
