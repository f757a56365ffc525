//! `tidegate scheduler` and `tidegate executor`: a Ballista cluster of processes inside the
//! domain, which `tidegate serve --cluster` sends jobs' inputs to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tidegate_runtime::{ExecutorJobs, ExecutorOptions};

use super::keys::KeyArgs;

/// A runtime for a cluster's process, until interrupted.
fn until_interrupted(
    start: impl std::future::Future<Output = Result<()>>,
    what: &str,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    rt.block_on(async {
        start.await?;
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("tidegate: {what} stopped");
        anyhow::Ok(())
    })
}

/// Runs Ballista's scheduler on `listen`; the cluster's secret is made at `secret` when
/// there is none.
pub(super) fn scheduler(listen: &str, secret: &Path) -> Result<()> {
    until_interrupted(
        async {
            let made = !secret.exists();
            let address = tidegate_runtime::run_scheduler(listen, secret)
                .await
                .context("starting the scheduler")?;
            if made {
                eprintln!(
                    "tidegate: made the cluster's secret at {} (mode 0600): give it to every executor and to `serve --cluster`",
                    secret.display()
                );
            }
            eprintln!("tidegate: scheduler listening on {address}");
            Ok(())
        },
        "scheduler",
    )
}

/// How `tidegate executor` was asked to run.
pub(super) struct Executor<'a> {
    pub(super) keys: &'a KeyArgs,
    pub(super) scheduler: String,
    pub(super) listen: String,
    pub(super) advertise: Option<String>,
    pub(super) work: PathBuf,
    pub(super) secret: PathBuf,
    pub(super) memory_mib: u64,
}

/// Runs an executor that reads the platform's data directory (read-only) for what each job
/// may use.
pub(super) fn executor(e: Executor<'_>) -> Result<()> {
    let jobs = ExecutorJobs::open(&e.keys.data_dir, e.keys.load()?)
        .context("reading the platform's data directory")?;
    let options = ExecutorOptions {
        scheduler: e.scheduler,
        listen: e.listen,
        advertise: e.advertise,
        work: e.work,
        secret: e.secret,
        memory_bytes: usize::try_from(e.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
    };
    until_interrupted(
        async {
            let address = tidegate_runtime::run_executor(&options, Arc::new(jobs))
                .await
                .context("starting the executor")?;
            eprintln!(
                "tidegate: executor of the scheduler at {}, shuffle served on {address}",
                options.scheduler
            );
            Ok(())
        },
        "executor",
    )
}
