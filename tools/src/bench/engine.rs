//! The engine systems (`mergelog`, `no-coalesce`): writers over one `Engine`, in a closed
//! or an open loop. The writer loop serves every system that keeps requests outstanding
//! (the engine's and `wal`'s) through [`Target`].

use super::consumer::{self, ConsumerTotals};
use super::cpu;
use super::recorder::{
    add_stage_tail, sample, LagProbe, Progress, Recorder, SampleOptions, Sampled, Slot, StartLine,
};
use super::{fine_timer_slack, sleep_until, Plan, RunHooks, RunResult, System};
use crate::error::{CliError, Context};
use crate::workload::{Generator, Kind, Op};
use mergelog::{Engine, Error, GetTicket, IdTicket, RequestId, StageHistograms, Ticket};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// When a writer ran, and what it left unsent.
pub struct Span {
    pub start: Instant,
    pub finish: Instant,
    /// Open loop: requests due before the deadline that were never sent.
    pub missed: u64,
}

/// What a run's writers (or clients) did: the sampler's sums, their span and the requests
/// an open loop missed; and the CPU the process used meanwhile.
pub(super) type Driven = (
    Result<(Sampled, Duration, u64), CliError>,
    Option<cpu::CpuUse>,
);

/// Runs `writer(index, slot, barrier)` on `plan.writers` threads with a sampler beside them;
/// every writer must reach the barrier once, first thing (and return at once if its `wait`
/// says false). Returns what the sampler summed and the writers' span, and the CPU the
/// process used from the start line to the last writer's end (a writer's setup before the
/// start line, such as drawing its zipf pool, is not counted). `stages` and
/// `consumer_lag` are sampled per interval when given; `started` is set to when the writers
/// start. A thread that cannot be spawned (a process or memory limit) fails the run with an
/// error, after the threads already spawned have been called off the start line.
pub fn drive<F>(
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
    stages: Option<&(dyn Fn() -> StageHistograms + Sync)>,
    consumer_lag: Option<&LagProbe<'_>>,
    started: Option<&OnceLock<Instant>>,
    writer: F,
) -> Driven
where
    F: Fn(usize, &Mutex<Slot>, &StartLine) -> Result<Span, CliError> + Sync,
{
    // Reads the CPU clocks as the writers and the sampler pass it.
    let barrier = StartLine::measuring_cpu(plan.writers + 1);
    // The run, from the start line; the closure is the scope of its early returns.
    let driven = (|| {
        let recorder = Recorder::new(plan.writers, plan.rate.is_some());
        let barrier = &barrier;
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let opts = SampleOptions {
            interval: plan.interval,
            encode: hooks.encode,
            encode_raw: plan.rate.is_some(),
            stages: stages.filter(|_| hooks.stage_intervals),
            consumer_lag,
            progress,
            started,
        };
        let (sampled, spans) = std::thread::scope(|s| {
            let sampler = spawn(s, "sampler", || sample(&recorder, barrier, done_rx, &opts))?;
            let mut handles = Vec::with_capacity(plan.writers);
            for i in 0..plan.writers {
                let (recorder, writer, done) = (&recorder, &writer, done_tx.clone());
                let spawned = spawn(s, "writer", move || {
                    let r = writer(i, recorder.slot(i), barrier);
                    // The sampler's last harvest waits for every writer to let go.
                    drop(done);
                    r
                });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        // The sampler and the writers already spawned wait at the start line for
                        // this one: release them (they return without running), then report.
                        barrier.call_off();
                        return Err(CliError::new(format!(
                            "{} (writer {} of {})",
                            e.message,
                            i + 1,
                            plan.writers
                        )));
                    }
                }
            }
            drop(done_tx);
            let spans: Vec<Result<Span, CliError>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(CliError::new("a writer thread panicked")))
                })
                .collect();
            let sampled = sampler
                .join()
                .unwrap_or_else(|_| Err(CliError::new("the sampler thread panicked")));
            Ok((sampled, spans))
        })?;
        let spans = spans.into_iter().collect::<Result<Vec<_>, _>>()?;
        let missed = spans.iter().map(|s| s.missed).sum();
        let mut elapsed = elapsed(&spans);
        // Open loop: the requests arrive over the scheduled duration, whenever the writers finish
        // (at a low rate a writer's last request completes long before the deadline, or it has
        // none due at all), so the throughput is over that duration at least.
        if let (Some(_), Some(d)) = (plan.rate, plan.duration) {
            elapsed = elapsed.max(d);
        }
        Ok((sampled?, elapsed, missed))
    })();
    (driven, barrier.cpu_at_start().and_then(cpu::since))
}

