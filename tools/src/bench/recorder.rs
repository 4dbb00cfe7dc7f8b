//! Latency recording shared by every system: each writer records into its own slot (one
//! uncontended lock per operation); a sampler thread swaps the slots out once per interval,
//! which gives the throughput-over-time series, the interval histograms of `--hlog` and the
//! live progress line, and sums them into the run's totals.
//!
//! Two latencies are recorded per operation: *corrected*, from the time the request was
//! meant to be sent (open loop: its slot in the arrival schedule) to completion, and *raw*,
//! from the time it was actually submitted. In a closed loop the two are the same.

use super::consumer::LagSample;
use super::latency_histogram;
use crate::error::{CliError, Context};
use crate::workload::Kind;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mergelog::StageHistograms;
use parking_lot::Mutex;
use std::io::IsTerminal;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What one writer measured since the sampler last looked.
pub struct Slot {
    corrected: Histogram<u64>,
    /// Open loop only: in a closed loop raw and corrected latency are the same values, so
    /// only `corrected` is recorded (the writers share the cores with what they measure) and
    /// stands for both when the sampler harvests.
    raw: Histogram<u64>,
    open_loop: bool,
    puts: u64,
    deletes: u64,
    gets: u64,
}

impl Slot {
    fn new(open_loop: bool) -> Slot {
        Slot {
            corrected: latency_histogram(),
            raw: latency_histogram(),
            open_loop,
            puts: 0,
            deletes: 0,
            gets: 0,
        }
    }

    /// Records one completed operation.
    pub fn record(&mut self, kind: Kind, corrected: Duration, raw: Duration) {
        record(&mut self.corrected, corrected);
        if self.open_loop {
            record(&mut self.raw, raw);
        } else {
            debug_assert_eq!(corrected, raw, "closed loop: sent when due");
        }
        match kind {
            // A merge is a write, counted with the puts.
            Kind::Put | Kind::Merge => self.puts += 1,
            Kind::Delete => self.deletes += 1,
            Kind::Get => self.gets += 1,
        }
    }
}

/// Records `d` into `h` in nanoseconds, saturating at the histogram's bounds.
fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1, h.high()));
}

/// The most slots a recorder keeps: with more writers (`--clients` runs thousands) they
/// share them, writer `i` recording into slot `i % SLOTS_MAX`, so that the sampler's harvest
/// per interval stays small.
const SLOTS_MAX: usize = 64;

/// One slot per writer (up to [`SLOTS_MAX`]).
pub struct Recorder {
    slots: Vec<Mutex<Slot>>,
    open_loop: bool,
}

impl Recorder {
    /// `open_loop`: requests have a schedule, so raw and corrected latency differ.
    pub fn new(writers: usize, open_loop: bool) -> Recorder {
        Recorder {
            slots: (0..writers.clamp(1, SLOTS_MAX))
                .map(|_| Mutex::new(Slot::new(open_loop)))
                .collect(),
            open_loop,
        }
    }

    pub fn slot(&self, writer: usize) -> &Mutex<Slot> {
        &self.slots[writer % self.slots.len()]
    }
}

/// One sampling interval of a run.
pub struct Interval {
    /// The run's round (0-based; always 0 without `--rounds`).
    pub round: usize,
    /// Start, from the start of the run.
    pub start: Duration,
    pub duration: Duration,
    /// Operations completed in the interval.
    pub ops: u64,
    /// Corrected latency percentiles of the interval, ns (0 when no op completed).
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The interval's histograms, V2-deflate encoded, when `--hlog` wants them: the
    /// corrected latency, the raw latency (open loop only) and the engine stages (profile).
    pub encoded: Vec<(String, Vec<u8>)>,
    /// `--consumer`: the consumer's lag at the end of the interval.
    pub consumer_lag: Option<LagSample>,
}

