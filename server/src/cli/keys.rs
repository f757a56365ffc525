//! `tidegate keys`: master key operations on a stopped server's data directory.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use tidegate_runtime::{MasterKey, Platform};

#[derive(Args, Clone)]
pub(super) struct KeyArgs {
    /// The data directory.
    #[arg(long, env = "TIDEGATE_DATA_DIR")]
    pub(super) data_dir: PathBuf,
    /// The master key file (mode 0600, outside the data directory).
    #[arg(long, env = "TIDEGATE_MASTER_KEY_FILE")]
    master_key: Option<PathBuf>,
}

impl KeyArgs {
    pub(super) fn load(&self) -> Result<MasterKey> {
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
pub(super) enum KeysCommand {
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

pub(super) fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Rotate {
            keys,
            new_master_key,
        } => {
            let n = Platform::rotate_master_key(&keys.data_dir, keys.load()?, &new_master_key)?;
            println!(
                "{n} data keys and the signing key re-wrapped under {}; keep the old key until a backup of this state exists",
                new_master_key.display()
            );
        }
        KeysCommand::Check { keys } => {
            let platform = Platform::open(&keys.data_dir, keys.load()?)?;
            println!(
                "{} objects decrypt with this master key",
                platform.verify_storage()?
            );
        }
    }
    Ok(())
}
