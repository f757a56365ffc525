//! `tidegate meter`: prices (admin) and an org's monthly statement.

use anyhow::Result;
use clap::Subcommand;

use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum MeterCommand {
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

pub(super) fn run(command: MeterCommand, remote: &Remote) -> Result<()> {
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
    Ok(())
}
