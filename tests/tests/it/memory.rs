//! The gate's memory (R-GATE 6, issue 13): every exact release is judged against every earlier
//! one over the same data, whoever asked and however the query is spelled. Each test plays an
//! attack that worked before and asserts the secure outcome, and that the reviewer is told
//! which earlier export the gate compared with.

use crate::common;
use crate::common::{
    Env, active_scenario, approved_scenario, data, full_report, job, outsider, rows,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A visit that is the only one at the busiest spot on its date (the attacker knows the
/// person was there that day): its spot, date and spend. Its resident has other visits there,
/// so only that row differs between a release with it and one without.
fn lone_spend() -> (String, String, f64) {
    let d = data();
    let spot = "West Lake";
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, s, v, _) in &d {
        if s == spot {
            *at.entry(v.as_str()).or_insert(0) += 1;
        }
    }
    let (_, _, date, spend) = d
        .iter()
        .find(|(id, s, v, _)| {
            s == spot
                && at[v.as_str()] == 1
                && d.iter().filter(|(o, t, _, _)| o == id && t == spot).count() > 1
        })
        .cloned()
        .unwrap();
    (spot.to_string(), date, spend)
}

/// Runs `sql` and asks for its export: the export as a reviewer sees it (state, gate report,
/// preview).
fn export(env: &Env, scientist: &tidegate_server::Client, sid: &str, sql: &str) -> Value {
    let j = scientist.submit_job(sid, sql, &[]).unwrap();
    assert_eq!(j["state"], "succeeded", "{sql}: {j}");
    let requested = scientist.request_export(j["id"].as_str().unwrap()).unwrap();
    full_report(env, &requested)
}

use crate::common::gate_check as check;

/// The same data directory served by a platform opened again: nothing the last one held in
/// memory is kept (the gate's memory is rebuilt from the sealed records).
fn restarted(env: Env) -> Env {
    let key = env.dir.path().join("keys/master.key");
    let data = env.data_dir();
    let Env {
        _runtime,
        dir,
        world,
    } = env;
    drop(_runtime);
    let platform =
        tidegate_runtime::Platform::open(&data, tidegate_runtime::MasterKey::load(&key).unwrap())
            .unwrap();
    let (url, runtime) = tidegate_server::spawn_server(std::sync::Arc::new(platform)).unwrap();
    let again = |c: &tidegate_server::Client| tidegate_server::Client::new(&url, c.token());
    let world = tidegate_server::World {
        admin: again(&world.admin),
        provider: again(&world.provider),
        scientist: again(&world.scientist),
        reviewer: again(&world.reviewer),
        auditor: again(&world.auditor),
        ..world
    };
    Env {
        _runtime: runtime,
        dir,
        world,
    }
}

/// The released total at `spot` (first column the key), if released.
fn total_at(export: &Value, spot: &str, column: usize) -> Option<f64> {
    let preview = export["preview"].as_str().unwrap_or("");
    rows(preview)
        .into_iter()
        .find(|(g, _)| g.trim() == spot)
        .and_then(|(_, c)| c[column].parse().ok())
}

/// The first `n` residents of the demo data (their IDs are well-formed).
fn residents(n: usize) -> Vec<String> {
    data()
        .into_iter()
        .map(|(id, _, _, _)| id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .take(n)
        .collect()
}

/// `csv` imported at L2 as `name` with `columns`, and a scenario granting all of them,
/// approved: its id.
fn granted(w: &tidegate_server::World, name: &str, columns: Value, csv: &str) -> String {
    granted_all(w, &[(name, columns, csv)])
}

/// A scenario granted every column of each of these L2 datasets, imported by the provider.
fn granted_all(w: &tidegate_server::World, datasets: &[(&str, Value, &str)]) -> String {
    let mut grants = Vec::new();
    for (name, columns, csv) in datasets {
        let names: Vec<Value> = columns
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        w.provider
            .import_dataset(
                json!({ "name": name, "level": "L2", "format": "csv", "columns": columns }),
                csv.as_bytes(),
            )
            .unwrap();
        grants.push(json!({ "dataset": name, "columns": names }));
    }
    let mut request = common::scenario_request(false);
    request["grants"] = json!(grants);
    approved_scenario(w, &w.scientist, &request)
}

const BY_SPOT: &str = "SELECT spot, count(*) AS n, sum(spend) AS total FROM visits GROUP BY spot";

/// The second query of a differencing pair: every visit but the lone one, under a key
/// spelled another way (`spot || ' '`), which no comparison of key strings matches.
fn all_but_the_lone_visit(spot: &str, date: &str) -> String {
    format!(
        "SELECT spot || ' ' AS place, count(*) AS n, sum(spend) AS total FROM visits \
         WHERE NOT (spot = '{spot}' AND visit_date = DATE '{date}') GROUP BY spot || ' '"
    )
}

/// Asserts that the pair did not release the lone visit's spend, and that the second export's
/// differencing check names the first export.
fn assert_not_differenced(first: &Value, second: &Value, spot: &str, spend: f64) {
    let before = total_at(first, spot, 2).expect("the first release has the spot");
    if let Some(after) = total_at(second, spot, 2) {
        assert!(
            (before - after - spend).abs() > 0.005,
            "the lone visit's spend {spend} was released as {before} - {after}\n{second}"
        );
    }
    let (passed, detail) = check(second, "differencing");
    assert!(passed, "{detail}");
    assert!(
        detail.contains(first["id"].as_str().unwrap()),
        "the reviewer is told which export the cell was compared with: {detail}"
    );
}

#[test]
fn a_difference_with_a_respelled_key_is_suppressed_and_names_the_earlier_export() {
    let (env, sid, _) = active_scenario();
    let (spot, date, spend) = lone_spend();
    let scientist = &env.world.scientist;
    let first = export(&env, scientist, &sid, BY_SPOT);
    assert_eq!(first["state"], "in_review", "{first}");
    let second = export(&env, scientist, &sid, &all_but_the_lone_visit(&spot, &date));
    assert_eq!(
        second["state"], "in_review",
        "the other spots are released: {second}"
    );
    assert_not_differenced(&first, &second, &spot, spend);
    // Spots whose rows are the same in both are released again.
    let others = rows(second["preview"].as_str().unwrap()).len();
    assert!(others >= 5, "{second}");
}

/// The same rows read through the branches of a UNION ALL are the same rows.
#[test]
fn a_difference_read_through_a_union_is_suppressed() {
    let (env, sid, _) = active_scenario();
    let (spot, date, spend) = lone_spend();
    let scientist = &env.world.scientist;
    let first = export(&env, scientist, &sid, BY_SPOT);
    let second = export(
        &env,
        scientist,
        &sid,
        &format!(
            "SELECT spot, count(*) AS n, sum(spend) AS total FROM ( \
               SELECT spot, spend FROM visits WHERE spot <> '{spot}' \
               UNION ALL \
               SELECT spot, spend FROM visits WHERE spot = '{spot}' AND visit_date <> DATE '{date}' \
             ) t GROUP BY spot"
        ),
    );
    assert_not_differenced(&first, &second, &spot, spend);
}

/// A row joined to itself (a self-join on the entity key of a table of one row per subject)
/// is the same row, not a new one: the difference is suppressed as it is without the join.
#[test]
fn a_difference_read_through_a_self_join_is_suppressed() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let ids = residents(48);
    let mut csv = String::from("resident_id,district,age,spend\n");
    for (i, id) in ids.iter().enumerate() {
        let district = ["Bay", "Hill", "Lake", "Dock"][i % 4];
        // One resident of Dock is 77, the only one: the attacker knows it.
        let age = if i == 3 { 77 } else { 20 + i % 40 };
        csv.push_str(&format!("{id},{district},{age},{}\n", 100 + 37 * i));
    }
    let sid = granted(
        w,
        "people",
        json!([
            { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
            { "name": "district", "data_type": "utf8", "tags": ["dimension"] },
            { "name": "age", "data_type": "int64", "tags": ["quasi"] },
            { "name": "spend", "data_type": "int64", "tags": ["sensitive"] },
        ]),
        &csv,
    );
    let first = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT district, count(*) AS n, sum(spend) AS total FROM people GROUP BY district",
    );
    let second = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT a.district, count(*) AS n, sum(a.spend) AS total \
         FROM people a JOIN people b ON a.resident_id = b.resident_id \
         WHERE NOT (a.district = 'Dock' AND a.age = 77) GROUP BY a.district",
    );
    assert_eq!(second["state"], "in_review", "{second}");
    assert_not_differenced(&first, &second, "Dock", (100 + 37 * 3) as f64);
}

