//! The full-disk refusal (`no_room.rs`) where it meets concurrency: a flush between a get and
//! a write of the refused window, merges from several threads while spells begin and end,
//! more refused tickets than refusals are kept one by one. Each failed on the first version
//! of the refusal (found by a review, session 30).

use crate::common::WAIT_MAX;
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `full`: creating a `prep-*` file fails with ENOSPC. `hold`: every segment sync waits
/// until it is cleared (`held` says one is waiting, and which thread).
#[derive(Default)]
struct Hook {
    full: AtomicBool,
    hold: AtomicBool,
    held: Mutex<Option<String>>,
}

impl Io for Hook {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if op == IoOp::Create && name.starts_with("prep-") && self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if op == IoOp::Sync && self.hold.load(Ordering::SeqCst) {
            let me = std::thread::current().name().unwrap_or("?").to_owned();
            *self.held.lock().unwrap() = Some(me);
            let t0 = Instant::now();
            while self.hold.load(Ordering::SeqCst) && t0.elapsed() < WAIT_MAX {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }
}

impl Hook {
    /// Waits (bounded: a hang fails the test) until a held sync waits; returns its thread.
    fn wait_held(&self) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(holder) = self.held.lock().unwrap().clone() {
                return holder;
            }
            assert!(t0.elapsed() < WAIT_MAX, "the held sync never came");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

const VALUE: [u8; 4000] = [7u8; 4000];

fn put(engine: &Engine, key: &str) {
    engine
        .put(key.as_bytes(), &VALUE)
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
}

/// Leaves the active segment with room for exactly one more frame of one `put` of VALUE
/// (keys of 6 bytes), each put in a frame of its own, and the disk full (set before the next
/// segment's preparation starts, so that the roll must make it).
fn one_frame_left(engine: &Engine, hook: &Hook, n: &mut u32) {
    let mut next = || {
        *n += 1;
        format!("k{:05}", *n)
    };
    while engine.segments().len() < 2 {
        put(engine, &next());
    }
    // The segment 2 holds one frame: count how many it takes.
    let mut fit = 1;
    loop {
        put(engine, &next());
        if engine.segments().len() == 3 {
            break;
        }
        fit += 1;
    }
    hook.full.store(true, Ordering::SeqCst);
    for _ in 0..fit - 2 {
        put(engine, &next());
    }
    assert_eq!(engine.segments().len(), 3);
}

/// A flush covers the requests submitted before it. Here those are an applied put and a
/// get; the put submitted after the flush lands in the same window as the get, and that
/// window's roll finds no room. No write the flush covers was refused, so it succeeds: the
/// spell begins at the window's first refused write, not at the window's start (with the
/// window's start the flush failed, and a caller following the README would resubmit `a`,
/// applying it twice; a merge would count twice).
#[test]
fn a_flush_between_a_get_and_a_write_of_the_refused_window_succeeds() {
    for attempt in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let hook = Arc::new(Hook::default());
        let engine =
            Engine::open_with_io(tmp.path(), crate::hooks::small_segments(), hook.clone()).unwrap();
        let mut n = 0;
        one_frame_left(&engine, &hook, &mut n);
        // `a` takes the last frame; its sync is held, so the next window gathers what
        // follows.
        hook.hold.store(true, Ordering::SeqCst);
        let a = engine.put(b"aaaaaa", &VALUE).unwrap();
        let holder = hook.wait_held();
        let g = engine.get(b"k00001").unwrap();
        let f = engine.flush().unwrap();
        let p = engine.put(b"pppppp", &VALUE).unwrap();
        hook.hold.store(false, Ordering::SeqCst);
        assert!(a.wait_timeout(WAIT_MAX).is_ok(), "a is applied");
        assert!(g.wait_timeout(WAIT_MAX).unwrap().is_some());
        let p = p.wait_timeout(WAIT_MAX);
        assert!(matches!(p, Err(Error::NoSpace { .. })), "{p:?}");
        let flushed = f.wait_timeout(WAIT_MAX);
        eprintln!("attempt {attempt}: sync held by {holder}; flush: {flushed:?}");
        assert!(
            flushed.is_ok(),
            "the flush covers only `a` (applied) and a get, yet it failed: {flushed:?}"
        );
        engine.close().unwrap();
    }
}

/// Merges (counters), gets and big puts from several threads while the disk fills and room
/// comes back (`resume`) again and again: every counter holds exactly its acknowledged
/// merges, live and after a reopen; a get never returns more than was submitted before it.
#[test]
fn merges_under_spells_count_exactly_the_acknowledged_ones() {
    use mergelog::MergeOperator;
    use std::sync::atomic::AtomicU64;
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(Hook::default());
    let config = Config {
        merge: Some(MergeOperator::Add),
        ..crate::hooks::small_segments()
    };
    let engine = Arc::new(Engine::open_with_io(tmp.path(), config.clone(), hook.clone()).unwrap());
    const KEYS: usize = 8;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let submitted: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let spells = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..3 {
        let (engine, acked, submitted, stop) = (
            engine.clone(),
            acked.clone(),
            submitted.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut tickets = Vec::new();
                for _ in 0..40 {
                    i += 1;
                    let k = (i * 7 + t) % KEYS;
                    let key = format!("ctr{k}");
                    // Counted before the claim, so that a get's bound covers it.
                    submitted[k].fetch_add(1, Ordering::SeqCst);
                    match engine.merge(key.as_bytes(), &1i64.to_le_bytes()) {
                        Ok(tk) => tickets.push((k, Some(tk), None)),
                        Err(_) => {
                            submitted[k].fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    if i.is_multiple_of(5) {
                        let g = engine.get(key.as_bytes()).unwrap();
                        let bound = submitted[k].load(Ordering::SeqCst);
                        tickets.push((k, None, Some((g, bound))));
                    }
                }
                for (k, tk, g) in tickets {
                    if let Some(tk) = tk {
                        match tk.wait_timeout(WAIT_MAX) {
                            Ok(_) => {
                                acked[k].fetch_add(1, Ordering::SeqCst);
                            }
                            Err(Error::NoSpace { .. }) => {}
                            Err(e) => panic!("merge: {e:?}"),
                        }
                    }
                    if let Some((g, bound)) = g {
                        let v = g.wait_timeout(WAIT_MAX).unwrap();
                        let v = v.map_or(0, |v| i64::from_le_bytes(v[..8].try_into().unwrap()));
                        assert!(v as u64 <= bound, "a get saw {v} > {bound} submitted");
                    }
                }
            }
        }));
    }
    {
        let (engine, stop) = (engine.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let _ = engine
                    .put(format!("fill{}", i % 50).as_bytes(), &VALUE)
                    .map(|t| t.wait_timeout(WAIT_MAX));
            }
        }));
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(3));
        hook.full.store(true, Ordering::SeqCst);
        let t1 = Instant::now();
        while !engine.is_out_of_room() && t1.elapsed() < Duration::from_millis(30) {
            std::thread::sleep(Duration::from_micros(200));
        }
        if engine.is_out_of_room() {
            spells.fetch_add(1, Ordering::SeqCst);
        }
        hook.full.store(false, Ordering::SeqCst);
        while let Err(e) = engine.resume() {
            assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
        }
        assert!(engine.failure().is_none(), "{:?}", engine.failure());
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!(
        "spells: {}, stats: refused_no_space {}",
        spells.load(Ordering::SeqCst),
        engine.stats().refused_no_space
    );
    assert!(spells.load(Ordering::SeqCst) > 0);
    let value = |e: &Engine, k: usize| {
        e.read(format!("ctr{k}").as_bytes())
            .unwrap()
            .map_or(0, |v| i64::from_le_bytes(v[..8].try_into().unwrap()))
    };
    for k in 0..KEYS {
        assert_eq!(
            value(&engine, k) as u64,
            acked[k].load(Ordering::SeqCst),
            "ctr{k} live"
        );
    }
    let engine = Arc::try_unwrap(engine).ok().unwrap();
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    for k in 0..KEYS {
        assert_eq!(
            value(&reopened, k) as u64,
            acked[k].load(Ordering::SeqCst),
            "ctr{k} reopened"
        );
    }
}

