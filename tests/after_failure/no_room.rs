//! A full disk at the roll: the log cannot make its next segment. Nothing of the log changed
//! (the new file was never renamed into it), so the engine does not fail: it refuses writes
//! with `Error::NoSpace` until `Engine::resume` finds room, and reads go on. Each test fails
//! if the spell is not kept, if a refused write is applied or seen, or if a caller that
//! relies on `flush` is not told.

use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, Outcome};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// While `full`, making a new segment file fails with ENOSPC: its creation (the zero fill),
/// or with `renames`, only the rename of a prepared file into the log (as btrfs's can fail
/// when its metadata is full). A file from the pool needs neither creation nor room.
#[derive(Default)]
struct FullDisk {
    full: AtomicBool,
    renames: bool,
    refused: AtomicU64,
}

impl Io for FullDisk {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let target = match self.renames {
            false => op == IoOp::Create && name.starts_with("prep-"),
            true => op == IoOp::Rename && name.starts_with("prep-"),
        };
        if target && self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::NoSpace { cause } if cause.to_string().contains("No space left"))
}

const VALUE: [u8; 4000] = [7u8; 4000];

/// Puts (each waited for) until one is refused; returns the keys acknowledged and the
/// refusal. Panics if none is refused within `max` puts.
fn put_until_refused(engine: &Engine, from: &mut u32, max: u32) -> (Vec<String>, Error) {
    let mut acked = Vec::new();
    for _ in 0..max {
        let key = format!("k{:05}", *from);
        *from += 1;
        match engine.put(key.as_bytes(), &VALUE).and_then(|t| t.wait()) {
            Ok(_) => acked.push(key),
            Err(e) => return (acked, e),
        }
    }
    panic!("no put was refused in {max} puts on a full disk");
}

/// Puts keys `k<n>` (each waited for, `n` counting on) until the log has `segments` segments;
/// returns the keys.
fn fill_to_segments(engine: &Engine, segments: usize, n: &mut u32) -> Vec<String> {
    let mut keys = Vec::new();
    while engine.segments().len() < segments {
        let key = format!("k{:05}", *n);
        *n += 1;
        engine.put(key.as_bytes(), &VALUE).unwrap().wait().unwrap();
        keys.push(key);
    }
    keys
}

/// Every one of `keys` holds `VALUE`: acknowledged, nothing lost.
fn assert_all_hold(engine: &Engine, keys: &[String]) {
    for key in keys {
        assert_eq!(
            engine.read(key.as_bytes()).unwrap().as_deref(),
            Some(&VALUE[..]),
            "acknowledged {key} lost"
        );
    }
}

fn open(dir: &Path, hook: Arc<FullDisk>, config: Config) -> Engine {
    Engine::open_with_io(dir, config, hook).expect("open")
}

#[test]
fn a_full_disk_at_the_roll_refuses_writes_until_resume_finds_room() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let config = crate::hooks::small_segments();
    let engine = open(tmp.path(), hook.clone(), config.clone());
    let mut n = 0;
    let mut acked = fill_to_segments(&engine, 2, &mut n);
    hook.full.store(true, Ordering::SeqCst);
    let (more, refusal) = put_until_refused(&engine, &mut n, 100);
    acked.extend(more);
    let refused_key = format!("k{:05}", n - 1);
    assert!(is_no_space(&refusal), "{refusal}");
    assert!(hook.refused.load(Ordering::SeqCst) > 0);
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    assert!(engine.is_out_of_room());
    // Every later write is refused at once, the asynchronous ones too; flush as well.
    let e = engine.put(b"later", b"v").unwrap_err();
    assert!(is_no_space(&e), "{e}");
    let e = engine.delete(acked[0].as_bytes()).unwrap_err();
    assert!(is_no_space(&e), "{e}");
    let e = crate::common::block_on(Box::pin(engine.put_async(b"later", b"v"))).unwrap_err();
    assert!(is_no_space(&e), "{e}");
    let e = engine.flush().unwrap_err();
    assert!(is_no_space(&e), "{e}");
    // Reads go on: the durable state, and gets through the window.
    assert_eq!(
        engine.read(acked[0].as_bytes()).unwrap().as_deref(),
        Some(&VALUE[..])
    );
    let got = engine.get(acked[1].as_bytes()).unwrap().wait().unwrap();
    assert_eq!(got.as_deref(), Some(&VALUE[..]));
    assert!(engine.read(refused_key.as_bytes()).unwrap().is_none());
    // Still no room: resume says so, and writes stay refused.
    let e = engine.resume().unwrap_err();
    assert!(is_no_space(&e), "{e}");
    assert!(engine.is_out_of_room());
    assert!(engine.put(b"later", b"v").is_err());
    // Room again.
    hook.full.store(false, Ordering::SeqCst);
    engine.resume().unwrap();
    assert!(!engine.is_out_of_room());
    engine.flush().unwrap().wait().unwrap();
    for _ in 0..30 {
        let key = format!("k{n:05}");
        n += 1;
        engine.put(key.as_bytes(), &VALUE).unwrap().wait().unwrap();
        acked.push(key);
    }
    assert!(engine.stats().refused_no_space >= 1);
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    assert_all_hold(&reopened, &acked);
    assert_eq!(
        reopened.read_to_vec(refused_key.as_bytes()).unwrap(),
        None,
        "the refused put was applied"
    );
    assert_eq!(reopened.len(), acked.len());
}