#[test]
fn a_difference_read_through_a_join_with_another_table_of_subjects_is_suppressed() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let ids = residents(48);
    let (mut people, mut cards) = (
        String::from("resident_id,district,age,spend\n"),
        String::from("resident_id,card\n"),
    );
    for (i, id) in ids.iter().enumerate() {
        let district = ["Bay", "Hill", "Lake", "Dock"][i % 4];
        // One resident of Dock is 77, the only one: the attacker knows it.
        let age = if i == 3 { 77 } else { 20 + i % 40 };
        people.push_str(&format!("{id},{district},{age},{}\n", 100 + 37 * i));
        cards.push_str(&format!("{id},{}\n", ["gold", "blue"][i % 2]));
    }
    let sid = granted_all(
        w,
        &[
            (
                "people",
                json!([
                    { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
                    { "name": "district", "data_type": "utf8", "tags": ["dimension"] },
                    { "name": "age", "data_type": "int64", "tags": ["quasi"] },
                    { "name": "spend", "data_type": "int64", "tags": ["sensitive"] },
                ]),
                &people,
            ),
            (
                "cards",
                json!([
                    { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
                    { "name": "card", "data_type": "utf8", "tags": ["dimension"] },
                ]),
                &cards,
            ),
        ],
    );
    let first = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT district, count(*) AS n, sum(spend) AS total FROM people GROUP BY district",
    );
    assert_eq!(first["state"], "in_review", "{first}");
    // Every row of the join is a new row of neither table: each side's memory is given the
    // stored row of its own side.
    let second = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT p.district, count(*) AS n, sum(p.spend) AS total \
         FROM cards c JOIN people p ON c.resident_id = p.resident_id \
         WHERE NOT (p.district = 'Dock' AND p.age = 77) GROUP BY p.district",
    );
    assert_eq!(second["state"], "in_review", "{second}");
    assert_not_differenced(&first, &second, "Dock", (100 + 37 * 3) as f64);
}

