//! The power-loss model, an `Io` hook (`PowerLossIo`) shared by `faults.rs` and the
//! `after_failure` tests.
//!
//! It keeps every write since it was last made durable, with the bytes it overwrote; a sync
//! makes durable the performed writes it covers: all of the file's for `fdatasync`, only the
//! parts inside the range for a ranged `msync` (`io::synced_range`; a write that crosses the
//! range is split). A write past the end of a file (the `ids` file, the clean-close mark and
//! a consumer's position are written whole into new files) overwrote zeros; taken back
//! whole, it also takes back the length it added. A store into the mapping announces only its offset: it is modelled as a
//! write of everything from there to the end of the file, its bytes read back at the power
//! loss, so a ranged sync always splits it. Directory changes (creations of files and
//! directories, renames, exchanges of two names, removals) are kept until a sync of their
//! directory; a removed file,
//! and the file a rename replaced, are kept under a hard link until then, so that the power
//! loss can bring them back.
//!
//! Two ways of failing:
//! - **Power cut** ([`PowerLossIo::new`]): the `cut_at`th operation and every later one fail
//!   with EIO. [`lose_power`], called once the engine is closed, then takes back what a power
//!   loss may take: it tears each write not durable at 512-byte sectors or drops it whole,
//!   and undoes directory changes not made durable.
//! - **A failed sync that is not a power cut** ([`PowerLossIo::failing_sync`], "fsyncgate"):
//!   the `n`th sync returns EIO, and every performed write it would have covered becomes
//!   *lost*: the file keeps its bytes (the page cache still holds them, clean), but no later
//!   sync makes them durable, so [`lose_power`] always reverts them, except for the bytes a
//!   later write that was then made durable covered. Every other operation succeeds, before
//!   and after.

// The model changes files behind the engine's back, as a power loss would.
#![allow(clippy::disallowed_methods)]

use mergelog::internals::format::{segment_file_name, SegmentHeader, SEGMENT_HEADER_LEN};
use mergelog::internals::io::{synced_range, Io, IoOp};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

pub const EIO: i32 = 5;
const SECTOR: u64 = 512;

/// A write not yet durable: where, what, and what it overwrote. A store into the mapping
/// (the mmap write path) announces only its offset: it is modelled as a write of everything
/// from there to the end of the file, `new` read back at the power loss, `old` what the file
/// held when it was announced. A ranged sync splits a write into the parts outside its range
/// (same `id`).
struct Unsynced {
    off: u64,
    /// Empty for a store into the mapping.
    new: Vec<u8>,
    old: Vec<u8>,
    mapped: bool,
    /// The write was performed (`after` ran): a sync that starts later covers it.
    done: bool,
    /// A failed sync covered it: it never becomes durable (see the module doc).
    lost: bool,
    /// Order of announcement: a larger id is a later write.
    id: u64,
    /// The file's length before the write, if the write made it longer (a small file
    /// written whole: the `ids` file, the clean-close mark, a consumer's position). `old`
    /// holds zeros past that length.
    grew_from: Option<u64>,
}

impl Unsynced {
    fn range(&self) -> Range<u64> {
        self.off..self.off + self.old.len() as u64
    }

    /// The part of this write in `r`, if any.
    fn piece(&self, r: Range<u64>) -> Option<Unsynced> {
        let own = self.range();
        let (a, b) = (r.start.max(own.start), r.end.min(own.end));
        if a >= b {
            return None;
        }
        let s = (a - self.off) as usize..(b - self.off) as usize;
        Some(Unsynced {
            off: a,
            new: if self.mapped {
                Vec::new()
            } else {
                self.new[s.clone()].to_vec()
            },
            old: self.old[s].to_vec(),
            mapped: self.mapped,
            done: self.done,
            lost: self.lost,
            id: self.id,
            grew_from: self.grew_from,
        })
    }