/// Spawns `f` on a scoped thread named `name`; a failure (the process is out of threads or
/// memory) is an error, not a panic.
pub fn spawn<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, T>, CliError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn_scoped(scope, f)
        .map_err(|e| {
            CliError::new(format!(
                "cannot start a {name} thread: {e} (a process or thread limit? see ulimit -u; \
                 use fewer --writers, --clients or --threads)"
            ))
        })
}

/// Sets a flag when dropped: threads that run until it is set are released however the scope
/// that set them going ends (an error, or a panic).
pub struct SetOnDrop<'a>(pub &'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What a baseline's log counted over a run.
#[derive(Debug, PartialEq, Eq)]
pub struct LogCounts {
    pub writes: u64,
    pub batches: u64,
    pub syncs: u64,
    pub bytes: u64,
}

/// Runs a baseline (a system without an engine): `writer` on the plan's threads as in
/// [`drive`], then its result from what its log counted.
pub fn run_baseline<F>(
    system: System,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
    writer: F,
    counts: impl FnOnce() -> LogCounts,
) -> Result<RunResult, CliError>
where
    F: Fn(usize, &Mutex<Slot>, &StartLine) -> Result<Span, CliError> + Sync,
{
    let (driven, cpu) = drive(plan, hooks, progress, None, None, None, writer);
    let (mut sampled, elapsed, missed) = driven?;
    let c = counts();
    let timeline = std::mem::take(&mut sampled.timeline);
    Ok(RunResult {
        batches: c.batches,
        syncs: c.syncs,
        records_written: c.writes,
        bytes_written: c.bytes,
        cpu,
        ..RunResult::measured(system, sampled, timeline, elapsed, missed)
    })
}

/// First start to last finish.
fn elapsed(spans: &[Span]) -> Duration {
    let first = spans.iter().map(|s| s.start).min();
    let last = spans.iter().map(|s| s.finish).max();
    match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    }
}