/// People of four districts, one row each; one resident of Dock is 77, the only one (the
/// attacker knows it): (the CSV, that resident's spend).
fn people_with_a_lone_77(ids: &[String]) -> (String, f64) {
    let mut csv = String::from("resident_id,district,age,spend\n");
    for (i, id) in ids.iter().enumerate() {
        let district = ["Bay", "Hill", "Lake", "Dock"][i % 4];
        let age = if i == 3 { 77 } else { 20 + i % 40 };
        csv.push_str(&format!("{id},{district},{age},{}\n", 100 + 37 * i));
    }
    (csv, (100 + 37 * 3) as f64)
}

fn people_columns() -> Value {
    json!([
        { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
        { "name": "district", "data_type": "utf8", "tags": ["dimension"] },
        { "name": "age", "data_type": "int64", "tags": ["quasi"] },
        { "name": "spend", "data_type": "int64", "tags": ["sensitive"] },
    ])
}

const PEOPLE_BY_DISTRICT: &str =
    "SELECT district, count(*) AS n, sum(spend) AS total FROM people GROUP BY district";

/// Asserts that `second` did not release Dock's total with the lone resident's spend counted
/// once more than in `first`.
fn assert_not_counted_twice(first: &Value, second: &Value, spend: f64) {
    let before = total_at(first, "Dock", 2).expect("the first release has Dock");
    if let Some(after) = total_at(second, "Dock", 2) {
        assert!(
            (after - before - spend).abs() > 0.005,
            "the resident's spend {spend} was released as {after} - {before}\n{second}"
        );
    }
}

/// A row read twice (a UNION ALL of the table with one of its own rows) adds its value twice:
/// the difference with the plain total is one resident's, and not released.
#[test]
fn a_row_read_twice_through_a_union_is_not_released_by_the_difference() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let (csv, spend) = people_with_a_lone_77(&residents(48));
    let sid = granted(w, "people", people_columns(), &csv);
    let first = export(&env, &w.scientist, &sid, PEOPLE_BY_DISTRICT);
    assert_eq!(first["state"], "in_review", "{first}");
    let second = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT district, count(*) AS n, sum(spend) AS total FROM ( \
           SELECT district, spend FROM people \
           UNION ALL \
           SELECT district, spend FROM people WHERE district = 'Dock' AND age = 77 \
         ) t GROUP BY district",
    );
    assert_not_counted_twice(&first, &second, spend);
}

