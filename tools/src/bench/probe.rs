//! The disk's price of one sync, measured before the runs in the run directory: `--sync-probe
//! N` times, a 4 KiB `pwrite` + `fdatasync` into a file already filled with written zeros
//! (what the engine's write into a prepared segment costs, with nothing to coalesce). Every
//! durable batch of every system pays about this much, so it reads a run on another machine
//! or another hour: at one request outstanding per writer nothing can complete more than
//! `writers` requests per sync.

use crate::error::{CliError, Context};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The size of each probe write.
pub const PROBE_BYTES: usize = 4096;

/// What the probe measured.
#[derive(Clone, Debug)]
pub struct SyncProbe {
    pub syncs: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Runs `syncs` (at least 1) probe writes in a scratch file under `dir`, removed after.
pub fn run(dir: &Path, syncs: usize) -> Result<SyncProbe, CliError> {
    let path = dir.join("sync-probe.tmp");
    let result = measure(&path, syncs.max(1));
    let _ = std::fs::remove_file(&path);
    result.context(|| format!("sync probe in {}", path.display()))
}

fn measure(path: &Path, syncs: usize) -> std::io::Result<SyncProbe> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    // Written zeros, synced: the probe's writes then overwrite allocated, initialized blocks,
    // as the engine's do (no extent to convert, no file size to change).
    let zeros = [0u8; PROBE_BYTES];
    for _ in 0..syncs {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    let block = [0x5au8; PROBE_BYTES];
    let mut took = Vec::with_capacity(syncs);
    for i in 0..syncs {
        let started = Instant::now();
        file.write_all_at(&block, (i * PROBE_BYTES) as u64)?;
        file.sync_data()?;
        took.push(started.elapsed());
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    Ok(SyncProbe {
        syncs,
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_times_every_sync_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = run(dir.path(), 5).unwrap();
        assert_eq!(p.syncs, 5);
        assert!(p.p50 > Duration::ZERO && p.p50 <= p.p99 && p.p99 <= p.max);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn probe_reports_a_directory_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = run(&missing, 3).unwrap_err().to_string();
        assert!(err.contains("sync probe") && err.contains("nope"), "{err}");
    }
}
