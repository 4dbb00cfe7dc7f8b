//! Making room on a full disk when the log carries request ids: a retirement (`retire_before`,
//! a compaction's) first replaces the `ids` file with the ids of the segments it removes.
//! Until session 33 that replacement wrote a new temporary file, which needs room beside the
//! old one: on a full disk it failed with `ENOSPC`, and so did the retirement, so neither
//! `retire_before` nor a compaction (the reserve's whole point) could make room while ids
//! were in use. The disk here is one of bytes (`Disk`): whatever makes a file longer, or
//! makes a file of some length, needs that much room (in 4 KiB blocks); overwriting a file's
//! bytes needs none.

use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, IdHorizon, Outcome, RequestId};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const BLOCK: u64 = 4096;

fn blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// A disk of `capacity` bytes (unbounded until set) holding the log directory: the files'
/// lengths, in whole blocks, are what it holds. Making a spare segment file (`prep-*`,
/// `recycle-*`, zero-filled as it is created) needs `segment_bytes`; creating any other file
/// needs none (its bytes are written afterwards); a write past a file's end needs the blocks
/// it adds, a write inside a file none. When that does not fit, the operation fails with
/// `ENOSPC` before it happens.
pub(crate) struct Disk {
    capacity: AtomicU64,
    /// The file system cannot exchange two names (`EINVAL`, as where `RENAME_EXCHANGE` is
    /// unknown): the engine renames instead.
    no_exchange: AtomicBool,
    segment_bytes: u64,
    /// Operations refused for room, and the names of their files.
    refused: std::sync::Mutex<Vec<String>>,
    /// Replacements of the `ids` file done (`ids.tmp` exchanged with it or renamed over it).
    ids_replaced: AtomicU64,
}

impl Disk {
    pub(crate) fn new(segment_bytes: u64) -> Arc<Disk> {
        Arc::new(Disk {
            capacity: AtomicU64::new(u64::MAX),
            no_exchange: AtomicBool::new(false),
            segment_bytes,
            refused: Default::default(),
            ids_replaced: AtomicU64::new(0),
        })
    }

    /// The bytes the files of `dir` hold.
    pub(crate) fn used(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| blocks(m.len()))
            .sum()
    }

    /// From now on the disk holds what `dir` holds and `room` bytes more.
    pub(crate) fn fill(&self, dir: &Path, room: u64) {
        self.capacity
            .store(Disk::used(dir) + room, Ordering::SeqCst);
    }

    /// Room without bound again.
    pub(crate) fn unbound(&self) {
        self.capacity.store(u64::MAX, Ordering::SeqCst);
    }

    pub(crate) fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}

impl Io for Disk {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if op == IoOp::Exchange && self.no_exchange.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let need = match op {
            IoOp::Create if name.starts_with("prep-") || name.starts_with("recycle-") => {
                self.segment_bytes
            }
            IoOp::Write if !data.is_empty() => {
                let len = std::fs::metadata(path).map_or(0, |m| m.len());
                blocks(offset + data.len() as u64).saturating_sub(blocks(len))
            }
            _ => 0,
        };
        let capacity = self.capacity.load(Ordering::SeqCst);
        if need > 0 && Disk::used(path.parent().unwrap()).saturating_add(need) > capacity {
            self.refused
                .lock()
                .unwrap()
                .push(format!("{op:?} {name} ({need} bytes)"));
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        if matches!(op, IoOp::Exchange | IoOp::Rename) && path.ends_with("ids.tmp") {
            self.ids_replaced.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::NoSpace { cause } if cause.to_string().contains("No space left"))
}

const HORIZON: usize = 40;

fn config(reserve_segment: bool) -> Config {
    Config {
        compaction: mergelog::Compaction::OnDemand,
        reserve_segment,
        request_ids: IdHorizon {
            ids: HORIZON,
            age: None,
        },
        ..crate::hooks::small_segments()
    }
}

/// What the tests wrote: per key its last acknowledged value's round; per id the batch.
#[derive(Default)]
struct Written {
    rounds: Vec<Option<u32>>,
    ids: Vec<(RequestId, mergelog::Seq)>,
    next_id: u128,
    /// Puts without request ids.
    no_ids: bool,
    /// Cold keys (written once, first); 10 if 0.
    cold: u32,
}

impl Written {
    /// Puts `key` (of `keys`) with a fresh request id and round `round`; the error if refused.
    fn put(&mut self, engine: &Engine, key: u32, round: u32) -> Result<(), Error> {
        if self.rounds.len() <= key as usize {
            self.rounds.resize(key as usize + 1, None);
        }
        self.next_id += 1;
        let id = RequestId::from(self.next_id);
        let mut value = vec![7u8; 4000];
        value[..4].copy_from_slice(&round.to_le_bytes());
        if self.no_ids {
            engine
                .put(format!("k{key}").as_bytes(), &value)
                .and_then(|t| t.wait())?;
            self.rounds[key as usize] = Some(round);
            return Ok(());
        }
        match engine
            .put_with_id(id, format!("k{key}").as_bytes(), &value)
            .and_then(|t| t.wait())?
        {
            Outcome::Written(seq) => {
                self.rounds[key as usize] = Some(round);
                self.ids.push((id, seq));
                Ok(())
            }
            other => panic!("a fresh id {id} was {other:?}"),
        }
    }