/// A row joined to two rows of another table is counted twice in the join: the gate's memory
/// counts its copies, so the extra copy is one resident's, and not released.
#[test]
fn a_row_joined_twice_is_not_released_by_the_difference() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let ids = residents(48);
    let (people, spend) = people_with_a_lone_77(&ids);
    // One trip each, two for the resident of Dock who is 77.
    let mut trips = String::from("resident_id,mode\n");
    for (i, id) in ids.iter().enumerate() {
        trips.push_str(&format!("{id},bus\n"));
        if i == 3 {
            trips.push_str(&format!("{id},tram\n"));
        }
    }
    let sid = granted_all(
        w,
        &[
            ("people", people_columns(), &people),
            (
                "trips",
                json!([
                    { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
                    { "name": "mode", "data_type": "utf8", "tags": ["dimension"] },
                ]),
                &trips,
            ),
        ],
    );
    let first = export(&env, &w.scientist, &sid, PEOPLE_BY_DISTRICT);
    assert_eq!(first["state"], "in_review", "{first}");
    let second = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT p.district, count(*) AS n, sum(p.spend) AS total \
         FROM trips t JOIN people p ON t.resident_id = p.resident_id GROUP BY p.district",
    );
    assert_not_counted_twice(&first, &second, spend);
}

/// A cell of k subjects of one table with one subject's rows of another (a UNION ALL): the
/// other dataset's part of the cell is that subject's, and the cell is not released (here its
/// count would tell how many bonuses the resident had; the sum's own check already holds).
#[test]
fn one_subject_s_rows_of_another_dataset_added_to_a_crowd_are_not_released() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let ids = residents(48);
    let (people, _) = people_with_a_lone_77(&ids);
    // A second dataset of bonuses by month: one each in months 1 and 2, and for the resident
    // of Dock who is 77 one in month 3 as well.
    let mut bonuses = String::from("resident_id,district,age,month\n");
    for (i, id) in ids.iter().enumerate() {
        let district = ["Bay", "Hill", "Lake", "Dock"][i % 4];
        let age = if i == 3 { 77 } else { 20 + i % 40 };
        for month in if i == 3 { &[1, 2, 3][..] } else { &[1, 2][..] } {
            bonuses.push_str(&format!("{id},{district},{age},{month}\n"));
        }
    }
    let sid = granted_all(
        w,
        &[
            ("people", people_columns(), &people),
            (
                "bonuses",
                json!([
                    { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
                    { "name": "district", "data_type": "utf8", "tags": ["dimension"] },
                    { "name": "age", "data_type": "int64", "tags": ["quasi"] },
                    { "name": "month", "data_type": "int64", "tags": ["dimension"] },
                ]),
                &bonuses,
            ),
        ],
    );
    // The resident's rows of bonuses fall into cells of many subjects (month 3's is
    // suppressed): no single group of them is one subject's alone in the memory yet.
    let months = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT month, count(*) AS n FROM bonuses GROUP BY month",
    );
    assert_eq!(months["state"], "in_review", "{months}");
    let first = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT district, count(*) AS n FROM people GROUP BY district",
    );
    assert_eq!(first["state"], "in_review", "{first}");
    let second = export(
        &env,
        &w.scientist,
        &sid,
        "SELECT district, count(*) AS n FROM ( \
           SELECT district FROM people \
           UNION ALL \
           SELECT district FROM bonuses WHERE district = 'Dock' AND age = 77 \
         ) t GROUP BY district",
    );
    let before = total_at(&first, "Dock", 1).unwrap();
    if let Some(after) = total_at(&second, "Dock", 1) {
        assert!(
            (after - before - 3.0).abs() > 0.005,
            "the resident's number of bonuses was released as {after} - {before}\n{second}"
        );
    }
}