/// On a file system whose rename needs room (btrfs), the roll's rename of the prepared file
/// can be the call that fails. The file stays prepared, outside the log: `resume` finds it
/// ready (it cannot try the rename), the next roll tries the rename again, and while it
/// fails writes are refused again; once it works, nothing was lost and no file leaked.
#[test]
fn a_rename_refused_for_room_keeps_the_prepared_file_for_the_next_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk {
        renames: true,
        ..FullDisk::default()
    });
    let config = crate::hooks::small_segments();
    let engine = open(tmp.path(), hook.clone(), config.clone());
    let mut n = 0;
    let mut acked = Vec::new();
    let mut put = |engine: &Engine, acked: &mut Vec<String>| {
        let key = format!("k{n:05}");
        n += 1;
        let r = engine.put(key.as_bytes(), &VALUE).and_then(|t| t.wait());
        if r.is_ok() {
            acked.push(key);
        }
        r
    };
    while engine.segments().len() < 2 {
        put(&engine, &mut acked).unwrap();
    }
    // A quarter into the second segment: its successor is being prepared (from an eighth).
    for _ in 0..4 {
        put(&engine, &mut acked).unwrap();
    }
    hook.full.store(true, Ordering::SeqCst);
    let refusal = loop {
        if let Err(e) = put(&engine, &mut acked) {
            break e;
        }
        assert!(acked.len() < 200, "never refused");
    };
    assert!(is_no_space(&refusal), "{refusal}");
    assert!(hook.refused.load(Ordering::SeqCst) >= 1);
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    // The prepared file is kept: resume has nothing to make; the next roll's rename fails
    // again, and writes are refused again.
    engine.resume().unwrap();
    let again = put(&engine, &mut acked).unwrap_err();
    assert!(is_no_space(&again), "{again}");
    assert!(hook.refused.load(Ordering::SeqCst) >= 2);
    hook.full.store(false, Ordering::SeqCst);
    engine.resume().unwrap();
    for _ in 0..20 {
        put(&engine, &mut acked).unwrap();
    }
    assert!(engine.failure().is_none());
    engine.close().unwrap();
    drop(engine);
    let spares = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("prep-"))
        .count();
    assert!(spares <= 1, "{spares} prepared files left");
    let reopened = Engine::open(tmp.path(), config).unwrap();
    assert_all_hold(&reopened, &acked);
    assert_eq!(reopened.len(), acked.len());
}

