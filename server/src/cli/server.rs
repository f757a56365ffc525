//! `tidegate init` and `tidegate serve`: a new data directory, and the HTTP API over one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;
use tidegate_runtime::Platform;

use super::keys::KeyArgs;
use super::print;

/// What `init` prints: where everything is, and the first admin's token.
#[derive(Serialize)]
struct Initialized<'a> {
    data_dir: &'a Path,
    master_key: &'a Path,
    public_key: PathBuf,
    admin_token: String,
    note: &'static str,
}

/// Creates the data directory, its master key and the first admin; prints the token once.
pub(super) fn init(data_dir: &Path, master_key: &Path, admin_name: &str) -> Result<()> {
    let (platform, admin_token) = Platform::init(data_dir, master_key, admin_name)?;
    let initialized = Initialized {
        data_dir,
        master_key,
        public_key: platform.dir().join(tidegate_runtime::PUBLIC_KEY_FILE),
        admin_token,
        note: "the admin token is shown once; keep it",
    };
    // Through a JSON value, keys in order, as every answer the CLI prints.
    print(&serde_json::to_value(initialized)?);
    Ok(())
}

/// Serves the API until interrupted, then writes a signed audit checkpoint.
pub(super) fn serve(
    keys: &KeyArgs,
    listen: &str,
    workers: usize,
    secure_cookies: bool,
    cluster: Option<(String, PathBuf)>,
) -> Result<()> {
    let platform = Arc::new(Platform::open(&keys.data_dir, keys.load()?)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    if let Some((scheduler, secret)) = cluster {
        let cluster = rt
            .block_on(tidegate_runtime::Cluster::connect(&scheduler, &secret))
            .with_context(|| format!("joining the cluster at {scheduler}"))?;
        platform.use_cluster(Some(cluster));
        eprintln!("tidegate: jobs' inputs run on the cluster at {scheduler}");
    }
    platform.start_workers(workers)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
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
    Ok(())
}
