//! `tidegate demo`: the whole story of SPEC.md in one process, against a real server on a
//! loopback port, on a fresh data directory with a synthetic dataset of scenic-spot visits.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tidegate_runtime::{PUBLIC_KEY_FILE, Platform};

use crate::client::Client;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// A fresh data directory; a temporary one is made when absent.
    pub data_dir: Option<PathBuf>,
    pub rows: usize,
    pub quiet: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            data_dir: None,
            rows: 100_000,
            quiet: false,
        }
    }
}

/// What the demo left behind.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub data_dir: PathBuf,
    pub master_key: PathBuf,
    pub bundle_dir: PathBuf,
    pub public_key: PathBuf,
    pub export: Value,
}

/// The spots of the synthetic dataset and their weights. "Moon Cave" is visited by three
/// people only, 60 times: rows are many, subjects are few, so the gate must suppress it.
const SPOTS: [(&str, u32); 8] = [
    ("West Lake", 30),
    ("Lingyin Temple", 16),
    ("Xixi Wetland", 12),
    ("Grand Canal", 11),
    ("Songcheng Park", 10),
    ("Leifeng Pagoda", 9),
    ("Hefang Street", 7),
    ("Qiandao Lake", 5),
];
const RARE_SPOT: &str = "Moon Cave";
const AREAS: [&str; 6] = ["110105", "310104", "330106", "440305", "510107", "330102"];

fn resident_id(rng: &mut StdRng) -> String {
    let area = AREAS[rng.random_range(0..AREAS.len())];
    let year = rng.random_range(1950..=2008);
    let month = rng.random_range(1..=12);
    let day = rng.random_range(1..=28);
    let seq = rng.random_range(0..1000);
    let first17 = format!("{area}{year:04}{month:02}{day:02}{seq:03}");
    let check = tidegate_policy::resident_id_check_char(first17.as_bytes()).expect("17 digits");
    format!("{first17}{}", check as char)
}

fn mobile(rng: &mut StdRng) -> String {
    format!(
        "1{}{:09}",
        rng.random_range(3..=9),
        rng.random_range(0..1_000_000_000u32)
    )
}

/// A synthetic CSV of `rows` visits by about `rows / 5` people, with valid check digits;
/// deterministic for a given `rows`.
pub fn visitor_csv(rows: usize) -> String {
    let mut rng = StdRng::seed_from_u64(20261127);
    let people: Vec<(String, String)> = (0..(rows / 5).max(50))
        .map(|_| (resident_id(&mut rng), mobile(&mut rng)))
        .collect();
    let total: u32 = SPOTS.iter().map(|(_, w)| w).sum();
    let mut out = String::with_capacity(rows * 64);
    out.push_str("resident_id,mobile,spot,visit_date,spend\n");
    let rare = 60.min(rows / 10);
    for i in 0..rows {
        let (person, spot) = if i < rare {
            (&people[i % 3], RARE_SPOT)
        } else {
            let mut pick = rng.random_range(0..total);
            let spot = SPOTS
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(s, _)| *s)
                .expect("weights cover the range");
            (&people[rng.random_range(0..people.len())], spot)
        };
        let day = rng.random_range(0..300);
        let date = time::Date::from_ordinal_date(2026, day + 1).expect("a day of 2026");
        let spend = rng.random_range(0..50_000) as f64 / 100.0;
        let _ = writeln!(
            out,
            "{},{},{},{},{:.2}",
            person.0, person.1, spot, date, spend
        );
    }
    out
}

/// The principals of the story, each with their own client.
#[derive(Debug, Clone)]
pub struct World {
    pub admin: Client,
    pub provider: Client,
    pub scientist: Client,
    pub reviewer: Client,
    pub auditor: Client,
    pub provider_org: String,
    pub operator_org: String,
    pub review_org: String,
    pub scientist_id: String,
    pub reviewer_id: String,
}

fn id(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the server's answer has no id: {v}"))
}