/// Runs the workload against an engine opened in `dir` with `config`; the counters are
/// read after `close`, so they cover every request of the run.
pub fn run(
    system: System,
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    let config = plan.engine_config(system);
    let engine = Arc::new(
        Engine::open(dir, config).context(|| format!("open the engine in {}", dir.display()))?,
    );
    // Opened before the writers start, so that it sees every batch of the run.
    let reader = match plan.consumer {
        Some(c) => Some((c, consumer::open(&engine)?)),
        None => None,
    };
    // The disk it takes, sampled beside the writers (every engine system, the same way), and
    // `--retain`'s retiring thread beside them (threaded writers and `--clients` alike).
    let watched = super::space::watching(&engine, dir, || {
        beside_retirer(&engine, plan.retain, |writers_done| match plan.clients {
            // `--clients`: tasks on a runtime instead of writer threads (no consumer: refused).
            Some(clients) => {
                let stages = || engine.stats().stages;
                let (driven, cpu) =
                    super::clients::drive(&engine, clients, plan, hooks, progress, &stages);
                writers_done.store(true, Ordering::Release);
                (driven, cpu, None)
            }
            None => drive_engine(system, &engine, reader, plan, hooks, progress, writers_done),
        })
    });
    let ((driven, cpu, consumed), space) = match watched {
        Ok(w) => w,
        Err(e) => {
            let _ = engine.close();
            return Err(e);
        }
    };
    // Close before looking at the writers' results: an error there should not leave the
    // flusher running.
    let closed = engine.close();
    // A failed consumer closed the engine under the writers: its error is the cause.
    let consumed = consumed.transpose()?;
    if let Some(c) = consumed.filter(|c| c.unpaced_batches > 0) {
        note!(
            "mergelog bench: {}: the writers were still held by the consumer's lag limit {} ms \
             after the deadline; the consumer then stopped pacing itself (--consumer-rate) and \
             processed its last {} batches as fast as it could, so that the run could end",
            system.name(),
            consumer::DRAIN_GRACE.as_millis(),
            c.unpaced_batches
        );
    }
    let (mut sampled, elapsed, missed) = driven?;
    closed.context(|| "close the engine".into())?;
    let space = space?.finish(&engine, dir)?;

    let stats = engine.stats();
    let mut timeline = std::mem::take(&mut sampled.timeline);
    if let Some(last) = &sampled.last_stages {
        add_stage_tail(&mut timeline, last, &stats.stages)?;
    }
    Ok(RunResult {
        batches: stats.batches,
        syncs: stats.syncs,
        coalesced_writes: stats.coalesced_writes,
        collapsed_reads: stats.collapsed_reads,
        records_written: stats.records_written,
        bytes_written: stats.bytes_written,
        consumer: consumed.map(|c| ConsumerTotals {
            throttled: stats.throttled,
            ..c
        }),
        engine: Some(stats),
        cpu,
        space: vec![space],
        trace: (plan.engine.trace_events > 0).then(|| engine.take_trace()),
        ..RunResult::measured(system, sampled, timeline, elapsed, missed)
    })
}

/// What [`drive_engine`] hands back: what [`drive`] does, and what the consumer did (with
/// `--consumer`).
type DrivenWithConsumer = (
    Result<(Sampled, Duration, u64), CliError>,
    Option<cpu::CpuUse>,
    Option<Result<ConsumerTotals, CliError>>,
);

/// `--retain` (`retain`): runs `drive` with the retiring thread beside it, which retires
/// all but the newest `keep` segments until the flag `drive` is given is set (`drive` sets
/// it once its writers or clients are done; it is set anyway when `drive` returns). A
/// failure of the retiring thread fails the run. Without `--retain`, just `drive`.
fn beside_retirer(
    engine: &Engine,
    retain: Option<usize>,
    drive: impl FnOnce(&AtomicBool) -> DrivenWithConsumer,
) -> DrivenWithConsumer {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // However this scope ends, the retiring thread is told to stop first.
        let stop = SetOnDrop(&done);
        let retirer = match retain {
            Some(keep) => {
                let done = &done;
                match spawn(scope, "retirer", move || retire_behind(engine, keep, done)) {
                    Ok(h) => Some(h),
                    Err(e) => return (Err(e), None, None),
                }
            }
            None => None,
        };
        let (r, cpu, consumed) = drive(&done);
        drop(stop);
        let retired = retirer.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(CliError::new("the retiring thread panicked")))
        });
        match retired {
            Some(Err(e)) => (Err(e), cpu, consumed),
            _ => (r, cpu, consumed),
        }
    })
}