    /// The parts of this write outside `r` (none, one or two), and whether any of it was in
    /// `r`.
    fn split_off(self, r: &Range<u64>) -> (Vec<Unsynced>, bool) {
        let own = self.range();
        if r.end <= own.start || r.start >= own.end {
            return (vec![self], false);
        }
        let parts = [own.start..r.start, r.end..own.end]
            .into_iter()
            .filter_map(|p| self.piece(p))
            .collect();
        (parts, true)
    }
}

/// A directory change not yet made durable by a sync of its directory.
#[derive(Clone, Debug)]
enum DirChange {
    Created(PathBuf),
    CreatedDir(PathBuf),
    /// A rename; if it replaced a file at `to`, that file was hard-linked to `backup` first
    /// so that the power loss can undo the rename without losing it.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        backup: Option<PathBuf>,
    },
    /// A removed file, hard-linked to `backup` first so that the power loss can undo it.
    Removed {
        path: PathBuf,
        backup: PathBuf,
    },
    /// The names of two files exchanged (a small file and its kept temporary): undone by
    /// exchanging them back.
    Exchanged {
        a: PathBuf,
        b: PathBuf,
    },
}

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

impl DirChange {
    /// The directory whose sync makes the change durable.
    fn dir(&self) -> PathBuf {
        match self {
            DirChange::Created(p) | DirChange::CreatedDir(p) => parent(p),
            DirChange::Renamed { to, .. } => parent(to),
            DirChange::Removed { path, .. } => parent(path),
            DirChange::Exchanged { a, .. } => parent(a),
        }
    }
}

/// A running sync: the range it covers (`None`: the whole file) and the ids of the writes it
/// covers.
type Syncing = (Option<Range<u64>>, Vec<u64>);

#[derive(Default)]
struct PowerState {
    /// Per file, its writes not yet durable (lost ones included), oldest first.
    unsynced: BTreeMap<PathBuf, Vec<Unsynced>>,
    /// Per file being synced, and per thread syncing it (several syncers may sync one file
    /// at once, each on its own thread): the range the sync covers (`None`: the whole file)
    /// and the writes it covers (performed when it started).
    syncing: HashMap<(PathBuf, ThreadId), Syncing>,
    dir_changes: Vec<DirChange>,
    /// The directory a running directory sync syncs, and how many of `dir_changes` (the
    /// first ones) existed when it started.
    dir_syncing: Option<(PathBuf, usize)>,
    /// A rename about to happen, and the hard link that keeps the file it replaces, if any.
    renaming: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
    /// A removal about to happen, and the hard link that keeps its file.
    removing: Option<(PathBuf, PathBuf)>,
    /// An exchange of two names about to happen.
    exchanging: Option<(PathBuf, PathBuf)>,
    next_id: u64,
    /// When the power was cut: the operation that failed first.
    cut_op: Option<String>,
    /// The sync that failed (fsyncgate mode), once it has.
    failed_sync: Option<String>,
}

/// Records what is not yet durable, and fails as [`PowerLossIo::new`] or
/// [`PowerLossIo::failing_sync`] says. An operation that passed `before` before the cut
/// completes (its `after` counts: a sync that returned made its writes durable, and the
/// engine may have acknowledged them).
pub struct PowerLossIo {
    cut_at: AtomicU64,
    cut_kind: Option<IoOp>,
    /// The sync (counted over all files from 1) that fails without a power cut.
    fail_sync: Option<u64>,
    ops: AtomicU64,
    syncs: AtomicU64,
    cut: AtomicBool,
    st: Mutex<PowerState>,
}

