//! Opening a log: one scan, with the one frame decoder, serves the engine's open (which also
//! repairs a torn tail), `LogReader`, `verify` and `dump`.
//!
//! [`scan`] drives three parts, segment by segment: `verify` checks a segment image (pure:
//! the valid frames, where they end and what stopped them), `policy` decides what the
//! recovery mode makes of that (pure: keep, cut here, or refuse), and `repair` does what only
//! a writer does to the files (reopen the tail writable, remove later segments, zero a tail).

mod policy;
mod repair;
mod verify;

use crate::config::RecoveryMode;
use crate::error::{Error, Result};
use crate::log::clean::CleanMark;
use crate::log::dir::list_segments;
use crate::log::format::{Frame, REWRITE_RUN_MAX, SEGMENT_HEADER_LEN};
use crate::log::io::SharedIo;
use crate::log::segment::Segment;
use policy::{Decision, Place, Refusal, Situation};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use verify::{Loss, Verdict};

/// Damage the scan found and dealt with (cut off, or stopped at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the first bad byte (the start of the bad frame or header).
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// What a scan found.
pub(crate) struct Scanned {
    pub segments: Vec<Arc<Segment>>,
    /// End of the last valid frame in the last segment.
    pub write_off: u64,
    /// Sequence number the next frame would get.
    pub next_seq: u64,
    /// Damage cut off (engine) or stopped at (reader); `None` for a clean log.
    pub damage: Option<Damage>,
    /// Segment files after a point-in-time stop, to be removed by a writer.
    pub dropped: Vec<PathBuf>,
    /// Segment files a rewritten segment replaced, which a crash left behind it (ids inside
    /// its batches): skipped, and removed by a writer (`dir::remove_rewrite_leftovers`).
    /// Not damage: nothing in them is missing from the rewritten segment but dead records.
    pub leftovers: Vec<PathBuf>,
    /// Mappings that frames were visited through but that a writable reopen replaced: the
    /// engine keeps them, since its index points into them.
    pub retired: Vec<Arc<Segment>>,
}

/// What a writer's open knows about how the log was written, beyond its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expect {
    /// The log was written with syncs (`Durability::Sync`): a writer never has more than
    /// [`UNDURABLE_FRAMES_MAX`](crate::log::format::UNDURABLE_FRAMES_MAX) frames written and
    /// not yet durable, so a valid frame that far or further past damage proves the damaged
    /// frame was durable.
    pub synced: bool,
    /// The clean-close mark: every batch below its `next_seq` was durable.
    pub clean: Option<CleanMark>,
    /// The `ids` file's entry naming the largest batch: carried ids name batches of retired
    /// segments, so a log that holds segments must end past it.
    pub carried_last: Option<crate::ids::CarriedAt>,
}

/// The largest batch sequence a log may use (2^62: centuries of batches at any rate), so that
/// counting on never overflows.
pub(crate) const SEQ_MAX: u64 = 1 << 62;

/// How a scan treats the bytes it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The engine: repairs the tail (zero and sync) as the mode allows.
    Writer,
    /// A reader or a tool: changes nothing; damage in the last segment ends the scan (it may
    /// be a frame another process is writing right now), damage elsewhere follows the mode.
    Reader,
    /// A check of a log no engine is writing (`LogReader::check`): judges every byte as the
    /// engine's open would (zeros after the last frame, evidence of durable history past
    /// damage) and changes nothing.
    Checker,
}

/// Why one pass of a scan failed.
enum ScanError {
    /// A reader's scan found a segment it listed removed (by `Engine::retire_before`) after
    /// it had read earlier ones, which are gone too, or its name giving another file than
    /// the one it opened (retired and reused, or replaced by a rewrite): scanning again sees
    /// the log as it now is (`scan_retrying`).
    SegmentVanished { path: PathBuf },
    /// Anything else.
    Failed(Error),
}

impl From<Error> for ScanError {
    fn from(e: Error) -> ScanError {
        ScanError::Failed(e)
    }
}

/// The operation a reader's scan names when a segment it listed was removed before it got to
/// it, and scanning again did not help.
const RETIRED_DURING_SCAN: &str = "open segment (removed during the scan)";

impl From<ScanError> for Error {
    fn from(e: ScanError) -> Error {
        match e {
            ScanError::Failed(e) => e,
            ScanError::SegmentVanished { path } => Error::Io {
                op: RETIRED_DURING_SCAN,
                path,
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "retired during the scan",
                )),
            },
        }
    }
}

