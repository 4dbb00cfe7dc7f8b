//! The engine systems (`mergelog`, `no-coalesce`): closed-loop writers over one `Engine`.

use super::{latency_histogram, record, Plan, RunResult, System};
use crate::error::{CliError, Context};
use crate::workload::{Generator, Op};
use hdrhistogram::Histogram;
use mergelog::{Config, Engine, GetTicket, Ticket};
use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// One writer's numbers.
struct WriterResult {
    ops: u64,
    latency: Histogram<u64>,
    start: Instant,
    finish: Instant,
}

/// A request in flight.
enum Pending {
    Write(Ticket),
    Read(GetTicket),
}

/// Runs the workload against an engine opened in `dir` with `config`; the counters are
/// read after `close`, so they cover every request of the run.
pub fn run(dir: &Path, config: Config, plan: &Plan) -> Result<RunResult, CliError> {
    let system = if config.coalesce {
        System::Mergelog
    } else {
        System::NoCoalesce
    };
    let engine = Engine::open(dir, config)
        .context(|| format!("open the engine in {}", dir.display()))?;
    let barrier = Barrier::new(plan.writers);
    let writers: Vec<Result<WriterResult, CliError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..plan.writers)
            .map(|i| {
                let (engine, barrier) = (&engine, &barrier);
                s.spawn(move || writer(engine, Generator::new(&plan.spec, i), plan, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError("a writer thread panicked".into())))
            })
            .collect()
    });
    // Close before looking at the writers' results: an error there should not leave the
    // flusher running.
    let closed = engine.close();
    let writers = writers.into_iter().collect::<Result<Vec<_>, _>>()?;
    closed.context(|| "close the engine".into())?;

    let stats = engine.stats();
    let mut latency = latency_histogram();
    for w in &writers {
        latency
            .add(&w.latency)
            .context(|| "merge latency histograms".into())?;
    }
    Ok(RunResult {
        system,
        ops: writers.iter().map(|w| w.ops).sum(),
        elapsed: elapsed(writers.iter().map(|w| (w.start, w.finish))),
        latency,
        batches: stats.batches,
        syncs: stats.syncs,
        coalesced_writes: stats.coalesced_writes,
        collapsed_reads: stats.collapsed_reads,
        bytes_written: stats.bytes_written,
        stages: Some(stats.stages),
    })
}

/// First start to last finish.
pub fn elapsed(spans: impl Iterator<Item = (Instant, Instant)>) -> Duration {
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for (start, finish) in spans {
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(finish, |l| l.max(finish)));
    }
    match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    }
}

/// Keeps `plan.depth` requests in flight until the deadline: waits for the oldest (tickets
/// complete in submission order), records its latency, submits the next. After the
/// deadline it only drains, so every submitted request is counted.
fn writer(
    engine: &Engine,
    gen: Result<Generator, String>,
    plan: &Plan,
    barrier: &Barrier,
) -> Result<WriterResult, CliError> {
    let mut latency = latency_histogram();
    let mut inflight: VecDeque<(Pending, Instant)> = VecDeque::with_capacity(plan.depth);
    // Every writer reaches the barrier, even one whose generator failed, so none hangs.
    barrier.wait();
    let mut gen = gen.map_err(CliError)?;
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut ops = 0u64;
    let mut stopping = false;
    loop {
        if !stopping {
            while inflight.len() < plan.depth {
                let op = gen.next_op();
                let submitted = Instant::now();
                let pending = match op {
                    Op::Put { key, value } => {
                        Pending::Write(engine.put(key, value).context(|| "put".into())?)
                    }
                    Op::Get { key } => Pending::Read(engine.get(key).context(|| "get".into())?),
                };
                inflight.push_back((pending, submitted));
            }
        }
        let Some((pending, submitted)) = inflight.pop_front() else {
            break;
        };
        match pending {
            Pending::Write(t) => t.wait().context(|| "wait for a put".into())?,
            Pending::Read(t) => {
                black_box(t.wait().context(|| "wait for a get".into())?);
            }
        }
        let now = Instant::now();
        record(&mut latency, now - submitted);
        ops += 1;
        stopping |= now >= deadline;
    }
    Ok(WriterResult {
        ops,
        latency,
        start,
        finish: Instant::now(),
    })
}
