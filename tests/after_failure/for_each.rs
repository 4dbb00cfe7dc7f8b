//! `Engine::for_each` calls its closure with no engine lock held, so the closure may call
//! the engine back: `read`, `put(..).wait()`, `get(..).wait()`, `retire_before`. Each of these
//! deadlocked when `for_each` held the segment list's and the index's locks around the
//! closure.

use crate::common::{engine_state, within, State, WAIT_MAX};
use mergelog::{Config, Engine};
use std::sync::Arc;

const KEYS: usize = 200;

/// Small segments, so that the history spans several of them.
fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 16,
        ..Config::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

fn value(round: &str, i: usize) -> Vec<u8> {
    let mut v = format!("{round}-{i}-").into_bytes();
    v.resize(200, b'.');
    v
}

/// Writes every key once per round, each round waited for in full.
fn fill(engine: &Engine, rounds: &[&str]) -> State {
    let mut state = State::new();
    for round in rounds {
        let tickets: Vec<_> = (0..KEYS)
            .map(|i| engine.put(&key(i), &value(round, i)).expect("put"))
            .collect();
        for t in tickets {
            t.wait_timeout(WAIT_MAX).expect("durable");
        }
        for i in 0..KEYS {
            state.insert(key(i), value(round, i));
        }
    }
    state
}

/// The closure reads each key, and for every tenth also writes a new key and reads the key
/// through the window, waiting for both: it sees every key of the state at the call once,
/// with its value then, and the writes it made land but are not visited.
#[test]
fn closure_reads_puts_and_gets_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), config()).expect("open"));
    let before = fill(&engine, &["old", "new"]);
    assert_eq!(engine_state(&engine), before);

    let e = engine.clone();
    let (visited, added) = within("for_each calling the engine", move || {
        let mut visited = State::new();
        let mut added = State::new();
        e.for_each(|k, v| {
            assert!(
                visited.insert(k.to_vec(), v.to_vec()).is_none(),
                "key {k:?} visited twice"
            );
            assert_eq!(e.read(k).expect("read").as_deref(), Some(v), "read {k:?}");
            if visited.len() % 10 == 1 {
                let extra = [b"extra-".as_slice(), k].concat();
                e.put(&extra, v)
                    .expect("put")
                    .wait_timeout(WAIT_MAX)
                    .expect("put durable");
                added.insert(extra, v.to_vec());
                let got = e.get(k).expect("get").wait_timeout(WAIT_MAX).expect("get");
                assert_eq!(got.as_deref(), Some(v), "get {k:?}");
            }
        });
        (visited, added)
    });
    assert_eq!(visited, before, "for_each visits the state at the call");
    assert_eq!(added.len(), KEYS / 10);
    let mut after = before;
    after.extend(added);
    assert_eq!(engine_state(&engine), after);
    engine.close().expect("close");
    let reopened = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(engine_state(&reopened), after, "the durable state");
}

/// The closure retires the history before the last round (the segment list's write lock)
/// and reads on: every key is still visited with its value, and still readable, since the
/// last round rewrote every key.
#[test]
fn closure_retires_history() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), config()).expect("open"));
    fill(&engine, &["one", "two", "three"]);
    // Every batch of the last round comes at or after this sequence number.
    let last_round = engine.replay().expect("replay").next_seq();
    let before = fill(&engine, &["four"]);
    assert!(
        engine.segments().len() > 2,
        "the history spans several segments"
    );
    assert_eq!(engine_state(&engine), before);

    let e = engine.clone();
    let (visited, retired) = within("for_each retiring history", move || {
        let mut visited = State::new();
        let mut retired = None;
        e.for_each(|k, v| {
            if retired.is_none() {
                retired = Some(e.retire_before(last_round).expect("retire_before"));
            }
            visited.insert(k.to_vec(), v.to_vec());
            assert_eq!(e.read(k).expect("read").as_deref(), Some(v), "read {k:?}");
        });
        (visited, retired.expect("the closure ran"))
    });
    assert!(retired.segments >= 1, "{retired:?}");
    assert_eq!(retired.keys_forgotten, 0, "{retired:?}");
    assert_eq!(visited, before);
    assert_eq!(engine_state(&engine), before);
    engine.close().expect("close");
    let reopened = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(engine_state(&reopened), before, "the durable state");
}
