//! A retirement whose directory sync failed: the segment's name is gone and the engine has
//! forgotten it, but a crash could bring it back with the keys the call forgot, and no later
//! sync may be taken to cover the failed one. As after any failed sync, the engine fails:
//! the call and every later write say so, reads go on, and a reopen holds the log.
//!
//! A power cut at each step of a `retire_before` in turn (the `ids` file's create, write,
//! sync, rename and directory sync; each segment's removal or rename into the pool, and the
//! directory sync after it), counted by a dry run as the compaction's sweep counts its steps
//! (`compaction.rs`): whatever the cut leaves, every request id inside the horizon is
//! remembered (a retry is a duplicate, not applied again), and every acknowledged write of
//! the log that remains is there.

use crate::common::model::state_diff;
use crate::common::power::{lose_power, power_loss_config, PowerLossIo};
use crate::common::{engine_state, State, WAIT_MAX};
use crate::compaction::{copy_of, step, Steps};
use crate::hooks::segment;
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, IdHorizon, Outcome, RequestId, Seq, WritePath};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Fails the first directory sync that follows a segment's removal.
#[derive(Default)]
struct FailFirstRetireSync {
    removed: AtomicBool,
    failed: AtomicBool,
}

impl Io for FailFirstRetireSync {
    fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        if op != IoOp::SyncDir {
            return Ok(());
        }
        if self.removed.load(Ordering::SeqCst) && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        if op == IoOp::Remove && segment(path) {
            self.removed.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_failed_directory_sync_in_a_retirement_fails_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailFirstRetireSync::default());
    let config = crate::hooks::small_segments();
    let engine = crate::hooks::open_small(tmp.path(), hook.clone());
    engine
        .put(b"old", b"in the first segment")
        .unwrap()
        .wait()
        .unwrap();
    // Enough batches for two more segments.
    for i in 0..40u32 {
        let key = format!("k{i:03}");
        engine
            .put(key.as_bytes(), &[7u8; 4000])
            .unwrap()
            .wait()
            .unwrap();
    }
    let segments = crate::common::log::segment_files(tmp.path());
    assert!(segments.len() >= 3, "{segments:?}");
    // Only the first segment goes.
    let e = engine
        .retire_before(Seq::new(segments[1].0))
        .expect_err("the directory sync fails");
    assert!(
        matches!(&e, Error::Failed(cause) if matches!(**cause, Error::Io { .. })),
        "{e:?}"
    );
    assert!(hook.failed.load(Ordering::SeqCst));
    assert!(engine.failure().is_some(), "the failure is sticky");
    match engine.put(b"after", b"the failed sync") {
        Err(Error::Failed(_)) => {}
        other => panic!("a put after the failed directory sync gave {other:?}"),
    }
    assert!(matches!(
        engine.retire_before(Seq::new(segments[2].0)),
        Err(Error::Failed(_))
    ));
    // Reads of the durable state go on: the removed segment is forgotten.
    assert!(engine.read(b"old").unwrap().is_none());
    assert!(engine.read(b"k039").unwrap().is_some());
    let readable = |engine: &Engine| -> Vec<u32> {
        (0..40u32)
            .filter(|i| {
                engine
                    .read(format!("k{i:03}").as_bytes())
                    .unwrap()
                    .is_some()
            })
            .collect()
    };
    let seen = readable(&engine);
    assert!(matches!(engine.close(), Err(Error::Failed(_))));
    drop(engine);
    // The removal did happen here: a reopen holds what the engine showed.
    let engine = Engine::open(tmp.path(), config).expect("reopen");
    assert!(engine.read(b"old").unwrap().is_none());
    assert_eq!(readable(&engine), seen);
    engine.close().unwrap();
}

/// Puts in the template, each with its own request id (1 to `PUTS`) and its own frame.
const PUTS: u128 = 200;
/// The newest `HORIZON` ids are remembered: ids 81 to 200, most of them in the segments the
/// retirement takes.
const HORIZON: usize = 120;

fn key_of(n: u128) -> Vec<u8> {
    format!("k{:02}", n % 40).into_bytes()
}

/// A unique value of 1,000 to about 1,900 bytes: about 40 to a 64 KiB segment.
fn value_of(n: u128) -> Vec<u8> {
    let mut v = format!("v{n}|").into_bytes();
    v.resize(1000 + (n as usize * 37) % 900, b'a' + (n % 26) as u8);
    v
}

/// A log of `PUTS` acknowledged puts with request ids, closed cleanly; the batch of each.
struct Ids {
    dir: tempfile::TempDir,
    config: Config,
    /// The batch of put `n` at `n - 1`.
    seqs: Vec<Seq>,
    /// The first batch of the last segment: the retirement takes every segment before it.
    retire_before: Seq,
}

