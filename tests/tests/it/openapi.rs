//! The API's contract: `/v1/openapi.json`, OpenAPI 3.1 generated from the handlers' own types,
//! describes every route the README lists and the server serves, every body, every error in
//! the one format, and the bearer scheme; a validator from outside the project accepts it.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

fn document(env: &Env) -> Value {
    let url = env.world.admin.url().to_string();
    let answer = raw(
        &url,
        format!(
            "GET /v1/openapi.json HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            url.trim_start_matches("http://")
        )
        .as_bytes(),
        &|_| {},
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    json_of(&answer).expect("a JSON document")
}

/// The routes the README's API block lists, as (METHOD, /path).
fn readme_routes() -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let block = readme
        .split("The HTTP API (")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("the README's API block");
    let mut routes = BTreeSet::new();
    let mut method = String::new();
    let mut base = String::new();
    let mut continued = false;
    for word in block.split_whitespace() {
        match word {
            "GET" | "POST" => {
                method = word.to_string();
                continued = false;
            }
            "|" => continued = true,
            w if w.starts_with('/') => {
                let path = w.split('[').next().unwrap().to_string();
                // `/v1/x/a | /b` continues the path before it: `/v1/x/b`.
                let full = if continued && !path.starts_with("/v1") {
                    format!("{base}{path}")
                } else {
                    base = path.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
                    path
                };
                continued = false;
                routes.insert((method.clone(), full));
            }
            _ => {}
        }
    }
    routes
}

#[test]
fn the_document_describes_every_route_the_readme_lists_and_nothing_else() {
    let env = setup(false);
    let doc = document(&env);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            described.insert((method.to_uppercase(), path.clone()));
        }
    }
    let listed = readme_routes();
    let missing: Vec<_> = listed.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "listed in README.md, missing from the document: {missing:?}"
    );
    let unlisted: Vec<_> = described.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "in the document, not in README.md: {unlisted:?}"
    );
}

#[test]
fn every_described_route_is_served_and_asks_for_a_token_unless_it_is_public() {
    let env = setup(false);
    let doc = document(&env);
    let url = env.world.admin.url().to_string();
    let host = url.trim_start_matches("http://").to_string();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path.replace("{id}", "x").replace("{hash}", "y");
            let answer = raw(
                &url,
                format!(
                    "{} {concrete} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    method.to_uppercase()
                )
                .as_bytes(),
                &|_| {},
            );
            let public = op["security"] == serde_json::json!([{}]);
            let status: u16 = answer[9..12].parse().unwrap();
            if public {
                assert!(status < 400, "{method} {path} is public: {answer}");
            } else {
                assert_eq!(status, 401, "{method} {path} asks for a token: {answer}");
            }
            // Every operation answers errors in the one format.
            for code in ["400", "401", "403", "404", "500"] {
                let r = &op["responses"][code]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    r.as_str(),
                    Some("#/components/schemas/ApiErrorBody"),
                    "{method} {path} {code}"
                );
            }
        }
    }
    let error = &doc["components"]["schemas"]["ApiErrorBody"]["required"];
    assert_eq!(error, &serde_json::json!(["error", "message"]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{}",
        doc["components"]
    );
}

#[test]
fn bodies_are_described_by_the_handlers_own_types() {
    let env = setup(false);
    let doc = document(&env);
    let body = |path: &str| doc["paths"][path]["post"]["requestBody"]["content"].clone();
    let schemas = &doc["components"]["schemas"];
    // A scenario request: the runtime's own type, with its export rules from the policy.
    let scenario = body("/v1/scenarios");
    assert_eq!(
        scenario["application/json"]["schema"]["$ref"],
        "#/components/schemas/ScenarioRequest"
    );
    for field in ["name", "grants", "term_start", "export_rules"] {
        assert!(
            schemas["ScenarioRequest"]["properties"][field].is_object(),
            "{field}: {}",
            schemas["ScenarioRequest"]
        );
    }
    assert!(schemas["ExportRules"]["properties"]["privacy_budget"].is_object());
    // The streamed upload takes bytes; the export's answer is the export with its gate report.
    assert!(body("/v1/datasets/upload")["application/octet-stream"].is_object());
    let export = &doc["paths"]["/v1/exports/{id}"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        export["application/json"]["schema"]["$ref"],
        "#/components/schemas/ExportView"
    );
    assert!(schemas["GateReport"]["properties"]["checks"].is_object());
    // Every reference names a schema the document holds.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "{}", all.len());
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(schemas[name].is_object(), "{r} names no schema");
    }
}

#[test]
fn an_outside_validator_accepts_the_document_as_openapi_3_1() {
    let Some(tools) = python_tools() else {
        return;
    };
    let env = setup(false);
    let doc = document(&env);
    let file = env.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let run = Command::new("python3")
        .args(["-c", "import sys; from openapi_spec_validator import validate; from openapi_spec_validator.readers import read_from_filename; spec, _ = read_from_filename(sys.argv[1]); validate(spec); print('valid')"])
        .arg(&file)
        .env("PYTHONPATH", &tools)
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// `GET /metrics` with a bearer token, as a scraper sends it: (status, body).
fn scrape(env: &Env, token: &str) -> (u16, String) {
    let url = env.world.admin.url().to_string();
    let answer = raw(
        &url,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
            url.trim_start_matches("http://")
        )
        .as_bytes(),
        &|_| {},
    );
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn metrics_count_jobs_exports_refusals_and_latency_and_name_nobody() {
    let (env, sid, module) = active_scenario();
    let w = &env.world;
    let kept = export_of(&env, &sid, DEMO_SQL, &[module]);
    assert_eq!(kept["state"], "in_review", "{kept}");
    let leaky = job(
        &env,
        &sid,
        "SELECT spot, count(*) AS n, sum(spend) * 0 + 0.13812345678 AS x FROM visits GROUP BY spot",
        &[],
    );
    let refused = w
        .scientist
        .request_export(leaky["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(refused["state"], "rejected", "{refused}");
    let (status, text) = scrape(&env, w.admin.token().unwrap());
    assert_eq!(status, 200, "{text}");
    for line in [
        "tidegate_jobs{state=\"succeeded\"} 2",
        "tidegate_exports{state=\"in_review\"} 1",
        "tidegate_exports{state=\"rejected\"} 1",
        "tidegate_gate_refusals{check=\"identifiers\"} 1",
        "tidegate_audit_broken 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        text.contains(
            "tidegate_http_request_duration_seconds_count{route=\"/v1/jobs/{id}\",method=\"GET\"}"
        ),
        "{text}"
    );
    let audit: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_audit_entries_total "))
        .and_then(|n| n.parse().ok())
        .expect("the audit log's entries");
    assert!(audit > 10, "{audit}");
    // No identifier, name or value in any label.
    let named = [
        w.scientist_id.as_str(),
        w.reviewer_id.as_str(),
        w.operator_org.as_str(),
        w.provider_org.as_str(),
        sid.as_str(),
        kept["id"].as_str().unwrap(),
        kept["job"].as_str().unwrap(),
        refused["id"].as_str().unwrap(),
        "visits",
        "West Lake",
    ];
    for id in named {
        assert!(!text.contains(id), "{id} in\n{text}");
    }
    // Metrics are the authority's to read.
    let (status, _) = scrape(&env, w.scientist.token().unwrap());
    assert_eq!(status, 403);
    let (status, _) = scrape(&env, "tg_not_a_token");
    assert_eq!(status, 401);
}
