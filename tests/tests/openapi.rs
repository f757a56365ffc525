//! The API's contract: `/v1/openapi.json`, OpenAPI 3.1 generated from the handlers' own types,
//! describes every route the README lists and the server serves, every body, every error in
//! the one format, and the bearer scheme; a validator from outside the project accepts it.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
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
    for word in block.split_whitespace() {
        match word {
            "GET" | "POST" => method = word.to_string(),
            "|" => {}
            w if w.starts_with('/') => {
                let path = w.split('[').next().unwrap().to_string();
                // `/v1/x | /y` continues the path before it: `/v1/x/y`.
                let full = if path.starts_with("/v1") || path == "/healthz" {
                    base = path.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
                    path
                } else {
                    format!("{base}{path}")
                };
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