/// A get in the window whose roll found no room reads the state without the window's
/// writes: the put before it was refused. Pairs of a put of a new value and a get of the
/// same key are submitted without waiting, so that many share windows; whatever the windows,
/// a get after a refused put must not see the put's value, and one after an applied put must.
#[test]
fn a_get_in_a_refused_window_does_not_see_its_refused_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let engine = open(tmp.path(), hook.clone(), crate::hooks::small_segments());
    // A first segment nearly full of old values.
    for i in 0..14u32 {
        let key = format!("p{i:03}");
        engine.put(key.as_bytes(), b"old").unwrap().wait().unwrap();
    }
    fill_to_segments(&engine, 2, &mut 1_000);
    hook.full.store(true, Ordering::SeqCst);
    let mut pairs = Vec::new();
    for round in 0..400u32 {
        let key = format!("p{:03}", round % 14);
        // A value of its own per round, 1,000 bytes.
        let value = format!("{round:01000}").into_bytes();
        let put = match engine.put(key.as_bytes(), &value) {
            Ok(t) => t,
            Err(_) => break, // the spell began: later writes are refused at submit
        };
        let get = engine.get(key.as_bytes()).unwrap();
        pairs.push((key, value, put, get));
    }
    let (mut refused, mut applied) = (0, 0);
    for (key, value, put, get) in pairs {
        let seen = get.wait().unwrap();
        let saw_it = seen.as_deref() == Some(&value[..]);
        match put.wait() {
            Ok(_) => {
                applied += 1;
                assert!(saw_it, "a get missed the applied put of {key} before it");
            }
            Err(e) => {
                assert!(is_no_space(&e), "{e}");
                refused += 1;
                assert!(!saw_it, "a get saw the value of a refused put of {key}");
            }
        }
    }
    assert!(refused > 0, "no put was refused");
    assert!(
        applied > 0,
        "every put was refused: the segment was not nearly full"
    );
    assert!(engine.failure().is_none());
}

/// A caller that drops its tickets and relies on `flush` learns of the refusals: a flush
/// made before the spell began fails if a write it covers was refused; one made after
/// `resume` does not report the spell it acknowledged.
#[test]
fn a_flush_covering_a_refused_write_fails_until_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let engine = open(tmp.path(), hook.clone(), crate::hooks::small_segments());
    let mut n = 0u32;
    fill_to_segments(&engine, 2, &mut n);
    hook.full.store(true, Ordering::SeqCst);
    // Fire and forget until the engine refuses at submit, then one flush over all of them.
    let mut flushes = Vec::new();
    for _ in 0..200 {
        let key = format!("k{n:05}");
        n += 1;
        match engine.put(key.as_bytes(), &VALUE) {
            Ok(ticket) => drop(ticket),
            Err(e) => {
                assert!(is_no_space(&e), "{e}");
                break;
            }
        }
        if let Ok(f) = engine.flush() {
            flushes.push(f);
        }
    }
    assert!(engine.is_out_of_room(), "the disk never ran out");
    // The last flush made covers the refused writes (the one before the refusal at submit
    // came after them, or the refusal came at a flush).
    let outcomes: Vec<_> = flushes.iter().map(|f| f.wait()).collect();
    let last = outcomes.last().expect("a flush was made");
    assert!(
        matches!(last, Err(e) if is_no_space(e)),
        "a flush over refused writes succeeded: {last:?}"
    );
    // The flushes that succeeded came before the first refused write: each covered only
    // acknowledged writes. Once one fails, every later one does.
    let first_failed = outcomes.iter().position(|o| o.is_err()).unwrap();
    assert!(outcomes[first_failed..].iter().all(|o| o.is_err()));
    hook.full.store(false, Ordering::SeqCst);
    engine.resume().unwrap();
    engine.put(b"after", b"v").unwrap().wait().unwrap();
    engine.flush().unwrap().wait().unwrap();
    assert!(engine.failure().is_none());
}

/// A refused request with an id gives the id back: resubmitted after `resume`, it is
/// written, not answered as a duplicate of a request that was never applied.
#[test]
fn a_refused_request_id_is_not_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let config = crate::hooks::small_segments();
    let engine = open(tmp.path(), hook.clone(), config.clone());
    let mut n = 0u32;
    fill_to_segments(&engine, 2, &mut n);
    hook.full.store(true, Ordering::SeqCst);
    let mut refused_id = None;
    for id in 1..=200u128 {
        let key = format!("id{id}");
        let r = engine
            .put_with_id(id, key.as_bytes(), &VALUE)
            .and_then(|t| t.wait());
        match r {
            Ok(Outcome::Written(_)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(is_no_space(&e), "{e}");
                refused_id = Some(id);
                break;
            }
        }
    }
    let id = refused_id.expect("no request was refused");
    hook.full.store(false, Ordering::SeqCst);
    engine.resume().unwrap();
    let key = format!("id{id}");
    let again = engine
        .put_with_id(id, key.as_bytes(), &VALUE)
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        matches!(again, Outcome::Written(_)),
        "the refused request's id was kept: {again:?}"
    );
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    assert_eq!(
        reopened.read(key.as_bytes()).unwrap().as_deref(),
        Some(&VALUE[..])
    );
}

