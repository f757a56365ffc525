//! `tidegate demo`: the whole story of SPEC.md in one process, against a real server on a
//! loopback port, on a fresh data directory with a synthetic dataset of scenic-spot visits.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tidegate_policy::{ExportState, JobState};
use tidegate_runtime::{
    ColumnInput, DatasetView, ExportView, GrantRequest, ImportRequest, JobView, ModuleView,
    PUBLIC_KEY_FILE, Platform, PrincipalView, ScenarioRequest, ScenarioView,
};

use crate::client::{Client, decode};
use crate::wire::AuditAnswer;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// A fresh data directory; a temporary one is made when absent.
    pub data_dir: Option<PathBuf>,
    pub rows: usize,
    pub quiet: bool,
    /// Runs the jobs' inputs on a Ballista cluster in this process (a scheduler and two
    /// executors on loopback).
    pub cluster: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            data_dir: None,
            rows: 100_000,
            quiet: false,
            cluster: false,
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
    pub export: ExportView,
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

/// The id of what an answer describes: an org, a principal, a scenario.
fn id(v: &Value) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Identified {
        id: String,
    }
    Ok(decode::<Identified>(v, "an answer with an id")?.id)
}

impl World {
    /// Creates the orgs and principals, and records everyone's training.
    pub fn onboard(admin: Client, train: bool) -> Result<World> {
        let provider_org = id(&admin.create_org("culture-tourism-bureau", "provider")?)?;
        let operator_org = id(&admin.create_org("scenic-analytics", "operator")?)?;
        let review_org = id(&admin.create_org("output-review-office", "authority")?)?;
        let make = |name: &str, org: &str, role: &str| -> Result<(Client, String)> {
            let p: PrincipalView =
                decode(&admin.create_principal(name, org, &[role])?, "a principal")?;
            if train {
                admin.record_training(&p.id, "public data security training 2026")?;
            }
            let token = p
                .token
                .ok_or_else(|| anyhow!("the new principal {} came without a token", p.id))?;
            Ok((admin.as_token(&token), p.id))
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
        use tidegate_policy::{ColumnTag, DataType, MockSpec, SensitiveType};
        let column = |name: &str, data_type, tags: &[ColumnTag], mock| ColumnInput {
            name: name.into(),
            data_type: Some(data_type),
            tags: tags.to_vec(),
            mock,
        };
        // With each column, the public metadata its mocks are made from: the spots are public
        // places, the rest ranges and counts, never a real value.
        let columns = vec![
            column(
                "resident_id",
                DataType::Utf8,
                &[ColumnTag::Pii(SensitiveType::ResidentId), ColumnTag::Entity],
                Some(MockSpec {
                    distinct: Some(400),
                    ..MockSpec::default()
                }),
            ),
            column(
                "mobile",
                DataType::Utf8,
                &[ColumnTag::Pii(SensitiveType::Mobile)],
                None,
            ),
            column(
                "spot",
                DataType::Utf8,
                &[ColumnTag::Dimension],
                Some(MockSpec {
                    categories: SPOTS
                        .iter()
                        .map(|(s, _)| *s)
                        .chain([RARE_SPOT])
                        .map(str::to_string)
                        .collect(),
                    ..MockSpec::default()
                }),
            ),
            column(
                "visit_date",
                DataType::Date32,
                &[ColumnTag::Quasi],
                Some(MockSpec {
                    min_date: Some("2026-01-01".into()),
                    max_date: Some("2026-10-31".into()),
                    ..MockSpec::default()
                }),
            ),
            column(
                "spend",
                DataType::Float64,
                &[ColumnTag::Sensitive],
                Some(MockSpec {
                    min: Some(0.0),
                    max: Some(800.0),
                    null_rate: 0.02,
                    ..MockSpec::default()
                }),
            ),
        ];
        let request = ImportRequest {
            name: "visits".into(),
            level: level
                .parse()
                .map_err(|e: String| anyhow!("level {level}: {e}"))?,
            format: "csv".into(),
            columns,
            approvers: Vec::new(),
            data_base64: String::new(),
            quality_rules: None,
        };
        self.provider.import_dataset(request, csv.as_bytes())
    }

    /// The scientist applies for a scenario over some of the columns; the admin and the
    /// provider approve it.
    pub fn open_scenario(&self) -> Result<(Value, Value)> {
        let today = tidegate_runtime::clock::now().date();
        let applied = self.scientist.apply_scenario(&ScenarioRequest {
            name: "Scenic spot visitor profile".into(),
            key_area: "culture and tourism".into(),
            purpose: "age profile and spending of visitors per scenic spot, for tourism planning"
                .into(),
            public_interest: true,
            grants: vec![GrantRequest {
                dataset: "visits".into(),
                columns: ["resident_id", "spot", "visit_date", "spend"]
                    .map(str::to_string)
                    .to_vec(),
                version: None,
            }],
            term_start: (today - time::Duration::days(1)).to_string(),
            term_end: (today + time::Duration::days(365)).to_string(),
            k: None,
            planned_products: vec!["visitor age profile per spot".into()],
            export_rules: Default::default(),
            draft: false,
        })?;
        let sid = id(&applied)?;
        self.admin.approve_scenario(&sid)?;
        let active = self.provider.approve_scenario(&sid)?;
        Ok((applied, active))
    }

    /// The scientist uploads the example module; a reviewer of another org approves its hash.
    pub fn publish_module(&self, scenario: &str, wasm: &[u8]) -> Result<(Value, Value)> {
        let uploaded = self.scientist.upload_module(scenario, wasm)?;
        let hash = decode::<ModuleView>(&uploaded, "a module")?.hash;
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
    let (url, runtime) = crate::api::spawn_server(Arc::clone(&platform))?;
    say(&format!("==> 2. serve: API listening on {url}"));
    if opts.cluster {
        let cluster = runtime
            .block_on(tidegate_runtime::Cluster::standalone(
                2,
                &root.join("cluster"),
            ))
            .context("starting the cluster")?;
        platform.use_cluster(Some(cluster));
        say(
            "    jobs run on a Ballista cluster in this process: a scheduler and two executors on loopback, shuffle files sealed",
        );
    }
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
    let dataset: DatasetView = decode(&world.import_visits(&csv)?, "a dataset")?;
    say(&format!(
        "    dataset {} v{}: {} rows, content sha256 {}",
        dataset.id,
        dataset.version,
        dataset.rows.unwrap_or_default(),
        dataset.content_hash.as_deref().unwrap_or("?")
    ));
    if let Some(quality) = &dataset.quality {
        say(&format!("    quality: {quality}"));
    }

    say("==> 5. scenario: the operating unit applies; the admin and the provider approve");
    let scenario: ScenarioView = decode(&world.open_scenario()?.1, "a scenario")?;
    let sid = scenario.id.clone();
    let grants: Vec<String> = scenario
        .grants
        .iter()
        .map(|g| format!("{} ({})", g.dataset, g.columns.join(", ")))
        .collect();
    say(&format!(
        "    scenario {sid}: state {}, k = {}, grants {}",
        scenario.state.as_str(),
        scenario.k,
        grants.join("; ")
    ));

    say("==> 6. module: the scientist uploads the example UDF; a reviewer approves its hash");
    let module: ModuleView = decode(
        &world.publish_module(&sid, crate::VISITOR_UDF_WASM)?.0,
        "a module",
    )?;
    let hash = module.hash.clone();
    let functions: Vec<&str> = module.functions.iter().map(|f| f.name.as_str()).collect();
    say(&format!(
        "    module {hash}: functions {}",
        functions.join(", ")
    ));

    say("==> 7. job: a GROUP BY aggregate calling the module inside wasmtime");
    say(&format!("    {DEMO_SQL}"));
    let job: JobView = decode(
        &world
            .scientist
            .submit_job(&sid, DEMO_SQL, std::slice::from_ref(&hash))?,
        "a job",
    )?;
    if job.state != JobState::Succeeded {
        return Err(anyhow!(
            "the job failed: {}",
            job.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let schema: Vec<String> = job
        .schema
        .iter()
        .map(|(name, data_type)| format!("{name} {data_type}"))
        .collect();
    say(&format!(
        "    job {}: {} rows, schema ({}), resources {}",
        job.id,
        job.rows.unwrap_or_default(),
        schema.join(", "),
        serde_json::to_string(&job.resources)?
    ));

    say("==> 8. export: the gate checks the result");
    let export: ExportView = decode(&world.scientist.request_export(&job.id)?, "an export")?;
    let eid = export.id.clone();
    // The scientist reads which checks passed; the reviewers read their numbers too.
    let seen: ExportView = decode(
        &world
            .reviewer
            .ok("GET", &format!("/v1/exports/{eid}"), None)?,
        "an export",
    )?;
    for c in &seen.gate_report.checks {
        say(&format!(
            "    [{}] {}: {}",
            if c.passed { "pass" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    if export.state != ExportState::InReview {
        return Err(anyhow!(
            "the gate refused the export: {}",
            export.state.as_str()
        ));
    }

    say("==> 9. review: a reviewer of another org sees the masked preview and decides");
    for line in seen.preview.as_deref().unwrap_or_default().lines() {
        say(&format!("    | {line}"));
    }
    let reviewed: ExportView = decode(
        &world.reviewer.review_export(
            &eid,
            "approve",
            "aggregated per spot, groups under k suppressed, no identifiers: approved",
        )?,
        "an export",
    )?;
    say(&format!(
        "    decision: {} by {} (\"{}\")",
        reviewed.state.as_str(),
        world.reviewer_id,
        reviewed
            .reviews
            .first()
            .and_then(|r| r.comment.as_deref())
            .unwrap_or("")
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
    let audit: AuditAnswer = decode(
        &world.auditor.ok("GET", "/v1/audit/verify", None)?,
        "an audit verdict",
    )?;
    say(&format!(
        "    {} entries, {} signed checkpoint(s), first bad entry: {}",
        audit.entries,
        audit.checkpoints,
        audit.first_bad.map_or("none".to_string(), |b| format!(
            "{} ({})",
            b.entry, b.problem
        ))
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
