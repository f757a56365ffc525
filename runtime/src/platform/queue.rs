//! The job queue: jobs accepted by the API wait here for the server's workers, taken in turn
//! by org (round robin) so that one unit's many jobs never starve another's; while other orgs
//! wait, one org runs at most half the workers (at least one). The queue's truth
//! is the `jobs` table (state `queued`); this is its order in memory, rebuilt when the data
//! directory opens.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, Weak};

use super::Platform;

#[derive(Default)]
pub(super) struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// Each org's queued jobs, oldest first.
    by_org: HashMap<String, VecDeque<String>>,
    /// Orgs with queued jobs, in the order they are served next.
    turn: VecDeque<String>,
    /// Workers started for this platform.
    workers: usize,
    /// Jobs each org has running on a worker now.
    running: HashMap<String, usize>,
    closed: bool,
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn push(&self, org: &str, job: &str) {
        let mut q = self.lock();
        let jobs = q.by_org.entry(org.to_string()).or_default();
        jobs.push_back(job.to_string());
        if jobs.len() == 1 {
            q.turn.push_back(org.to_string());
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Takes a queued job out (a cancellation); whether it was there.
    pub(super) fn remove(&self, job: &str) -> bool {
        let mut q = self.lock();
        let mut found = None;
        for (org, jobs) in q.by_org.iter_mut() {
            if let Some(at) = jobs.iter().position(|j| j == job) {
                jobs.remove(at);
                found = Some((org.clone(), jobs.is_empty()));
                break;
            }
        }
        match found {
            Some((org, emptied)) => {
                if emptied {
                    q.by_org.remove(&org);
                    q.turn.retain(|o| o != &org);
                }
                true
            }
            None => false,
        }
    }

    /// The next job and its org: the first org in turn that may run one more (while other
    /// orgs wait, an org runs at most half the workers); waits for one. `None` once the queue
    /// is closed. The worker calls [`JobQueue::finished`] when the job ends.
    fn next(&self) -> Option<(String, String)> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            let cap = if q.turn.len() > 1 {
                (q.workers / 2).max(1)
            } else {
                q.workers.max(1)
            };
            let pick = q
                .turn
                .iter()
                .position(|org| q.running.get(org).copied().unwrap_or(0) < cap);
            if let Some(at) = pick {
                let org = q.turn.remove(at).expect("a position in turn");
                let jobs = q.by_org.get_mut(&org).expect("an org in turn has jobs");
                let job = jobs.pop_front().expect("an org in turn has jobs");
                if jobs.is_empty() {
                    q.by_org.remove(&org);
                } else {
                    q.turn.push_back(org.clone());
                }
                *q.running.entry(org.clone()).or_default() += 1;
                return Some((org, job));
            }
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// A job of `org` taken by [`JobQueue::next`] has ended.
    fn finished(&self, org: &str) {
        let mut q = self.lock();
        if let Some(n) = q.running.get_mut(org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                q.running.remove(org);
            }
        }
        drop(q);
        self.ready.notify_all();
    }

    /// Jobs waiting, over every org.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_org.values().map(VecDeque::len).sum()
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

impl Platform {
    /// Starts `workers` threads that run queued jobs, each job on its own engine runtime
    /// (at most `workers` jobs at once). A second call adds none. The workers hold the
    /// platform only while a job runs: when the platform is dropped the queue closes and they
    /// end.
    pub fn start_workers(self: &Arc<Self>, workers: usize) -> std::io::Result<()> {
        let workers = workers.max(1);
        {
            let mut q = self.queue.lock();
            if q.workers > 0 {
                return Ok(());
            }
            q.workers = workers;
        }
        for n in 0..workers {
            let queue = Arc::clone(&self.queue);
            let platform: Weak<Platform> = Arc::downgrade(self);
            std::thread::Builder::new()
                .name(format!("tidegate-worker-{n}"))
                .stack_size(8 << 20)
                .spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        tracing::error!("a job worker could not start its runtime");
                        return;
                    };
                    while let Some((org, job)) = queue.next() {
                        let Some(platform) = platform.upgrade() else {
                            break;
                        };
                        if let Err(e) = runtime.block_on(platform.run_job(&job)) {
                            // The cause goes to the log and the audit log, never to the
                            // scientist; the job ends failed, not running forever.
                            tracing::error!(job = %job, error = %e, "a job could not be run");
                            let _ = platform.fail_unrun_job(
                                &job,
                                "running",
                                "platform",
                                "the platform could not run the job; nothing of it was kept",
                            );
                        }
                        drop(platform);
                        queue.finished(&org);
                    }
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orgs_take_turns_and_each_org_keeps_its_order() {
        let q = JobQueue::default();
        for (org, job) in [
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("c", "c1"),
        ] {
            q.push(org, job);
        }
        assert!(q.remove("a2"));
        assert!(!q.remove("a2"));
        q.lock().workers = 4;
        let mut order = Vec::new();
        for _ in 0..4 {
            let (org, job) = q.next().unwrap();
            order.push(job);
            q.finished(&org);
        }
        assert_eq!(order, ["a1", "b1", "c1", "a3"]);
        assert_eq!(q.len(), 0);
        q.close();
        assert_eq!(q.next(), None);
    }

    #[test]
    fn while_others_wait_an_org_runs_at_most_half_the_workers() {
        let q = JobQueue::default();
        q.lock().workers = 2;
        q.push("a", "a1");
        q.push("a", "a2");
        // Alone, an org may take both workers.
        assert_eq!(q.next().unwrap().1, "a1");
        q.push("a", "a3");
        q.push("b", "b1");
        // With b waiting, a (one running) gets no second worker: b goes first.
        assert_eq!(q.next().unwrap(), ("b".to_string(), "b1".to_string()));
        q.finished("a");
        assert_eq!(q.next().unwrap().1, "a2");
    }
}
