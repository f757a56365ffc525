//! `tidegate job`: jobs submitted, followed, listed and cancelled (scientist).

use anyhow::Result;
use clap::Subcommand;

use super::list::{ListArgs, print_page};
use super::{Remote, print};

#[derive(Subcommand)]
pub(super) enum JobCommand {
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

pub(super) fn run(command: JobCommand, remote: &Remote) -> Result<()> {
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
    Ok(())
}