    /// The cold keys once, then three hot ones in turn, `n` puts in all (counting on from
    /// where the last call stopped), or until a put is refused: that error.
    fn puts(&mut self, engine: &Engine, n: u32) -> Option<Error> {
        let cold = if self.cold == 0 { 10 } else { self.cold };
        for _ in 0..n {
            let i = self.next_id as u32;
            let (key, round) = match i < cold {
                true => (i, 0),
                false => (cold + (i - cold) % 3, (i - cold) / 3 + 1),
            };
            if let Err(e) = self.put(engine, key, round) {
                return Some(e);
            }
        }
        None
    }

    /// Every key from `k<first>` on holds its last acknowledged round (a retirement forgets
    /// the cold keys; a compaction keeps them), and the newest `HORIZON` ids
    /// are remembered.
    fn assert_held(&self, engine: &Engine, first: usize, ctx: &str) {
        for (key, round) in self.rounds.iter().enumerate().skip(first) {
            let got = engine.read(format!("k{key}").as_bytes()).unwrap();
            let got = got
                .as_deref()
                .map(|v| u32::from_le_bytes(v[..4].try_into().unwrap()));
            assert_eq!(got, *round, "{ctx}: k{key}");
        }
        for (id, seq) in self.ids.iter().rev().take(HORIZON) {
            assert_eq!(engine.request_id_seq(*id), Some(*seq), "{ctx}: id {id}");
        }
    }
}

/// How the tests make room.
#[derive(Clone, Copy, Debug)]
enum Dig {
    /// `compact`, through the reserve.
    Compact,
    /// `retire_before` the last segment (its files removed).
    Retire,
}

fn dig(engine: &Engine, how: Dig) -> mergelog::Result<()> {
    match how {
        Dig::Compact => engine.compact().map(drop),
        Dig::Retire => {
            let last = engine.segments().last().unwrap().first_seq;
            engine.retire_before(last).map(drop)
        }
    }
}

/// Writes with request ids fill the disk; `compact` (through the reserve) or `retire_before`
/// must then make room without needing any, `resume` let writes in again, and every id
/// inside the horizon stay remembered, live and after a reopen. An earlier retirement, with
/// room, carried ids already (so an `ids` file exists). With 40 cold keys the compaction's
/// copies take more than the reserve, so it retires several times on the full disk, each
/// time replacing the `ids` file. Where two names cannot be exchanged (the hook refuses
/// `IoOp::Exchange` with `EINVAL`), the temporary is renamed over the `ids` file and made again
/// right after, from the room the old file gave back: no retirement needs room either.
/// Failed before session 33 with `ENOSPC` from the write of `ids.tmp`.
#[test]
fn a_retirement_on_a_full_disk_needs_no_room_for_the_ids_file() {
    for (how, cold, exchange) in [
        (Dig::Compact, 10, true),
        (Dig::Compact, 40, true),
        (Dig::Retire, 10, true),
        (Dig::Compact, 40, false),
        (Dig::Retire, 10, false),
    ] {
        let ctx = format!("{how:?}, {cold} cold keys, exchange {exchange}");
        let tmp = tempfile::tempdir().unwrap();
        let config = config(matches!(how, Dig::Compact));
        let disk = Disk::new(config.segment_bytes);
        disk.no_exchange.store(!exchange, Ordering::SeqCst);
        let engine = Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap();
        let mut w = Written {
            cold,
            ..Written::default()
        };
        assert!(w.puts(&engine, cold + 50).is_none());
        dig(&engine, how).unwrap_or_else(|e| panic!("{ctx} with room: {e}"));
        assert!(tmp.path().join("ids").exists(), "{ctx}: no ids carried");
        // Room for three more segments, then the disk is full.
        disk.fill(tmp.path(), 3 * config.segment_bytes);
        let refusal = w.puts(&engine, 10_000).expect("the disk never filled");
        assert!(is_no_space(&refusal), "{ctx}: {refusal}");
        // Less than a segment was left: something else takes it.
        disk.fill(tmp.path(), 0);
        assert!(engine.is_out_of_room());
        assert!(engine.resume().is_err(), "{ctx}: room before digging");
        let segments = engine.segments().len();
        let replaced = disk.ids_replaced.load(Ordering::SeqCst);
        dig(&engine, how).unwrap_or_else(|e| {
            panic!(
                "{ctx} on the full disk: {e} (refused for room: {:?})",
                disk.refused()
            )
        });
        assert!(engine.segments().len() < segments, "{ctx}: nothing retired");
        let replaced = disk.ids_replaced.load(Ordering::SeqCst) - replaced;
        assert!(
            replaced >= if cold == 40 { 2 } else { 1 },
            "{ctx}: {replaced} replacements"
        );
        engine
            .resume()
            .unwrap_or_else(|e| panic!("{ctx}: resume: {e}"));
        // Writes with ids go on, and an old id inside the horizon is still a duplicate.
        assert!(w.puts(&engine, 5).is_none(), "{ctx}");
        assert!(w.ids.len() > 2 * HORIZON, "{ctx}: {} ids", w.ids.len());
        let (old, seq) = w.ids[w.ids.len() - HORIZON];
        let again = engine
            .put_with_id(old, b"k0", b"again")
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(again, Outcome::Duplicate { seq }, "{ctx}");
        let first = match how {
            Dig::Compact => 0,
            Dig::Retire => cold as usize,
        };
        w.assert_held(&engine, first, &format!("{ctx}, live"));
        assert!(engine.failure().is_none());
        engine.close().unwrap();
        drop(engine);
        disk.unbound();
        let reopened = Engine::open(tmp.path(), config).unwrap();
        w.assert_held(&reopened, first, &format!("{ctx}, reopened"));
        reopened.close().unwrap();
    }
}

/// A durable consumer holds retirement back at its commit, and a commit replaces its position
/// file (a temporary file, synced, renamed over it). On a full disk a consumer that has caught
/// up must still be able to commit, or `retire_before` and a compaction stay held back where
/// it last committed, and nothing makes room. Also where two names cannot be exchanged (the
/// handle's temporary is renamed over the position file, then made again from the room the
/// old one gave back). Failed before session 33 with `ENOSPC` from the write of the commit's
/// temporary file.
#[test]
fn a_consumer_commits_on_a_full_disk_and_lets_retirement_make_room() {
    for exchange in [true, false] {
        consumer_on_a_full_disk(exchange);
    }
}

fn consumer_on_a_full_disk(exchange: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(false);
    let disk = Disk::new(config.segment_bytes);
    disk.no_exchange.store(!exchange, Ordering::SeqCst);
    let engine = Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap();
    let mut consumer = engine.consumer("c").unwrap();
    // No request ids: the consumer's file alone.
    let mut w = Written {
        no_ids: true,
        ..Written::default()
    };
    let catch_up = |consumer: &mut mergelog::Consumer| {
        let mut last = None;
        while let Some(b) = consumer.try_next().unwrap() {
            last = Some(b.seq);
        }
        last.map(|seq| consumer.commit(seq))
    };
    assert!(w.puts(&engine, 20).is_none());
    catch_up(&mut consumer).expect("batches").unwrap();
    // With room: everything before the commit goes.
    let last = engine.segments().last().unwrap().first_seq;
    engine.retire_before(last).unwrap();
    disk.fill(tmp.path(), 3 * config.segment_bytes);
    let refusal = w.puts(&engine, 10_000).expect("the disk never filled");
    assert!(is_no_space(&refusal), "{refusal}");
    disk.fill(tmp.path(), 0);
    // Held back at the commit made with room: every segment stays.
    let last = engine.segments().last().unwrap().first_seq;
    let held = engine.retire_before(last).unwrap();
    assert!(
        held.held_back_by.is_some() && held.segments == 0,
        "{held:?}"
    );
    catch_up(&mut consumer)
        .expect("batches")
        .unwrap_or_else(|e| {
            panic!(
                "exchange {exchange}: commit on the full disk: {e} ({:?})",
                disk.refused()
            )
        });
    let retired = engine.retire_before(last).unwrap();
    assert!(
        retired.segments > 0 && retired.held_back_by.is_none(),
        "{retired:?}"
    );
    engine.resume().unwrap();
    assert!(w.puts(&engine, 5).is_none());
    // And again: the commit after a commit on a full disk needs no room either.
    disk.fill(tmp.path(), 0);
    catch_up(&mut consumer)
        .expect("batches")
        .unwrap_or_else(|e| panic!("exchange {exchange}: second commit on the full disk: {e}"));
    assert_eq!(consumer.committed(), engine.durable_seq());
    drop(consumer);
    engine.close().unwrap();
    drop(engine);
    disk.unbound();
    let reopened = Engine::open(tmp.path(), config).unwrap();
    let c = reopened.consumer("c").unwrap();
    assert_eq!(c.committed(), reopened.durable_seq());
    w.assert_held(&reopened, 10, "reopened");
}

/// The first retirement to carry ids, on a full disk: nothing retired before, so no `ids`
/// file, yet its replacement needs no room. The room is made ahead by the thread that
/// prepares the next segment, once a frame has logged ids. Also where two names cannot be
/// exchanged (the temporary is renamed over the `ids` file, and made again after the
/// retirement): the first retirement on the full disk still needs no room.
#[test]
fn the_first_retirement_to_carry_ids_needs_no_room_on_a_full_disk() {
    for (how, exchange) in [
        (Dig::Compact, true),
        (Dig::Retire, true),
        (Dig::Compact, false),
        (Dig::Retire, false),
    ] {
        let ctx = format!("{how:?}, exchange {exchange}");
        let tmp = tempfile::tempdir().unwrap();
        let config = config(matches!(how, Dig::Compact));
        let disk = Disk::new(config.segment_bytes);
        disk.no_exchange.store(!exchange, Ordering::SeqCst);
        let engine = Engine::open_with_io(tmp.path(), config.clone(), disk.clone()).unwrap();
        let mut w = Written::default();
        assert!(w.puts(&engine, 60).is_none());
        assert!(!tmp.path().join("ids").exists(), "{ctx}");
        disk.fill(tmp.path(), 3 * config.segment_bytes);
        let refusal = w.puts(&engine, 10_000).expect("the disk never filled");
        assert!(is_no_space(&refusal), "{ctx}: {refusal}");
        disk.fill(tmp.path(), 0);
        dig(&engine, how).unwrap_or_else(|e| {
            panic!(
                "{ctx}: the first retirement on the full disk: {e} ({:?})",
                disk.refused()
            )
        });
        assert!(tmp.path().join("ids").exists(), "{ctx}: no ids carried");
        engine
            .resume()
            .unwrap_or_else(|e| panic!("{ctx}: resume: {e}"));
        assert!(w.puts(&engine, 5).is_none(), "{ctx}");
        let first = match how {
            Dig::Compact => 0,
            Dig::Retire => 10,
        };
        w.assert_held(&engine, first, &format!("{ctx}, live"));
        engine.close().unwrap();
        drop(engine);
        disk.unbound();
        let reopened = Engine::open(tmp.path(), config).unwrap();
        w.assert_held(&reopened, first, &format!("{ctx}, reopened"));
        reopened.close().unwrap();
    }
}

/// Refuses every `IoOp::Exchange` with `EINVAL` (a file system that cannot exchange names)
/// while `no_exchange`, and passes every other operation to `inner`.
struct NoExchange {
    inner: Arc<crate::compaction::Steps>,
    no_exchange: bool,
}

impl Io for NoExchange {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        if op == IoOp::Exchange && self.no_exchange {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.inner.before(op, path, offset, data)
    }