#[test]
fn a_difference_across_two_scenarios_of_one_org_is_suppressed() {
    let (env, sid, _) = active_scenario();
    let (_, second_scenario) = env.world.open_scenario().unwrap();
    let other = second_scenario["id"].as_str().unwrap();
    assert_ne!(other, sid);
    let (spot, date, spend) = lone_spend();
    let scientist = &env.world.scientist;
    let first = export(&env, scientist, &sid, BY_SPOT);
    let second = export(
        &env,
        scientist,
        other,
        &all_but_the_lone_visit(&spot, &date),
    );
    assert_not_differenced(&first, &second, &spot, spend);
}

#[test]
fn a_difference_across_two_orgs_is_suppressed() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let (rival, _, _) = outsider(w, "rival-analytics", "operator", &["scientist"]);
    let mut request = common::scenario_request(false);
    request["grants"] =
        json!([{ "dataset": "visits", "columns": ["resident_id", "spot", "visit_date", "spend"] }]);
    let rival_sid = &approved_scenario(w, &rival, &request);
    let (spot, date, spend) = lone_spend();
    let first = export(&env, &w.scientist, &sid, BY_SPOT);
    let second = export(
        &env,
        &rival,
        rival_sid,
        &all_but_the_lone_visit(&spot, &date),
    );
    assert_not_differenced(&first, &second, &spot, spend);
    // The reviewer sees the other org's earlier export beside this one, with its query.
    let beside: Vec<&Value> = second["earlier"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"] == first["id"])
        .collect();
    assert_eq!(beside.len(), 1, "{second}");
    assert_eq!(beside[0]["query"], BY_SPOT);
}

/// The tracker (Denning and Schlörer): C is the lone visit, T a predicate that splits the
/// rest. `C or T`, `C or not T` and everything: the first two minus the third is C. The
/// third release is refused by the linear audit, naming the two before it.
#[test]
fn a_tracker_of_three_queries_is_refused_at_the_third() {
    let (env, sid, _) = active_scenario();
    let (spot, date, spend) = lone_spend();
    let c = format!("(spot = '{spot}' AND visit_date = DATE '{date}')");
    let q = |filter: &str| {
        format!(
            "SELECT spot, count(*) AS n, sum(spend) AS total FROM visits WHERE {filter} GROUP BY spot"
        )
    };
    let scientist = &env.world.scientist;
    let one = export(&env, scientist, &sid, &q(&format!("{c} OR spend > 250")));
    let two = export(
        &env,
        scientist,
        &sid,
        &q(&format!("{c} OR NOT (spend > 250)")),
    );
    let three = export(&env, scientist, &sid, BY_SPOT);
    for e in [&one, &two] {
        assert_eq!(e["state"], "in_review", "{e}");
    }
    let released: Vec<Option<f64>> = [&one, &two, &three]
        .iter()
        .map(|e| total_at(e, &spot, 2))
        .collect();
    if let [Some(a), Some(b), Some(t)] = released[..] {
        assert!(
            (a + b - t - spend).abs() > 0.005,
            "the tracker released the lone visit's spend {spend}"
        );
    }
    let refused: Vec<&Value> = [&one, &two, &three]
        .into_iter()
        .filter(|e| !check(e, "inference").0)
        .collect();
    assert_eq!(refused.len(), 1, "{three}");
    let (_, detail) = check(refused[0], "inference");
    assert!(detail.contains("fewer than k"), "{detail}");
    assert!(
        detail.contains(one["id"].as_str().unwrap())
            || detail.contains(two["id"].as_str().unwrap()),
        "the refusal names the exports it combined: {detail}"
    );
    assert!(refused[0]["preview"].is_null() || refused[0]["preview"] == "");
}

