//! The command line: `init`, `serve`, `demo`, `verify`, `audit`, and one subcommand per role
//! that talks to a server (`--url`/`--token` or `TIDEGATE_URL`/`TIDEGATE_TOKEN`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tidegate_runtime::{EngineLimits, GuestLimits, JobMeter, MasterKey, Platform, Sandbox};

use crate::client::Client;
use crate::demo::{DemoOptions, run_demo};

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Tidegate: a sandbox runtime for public-data authorized operation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "TIDEGATE_URL",
        default_value = "http://127.0.0.1:7878",
        global = true
    )]
    url: String,
    /// Your bearer token.
    #[arg(long, env = "TIDEGATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

impl Remote {
    fn client(&self) -> Result<Client> {
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| anyhow!("no token: pass --token or set TIDEGATE_TOKEN"))?;
        Ok(Client::new(&self.url, Some(token)))
    }
}

#[derive(Args, Clone)]
struct KeyArgs {
    /// The data directory.
    #[arg(long, env = "TIDEGATE_DATA_DIR")]
    data_dir: PathBuf,
    /// The master key file (mode 0600, outside the data directory).
    #[arg(long, env = "TIDEGATE_MASTER_KEY_FILE")]
    master_key: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> Result<MasterKey> {
        if let Some(path) = &self.master_key {
            return Ok(MasterKey::load(path)?);
        }
        if let Ok(hex) = std::env::var("TIDEGATE_MASTER_KEY") {
            return Ok(MasterKey::from_hex(hex.trim())?);
        }
        bail!(
            "no master key: pass --master-key FILE, or set TIDEGATE_MASTER_KEY_FILE or TIDEGATE_MASTER_KEY"
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory, its master key and the first admin (prints the token once).
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to create the master key; never inside the data directory.
        #[arg(long)]
        master_key: PathBuf,
        #[arg(long, default_value = "admin")]
        admin_name: String,
    },
    /// Serve the HTTP API.
    Serve {
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        /// Jobs run at once; more wait in the queue, taken in turn by org.
        #[arg(long, default_value_t = crate::api::DEFAULT_WORKERS)]
        workers: usize,
        /// The server is reached over TLS (a proxy in front): the console's cookies are
        /// `Secure` and `__Host-` named.
        #[arg(long)]
        secure_cookies: bool,
    },
    /// Run the whole flow on a fresh data directory against a real local server.
    Demo {
        /// A fresh directory to use (a temporary one by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Rows of the synthetic dataset.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
    },
    /// Verify a release bundle offline with the platform's public key.
    Verify {
        bundle: PathBuf,
        /// The platform public key file (hex), e.g. DATA_DIR/platform.pub.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check the audit log's hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Orgs (admin).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Principals and training records (admin).
    Principal {
        #[command(subcommand)]
        command: PrincipalCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Datasets (provider).
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Scenario authorizations.
    Scenario {
        #[command(subcommand)]
        command: ScenarioCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// WASM modules: upload (scientist) and algorithm review (reviewer).
    Module {
        #[command(subcommand)]
        command: ModuleCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Jobs (scientist).
    Job {
        #[command(subcommand)]
        command: JobCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Export requests and bundles (scientist).
    Export {
        #[command(subcommand)]
        command: ExportCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Local development: run a job on local files with exactly the sandbox and limits of the
    /// platform.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Metering: prices (admin) and statements (admin, auditor, the org itself).
    Meter {
        #[command(subcommand)]
        command: MeterCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reports (admin, auditor, the org itself).
    Report {
        #[command(subcommand)]
        command: ReportCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Policy as code: export the scenarios' rules and prices; apply a changed document.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Master key operations on a stopped server's data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Review export requests (reviewer): the queue, and decisions.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// The export requests in review that you may decide now, oldest first.
    Queue {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Approve an export request (its result hash is bound to the approval).
    Approve {
        export: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Return an export request to its scientist, with what to change.
    Return {
        export: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject an export request.
    Reject {
        export: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Run a query over local CSV or Parquet files, calling the given modules' functions.
    Run {
        /// A module whose functions the query may call (repeatable).
        #[arg(long = "module")]
        modules: Vec<PathBuf>,
        /// NAME=FILE: a table for the query (repeatable).
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
        #[arg(long)]
        sql: String,
        /// Fuel budget of the job's guests.
        #[arg(long, default_value_t = GuestLimits::default().fuel)]
        fuel: u64,
        /// Memory cap per guest instance, in MiB.
        #[arg(long, default_value_t = GuestLimits::default().memory_bytes >> 20)]
        memory_mb: usize,
        /// Time limit of one guest call, in milliseconds.
        #[arg(long, default_value_t = GuestLimits::default().call_timeout_ms)]
        call_timeout_ms: u64,
        /// Memory of all the job's guest instances together, in MiB.
        #[arg(long, default_value_t = GuestLimits::default().job_memory_bytes >> 20)]
        job_memory_mb: usize,
        /// Rows of the result to print.
        #[arg(long, default_value_t = 50)]
        show: usize,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Write the current policy document (JSON) to stdout or --out.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show the difference a document makes and apply it as one new version.
    Apply {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-wrap every data key and the signing key under a new master key (created at
    /// --new-master-key); no data is re-encrypted. Safe to interrupt.
    Rotate {
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long)]
        new_master_key: PathBuf,
    },
    /// Unwrap every key and decrypt every object with the given master key.
    Check {
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// An org's annual report: JSON on stdout, and the readable page with --html FILE.
    Annual {
        #[arg(long)]
        org: String,
        #[arg(long)]
        year: i32,
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MeterCommand {
    /// An org's statement for a month, by scenario and category.
    Statement {
        #[arg(long)]
        org: String,
        /// YYYY-MM
        #[arg(long)]
        period: String,
        /// Count storage up to this RFC 3339 time instead of now.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Set a category's price in fen (0.01 yuan) per unit.
    Price { category: String, fen_per_unit: i64 },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the chain in a data directory; names the first bad entry.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// The platform public key (hex) to check checkpoint signatures with; keep a copy
        /// outside the data directory. Defaults to DATA_DIR/platform.pub.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Write the entries from..=to (sequence numbers or YYYY-MM-DD dates) with their
    /// checkpoints to a file an auditor can verify on its own.
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete sealed audit segments whose entries are all older than a date at least 180 days
    /// back (admin, through the server; the prune itself is audited).
    Prune {
        /// YYYY-MM-DD
        #[arg(long)]
        before: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Recompute an org's statement from the audit log alone, offline, after verifying it.
    Statement {
        #[arg(long)]
        data_dir: PathBuf,
        /// The org's id, as the log names it.
        #[arg(long)]
        org: String,
        /// YYYY-MM
        #[arg(long)]
        period: String,
        /// Count storage up to this RFC 3339 time (now by default).
        #[arg(long)]
        as_of: Option<String>,
        /// The platform public key (hex). Defaults to DATA_DIR/platform.pub.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Verify an exported slice offline.
    VerifySlice {
        file: PathBuf,
        /// The platform public key (hex) for the checkpoints' signatures.
        #[arg(long)]
        key: PathBuf,
    },
}

/// Which page of a list, filtered how.
#[derive(Args, Clone)]
struct ListArgs {
    /// Only items in this state (an export: in_review, returned, approved, rejected,
    /// released; a job: queued, running, succeeded, failed, cancelled; a module: awaiting,
    /// approved; a scenario: draft, pending_approvals, active, suspended, ...).
    #[arg(long)]
    state: Option<String>,
    /// Only items of this scenario.
    #[arg(long)]
    scenario: Option<String>,
    /// Items per page (1 to 200; 50 by default).
    #[arg(long)]
    limit: Option<usize>,
    /// The cursor a page before printed, for the next page.
    #[arg(long)]
    after: Option<String>,
    /// Print the page as JSON.
    #[arg(long)]
    json: bool,
}

impl ListArgs {
    fn query(&self, queue: bool) -> tidegate_runtime::ListQuery {
        tidegate_runtime::ListQuery {
            state: self.state.clone(),
            scenario: self.scenario.clone(),
            queue,
            limit: self.limit,
            after: self.after.clone(),
        }
    }
}

/// Prints a page of a list: a table of `columns` (header, field), or the JSON with `--json`,
/// and how to ask for the next page.
fn print_page(page: &Value, columns: &[(&str, &str)], args: &ListArgs) {
    if args.json {
        print(page);
        return;
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let cell = |item: &Value, field: &str| match &item[field] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(a) => a.len().to_string(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|(h, f)| {
            items
                .iter()
                .map(|i| cell(i, f).chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|(h, _)| h.to_string()).collect())
    );
    for item in &items {
        println!(
            "{}",
            line(columns.iter().map(|(_, f)| cell(item, f)).collect())
        );
    }
    if items.is_empty() {
        println!("(nothing)");
    }
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
}

const SCENARIO_COLUMNS: &[(&str, &str)] = &[
    ("scenario", "id"),
    ("state", "state"),
    ("name", "name"),
    ("org", "org"),
    ("term end", "term_end"),
    ("missing approvals", "missing_approvals"),
];

const MODULE_COLUMNS: &[(&str, &str)] = &[
    ("hash", "hash"),
    ("scenario", "scenario"),
    ("org", "org"),
    ("uploaded by", "uploaded_by"),
    ("functions", "functions"),
    ("approved by", "approved_by"),
    ("uploaded at", "uploaded_at"),
];

const EXPORT_COLUMNS: &[(&str, &str)] = &[
    ("export", "id"),
    ("state", "state"),
    ("scenario", "scenario"),
    ("org", "org"),
    ("requested by", "requested_by"),
    ("requested at", "requested_at"),
    ("approvals", "approvals"),
    ("of", "required_approvals"),
];

#[derive(Subcommand)]
enum OrgCommand {
    /// List every org (the authority's admins and auditors).
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Create an org of a kind: authority, provider or operator.
    Create {
        name: String,
        /// authority, provider or operator
        #[arg(long)]
        kind: String,
    },
    /// Freeze an org: every active scenario is suspended and its running jobs cancelled.
    Freeze { org: String },
    /// Lift a freeze: the scenarios it suspended run again.
    Unfreeze { org: String },
    /// End an org's authorization: revoke, close tokens, destroy its results and modules,
    /// and print the signed exit certificate.
    Exit {
        org: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum PrincipalCommand {
    /// List every principal, without secrets (the authority's admins and auditors).
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Create a principal; prints its token once.
    Create {
        name: String,
        #[arg(long)]
        org: String,
        /// scientist, admin, reviewer, provider or auditor (repeatable)
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Record that a principal passed training.
    Train {
        id: String,
        #[arg(long)]
        course: String,
    },
    /// Close a principal's token and print a new one (admin: anyone's; anyone: their own).
    Token { id: String },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Import a CSV or Parquet file as a new encrypted version.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        level: String,
        /// csv or parquet (from the file name when absent)
        #[arg(long)]
        format: Option<String>,
        /// NAME:TYPE:TAGS, e.g. resident_id:utf8:pii:resident_id,entity (TYPE may be empty)
        #[arg(long = "column")]
        columns: Vec<String>,
        /// An org whose approval every scenario using this dataset needs (repeatable), e.g.
        /// the province for data it returned.
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// List the datasets you may see, with their versions and columns.
    List,
    /// Approve an operating unit's social data (admin).
    Approve { id: String },
    /// Set a dataset's differential privacy budget (its provider): the epsilon all private
    /// scenarios together may draw from it, and the most one org may.
    Budget {
        id: String,
        #[arg(long)]
        total: f64,
        #[arg(long)]
        per_org: f64,
    },
    /// Before any import: the proposed tag and confidence of every column of a local file.
    Scan {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
enum ScenarioCommand {
    /// List the scenarios you may open.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// The scenarios pending approvals that you may approve now (admin, provider), oldest
    /// first.
    Queue {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Apply for a scenario.
    Apply {
        #[arg(long)]
        name: String,
        #[arg(long)]
        key_area: String,
        #[arg(long)]
        purpose: String,
        /// DATASET:COL1,COL2 (repeatable)
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        #[arg(long)]
        term_start: String,
        #[arg(long)]
        term_end: String,
        #[arg(long)]
        public_interest: bool,
        #[arg(long)]
        k: Option<u64>,
        #[arg(long = "product")]
        products: Vec<String>,
        /// COLUMN=RULE: how the gate desensitizes an output column (repeatable). RULE is mask,
        /// redact, pseudonymize, or a generalization: round:DECIMALS, band:WIDTH (30-39),
        /// month (YYYY-MM). Jobs can call `tg_pseudonym(x)` for the same keyed pseudonyms.
        #[arg(long = "mask")]
        masking: Vec<String>,
        /// Total differential privacy budget (epsilon) of the scenario's releases.
        #[arg(long)]
        privacy_budget: Option<f64>,
        /// With a privacy budget: each subject's contribution to a sum in one group is
        /// clamped to [-B, B] (sums are not released without it).
        #[arg(long)]
        contribution_bound: Option<f64>,
        /// With a privacy budget: a subject's rows counted per group (default 1).
        #[arg(long)]
        count_bound: Option<u64>,
        /// With a privacy budget: the groups of one result a subject counts in (default 1).
        #[arg(long)]
        max_groups_per_subject: Option<u64>,
        /// At most this many rows per export (tighter than the platform's limit).
        #[arg(long)]
        max_rows: Option<u64>,
        /// At most this many bytes per export (tighter than the platform's limit).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Keep it as a draft; `scenario submit` asks for the approvals.
        #[arg(long)]
        draft: bool,
    },
    /// Show a scenario: its grants, term, rules, approvals and state.
    Show { id: String },
    /// Submit a draft for approval (its org's scientist).
    Submit { id: String },
    /// Move the scenario's grant of a dataset to its newest version (the dataset's provider).
    Repin {
        id: String,
        #[arg(long)]
        dataset: String,
    },
    /// Approve as the admin or as a provider of a requested dataset.
    Approve { id: String },
    /// Risk stop (admin): the scenario runs and exports nothing; running jobs are cancelled.
    Suspend { id: String },
    /// Lift a suspension (admin).
    Resume { id: String },
    /// End the authorization for good (admin).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ModuleCommand {
    /// List the modules you may open (your org's; every org's for the authority).
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// The modules awaiting an algorithm review that you may give (reviewer), oldest first.
    Queue {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Validate a module locally: prints the report and its functions; fails if invalid.
    Inspect { file: PathBuf },
    /// Upload a module for a scenario (validated at once; runs on data once approved).
    Upload {
        file: PathBuf,
        #[arg(long)]
        scenario: String,
    },
    /// Show a module as its reviewer reads it: functions, structure, state, jobs and exports.
    Show {
        hash: String,
        #[arg(long)]
        scenario: String,
    },
    /// Download a module's bytes to read them.
    Download {
        hash: String,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a module's approval (the authority's reviewers and admins): its jobs stop and
    /// the exports computed with it are flagged.
    Revoke {
        hash: String,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        reason: String,
    },
    /// Approve a module's hash for a scenario after reading it (reviewer of another org).
    Approve {
        hash: String,
        #[arg(long)]
        scenario: String,
        /// What the functions compute.
        #[arg(long)]
        note: String,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// List your org's jobs (every org's for the authority), newest first.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Submit a job: a query over the scenario's granted tables with approved modules.
    Submit {
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        sql: String,
        /// Hash of an approved module the query calls (repeatable).
        #[arg(long = "module")]
        modules: Vec<String>,
        /// Answer with the queued job at once instead of waiting for its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show a job: its state, result schema and resources (never its rows).
    Show { id: String },
    /// Cancel a queued or running job (its unit's scientists, the authority's admins).
    Cancel { id: String },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// List your org's export requests (every org's for the authority), newest first.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Run the gate over a job's result and send it to review.
    Request {
        job: String,
        /// For a scenario with a privacy budget: the epsilon this release spends.
        #[arg(long)]
        epsilon: Option<f64>,
        /// The export a reviewer returned that this one answers (linked both ways).
        #[arg(long)]
        amends: Option<String>,
    },
    /// Show an export request: its state, gate report and review history.
    Show { id: String },
    /// Download an approved export's signed bundle.
    Download {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("json prints"));
}

fn parse_column(spec: &str) -> Result<Value> {
    // NAME[:TYPE[:TAGS]]; a type with parentheses (`timestamptz(us, +08:00)`) may hold colons.
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    if name.is_empty() {
        return Err(anyhow!("`{spec}`: a column spec starts with its name"));
    }
    let (data_type, tags) = match (rest.find('('), rest.find(')')) {
        (Some(open), Some(close)) if open < close && !rest[..open].contains(':') => {
            let after = &rest[close + 1..];
            let tags = match after.strip_prefix(':') {
                Some(t) => Some(t),
                None if after.is_empty() => None,
                None => return Err(anyhow!("`{spec}`: NAME:TYPE:TAGS")),
            };
            (Some(&rest[..=close]), tags)
        }
        _ => {
            let mut parts = rest.splitn(2, ':');
            (parts.next(), parts.next())
        }
    };
    let data_type = data_type.filter(|t| !t.is_empty());
    let tags = match tags {
        Some(t) => tidegate_policy::parse_tags(t).map_err(|e| anyhow!(e))?,
        None => Vec::new(),
    };
    // The names users type (`string`, `integer`, `double`, `date`...) go as the canonical one.
    let data_type = data_type
        .map(|t| {
            t.parse::<tidegate_policy::DataType>()
                .map_err(|e| anyhow!(e))
        })
        .transpose()?;
    Ok(json!({ "name": name, "data_type": data_type, "tags": tags }))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            master_key,
            admin_name,
        } => {
            let (platform, token) = Platform::init(&data_dir, &master_key, &admin_name)?;
            print(&json!({
                "data_dir": data_dir,
                "master_key": master_key,
                "public_key": platform.dir().join(tidegate_runtime::PUBLIC_KEY_FILE),
                "admin_token": token,
                "note": "the admin token is shown once; keep it"
            }));
        }
        Command::Serve {
            keys,
            listen,
            workers,
            secure_cookies,
        } => {
            let platform = Arc::new(Platform::open(&keys.data_dir, keys.load()?)?);
            platform.start_workers(workers)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .thread_stack_size(8 << 20)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!(
                    "tidegate: serving {} on http://{}",
                    keys.data_dir.display(),
                    listener.local_addr()?
                );
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                axum::serve(
                    listener,
                    crate::api::router_with(Arc::clone(&platform), secure_cookies),
                )
                .with_graceful_shutdown(shutdown)
                .await?;
                // A signed checkpoint at shutdown: truncation is detectable up to here.
                platform.checkpoint()?;
                eprintln!("tidegate: stopped; audit checkpoint written");
                anyhow::Ok(())
            })?;
        }
        Command::Demo { data_dir, rows } => {
            run_demo(&DemoOptions {
                data_dir,
                rows,
                quiet: false,
            })?;
        }
        Command::Verify { bundle, key } => {
            let key =
                std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let v = tidegate_runtime::verify_bundle(&bundle, &key)?;
            println!(
                "bundle verified: signature valid; files {:?} match the signed manifest",
                v.files
            );
            println!(
                "export {}, scenario {}",
                v.manifest["export"], v.manifest["scenario"]["id"]
            );
        }
        Command::Audit {
            command: AuditCommand::Verify { data_dir, key },
        } => {
            let key_path = key.unwrap_or_else(|| data_dir.join(tidegate_runtime::PUBLIC_KEY_FILE));
            let key = read_public_key(&key_path)?;
            let log = data_dir.join(tidegate_runtime::AUDIT_FILE);
            let v = tidegate_runtime::verify_audit_file(&log, Some(&key))?;
            match v.first_bad {
                None => println!(
                    "audit log verified: {} entries, {} signed checkpoints, head {}",
                    v.entries, v.checkpoints, v.head
                ),
                Some((n, why)) => bail!(
                    "audit log broken at entry {n}: {why} ({} entries before it verify)",
                    v.entries
                ),
            }
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    data_dir,
                    from,
                    to,
                    out,
                },
        } => {
            let log = data_dir.join(tidegate_runtime::AUDIT_FILE);
            let slice = tidegate_runtime::export_audit_slice(&log, &from, &to)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&slice)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "{} entries and {} signed checkpoints written to {}",
                slice.entries.len(),
                slice.checkpoints.len(),
                out.display()
            );
        }
        Command::Audit {
            command:
                AuditCommand::Statement {
                    data_dir,
                    org,
                    period,
                    as_of,
                    key,
                },
        } => {
            let key_path = key.unwrap_or_else(|| data_dir.join(tidegate_runtime::PUBLIC_KEY_FILE));
            let key = read_public_key(&key_path)?;
            let entries = tidegate_runtime::read_audit_log(
                &data_dir.join(tidegate_runtime::AUDIT_FILE),
                Some(&key),
            )?;
            let ledger = tidegate_runtime::ledger_from_audit(&entries)?;
            let as_of = match as_of {
                Some(t) => {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .with_context(|| format!("`{t}` is not an RFC 3339 time"))?
                }
                None => time::OffsetDateTime::now_utc(),
            };
            print(&tidegate_runtime::statement_from_ledger(
                &ledger, &org, &period, as_of,
            )?);
        }
        Command::Audit {
            command: AuditCommand::Prune { before, remote },
        } => print(&remote.client()?.prune_audit(&before)?),
        Command::Audit {
            command: AuditCommand::VerifySlice { file, key },
        } => {
            let slice: tidegate_runtime::AuditSlice = serde_json::from_slice(
                &std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
            )
            .context("not an audit slice")?;
            let key = read_public_key(&key)?;
            let (entries, checkpoints) = tidegate_runtime::verify_audit_slice(&slice, Some(&key))?;
            println!("audit slice verified: {entries} entries, {checkpoints} signed checkpoints");
        }
        Command::Org { command, remote } => match command {
            OrgCommand::List { list } => print_page(
                &remote.client()?.list("/v1/orgs", &list.query(false))?,
                &[("org", "id"), ("name", "name"), ("kind", "kind")],
                &list,
            ),
            OrgCommand::Create { name, kind } => print(&remote.client()?.create_org(&name, &kind)?),
            OrgCommand::Freeze { org } => print(&remote.client()?.freeze_org(&org, true)?),
            OrgCommand::Unfreeze { org } => print(&remote.client()?.freeze_org(&org, false)?),
            OrgCommand::Exit { org, reason } => print(&remote.client()?.exit_org(&org, &reason)?),
        },
        Command::Principal { command, remote } => match command {
            PrincipalCommand::List { list } => print_page(
                &remote
                    .client()?
                    .list("/v1/principals", &list.query(false))?,
                &[
                    ("principal", "id"),
                    ("name", "name"),
                    ("org", "org"),
                    ("roles", "roles"),
                    ("trained", "trained"),
                ],
                &list,
            ),
            PrincipalCommand::Create { name, org, roles } => {
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                print(&remote.client()?.create_principal(&name, &org, &roles)?);
            }
            PrincipalCommand::Token { id } => print(&remote.client()?.rotate_token(&id)?),
            PrincipalCommand::Train { id, course } => {
                print(&remote.client()?.record_training(&id, &course)?)
            }
        },
        Command::Dataset { command, remote } => match command {
            DatasetCommand::Import {
                file,
                name,
                level,
                format,
                columns,
                approvers,
            } => {
                // Checked here, before a file of any size is read and sent.
                let level: tidegate_policy::Level = level
                    .to_ascii_uppercase()
                    .parse()
                    .map_err(|e: String| anyhow!("--level {level}: {e}"))?;
                let data = std::fs::File::open(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let size = data.metadata().map(|m| m.len()).unwrap_or(0);
                let format = format.unwrap_or_else(|| guess_format(&file));
                let columns: Vec<Value> = columns
                    .iter()
                    .map(|c| parse_column(c))
                    .collect::<Result<_>>()?;
                eprintln!("importing {} ({size} bytes, streamed)...", file.display());
                let req = json!({ "name": name, "level": level, "format": format, "columns": columns, "approvers": approvers });
                // Bytes and rate while the file goes; the server reads it once it has all
                // arrived, and the answer says how many rows it held.
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(size),
                    indicatif::ProgressDrawTarget::stderr(),
                )
                .with_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
                    )
                    .expect("the template is valid"),
                );
                let mut sent = bar.wrap_read(data);
                let client = remote.client()?;
                let answer = client.upload_dataset(&req, &mut sent);
                bar.finish_and_clear();
                let answer = answer?;
                if let Some(rows) = answer["rows"].as_i64() {
                    eprintln!(
                        "imported {rows} rows ({size} bytes in {:.1} s)",
                        bar.elapsed().as_secs_f64()
                    );
                }
                print(&answer);
            }
            DatasetCommand::List => print(&remote.client()?.ok("GET", "/v1/datasets", None)?),
            DatasetCommand::Approve { id } => print(&remote.client()?.approve_dataset(&id)?),
            DatasetCommand::Budget { id, total, per_org } => {
                print(&remote.client()?.set_dataset_budget(&id, total, per_org)?)
            }
            DatasetCommand::Scan { file, json } => scan(&file, json)?,
        },
        Command::Scenario { command, remote } => {
            let c = remote.client()?;
            match command {
                ScenarioCommand::List { list } => print_page(
                    &c.list("/v1/scenarios", &list.query(false))?,
                    SCENARIO_COLUMNS,
                    &list,
                ),
                ScenarioCommand::Queue { list } => print_page(
                    &c.list("/v1/scenarios", &list.query(true))?,
                    SCENARIO_COLUMNS,
                    &list,
                ),
                ScenarioCommand::Apply {
                    name,
                    key_area,
                    purpose,
                    grants,
                    term_start,
                    term_end,
                    public_interest,
                    k,
                    products,
                    masking,
                    privacy_budget,
                    contribution_bound,
                    count_bound,
                    max_groups_per_subject,
                    max_rows,
                    max_bytes,
                    draft,
                } => {
                    let mut rules = serde_json::Map::new();
                    let masks: serde_json::Map<String, Value> = masking
                        .iter()
                        .map(|m| {
                            let (col, rule) = m.split_once('=').ok_or_else(|| {
                                anyhow!("`{m}`: a masking rule is COLUMN=RULE (mask, redact, pseudonymize, round:N, band:W, month)")
                            })?;
                            Ok((col.to_string(), json!(rule)))
                        })
                        .collect::<Result<_>>()?;
                    if !masks.is_empty() {
                        rules.insert("masking".into(), Value::Object(masks));
                    }
                    for (key, value) in [
                        ("privacy_budget", json!(privacy_budget)),
                        ("contribution_bound", json!(contribution_bound)),
                        ("count_bound", json!(count_bound)),
                        ("max_groups_per_subject", json!(max_groups_per_subject)),
                        ("max_rows", json!(max_rows)),
                        ("max_bytes", json!(max_bytes)),
                    ] {
                        if !value.is_null() {
                            rules.insert(key.into(), value);
                        }
                    }
                    let grants: Vec<Value> = grants
                        .iter()
                        .map(|g| {
                            let (ds, cols) = g.split_once(':').ok_or_else(|| anyhow!("`{g}`: a grant is DATASET:COL1,COL2"))?;
                            Ok(json!({ "dataset": ds, "columns": cols.split(',').map(str::trim).collect::<Vec<_>>() }))
                        })
                        .collect::<Result<_>>()?;
                    print(&c.apply_scenario(&json!({
                        "name": name, "key_area": key_area, "purpose": purpose, "public_interest": public_interest,
                        "grants": grants, "term_start": term_start, "term_end": term_end, "k": k, "planned_products": products,
                        "export_rules": rules, "draft": draft,
                    }))?);
                }
                ScenarioCommand::Show { id } => {
                    print(&c.ok("GET", &format!("/v1/scenarios/{id}"), None)?)
                }
                ScenarioCommand::Approve { id } => print(&c.approve_scenario(&id)?),
                ScenarioCommand::Submit { id } => print(&c.change_scenario(&id, "submit")?),
                ScenarioCommand::Repin { id, dataset } => print(&c.repin_grant(&id, &dataset)?),
                ScenarioCommand::Suspend { id } => print(&c.change_scenario(&id, "suspend")?),
                ScenarioCommand::Resume { id } => print(&c.change_scenario(&id, "resume")?),
                ScenarioCommand::Revoke { id } => print(&c.change_scenario(&id, "revoke")?),
            }
        }
        Command::Module { command, remote } => {
            let c = || remote.client();
            match command {
                ModuleCommand::Inspect { file } => inspect(&file)?,
                ModuleCommand::Show { hash, scenario } => {
                    print(&c()?.get_module(&scenario, &hash)?);
                }
                ModuleCommand::Download {
                    hash,
                    scenario,
                    out,
                } => {
                    let bytes = c()?.module_bytes(&scenario, &hash)?;
                    // The bytes are the approved hash's, or nothing is written.
                    if tidegate_runtime::sha256_hex(&bytes) != hash {
                        return Err(anyhow!("the server's bytes do not have the hash {hash}"));
                    }
                    std::fs::write(&out, &bytes)
                        .with_context(|| format!("cannot write {}", out.display()))?;
                    println!("{} bytes: {}", bytes.len(), out.display());
                }
                ModuleCommand::Revoke {
                    hash,
                    scenario,
                    reason,
                } => print(&c()?.revoke_module(&scenario, &hash, &reason)?),
                ModuleCommand::List { list } => print_page(
                    &c()?.list("/v1/modules", &list.query(false))?,
                    MODULE_COLUMNS,
                    &list,
                ),
                ModuleCommand::Queue { list } => print_page(
                    &c()?.list("/v1/modules", &list.query(true))?,
                    MODULE_COLUMNS,
                    &list,
                ),
                ModuleCommand::Upload { file, scenario } => {
                    let wasm = std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    print(&c()?.upload_module(&scenario, &wasm)?);
                }
                ModuleCommand::Approve {
                    hash,
                    scenario,
                    note,
                } => print(&c()?.approve_module(&scenario, &hash, &note)?),
            }
        }
        Command::Job { command, remote } => {
            let c = remote.client()?;
            match command {
                JobCommand::List { list } => print_page(
                    &c.list("/v1/jobs", &list.query(false))?,
                    &[
                        ("job", "id"),
                        ("state", "state"),
                        ("scenario", "scenario"),
                        ("submitted by", "submitted_by"),
                        ("created at", "created_at"),
                        ("finished at", "finished_at"),
                    ],
                    &list,
                ),
                JobCommand::Submit {
                    scenario,
                    sql,
                    modules,
                    no_wait,
                } => {
                    let queued = c.enqueue_job(&scenario, &sql, &modules)?;
                    if no_wait {
                        print(&queued);
                    } else {
                        let id = queued["id"].as_str().unwrap_or_default().to_string();
                        let spinner = indicatif::ProgressBar::with_draw_target(
                            None,
                            indicatif::ProgressDrawTarget::stderr(),
                        );
                        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                        let done = c.wait_job(&id, &mut |job| {
                            spinner.set_message(format!(
                                "job {id}: {}",
                                job["state"].as_str().unwrap_or("?")
                            ));
                        });
                        spinner.finish_and_clear();
                        print(&done?);
                    }
                }
                JobCommand::Show { id } => print(&c.ok("GET", &format!("/v1/jobs/{id}"), None)?),
                JobCommand::Cancel { id } => print(&c.cancel_job(&id)?),
            }
        }
        Command::Export { command, remote } => {
            let c = remote.client()?;
            match command {
                ExportCommand::List { list } => print_page(
                    &c.list("/v1/exports", &list.query(false))?,
                    EXPORT_COLUMNS,
                    &list,
                ),
                ExportCommand::Request {
                    job,
                    epsilon,
                    amends,
                } => print(&c.request_export_with(&job, epsilon, amends.as_deref())?),
                ExportCommand::Show { id } => {
                    print(&c.ok("GET", &format!("/v1/exports/{id}"), None)?)
                }
                ExportCommand::Download { id, out } => {
                    c.download_bundle(&id, &out)?;
                    println!("bundle: {}", out.display());
                }
            }
        }
        Command::Dev {
            command:
                DevCommand::Run {
                    modules,
                    tables,
                    sql,
                    fuel,
                    memory_mb,
                    call_timeout_ms,
                    job_memory_mb,
                    show,
                },
        } => {
            let limits = GuestLimits {
                fuel,
                memory_bytes: memory_mb << 20,
                call_timeout_ms,
                job_memory_bytes: job_memory_mb << 20,
                ..GuestLimits::default()
            };
            dev_run(&modules, &tables, &sql, limits, show)?;
        }
        Command::Report {
            command: ReportCommand::Annual { org, year, html },
            remote,
        } => {
            let report = remote.client()?.annual_report(&org, year)?;
            if let Some(path) = html {
                std::fs::write(&path, crate::report::annual_report_html(&report))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("report page: {}", path.display());
            }
            print(&report);
        }
        Command::Policy { command, remote } => {
            let c = remote.client()?;
            match command {
                PolicyCommand::Export { out } => {
                    let doc = c.export_policy()?;
                    match out {
                        Some(path) => {
                            std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
                                .with_context(|| format!("cannot write {}", path.display()))?;
                            println!(
                                "policy version {} written to {}",
                                doc["version"],
                                path.display()
                            );
                        }
                        None => print(&doc),
                    }
                }
                PolicyCommand::Apply { file, dry_run } => {
                    let doc: Value = serde_json::from_slice(
                        &std::fs::read(&file)
                            .with_context(|| format!("cannot read {}", file.display()))?,
                    )
                    .context("the policy document is not JSON")?;
                    print(&c.apply_policy(&doc, dry_run)?);
                }
            }
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    keys,
                    new_master_key,
                },
        } => {
            let n = Platform::rotate_master_key(&keys.data_dir, keys.load()?, &new_master_key)?;
            println!(
                "{n} data keys and the signing key re-wrapped under {}; keep the old key until a backup of this state exists",
                new_master_key.display()
            );
        }
        Command::Keys {
            command: KeysCommand::Check { keys },
        } => {
            let platform = Platform::open(&keys.data_dir, keys.load()?)?;
            println!(
                "{} objects decrypt with this master key",
                platform.verify_storage()?
            );
        }
        Command::Meter { command, remote } => {
            let c = remote.client()?;
            match command {
                MeterCommand::Statement { org, period, as_of } => print(&match as_of {
                    Some(t) => c.statement_as_of(&org, &period, &t)?,
                    None => c.statement(&org, &period)?,
                }),
                MeterCommand::Price {
                    category,
                    fen_per_unit,
                } => print(&c.set_price(&category, fen_per_unit)?),
            }
        }
        Command::Review { command, remote } => {
            let c = remote.client()?;
            let (decision, export, comment) = match command {
                ReviewCommand::Queue { list } => {
                    let page = c.list("/v1/exports", &list.query(true))?;
                    print_page(&page, EXPORT_COLUMNS, &list);
                    return Ok(());
                }
                ReviewCommand::Approve { export, comment } => ("approve", export, comment),
                ReviewCommand::Return { export, comment } => ("return", export, comment),
                ReviewCommand::Reject { export, comment } => ("reject", export, comment),
            };
            print(&c.review_export(&export, decision, &comment)?);
        }
    }
    Ok(())
}

fn scan(file: &Path, as_json: bool) -> Result<()> {
    let report = scan_report(file)?;
    if as_json {
        print(&Value::Array(report));
    } else {
        println!(
            "{:<24} {:<10} {:<28} {:>10}  why",
            "column", "type", "proposed tags", "confidence"
        );
        for r in &report {
            let tags: Vec<&str> = r["proposed_tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "{:<24} {:<10} {:<28} {:>10}  {}",
                r["column"].as_str().unwrap_or(""),
                r["type"].as_str().unwrap_or(""),
                if tags.is_empty() {
                    "-".to_string()
                } else {
                    tags.join(",")
                },
                r["confidence"],
                r["why"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// The platform public key from a hex file.
fn read_public_key(path: &Path) -> Result<Vec<u8>> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|k| hex::decode(k.trim()).ok())
        .ok_or_else(|| anyhow!("cannot read a hex public key from {}", path.display()))
}

/// Proposes tags for every column of a local file from a sample of up to 1,000 values: one
/// JSON object per column with `column`, `type`, `proposed_tags`, `confidence`, `sampled`, `why`.
pub fn scan_report(file: &Path) -> Result<Vec<Value>> {
    use std::collections::HashSet;
    let table = tidegate_runtime::local_table("scan", file)?;
    let tidegate_runtime::TableData::Memory(batches) = &table.data else {
        bail!("{} was not read into memory", file.display());
    };
    let mut report = Vec::new();
    for (i, column) in table.columns.iter().enumerate() {
        let mut values = Vec::new();
        let mut distinct = HashSet::new();
        let mut rows = 0usize;
        for b in batches {
            let a = b.column(i);
            rows += a.len();
            for r in 0..a.len() {
                if a.is_null(r) {
                    continue;
                }
                let v = arrow::util::display::array_value_to_string(a, r)?;
                if distinct.len() <= 1_000 {
                    distinct.insert(v.clone());
                }
                if values.len() < 1_000 {
                    values.push(v);
                }
            }
        }
        let p = tidegate_policy::propose_tag_for(&column.name, values.iter().map(String::as_str));
        let (tags, confidence, why) = match (&p.tag, &column.data_type) {
            (Some(t), _) if t == "pii:resident_id" => (
                vec![t.clone(), "entity".into()],
                p.confidence,
                "resident ID numbers; the natural subject key",
            ),
            (Some(t), _) if p.by_name => (
                vec![t.clone()],
                p.confidence,
                "the column's name (its values show no context)",
            ),
            (Some(t), _) => (
                vec![t.clone()],
                p.confidence,
                "values of a sensitive data type",
            ),
            (None, t) if t.is_temporal() => (
                vec!["quasi".into()],
                0.5,
                "dates and times (birth, visit) are quasi-identifiers",
            ),
            (None, tidegate_policy::DataType::Utf8)
                if distinct.len() <= 100 && rows >= 10 * distinct.len() =>
            {
                (
                    vec!["dimension".into()],
                    0.5,
                    "few distinct values: a group-by key",
                )
            }
            (None, _) => (vec![], 0.0, "nothing found"),
        };
        report.push(json!({
            "column": column.name,
            "type": column.data_type,
            "proposed_tags": tags,
            "confidence": (confidence * 100.0).round() / 100.0,
            "sampled": p.sampled,
            "why": why,
        }));
    }
    Ok(report)
}

fn inspect(file: &Path) -> Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sandbox = Sandbox::new()?;
    let module = sandbox
        .load(&wasm)
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    println!("{}: valid Tidegate module (ABI version 1)", file.display());
    println!("sha256: {}", module.hash);
    println!("size: {} bytes", wasm.len());
    println!("imports: none");
    println!("functions:");
    for f in &module.functions {
        let args: Vec<String> = f
            .args
            .iter()
            .map(|a| format!("{a:?}").to_ascii_lowercase())
            .collect();
        // What the function gives: a value (and an aggregate's state), or a table's rows.
        let gives = if f.columns.is_empty() {
            let state: Vec<&str> = f.state.iter().map(|t| t.name()).collect();
            let state = if state.is_empty() {
                String::new()
            } else {
                format!(" (state: {})", state.join(", "))
            };
            format!("{}{state}", f.ret.name())
        } else {
            let cols: Vec<String> = f
                .columns
                .iter()
                .map(|(n, t)| format!("{n} {}", t.name()))
                .collect();
            format!("({})", cols.join(", "))
        };
        println!("  {} {}({}) -> {gives}", f.kind, f.name, args.join(", "));
    }
    Ok(())
}

fn dev_run(
    modules: &[PathBuf],
    tables: &[String],
    sql: &str,
    limits: GuestLimits,
    show: usize,
) -> Result<()> {
    let sandbox = Arc::new(Sandbox::new()?);
    let meter = Arc::new(JobMeter::new(limits));
    let mut udfs = tidegate_runtime::Functions::default();
    for m in modules {
        let wasm = std::fs::read(m).with_context(|| format!("cannot read {}", m.display()))?;
        let module = sandbox
            .load(&wasm)
            .map_err(|e| anyhow!("{}: {e}", m.display()))?;
        udfs.extend(sandbox.udfs(&module, &meter));
    }
    // The runtime's own functions exist here too: a job is a job wherever it runs. Local
    // pseudonyms use a key made for this run alone.
    udfs.scalars
        .extend(tidegate_runtime::desensitization_udfs());
    udfs.scalars.push(tidegate_runtime::pseudonym_udf(
        tidegate_runtime::DataKey::generate().pseudonym_key("dev-run"),
    ));
    let mut inputs = Vec::new();
    for t in tables {
        let (name, path) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("`{t}`: a table is NAME=FILE"))?;
        inputs.push(tidegate_runtime::local_table(name, Path::new(path))?);
    }
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    let out = rt.block_on(tidegate_runtime::run_query(
        sql,
        &inputs,
        udfs,
        EngineLimits::default(),
    ))?;
    let wall = started.elapsed();
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = show;
    for b in &out.batches {
        if left == 0 {
            break;
        }
        let keep: Vec<usize> = (0..b.num_columns())
            .filter(|i| !b.schema().field(*i).name().starts_with("__tg"))
            .collect();
        let b = b.project(&keep)?;
        let take = left.min(b.num_rows());
        shown.push(b.slice(0, take));
        left -= take;
    }
    // Values a module computed are its text: written out, never obeyed by the terminal.
    let table = arrow::util::pretty::pretty_format_batches(&shown)?.to_string();
    for line in table.lines() {
        println!("{}", tidegate_runtime::defuse(line, 1 << 20));
    }
    println!("rows: {rows} (showing {})", rows.min(show));
    println!(
        "resources: fuel {}, guest calls {}, peak guest memory {} bytes, guest output {} bytes, wall {} ms",
        meter.fuel_used(),
        meter.calls(),
        meter.peak_memory(),
        meter.output_bytes(),
        wall.as_millis()
    );
    Ok(())
}

fn guess_format(file: &Path) -> String {
    match file.extension().and_then(|e| e.to_str()) {
        Some("parquet") | Some("pq") => "parquet".into(),
        _ => "csv".into(),
    }
}

/// Parses `args` and runs the command; errors are printed, never panicked.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An error may quote a module's or a server's text: written out, never obeyed by
            // the terminal, and cut short.
            let text = format!("{e:#}");
            let lines: Vec<String> = text
                .lines()
                .take(50)
                .map(|l| tidegate_runtime::defuse(l, 2_000))
                .collect();
            eprintln!("tidegate: {}", lines.join("\n"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_column;
    use serde_json::json;

    #[test]
    fn a_column_spec_is_name_type_tags_and_a_type_may_hold_commas_and_colons() {
        let cases = [
            (
                "spot",
                json!({ "name": "spot", "data_type": null, "tags": [] }),
            ),
            (
                "spot::dimension",
                json!({ "name": "spot", "data_type": null, "tags": ["dimension"] }),
            ),
            (
                "spend:double:sensitive",
                json!({ "name": "spend", "data_type": "float64", "tags": ["sensitive"] }),
            ),
            (
                "price:decimal(12,2)",
                json!({ "name": "price", "data_type": "decimal(12,2)", "tags": [] }),
            ),
            (
                "paid_at:timestamptz(us, +08:00):quasi",
                json!({ "name": "paid_at", "data_type": "timestamptz(us, +08:00)", "tags": ["quasi"] }),
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(parse_column(spec).unwrap(), expected, "{spec}");
        }
        for bad in [
            ":utf8",
            "at:timestamptz(us, +08:00)x",
            "price:decimal(40,2)",
            "x:money",
        ] {
            assert!(parse_column(bad).is_err(), "{bad}");
        }
    }
}