    fn after(&self, op: IoOp, path: &Path) {
        self.inner.after(op, path);
    }
}

/// A power cut at each step of a consumer's commit in turn (the handle's kept temporary
/// opened, written over, synced, its name exchanged with the position file's, the directory
/// synced; where names cannot be exchanged, renamed, then the temporary made again): after
/// the power loss the position is the old one or the new one, never damaged, and the new
/// one if the commit returned `Ok`.
#[test]
fn a_power_cut_at_any_step_of_a_commit_leaves_the_old_position_or_the_new() {
    use crate::common::power::{lose_power, power_loss_config, PowerLossIo};
    use crate::compaction::{copy_of, Steps};
    use rand::{Rng, SeedableRng};
    let template = tempfile::tempdir().unwrap();
    let config = power_loss_config(mergelog::WritePath::Pwrite);
    {
        let engine = Engine::open(template.path(), config.clone()).unwrap();
        for i in 0..10u32 {
            let key = format!("k{i}");
            engine.put(key.as_bytes(), b"v").unwrap().wait().unwrap();
        }
        let mut c = engine.consumer("c").unwrap();
        for _ in 0..3 {
            c.try_next().unwrap().expect("a batch");
        }
        c.commit(3).unwrap();
        drop(c);
        engine.close().unwrap();
    }
    for exchange in [true, false] {
        // Opens a copy, consumes to batch 6 and commits it with the steps armed; returns the
        // copy and the commit's result.
        let commit = |steps: &Arc<Steps>, power: &PowerLossIo| {
            let dir = copy_of(template.path());
            let io = Arc::new(NoExchange {
                inner: steps.clone(),
                no_exchange: !exchange,
            });
            let engine = Engine::open_with_io(dir.path(), config.clone(), io).unwrap();
            let mut c = engine.consumer("c").unwrap();
            for _ in 0..3 {
                c.try_next().unwrap().expect("a batch");
            }
            steps.armed.store(true, Ordering::SeqCst);
            let committed = c.commit(6);
            steps.armed.store(false, Ordering::SeqCst);
            power.cut_now();
            drop(c);
            let _ = engine.close();
            (dir, committed)
        };
        let power = Arc::new(PowerLossIo::new(u64::MAX, None));
        let steps = Steps::new(power.clone(), None);
        let (_, committed) = commit(&steps, &power);
        committed.unwrap();
        let ops: Vec<String> = steps.seen().into_iter().map(|(l, _)| l).collect();
        let kinds: Vec<&str> = ops.iter().map(|l| l.split(' ').next().unwrap()).collect();
        let swap = if exchange { "Exchange" } else { "Rename" };
        for must in ["Open", "Write", "Sync", swap, "SyncDir"] {
            assert!(
                kinds.contains(&must),
                "exchange {exchange}: no {must} in {ops:?}"
            );
        }
        for cut_at in 1..=ops.len() + 1 {
            let ctx = format!(
                "exchange {exchange}: power cut at operation {cut_at} ({})",
                ops.get(cut_at - 1).map_or("none", |l| l.as_str())
            );
            let power = Arc::new(PowerLossIo::new(u64::MAX, None));
            let steps = Steps::new(power.clone(), Some(cut_at));
            let (dir, committed) = commit(&steps, &power);
            let mut rng = rand::rngs::StdRng::seed_from_u64(cut_at as u64);
            let (p_drop, p_keep) = (rng.random_range(0.0..0.6), rng.random_range(0.1..0.9));
            lose_power(&power, &mut rng, p_drop, p_keep);
            let engine = Engine::open(dir.path(), config.clone())
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            let c = engine
                .consumer("c")
                .unwrap_or_else(|e| panic!("{ctx}: the consumer after the power loss: {e}"));
            let at = c.committed().get();
            match committed {
                Ok(()) => assert_eq!(at, 6, "{ctx}: the commit returned Ok"),
                Err(_) => assert!(at == 3 || at == 6, "{ctx}: at {at}"),
            }
            drop(c);
            engine.close().unwrap();
        }
        eprintln!("commit power cuts (exchange {exchange}): {ops:?}");
    }
}

/// Fails the first directory sync after an `IoOp::Exchange` with EIO (not passed to the
/// power-loss model, so the exchange stays undoable), then cuts the power at the next sync of
/// a file named `tmp_prefix*` (a replacement's write over the kept temporary, performed and
/// not yet durable). Everything else goes to `inner`.
struct DirSyncFailsAfterExchange {
    inner: Arc<crate::common::power::PowerLossIo>,
    tmp_prefix: &'static str,
    exchanged: AtomicBool,
    failed: AtomicBool,
}

impl Io for DirSyncFailsAfterExchange {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match op {
            IoOp::Exchange => self.exchanged.store(true, Ordering::SeqCst),
            IoOp::SyncDir
                if self.exchanged.load(Ordering::SeqCst)
                    && !self.failed.swap(true, Ordering::SeqCst) =>
            {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            IoOp::Sync
                if self.failed.load(Ordering::SeqCst) && name.starts_with(self.tmp_prefix) =>
            {
                self.inner.cut_now()
            }
            _ => {}
        }
        self.inner.before(op, path, offset, data)
    }

