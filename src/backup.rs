//! Backups: a copy of a log, taken while an engine writes it, that an engine opens as the log
//! was at one batch (`Engine::backup`, `LogReader::backup`, `mergelog backup`).
//!
//! A backup copies what a read view of the log holds ([`LogReader`]): each segment's header
//! and frames up to the view's end, nothing behind them (a reused file's old bytes, a frame
//! being written), into a file of the segment's size whose rest is left a hole (zeros); the
//! request ids of retired segments (`ids`), so that an engine opened on the backup still
//! refuses their replays; and each consumer's position, at most the view's last batch.
//! A view without segments of a log that starts past batch 1 gets an empty segment named
//! after its next batch, so that the engine goes on from there instead of starting at 1.
//! Never the clean-close mark: the engine opened on a backup verifies it whole, as after a
//! crash. Everything goes into a new directory beside the destination, each file synced, and
//! is renamed to the destination only once whole (the parent directory synced then), so a
//! backup that failed half way leaves nothing under the destination's name (but for a failed
//! sync of the parent after the rename: then a whole backup, and an error saying its name may
//! not be durable): a partial copy of a log would open as a shorter, valid log, and be taken
//! for the backup.
//!
//! Copies of the log's files, never hard links to them: an engine reuses retired segment
//! files in place (`Config::recycle_segments`) and appends to its last one, which would write
//! over a linked backup. An incremental backup (`Engine::backup_since`) links only to an
//! earlier *backup's* files, where it holds exactly the bytes this backup would write (read
//! whole and compared, then synced, for `earlier` may be a copy nobody synced): nothing writes into a backup's files but an engine opened on it,
//! and that engine first gives every segment with other names a file of its own
//! (`dir::unshare_segments`, at open), so a backup never changes under another. For that,
//! no engine may have the earlier backup open while its files are linked (its `LOCK` is held
//! shared throughout, `dir::backup_hold_earlier`): a log an engine runs on is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::ids::{self, CarriedError, IdEntry, RequestId};
use crate::log::dir;
use crate::log::format::{segment_file_name, SegmentHeader, SEGMENT_SIZE_MIN};
use crate::log::io::Io;
use crate::reader::LogReader;
use crate::seq::Seq;

/// What a backup holds (`Engine::backup`, `LogReader::backup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The directory made.
    pub dir: PathBuf,
    /// The first batch it holds: the log's first then (segments retired before it are not
    /// in the backup, as they were not in the log).
    pub first_seq: Seq,
    /// The batch after the last one it holds: an engine opened on the backup holds every
    /// batch before it and logs its next batch under this number.
    pub next_seq: Seq,
    /// Segment files copied.
    pub segments: usize,
    /// Bytes copied into them: headers and frames (the files' zero rest is not written).
    pub bytes: u64,
    /// Of `segments`, those linked from the earlier backup (`Engine::backup_since`): files it
    /// held exactly as this backup would write them. Their bytes are not in `bytes`.
    pub linked: usize,
    /// Consumer positions copied.
    pub consumers: usize,
    /// Request ids of retired segments carried (the `ids` file's).
    pub carried_ids: usize,
}

/// What a backup copies beside the segments: read by the caller at a point where they agree
/// with its view (the engine's, under its retirement lock).
pub(crate) struct SideFiles {
    /// Each consumer's name and committed batch.
    pub consumers: Vec<(String, u64)>,
    /// The `ids` file's ids (id, batch, commit time), if there is one.
    pub carried: Option<Vec<(RequestId, u64, u64)>>,
}

impl SideFiles {
    /// The consumers' positions and the carried ids of the log in `dir`, as they are now.
    pub fn read(log: &Path) -> Result<SideFiles> {
        let consumers = crate::consumer::load_all(log)?;
        let path = log.join(dir::IDS_FILE);
        let carried = dir::read_ids(log, |file, len| {
            let mut found = Vec::new();
            match ids::read_carried(std::io::BufReader::new(file), len, |e| found.push(e)) {
                Ok(()) => Ok(Ok(found)),
                Err(CarriedError::Bad(r)) => Ok(Err(r.error(&path))),
                Err(CarriedError::Io(e)) => Err(Error::io("read request ids", &path, e)),
            }
        })?
        .transpose()?;
        Ok(SideFiles { consumers, carried })
    }
}

/// Tells the staging directories of backups made at once in one process apart.
static STAGING: AtomicU64 = AtomicU64::new(0);