/// As [`scan`] for a reader, scanning again (up to 100 times) when retirement removed a
/// segment during the scan.
pub(crate) fn scan_retrying(dir: &Path, mode: RecoveryMode, io: &SharedIo) -> Result<Scanned> {
    let mut tries = 0;
    loop {
        let visit = |_: u32, _: &Arc<Segment>, _: &Frame<'_>| Ok(());
        match scan_once(dir, mode, Access::Reader, Expect::default(), io, visit) {
            Err(ScanError::SegmentVanished { .. }) if tries < 100 => tries += 1,
            r => return r.map_err(Error::from),
        }
    }
}

/// What the engine's open would find in the log in `dir`, written with `synced` durability,
/// under `mode`, changing nothing: `None` for a clean log, the damage it would cut off, or
/// the error it would return (`Error::DamagedHistory`, `Error::Corrupt`, a corrupt clean-close
/// mark or `ids` file). For a log no engine is writing: a live engine's tail is in flux.
pub(crate) fn check(dir: &Path, mode: RecoveryMode, synced: bool) -> Result<Option<Damage>> {
    let clean = super::clean::read(dir)?.mark();
    let mut carried = crate::ids::carried(dir, crate::ids::IdHorizon::default())?;
    let expect = Expect {
        synced,
        clean,
        carried_last: carried.carried_last,
    };
    // The carried ids naming batches of the live log must be the ones those batches log.
    let visit = |_: u32, _: &Arc<Segment>, f: &Frame<'_>| carried.frame(dir, f);
    let scanned = scan_once(
        dir,
        mode,
        Access::Checker,
        expect,
        &crate::log::io::real(),
        visit,
    )?;
    Ok(scanned.damage)
}

