//! Running a seeded test over many seeds: which seeds (from the environment), and a runner
//! that runs them a few at a time, goes on past a failing seed, and collects the results.

use super::env_u64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The seeds a test runs: `{prefix}_SEED` alone (`{prefix}_REPEAT` times, default 1: a seed
/// fixes the workload, not how the threads interleave), or `{prefix}_SEEDS` seeds (default
/// `default_count`) from `{prefix}_FIRST` (default 0).
pub fn from_env(prefix: &str, default_count: u64) -> Vec<u64> {
    let var = |suffix: &str| env_u64(&format!("{prefix}_{suffix}"));
    match var("SEED") {
        Some(s) => vec![s; var("REPEAT").unwrap_or(1) as usize],
        None => {
            let first = var("FIRST").unwrap_or(0);
            (first..first + var("SEEDS").unwrap_or(default_count)).collect()
        }
    }
}

/// Runs `run` for each seed, four at a time (seeds mostly wait for syncs), catching panics.
/// Returns the results of the seeds that passed and, sorted, the seeds that failed; after
/// ten failures it stops starting new seeds.
pub fn run<T: Send>(seeds: &[u64], run: impl Fn(u64) -> T + Sync) -> (Vec<T>, Vec<u64>) {
    let workers = 4.min(seeds.len()).max(1);
    let next = AtomicU64::new(0);
    let passed = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                if failed.lock().unwrap().len() >= 10 {
                    break;
                }
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed))) {
                    Ok(t) => passed.lock().unwrap().push(t),
                    Err(_) => failed.lock().unwrap().push(seed),
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap();
    failed.sort();
    (passed.into_inner().unwrap(), failed)
}