/// What the sampler hands back when every writer is done.
pub struct Sampled {
    pub latency: Histogram<u64>,
    pub latency_raw: Histogram<u64>,
    pub puts: u64,
    pub deletes: u64,
    pub gets: u64,
    pub timeline: Vec<Interval>,
    /// The engine's stage histograms at the last harvest (when sampled per interval).
    pub last_stages: Option<StageHistograms>,
    /// When the run started (the sampler passed the start line): the intervals' `start`
    /// counts from it. `None` if the start was called off.
    pub start: Option<Instant>,
}

/// What the sampler does besides summing.
pub struct SampleOptions<'a> {
    pub interval: Duration,
    /// Keep encoded interval histograms for `--hlog`.
    pub encode: bool,
    /// Also encode the raw latency (open loop: it differs from the corrected one).
    pub encode_raw: bool,
    /// Cumulative engine stage histograms, for per-interval stage deltas (profile).
    pub stages: Option<&'a (dyn Fn() -> StageHistograms + Sync)>,
    /// `--consumer`: measures the consumer's lag, once at the end of every interval.
    pub consumer_lag: Option<&'a LagProbe<'a>>,
    pub progress: &'a Progress,
    /// Set to when the run started (the writers passed the start line).
    pub started: Option<&'a std::sync::OnceLock<Instant>>,
}

/// Measures a consumer's lag (see `consumer::lag_sample`).
pub type LagProbe<'a> = dyn Fn() -> Result<LagSample, CliError> + Sync + 'a;

/// Where a run's threads (its writers and the sampler) wait for each other before they start:
/// a barrier that the thread starting them can call off, so that when one of them cannot be
/// spawned (a process limit) the others return instead of waiting forever for it.
pub struct StartLine {
    /// Threads arrived, and whether the start was called off.
    state: parking_lot::Mutex<(usize, bool)>,
    all_here: parking_lot::Condvar,
    threads: usize,
    /// [`StartLine::measuring_cpu`]: the process's CPU clocks as the run starts.
    cpu: Option<std::sync::OnceLock<super::cpu::CpuSample>>,
}

impl StartLine {
    /// A start line for `threads` threads.
    pub fn new(threads: usize) -> StartLine {
        StartLine {
            state: parking_lot::Mutex::new((0, false)),
            all_here: parking_lot::Condvar::new(),
            threads,
            cpu: None,
        }
    }

    /// A start line that reads the process's CPU clocks as the run starts: the last thread
    /// to arrive reads them before it lets any pass, so that everything done before the line
    /// (a writer's zipf pool) is left out of the run's CPU and nothing done after it is
    /// (read by a thread after the line, they missed what the others did until it ran).
    pub fn measuring_cpu(threads: usize) -> StartLine {
        StartLine {
            cpu: Some(std::sync::OnceLock::new()),
            ..StartLine::new(threads)
        }
    }

    /// The CPU clocks read as the run started (unset if it did not, or if they cannot be
    /// read); `None` for a line made with [`StartLine::new`].
    pub fn cpu_at_start(&self) -> Option<&std::sync::OnceLock<super::cpu::CpuSample>> {
        self.cpu.as_ref()
    }

    /// Waits until every thread has arrived (true: start) or the start is called off
    /// (false: return at once, without running).
    #[must_use]
    pub fn wait(&self) -> bool {
        let mut s = self.state.lock();
        s.0 += 1;
        if s.0 >= self.threads {
            if let (Some(cpu), false) = (&self.cpu, s.1) {
                if let Some(now) = super::cpu::CpuSample::now() {
                    let _ = cpu.set(now);
                }
            }
            self.all_here.notify_all();
        }
        while s.0 < self.threads && !s.1 {
            self.all_here.wait(&mut s);
        }
        !s.1
    }

    /// Calls the start off: every thread waiting, and every one that comes, returns false.
    pub fn call_off(&self) {
        self.state.lock().1 = true;
        self.all_here.notify_all();
    }
}

