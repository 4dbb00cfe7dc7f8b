//! Space: how much disk an engine system's run took against the live data it holds.
//!
//! A thread beside the writers samples every [`SAMPLE_EVERY`] the bytes of every file in
//! the run's directory (segments, the prepared next segment, pooled files, consumer and
//! clean-close files: what `du` would count, at their apparent size, since the engine
//! makes each segment at its full size) and `Engine::space()`, and keeps the greatest; the
//! end is measured again after close. What a compaction costs in time is seen from the same
//! samples: `Engine::counts().compaction` moving.
//!
//! The sampler's work (a directory listing, a `stat` per file and an index lock every 20 ms)
//! is the same for `mergelog` and `mergelog-compact`, so it does not bias their ratio.

use crate::error::{CliError, Context};
use mergelog::Engine;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the sampler looks during a run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The disk and the engine's view of it at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceSample {
    /// Every file under the run's directory, at its apparent size.
    pub disk_bytes: u64,
    /// `Space::live_bytes`: what a compaction keeps.
    pub live_bytes: u64,
    /// `Space::log_bytes`: the log's frames.
    pub log_bytes: u64,
    /// `Space::segments`.
    pub segments: usize,
}

/// What one run of an engine system took.
#[derive(Clone, Debug, Default)]
pub struct SpaceRun {
    /// The run (round) it belongs to, 0-based.
    pub round: usize,
    /// After close.
    pub end: SpaceSample,
    /// The greatest disk bytes and log bytes seen (the samples and the end).
    pub peak_disk_bytes: u64,
    pub peak_log_bytes: u64,
    /// Samples taken while the writers ran; at least one, even when they were done before
    /// the sampler first looked.
    pub samples: u64,
    /// Compactions seen to finish, and the longest of them: from the last sample before its
    /// first batch to the first sample after its end (so up to two sampling intervals more
    /// than it took; a compaction that copied nothing is not seen).
    pub compactions_seen: u64,
    pub longest_compaction: Option<Duration>,
}

/// Bytes of every file under `dir`, at their apparent size. A file removed while the
/// listing runs (a segment being retired) is skipped.
pub fn disk_bytes(dir: &Path) -> Result<u64, CliError> {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context(|| format!("list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.context(|| format!("list {}", dir.display()))?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(|| format!("stat {}", entry.path().display())),
        };
        total += if meta.is_dir() {
            disk_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// One sample of `engine` in `dir`.
fn sample(engine: &Engine, dir: &Path) -> Result<SpaceSample, CliError> {
    let space = engine.space();
    Ok(SpaceSample {
        disk_bytes: disk_bytes(dir)?,
        live_bytes: space.live_bytes,
        log_bytes: space.log_bytes,
        segments: space.segments,
    })
}

/// Follows compactions from one sample to the next.
#[derive(Default)]
struct CompactionWatch {
    runs: u64,
    batches: u64,
    /// The sample before the running compaction's first batch was seen.
    since: Option<Instant>,
    last_sample: Option<Instant>,
}

impl CompactionWatch {
    fn see(&mut self, engine: &Engine, now: Instant, run: &mut SpaceRun) {
        let c = engine.counts().compaction;
        if c.batches > self.batches && self.since.is_none() {
            self.since = Some(self.last_sample.unwrap_or(now));
        }
        if c.runs > self.runs {
            if let Some(since) = self.since.take() {
                run.compactions_seen += c.runs - self.runs;
                let took = now - since;
                run.longest_compaction = Some(run.longest_compaction.map_or(took, |t| t.max(took)));
            }
        }
        self.runs = c.runs;
        self.batches = c.batches;
        self.last_sample = Some(now);
    }
}

/// Runs `f` with the sampler beside it, on `engine` in `dir`, until `f` returns; what it
/// saw, without the end (see [`SpaceRun::finish`]). An error, without running `f`, if the
/// sampler's thread cannot be started.
pub fn watching<R>(
    engine: &Engine,
    dir: &Path,
    f: impl FnOnce() -> R,
) -> Result<(R, Result<SpaceRun, CliError>), CliError> {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = super::engine::spawn(scope, "space sampler", || watch(engine, dir, &done))?;
        // Set however `f` ends (a panic too), so that the scope's join does not wait forever.
        let stop = super::engine::SetOnDrop(&done);
        let r = f();
        drop(stop);
        let seen = sampler
            .join()
            .unwrap_or_else(|_| Err(CliError::new("the space sampler thread panicked")));
        Ok((r, seen))
    })
}

/// Samples every [`SAMPLE_EVERY`] until `done`, once at least: a run over before the
/// thread got to look (a short round on a busy machine) still has its sample.
fn watch(engine: &Engine, dir: &Path, done: &AtomicBool) -> Result<SpaceRun, CliError> {
    let mut run = SpaceRun::default();
    let mut compactions = CompactionWatch::default();
    loop {
        let s = sample(engine, dir)?;
        run.peak_disk_bytes = run.peak_disk_bytes.max(s.disk_bytes);
        run.peak_log_bytes = run.peak_log_bytes.max(s.log_bytes);
        run.samples += 1;
        compactions.see(engine, Instant::now(), &mut run);
        std::thread::sleep(SAMPLE_EVERY);
        if done.load(Ordering::Acquire) {
            return Ok(run);
        }
    }
}

impl SpaceRun {
    /// The end of the run: `engine` closed, its directory `dir` as it stays.
    pub fn finish(mut self, engine: &Engine, dir: &Path) -> Result<SpaceRun, CliError> {
        let end = sample(engine, dir)?;
        self.peak_disk_bytes = self.peak_disk_bytes.max(end.disk_bytes);
        self.peak_log_bytes = self.peak_log_bytes.max(end.log_bytes);
        self.end = end;
        Ok(self)
    }

    /// Disk bytes at the end over live bytes (`None` with nothing live).
    pub fn end_to_live(&self) -> Option<f64> {
        ratio(self.end.disk_bytes, self.end.live_bytes)
    }

    /// The greatest disk bytes over the live bytes at the end: in an overwrite workload
    /// live data only grows, so the end's is the most the run held (a sample's own ratio
    /// would be huge at the start, a few keys in a fresh segment file).
    pub fn peak_to_live(&self) -> Option<f64> {
        ratio(self.peak_disk_bytes, self.end.live_bytes)
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

#[cfg(test)]
mod tests {
    use super::disk_bytes;

    #[test]
    fn disk_bytes_counts_every_file_below_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_bytes(&dir.path().join("absent")).unwrap(), 0);
        std::fs::write(dir.path().join("a"), [0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 24]).unwrap();
        assert_eq!(disk_bytes(dir.path()).unwrap(), 1024);
    }
}
