//! `--clients N --threads T`: many logical clients, each with one request outstanding. For
//! the engine systems the clients are tasks on a tokio multi-thread runtime with T workers:
//! each loops on submit (`put_async`, `delete_async`, `merge_async`, `get_async`), await the
//! ticket, record the latency. The baselines' APIs block, so there the N clients are N
//! threads, each running the blocking loop at depth 1 (`Plan::writers = N`, `Plan::depth = 1`;
//! nothing here).

use super::cpu;
use super::engine::{spawn, Driven, FastClock, Span};
use super::recorder::{sample, Progress, Recorder, SampleOptions, StartLine};
use super::{Plan, RunHooks};
use crate::error::{CliError, Context};
use crate::workload::{Generator, Op};
use mergelog::{Engine, StageHistograms};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--clients N --threads T`.
#[derive(Clone, Copy, Debug)]
pub struct Clients {
    /// Logical clients, one request outstanding each.
    pub n: usize,
    /// Executor threads (engine systems).
    pub threads: usize,
}

/// Runs `clients.n` client tasks on `engine` on a runtime of `clients.threads` workers, with
/// the sampler beside them, as `engine::drive` does for threads.
pub fn drive(
    engine: &Arc<Engine>,
    clients: Clients,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
    stages: &(dyn Fn() -> StageHistograms + Sync),
) -> Driven {
    let runtime = match runtime(clients.threads) {
        Ok(rt) => rt,
        Err(e) => return (Err(e), None),
    };
    // Drawn before the clients start, as the threads of `engine::drive` draw theirs before
    // their barrier: a generator's zipf pool takes a while to draw.
    let gens: Vec<_> = (0..clients.n)
        .map(|i| Generator::new(&plan.spec, i))
        .collect();
    let recorder = Arc::new(Recorder::new(plan.writers, false));
    // The sampler and this thread: the clients start once both are ready, and the CPU clocks
    // are read as they pass, as in `engine::drive`.
    let barrier = StartLine::measuring_cpu(2);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let opts = SampleOptions {
        interval: plan.interval,
        encode: hooks.encode,
        encode_raw: false,
        stages: Some(stages).filter(|_| hooks.stage_intervals),
        consumer_lag: None,
        progress,
        started: None,
    };
    let r = std::thread::scope(|s| {
        let sampler = spawn(s, "sampler", || sample(&recorder, &barrier, done_rx, &opts))?;
        let _ = barrier.wait();
        let spans = runtime.block_on(run_clients(engine, gens, plan, &recorder));
        drop(done_tx);
        let sampled = sampler
            .join()
            .unwrap_or_else(|_| Err(CliError::new("the sampler thread panicked")));
        Ok((sampled, spans))
    });
    // Read before the runtime shuts down and before the engine closes (its threads' clocks
    // go with them), as `engine::drive` does.
    let cpu = barrier.cpu_at_start().and_then(cpu::since);
    let (sampled, spans) = match r {
        Ok(r) => r,
        Err(e) => {
            runtime.shutdown_background();
            return (Err(e), cpu);
        }
    };
    let result = spans.and_then(|spans| {
        let first = spans.iter().map(|s| s.start).min();
        let last = spans.iter().map(|s| s.finish).max();
        let elapsed = match (first, last) {
            (Some(f), Some(l)) => l - f,
            _ => Duration::ZERO,
        };
        Ok((sampled?, elapsed, 0))
    });
    runtime.shutdown_background();
    (result, cpu)
}

/// The clients' runtime, of `threads` workers. tokio panics when it cannot start a worker
/// thread (a process limit): the threads are tried first, as plain threads that end at once,
/// so that a limit is an error; a panic that still comes from the build is caught (its message
/// printed by the panic hook) and made one too.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, CliError> {
    let what = || format!("start the clients' runtime of {threads} threads (--threads)");
    let gate = StartLine::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let gate = &gate;
            if let Err(e) = spawn(s, "client", move || {
                let _ = gate.wait();
            }) {
                gate.call_off();
                return Err(e.prefixed(&what()));
            }
        }
        let _ = gate.wait();
        Ok(())
    })?;
    let built = std::panic::catch_unwind(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("client")
            .build()
    });
    match built {
        Ok(rt) => rt.context(what),
        Err(_) => Err(CliError::new(format!(
            "{}: tokio could not start its threads (a process or thread limit? see ulimit -u)",
            what()
        ))),
    }
}

/// Spawns every client and collects their spans.
async fn run_clients(
    engine: &Arc<Engine>,
    gens: Vec<Result<Generator, String>>,
    plan: &Plan,
    recorder: &Arc<Recorder>,
) -> Result<Vec<Span>, CliError> {
    let start = Instant::now();
    let clock = FastClock::new();
    let handles: Vec<_> = gens
        .into_iter()
        .enumerate()
        .map(|(i, gen)| {
            let limit = plan.limit(i, start);
            let (engine, recorder, clock) = (engine.clone(), recorder.clone(), clock.clone());
            tokio::spawn(async move {
                let gen = gen.map_err(CliError::new)?;
                client(&engine, gen, limit, &recorder, i, &clock).await
            })
        })
        .collect();
    let mut spans = Vec::with_capacity(handles.len());
    for h in handles {
        spans.push(
            h.await
                .unwrap_or_else(|_| Err(CliError::new("a client task panicked")))?,
        );
    }
    Ok(spans)
}

/// One client: submit, await the ticket, record; until its limit.
async fn client(
    engine: &Engine,
    mut gen: Generator,
    limit: super::Limit,
    recorder: &Recorder,
    index: usize,
    clock: &FastClock,
) -> Result<Span, CliError> {
    let start = Instant::now();
    let mut issued = 0u64;
    loop {
        let sent = clock.now();
        if limit.reached(issued, sent, sent) {
            break;
        }
        let op = gen.next_op();
        let kind = op.kind();
        one(engine, op).await?;
        issued += 1;
        let done = clock.now();
        recorder
            .slot(index)
            .lock()
            .record(kind, done - sent, done - sent);
    }
    Ok(Span {
        start,
        finish: Instant::now(),
        missed: 0,
    })
}

/// Submits `op` with the asynchronous submit and awaits its completion.
async fn one(engine: &Engine, op: Op<'_>) -> Result<(), CliError> {
    let ticket = match op {
        Op::Put { key, value } => engine.put_async(key, value).await,
        Op::Delete { key } => engine.delete_async(key).await,
        Op::Merge { key, operand } => engine.merge_async(key, operand).await,
        Op::Get { key } => {
            let ticket = engine.get_async(key).await.context(|| "get".into())?;
            let got = ticket.await;
            return got
                .map(|v| drop(std::hint::black_box(v)))
                .map_err(|e| CliError::new(format!("wait for a get: {e}")));
        }
    };
    let ticket = ticket.map_err(|e| CliError::new(format!("submit: {e}")))?;
    ticket
        .await
        .map(|seq| {
            std::hint::black_box(seq);
        })
        .map_err(|e| CliError::new(format!("wait for a request: {e}")))
}