/// Scans every segment of `dir` in order, calling `visit(segment index, segment, frame)` for
/// each valid frame in log order.
pub(crate) fn scan(
    dir: &Path,
    mode: RecoveryMode,
    access: Access,
    expect: Expect,
    io: &SharedIo,
    visit: impl FnMut(u32, &Arc<Segment>, &Frame<'_>) -> Result<()>,
) -> Result<Scanned> {
    Ok(scan_once(dir, mode, access, expect, io, visit)?)
}

/// One pass of [`scan`]: each segment checked (`verify`), judged (`policy`), and kept or cut;
/// a writer's cut made durable last (`repair`).
fn scan_once(
    dir: &Path,
    mode: RecoveryMode,
    access: Access,
    expect: Expect,
    io: &SharedIo,
    mut visit: impl FnMut(u32, &Arc<Segment>, &Frame<'_>) -> Result<()>,
) -> std::result::Result<Scanned, ScanError> {
    let files = list_segments(dir)?;
    let mut pass = Pass::new(&files, access, io);
    let mut zero_from = None;
    if files.is_empty() && access != Access::Reader {
        if let Some(lost) = no_segments_left(dir, mode, &expect)? {
            // `PointInTime` accepts the loss; the log goes on from the mark's next batch,
            // so no sequence number is given twice (consumers' positions and carried ids
            // name the lost ones).
            pass.out.next_seq = expect.clean.map_or(1, |m| m.next_seq);
            pass.out.damage = Some(lost);
        }
    }
    // Leftovers of a rewrite (`Pass::is_leftover`) listed since the last kept segment.
    let mut leftovers_in_run = 0;
    for (i, (id, path)) in files.iter().enumerate() {
        let last = i + 1 == files.len();
        check_listed_id(*id, path)?;
        if pass.is_leftover(*id) {
            leftovers_in_run += 1;
            if leftovers_in_run >= REWRITE_RUN_MAX {
                // A rewrite replaces at most `REWRITE_RUN_MAX` segments, itself included: a
                // directory follower looks no further back than that for the rewritten one.
                return Err(ScanError::Failed(Error::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "one of more than {} files inside the batches of the rewritten segment \
                         before them: a rewrite replaces at most {REWRITE_RUN_MAX} segments",
                        REWRITE_RUN_MAX - 1
                    ),
                }));
            }
            pass.out.leftovers.push(path.clone());
            continue;
        }
        leftovers_in_run = 0;
        let seg = match pass.open_listed(i) {
            Ok(Some(seg)) => seg,
            Ok(None) => continue,
            // Shorter than a header (cut short by hand or by a copy; the engine makes every
            // segment at its full size): damage at its header, which the mode decides on as
            // on any other header's (`PointInTime` ends the log before it).
            Err(ScanError::Failed(e @ Error::Corrupt { .. })) if too_short(path) => {
                let situation = policy::Situation {
                    last,
                    damage: Some(policy::Place::Header),
                    durable: false,
                };
                let Error::Corrupt { reason, .. } = &e else {
                    unreachable!("matched above")
                };
                match policy::decide(mode, &situation) {
                    Decision::Cut => {
                        let damage = Damage {
                            path: path.clone(),
                            offset: 0,
                            reason: reason.clone(),
                        };
                        zero_from = pass.cut_before(i, damage)?;
                        break;
                    }
                    _ => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        };
        let expected = verify::Expected {
            name_id: *id,
            first_seq: pass.out.next_seq,
            next_id: files.get(i + 1).map(|f| f.0),
            zeros_after: policy::checks_zeros_after(access, last),
        };
        // The index numbers a segment by its place among the kept ones (the engine's list),
        // not among the listed files: leftovers are listed and not kept.
        let number = pass.out.segments.len();
        let found = check_segment(&seg, number, &expected, access, &expect, &mut visit)?;
        pass.out.next_seq = found.verdict.next_seq;
        match (
            policy::decide(mode, &found.situation(last)),
            found.damage(path),
        ) {
            (Decision::Refuse(why), Some(damage)) => return Err(found.refusal(why, damage).into()),
            (Decision::Cut, Some(damage)) => {
                zero_from = pass.cut(i, seg, found.verdict.end, damage)?;
                break;
            }
            // Nothing wrong: the policy keeps exactly the segments without damage.
            (decision, damage) => {
                debug_assert!(decision == Decision::Keep && damage.is_none());
                pass.keep(seg, &found.verdict, last)?;
            }
        }
    }
    if access != Access::Reader && !pass.out.segments.is_empty() {
        // Before anything is changed: carried ids name batches of retired segments, below
        // the log's end (a log without segments goes on past them instead: `log::open`).
        check_carried_below(dir, expect.carried_last, pass.out.next_seq)?;
    }
    if access == Access::Writer {
        if zero_from.is_none() {
            pass.writable_tail()?;
        }
        repair::finish(dir, &pass.out.dropped, &pass.out.leftovers, zero_from, io)?;
    }
    Ok(pass.out)
}

/// Whether the `ids` file's entry naming the largest batch, `last`, names one below
/// `next_seq`, the log's end: else the file is damage (`Error::Corrupt` naming it and the
/// entry's offset). Carried ids are written only for batches of retired segments, which lie
/// below the live ones (a crash between a retirement's `ids` file and its removals leaves
/// some naming live batches, which those batches log: `ids::Found::frame` checks that). One
/// naming a batch the log does not hold, kept, would answer a retry of its id "duplicate of
/// batch n" while batch n is missing, or later logs something else.
fn check_carried_below(
    dir: &Path,
    last: Option<crate::ids::CarriedAt>,
    next_seq: u64,
) -> Result<()> {
    match last {
        Some(at) if at.seq >= next_seq => Err(crate::ids::corrupt_carried_at(
            &dir.join(crate::log::dir::IDS_FILE),
            at.offset,
            &format!(
                "the entry at offset {} names batch {}, past the log's end (its last batch is \
                 {}): carried ids name batches of retired segments",
                at.offset,
                at.seq,
                next_seq - 1
            ),
        )),
        _ => Ok(()),
    }
}

/// A directory with no segment file whose clean-close mark says batches were durable lost
/// them (removed by hand, a restore that left them out): not a new log. Refused as
/// `Error::DamagedHistory` naming the mark, except under `PointInTime`, which accepts the
/// loss (the damage returned, to report).
fn no_segments_left(dir: &Path, mode: RecoveryMode, expect: &Expect) -> Result<Option<Damage>> {
    let Some(mark) = expect.clean.filter(|m| m.next_seq > 1) else {
        return Ok(None);
    };
    let last_lost = mark.next_seq - 1;
    let damage = Damage {
        path: dir.join(crate::log::clean::CLEAN_FILE),
        offset: 0,
        reason: format!(
            "the directory holds no segment file, but the log was closed cleanly after \
             batch {last_lost}"
        ),
    };
    if mode == RecoveryMode::PointInTime {
        return Ok(Some(damage));
    }
    Err(Error::DamagedHistory {
        path: damage.path,
        offset: 0,
        reason: damage.reason,
        first_lost: 1,
        last_lost,
    })
}

/// The batch after the last frame of segment `id`'s chain in `image` (the whole file) that a
/// scan finds valid, its first frame being batch `id`'s: where a rewritten segment's batches
/// end, for a directory follower (`reader::rewrite_over`).
pub(crate) fn chain_end(image: &[u8], id: u64) -> u64 {
    let expected = verify::Expected {
        name_id: id,
        first_seq: id,
        next_id: None,
        zeros_after: false,
    };
    verify::verify(image, &expected).verdict().next_seq
}

/// What is wrong with the header of the segment file whose image is `image` and whose name
/// gives batch `id`, judged as the scan judges a file named after the batch it must start
/// with (any version this build reads, the id its name gives, the file's size), without
/// looking at its frames: `None` if nothing is; else the reason, and whether it is what a
/// roll that a power loss tore leaves (all zeros, the file's earlier header, or a mix of
/// either with the new one: `verify::HeaderProblem::unactivated`), which a writer drops
/// when it is the last segment and a reader stops before.
pub(crate) fn header_problem(image: &[u8], id: u64) -> Option<(String, bool)> {
    let expected = verify::Expected {
        name_id: id,
        first_seq: id,
        next_id: None,
        zeros_after: false,
    };
    verify::verify(image, &expected)
        .header_problem()
        .map(|p| (p.to_string(), p.unactivated()))
}

/// Batch sequences start at 1 and grow by one per batch: an id of 0, or one so large that
/// counting on from it could overflow, is not a name the engine ever gives.
pub(crate) fn check_listed_id(id: u64, path: &Path) -> Result<()> {
    if id == 0 || id > SEQ_MAX {
        // The name's own number: one past `u64::MAX` is listed as that (`list_segments`).
        let digits = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::log::format::segment_file_digits)
            .map(|d| match d.trim_start_matches('0') {
                "" => "0".to_owned(),
                n => n.to_owned(),
            });
        let number = digits.unwrap_or_else(|| id.to_string());
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: format!(
                "segment file name gives batch sequence {number}, outside 1..={SEQ_MAX}"
            ),
        });
    }
    Ok(())
}

