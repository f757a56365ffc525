//! Lists and queues (issue 18, item 1): each caller finds what waits for their decision, and
//! lists only what they could open one by one, page by page.

use crate::common::{
    active_scenario, constant_module, export_of, outsider, refusal, scenario_request,
};
use serde_json::Value;
use tidegate_runtime::ListQuery;
use tidegate_server::Client;

fn queue() -> ListQuery {
    ListQuery {
        queue: true,
        ..ListQuery::default()
    }
}

fn ids(page: &Value, field: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_str().unwrap().to_string())
        .collect()
}

fn exports_of(c: &Client, q: &ListQuery) -> Vec<String> {
    ids(&c.list("/v1/exports", q).unwrap(), "id")
}

#[test]
fn a_reviewer_finds_an_export_in_the_queue_until_deciding_it() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let e = export_of(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits GROUP BY spot",
        &[],
    );
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["state"], "in_review", "{e}");
    assert_eq!(exports_of(&w.reviewer, &queue()), vec![id.clone()]);
    // The scientist's org sees it in its list, not in a queue of decisions.
    assert_eq!(
        exports_of(&w.scientist, &ListQuery::default()),
        vec![id.clone()]
    );
    assert!(exports_of(&w.scientist, &queue()).is_empty());
    w.reviewer
        .review_export(&id, "return", "name the purpose of each column")
        .unwrap();
    assert!(exports_of(&w.reviewer, &queue()).is_empty());
    let returned = ListQuery {
        state: Some("returned".into()),
        ..ListQuery::default()
    };
    assert_eq!(exports_of(&w.reviewer, &returned), vec![id.clone()]);
    // A unit that did not ask sees none of it, nor does a reviewer outside the authority's
    // review office.
    let (other, _, _) = outsider(w, "another-unit", "operator", &["scientist"]);
    let (stranger, _, _) = outsider(w, "a-provider", "provider", &["reviewer"]);
    for c in [&other, &stranger] {
        assert!(exports_of(c, &ListQuery::default()).is_empty());
        assert!(exports_of(c, &returned).is_empty());
        assert!(exports_of(c, &queue()).is_empty());
    }
    let jobs = ids(
        &other.list("/v1/jobs", &ListQuery::default()).unwrap(),
        "id",
    );
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[test]
fn lists_page_by_cursor_without_repeating_or_skipping() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let mut made = Vec::new();
    for n in 0..5 {
        let j = w
            .scientist
            .submit_job(
                &sid,
                &format!("SELECT spot, {n} AS n FROM visits LIMIT 1"),
                &[],
            )
            .unwrap();
        made.push(j["id"].as_str().unwrap().to_string());
    }
    let mut seen: Vec<String> = Vec::new();
    let mut q = ListQuery {
        limit: Some(2),
        ..ListQuery::default()
    };
    loop {
        let page = w.scientist.list("/v1/jobs", &q).unwrap();
        let items = ids(&page, "id");
        assert!(items.len() <= 2, "{page}");
        seen.extend(items);
        match page["next"].as_str() {
            Some(next) => q.after = Some(next.to_string()),
            None => break,
        }
    }
    // Newest first, each once.
    made.reverse();
    assert_eq!(seen, made);
    // Bad pages are refused with a reason, never a server error.
    for bad in [
        ListQuery {
            limit: Some(0),
            ..ListQuery::default()
        },
        ListQuery {
            limit: Some(100_000),
            ..ListQuery::default()
        },
        ListQuery {
            after: Some("'; DROP TABLE jobs; --".into()),
            ..ListQuery::default()
        },
    ] {
        let message = refusal(w.scientist.list("/v1/jobs", &bad));
        assert!(message.contains("(400)"), "{message}");
    }
    let unknown = w
        .scientist
        .call("GET", "/v1/jobs?stat=queued", None)
        .unwrap();
    assert_eq!(unknown.status, 400, "{}", unknown.body);
}

#[test]
fn the_module_queue_holds_what_a_reviewer_may_approve() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let uploaded = w
        .scientist
        .upload_module(&sid, &constant_module(7))
        .unwrap();
    let hash = uploaded["hash"].as_str().unwrap().to_string();
    let queued = ids(&w.reviewer.list("/v1/modules", &queue()).unwrap(), "hash");
    assert_eq!(queued, vec![hash.clone()]);
    // The uploading org lists its modules but decides none of them.
    let own = ids(
        &w.scientist
            .list("/v1/modules", &ListQuery::default())
            .unwrap(),
        "hash",
    );
    assert!(own.contains(&hash) && own.len() == 2, "{own:?}");
    assert!(ids(&w.scientist.list("/v1/modules", &queue()).unwrap(), "hash").is_empty());
    w.reviewer
        .approve_module(&sid, &hash, "returns a constant")
        .unwrap();
    assert!(ids(&w.reviewer.list("/v1/modules", &queue()).unwrap(), "hash").is_empty());
}