/// A table by spot suppresses the rare spot (3 residents) and one partner for the margin; a
/// later total over every spot but the partner would give the rare spot by subtraction.
#[test]
fn a_margin_released_after_a_suppressed_cell_is_refused() {
    let (env, sid, _) = active_scenario();
    let scientist = &env.world.scientist;
    let table = export(&env, scientist, &sid, BY_SPOT);
    let shown: Vec<String> = rows(table["preview"].as_str().unwrap())
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    assert!(!shown.contains(&"Moon Cave".to_string()), "{table}");
    let spots: std::collections::BTreeSet<String> =
        data().into_iter().map(|(_, s, _, _)| s).collect();
    let hidden: Vec<&String> = spots.iter().filter(|s| !shown.contains(s)).collect();
    assert_eq!(hidden.len(), 2, "the rare spot and its partner: {hidden:?}");
    let partner = hidden.iter().find(|s| s.as_str() != "Moon Cave").unwrap();
    // The plain total is released: the two hidden cells stay together.
    let total = export(
        &env,
        scientist,
        &sid,
        "SELECT substr(spot, 1, 0) AS everything, count(*) AS n, sum(spend) AS total FROM visits GROUP BY substr(spot, 1, 0)",
    );
    assert!(check(&total, "inference").0, "{total}");
    // Without the partner, the total minus the table is the rare spot.
    let margin = export(
        &env,
        scientist,
        &sid,
        &format!(
            "SELECT substr(spot, 1, 0) AS everything, count(*) AS n, sum(spend) AS total FROM visits WHERE spot <> '{partner}' GROUP BY substr(spot, 1, 0)"
        ),
    );
    let (passed, detail) = check(&margin, "inference");
    assert!(!passed, "{margin}");
    assert!(detail.contains(table["id"].as_str().unwrap()), "{detail}");
    assert_ne!(margin["state"], "in_review", "{margin}");
}

