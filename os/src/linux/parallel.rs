//! A bounded pool of scoped threads for work that is mostly waiting: observing every container
//! at start (each one's init must answer over its socket) and the like.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` of every item, in order, on at most `workers` threads at once. A thread that cannot be
/// started leaves its share to the others (and to the caller's thread when none can), so this
/// never fails for want of threads.
pub fn map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = workers.min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        // The caller's thread is one of the workers.
        let threads: Vec<_> = (1..workers)
            .map_while(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
            .collect();
        let mut finished = work();
        for thread in threads {
            match thread.join() {
                Ok(done) => finished.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (i, result) in finished {
            results[i] = Some(result);
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every index is taken exactly once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    #[test]
    fn results_keep_the_items_order_whatever_the_pool_size() {
        let items: Vec<u32> = (0..1000).collect();
        for workers in [0, 1, 2, 7, 64, 5000] {
            let squares = map(&items, workers, |n| n * n);
            assert_eq!(squares, items.iter().map(|n| n * n).collect::<Vec<_>>());
        }
        assert!(map(&[] as &[u32], 8, |n| *n).is_empty());
    }

    #[test]
    fn no_more_threads_than_asked_for_run_at_once() {
        let items: Vec<u32> = (0..200).collect();
        let threads = Mutex::new(BTreeSet::new());
        map(&items, 4, |_| {
            threads
                .lock()
                .unwrap()
                .insert(format!("{:?}", std::thread::current().id()));
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
        let count = threads.lock().unwrap().len();
        assert!((2..=4).contains(&count), "{count} threads ran the work");
    }
}
