//! `tidegate job`: jobs submitted, followed, listed, cancelled and discarded (scientist).

use anyhow::Result;
use clap::Subcommand;
use tidegate_runtime::{JobSummary, JobView};

use super::list::{Column, ListArgs, or_dash, print_page};
use super::{Remote, print};
use crate::client::decode;

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
    /// Discard a job's stored result (its unit's scientists): frees room under the scenario's
    /// storage quota; exports requested from it keep their own files.
    Discard { id: String },
}

const JOB_COLUMNS: &[Column<JobSummary>] = &[
    ("job", |j| j.id.clone()),
    ("state", |j| j.state.to_string()),
    ("scenario", |j| j.scenario.clone()),
    ("submitted by", |j| j.submitted_by.clone()),
    ("created at", |j| j.created_at.clone()),
    ("finished at", |j| or_dash(&j.finished_at)),
];

pub(super) fn run(command: JobCommand, remote: &Remote) -> Result<()> {
    let c = remote.client()?;
    match command {
        JobCommand::List { list } => {
            print_page(&c.list("/v1/jobs", &list.query(false))?, JOB_COLUMNS, &list)?
        }
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
                let id = decode::<JobView>(&queued, "a job")?.id;
                let spinner = indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                );
                spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                let done = c.wait_job(&id, &mut |job| {
                    spinner.set_message(format!("job {id}: {}", job.state));
                });
                spinner.finish_and_clear();
                print(&done?);
            }
        }
        JobCommand::Show { id } => print(&c.get_job(&id)?),
        JobCommand::Cancel { id } => print(&c.cancel_job(&id)?),
        JobCommand::Discard { id } => print(&c.discard_result(&id)?),
    }
    Ok(())
}