/// Runs on its own thread for the length of a run: waits at `barrier` with the writers,
/// then harvests every `interval` until every writer has dropped its end of `done`. If the
/// start is called off, returns at once with nothing sampled.
pub fn sample(
    recorder: &Recorder,
    barrier: &StartLine,
    done: Receiver<()>,
    opts: &SampleOptions<'_>,
) -> Result<Sampled, CliError> {
    let mut out = Sampled::empty();
    let mut spare = Slot::new(recorder.open_loop);
    let mut serializer = V2DeflateSerializer::new();
    let mut prev_stages = if opts.encode {
        opts.stages.map(|f| f())
    } else {
        None
    };
    if !barrier.wait() {
        return Ok(out);
    }
    let start = Instant::now();
    out.start = Some(start);
    if let Some(started) = opts.started {
        let _ = started.set(start);
    }
    let mut last = start;
    let mut tick = 1u32;
    loop {
        let next = start + opts.interval * tick;
        let finished = match done.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if !finished && Instant::now() < next {
            continue; // a stray message; nothing is sent, but do not cut a short interval
        }
        let now = Instant::now();
        tick = ((now - start).as_nanos() / opts.interval.as_nanos().max(1)) as u32 + 1;
        let (interval, interval_raw) = recorder.harvest(&mut spare, &mut out)?;
        let encoded = if opts.encode {
            encode(
                &mut serializer,
                opts,
                &interval,
                &interval_raw,
                prev_stages.as_mut(),
            )?
        } else {
            Vec::new()
        };
        let ops = out.add_interval(&interval, &interval_raw, last - start, now - last, encoded)?;
        if let (Some(probe), Some(point)) = (opts.consumer_lag, out.timeline.last_mut()) {
            point.consumer_lag = Some(probe()?);
        }
        opts.progress.update(
            now - start,
            out.latency.len(),
            ops as f64 / (now - last).as_secs_f64().max(1e-9),
        );
        last = now;
        if finished {
            out.last_stages = prev_stages;
            return Ok(out);
        }
    }
}

impl Recorder {
    /// Takes what every writer recorded since the last harvest: its operation counts into
    /// `out`, its latencies into the interval's corrected and raw histograms (returned).
    /// `spare` is a cleared slot, and is one again after.
    fn harvest(
        &self,
        spare: &mut Slot,
        out: &mut Sampled,
    ) -> Result<(Histogram<u64>, Histogram<u64>), CliError> {
        // Swap every writer's slot for the cleared spare; merge outside the lock.
        let mut interval = latency_histogram();
        let mut interval_raw = latency_histogram();
        for slot in &self.slots {
            std::mem::swap(&mut *slot.lock(), spare);
            interval
                .add(&spare.corrected)
                .context(|| "merge latency histograms".into())?;
            let raw = if spare.open_loop {
                &spare.raw
            } else {
                &spare.corrected
            };
            interval_raw
                .add(raw)
                .context(|| "merge latency histograms".into())?;
            out.puts += spare.puts;
            out.deletes += spare.deletes;
            out.gets += spare.gets;
            spare.corrected.reset();
            spare.raw.reset();
            (spare.puts, spare.deletes, spare.gets) = (0, 0, 0);
        }
        Ok((interval, interval_raw))
    }
}

/// The interval's histograms for `--hlog`, V2-deflate encoded and tagged: the corrected
/// latency, the raw one (`encode_raw`) and, with `prev` (the stages at the last harvest,
/// then updated to now), each engine stage's growth since.
fn encode(
    serializer: &mut V2DeflateSerializer,
    opts: &SampleOptions<'_>,
    interval: &Histogram<u64>,
    interval_raw: &Histogram<u64>,
    prev: Option<&mut StageHistograms>,
) -> Result<Vec<(String, Vec<u8>)>, CliError> {
    let mut encoded = Vec::new();
    let mut enc = |tag: String, h: &Histogram<u64>| -> Result<(), CliError> {
        let mut buf = Vec::new();
        serializer
            .serialize(h, &mut buf)
            .map_err(|e| CliError::new(format!("encode an interval histogram: {e:?}")))?;
        encoded.push((tag, buf));
        Ok(())
    };
    enc(String::new(), interval)?;
    if opts.encode_raw {
        enc("raw".into(), interval_raw)?;
    }
    if let (Some(f), Some(prev)) = (opts.stages, prev) {
        let now_stages = f();
        for ((name, cur), (_, old)) in now_stages.stages().iter().zip(prev.stages()) {
            let mut delta = (*cur).clone();
            // Cumulative histograms only grow, so the difference is well-defined.
            delta
                .subtract(old)
                .context(|| format!("difference of the {name} histograms"))?;
            enc((*name).into(), &delta)?;
        }
        *prev = now_stages;
    }
    Ok(encoded)
}

