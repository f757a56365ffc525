//! The command line: `init`, `serve`, `demo`, `verify`, `audit`, and one subcommand per role
//! that talks to a server (`--url`/`--token` or `TIDEGATE_URL`/`TIDEGATE_TOKEN`). Each command
//! group is a module with its clap definitions and the `run` that carries them out; this one
//! holds the top-level command and its dispatch.

mod alerts;
mod audit;
mod cluster;
mod dataset;
mod dev;
mod export;
mod job;
mod keys;
mod list;
mod meter;
mod module;
mod org;
mod policy;
mod principal;
mod report;
mod review;
mod scenario;
mod server;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::demo::{DemoOptions, run_demo};

pub use dataset::scan_report;

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
        keys: keys::KeyArgs,
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        /// Jobs run at once; more wait in the queue, taken in turn by org.
        #[arg(long, default_value_t = crate::api::DEFAULT_WORKERS)]
        workers: usize,
        /// The server is reached over TLS (a proxy in front): the console's cookies are
        /// `Secure` and `__Host-` named.
        #[arg(long)]
        secure_cookies: bool,
        /// Send the spans of requests and jobs to an OpenTelemetry collector at this http://
        /// URL (OTLP over HTTP, JSON; `/v1/traces` is added). Off when not named.
        #[arg(long, env = "TIDEGATE_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
        /// Run jobs' inputs on the Ballista cluster whose scheduler is at HOST:PORT (started
        /// by `tidegate scheduler`, with executors started by `tidegate executor`).
        #[arg(long, requires = "cluster_secret")]
        cluster: Option<String>,
        /// The cluster's secret file (the scheduler makes it; mode 0600).
        #[arg(long)]
        cluster_secret: Option<PathBuf>,
    },
    /// Run a Ballista scheduler for a cluster of executors inside the domain.
    Scheduler {
        #[arg(long, default_value = "127.0.0.1:50050")]
        listen: String,
        /// The cluster's secret file: made here (mode 0600) when there is none; every
        /// executor and `serve --cluster` must be given the same file.
        #[arg(long)]
        secret: PathBuf,
    },
    /// Run a Ballista executor: it reads the platform's data directory (read-only) with the
    /// master key, runs job tasks the scheduler hands it, and writes only sealed shuffle files.
    Executor {
        #[command(flatten)]
        keys: keys::KeyArgs,
        /// The scheduler, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// The cluster's secret file (the scheduler's).
        #[arg(long)]
        secret: PathBuf,
        /// Its work directory (sealed shuffle files; made mode 0700).
        #[arg(long)]
        work_dir: PathBuf,
        /// Where its shuffle service listens.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The host other members reach it by (needed when it listens on every address).
        #[arg(long)]
        advertise: Option<String>,
        /// The most engine memory all the jobs' tasks on it hold together, in MiB (each job
        /// holds at most its own budget of it).
        #[arg(long, default_value_t = tidegate_runtime::DEFAULT_EXECUTOR_MEMORY_MIB)]
        memory_mib: u64,
    },
    /// Run the whole flow on a fresh data directory against a real local server.
    Demo {
        /// A fresh directory to use (a temporary one by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Rows of the synthetic dataset.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Run the jobs' inputs on a Ballista cluster in this process (a scheduler and two
        /// executors on loopback).
        #[arg(long)]
        cluster: bool,
    },
    /// Verify a release bundle offline with the platform's public key.
    Verify {
        bundle: PathBuf,
        /// The platform public key file (hex), e.g. DATA_DIR/platform.pub.
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify a signed document of the platform offline (a copy of the public record from
    /// `GET /public/record.json`, an exit certificate, a closing receipt: JSON with the signed
    /// value and its `signature`) with the platform's public key.
    VerifySigned {
        file: PathBuf,
        /// The platform public key file (hex), e.g. DATA_DIR/platform.pub.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check the audit log's hash chain.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Orgs (admin).
    Org {
        #[command(subcommand)]
        command: org::OrgCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Principals and training records (admin).
    Principal {
        #[command(subcommand)]
        command: principal::PrincipalCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Datasets (provider).
    Dataset {
        #[command(subcommand)]
        command: dataset::DatasetCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Scenario authorizations.
    Scenario {
        #[command(subcommand)]
        command: scenario::ScenarioCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// WASM modules: upload (scientist) and algorithm review (reviewer).
    Module {
        #[command(subcommand)]
        command: module::ModuleCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Jobs (scientist).
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Export requests and bundles (scientist).
    Export {
        #[command(subcommand)]
        command: export::ExportCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Local development: run a job on local files with exactly the sandbox and limits of the
    /// platform.
    Dev {
        #[command(subcommand)]
        command: dev::DevCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Metering: prices (admin) and statements (admin, auditor, the org itself).
    Meter {
        #[command(subcommand)]
        command: meter::MeterCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reports (admin, auditor, the org itself).
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Policy as code: export the scenarios' rules and prices; apply a changed document.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Master key operations on a stopped server's data directory.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Review export requests (reviewer): the queue, and decisions.
    Review {
        #[command(subcommand)]
        command: review::ReviewCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The authority's alerts: list, acknowledge, where they go (admin, auditor).
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Your own training state (what a principal without a current training may still read).
    Me {
        #[command(flatten)]
        remote: Remote,
    },
}

/// Prints an answer of the server or the platform as JSON, pretty.
fn print<T: serde::Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("json prints"));
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            master_key,
            admin_name,
        } => server::init(&data_dir, &master_key, &admin_name),
        Command::Serve {
            keys,
            listen,
            workers,
            secure_cookies,
            otlp_endpoint: _,
            cluster,
            cluster_secret,
        } => server::serve(
            &keys,
            &listen,
            workers,
            secure_cookies,
            cluster.zip(cluster_secret),
        ),
        Command::Scheduler { listen, secret } => cluster::scheduler(&listen, &secret),
        Command::Executor {
            keys,
            scheduler,
            secret,
            work_dir,
            listen,
            advertise,
            memory_mib,
        } => cluster::executor(cluster::Executor {
            keys: &keys,
            scheduler,
            listen,
            advertise,
            work: work_dir,
            secret,
            memory_mib,
        }),
        Command::Demo {
            data_dir,
            rows,
            cluster,
        } => {
            run_demo(&DemoOptions {
                data_dir,
                rows,
                quiet: false,
                cluster,
            })?;
            Ok(())
        }
        Command::Verify { bundle, key } => export::verify(&bundle, &key),
        Command::VerifySigned { file, key } => audit::verify_signed(&file, &key),
        Command::Audit { command } => audit::run(command),
        Command::Org { command, remote } => org::run(command, &remote),
        Command::Principal { command, remote } => principal::run(command, &remote),
        Command::Dataset { command, remote } => dataset::run(command, &remote),
        Command::Scenario { command, remote } => scenario::run(command, &remote),
        Command::Module { command, remote } => module::run(command, &remote),
        Command::Job { command, remote } => job::run(command, &remote),
        Command::Export { command, remote } => export::run(command, &remote),
        Command::Dev { command, remote } => dev::run(command, &remote),
        Command::Meter { command, remote } => meter::run(command, &remote),
        Command::Report { command, remote } => report::run(command, &remote),
        Command::Policy { command, remote } => policy::run(command, &remote),
        Command::Keys { command } => keys::run(command),
        Command::Review { command, remote } => review::run(command, &remote),
        Command::Alerts { command, remote } => alerts::run(command, &remote),
        Command::Me { remote } => {
            print(&remote.client()?.me()?);
            Ok(())
        }
    }
}

/// Parses `args` and runs the command; errors are printed, never panicked.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
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
    let endpoint = match &cli.command {
        Command::Serve { otlp_endpoint, .. } => otlp_endpoint.clone(),
        _ => None,
    };
    // Kept until the command ends: dropping it sends the spans that wait.
    let _tracing = match crate::otel::install(endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tidegate: {e:#}");
            return ExitCode::FAILURE;
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
