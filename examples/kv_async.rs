//! A key-value write path with asynchronous tickets: many clients on one thread, each
//! submitting writes with `put_async` and awaiting their durability, no async runtime needed.
//!
//! ```sh
//! cargo run --release --example kv_async            # in a temporary directory
//! cargo run --release --example kv_async -- DIR     # in DIR (run it twice: it reads back)
//! ```
//!
//! What it shows:
//! - `engine.put_async(k, v).await?` submits (it waits, as a future, only for room in the
//!   ring) and gives a [`Ticket`]; `ticket.await?` waits until the write is durable and gives
//!   the batch ([`Seq`]) it was written in. A client may submit several writes before awaiting
//!   any ticket: they are in the order they were submitted, and share syncs.
//! - `get_async(k).await?.await?` reads a key in order with the writes submitted before it.
//! - The futures are runtime-free: the engine's threads wake them. Any executor polls them
//!   (tokio, async-std, smol...); this one, at the bottom, is `std` alone.
//! - After `close`, a reopened engine reads every write whose ticket completed.

use mergelog::{Config, Engine, Seq, Ticket};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

const CLIENTS: usize = 64;
const WRITES_PER_CLIENT: usize = 50;
/// How many writes a client submits before it awaits their tickets.
const IN_FLIGHT: usize = 5;

fn main() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    if let Err(e) = run(&dir, CLIENTS, WRITES_PER_CLIENT) {
        eprintln!("kv_async: {e}");
        std::process::exit(1);
    }
}

/// One client: `writes` puts of its own keys, `IN_FLIGHT` at a time, then a read in order.
async fn client(engine: &Engine, id: usize, writes: usize) -> mergelog::Result<Seq> {
    let mut last = Seq::default();
    let mut pending: Vec<Ticket> = Vec::with_capacity(IN_FLIGHT);
    for i in 0..writes {
        let key = format!("client{id:03}/{i:05}");
        // The first `.await` submits: the request takes its place in the order here.
        pending.push(engine.put_async(key.as_bytes(), b"value").await?);
        if pending.len() == IN_FLIGHT || i + 1 == writes {
            for ticket in pending.drain(..) {
                // The second waits for durability (one sync for the whole window).
                last = last.max(ticket.await?);
            }
        }
    }
    // A windowed get: ordered after this client's writes, answered once durable.
    let key = format!("client{id:03}/{:05}", writes - 1);
    let value = engine.get_async(key.as_bytes()).await?.await?;
    debug_assert_eq!(value.as_deref(), Some(&b"value"[..]), "{key}");
    Ok(last)
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(dir: &Path, clients: usize, writes: usize) -> Result<()> {
    let engine = Engine::open(dir, Config::default())?;
    let before = engine.len();
    let syncs_before = engine.counts().syncs;

    let tasks: Vec<Pin<Box<dyn Future<Output = mergelog::Result<Seq>> + '_>>> = (0..clients)
        .map(|id| Box::pin(client(&engine, id, writes)) as Pin<Box<dyn Future<Output = _>>>)
        .collect();
    let results = executor::run_all(tasks);
    let last = results
        .into_iter()
        .collect::<mergelog::Result<Vec<Seq>>>()?;
    let newest = last.into_iter().max().unwrap_or_default();

    let syncs = engine.counts().syncs - syncs_before;
    println!(
        "{clients} clients wrote {} keys on one thread, in {syncs} syncs; durable up to batch {newest}",
        clients * writes
    );
    engine.close()?;

    // Every write whose ticket completed is there after a reopen.
    let engine = Engine::open(dir, Config::default())?;
    for id in 0..clients {
        for i in 0..writes {
            let key = format!("client{id:03}/{i:05}");
            if engine.read(key.as_bytes())?.is_none() {
                return Err(format!("{key} was acknowledged, and is not in the log").into());
            }
        }
    }
    println!(
        "reopened: {} keys ({} before this run), durable up to batch {}",
        engine.len(),
        before,
        engine.durable_seq()
    );
    Ok(engine.close()?)
}

/// A minimal single-threaded executor: polls every task whose waker fired, sleeps otherwise.
mod executor {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Condvar, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    /// The tasks ready to be polled again.
    #[derive(Default)]
    struct Ready {
        queue: Mutex<VecDeque<usize>>,
        bell: Condvar,
    }

    struct TaskWaker {
        task: usize,
        ready: Arc<Ready>,
    }

    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.ready.queue.lock().unwrap().push_back(self.task);
            self.ready.bell.notify_one();
        }
    }

    /// Runs every task to completion on this thread; their outputs in order.
    pub fn run_all<T>(mut tasks: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
        let ready = Arc::new(Ready::default());
        ready.queue.lock().unwrap().extend(0..tasks.len());
        let wakers: Vec<Waker> = (0..tasks.len())
            .map(|task| {
                let ready = ready.clone();
                Waker::from(Arc::new(TaskWaker { task, ready }))
            })
            .collect();
        let mut outputs: Vec<Option<T>> = tasks.iter().map(|_| None).collect();
        let mut left = tasks.len();
        while left > 0 {
            let task = {
                let mut queue = ready.queue.lock().unwrap();
                loop {
                    match queue.pop_front() {
                        Some(t) => break t,
                        None => queue = ready.bell.wait(queue).unwrap(),
                    }
                }
            };
            // A task may be woken again after it finished: nothing to do then.
            if outputs[task].is_some() {
                continue;
            }
            let mut cx = Context::from_waker(&wakers[task]);
            if let Poll::Ready(out) = tasks[task].as_mut().poll(&mut cx) {
                outputs[task] = Some(out);
                left -= 1;
            }
        }
        outputs.into_iter().map(Option::unwrap).collect()
    }
}

#[cfg(test)]
mod tests {
    /// The demonstration, smaller, twice on one directory (the second run reads the first's
    /// keys after its reopen).
    #[test]
    fn many_async_clients_on_one_thread_write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        super::run(dir.path(), 16, 20).unwrap();
        super::run(dir.path(), 16, 20).unwrap();
    }
}