    fn after(&self, op: IoOp, path: &Path) {
        self.inner.after(op, path);
    }
}

/// After a replacement whose directory sync failed, the exchange of names may not be durable:
/// a power loss may still leave the old file under the real name, and that inode is the one
/// the kept temporary's name now holds. The next replacement wrote over it in place: a power
/// cut during that write left the real name on a torn file (the old position or the new one
/// was lost). A consumer's commit whose directory sync failed, then the commit again, cut
/// while its write over the temporary is not durable: the position is the old one or the new
/// one, never damaged.
#[test]
fn a_commit_after_a_failed_directory_sync_never_writes_over_the_file_the_name_may_hold() {
    use crate::common::power::{lose_power_within_sectors, power_loss_config, PowerLossIo};
    use rand::SeedableRng;
    let config = power_loss_config(mergelog::WritePath::Pwrite);
    for seed in 0..16u64 {
        let ctx = format!("seed {seed}");
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path(), config.clone()).unwrap();
            for i in 0..10u32 {
                engine
                    .put(format!("k{i}").as_bytes(), b"v")
                    .unwrap()
                    .wait()
                    .unwrap();
            }
            let mut c = engine.consumer("c").unwrap();
            for _ in 0..3 {
                c.try_next().unwrap().expect("a batch");
            }
            c.commit(3).unwrap();
            drop(c);
            engine.close().unwrap();
        }
        let power = Arc::new(PowerLossIo::new(u64::MAX, None));
        let io = Arc::new(DirSyncFailsAfterExchange {
            inner: power.clone(),
            tmp_prefix: "consumer.tmp-",
            exchanged: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let engine = Engine::open_with_io(dir.path(), config.clone(), io.clone()).unwrap();
        let mut c = engine.consumer("c").unwrap();
        for _ in 0..3 {
            c.try_next().unwrap().expect("a batch");
        }
        assert!(c.commit(6).is_err(), "{ctx}: the directory sync failed");
        assert!(io.failed.load(Ordering::SeqCst), "{ctx}");
        // The caller tries again; the power is cut during it.
        let _ = c.commit(6);
        assert!(
            power.is_cut(),
            "{ctx}: the second commit synced its temporary"
        );
        drop(c);
        let _ = engine.close();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        lose_power_within_sectors(&power, &mut rng, 0.0, 0.5, 1.0);
        let engine = Engine::open(dir.path(), config.clone())
            .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        let c = engine
            .consumer("c")
            .unwrap_or_else(|e| panic!("{ctx}: the consumer after the power loss: {e}"));
        let at = c.committed().get();
        assert!(at == 3 || at == 6, "{ctx}: at {at}");
        drop(c);
        engine.close().unwrap();
    }
}