#[test]
fn the_scenario_queue_holds_what_each_approver_still_owes() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let applied = w
        .scientist
        .apply_scenario(&scenario_request(false))
        .unwrap();
    let sid = applied["id"].as_str().unwrap().to_string();
    let waiting = |c: &Client| ids(&c.list("/v1/scenarios", &queue()).unwrap(), "id");
    assert_eq!(waiting(&w.admin), vec![sid.clone()]);
    assert_eq!(waiting(&w.provider), vec![sid.clone()]);
    // Who applied approves nothing of their own; a reviewer approves no scenario.
    assert!(waiting(&w.scientist).is_empty());
    assert!(waiting(&w.reviewer).is_empty());
    w.admin.approve_scenario(&sid).unwrap();
    assert!(waiting(&w.admin).is_empty());
    assert_eq!(waiting(&w.provider), vec![sid.clone()]);
    w.provider.approve_scenario(&sid).unwrap();
    assert!(waiting(&w.provider).is_empty());
    // A unit that is not party to it does not see it at all.
    let (other, _, _) = outsider(w, "another-unit", "operator", &["scientist"]);
    let all = ids(
        &other.list("/v1/scenarios", &ListQuery::default()).unwrap(),
        "id",
    );
    assert!(all.is_empty(), "{all:?}");
}

#[test]
fn the_directory_is_the_authoritys_and_holds_no_secrets() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let page = w
        .admin
        .list("/v1/principals", &ListQuery::default())
        .unwrap();
    let names: Vec<String> = ids(&page, "name");
    assert!(names.len() >= 5, "{page}");
    assert!(!page.to_string().contains("token"), "{page}");
    let orgs = w.auditor.list("/v1/orgs", &ListQuery::default()).unwrap();
    assert!(
        ids(&orgs, "kind").contains(&"authority".to_string()),
        "{orgs}"
    );
    for c in [&w.scientist, &w.provider, &w.reviewer] {
        for path in ["/v1/principals", "/v1/orgs"] {
            let message = refusal(c.list(path, &ListQuery::default()));
            assert!(message.contains("(403)"), "{path}: {message}");
        }
    }
}

// ---- Module review you can see (issue 18, item 2) ----

#[test]
fn a_reviewer_reads_a_module_and_revoking_it_stops_its_jobs_and_flags_its_exports() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let wasm = constant_module(7);
    let (module, _) = w.publish_module(&sid, &wasm).unwrap();
    let hash = module["hash"].as_str().unwrap().to_string();
    // What the reviewer reads: the manifest, the structure, the state and the history.
    let m = w.reviewer.get_module(&sid, &hash).unwrap();
    assert_eq!(m["state"], "approved", "{m}");
    assert_eq!(m["functions"][0]["name"], "f", "{m}");
    assert_eq!(m["structure"]["size_bytes"], wasm.len(), "{m}");
    assert_eq!(m["structure"]["imports"], 0, "{m}");
    assert_eq!(w.reviewer.module_bytes(&sid, &hash).unwrap(), wasm);
    // Another unit is told it does not exist.
    let (other, _, _) = outsider(w, "another-unit", "operator", &["scientist"]);
    let message = refusal(other.get_module(&sid, &hash));
    assert!(message.contains("(404)"), "{message}");
    assert!(other.module_bytes(&sid, &hash).is_err());
    // A result computed with it waits in review.
    let e = export_of(
        &env,
        &sid,
        "SELECT spot, count(*) AS n FROM visits WHERE f(1) = 7 GROUP BY spot",
        std::slice::from_ref(&hash),
    );
    assert_eq!(e["state"], "in_review", "{e}");
    let id = e["id"].as_str().unwrap();
    assert_eq!(
        w.reviewer.get_module(&sid, &hash).unwrap()["exports"][0],
        id
    );
    // Only the authority revokes, and says why.
    let message = refusal(w.scientist.revoke_module(&sid, &hash, "mine"));
    assert!(message.contains("(403)"), "{message}");
    let message = refusal(w.reviewer.revoke_module(&sid, &hash, "  "));
    assert!(message.contains("(400)"), "{message}");
    let revoked = w
        .reviewer
        .revoke_module(&sid, &hash, "it reads more than its manifest says")
        .unwrap();
    assert_eq!(revoked["state"], "revoked", "{revoked}");
    // The export is flagged and can no longer be approved.
    let flagged = w
        .reviewer
        .call("GET", &format!("/v1/exports/{id}"), None)
        .unwrap()
        .body;
    assert!(
        flagged["flag"]
            .as_str()
            .is_some_and(|f| f.contains("revoked")),
        "{flagged}"
    );
    let message = refusal(w.reviewer.review_export(id, "approve", "fine"));
    assert!(message.contains("(403)"), "{message}");
    w.reviewer
        .review_export(id, "reject", "its module was revoked")
        .unwrap();
    // No job calls it again, no reviewer approves it again, and no queue offers it.
    let message = refusal(w.scientist.submit_job(
        &sid,
        "SELECT spot, count(*) AS n FROM visits WHERE f(1) = 7 GROUP BY spot",
        std::slice::from_ref(&hash),
    ));
    assert!(
        message.contains("no algorithm review approval"),
        "{message}"
    );
    let message = refusal(w.reviewer.approve_module(&sid, &hash, "again"));
    assert!(message.contains("revoked"), "{message}");
    assert!(ids(&w.reviewer.list("/v1/modules", &queue()).unwrap(), "hash").is_empty());
    let revoked_list = ListQuery {
        state: Some("revoked".into()),
        ..ListQuery::default()
    };
    assert_eq!(
        ids(
            &w.reviewer.list("/v1/modules", &revoked_list).unwrap(),
            "hash"
        ),
        vec![hash]
    );
}