/// `retire_before` with `recycle_segments` makes room without needing any: `resume` takes
/// a pooled file while the disk is still full for new ones.
#[test]
fn a_retirement_into_the_pool_lets_resume_succeed_on_a_full_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let config = Config {
        recycle_segments: 2,
        ..crate::hooks::small_segments()
    };
    let engine = open(tmp.path(), hook.clone(), config);
    let mut n = 0u32;
    fill_to_segments(&engine, 3, &mut n);
    hook.full.store(true, Ordering::SeqCst);
    let (_, refusal) = put_until_refused(&engine, &mut n, 100);
    assert!(is_no_space(&refusal), "{refusal}");
    assert!(engine.resume().is_err());
    let last = engine.segments().last().unwrap().first_seq;
    let retired = engine.retire_before(last).unwrap();
    assert!(retired.recycled >= 1, "{retired:?}");
    engine.resume().unwrap();
    for _ in 0..20 {
        engine
            .put(format!("k{n:05}").as_bytes(), &VALUE)
            .unwrap()
            .wait()
            .unwrap();
        n += 1;
    }
    assert!(engine.stats().segments.reused >= 1);
    assert!(engine.failure().is_none());
    engine.close().unwrap();
}

/// A compaction whose copies need a segment the disk has no room for fails with
/// `NoSpace`, retires nothing, and leaves the engine running.
#[test]
fn a_compaction_without_room_for_its_copies_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let config = Config {
        compaction: mergelog::Compaction::OnDemand,
        ..crate::hooks::small_segments()
    };
    let engine = open(tmp.path(), hook.clone(), config.clone());
    // Distinct keys: every record is live, so the copies fill more than the active segment.
    let mut n = 0u32;
    fill_to_segments(&engine, 4, &mut n);
    let before = engine.segments().len();
    hook.full.store(true, Ordering::SeqCst);
    let e = engine.compact().unwrap_err();
    assert!(is_no_space(&e), "{e}");
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    assert_eq!(
        engine.segments().len(),
        before,
        "retired without its copies"
    );
    hook.full.store(false, Ordering::SeqCst);
    // The engine goes on: a write that needs no segment, and a compaction with room.
    engine.put(b"after", b"v").unwrap().wait().unwrap();
    engine.compact().unwrap();
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    let all: Vec<String> = (0..n).map(|i| format!("k{i:05}")).collect();
    assert_all_hold(&reopened, &all);
}

/// A disk with room for `files` segment-sized files (segments, the prepared next one, the
/// pool's): making another fails with ENOSPC, and removing one makes room. What the tests of
/// the reserve need, where room comes back only from what a compaction retires.
struct Capacity {
    files: usize,
    refused: AtomicU64,
}

impl Capacity {
    fn new(files: usize) -> Arc<Capacity> {
        Arc::new(Capacity {
            files,
            refused: AtomicU64::new(0),
        })
    }
}

/// The segment-sized files in `dir`.
fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".seg") || name.starts_with("prep-") || name.starts_with("recycle-")
        })
        .count()
}