fn read_at(path: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    File::open(path)?.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

impl PowerLossIo {
    /// Cuts the power at the `cut_at`th operation (of kind `cut_kind`, or of any kind): it
    /// and every later one fail.
    pub fn new(cut_at: u64, cut_kind: Option<IoOp>) -> PowerLossIo {
        PowerLossIo {
            cut_at: AtomicU64::new(cut_at),
            cut_kind,
            fail_sync: None,
            ops: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            st: Mutex::new(PowerState::default()),
        }
    }

    /// No power cut until [`PowerLossIo::cut_now`]; the `n`th sync fails with EIO and the
    /// writes it would have covered are lost (see the module doc). Every other operation
    /// succeeds.
    pub fn failing_sync(n: u64) -> PowerLossIo {
        PowerLossIo {
            fail_sync: Some(n),
            ..PowerLossIo::new(u64::MAX, None)
        }
    }

    /// Cuts the power at the `n`th operation (of the kind [`PowerLossIo::new`] was given)
    /// from now.
    pub fn cut_after(&self, n: u64) {
        let _st = self.st.lock().unwrap();
        let now = self.ops.load(Ordering::SeqCst);
        self.cut_at.store(now + n, Ordering::SeqCst);
    }

    /// Cuts the power now: every later operation fails.
    pub fn cut_now(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Whether the power has been cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// The operation the power cut failed first, if it failed one.
    pub fn cut_op(&self) -> Option<String> {
        self.st.lock().unwrap().cut_op.clone()
    }

    /// The sync that failed without a power cut, once it has.
    pub fn failed_sync(&self) -> Option<String> {
        self.st.lock().unwrap().failed_sync.clone()
    }
}

/// What each operation does to the record of what is not yet durable: `before`/`after` hold
/// the lock and call these.
impl PowerState {
    /// A write is announced: keep where, what, and what it overwrites.
    fn announce_write(&mut self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mapped = data.is_empty();
        let file_len = std::fs::metadata(path)?.len();
        let len = if mapped {
            (file_len - offset) as usize
        } else {
            data.len()
        };
        // A write past the end (a small file written whole) overwrites nothing there: it
        // takes back to zeros, and to the old length if it is dropped whole.
        let there = (file_len.saturating_sub(offset) as usize).min(len);
        let mut old = read_at(path, offset, there)?;
        old.resize(len, 0);
        let grew_from = (offset + len as u64 > file_len).then_some(file_len);
        let id = self.next_id;
        self.next_id += 1;
        self.unsynced
            .entry(path.to_owned())
            .or_default()
            .push(Unsynced {
                off: offset,
                new: data.to_vec(),
                old,
                mapped,
                done: false,
                lost: false,
                id,
                grew_from,
            });
        Ok(())
    }

    /// The `n`th sync, of `range` of `path` (`None`: the whole file), fails (fsyncgate mode):
    /// the performed writes it would have covered are lost.
    fn fail_sync(&mut self, path: &Path, range: Option<Range<u64>>, n: u64) {
        // The kernel reports the failed writeback and marks the pages clean:
        // the bytes stay in the cache, but nothing will write them again.
        // Writes another sync of the file, still running, covers: their writeback is that
        // sync's, which goes on to return OK (the model fails one sync, not the file), and
        // its caller may acknowledge them.
        let other_syncs: Vec<u64> = self
            .syncing
            .iter()
            .filter(|((p, _), _)| p == path)
            .flat_map(|(_, (_, covered))| covered.iter().copied())
            .collect();
        let ws = self.unsynced.remove(path).unwrap_or_default();
        let mut kept = Vec::with_capacity(ws.len());
        for w in ws {
            if !w.done || w.lost || other_syncs.contains(&w.id) {
                kept.push(w);
                continue;
            }
            let r = range.clone().unwrap_or_else(|| w.range());
            if let Some(mut inside) = w.piece(r.clone()) {
                inside.lost = true;
                kept.push(inside);
            }
            kept.extend(w.split_off(&r).0);
        }
        kept.sort_by_key(|w| (w.id, w.off));
        self.unsynced.insert(path.to_owned(), kept);
        self.failed_sync = Some(format!("sync #{n} of {}", path.display()));
    }

    /// A sync of `range` of `path` starts: it covers the writes performed by now.
    fn begin_sync(&mut self, path: &Path, range: Option<Range<u64>>) {
        let covered = self
            .unsynced
            .get(path)
            .map(|ws| {
                ws.iter()
                    .filter(|w| w.done && !w.lost)
                    .map(|w| w.id)
                    .collect()
            })
            .unwrap_or_default();
        let key = (path.to_owned(), std::thread::current().id());
        self.syncing.insert(key, (range, covered));
    }

    /// A sync of `path` returned: the writes it covered are durable in its range.
    fn end_sync(&mut self, path: &Path) {
        let key = (path.to_owned(), std::thread::current().id());
        let (range, covered) = self.syncing.remove(&key).unwrap_or_default();
        let ws = self.unsynced.remove(path).unwrap_or_default();
        // The covered writes' parts in the range are durable now: the rest stays.
        let mut rest = Vec::with_capacity(ws.len());
        let mut durable: Vec<(u64, Range<u64>)> = Vec::new();
        for w in ws {
            // (A lost part may share its id with parts that are covered.)
            if w.lost || !covered.contains(&w.id) {
                rest.push(w);
                continue;
            }
            match &range {
                None => durable.push((w.id, w.range())),
                Some(r) => {
                    let own = w.range();
                    durable.push((w.id, r.start.max(own.start)..r.end.min(own.end)));
                    rest.extend(w.split_off(r).0);
                }
            }
        }
        // A lost write keeps only the bytes no later durable write covers.
        let mut kept = Vec::with_capacity(rest.len());
        for w in rest {
            let mut parts = vec![w];
            for (id, r) in durable.iter().filter(|(_, r)| r.start < r.end) {
                parts = parts
                    .into_iter()
                    .flat_map(|p| {
                        if p.lost && p.id < *id {
                            p.split_off(r).0
                        } else {
                            vec![p]
                        }
                    })
                    .collect();
            }
            kept.extend(parts);
        }
        kept.sort_by_key(|w| (w.id, w.off));
        self.unsynced.insert(path.to_owned(), kept);
    }

    /// A directory sync returned: the changes in its directory made before it started are
    /// durable.
    fn end_dir_sync(&mut self) {
        let Some((dir, n)) = self.dir_syncing.take() else {
            return;
        };
        let mut synced = Vec::new();
        let mut i = 0;
        self.dir_changes.retain(|c| {
            i += 1;
            let durable = i <= n && c.dir() == dir;
            if durable {
                synced.push(c.clone());
            }
            !durable
        });
        for change in synced {
            if let DirChange::Removed { backup, .. }
            | DirChange::Renamed {
                backup: Some(backup),
                ..
            } = change
            {
                // Gone for good, and so are any writes to it still unsynced.
                self.unsynced.remove(&backup);
                let _ = std::fs::remove_file(backup);
            }
        }
    }

    /// `path` is about to be renamed to the destination in `data`.
    fn begin_rename(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        // The hook gets the destination; the engine renames a prepared file to the
        // name its header gives, and a retired segment into the pool.
        let to = PathBuf::from(std::ffi::OsStr::from_bytes(data));
        if to
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".seg"))
        {
            let header = read_at(path, 0, SEGMENT_HEADER_LEN)?;
            let id = SegmentHeader::decode(&header)
                .unwrap_or_else(|e| panic!("renaming {} without a header: {e:?}", path.display()))
                .segment_id;
            assert_eq!(to, path.with_file_name(segment_file_name(id)));
        }
        // A rename over an existing file (a small file replaced whole, a rewritten segment)
        // replaces it in one step, but until the directory is synced a power loss may leave
        // the old file at `to`: keep it under a hard link, as `begin_remove` does.
        let backup = if std::fs::symlink_metadata(&to).is_ok() {
            let backup = to.with_extension(format!("replaced-{}", self.next_id));
            self.next_id += 1;
            std::fs::hard_link(&to, &backup)?;
            Some(backup)
        } else {
            None
        };
        self.renaming = Some((path.to_owned(), to, backup));
        Ok(())
    }

    /// `path` is about to be removed: keep its file under a hard link, so that the power
    /// loss can undo the removal.
    fn begin_remove(&mut self, path: &Path) -> io::Result<()> {
        let backup = path.with_extension(format!("removed-{}", self.next_id));
        self.next_id += 1;
        std::fs::hard_link(path, &backup)?;
        self.removing = Some((path.to_owned(), backup));
        Ok(())
    }
}

