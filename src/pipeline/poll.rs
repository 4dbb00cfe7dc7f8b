//! The idle pollers (`mergelog-poll`, [`Config::idle_poll_threads`](crate::Config)): threads
//! that keep the machine's CPUs from idling while requests are in flight, so that the
//! pipeline's hand-offs (producer to flusher, flusher to syncer, the disk's interrupt, syncer
//! to producer) find a CPU awake. On a virtual machine whose idle CPUs halt, waking a thread on
//! a halted CPU costs an exit to the host each time. A poller runs at the lowest scheduling
//! priority (`SCHED_IDLE`): any thread woken on its CPU preempts it at once, so it only takes
//! time no other thread wants. docs/decisions.md, "CPUs kept from idling", has the figures.

use crate::ring::Ring;
use crate::ticket::Completion;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a poller spins before it looks again whether requests are in flight.
const SPIN: Duration = Duration::from_micros(200);
/// How long a poller sleeps when none is.
const NAP: Duration = Duration::from_micros(500);

/// Starts `count` pollers; each ends once `stop` is set (the flusher's thread sets it as it
/// ends, then joins them). A thread that cannot start is left out: the engine works without.
pub(crate) fn start(
    count: usize,
    ring: &Arc<Ring>,
    completion: &Arc<Completion>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    (0..count)
        .filter_map(|_| {
            let (ring, completion, stop) = (ring.clone(), completion.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mergelog-poll".into())
                .spawn(move || run(&ring, &completion, &stop))
                .ok()
        })
        .collect()
}

/// Whether a request is in flight: submitted (its ring space claimed) and not yet complete,
/// on an engine that has not failed (after a failure nothing waits for the disk any more).
fn in_flight(ring: &Ring, completion: &Completion) -> bool {
    ring.tail() > completion.durable() && completion.failure().is_none()
}

fn run(ring: &Ring, completion: &Completion, stop: &AtomicBool) {
    lowest_priority();
    while !stop.load(Ordering::Relaxed) {
        if in_flight(ring, completion) {
            let from = Instant::now();
            while from.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
        } else {
            std::thread::sleep(NAP);
        }
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class (best effort: where that is refused,
/// the poller runs at the normal priority, and its spin yields to nothing).
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration; pid 0 is the calling
    // thread, whose scheduling class alone changes.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

#[cfg(test)]
mod tests {
    use super::in_flight;
    use crate::{Config, Engine, WriteBatch};

    /// Once every request of every kind has completed, nothing is in flight, so pollers
    /// sleep: the watermark reaches the ring's tail, whatever the requests (puts, deletes,
    /// gets, batches, a ring wrapped many times over); while one is not complete, something is.
    #[test]
    fn nothing_is_in_flight_once_every_request_completed() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            ring_bytes: 64 << 10,
            ..Config::default()
        };
        let engine = Engine::open(dir.path(), config).unwrap();
        let inner = &engine.inner;
        assert!(!in_flight(&inner.ring, &inner.completion), "a new engine");
        for round in 0..50u32 {
            let mut tickets = Vec::new();
            for i in 0..40u32 {
                let key = format!("k{}", (round * 40 + i) % 300);
                let value = vec![i as u8; 1 + (i as usize * 97) % 1500];
                tickets.push(engine.put(key.as_bytes(), &value).unwrap());
                if i % 7 == 0 {
                    tickets.push(engine.delete(key.as_bytes()).unwrap());
                }
            }
            let mut batch = WriteBatch::new();
            batch.put(b"b", &round.to_le_bytes());
            let last = engine.write(&batch).unwrap();
            let get = engine.get(b"k1").unwrap();
            assert!(in_flight(&inner.ring, &inner.completion) || last.is_done());
            for t in tickets {
                t.wait().unwrap();
            }
            last.wait().unwrap();
            get.wait().unwrap();
            assert!(
                !in_flight(&inner.ring, &inner.completion),
                "round {round}: every request complete, yet tail {} > durable {}",
                inner.ring.tail(),
                inner.completion.durable()
            );
        }
        engine.close().unwrap();
    }
}