/// A spell refuses every write the ring holds when it begins, each with a refusal record;
/// past the 65,536 kept, the oldest refused tickets no longer say `NoSpace` but
/// `SeqUnknown`, and the caller cannot tell that they were refused (and may be retried).
#[test]
fn every_refused_ticket_says_no_space() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(Hook::default());
    let config = Config {
        ring_bytes: 16 << 20,
        ..crate::hooks::small_segments()
    };
    let engine = Engine::open_with_io(tmp.path(), config, hook.clone()).unwrap();
    let mut n = 0;
    while engine.segments().len() < 2 {
        n += 1;
        put(&engine, &format!("k{n:05}"));
    }
    hook.full.store(true, Ordering::SeqCst);
    hook.hold.store(true, Ordering::SeqCst);
    let a = engine.put(b"a", b"v").unwrap();
    hook.wait_held();
    let tickets: Vec<_> = (0..100_000u32)
        .map(|i| engine.put(format!("b{i:06}").as_bytes(), b"v").unwrap())
        .collect();
    hook.hold.store(false, Ordering::SeqCst);
    a.wait_timeout(WAIT_MAX).unwrap();
    // A caller that waits for its last write first (or for a flush).
    let _ = tickets.last().unwrap().wait_timeout(WAIT_MAX);
    let (mut ok, mut no_space, mut other) = (0, 0, Vec::new());
    for t in tickets {
        match t.wait_timeout(WAIT_MAX) {
            Ok(_) => ok += 1,
            Err(Error::NoSpace { .. }) => no_space += 1,
            Err(e) => other.push(e),
        }
    }
    eprintln!("ok {ok}, no_space {no_space}, other {}", other.len());
    assert!(no_space > 0);
    assert!(
        other.is_empty(),
        "{} refused tickets said {:?}",
        other.len(),
        other[0]
    );
}