impl Io for PowerLossIo {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.st.lock().unwrap();
        let counts = self.cut_kind.is_none_or(|kind| kind == op);
        let k = self.ops.load(Ordering::SeqCst) + u64::from(counts);
        self.ops.store(k, Ordering::SeqCst);
        if self.cut.load(Ordering::SeqCst) || (counts && k >= self.cut_at.load(Ordering::SeqCst)) {
            self.cut.store(true, Ordering::SeqCst);
            st.cut_op
                .get_or_insert_with(|| format!("#{k} {op:?} {}", path.display()));
            return Err(io::Error::from_raw_os_error(EIO));
        }
        match op {
            IoOp::Write => st.announce_write(path, offset, data)?,
            IoOp::Sync => {
                let range = synced_range(offset, data);
                let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
                if self.fail_sync == Some(n) {
                    st.fail_sync(path, range, n);
                    return Err(io::Error::from_raw_os_error(EIO));
                }
                st.begin_sync(path, range);
            }
            IoOp::SyncDir => st.dir_syncing = Some((path.to_owned(), st.dir_changes.len())),
            IoOp::Rename => st.begin_rename(path, data)?,
            IoOp::Exchange => {
                let other = PathBuf::from(std::ffi::OsStr::from_bytes(data));
                st.exchanging = Some((path.to_owned(), other));
            }
            IoOp::Remove => st.begin_remove(path)?,
            _ => {}
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        let mut st = self.st.lock().unwrap();
        match op {
            IoOp::Write => {
                if let Some(w) = st
                    .unsynced
                    .get_mut(path)
                    .and_then(|ws| ws.iter_mut().rev().find(|w| !w.done))
                {
                    w.done = true;
                }
            }
            IoOp::Sync => st.end_sync(path),
            IoOp::SyncDir => st.end_dir_sync(),
            IoOp::Remove => {
                let (path, backup) = st.removing.take().expect("before(Remove) ran");
                if let Some(ws) = st.unsynced.remove(&path) {
                    st.unsynced.insert(backup.clone(), ws);
                }
                st.dir_changes.push(DirChange::Removed { path, backup });
            }
            IoOp::Create => st.dir_changes.push(DirChange::Created(path.to_owned())),
            IoOp::CreateDir => st.dir_changes.push(DirChange::CreatedDir(path.to_owned())),
            IoOp::Exchange => {
                let (a, b) = st.exchanging.take().expect("before(Exchange) ran");
                // Each file's unsynced writes follow it to its new name.
                let wa = st.unsynced.remove(&a);
                let wb = st.unsynced.remove(&b);
                if let Some(ws) = wa {
                    st.unsynced.insert(b.clone(), ws);
                }
                if let Some(ws) = wb {
                    st.unsynced.insert(a.clone(), ws);
                }
                st.dir_changes.push(DirChange::Exchanged { a, b });
            }
            IoOp::Rename => {
                let (from, to, backup) = st.renaming.take().expect("before(Rename) ran");
                // The replaced file now lives only under its backup: its unsynced writes
                // follow it there, as a removed file's do.
                if let Some(backup) = &backup {
                    if let Some(ws) = st.unsynced.remove(&to) {
                        st.unsynced.insert(backup.clone(), ws);
                    }
                }
                if let Some(ws) = st.unsynced.remove(&from) {
                    st.unsynced.insert(to.clone(), ws);
                }
                st.dir_changes.push(DirChange::Renamed { from, to, backup });
            }
            _ => {}
        }
    }
}