impl Sampled {
    fn empty() -> Sampled {
        Sampled {
            latency: latency_histogram(),
            latency_raw: latency_histogram(),
            puts: 0,
            deletes: 0,
            gets: 0,
            timeline: Vec::new(),
            last_stages: None,
            start: None,
        }
    }

    /// Adds one interval, `start` from the start of the run: its histograms to the totals
    /// and its point to the timeline. Returns the operations it completed.
    fn add_interval(
        &mut self,
        interval: &Histogram<u64>,
        interval_raw: &Histogram<u64>,
        start: Duration,
        duration: Duration,
        encoded: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, CliError> {
        let ops = interval.len();
        self.latency
            .add(interval)
            .context(|| "merge latency histograms".into())?;
        self.latency_raw
            .add(interval_raw)
            .context(|| "merge latency histograms".into())?;
        let quantile = |q| {
            if ops == 0 {
                0
            } else {
                interval.value_at_quantile(q)
            }
        };
        self.timeline.push(Interval {
            round: 0,
            start,
            duration,
            ops,
            p50_ns: quantile(0.5),
            p99_ns: quantile(0.99),
            max_ns: interval.max(),
            encoded,
            consumer_lag: None,
        });
        Ok(ops)
    }
}

/// Adds what the engine's stages recorded after the last harvest (the last batches' stage
/// records land after their waiters wake; `close` may write one more) to the last
/// interval, so the interval log's stage histograms add up to the engine's totals.
pub fn add_stage_tail(
    timeline: &mut [Interval],
    last: &StageHistograms,
    fin: &StageHistograms,
) -> Result<(), CliError> {
    let Some(interval) = timeline.last_mut() else {
        return Ok(());
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    for ((name, cur), (_, old)) in fin.stages().iter().zip(last.stages()) {
        let mut delta = (*cur).clone();
        delta
            .subtract(old)
            .context(|| format!("difference of the {name} histograms"))?;
        if delta.is_empty() {
            continue;
        }
        let Some((_, bytes)) = interval.encoded.iter_mut().find(|(t, _)| t == name) else {
            continue;
        };
        let mut h: Histogram<u64> = deserializer
            .deserialize(&mut &bytes[..])
            .map_err(|e| CliError::new(format!("decode an interval histogram: {e:?}")))?;
        h.add(&delta)
            .context(|| "merge latency histograms".into())?;
        bytes.clear();
        serializer
            .serialize(&h, bytes)
            .map_err(|e| CliError::new(format!("encode an interval histogram: {e:?}")))?;
    }
    Ok(())
}

/// The progress bar of one run: on stderr, only when stderr is a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Length in ops (`--ops`) or else in milliseconds.
    by_ops: bool,
}

impl Progress {
    /// `total`: the run's operations (`by_ops`) or its duration.
    pub fn new(label: &str, by_ops: bool, total: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None, by_ops };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = if by_ops {
            "{prefix:>12} [{bar:30}] {pos}/{len} ops  {msg}"
        } else {
            "{prefix:>12} [{bar:30}] {elapsed:>4}  {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        Progress {
            bar: Some(bar),
            by_ops,
        }
    }

    fn update(&self, elapsed: Duration, ops: u64, rate: f64) {
        if let Some(bar) = &self.bar {
            let pos = if self.by_ops {
                ops
            } else {
                elapsed.as_millis() as u64
            };
            bar.set_position(pos.min(bar.length().unwrap_or(u64::MAX)));
            bar.set_message(format!("{} ops/s", super::report::thousands(rate as u64)));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