/// `full`: creating a spare segment file (`prep-*`, `recycle-*`) fails with ENOSPC; while
/// `hold_roll`, the first such creation off the preparation's thread (the roll's own, on the
/// flusher's thread) waits, after saying so in `held`, until `hold_roll` is cleared.
#[derive(Default)]
struct RollHook {
    full: AtomicBool,
    hold_roll: AtomicBool,
    held: AtomicBool,
}

impl Io for RollHook {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let spare = name.starts_with("prep-") || name.starts_with("recycle-");
        if op != IoOp::Create || !spare || !self.full.load(Ordering::SeqCst) {
            return Ok(());
        }
        let prep_thread = std::thread::current().name() == Some("mergelog-prep");
        if !prep_thread
            && !self.held.load(Ordering::SeqCst)
            && self.hold_roll.load(Ordering::SeqCst)
        {
            self.held.store(true, Ordering::SeqCst);
            let t0 = Instant::now();
            while self.hold_roll.load(Ordering::SeqCst) && t0.elapsed() < WAIT_MAX {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
}

/// A compaction's copies take the reserve (`Config::reserve_segment`) between two windows,
/// and a spell of refusals begins. A flush made before that, over a get submitted before it
/// too, covers no write at all: it must succeed; one over a put submitted after it fails, as
/// the put is refused. (With the spell begun at the end of the last
/// window handed on, it failed with `NoSpace`, and a caller following the README would
/// resubmit writes that were all applied.)
#[test]
fn a_flush_over_a_get_when_a_compaction_takes_the_reserve_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(RollHook::default());
    let config = Config {
        compaction: mergelog::Compaction::OnDemand,
        reserve_segment: true,
        ..crate::hooks::small_segments()
    };
    let engine = Arc::new(Engine::open_with_io(tmp.path(), config, hook.clone()).unwrap());
    assert_eq!(engine.stats().segments.reserved, 1);
    // Two complete segments of live records (distinct keys), and the put that rolled into
    // the third: the next segment's preparation is not due yet, and the disk is full from
    // here on. The copies fill the third segment and need a fourth: the reserve.
    let mut n = 0u32;
    while engine.segments().len() < 3 {
        n += 1;
        put(&engine, &format!("k{n:05}"));
    }
    hook.full.store(true, Ordering::SeqCst);
    hook.hold_roll.store(true, Ordering::SeqCst);
    let compacting = engine.clone();
    let compaction = std::thread::spawn(move || compacting.compact());
    let holding = hook.clone();
    crate::common::within("the copies' roll", move || {
        while !holding.held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    // The flusher is in the copies' roll: a get, a flush over it, a put, a flush over that.
    let g = engine.get(b"k00001").unwrap();
    let f = engine.flush().unwrap();
    let p = engine.put(b"pppppp", &VALUE).unwrap();
    let f2 = engine.flush().unwrap();
    hook.hold_roll.store(false, Ordering::SeqCst);
    assert_eq!(
        g.wait_timeout(WAIT_MAX).unwrap().as_deref(),
        Some(&VALUE[..])
    );
    let p = p.wait_timeout(WAIT_MAX);
    assert!(matches!(p, Err(Error::NoSpace { .. })), "{p:?}");
    let f2 = f2.wait_timeout(WAIT_MAX);
    assert!(matches!(f2, Err(Error::NoSpace { .. })), "{f2:?}");
    let flushed = f.wait_timeout(WAIT_MAX);
    let _ = compaction.join().unwrap();
    let taken = engine.stats().segments.reserve_taken;
    assert!(taken >= 1, "the reserve was not taken");
    assert!(engine.is_out_of_room());
    assert!(
        flushed.is_ok(),
        "the flush covers a get only, yet it failed: {flushed:?}"
    );
    assert!(engine.put(b"late", b"v").is_err());
    assert!(engine.failure().is_none());
}