/// What the power loss did to the files.
#[derive(Default, Debug, Clone, Copy)]
pub struct Damage {
    pub unsynced_writes: usize,
    /// Of those, stores into the mapping (the mmap write path).
    pub mapped_writes: usize,
    pub dropped_writes: usize,
    pub torn_writes: usize,
    pub kept_writes: usize,
    /// Writes (or parts of them) a failed sync lost, reverted.
    pub lost_writes: usize,
    pub undone_dir_changes: usize,
    /// Sectors torn inside themselves ([`lose_power_within_sectors`]).
    pub split_sectors: usize,
}

impl std::ops::AddAssign for Damage {
    fn add_assign(&mut self, o: Damage) {
        self.unsynced_writes += o.unsynced_writes;
        self.mapped_writes += o.mapped_writes;
        self.dropped_writes += o.dropped_writes;
        self.torn_writes += o.torn_writes;
        self.kept_writes += o.kept_writes;
        self.lost_writes += o.lost_writes;
        self.undone_dir_changes += o.undone_dir_changes;
        self.split_sectors += o.split_sectors;
    }
}

/// Takes a write back whole: its old bytes, and the file's old length if it made the file
/// longer and nothing later (kept, as `lose_power` goes newest first) lies past it.
fn revert(file: &File, w: &Unsynced) {
    file.write_all_at(&w.old, w.off).expect("revert");
    let end = w.off + w.old.len() as u64;
    if let Some(len) = w.grew_from {
        if file.metadata().expect("stat").len() == end {
            file.set_len(len).expect("take back the growth");
        }
    }
}

