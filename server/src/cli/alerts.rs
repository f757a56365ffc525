//! `tidegate alerts`: the authority's alerts (R-MONITOR): list, acknowledge, and where they go.

use anyhow::Result;
use clap::Subcommand;
use tidegate_policy::AlertThresholds;
use tidegate_runtime::AlertSettings;

use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum AlertsCommand {
    /// The alerts, newest first (the authority's admins and auditors).
    List {
        /// Only those not acknowledged yet.
        #[arg(long)]
        open: bool,
    },
    /// Acknowledge an alert with a note saying what was done (admin; audited).
    Ack {
        id: String,
        #[arg(long)]
        note: String,
    },
    /// Show where alerts go and when they are raised.
    Settings,
    /// Set where alerts go (a webhook that receives each as a JSON POST) and the thresholds
    /// (admin). Thresholds not named keep their defaults.
    Set {
        /// An http:// or https:// URL; none to send nowhere.
        #[arg(long)]
        webhook: Option<String>,
        /// Exports with suppressed groups in a row that raise an alert.
        #[arg(long)]
        suppressed_in_a_row: Option<u64>,
        /// The share of a privacy budget, in percent, whose spending raises an alert.
        #[arg(long)]
        budget_percent: Option<u64>,
        /// Limit breaches and data-dependent failures of a scenario that raise an alert.
        #[arg(long)]
        breaches: Option<u64>,
    },
}

pub(super) fn run(command: AlertsCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    match command {
        AlertsCommand::List { open } => print(&c.alerts(open)?),
        AlertsCommand::Ack { id, note } => print(&c.acknowledge_alert(&id, &note)?),
        AlertsCommand::Settings => print(&c.alert_settings()?),
        AlertsCommand::Set {
            webhook,
            suppressed_in_a_row,
            budget_percent,
            breaches,
        } => {
            let d = AlertThresholds::default();
            let settings = AlertSettings {
                webhook: webhook.filter(|w| w != "none"),
                thresholds: AlertThresholds {
                    suppressed_in_a_row: suppressed_in_a_row.unwrap_or(d.suppressed_in_a_row),
                    budget_percent: budget_percent.unwrap_or(d.budget_percent),
                    breaches: breaches.unwrap_or(d.breaches),
                },
            };
            print(&c.set_alert_settings(&settings)?)
        }
    }
    Ok(())
}