impl Io for Capacity {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let spare = name.starts_with("prep-") || name.starts_with("recycle-");
        if op == IoOp::Create && spare && segment_files(path.parent().unwrap()) >= self.files {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// `Compaction::Auto` with a ratio never reached here (only a full disk makes it run), and
/// the reserve.
fn auto_with_reserve() -> Config {
    Config {
        compaction: mergelog::Compaction::Auto(mergelog::AutoCompaction {
            live_ratio: 0.01,
            check_every: std::time::Duration::from_millis(20),
            ..mergelog::AutoCompaction::default()
        }),
        ..with_reserve()
    }
}

/// Calls `resume` until it finds room (`what`: what should have made it), within the tests'
/// bound.
fn resume_until_room(engine: &Arc<Engine>, what: &str) {
    let engine = engine.clone();
    crate::common::within(what, move || loop {
        match engine.resume() {
            Ok(()) => break,
            Err(e) if is_no_space(&e) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    });
}

/// Waits until a compaction has run to its end (within the tests' bound).
fn wait_for_a_run(engine: &Arc<Engine>) {
    let engine = engine.clone();
    crate::common::within("a compaction run to its end", move || {
        while engine.counts().compaction.runs == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
}

fn with_reserve() -> Config {
    Config {
        compaction: mergelog::Compaction::OnDemand,
        reserve_segment: true,
        ..crate::hooks::small_segments()
    }
}

/// Puts keys `k0..k<cold>` once, then overwrites `hot` more keys in turn (each put waited
/// for) until a put is refused: the cold keys' records, the oldest in the log, are what a
/// compaction must copy. Returns the round each key was last written in (`None`: never
/// acknowledged), and the refusal.
fn fill_until_refused(engine: &Engine, cold: u32, hot: u32) -> (Vec<Option<u32>>, Error) {
    let mut held = vec![None; (cold + hot) as usize];
    for n in 0..100_000u32 {
        let (key, round) = match n < cold {
            true => (n, 0),
            false => (cold + (n - cold) % hot, (n - cold) / hot),
        };
        let mut value = VALUE.to_vec();
        value[..4].copy_from_slice(&round.to_le_bytes());
        match engine
            .put(format!("k{key}").as_bytes(), &value)
            .and_then(|t| t.wait())
        {
            Ok(_) => held[key as usize] = Some(round),
            Err(e) => return (held, e),
        }
    }
    panic!("no put was refused on a disk of bounded room");
}

/// Every key holds the round it was last written in.
fn assert_holds(engine: &Engine, held: &[Option<u32>]) {
    for (key, round) in held.iter().enumerate() {
        let got = engine.read(format!("k{key}").as_bytes()).unwrap();
        let got = got
            .as_deref()
            .map(|v| u32::from_le_bytes(v[..4].try_into().unwrap()));
        assert_eq!(got, *round, "k{key}");
    }
}

/// A log that is its own store fills the disk: writes are refused, and no window takes the
/// reserve. `compact` takes it for its copies, retires every complete segment, and makes the
/// reserve again from one of them; `resume` then finds room, and nothing acknowledged is
/// lost. Without the reserve the same compaction fails with `NoSpace` (the mutation: a roll
/// of copies that does not take it).
#[test]
fn a_compaction_digs_out_of_a_full_disk_through_the_reserve() {
    for reserve in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Capacity::new(10);
        let config = Config {
            reserve_segment: reserve,
            ..with_reserve()
        };
        let engine = Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap();
        assert_eq!(engine.stats().segments.reserved, u64::from(reserve));
        // Ten cold keys of 4 KB (under a segment), then three hot ones overwritten until the
        // disk is full.
        let (mut held, refusal) = fill_until_refused(&engine, 10, 3);
        assert!(is_no_space(&refusal), "{refusal}");
        assert!(engine.is_out_of_room());
        assert!(disk.refused.load(Ordering::SeqCst) > 0);
        let segments = engine.segments().len();
        assert!(segments >= 6, "{segments} segments");
        // The windows left the reserve alone.
        assert_eq!(engine.stats().segments.reserved, u64::from(reserve));
        assert_eq!(engine.stats().segments.reserve_taken, 0);
        if !reserve {
            let e = engine.compact().unwrap_err();
            assert!(is_no_space(&e), "{e}");
            assert_eq!(engine.segments().len(), segments, "retired without copies");
            assert!(engine.failure().is_none());
            continue;
        }
        let done = engine.compact().unwrap();
        assert!(done.segments >= segments - 2, "{done:?} of {segments}");
        let stats = engine.stats();
        assert_eq!(stats.segments.reserve_taken, 1);
        assert_eq!(stats.segments.reserved, 1, "the reserve is made again");
        assert!(engine.is_out_of_room(), "writes stay refused until resume");
        assert!(is_no_space(&engine.put(b"k0", b"v").unwrap_err()));
        engine.resume().unwrap();
        assert_holds(&engine, &held);
        // Writes go on, into the room the compaction made.
        for n in 0..40u32 {
            let round = 1_000_000 + n;
            let mut value = VALUE.to_vec();
            value[..4].copy_from_slice(&round.to_le_bytes());
            let key = n % 13;
            engine
                .put(format!("k{key}").as_bytes(), &value)
                .unwrap()
                .wait()
                .unwrap();
            held[key as usize] = Some(round);
        }
        assert_holds(&engine, &held);
        assert!(engine.failure().is_none());
        engine.close().unwrap();
        drop(engine);
        // The reserve is kept at rest and taken over by the next open: no new file made.
        let reopened = Engine::open_with_io(tmp.path(), config, disk.clone()).unwrap();
        assert_holds(&reopened, &held);
        let segments = reopened.stats().segments;
        assert_eq!((segments.reserved, segments.fresh), (1, 0), "{segments:?}");
        reopened.close().unwrap();
    }
}

/// The live records of the log take several segments, the reserve one: the compaction
/// retires what it has copied whole each time the disk is full again, reuses those files for
/// the rest, and ends with every key where it was. Without that (the mutation: a `NoSpace`
/// from the copies returned as it is) it fails after the reserve's segment.
#[test]
fn a_compaction_on_a_full_disk_retires_as_it_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Capacity::new(16);
    let config = with_reserve();
    let engine = Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap();
    // Forty cold keys of 4 KB (about two and a half segments), then three hot ones.
    let (held, refusal) = fill_until_refused(&engine, 40, 3);
    assert!(is_no_space(&refusal), "{refusal}");
    let before = engine.segments().len();
    let done = engine.compact().unwrap();
    assert!(done.records_copied >= 40, "{done:?}");
    assert!(done.segments + 5 >= before, "{done:?} of {before} segments");
    // Taken again each time the segments retired made it anew and the pool had no other.
    let segments = engine.stats().segments;
    assert!(segments.reserve_taken >= 1, "{segments:?}");
    assert_eq!(segments.reserved, 1, "{segments:?}");
    assert!(engine.segments().len() <= 5, "{:?}", engine.segments());
    assert_holds(&engine, &held);
    engine.resume().unwrap();
    engine.put(b"k0", &VALUE).unwrap().wait().unwrap();
    assert!(engine.failure().is_none());
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    let mut held = held;
    held[0] = Some(u32::from_le_bytes(VALUE[..4].try_into().unwrap()));
    assert_holds(&reopened, &held);
}

/// Every record is live (distinct keys): the copies take as much room as what they replace.
/// A restart after the disk filled again must not take the segments of its own copies (they
/// are live, and would be copied again and again, each pass retiring what the last one
/// wrote): the compaction ends, each record copied once, and nothing acknowledged is lost.
#[test]
fn a_compaction_on_a_full_disk_of_live_records_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Capacity::new(10);
    let config = with_reserve();
    let engine = Arc::new(Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap());
    let mut n = 0u32;
    let (acked, refusal) = put_until_refused(&engine, &mut n, 10_000);
    assert!(is_no_space(&refusal), "{refusal}");
    let compacting = engine.clone();
    let done = crate::common::within("a compaction of live records", move || compacting.compact())
        .unwrap();
    assert!(
        done.records_copied <= acked.len() as u64,
        "{} keys, copied {done:?}",
        acked.len()
    );
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    assert_all_hold(&engine, &acked);
    let engine = Arc::into_inner(engine).expect("one owner");
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    assert_all_hold(&reopened, &acked);
}

/// `Compaction::Auto` makes room when the disk fills, whatever its ratio: once per spell it
/// compacts every complete segment (taking the reserve), and the writers' `resume` then
/// succeeds without anyone calling `compact`. Fails if the compacting thread waits for its
/// ratio (here never reached), which leaves `resume` refused for good.
#[test]
fn auto_compaction_makes_room_when_the_disk_fills() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Capacity::new(10);
    let config = auto_with_reserve();
    let engine = Arc::new(Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap());
    let (mut held, refusal) = fill_until_refused(&engine, 10, 3);
    assert!(is_no_space(&refusal), "{refusal}");
    resume_until_room(&engine, "resume after the compacting thread made room");
    // `resume` can find room before the run ends (its first retirements make it): wait for
    // the run's end before looking at what it did.
    wait_for_a_run(&engine);
    let counts = engine.counts();
    assert!(counts.segments.reserve_taken >= 1, "{counts:?}");
    assert!(
        engine.compaction_error().is_none(),
        "{:?}",
        engine.compaction_error()
    );
    let mut value = VALUE.to_vec();
    value[..4].copy_from_slice(&7u32.to_le_bytes());
    engine.put(b"k0", &value).unwrap().wait().unwrap();
    held[0] = Some(7);
    assert_holds(&engine, &held);
    let engine = Arc::into_inner(engine).expect("one owner");
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(tmp.path(), config).unwrap();
    assert_holds(&reopened, &held);
}

/// A consumer that holds every segment back when the disk fills: the compacting thread's run
/// for the spell can retire nothing. Once the consumer has caught up, the thread must make
/// room after all: the writers only call `resume`. Fails if one run per spell is all the
/// thread does (it ran while held back, and `resume` is refused for good).
#[test]
fn auto_compaction_makes_room_once_a_consumer_holding_it_back_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Capacity::new(10);
    let config = auto_with_reserve();
    let engine = Arc::new(Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap());
    let mut consumer = engine.consumer("slow").unwrap();
    let (held, refusal) = fill_until_refused(&engine, 10, 3);
    assert!(is_no_space(&refusal), "{refusal}");
    // The thread is woken by the spell and runs while the consumer holds everything back:
    // nothing is taken.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(engine.is_out_of_room());
    assert_eq!(engine.counts().compaction.runs, 0);
    // The consumer catches up.
    let mut last = None;
    while let Some(batch) = consumer.try_next().unwrap() {
        last = Some(batch.seq);
    }
    consumer.commit(last.expect("batches to consume")).unwrap();
    resume_until_room(&engine, "resume once the consumer moved");
    wait_for_a_run(&engine);
    assert_holds(&engine, &held);
    drop(consumer);
    let engine = Arc::into_inner(engine).expect("one owner");
    engine.close().unwrap();
}