impl World {
    /// Creates the orgs and principals, and records everyone's training.
    pub fn onboard(admin: Client, train: bool) -> Result<World> {
        let provider_org = id(&admin.create_org("culture-tourism-bureau", "provider")?)?;
        let operator_org = id(&admin.create_org("scenic-analytics", "operator")?)?;
        let review_org = id(&admin.create_org("output-review-office", "authority")?)?;
        let make = |name: &str, org: &str, role: &str| -> Result<(Client, String)> {
            let p = admin.create_principal(name, org, &[role])?;
            let pid = id(&p)?;
            if train {
                admin.record_training(&pid, "public data security training 2026")?;
            }
            let token = p["token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token in {p}"))?;
            Ok((admin.as_token(token), pid))
        };
        let (provider, _) = make("li.provider", &provider_org, "provider")?;
        let (scientist, scientist_id) = make("wang.scientist", &operator_org, "scientist")?;
        let (reviewer, reviewer_id) = make("zhao.reviewer", &review_org, "reviewer")?;
        let (auditor, _) = make("chen.auditor", &review_org, "auditor")?;
        Ok(World {
            admin,
            provider,
            scientist,
            reviewer,
            auditor,
            provider_org,
            operator_org,
            review_org,
            scientist_id,
            reviewer_id,
        })
    }

    /// The provider imports the visits, L2, with its column tags.
    pub fn import_visits(&self, csv: &str) -> Result<Value> {
        self.import_visits_at(csv, "L2")
    }

    /// The same import at another level.
    pub fn import_visits_at(&self, csv: &str, level: &str) -> Result<Value> {
        self.provider.import_dataset(
            json!({
                "name": "visits",
                "level": level,
                "format": "csv",
                // With each column, the public metadata its mocks are made from: the spots
                // are public places, the rest ranges and counts, never a real value.
                "columns": [
                    { "name": "resident_id", "data_type": "utf8", "tags": ["pii:resident_id", "entity"],
                      "mock": { "distinct": 400 } },
                    { "name": "mobile", "data_type": "utf8", "tags": ["pii:mobile"] },
                    { "name": "spot", "data_type": "utf8", "tags": ["dimension"],
                      "mock": { "categories": SPOTS.iter().map(|(s, _)| *s).chain([RARE_SPOT]).collect::<Vec<_>>() } },
                    { "name": "visit_date", "data_type": "date32", "tags": ["quasi"],
                      "mock": { "min_date": "2026-01-01", "max_date": "2026-10-31" } },
                    { "name": "spend", "data_type": "float64", "tags": ["sensitive"],
                      "mock": { "min": 0, "max": 800, "null_rate": 0.02 } },
                ],
            }),
            csv.as_bytes(),
        )
    }

    /// The scientist applies for a scenario over some of the columns; the admin and the
    /// provider approve it.
    pub fn open_scenario(&self) -> Result<(Value, Value)> {
        let today = tidegate_runtime::clock::now().date();
        let applied = self.scientist.apply_scenario(&json!({
            "name": "Scenic spot visitor profile",
            "key_area": "culture and tourism",
            "purpose": "age profile and spending of visitors per scenic spot, for tourism planning",
            "public_interest": true,
            "grants": [{ "dataset": "visits", "columns": ["resident_id", "spot", "visit_date", "spend"] }],
            "term_start": (today - time::Duration::days(1)).to_string(),
            "term_end": (today + time::Duration::days(365)).to_string(),
            "planned_products": ["visitor age profile per spot"],
        }))?;
        let sid = id(&applied)?;
        self.admin.approve_scenario(&sid)?;
        let active = self.provider.approve_scenario(&sid)?;
        Ok((applied, active))
    }

    /// The scientist uploads the example module; a reviewer of another org approves its hash.
    pub fn publish_module(&self, scenario: &str, wasm: &[u8]) -> Result<(Value, Value)> {
        let uploaded = self.scientist.upload_module(scenario, wasm)?;
        let hash = uploaded["hash"]
            .as_str()
            .ok_or_else(|| anyhow!("no hash"))?
            .to_string();
        let approved = self.reviewer.approve_module(
            scenario,
            &hash,
            "age_at_visit: whole years between the birth date in the ID and the visit date; \
             mask_mobile: keeps the first 3 and last 4 digits. Neither reads anything else.",
        )?;
        Ok((uploaded, approved))
    }
}

/// The demo's query: a GROUP BY aggregate calling the module's scalar function.
pub(crate) const DEMO_SQL: &str = "SELECT spot, count(*) AS visits, \
    round(avg(age_at_visit(resident_id, visit_date)), 1) AS avg_age, \
    round(sum(spend), 2) AS total_spend \
    FROM visits GROUP BY spot ORDER BY spot";