/// What a template's retirement starts from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    /// No `ids` file; the `ids.tmp` that the engine's preparing thread kept once ids were
    /// logged.
    Fresh,
    /// No `ids` file and no `ids.tmp`: the retirement makes its temporary.
    NoTmp,
    /// The first segment retired with room: an `ids` file and the kept `ids.tmp`, both as
    /// long as the room.
    Retired,
    /// As `Retired`, with the `ids` file an older build wrote instead (version 1, exactly as
    /// long as its contents) and no `ids.tmp`: the retirement makes its temporary, exchanges
    /// it with that file, and makes the old file as long as the room.
    Upgraded,
}

/// The template, its retirement starting from `before`.
fn ids_template(recycle_segments: usize, before: Before) -> Ids {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        recycle_segments,
        request_ids: IdHorizon {
            ids: HORIZON,
            age: None,
        },
        ..power_loss_config(WritePath::Pwrite)
    };
    let engine = Engine::open(dir.path(), config.clone()).expect("open the template");
    let mut seqs = Vec::new();
    for n in 1..=PUTS {
        let t = engine
            .put_with_id(RequestId::from(n), &key_of(n), &value_of(n))
            .expect("put");
        match t.wait_timeout(WAIT_MAX).expect("put") {
            Outcome::Written(seq) => seqs.push(seq),
            other => panic!("put {n}: {other:?}"),
        }
    }
    let segments = engine.segments();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    if matches!(before, Before::Retired | Before::Upgraded) {
        engine.retire_before(segments[1].first_seq).expect("retire");
        for name in ["ids", "ids.tmp"] {
            assert!(dir.path().join(name).exists(), "no {name}");
        }
    }
    engine.close().expect("close the template");
    if matches!(before, Before::NoTmp | Before::Upgraded) {
        let _ = std::fs::remove_file(dir.path().join("ids.tmp"));
    }
    if before == Before::Upgraded {
        let path = dir.path().join("ids");
        let v2 = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(v2[16..24].try_into().unwrap()) as usize;
        let mut v1 = v2[..24 + 32 * n].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert!(v1.len() < v2.len(), "the version 2 file holds no room");
        std::fs::write(&path, v1).unwrap();
    }
    let retire_before = segments.last().expect("segments").first_seq;
    Ids {
        dir,
        config,
        seqs,
        retire_before,
    }
}

/// What the log must hold once it begins at batch `first`: the last acknowledged value of
/// every key written at or after it (the retirement forgets the others).
fn state_from(t: &Ids, first: Seq) -> State {
    let mut state = State::new();
    for n in 1..=PUTS {
        if t.seqs[n as usize - 1] >= first {
            state.insert(key_of(n), value_of(n));
        }
    }
    state
}

/// Retires on a copy of the template through `steps` (the power cut where it says), then
/// closes the engine with the power off; returns the copy and whether the cut came before the
/// retirement ended.
fn retire_copy(
    t: &Ids,
    steps: &Arc<Steps>,
    power: &PowerLossIo,
    ctx: &str,
) -> (tempfile::TempDir, bool) {
    let dir = copy_of(t.dir.path());
    let io: Arc<dyn Io> = steps.clone();
    let engine = Engine::open_with_io(dir.path(), t.config.clone(), io)
        .unwrap_or_else(|e| panic!("{ctx}: open the copy: {e}"));
    steps.armed.store(true, Ordering::SeqCst);
    let retired = engine.retire_before(t.retire_before);
    steps.armed.store(false, Ordering::SeqCst);
    let cut = power.is_cut();
    if cut {
        // Once the segments are gone, only the room kept for the next replacement is left
        // to make (best effort): a cut there fails nothing the call reports.
        if let Ok(r) = &retired {
            let at = power.cut_op().unwrap_or_default();
            assert!(at.ends_with("ids.tmp"), "{ctx}: cut at {at}, yet {r:?}");
            assert_eq!(r.first_seq, t.retire_before, "{ctx}");
        }
    } else {
        let r = retired.unwrap_or_else(|e| panic!("{ctx}: retire_before: {e}"));
        assert_eq!(r.first_seq, t.retire_before, "{ctx}");
    }
    power.cut_now();
    let _ = engine.close();
    (dir, cut)
}

