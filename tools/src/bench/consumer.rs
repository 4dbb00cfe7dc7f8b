//! `bench --consumer`: a downstream processor beside the writers of an engine system.
//!
//! One thread opens the durable consumer `bench` before the writers start and does what a
//! processor downstream of the log does: takes each batch as it becomes durable
//! (`Consumer::next_timeout`), touches every record, and commits every `commit_every`
//! batches (each commit is a file write and two syncs, so committing less often is how a
//! real processor keeps up), and whenever no batch came for a while: a consumer that held
//! processed batches uncommitted while idle would deadlock with a lag limit below
//! `commit_every` batches (the writers wait for its lag to fall, it waits for their batches). `--consumer-rate` paces it by records, so that it can be made
//! slower than the writers and the lag builds up; `--consumer-lag-max-*` set
//! `Config::consumer_lag_max`, and the engine throttles the writers while the lag is past it.
//!
//! The lag itself is sampled by the bench's sampler once per interval through
//! `Engine::consumers` (see [`lag_sample`]): it is what the engine's own throttle measures
//! (the frames' bytes and the oldest unprocessed batch's commit time are only known to the
//! log, not to a consumer that has not read them yet), and one scan of a segment per interval
//! costs the run little.

use super::fine_timer_slack;
use crate::error::{CliError, Context};
use mergelog::{Consumer, ConsumerLag, Engine, Error, OwnedBatch};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The consumer's name in the log directory (`consumer-bench`).
pub const NAME: &str = "bench";

/// How long the consumer waits for a batch before it looks at the stop flag again (and
/// commits what it has processed); also the longest piece of a pacing sleep.
const POLL: Duration = Duration::from_millis(10);

/// How far a paced consumer may run ahead of its rate after it was idle or overslept: a
/// little credit, so that the sleeps' overshoot does not slow it below the rate.
const BURST: Duration = Duration::from_millis(5);

/// `--consumer` and its flags, resolved.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerPlan {
    /// Commit after this many batches (and when idle, and at the end, for the rest).
    pub commit_every: u64,
    /// Records per second the consumer processes at most; `None`: as fast as it can.
    pub rate: Option<f64>,
    /// `Config::consumer_lag_max`, when a limit was given.
    pub lag_max: Option<ConsumerLag>,
}

/// What the consumer did over a run (summed over the rounds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerTotals {
    /// Batches processed (read, touched, and paced).
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Commits written (`Consumer::commit`).
    pub commits: u64,
    /// Submissions the engine throttled on the consumer's lag (`Counts::throttled`).
    pub throttled: u64,
    /// Batches processed without `--consumer-rate`'s pacing, after the run's deadline had
    /// passed with the writers still held by the throttle (see [`DRAIN_GRACE`]); counted in
    /// `batches` too.
    pub unpaced_batches: u64,
}

/// How long after the run's deadline a paced consumer keeps its rate. Past it, with the
/// writers still not done (held by the lag throttle, waiting for a consumer that may take
/// minutes at its rate), it processes as fast as it can, so that their last requests complete
/// and the run ends near its deadline; what it processed so is counted apart
/// ([`ConsumerTotals::unpaced_batches`]).
pub const DRAIN_GRACE: Duration = Duration::from_millis(200);

impl std::ops::AddAssign for ConsumerTotals {
    fn add_assign(&mut self, o: ConsumerTotals) {
        self.batches += o.batches;
        self.records += o.records;
        self.commits += o.commits;
        self.throttled += o.throttled;
        self.unpaced_batches += o.unpaced_batches;
    }
}

/// The consumer's lag at one moment, as `Engine::consumers` measures it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LagSample {
    pub batches: u64,
    pub bytes: u64,
    /// Age of the oldest unprocessed batch (0 when there is none).
    pub age: Duration,
}

/// The lag of the bench's consumer in `engine` now (zeros if it has no file: not opened yet,
/// which `run` rules out, since it opens it before the writers start).
pub fn lag_sample(engine: &Engine) -> Result<LagSample, CliError> {
    let all = engine
        .consumers()
        .context(|| "measure the consumer's lag".into())?;
    Ok(all
        .into_iter()
        .find(|c| c.name == NAME)
        .map_or_else(LagSample::default, |c| LagSample {
            batches: c.lag_batches,
            bytes: c.lag_bytes,
            age: c.lag_age.unwrap_or_default(),
        }))
}

/// Opens the bench's consumer on a fresh engine (before the writers start).
pub fn open(engine: &Engine) -> Result<Consumer, CliError> {
    engine
        .consumer(NAME)
        .context(|| format!("open the consumer '{NAME}'"))
}

/// Processes batches until `stop` is set (the writers are done), then commits what it
/// processed; paced (`--consumer-rate`) until `unpace` says the run is past its deadline
/// (and [`DRAIN_GRACE`]). On an error it closes the engine before returning it: writers
/// throttled on its lag would otherwise wait for commits that never come.
pub fn run(
    engine: &Engine,
    consumer: Consumer,
    plan: &ConsumerPlan,
    stop: &AtomicBool,
    unpace: &(dyn Fn() -> bool + Sync),
) -> Result<ConsumerTotals, CliError> {
    let r = process(consumer, plan, stop, unpace);
    if r.is_err() {
        let _ = engine.close();
    }
    r
}