/// Runs the whole story and prints each step.
pub fn run_demo(opts: &DemoOptions) -> Result<DemoOutcome> {
    let say = |s: &str| {
        if !opts.quiet {
            println!("{s}");
        }
    };
    let root = match &opts.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tempfile::Builder::new()
            .prefix("tidegate-demo-")
            .tempdir()?
            .keep(),
    };
    let data_dir = root.join("data");
    let master_key = root.join("keys").join("master.key");
    say(&format!(
        "==> 1. init: data directory {}",
        data_dir.display()
    ));
    let (platform, admin_token) = Platform::init(&data_dir, &master_key, "admin")
        .context("initializing the data directory")?;
    say(&format!(
        "    master key at {} (mode 0600, outside the data directory); admin token issued once",
        master_key.display()
    ));
    let platform = Arc::new(platform);
    let (url, _runtime) = crate::api::spawn_server(Arc::clone(&platform))?;
    say(&format!("==> 2. serve: API listening on {url}"));
    let admin = Client::new(&url, Some(&admin_token));

    say("==> 3. onboard: orgs, principals with roles, training records");
    let world = World::onboard(admin, true)?;
    say(&format!(
        "    provider org {}, operating unit {}, review office {}",
        world.provider_org, world.operator_org, world.review_org
    ));

    say(&format!(
        "==> 4. import: {} synthetic visits, level L2, encrypted at rest",
        opts.rows
    ));
    let csv = visitor_csv(opts.rows);
    let dataset = world.import_visits(&csv)?;
    say(&format!(
        "    dataset {} v{}: {} rows, content sha256 {}",
        dataset["id"].as_str().unwrap_or("?"),
        dataset["version"],
        dataset["rows"],
        dataset["content_hash"].as_str().unwrap_or("?")
    ));
    say(&format!("    quality: {}", dataset["quality"]));

    say("==> 5. scenario: the operating unit applies; the admin and the provider approve");
    let (_, scenario) = world.open_scenario()?;
    let sid = id(&scenario)?;
    say(&format!(
        "    scenario {sid}: state {}, k = {}, grants {}",
        scenario["state"], scenario["k"], scenario["grants"]
    ));

    say("==> 6. module: the scientist uploads the example UDF; a reviewer approves its hash");
    let (module, _) = world.publish_module(&sid, crate::VISITOR_UDF_WASM)?;
    let hash = module["hash"].as_str().unwrap_or_default().to_string();
    say(&format!(
        "    module {hash}: functions {}",
        module["functions"]
    ));

    say("==> 7. job: a GROUP BY aggregate calling the module inside wasmtime");
    say(&format!("    {DEMO_SQL}"));
    let job = world
        .scientist
        .submit_job(&sid, DEMO_SQL, std::slice::from_ref(&hash))?;
    if job["state"] != "succeeded" {
        return Err(anyhow!("the job failed: {}", job["error"]));
    }
    say(&format!(
        "    job {}: {} rows, schema {}, resources {}",
        job["id"].as_str().unwrap_or("?"),
        job["rows"],
        job["schema"],
        job["resources"]
    ));

    say("==> 8. export: the gate checks the result");
    let export = world.scientist.request_export(&id(&job)?)?;
    let eid = id(&export)?;
    // The scientist reads which checks passed; the reviewers read their numbers too.
    let seen = world
        .reviewer
        .ok("GET", &format!("/v1/exports/{eid}"), None)?;
    for c in seen["gate_report"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        say(&format!(
            "    [{}] {}: {}",
            if c["passed"] == true { "pass" } else { "FAIL" },
            c["name"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    if export["state"] != "in_review" {
        return Err(anyhow!("the gate refused the export: {}", export["state"]));
    }

    say("==> 9. review: a reviewer of another org sees the masked preview and decides");
    for line in seen["preview"].as_str().unwrap_or_default().lines() {
        say(&format!("    | {line}"));
    }
    let reviewed = world.reviewer.review_export(
        &eid,
        "approve",
        "aggregated per spot, groups under k suppressed, no identifiers: approved",
    )?;
    say(&format!(
        "    decision: {} by {} (\"{}\")",
        reviewed["state"],
        world.reviewer_id,
        reviewed["reviews"][0]["comment"].as_str().unwrap_or("")
    ));

    say("==> 10. release: the scientist downloads the signed bundle; it verifies offline");
    let bundle_dir = root.join("bundle");
    world.scientist.download_bundle(&eid, &bundle_dir)?;
    let public_key = data_dir.join(PUBLIC_KEY_FILE);
    let verified = tidegate_runtime::verify_bundle(&bundle_dir, &std::fs::read(&public_key)?)?;
    say(&format!(
        "    verified: signature and hashes of {:?}",
        verified.files
    ));

    say("==> 11. audit: a signed checkpoint, then the hash chain and checkpoints verify");
    platform.checkpoint()?;
    let audit = world.auditor.ok("GET", "/v1/audit/verify", None)?;
    say(&format!(
        "    {} entries, {} signed checkpoint(s), first bad entry: {}",
        audit["entries"], audit["checkpoints"], audit["first_bad"]
    ));
    say(&format!("bundle: {}", bundle_dir.display()));
    say(&format!("public key: {}", public_key.display()));
    Ok(DemoOutcome {
        data_dir,
        master_key,
        bundle_dir,
        public_key,
        export: reviewed,
    })
}