/// Takes back what the power loss may take: newest first, each lost write is reverted, and
/// each other write not durable is dropped whole (probability `p_drop`) or kept or reverted
/// per 512-byte sector (kept with probability `p_keep`); each directory change since the
/// last sync of its directory is undone with probability 1/2. Call after the engine is
/// closed.
pub fn lose_power(io: &PowerLossIo, rng: &mut StdRng, p_drop: f64, p_keep: f64) -> Damage {
    lose_power_within_sectors(io, rng, p_drop, p_keep, 0.0)
}

/// As [`lose_power`], and a sector of a write not durable is torn inside itself with
/// probability `p_split` (before it is kept or reverted): its bytes up to a random offset
/// are the write's and the rest what it overwrote, or the other way round. docs/FORMAT.md
/// assumes no write atomic, not even one sector's: the CRCs, not the sectors, decide.
/// Powersafe overwrite still holds (no byte outside the write changes).
pub fn lose_power_within_sectors(
    io: &PowerLossIo,
    rng: &mut StdRng,
    p_drop: f64,
    p_keep: f64,
    p_split: f64,
) -> Damage {
    let st = io.st.lock().unwrap();
    let mut dmg = Damage::default();
    for (path, writes) in st.unsynced.iter().filter(|(_, w)| !w.is_empty()) {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        for w in writes.iter().rev() {
            if w.lost {
                revert(&file, w);
                dmg.lost_writes += 1;
                continue;
            }
            dmg.unsynced_writes += 1;
            if rng.random_bool(p_drop) {
                revert(&file, w);
                dmg.dropped_writes += 1;
                continue;
            }
            // A store into the mapping: what it wrote is what the file holds now (newer
            // writes over it were taken back or kept already, newest first), and a sector
            // it did not change cannot be torn.
            let new = if w.mapped {
                read_at(path, w.off, w.old.len()).expect("read back a mapped write")
            } else {
                w.new.clone()
            };
            let end = w.off + new.len() as u64;
            let mut at = w.off;
            let mut reverted = 0;
            let mut split = 0;
            let mut sectors = 0;
            while at < end {
                let next = ((at / SECTOR + 1) * SECTOR).min(end);
                let r = (at - w.off) as usize..(next - w.off) as usize;
                // A sector the write left as it was has nothing to lose.
                if w.old[r.clone()] != new[r.clone()] {
                    sectors += 1;
                    if p_split > 0.0 && rng.random_bool(p_split) {
                        // Torn inside the sector: the write's bytes on one side of `cut`,
                        // the old ones on the other.
                        let cut = r.start + rng.random_range(1..r.len().max(2));
                        let cut = cut.min(r.end);
                        let old = if rng.random_bool(0.5) {
                            r.start..cut
                        } else {
                            cut..r.end
                        };
                        let at = w.off + old.start as u64;
                        file.write_all_at(&w.old[old], at).expect("tear a sector");
                        dmg.split_sectors += 1;
                        split += 1;
                    } else if !rng.random_bool(p_keep) {
                        file.write_all_at(&w.old[r], at).expect("tear");
                        reverted += 1;
                    }
                }
                at = next;
            }
            match (reverted, split) {
                (0, 0) => dmg.kept_writes += 1,
                (n, 0) if n == sectors => dmg.dropped_writes += 1,
                _ => dmg.torn_writes += 1,
            }
            if w.mapped {
                dmg.mapped_writes += 1;
            }
        }
    }
    for change in st.dir_changes.iter().rev() {
        if !rng.random_bool(0.5) {
            // The change stands. Its backup (a removed file's, or the file a rename
            // replaced) goes with it: left behind, it would sit in the directory under the
            // name the next model picks for the same file (`begin_remove`, `begin_rename`),
            // whose hard link then fails with EEXIST (a removal's did: seed 2095 of
            // `power_loss`, beyond the default 1,000).
            match change {
                DirChange::Removed { backup, .. }
                | DirChange::Renamed {
                    backup: Some(backup),
                    ..
                } => {
                    let _ = std::fs::remove_file(backup);
                }
                _ => {}
            }
            continue;
        }
        dmg.undone_dir_changes += 1;
        match change {
            DirChange::Created(p) => {
                let _ = std::fs::remove_file(p);
            }
            DirChange::CreatedDir(p) => {
                let _ = std::fs::remove_dir_all(p);
            }
            DirChange::Renamed { from, to, backup } => {
                std::fs::rename(to, from).expect("undo rename");
                // The rename never replaced the file at `to`: it is back.
                if let Some(backup) = backup {
                    std::fs::rename(backup, to).expect("undo rename: restore the replaced file");
                }
            }
            DirChange::Removed { path, backup } => {
                std::fs::rename(backup, path).expect("undo removal");
            }
            DirChange::Exchanged { a, b } => {
                let aside = a.with_extension("exchanged-back");
                std::fs::rename(a, &aside).expect("undo exchange");
                std::fs::rename(b, a).expect("undo exchange");
                std::fs::rename(&aside, b).expect("undo exchange");
            }
        }
    }
    dmg
}

/// The configuration the power-loss tests open their logs with: small segments, so that a
/// run rolls several times; syncs on.
pub fn power_loss_config(write_path: mergelog::WritePath) -> mergelog::Config {
    mergelog::Config {
        segment_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        durability: mergelog::Durability::Sync,
        write_path,
        ..mergelog::Config::default()
    }
}

/// Cuts the power under a running engine: every later operation fails, the engine is closed
/// and dropped, and what was not durable is taken back (`lose_power`, seeded by `seed`, half
/// the unsynced writes dropped, half of the others' sectors kept).
pub fn pull_the_plug(io: &PowerLossIo, engine: mergelog::Engine, seed: u64) -> Damage {
    use rand::SeedableRng;
    io.cut_now();
    let _ = engine.close();
    drop(engine);
    lose_power(io, &mut StdRng::seed_from_u64(seed), 0.5, 0.5)
}
