//! A few worker threads with one timed queue: work that may wait (the deferred part of a
//! network removal, removing orphaned bridges at start, a new container's ARP announcements)
//! runs there when it is due, instead of on a thread per job that sleeps until then. More
//! than one worker because a removal mostly waits for the kernel (RCU grace periods, 10 to
//! 20 ms each): one worker fell behind a steady stream of destroys.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    /// By due time, then by order of scheduling.
    jobs: BTreeMap<(Instant, u64), Job>,
    next_seq: u64,
    /// Jobs the workers took and have not finished yet.
    running: usize,
    /// Set by `settle`: run what is queued now, due or not.
    expedite: usize,
    stopping: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled on every change of the queue.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct DeferredWork {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl DeferredWork {
    /// Starts `workers` threads (named `name`). Without any (the thread limit reached), jobs
    /// run at once on the thread that schedules them.
    pub fn start(name: &str, workers: usize) -> DeferredWork {
        let shared = Arc::new(Shared::default());
        let mut started = Vec::new();
        for _ in 0..workers {
            let shared = shared.clone();
            match std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&shared))
            {
                Ok(worker) => started.push(worker),
                Err(e) => {
                    tracing::warn!("cannot start a {name} thread: {e}");
                    break;
                }
            }
        }
        if started.is_empty() {
            tracing::warn!("no {name} thread: deferred work runs inline");
        }
        DeferredWork {
            shared,
            workers: started,
        }
    }

    /// Runs `job` on a worker once `at` has come (or at `settle`).
    pub fn schedule(&self, at: Instant, job: impl FnOnce() + Send + 'static) {
        if self.workers.is_empty() {
            return job();
        }
        let mut queue = self.shared.lock();
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.jobs.insert((at, seq), Box::new(job));
        self.shared.changed.notify_all();
    }

    /// Runs every queued job now, due or not, and returns when none is left or running.
    pub fn settle(&self) {
        let mut queue = self.shared.lock();
        queue.expedite += 1;
        self.shared.changed.notify_all();
        while !queue.jobs.is_empty() || queue.running > 0 {
            queue = self
                .shared
                .changed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
        queue.expedite -= 1;
    }
}

impl Drop for DeferredWork {
    /// Finishes what is queued, then stops the workers.
    fn drop(&mut self) {
        self.settle();
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn work(shared: &Shared) {
    let mut queue = shared.lock();
    loop {
        let now = Instant::now();
        let due = queue
            .jobs
            .first_key_value()
            .map(|(&(at, _), _)| at)
            .filter(|&at| at <= now || queue.expedite > 0);
        if due.is_some() {
            let (_, job) = queue.jobs.pop_first().expect("a due job");
            queue.running += 1;
            drop(queue);
            // A panicking job must not take the worker (and everything queued after it) along.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            if outcome.is_err() {
                tracing::error!("a deferred job panicked");
            }
            queue = shared.lock();
            queue.running -= 1;
            shared.changed.notify_all();
            continue;
        }
        if queue.stopping {
            return;
        }
        queue = match queue.jobs.first_key_value().map(|(&(at, _), _)| at) {
            Some(at) => {
                shared
                    .changed
                    .wait_timeout(queue, at.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared
                .changed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn settle_runs_what_is_not_due_yet_in_due_order() {
        // One worker: with more, jobs taken in due order may finish in another.
        let work = DeferredWork::start("test-deferred", 1);
        let (sender, ran) = mpsc::channel();
        let later = Instant::now() + Duration::from_secs(3600);
        for (offset, name) in [(2, "third"), (0, "first"), (1, "second")] {
            let sender = sender.clone();
            work.schedule(later + Duration::from_secs(offset), move || {
                sender.send(name).unwrap()
            });
        }
        assert!(ran.try_recv().is_err(), "nothing is due yet");
        work.settle();
        let order: Vec<_> = ran.try_iter().collect();
        assert_eq!(order, ["first", "second", "third"]);
    }

    #[test]
    fn a_due_job_runs_without_settle() {
        let work = DeferredWork::start("test-deferred", 2);
        let (sender, ran) = mpsc::channel();
        work.schedule(Instant::now(), move || sender.send(()).unwrap());
        ran.recv().expect("the job runs");
    }

    #[test]
    fn a_panicking_job_leaves_the_worker_running() {
        let work = DeferredWork::start("test-deferred", 2);
        work.schedule(Instant::now(), || panic!("on purpose"));
        let (sender, ran) = mpsc::channel();
        work.schedule(Instant::now(), move || sender.send(()).unwrap());
        ran.recv().expect("the next job runs");
    }

    #[test]
    fn dropping_finishes_what_is_queued() {
        let (sender, ran) = mpsc::channel();
        let work = DeferredWork::start("test-deferred", 2);
        work.schedule(Instant::now() + Duration::from_secs(3600), move || {
            sender.send(()).unwrap()
        });
        drop(work);
        ran.try_recv().expect("ran before the drop returned");
    }
}
