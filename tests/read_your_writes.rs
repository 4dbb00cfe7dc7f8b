//! A writer whose ticket completed reads its own write: the index is updated before anyone
//! can look the write up, however the writer learnt that it completed (blocking wait,
//! polling `is_done`, or a future) and although the engine wakes writers before it updates
//! the index (lookups wait on the index's lock meanwhile).

mod common;

use common::block_on;
use mergelog::{Config, Engine, Ticket};

/// How a writer learns that its ticket completed.
#[derive(Clone, Copy, Debug)]
enum Await {
    Block,
    Poll,
    Future,
}

fn complete(ticket: Ticket, how: Await) {
    let _seq = match how {
        Await::Block => ticket.wait().unwrap(),
        Await::Poll => {
            while !ticket.is_done() {
                std::hint::spin_loop();
            }
            ticket.wait().unwrap()
        }
        Await::Future => block_on(ticket).unwrap(),
    };
}

#[test]
fn a_completed_write_is_read_back_by_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).unwrap();
    const ROUNDS: u64 = 1500;
    std::thread::scope(|s| {
        for (t, how) in [Await::Block, Await::Poll, Await::Future, Await::Block]
            .into_iter()
            .enumerate()
        {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..ROUNDS {
                    // Each writer owns its keys, so only it changes them.
                    let key = format!("writer-{t}-key-{}", i % 16);
                    if i % 5 == 4 {
                        complete(engine.delete(key.as_bytes()).unwrap(), how);
                        assert_eq!(
                            engine.read_to_vec(key.as_bytes()).unwrap(),
                            None,
                            "{how:?} writer {t}, round {i}: a completed delete still reads"
                        );
                    } else {
                        let value = i.to_le_bytes();
                        complete(engine.put(key.as_bytes(), &value).unwrap(), how);
                        assert_eq!(
                            engine.read_to_vec(key.as_bytes()).unwrap().as_deref(),
                            Some(&value[..]),
                            "{how:?} writer {t}, round {i}: a completed put reads stale"
                        );
                    }
                }
            });
        }
    });
}