/// A cell hidden because one subject dominates its sum stays hidden: a later total without
/// the cell hidden beside it would give its sum by subtraction (refused, naming the export
/// that hid it), while a count of its rows is released (counts are not what dominance hides).
#[test]
fn a_sum_dominated_by_one_subject_is_not_given_by_a_later_margin() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let ids = residents(54);
    // 12, 13, 14 and 15 residents; one resident of the largest district spends over 90% of
    // its total (but not of the city's).
    let districts = [("Bay", 12), ("Hill", 13), ("Lake", 14), ("Dock", 15)];
    let mut csv = String::from("resident_id,district,spend\n");
    let mut next = ids.iter();
    for (d, (district, residents)) in districts.into_iter().enumerate() {
        for i in 0..residents {
            let spend = match (district, i) {
                ("Dock", 0) => 300_000,
                _ => 200 * (1 + (i * 7 + d) % 15),
            };
            csv.push_str(&format!("{},{district},{spend}\n", next.next().unwrap()));
        }
    }
    let sid = granted(
        w,
        "shops",
        json!([
            { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
            { "name": "district", "data_type": "utf8", "tags": ["dimension"] },
            { "name": "spend", "data_type": "int64", "tags": ["sensitive"] },
        ]),
        &csv,
    );
    let scientist = &w.scientist;
    let table = export(
        &env,
        scientist,
        &sid,
        "SELECT district, count(*) AS n, sum(spend) AS total FROM shops GROUP BY district",
    );
    let shown: Vec<String> = rows(table["preview"].as_str().unwrap())
        .into_iter()
        .map(|(g, _)| g.trim().to_string())
        .collect();
    assert!(!shown.contains(&"Dock".to_string()), "{table}");
    let hidden: Vec<&str> = districts
        .iter()
        .map(|(d, _)| *d)
        .filter(|d| !shown.iter().any(|s| s == d))
        .collect();
    assert_eq!(
        hidden.len(),
        2,
        "the dominated cell and its partner: {table}"
    );
    let partner = hidden.iter().find(|d| **d != "Dock").unwrap();
    // The server restarts: the memory, the sums' too, is rebuilt from the sealed records.
    let env = restarted(env);
    let scientist = &env.world.scientist;
    let by = |filter: &str| {
        format!(
            "SELECT substr(district, 1, 0) AS everything, count(*) AS n, sum(spend) AS total FROM shops {filter} GROUP BY substr(district, 1, 0)"
        )
    };
    // The total alone keeps the two hidden cells together: released.
    let total = export(&env, scientist, &sid, &by(""));
    assert!(check(&total, "inference").0, "{total}");
    assert_eq!(rows(total["preview"].as_str().unwrap()).len(), 1, "{total}");
    // Without the partner, the total minus the table is the dominated cell's sum: refused.
    let margin = export(
        &env,
        scientist,
        &sid,
        &by(&format!("WHERE district <> '{partner}'")),
    );
    let (passed, detail) = check(&margin, "inference");
    assert!(!passed, "{margin}");
    assert!(detail.contains(table["id"].as_str().unwrap()), "{detail}");
    assert!(detail.contains("dominate"), "{detail}");
    assert_ne!(margin["state"], "in_review", "{margin}");
    // The same margin of counts alone tells no sum: released.
    let counts = export(
        &env,
        scientist,
        &sid,
        &format!(
            "SELECT substr(district, 1, 0) AS everything, count(*) AS n FROM shops WHERE district <> '{partner}' GROUP BY substr(district, 1, 0)"
        ),
    );
    assert!(check(&counts, "inference").0, "{counts}");
    assert_eq!(
        rows(counts["preview"].as_str().unwrap()).len(),
        1,
        "{counts}"
    );
}

/// Dinur and Nissim: sums of a sensitive bit over many subsets of a small table, each subset
/// of about half the subjects chosen by a hash of a quasi-identifier. Exactly enough such sums
/// give every bit; the audit refuses the release that would determine the first one, and what
/// was released before it determines none (checked here by elimination over the rationals).
#[test]
fn a_reconstruction_by_many_subset_sums_stops_before_any_value_is_determined() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let n = 60usize;
    let mut csv = String::from("resident_id,region,code,flag\n");
    let ids = residents(n);
    let flags: Vec<i64> = (0..n).map(|i| ((i * 7 + 3) % 5 < 2) as i64).collect();
    for (i, id) in ids.iter().enumerate() {
        csv.push_str(&format!("{id},city,{},{}\n", i * 37 % 101, flags[i]));
    }
    let sid = &granted(
        w,
        "survey",
        json!([
            { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"] },
            { "name": "region", "data_type": "utf8", "tags": ["dimension"] },
            { "name": "code", "data_type": "int64", "tags": ["quasi"] },
            { "name": "flag", "data_type": "int64", "tags": ["sensitive"] },
        ]),
        &csv,
    );
    let codes: Vec<i64> = (0..n).map(|i| (i * 37 % 101) as i64).collect();
    // The equations released so far, as 0/1 rows over the subjects.
    let mut equations: Vec<Vec<f64>> = Vec::new();
    let mut refused_at = None;
    let mut suppressed = 0;
    for q in 0..3 * n {
        let (a, b) = (2 * q + 3, q * 11 + 5);
        let member = |code: i64| (code * a as i64 + b as i64) % 13 < 7;
        let sql = format!(
            "SELECT region, count(*) AS n, sum(flag) AS flagged FROM survey \
             WHERE (code * {a} + {b}) % 13 < 7 GROUP BY region"
        );
        let j = job(&env, sid, &sql, &[]);
        assert_eq!(j["state"], "succeeded", "{j}");
        let e = full_report(
            &env,
            &w.scientist
                .request_export(j["id"].as_str().unwrap())
                .unwrap(),
        );
        if !check(&e, "inference").0 {
            refused_at = Some(q);
            break;
        }
        if rows(e["preview"].as_str().unwrap_or("")).is_empty() {
            suppressed += 1;
        } else {
            equations.push(
                codes
                    .iter()
                    .map(|c| f64::from(u8::from(member(*c))))
                    .collect(),
            );
        }
    }
    // The attack is stopped: sums too close to earlier ones are suppressed, and a release that
    // would determine a group of fewer than k is refused.
    assert!(
        refused_at.is_some() || suppressed > 0,
        "{} sums released, none held back",
        equations.len()
    );
    assert!(
        equations.len() >= 5,
        "the first sums determine nothing and are released"
    );
    let rank = |rows: &[Vec<f64>]| common::rank(rows);
    let r = rank(&equations);
    // Subjects in exactly the same sums stay together: no group of fewer than k of them may
    // have its total determined (a single subject's bit is one such group).
    let mut groups: BTreeMap<Vec<bool>, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let signature: Vec<bool> = equations.iter().map(|e| e[i] > 0.5).collect();
        groups.entry(signature).or_default().push(i);
    }
    for members in groups.values().filter(|m| m.len() < 10) {
        let mut with = equations.clone();
        with.push(
            (0..n)
                .map(|j| f64::from(u8::from(members.contains(&j))))
                .collect(),
        );
        assert!(
            rank(&with) > r,
            "the bits of subjects {members:?} are determined by the {} released sums",
            equations.len()
        );
    }
}