/// Writers held by the throttle on consumer lag (`Backpressure::Block`) when a spell of
/// refusals begins (here: a compaction's copies take the reserve) are let go with
/// `NoSpace`, as every write is refused from then on, a thread and a future alike. They
/// used to wait on for the consumer, which on a full disk may never commit (its commit
/// writes a file): the mutation, a spell that does not wake the throttle, leaves them
/// parked and the hang guard fails.
#[test]
fn a_spell_of_refusals_lets_go_of_writers_held_by_the_throttle() {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};
    struct Woken(AtomicBool);
    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    const LIMIT: u64 = 3;
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDisk::default());
    let config = Config {
        consumer_lag_max: Some(mergelog::ConsumerLag {
            batches: Some(LIMIT),
            ..mergelog::ConsumerLag::default()
        }),
        ..with_reserve()
    };
    let engine = Arc::new(open(tmp.path(), hook.clone(), config));
    // Three complete segments of live records, every batch of them consumed: a compaction
    // may take them, and its copies need more than the one segment prepared ahead.
    let mut n = 0;
    fill_to_segments(&engine, 4, &mut n);
    let mut consumer = engine.consumer("slow").unwrap();
    let mut last = None;
    while let Some(batch) = consumer.try_next().unwrap() {
        last = Some(batch.seq);
    }
    consumer.commit(last.expect("batches")).unwrap();
    // Then past the limit: writers are held.
    for _ in 0..=LIMIT {
        let key = format!("k{n:05}");
        n += 1;
        engine.put(key.as_bytes(), &VALUE).unwrap().wait().unwrap();
    }
    let held = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.put(b"held", &VALUE).map(drop))
    };
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut task = Box::pin(engine.put_async(b"held-task", &VALUE));
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    crate::common::within("the writers held", {
        let engine = engine.clone();
        move || {
            while engine.counts().throttled < 2 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    // The disk fills; the compaction's copies take the reserve, and the spell begins.
    hook.full.store(true, Ordering::SeqCst);
    engine.compact().expect("compact through the reserve");
    assert!(engine.is_out_of_room(), "no spell began");
    let r = crate::common::within("the held put", move || held.join().unwrap());
    assert!(matches!(&r, Err(e) if is_no_space(e)), "{r:?}");
    crate::common::within("the held task's wake-up", {
        let woken = woken.clone();
        move || {
            while !woken.0.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    let r = task.as_mut().poll(&mut Context::from_waker(&waker));
    assert!(
        matches!(&r, Poll::Ready(Err(e)) if is_no_space(e)),
        "{:?}",
        r.map(|t| t.map(drop))
    );
    drop(task);
    drop(consumer);
    let engine = Arc::into_inner(engine).expect("one owner");
    engine.close().unwrap();
}