/// After the power loss: every id inside the horizon is remembered with its batch, and a
/// retry of one is a duplicate that writes nothing; the state is what the remaining log
/// holds, every acknowledged write in it included.
fn check_ids_after_power_loss(dir: &Path, t: &Ids, ctx: &str) {
    let engine = Engine::open(dir, t.config.clone())
        .unwrap_or_else(|e| panic!("{ctx}: reopen after the power loss: {e}"));
    let first = engine.segments()[0].first_seq;
    assert!(first <= t.retire_before, "{ctx}: begins at {first}");
    let want = state_from(t, first);
    let got = engine_state(&engine);
    assert!(
        got == want,
        "{ctx}: the log begins at batch {first} and holds another state:\n{}",
        state_diff(&got, &want)
    );
    let oldest = PUTS - HORIZON as u128 + 1;
    for n in oldest..=PUTS {
        assert_eq!(
            engine.request_id_seq(RequestId::from(n)),
            Some(t.seqs[n as usize - 1]),
            "{ctx}: id {n} is inside the horizon (ids {oldest} to {PUTS}) and must be remembered"
        );
    }
    // Retries of the oldest id remembered and of one in the last segment retired.
    let last_retired = (1..=PUTS)
        .rev()
        .find(|&n| t.seqs[n as usize - 1] < t.retire_before)
        .expect("a put was retired");
    for n in [oldest, last_retired] {
        let retry = engine
            .put_with_id(RequestId::from(n), &key_of(n), b"retried")
            .expect("retry");
        let seq = t.seqs[n as usize - 1];
        assert_eq!(
            retry.wait_timeout(WAIT_MAX).expect("retry"),
            Outcome::Duplicate { seq },
            "{ctx}: a retry of id {n}"
        );
        assert_eq!(
            engine.read_to_vec(&key_of(n)).expect("read"),
            want.get(&key_of(n)).cloned(),
            "{ctx}: the retry of id {n} was applied"
        );
    }
    engine.close().expect("close");
}

/// A power cut at every step of a `retire_before` whose segments hold request ids, each in
/// turn (see the module doc), with retired segments removed or renamed into the pool: after
/// the power loss every id inside the horizon is remembered and no acknowledged write of the
/// log that remains is lost. The `ids` file must be durable before the first segment goes.
/// The `ids` file's replacement goes through its kept temporary `ids.tmp` (see [`Before`]):
/// written over in place (or made), synced, renamed into place (no `ids` file yet) or its
/// name exchanged with the `ids` file's, the directory synced; after the removals the
/// temporary is made again, or made as long as the room (best effort: a cut there leaves the
/// call's result `Ok`).
#[test]
fn a_power_cut_at_any_step_of_a_retirement_forgets_no_request_id_inside_the_horizon() {
    for (recycle, before) in [
        (0, Before::Fresh),
        (2, Before::Fresh),
        (0, Before::NoTmp),
        (0, Before::Retired),
        (2, Before::Retired),
        (2, Before::Upgraded),
    ] {
        let t = ids_template(recycle, before);
        let what = format!("recycle_segments {recycle}, {before:?}");
        // The dry run: the operations an undisturbed retirement issues.
        let power = Arc::new(PowerLossIo::new(u64::MAX, None));
        let steps = Steps::new(power.clone(), None);
        let (dir, _) = retire_copy(&t, &steps, &power, &what);
        drop(dir);
        let ops: Vec<String> = steps.seen().into_iter().map(|(l, _)| l).collect();
        let mut kinds = BTreeSet::new();
        for cut_at in 1..=ops.len() + 1 {
            let at = ops
                .get(cut_at - 1)
                .map_or("none: after the last", |l| l.as_str());
            let ctx = format!("{what}: power cut at operation {cut_at} ({at})");
            let power = Arc::new(PowerLossIo::new(u64::MAX, None));
            let steps = Steps::new(power.clone(), Some(cut_at));
            let (dir, cut) = retire_copy(&t, &steps, &power, &ctx);
            let cut = cut.then(|| steps.seen()[cut_at - 1].0.clone());
            assert_eq!(
                cut.as_ref(),
                ops.get(cut_at - 1),
                "{ctx}: the steps changed"
            );
            kinds.extend(cut.as_deref().map(step));
            let mut rng = StdRng::seed_from_u64(cut_at as u64);
            let (p_drop, p_keep) = (rng.random_range(0.0..0.6), rng.random_range(0.1..0.9));
            lose_power(&power, &mut rng, p_drop, p_keep);
            check_ids_after_power_loss(dir.path(), &t, &ctx);
        }
        let retire = if recycle > 0 {
            "Rename segment"
        } else {
            "Remove segment"
        };
        // The `ids` file's replacement, and the room kept for the next one.
        let replace: &[&str] = match before {
            Before::Fresh => &["Rename ids file", "Create ids file"],
            Before::NoTmp => &["Create ids file", "Rename ids file"],
            Before::Retired => &["Open ids file", "Exchange ids file"],
            Before::Upgraded => &["Create ids file", "Exchange ids file", "Open ids file"],
        };
        let musts = [
            "Write ids file",
            "Sync ids file",
            "SyncDir directory",
            retire,
        ];
        for &must in musts.iter().chain(replace) {
            assert!(
                kinds.contains(must),
                "{what}: no cut at a {must}: {kinds:?}"
            );
        }
        eprintln!(
            "retirement power cuts ({what}): {} operations: {ops:?}",
            ops.len()
        );
    }
}
