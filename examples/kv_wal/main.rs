//! Using mergelog as a write-ahead log: a small key-value store (an in-memory ordered table,
//! checkpointed to a file) whose writes are made durable by mergelog. The store itself is in
//! `store.rs` next to this file, the one to copy; this program shows it at work:
//!
//! ```sh
//! cargo run --release --example kv_wal            # in a temporary directory
//! cargo run --release --example kv_wal -- DIR     # in DIR, kept (run it twice)
//! ```
//!
//! It opens the store, writes from several threads (periodic checkpoints retire the log as it
//! goes), takes a checkpoint, closes, reopens (checkpoint + replay) and reads back.

// The demo uses only part of the store's API.
#[allow(dead_code)]
mod store;

use mergelog::{Config, Engine};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use store::{CheckpointStep, Options, Store};

const THREADS: usize = 4;
const WRITES_PER_THREAD: usize = 5_000;
const KEYS: usize = 200;

/// Checkpoints that became durable in this run (counted by the step hook).
static CHECKPOINTS: AtomicU64 = AtomicU64::new(0);

fn options() -> Options {
    Options {
        // Small segments, so that the log visibly rolls and retires in a short run.
        engine: Config {
            segment_bytes: 256 << 10,
            batch_bytes_max: 64 << 10,
            ..Config::default()
        },
        checkpoint_every_writes: 4_000,
        checkpoint_every_bytes: 1 << 20,
        on_checkpoint_step: Some(|step| {
            if step == CheckpointStep::Durable {
                CHECKPOINTS.fetch_add(1, Ordering::Relaxed);
            }
        }),
    }
}

/// "1 batch", "2 batches".
fn batches(n: u64) -> String {
    format!("{n} batch{}", if n == 1 { "" } else { "es" })
}

/// The log's segment files and their size (`Engine::space`): not the directory's bytes, which
/// count the prepared next segment too, a file the log has not begun.
fn segments(engine: &Engine) -> String {
    let space = engine.space();
    format!(
        "{} segment{}, {} KiB",
        space.segments,
        if space.segments == 1 { "" } else { "s" },
        space.file_bytes >> 10
    )
}

/// Each thread overwrites its share of the keys many times, keeping a few writes in flight.
fn write_workload(store: &Store) -> Result<(), store::Error> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || -> Result<(), store::Error> {
                    let mut in_flight = std::collections::VecDeque::new();
                    for i in 0..WRITES_PER_THREAD {
                        let key = format!("key-{:04}", (i * THREADS + t) % KEYS);
                        let value = format!("thread {t} write {i}");
                        in_flight.push_back(store.submit_put(key.as_bytes(), value.as_bytes())?);
                        if in_flight.len() == 8 {
                            in_flight.pop_front().expect("in flight").wait()?;
                        }
                    }
                    in_flight.into_iter().try_for_each(|p| p.wait())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("writer thread"))
    })
}

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1);
    match run(dir.as_deref().map(Path::new)) {
        Ok(()) => ExitCode::SUCCESS,
        // Its message, not the `Debug` dump that `main` returning the error would print.
        Err(e) => {
            eprintln!("kv_wal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo in `dir`, or in a temporary directory.
fn run(dir: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    let temp;
    let dir = match dir {
        Some(d) => d.to_owned(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };

    let store = Store::open(&dir, options())?;
    let r = store.recovered();
    println!(
        "opened {}: checkpoint at batch {}, replayed {} ({} writes), {} keys",
        dir.display(),
        r.checkpoint.get(),
        batches(r.batches),
        r.writes,
        store.len()
    );

    let started = Instant::now();
    write_workload(&store)?;
    store.delete(b"key-0000")?;
    let counts = store.engine().counts();
    println!(
        "wrote {} puts and 1 delete from {THREADS} threads in {:.0?}: {} syncs, {} periodic \
         checkpoints; log now {}",
        THREADS * WRITES_PER_THREAD,
        started.elapsed(),
        counts.syncs,
        CHECKPOINTS.load(Ordering::Relaxed),
        segments(store.engine())
    );

    let covered = store.checkpoint()?;
    println!(
        "checkpoint covers batch {}; log after retiring: {}",
        covered.get(),
        segments(store.engine())
    );
    store.put(b"after-checkpoint", b"in the log only")?;
    let before: BTreeMap<_, _> = store.scan(b"", usize::MAX).into_iter().collect();
    store.close()?;

    let store = Store::open(&dir, options())?;
    let r = store.recovered();
    println!(
        "reopened: checkpoint at batch {}, replayed {} ({} writes), {} keys",
        r.checkpoint.get(),
        batches(r.batches),
        r.writes,
        store.len()
    );
    let after: BTreeMap<_, _> = store.scan(b"", usize::MAX).into_iter().collect();
    let show = |k: &[u8]| {
        store
            .get(k)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    println!("key-0001 = {:?}", show(b"key-0001"));
    println!("key-0000 = {:?} (deleted)", show(b"key-0000"));
    println!("after-checkpoint = {:?}", show(b"after-checkpoint"));
    println!(
        "state after reopen equals state before close: {}",
        before == after
    );
    store.close()?;
    if before != after {
        return Err("the reopened store differs from the one closed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's figure is its segment files': one 256 KiB segment is 256 KiB, although the
    /// directory holds the prepared next segment too.
    #[test]
    fn the_log_is_its_segments() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), options().engine).unwrap();
        // Past an eighth of a segment, the engine prepares the next one in the background.
        for i in 0..64u32 {
            engine
                .put(&i.to_be_bytes(), &[7; 1024])
                .unwrap()
                .wait()
                .unwrap();
        }
        let prepared = || {
            std::fs::read_dir(dir.path()).unwrap().flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("prep-")
                    && e.metadata().is_ok_and(|m| m.len() == 256 << 10)
            })
        };
        for _ in 0..2_000 {
            if prepared() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(prepared(), "no next segment was prepared");
        assert_eq!(segments(&engine), "1 segment, 256 KiB");
        engine.close().unwrap();
    }

    /// A directory that cannot be made fails with the store's message, the one `main`
    /// prints.
    #[test]
    #[allow(clippy::disallowed_methods)] // a file made behind the seam's back
    fn a_file_for_a_directory_is_an_error_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let message = run(Some(&file)).unwrap_err().to_string();
        assert!(message.starts_with("log: "), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
    }
}