/// The writers on `engine`, with the consumer (`reader`) beside them until the writers are
/// done, when `done` is set (it also stops [`beside_retirer`]'s thread). The CPU is
/// measured before the engine closes: its threads' clocks go with them. A paced consumer
/// stops pacing once the run is [`consumer::DRAIN_GRACE`] past its deadline (writers still
/// held by its lag throttle would otherwise wait for it for as long as its rate makes them).
fn drive_engine(
    system: System,
    engine: &Engine,
    reader: Option<(consumer::ConsumerPlan, mergelog::Consumer)>,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
    done: &AtomicBool,
) -> DrivenWithConsumer {
    let stages = || engine.stats().stages;
    let lag = || consumer::lag_sample(engine);
    let lag_probe: Option<&LagProbe<'_>> = reader.as_ref().map(|_| &lag as &LagProbe<'_>);
    let started = OnceLock::new();
    let unpace = || match (started.get(), plan.duration) {
        (Some(&start), Some(d)) => Instant::now() >= start + d + consumer::DRAIN_GRACE,
        _ => false,
    };
    std::thread::scope(|scope| {
        // However this scope ends, the threads beside the writers are told to stop first.
        let stop = SetOnDrop(done);
        let consumer = match reader {
            Some((c, handle)) => {
                let unpace = &unpace;
                let spawned = spawn(scope, "consumer", move || {
                    consumer::run(engine, handle, &c, done, unpace)
                });
                match spawned {
                    Ok(h) => Some(h),
                    Err(e) => return (Err(e), None, None),
                }
            }
            None => None,
        };
        let (r, cpu) = drive(
            plan,
            hooks,
            progress,
            Some(&stages),
            lag_probe,
            Some(&started),
            |i, slot, barrier| {
                writer(
                    &EngineTarget {
                        engine,
                        ids: (system == System::MergelogIds).then(|| (i, AtomicU64::new(0))),
                        get_put: system == System::MergelogGetput,
                    },
                    Generator::new(&plan.spec, i),
                    i,
                    plan,
                    slot,
                    barrier,
                )
            },
        );
        drop(stop);
        let consumed = consumer.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(CliError::new("the consumer thread panicked")))
        });
        (r, cpu, consumed)
    })
}