/// Whether `path` is a regular file shorter than a segment header (so it could not be mapped
/// as a segment). Not a FIFO or a device under a segment's name: those are no segment's
/// damage, and every mode refuses them.
fn too_short(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.len() < SEGMENT_HEADER_LEN as u64)
}

/// What the scan found in one segment.
struct Found {
    verdict: Verdict,
    /// Evidence that durable history follows where the frames stop (a writer's last segment).
    loss: Option<Loss>,
}

/// Checks segment `seg`, the `number`th kept (the number the index gives it), visiting each
/// valid frame, and for a writer's last segment looks for evidence of durable history past
/// where its frames stop.
fn check_segment(
    seg: &Arc<Segment>,
    number: usize,
    expected: &verify::Expected,
    access: Access,
    expect: &Expect,
    visit: &mut impl FnMut(u32, &Arc<Segment>, &Frame<'_>) -> Result<()>,
) -> Result<Found> {
    let image = seg.image();
    let mut frames = verify::verify(image, expected);
    for f in &mut frames {
        visit(number as u32, seg, &f)?;
    }
    let verdict = frames.verdict();
    let last = expected.next_id.is_none();
    let bad = verdict.damage();
    let place = place_of(&verdict);
    // A writer tells a torn tail from damage to durable history before it changes a byte:
    // frames written after the damaged one, or a clean-close mark past it, prove that it was
    // durable (docs/FORMAT.md, "Recovery").
    let loss = if policy::seeks_evidence(access, last, place) {
        // Past a header never written, the frames would start right after it.
        let (stop, damaged) = match place {
            Some(Place::Unactivated) => (SEGMENT_HEADER_LEN as u64, false),
            _ => (
                bad.map_or(verdict.end, |b| b.0),
                verdict.stop.decode_damage(),
            ),
        };
        verify::durable_loss(
            image,
            stop,
            damaged,
            verdict.next_seq,
            expected.name_id,
            expect,
        )
    } else {
        None
    };
    Ok(Found { verdict, loss })
}

/// Where the segment's damage is, if it has any: offset 0 is the segment header (one that
/// was never written, or a bad one).
fn place_of(verdict: &Verdict) -> Option<Place> {
    let (offset, _) = verdict.damage()?;
    Some(match offset {
        0 if verdict.unactivated() => Place::Unactivated,
        0 => Place::Header,
        _ if matches!(&verdict.stop, verify::Stop::Frame(e) if e.kind.past_crc()) => {
            Place::Malformed
        }
        _ => Place::Frames,
    })
}

impl Found {
    fn situation(&self, last: bool) -> Situation {
        Situation {
            last,
            damage: place_of(&self.verdict),
            durable: self.loss.is_some(),
        }
    }

    /// What a cut or a refusal reports: the damage found, or else, when evidence shows durable
    /// history past it, the end of the frames.
    fn damage(&self, path: &Path) -> Option<Damage> {
        let (offset, reason) = self.verdict.damage().or_else(|| {
            let loss = self.loss?;
            let end = self.verdict.end;
            Some((end, loss.reason(&format!("the frames end at offset {end}"))))
        })?;
        Some(Damage {
            path: path.to_owned(),
            offset,
            reason,
        })
    }

    fn refusal(&self, why: Refusal, damage: Damage) -> Error {
        let what = || match self.verdict.damage() {
            Some((_, reason)) => reason,
            None => format!("the frames end at offset {}", self.verdict.end),
        };
        match (why, self.loss) {
            // Nothing is known past where the search gave up: not a loss it can name.
            (Refusal::DamagedHistory, Some(loss)) if loss.gave_up.is_some() => Error::Corrupt {
                path: damage.path,
                offset: damage.offset,
                reason: loss.reason(&what()),
            },
            (Refusal::DamagedHistory, Some(loss)) => {
                let what = what();
                Error::DamagedHistory {
                    path: damage.path,
                    offset: damage.offset,
                    reason: loss.reason(&what),
                    first_lost: self.verdict.next_seq,
                    last_lost: loss.last_lost,
                }
            }
            _ => Error::Corrupt {
                path: damage.path,
                offset: damage.offset,
                reason: damage.reason,
            },
        }
    }
}

/// One pass over the listed segments, and what it found so far.
struct Pass<'a> {
    files: &'a [(u64, PathBuf)],
    access: Access,
    io: &'a SharedIo,
    out: Scanned,
}