// ---- Values packed where the scan does not look ----

/// A mobile number in the fraction of a double: the scan reads the fraction's digits too.
#[test]
fn a_float_with_a_mobile_number_in_its_fraction_is_refused() {
    let (env, sid, _) = active_scenario();
    let e = export(
        &env,
        &env.world.scientist,
        &sid,
        "SELECT spot, count(*) AS n, sum(spend) * 0 + 0.13812345678 AS x FROM visits GROUP BY spot",
    );
    let (passed, detail) = check(&e, "identifiers");
    assert!(!passed, "{e}");
    assert!(detail.contains("column `x` look like mobile"), "{detail}");
    assert!(
        !detail.contains("13812345678"),
        "the report never quotes a value"
    );
    assert_ne!(e["state"], "in_review");
}

/// The scenario masks `spot`; a query that renames it still releases it masked: masking
/// follows the column the output is computed from, not its name.
#[test]
fn a_renamed_masked_column_stays_masked() {
    let (env, _, _) = active_scenario();
    let w = &env.world;
    let mut request = common::scenario_request(false);
    request["grants"] =
        json!([{ "dataset": "visits", "columns": ["resident_id", "spot", "visit_date", "spend"] }]);
    request["export_rules"] = json!({ "masking": { "spot": "redact" } });
    let sid = &approved_scenario(w, &w.scientist, &request);
    for sql in [
        "SELECT spot AS place, count(*) AS n FROM visits GROUP BY spot",
        "SELECT lower(p) AS place, count(*) AS n FROM (SELECT spot AS p FROM visits) t GROUP BY lower(p)",
        "SELECT concat(spot, '') AS place, count(*) AS n FROM visits GROUP BY concat(spot, '')",
        // Masked by the query another way: the scenario's rule (redact) still applies.
        "SELECT tg_mask(spot) AS place, count(*) AS n FROM visits GROUP BY tg_mask(spot)",
    ] {
        let e = export(&env, &w.scientist, sid, sql);
        let preview = e["preview"].as_str().unwrap_or("").to_string();
        assert!(!rows(&preview).is_empty(), "{sql}: {e}");
        for (place, _) in rows(&preview) {
            assert_eq!(place, "***", "{sql}: {preview}");
        }
        let (_, detail) = check(&e, "desensitization");
        assert!(detail.contains("`place`"), "{detail}");
    }
}