fn process(
    mut consumer: Consumer,
    plan: &ConsumerPlan,
    stop: &AtomicBool,
    unpace: &(dyn Fn() -> bool + Sync),
) -> Result<ConsumerTotals, CliError> {
    if plan.rate.is_some() {
        fine_timer_slack();
    }
    let mut pacer = plan.rate.map(Pacer::new);
    let mut totals = ConsumerTotals::default();
    let mut uncommitted = 0u64;
    let mut last = None;
    while !stop.load(Ordering::Acquire) {
        let batch = match consumer.next_timeout(POLL) {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Idle: what it processed is done, and may be what the writers wait on.
                if let (Some(seq), true) = (last, uncommitted > 0) {
                    commit(&mut consumer, seq, &mut totals)?;
                    uncommitted = 0;
                }
                continue;
            }
            // The engine closed under it (another thread's failure): nothing more comes.
            Err(Error::Closed) => break,
            Err(e) => return Err(CliError::new(format!("the consumer: read a batch: {e}"))),
        };
        let records = touch(&batch);
        if pacer.is_some() && unpace() {
            pacer = None;
        }
        match &mut pacer {
            // Stopped while pacing: the batch is not finished, so it is neither counted
            // nor committed (as a processor stopped mid-batch would redo it).
            Some(p) => match p.pace(records, stop, unpace) {
                Paced::Done => {}
                Paced::Stopped => break,
                Paced::Unpaced => {
                    pacer = None;
                    totals.unpaced_batches += 1;
                }
            },
            None if plan.rate.is_some() => totals.unpaced_batches += 1,
            None => {}
        }
        totals.batches += 1;
        totals.records += records as u64;
        uncommitted += 1;
        last = Some(batch.seq);
        if uncommitted >= plan.commit_every {
            commit(&mut consumer, batch.seq, &mut totals)?;
            uncommitted = 0;
        }
    }
    if let (Some(seq), true) = (last, uncommitted > 0) {
        commit(&mut consumer, seq, &mut totals)?;
    }
    Ok(totals)
}

fn commit(
    consumer: &mut Consumer,
    seq: mergelog::Seq,
    totals: &mut ConsumerTotals,
) -> Result<(), CliError> {
    consumer
        .commit(seq)
        .map_err(|e| CliError::new(format!("the consumer: commit batch {}: {e}", seq.get())))?;
    totals.commits += 1;
    Ok(())
}

/// Reads every record of `batch` as a processor would (each key's bytes, each value's
/// length and first byte); returns the number of records.
fn touch(batch: &OwnedBatch) -> usize {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for mergelog::OwnedRecord { op, key, value } in &batch.records {
        for &b in key {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h ^= value.len() as u64 ^ u64::from(value.first().copied().unwrap_or(0));
        black_box(op);
    }
    black_box(h);
    batch.records.len()
}

/// How a paced batch ended.
#[derive(Debug, PartialEq, Eq)]
enum Paced {
    /// Its time was waited out.
    Done,
    /// `stop` was set: the batch is not finished.
    Stopped,
    /// The pacing is over (past the deadline): the batch is finished now.
    Unpaced,
}

/// `--consumer-rate`: each record takes `1 / rate` seconds of the consumer's time, counted
/// from when the previous batch was done or, after a pause, from now less a little credit
/// ([`BURST`]).
struct Pacer {
    per_record: Duration,
    free_at: Instant,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            per_record: Duration::from_secs_f64(1.0 / rate),
            free_at: Instant::now(),
        }
    }

    /// Waits out `records` records' worth of time, unless `stop` is set meanwhile, or
    /// `unpace` says the pacing is over.
    fn pace(&mut self, records: usize, stop: &AtomicBool, unpace: &dyn Fn() -> bool) -> Paced {
        let now = Instant::now();
        let start = self.free_at.max(now.checked_sub(BURST).unwrap_or(now));
        self.free_at = start
            + self
                .per_record
                .saturating_mul(u32::try_from(records).unwrap_or(u32::MAX));
        // In pieces, so that a long batch at a slow rate does not outlast the run.
        loop {
            let now = Instant::now();
            if now >= self.free_at {
                return Paced::Done;
            }
            if stop.load(Ordering::Acquire) {
                return Paced::Stopped;
            }
            if unpace() {
                return Paced::Unpaced;
            }
            std::thread::sleep((self.free_at - now).min(POLL));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn the_pacer_holds_the_rate_and_stops_when_told() {
        let stop = AtomicBool::new(false);
        // 1000 records/s: 50 records take 50 ms of its time.
        let mut p = Pacer::new(1000.0);
        let t = Instant::now();
        assert_eq!(p.pace(50, &stop, &|| false), Paced::Done);
        assert!(p.free_at >= t + Duration::from_millis(45));
        assert!(Instant::now() >= p.free_at);
        // Past the deadline: a long batch is finished at the first look that says so.
        // `unpace` says it from its third look on (the pacer looks between the pieces of
        // its sleep); a pacer that slept on would look again, and is stopped at the fifth.
        let looks = AtomicU32::new(0);
        let past = || {
            let n = looks.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= 5 {
                stop.store(true, Ordering::Release);
            }
            n >= 3
        };
        assert_eq!(p.pace(1_000_000, &stop, &past), Paced::Unpaced);
        assert_eq!(
            looks.load(Ordering::Relaxed),
            3,
            "not finished at the first look that said so"
        );
        // Set to stop: a long batch gives up at once instead of sleeping it out.
        stop.store(true, Ordering::Release);
        assert_eq!(p.pace(1_000_000, &stop, &|| false), Paced::Stopped);
    }
}