/// Copies `view` and `side` into the new directory `dest`, every file change through `io`.
/// See the module's doc.
pub(crate) fn write(
    io: &dyn Io,
    view: &LogReader,
    side: &SideFiles,
    dest: &Path,
    earlier: Option<&Path>,
) -> Result<Backup> {
    let refuse = |why: &str| {
        Error::io(
            "back up log",
            dest,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, why.to_owned()),
        )
    };
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(refuse(
            "the destination exists; a backup makes a new directory",
        ));
    }
    if dest.file_name().is_none() {
        return Err(refuse("the destination names no directory"));
    }
    if let Some(earlier) = earlier {
        // A mistyped name would otherwise make a full copy where an incremental one was
        // asked for.
        if !std::fs::metadata(earlier).is_ok_and(|m| m.is_dir()) {
            return Err(Error::io(
                "back up log since an earlier backup",
                earlier,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the earlier backup is not a directory",
                ),
            ));
        }
    }
    if let Some(carried) = &side.carried {
        check_carried(view, carried)?;
    }
    // Kept until the backup is named: no engine writes into a file linked meanwhile.
    let _earlier_held = match earlier {
        Some(earlier) => dir::backup_hold_earlier(io, earlier)?,
        None => None,
    };
    // Beside the destination (the rename stays in one directory), under a name of its own
    // length: the destination's name may be as long as a name can be.
    let staging = dest.with_file_name(format!(
        ".mergelog-backup-{}-{}",
        std::process::id(),
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    dir::backup_stage(io, &staging)?;
    let made = fill(io, view, side, &staging, earlier).and_then(|backup| {
        // A rename would replace an empty directory made under the name since the check
        // above: a race with whoever made it, never a way to lose a backup.
        dir::backup_name(io, &staging, dest)?;
        Ok(backup)
    });
    let backup = match made {
        Ok(backup) => backup,
        Err(e) => {
            // What is left, if anything, is a hidden directory beside the destination, never
            // a log under its name.
            dir::backup_discard(io, &staging);
            return Err(e);
        }
    };
    // Named: the backup is whole under `dest` (every file and the staging directory synced).
    // If the name cannot be made durable, it is left as it is and the error says so: taking
    // it back (a rename, then removals) after the parent's failed sync could leave, after a
    // crash, the name on a directory whose removals were durable and not the rename back, a
    // partial backup under the name, which is worse than a whole one whose name may go.
    if let Err(e) = dir::backup_name_sync(io, dest) {
        return Err(Error::io(
            "make backup's name durable",
            dest,
            std::io::Error::other(format!(
                "the backup is whole under this name, but syncing its parent directory failed \
                 ({e}): a crash may take the name back; remove it and back up again, or sync \
                 the parent yourself"
            )),
        ));
    }
    Ok(Backup {
        dir: dest.to_owned(),
        ..backup
    })
}

/// Whether the engine opened on a backup of `view` would take the carried ids `carried` (the
/// `ids` file's entries, in its order, which `ids::read_carried` checked): else
/// `Error::Corrupt` naming the log's `ids` file and the first bad entry's offset, as the
/// engine's open names it (docs/FORMAT.md, "Carried request ids"). A backup of such a file
/// would be refused at its open, or answer retries with batches that log something else: it
/// is refused before anything is made, and the damage is the log's, for `mergelog verify` and
/// a hand to deal with. Carried ids name batches of retired segments, so a backup that holds
/// a segment (every one of a view that does, and the empty one of a view without segments
/// past batch 1) must end past every one; and one naming a batch the view holds (a crash
/// between a retirement's file and its removals leaves such entries) must be logged by that
/// batch. Every entry is judged, where an open judges those its horizon keeps: the restored
/// engine's horizon is not known here, and no writer makes a bad entry.
fn check_carried(view: &LogReader, carried: &[(RequestId, u64, u64)]) -> Result<()> {
    let path = view.dir().join(dir::IDS_FILE);
    let offset = ids::carried_entry_offset;
    let next = view.next_seq().get();
    if view.segment_count() == 0 && next <= 1 {
        // The engine opened on the backup goes on past the carried ids (`log::open`).
        return Ok(());
    }
    if let Some(i) = carried.iter().position(|&(_, seq, _)| seq >= next) {
        return Err(ids::corrupt_carried_at(
            &path,
            offset(i),
            &format!(
                "the entry at offset {} names batch {}, past the log's end (its last batch is \
                 {}): carried ids name batches of retired segments",
                offset(i),
                carried[i].1,
                next - 1
            ),
        ));
    }
    // The entries naming batches of the view, by batch: each must be among its batch's ids.
    let first = view.first_seq().get();
    let mut live: std::collections::BTreeMap<u64, Vec<(usize, RequestId)>> = Default::default();
    for (i, &(id, seq, _)) in carried.iter().enumerate() {
        if seq >= first {
            live.entry(seq).or_default().push((i, id));
        }
    }
    let (Some(&from), Some(&to)) = (live.keys().next(), live.keys().next_back()) else {
        return Ok(());
    };
    let mut unlogged: Option<usize> = None;
    for batch in view.held_from(from) {
        let seq = batch.seq().get();
        if seq > to {
            break;
        }
        if let Some(entries) = live.remove(&seq) {
            let logged: Vec<RequestId> = batch.ids().collect();
            for (i, id) in entries {
                if !logged.contains(&id) {
                    unlogged = Some(unlogged.map_or(i, |u| u.min(i)));
                }
            }
        }
    }
    // Batches the view does not yield (none, as every batch from `first` below `next` is in
    // it) log nothing.
    for (i, _) in live.into_values().flatten() {
        unlogged = Some(unlogged.map_or(i, |u| u.min(i)));
    }
    match unlogged {
        Some(i) => Err(ids::corrupt_carried_at(
            &path,
            offset(i),
            &format!(
                "the entry at offset {} names batch {}, which the log holds and which does not \
                 log it (carried ids name batches of retired segments)",
                offset(i),
                carried[i].1
            ),
        )),
        None => Ok(()),
    }
}

/// Writes the backup's files into `staging`.
fn fill(
    io: &dyn Io,
    view: &LogReader,
    side: &SideFiles,
    staging: &Path,
    earlier: Option<&Path>,
) -> Result<Backup> {
    let last = view.next_seq().get().saturating_sub(1);
    let mut bytes = 0u64;
    let mut linked = 0;
    let images = view.segment_images();
    // Cleared once a link could not be made (another file system, no hard links): every
    // later segment is copied without reading the earlier file first.
    let mut earlier = earlier;
    for (path, size, image) in &images {
        let name = path
            .file_name()
            .expect("a segment file's path ends in its name");
        if let Some(from) = earlier {
            let prev = from.join(name);
            if dir::backup_file_matches(io, &prev, image, *size)? {
                if dir::backup_link(io, &prev, &staging.join(name))? {
                    linked += 1;
                    continue;
                }
                earlier = None;
            }
        }
        dir::backup_file(
            io,
            &staging.join(name),
            image,
            *size,
            "write backup segment",
        )?;
        bytes += image.len() as u64;
    }
    let mut segments = images.len();
    let next = view.next_seq().get();
    if images.is_empty() && next > 1 {
        // A view without segments (a point-in-time one that ended before the first) of a log
        // that starts past batch 1: without a segment, the engine opened on the backup would
        // start a new log at batch 1, giving numbers again that the carried ids and the
        // consumers' positions name. An empty segment of the smallest size says where it
        // goes on (its first frame does not fit: the engine rolls to one of its own size).
        let header = SegmentHeader::new(next, SEGMENT_SIZE_MIN, false).encode();
        let to = staging.join(segment_file_name(next));
        dir::backup_file(io, &to, &header, SEGMENT_SIZE_MIN, "write backup segment")?;
        segments += 1;
        bytes += header.len() as u64;
    }
    let mut carried_ids = 0;
    if let Some(carried) = &side.carried {
        carried_ids = carried.len();
        let entries: Vec<(RequestId, IdEntry)> = carried
            .iter()
            .map(|&(id, seq, time)| (id, IdEntry { seq, time }))
            .collect();
        let encoded = ids::encode_carried(&entries);
        let to = staging.join(dir::IDS_FILE);
        dir::backup_file(io, &to, &encoded, 0, "write backup request ids")?;
    }
    for (consumer, committed) in &side.consumers {
        // A position past the view's end (a consumer that committed a batch the view does
        // not hold) would be pulled back by the open anyway: it is written pulled back.
        let position = crate::consumer::encode((*committed).min(last));
        let to = staging.join(crate::consumer::consumer_file_name(consumer));
        dir::backup_file(io, &to, &position, 0, "write backup consumer position")?;
    }
    Ok(Backup {
        dir: staging.to_owned(),
        first_seq: view.first_seq(),
        next_seq: view.next_seq(),
        segments,
        bytes,
        linked,
        consumers: side.consumers.len(),
        carried_ids,
    })
}