impl<'a> Pass<'a> {
    fn new(files: &'a [(u64, PathBuf)], access: Access, io: &'a SharedIo) -> Pass<'a> {
        let out = Scanned {
            segments: Vec::with_capacity(files.len()),
            write_off: SEGMENT_HEADER_LEN as u64,
            next_seq: files.first().map_or(1, |f| f.0),
            damage: None,
            dropped: Vec::new(),
            leftovers: Vec::new(),
            retired: Vec::new(),
        };
        Pass {
            files,
            access,
            io,
            out,
        }
    }

    /// Whether the listed file `id` is a leftover of a rewrite: the segment kept before it is
    /// rewritten, and `id` lies inside its batches (after its first, before the next one
    /// expected). Any other file out of sequence stays an error (`verify`).
    fn is_leftover(&self, id: u64) -> bool {
        self.out
            .segments
            .last()
            .is_some_and(|prev| prev.rewritten && prev.id < id && id < self.out.next_seq)
    }

    /// A writer whose kept segments end before the last listed file (only leftovers
    /// followed) has its last segment mapped read-only: it becomes the writable tail, its
    /// read-only mapping kept in `retired` (frames were visited through it). Being
    /// rewritten, it takes no frame; the log rolls to a new segment.
    fn writable_tail(&mut self) -> Result<()> {
        let listed_last = self.files.last().map(|f| &f.1);
        let Some(tail) = self.out.segments.last() else {
            return Ok(());
        };
        if Some(&tail.path) == listed_last {
            return Ok(());
        }
        let tail = self.out.segments.pop().expect("a last segment");
        let end = self.out.write_off;
        let tail = repair::writable(tail, false, &mut self.out, self.io)?;
        tail.publish(end);
        self.out.segments.push(tail);
        Ok(())
    }

    /// Opens listed segment `i` (writable if it is the tail a writer opens); `None` if a
    /// reader skips it.
    ///
    /// A reader races the engine's `retire_before`, which removes the oldest segments
    /// (deletes them, or renames them into the pool to be reused): a listed file may be
    /// gone, locked while the engine takes it for reuse, or, once the reader holds its
    /// lock, no longer the file its name gives. It races a rewrite too, which renames a
    /// new file over a segment's name: then too the name no longer gives the file opened,
    /// but the segment is not retired.
    fn open_listed(&mut self, i: usize) -> std::result::Result<Option<Arc<Segment>>, ScanError> {
        let (id, path) = &self.files[i];
        let writable = self.access == Access::Writer && i + 1 == self.files.len();
        let opened = Segment::open(path, *id, writable, self.io);
        let (retired, renamed) = match &opened {
            Err(Error::Io { source, .. }) => (
                matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::WouldBlock
                ),
                false,
            ),
            Ok(seg) => (false, !seg.still_named()),
            Err(_) => (false, false),
        };
        // Only a reader's: a check (`LogReader::check`) is of a log no engine is writing,
        // so a listed file that does not open is what the engine's open would fail on too,
        // not a retirement. A name on a symbolic link to nothing is not a file gone
        // (`Error::Corrupt` from the open, for every scan): a reader that took it for one
        // retired read the log from the next segment on when it was the first.
        if self.access == Access::Reader && (retired || renamed) {
            if self.out.segments.is_empty() && retired {
                // None read yet: the log now starts at the next one.
                if let Some(&(next, _)) = self.files.get(i + 1) {
                    self.out.next_seq = next;
                }
                return Ok(None);
            }
            // The segments before it are gone too; or the name no longer gives the file
            // opened, which was retired, or replaced by a rewrite (then the segment is
            // still there, and the log still starts at it): only opening the name again
            // tells which. The caller scans again (`scan_retrying`).
            return Err(ScanError::SegmentVanished { path: path.clone() });
        }
        Ok(Some(Arc::new(opened?)))
    }

    /// Keeps a whole segment; a writer's recycled last segment gets its tail zeroed first.
    fn keep(&mut self, seg: Arc<Segment>, verdict: &Verdict, last: bool) -> Result<()> {
        if self.access == Access::Writer && last && verdict.recycled {
            repair::zero_recycled_tail(&seg, verdict.end)?;
        }
        seg.publish(verdict.end);
        self.out.write_off = verdict.end;
        self.out.segments.push(seg);
        Ok(())
    }

    /// Ends the log before segment `i`, whose header is damaged (`damage`, at offset 0): it
    /// and the later segments are dropped, and for a writer the segment before it becomes the
    /// writable tail.
    fn cut_before(&mut self, i: usize, damage: Damage) -> Result<Option<repair::ZeroFrom>> {
        debug_assert_eq!(damage.offset, 0);
        let out = &mut self.out;
        out.damage = Some(damage);
        out.dropped = self.files[i..].iter().map(|f| f.1.clone()).collect();
        match self.access {
            Access::Writer => repair::reopen_previous(out, self.io),
            Access::Reader | Access::Checker => Ok(None),
        }
    }

    /// Ends the log at `damage` in segment `i` (whose valid frames end at `end`): the later
    /// segments are dropped, and for a writer the segment the log now ends in becomes the
    /// writable tail. Returns that tail and where its zeroing starts.
    fn cut(
        &mut self,
        i: usize,
        seg: Arc<Segment>,
        end: u64,
        damage: Damage,
    ) -> Result<Option<repair::ZeroFrom>> {
        let offset = damage.offset;
        if offset == 0 {
            // Nothing of this segment can be trusted: it goes with the ones after it, and
            // the segment before it (if any) becomes the writable tail.
            drop(seg);
            return self.cut_before(i, damage);
        }
        let out = &mut self.out;
        out.damage = Some(damage);
        out.dropped = self.files[i + 1..].iter().map(|f| f.1.clone()).collect();
        let (seg, zero_from) = match self.access {
            Access::Writer => {
                let last = i + 1 == self.files.len();
                let tail = repair::writable(seg, last, out, self.io)?;
                (tail.clone(), Some((tail, offset)))
            }
            Access::Reader | Access::Checker => (seg, None),
        };
        seg.publish(end);
        out.write_off = end;
        out.segments.push(seg);
        Ok(zero_from)
    }
}