/// `--retain`: every 10 ms, retires all but the newest `keep` segments, and once more after
/// `done`, so the log the run leaves keeps what was asked (the writers can fill many
/// segments in 10 ms: a test once found 20 of 53 left without the last pass).
fn retire_behind(engine: &Engine, keep: usize, done: &AtomicBool) -> Result<(), CliError> {
    loop {
        let last = done.load(Ordering::Acquire);
        let segs = engine.segments();
        if segs.len() > keep {
            engine
                .retire_before(segs[segs.len() - keep].first_seq)
                .context(|| "retire old segments (--retain)".into())?;
        }
        if last {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a writer submits to and waits on: a system whose requests complete in submission
/// order and can be outstanding several at a time.
pub trait Target: Sync {
    /// A request in flight.
    type Pending;
    fn submit(&self, op: Op<'_>) -> Result<Self::Pending, CliError>;
    /// Waits for completion until `deadline` (forever if `None`); true once complete.
    fn wait(&self, pending: &Self::Pending, deadline: Option<Instant>) -> Result<bool, CliError>;
    /// True (and the outcome taken) if the request is already complete; never blocks.
    fn try_finish(&self, pending: &Self::Pending) -> Result<bool, CliError>;
}

struct EngineTarget<'a> {
    engine: &'a Engine,
    /// `mergelog-ids`: this writer's index and the number of its next request id (ids are
    /// unique across writers: the index is their high half).
    ids: Option<(usize, AtomicU64)>,
    /// `mergelog-getput`: a merge is done by the client, as a read of the durable value and a
    /// put of the sum (not atomic: concurrent increments of a key can be lost).
    get_put: bool,
}

impl Target for EngineTarget<'_> {
    type Pending = Pending;

    fn submit(&self, op: Op<'_>) -> Result<Pending, CliError> {
        let engine = self.engine;
        if let Some((writer, next)) = &self.ids {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let id = RequestId::from((*writer as u128) << 64 | u128::from(n));
            return Ok(match op {
                Op::Put { key, value } => Pending::IdWrite(
                    engine
                        .put_with_id(id, key, value)
                        .context(|| "put".into())?,
                ),
                Op::Delete { key } => {
                    Pending::IdWrite(engine.delete_with_id(id, key).context(|| "delete".into())?)
                }
                Op::Get { key } => Pending::Read(engine.get(key).context(|| "get".into())?),
                Op::Merge { key, operand } => Pending::IdWrite(
                    engine
                        .merge_with_id(id, key, operand)
                        .context(|| "merge".into())?,
                ),
            });
        }
        if let (Op::Merge { key, operand }, true) = (&op, self.get_put) {
            return get_then_put(engine, key, operand).map(Pending::Write);
        }
        Ok(match op {
            Op::Put { key, value } => {
                Pending::Write(engine.put(key, value).context(|| "put".into())?)
            }
            Op::Delete { key } => Pending::Write(engine.delete(key).context(|| "delete".into())?),
            Op::Get { key } => Pending::Read(engine.get(key).context(|| "get".into())?),
            Op::Merge { key, operand } => {
                Pending::Write(engine.merge(key, operand).context(|| "merge".into())?)
            }
        })
    }

    fn wait(&self, pending: &Pending, deadline: Option<Instant>) -> Result<bool, CliError> {
        pending.wait(deadline)
    }

    fn try_finish(&self, pending: &Pending) -> Result<bool, CliError> {
        pending.try_finish()
    }
}

/// An increment done by the client: the durable value of `key` (0 if absent) plus
/// `operand`, put back. What a caller without merges writes: two calls, and not atomic.
fn get_then_put(engine: &Engine, key: &[u8], operand: &[u8]) -> Result<Ticket, CliError> {
    let counter = |v: &[u8]| i64::from_le_bytes(v.try_into().unwrap_or_default());
    let now = engine.read(key).context(|| "read".into())?;
    let sum = now
        .map_or(0, |v| counter(&v))
        .wrapping_add(counter(operand));
    engine.put(key, &sum.to_le_bytes()).context(|| "put".into())
}

/// An engine request in flight.
enum Pending {
    Write(Ticket),
    IdWrite(IdTicket),
    Read(GetTicket),
}

impl Pending {
    fn wait(&self, deadline: Option<Instant>) -> Result<bool, CliError> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let result = match (self, timeout) {
            (Pending::Write(t), None) => t.wait().map(|seq| {
                black_box(seq);
            }),
            (Pending::Write(t), Some(d)) => t.wait_timeout(d).map(|seq| {
                black_box(seq);
            }),
            (Pending::IdWrite(t), None) => t.wait().map(|o| {
                black_box(o);
            }),
            (Pending::IdWrite(t), Some(d)) => t.wait_timeout(d).map(|o| {
                black_box(o);
            }),
            (Pending::Read(t), None) => t.wait().map(|v| drop(black_box(v))),
            (Pending::Read(t), Some(d)) => t.wait_timeout(d).map(|v| drop(black_box(v))),
        };
        match result {
            Ok(()) => Ok(true),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(CliError::new(format!("wait for a request: {e}"))),
        }
    }

    fn try_finish(&self) -> Result<bool, CliError> {
        let done = match self {
            Pending::Write(t) => t.is_done(),
            Pending::IdWrite(t) => t.is_done(),
            Pending::Read(t) => t.is_done(),
        };
        if done {
            self.wait(None)
        } else {
            Ok(false)
        }
    }
}

struct InFlight<P> {
    pending: P,
    kind: Kind,
    /// When the request was due: its scheduled time (open loop) or its submission.
    intended: Instant,
    sent: Instant,
}

/// `Instant::now` from the CPU's time-stamp counter (quanta): 13 ns a read on the project's
/// machine against 37 ns for the OS clock, which the writers read once per request on the cores
/// the engine runs on. Readings are anchored to one `Instant` per writer; over a run they drift
/// from the OS clock by far less than a microsecond (quanta calibrates the counter against it),
/// and latencies are differences of two readings of the same clock.
#[derive(Clone)]
pub(super) struct FastClock {
    counter: quanta::Clock,
    anchor: Instant,
    anchor_raw: u64,
}

impl FastClock {
    pub(super) fn new() -> FastClock {
        let counter = quanta::Clock::new();
        let anchor_raw = counter.raw();
        FastClock {
            anchor: Instant::now(),
            anchor_raw,
            counter,
        }
    }

    pub(super) fn now(&self) -> Instant {
        let raw = self.counter.raw();
        self.anchor + Duration::from_nanos(self.counter.delta_as_nanos(self.anchor_raw, raw))
    }
}

/// One writer. Closed loop: keeps `depth` requests in flight, submitting the next when the
/// oldest completes (tickets complete in submission order). Open loop: submits each request
/// at its scheduled time, with up to `depth` in flight; a writer at its depth waits for the
/// oldest, so its sends fall behind schedule and the corrected latency grows. After the
/// limit it only drains, so every submitted request is counted.
pub fn writer<T: Target>(
    target: &T,
    gen: Result<Generator, String>,
    index: usize,
    plan: &Plan,
    slot: &Mutex<Slot>,
    barrier: &StartLine,
) -> Result<Span, CliError> {
    let mut inflight: VecDeque<InFlight<T::Pending>> = VecDeque::with_capacity(plan.depth);
    if plan.rate.is_some() {
        fine_timer_slack();
    }
    // Every writer reaches the barrier, even one whose generator failed, so none hangs.
    if !barrier.wait() {
        return Err(CliError::new("the run was called off before it started"));
    }
    let mut gen = gen.map_err(CliError::new)?;
    let clock = FastClock::new();
    let start = Instant::now();
    let limit = plan.limit(index, start);
    let mut schedule = plan.schedule(index, start);
    let next_time = |schedule: &Option<super::Schedule>| {
        schedule
            .as_ref()
            .map_or_else(Instant::now, super::Schedule::next_at)
    };
    let mut issued = 0u64;
    let now = Instant::now();
    let mut stopping = limit.reached(0, next_time(&schedule), now);
    loop {
        while !stopping && inflight.len() < plan.depth {
            let due = match &schedule {
                Some(s) if s.next_at() > Instant::now() => break,
                Some(s) => Some(s.next_at()),
                None => None,
            };
            let request = submit(target, &mut gen, &clock, due)?;
            let sent = request.sent;
            inflight.push_back(request);
            issued += 1;
            if let Some(s) = &mut schedule {
                s.advance();
            }
            let next = schedule.as_ref().map_or(sent, super::Schedule::next_at);
            stopping = limit.reached(issued, next, sent);
        }
        let Some(oldest) = inflight.front() else {
            if stopping {
                break;
            }
            // Open loop, nothing in flight: the next request is not due yet.
            sleep_until(next_time(&schedule));
            continue;
        };
        // With room for another request, wait for the oldest only until the next is due.
        let until = match &schedule {
            Some(s) if !stopping && inflight.len() < plan.depth => Some(s.next_at()),
            _ => None,
        };
        if !target.wait(&oldest.pending, until)? {
            continue;
        }
        let now = record_completed(target, &mut inflight, &clock, slot)?;
        // The deadline may have passed while it waited: decided again now (with the clock
        // reading that stamped the completions), or it would submit once more after it.
        if !stopping {
            let next = schedule.as_ref().map_or(now, super::Schedule::next_at);
            stopping = limit.reached(issued, next, now);
        }
    }
    Ok(Span {
        start,
        finish: Instant::now(),
        missed: limit.missed(schedule.as_ref()),
    })
}

/// Submits the generator's next operation, `due` at its scheduled time in an open loop.
fn submit<T: Target>(
    target: &T,
    gen: &mut Generator,
    clock: &FastClock,
    due: Option<Instant>,
) -> Result<InFlight<T::Pending>, CliError> {
    let op = gen.next_op();
    let kind = op.kind();
    // One clock read per request: it stamps the request and serves the stopping
    // rule (the writers share two cores with the engine, so the harness keeps its
    // own work per request small).
    let sent = clock.now();
    let pending = target.submit(op)?;
    Ok(InFlight {
        pending,
        kind,
        intended: due.map_or(sent, |d| d.min(sent)),
        sent,
    })
}

/// Records the oldest request of `inflight`, which has completed, and every one after it
/// that has too, into `slot`; returns the clock reading they were stamped with.
fn record_completed<T: Target>(
    target: &T,
    inflight: &mut VecDeque<InFlight<T::Pending>>,
    clock: &FastClock,
    slot: &Mutex<Slot>,
) -> Result<Instant, CliError> {
    // Tickets complete in order, usually many at once: record every one already
    // complete with one clock read and one lock.
    let now = clock.now();
    let mut slot = slot.lock();
    while let Some(f) = inflight.pop_front() {
        slot.record(f.kind, now - f.intended, now - f.sent);
        match inflight.front() {
            Some(next) if target.try_finish(&next.pending)? => {}
            _ => break,
        }
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::FastClock;
    use std::time::{Duration, Instant};

    /// A system whose first request completes only once the run's deadline has passed (a
    /// stall over the deadline), and every later one at once; it notes when each was submitted.
    struct StallsOverTheDeadline {
        length: Duration,
        submitted: parking_lot::Mutex<Vec<Instant>>,
    }

    impl super::Target for StallsOverTheDeadline {
        type Pending = usize;

        fn submit(&self, _: crate::workload::Op<'_>) -> Result<usize, crate::error::CliError> {
            let mut s = self.submitted.lock();
            s.push(Instant::now());
            Ok(s.len() - 1)
        }

        fn wait(&self, &n: &usize, _: Option<Instant>) -> Result<bool, crate::error::CliError> {
            if n == 0 {
                // The writer's start line is before its first submission: a run's length
                // after that submission is past the deadline (and 2 ms more past it than the
                // writer's time-stamp clock can differ from the OS clock).
                let end = self.submitted.lock()[0] + self.length + Duration::from_millis(2);
                super::sleep_until(end);
                while Instant::now() < end {
                    std::thread::yield_now();
                }
            }
            Ok(true)
        }

        fn try_finish(&self, n: &usize) -> Result<bool, crate::error::CliError> {
            self.wait(n, None)
        }
    }

    /// Review (session 35): a closed-loop writer stops issuing at the deadline (`Limit`'s
    /// rule, as the blocking writers and the clients keep it). It decided whether to stop only
    /// when it submitted, so a request that completed after the deadline let it submit one
    /// more, and wait for it, after the deadline: engine and `wal` runs got an extra round
    /// trip per writer that `naive` and the peers do not.
    #[test]
    fn a_closed_loop_writer_submits_nothing_after_its_deadline() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            w: crate::bench::WorkloadArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "t",
            "--writers",
            "1",
            "--depth",
            "1",
            "--duration",
            "0.05",
            "--dist",
            "uniform",
        ])
        .unwrap();
        let plan = crate::bench::plan(&cli.w).unwrap();
        let target = StallsOverTheDeadline {
            length: plan.duration.unwrap(),
            submitted: parking_lot::Mutex::new(Vec::new()),
        };
        let recorder = super::Recorder::new(1, false);
        let line = super::StartLine::new(1);
        let gen = crate::workload::Generator::new(&plan.spec, 0);
        super::writer(&target, gen, 0, &plan, recorder.slot(0), &line).unwrap();
        let submitted = target.submitted.into_inner();
        assert_eq!(
            submitted.len(),
            1,
            "the writer submitted {} requests, {} of them after the deadline",
            submitted.len(),
            submitted.len() - 1
        );
    }

    #[test]
    fn fast_clock_keeps_time_with_the_os_clock() {
        let clock = FastClock::new();
        let mut last = clock.now();
        for pause_ms in [0, 1, 20, 50] {
            std::thread::sleep(Duration::from_millis(pause_ms));
            let before = Instant::now();
            let now = clock.now();
            let after = Instant::now();
            // Read between two OS clock readings, up to the calibration's error (far below
            // a millisecond after 70 ms: a scaling error of 2 % would already show).
            let slack = Duration::from_millis(1);
            assert!(
                now + slack >= before && now <= after + slack,
                "fast clock {:?} outside [{before:?}, {after:?}]",
                now
            );
            assert!(now >= last, "fast clock went backwards");
            last = now;
        }
    }
}
