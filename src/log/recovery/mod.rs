//! Opening a log: one scan, with the one frame decoder, serves the engine's open (which also
//! repairs a torn tail), `LogReader`, `verify` and `dump`.

use crate::config::RecoveryMode;
use crate::error::{Error, Result};
use crate::log::clean::CleanMark;
use crate::log::dir::list_segments;
use crate::log::format::{
    decode_frame, Decoded, Frame, SegmentHeader, FRAME_HEADER_LEN, FRAME_MAGIC, SEGMENT_HEADER_LEN,
    UNDURABLE_FRAMES_MAX,
};
use crate::log::io::SharedIo;
use crate::log::segment::Segment;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Mappings that frames were visited through but that a writable reopen replaced: the
    /// engine keeps them, since its index points into them.
    pub retired: Vec<Arc<Segment>>,
}

/// What a writer's open knows about how the log was written, beyond its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expect {
    /// The log was written with syncs (`Durability::Sync`): a writer never has more than
    /// [`UNDURABLE_FRAMES_MAX`] frames written and not yet durable, so a valid frame that far
    /// or further past damage proves the damaged frame was durable.
    pub synced: bool,
    /// The clean-close mark: every batch below its `next_seq` was durable.
    pub clean: Option<CleanMark>,
}

/// Looks past damage at `stop` (where batch `expected` should have been) for the frames a
/// writer wrote after it: a frame at an 8-aligned offset from `from` on that decodes, has a
/// batch sequence `t >= min_seq`, leaves room for the batches before it (`expected..t`, at
/// least a frame header each) between `stop` and itself, and begins a chain of consecutive
/// batches that runs to the end of the frames (zeros, or the end of the segment). Returns its
/// offset and the last batch of its chain.
///
/// The last two conditions keep a copy of log frames inside a damaged frame's value (an
/// application may store log bytes as values) from passing for evidence; such a copy could
/// only pass by also carrying plausible sequence numbers and ending where the log ends, and
/// then the open refuses, which changes nothing and names the way out (`PointInTime`).
pub(crate) fn later_frames(
    image: &[u8],
    stop: u64,
    from: u64,
    expected: u64,
    min_seq: u64,
) -> Option<(u64, u64)> {
    let mut off = (from as usize + 7) & !7;
    while off + FRAME_MAGIC.len() <= image.len() {
        if image[off..off + FRAME_MAGIC.len()] != FRAME_MAGIC {
            off += 8;
            continue;
        }
        let Ok(Decoded::Frame(f)) = decode_frame(image, off) else {
            off += 8;
            continue;
        };
        let room = (f.batch_seq.saturating_sub(expected)).saturating_mul(FRAME_HEADER_LEN as u64);
        if f.batch_seq < min_seq || room > off as u64 - stop {
            off += 8;
            continue;
        }
        // Walk the chain from here to its end.
        let (mut at, mut last) = (off + f.len, f.batch_seq);
        let chained = loop {
            match decode_frame(image, at) {
                Ok(Decoded::End) => break true,
                Ok(Decoded::Frame(g)) if g.batch_seq == last + 1 => {
                    last = g.batch_seq;
                    at += g.len;
                }
                _ => break false,
            }
        };
        if chained {
            return Some((off as u64, last));
        }
        off = at.max(off + 8);
    }
    None
}

/// Whether the frames of the last segment, which stop at `stop` (damage there if `damaged`,
/// else the end of its frames) with batch `next_seq` expected, lost durable history: a valid
/// frame at least [`UNDURABLE_FRAMES_MAX`] batches later follows (only for a log written with
/// syncs), or the clean-close mark says the log went on. Returns where the first later frame
/// is (`None` if only the mark says so) and the last batch that would be lost.
fn durable_loss(
    image: &[u8],
    stop: u64,
    damaged: bool,
    next_seq: u64,
    segment_id: u64,
    expect: &Expect,
) -> Option<(Option<u64>, u64)> {
    let later = if expect.synced {
        // Past a bad frame, from the next 8 bytes on (its own header may be valid).
        let from = if damaged { stop + 8 } else { stop };
        later_frames(image, stop, from, next_seq, next_seq + UNDURABLE_FRAMES_MAX)
    } else {
        None
    };
    let marked = expect
        .clean
        .filter(|m| m.next_seq > next_seq && m.segment_id >= segment_id)
        .map(|m| m.next_seq - 1);
    match (later, marked) {
        (None, None) => None,
        (Some((off, top)), m) => Some((Some(off), m.map_or(top, |m| m.max(top)))),
        (None, Some(m)) => Some((None, m)),
    }
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
}

/// The operation a reader's scan names when a segment it listed was removed before it got to
/// it (by `Engine::retire_before`).
const RETIRED_DURING_SCAN: &str = "open segment (removed during the scan)";

/// As [`scan`] for a reader, scanning again (up to 100 times) when retirement removed a
/// segment during the scan.
pub(crate) fn scan_retrying(dir: &Path, mode: RecoveryMode, io: &SharedIo) -> Result<Scanned> {
    let mut tries = 0;
    loop {
        match scan(
            dir,
            mode,
            Access::Reader,
            Expect::default(),
            io,
            |_, _, _| Ok(()),
        ) {
            Err(Error::Io { op, .. }) if op == RETIRED_DURING_SCAN && tries < 100 => tries += 1,
            r => return r,
        }
    }
}

/// Scans every segment of `dir` in order, calling `visit(segment index, segment, frame)` for
/// each valid frame in log order.
pub(crate) fn scan(
    dir: &Path,
    mode: RecoveryMode,
    access: Access,
    expect: Expect,
    io: &SharedIo,
    mut visit: impl FnMut(u32, &Arc<Segment>, &Frame<'_>) -> Result<()>,
) -> Result<Scanned> {
    let files = list_segments(dir)?;
    let mut out = Scanned {
        segments: Vec::with_capacity(files.len()),
        write_off: SEGMENT_HEADER_LEN as u64,
        next_seq: files.first().map_or(1, |f| f.0),
        damage: None,
        dropped: Vec::new(),
        retired: Vec::new(),
    };
    let count = files.len();
    // The writable tail a cut leaves, and where its zeroing starts (done last, see below).
    let mut zero_from: Option<(Arc<Segment>, u64)> = None;
    for (i, (id, path)) in files.iter().enumerate() {
        let last = i + 1 == count;
        // Batch sequences start at 1 and grow by one per batch: an id of 0, or one so large
        // that counting on from it could overflow, is not a name the engine ever gives.
        if *id == 0 || *id > SEQ_MAX {
            return Err(Error::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!(
                    "segment file name gives batch sequence {id}, outside 1..={SEQ_MAX}"
                ),
            });
        }
        // A reader races the engine's `retire_before`, which removes the oldest segments
        // (deletes them, or renames them into the pool to be reused): a listed file may be
        // gone, locked while the engine takes it for reuse, or, once the reader holds its
        // lock, no longer the file its name gives.
        let opened = Segment::open(path, *id, access == Access::Writer && last, io);
        let retired = match &opened {
            Err(Error::Io { source, .. }) => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::WouldBlock
            ),
            Ok(seg) => !seg.still_named(),
            Err(_) => false,
        };
        if access == Access::Reader && retired {
            if out.segments.is_empty() {
                // None read yet: the log now starts at the next one.
                if let Some(&(next, _)) = files.get(i + 1) {
                    out.next_seq = next;
                }
                continue;
            }
            // The segments before it are gone too: the caller scans again
            // (`scan_retrying`).
            return Err(Error::Io {
                op: RETIRED_DURING_SCAN,
                path: path.clone(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "retired during the scan",
                )),
            });
        }
        let seg = Arc::new(opened?);
        let image = seg.image();
        // The header: magic, version, CRC, and the id that the name and the order promise.
        let header_problem = match SegmentHeader::decode(image) {
            Err(e) => Some(e.to_string()),
            Ok(h) if h.segment_id != *id => Some(format!(
                "segment header names id {} but the file name says {id}",
                h.segment_id
            )),
            Ok(h) if h.segment_size != seg.size => Some(format!(
                "segment header says {} bytes but the file has {}",
                h.segment_size, seg.size
            )),
            Ok(_) if *id != out.next_seq => Some(format!(
                "segment starts at batch {id} but the previous segment ended before batch {}",
                out.next_seq
            )),
            Ok(_) => None,
        };
        let recycled = header_problem.is_none() && seg.recycled;
        // A recycled segment before the last holds exactly the batches up to the next one's
        // id, and after them old bytes (normally behind an end marker, but an mmap writer's
        // marker is not always synced). A fresh one ends at its zeros.
        let stop_at = files.get(i + 1).map(|f| f.0).filter(|_| recycled);
        let mut end = SEGMENT_HEADER_LEN as u64;
        let mut bad: Option<(u64, String)> = header_problem.map(|r| (0, r));
        if bad.is_none() {
            loop {
                if stop_at.is_some_and(|next| out.next_seq >= next) {
                    // Old bytes follow, but never the next batch: that would be a log that
                    // runs on into the next segment (files mixed up, not a crash).
                    if let Ok(Decoded::Frame(f)) = decode_frame(image, end as usize) {
                        if f.batch_seq == out.next_seq {
                            bad = Some((
                                end,
                                format!(
                                    "frame with batch sequence {} follows the segment's last batch, but the next segment starts with it",
                                    f.batch_seq
                                ),
                            ));
                        }
                    }
                    break;
                }
                match decode_frame(image, end as usize) {
                    Ok(Decoded::End) => break,
                    Ok(Decoded::Frame(f)) if f.batch_seq != out.next_seq => {
                        bad = Some((
                            end,
                            format!(
                                "frame has batch sequence {} where {} was expected (stale or misplaced bytes)",
                                f.batch_seq, out.next_seq
                            ),
                        ));
                        break;
                    }
                    Ok(Decoded::Frame(f)) => {
                        visit(i as u32, &seg, &f)?;
                        out.next_seq += 1;
                        end += f.len as u64;
                    }
                    Err(e) => {
                        bad = Some((end, e.to_string()));
                        break;
                    }
                }
            }
        }
        // Past the end marker of the tail segment there must be only the preallocated zeros;
        // anything else is the remains of a frame whose header never reached the disk. (A
        // reader skips this: the engine may be writing there right now.) In a recycled
        // segment the old bytes there cannot be told from such remains: the writer zeroes
        // them all instead (below), so that the frames it appends are followed by zeros, as
        // in a fresh segment.
        let decode_damage = bad.is_some();
        if bad.is_none() && last && access == Access::Writer && !recycled {
            let rest = &image[(end as usize).min(image.len())..];
            if let Some(nz) = rest.iter().position(|&b| b != 0) {
                bad = Some((
                    end,
                    format!(
                        "non-zero byte at offset {} after the last frame (a torn write)",
                        end + nz as u64
                    ),
                ));
            }
        }
        // A writer tells a torn tail from damage to durable history before it changes a
        // byte: frames written after the damaged one, or a clean-close mark past it, prove
        // that it was durable (docs/FORMAT.md, "Recovery").
        if last && access == Access::Writer && bad.as_ref().is_none_or(|b| b.0 > 0) {
            let stop = bad.as_ref().map_or(end, |b| b.0);
            let lost = durable_loss(image, stop, decode_damage, out.next_seq, *id, &expect);
            if let Some((first_later, last_lost)) = lost {
                let what = match &bad {
                    Some((_, reason)) => reason.clone(),
                    None => format!("the frames end at offset {end}"),
                };
                let later = match first_later {
                    Some(off) => {
                        format!("valid frames up to batch {last_lost} follow at offset {off}")
                    }
                    None => format!("the log was closed cleanly after batch {last_lost}"),
                };
                if mode != RecoveryMode::PointInTime {
                    return Err(Error::DamagedHistory {
                        path: path.clone(),
                        offset: stop,
                        reason: format!("{what}, but {later}"),
                        first_lost: out.next_seq,
                        last_lost,
                    });
                }
                // Point in time: the log ends here, and the open reports what it cut.
                bad.get_or_insert((stop, format!("{what}, but {later}")));
            }
        }
        if bad.is_none() && last && access == Access::Writer && recycled {
            seg.zero_tail(end)?;
        }
        let Some((offset, reason)) = bad else {
            seg.publish(end);
            out.write_off = end;
            out.segments.push(seg);
            continue;
        };
        let damage = Damage {
            path: path.clone(),
            offset,
            reason,
        };
        // A segment header is synced before the file gets its name, so a bad one is never
        // a crash artifact: only point-in-time recovery drops a segment for it.
        let cut = match mode {
            RecoveryMode::AbsoluteConsistency => false,
            RecoveryMode::TolerateCorruptedTail => last && offset > 0,
            RecoveryMode::PointInTime => true,
        };
        if !cut {
            return Err(Error::Corrupt {
                path: damage.path,
                offset: damage.offset,
                reason: damage.reason,
            });
        }
        out.damage = Some(damage);
        out.dropped = files[i + 1..].iter().map(|f| f.1.clone()).collect();
        if offset == 0 {
            // Nothing of this segment can be trusted: it goes with the ones after it, and the
            // segment before it (if any) becomes the writable tail.
            out.dropped.insert(0, path.clone());
            if access == Access::Writer {
                if let Some(prev) = out.segments.pop() {
                    let tail = Arc::new(Segment::open(&prev.path, prev.id, true, io)?);
                    // Whatever follows its last frame was never checked: it is zeroed
                    // once the later segments are gone (below).
                    zero_from = Some((tail.clone(), out.write_off));
                    tail.publish(out.write_off);
                    out.segments.push(tail);
                    out.retired.push(prev);
                }
            }
            break;
        }
        let seg = if access == Access::Writer {
            // The cut segment becomes the writable tail.
            let seg = if last {
                seg.clone()
            } else {
                out.retired.push(seg.clone());
                Arc::new(Segment::open(path, *id, true, io)?)
            };
            zero_from = Some((seg.clone(), offset));
            seg
        } else {
            seg.clone()
        };
        seg.publish(end);
        out.write_off = end;
        out.segments.push(seg);
        break;
    }
    if access == Access::Writer {
        // A cut leaves later segments behind: they go first, newest first, each removal
        // made durable before the next, so that a crash at any step leaves the log a
        // prefix of itself with the damage still in place. Only then is the cut segment's
        // tail zeroed: it is the evidence of what was cut until nothing else remains.
        for p in out.dropped.iter().rev() {
            crate::log::io::remove(&**io, p)
                .map_err(|e| Error::io("remove dropped segment", p, e))?;
            crate::log::segment::sync_dir(&**io, dir)?;
        }
        if let Some((seg, off)) = zero_from {
            seg.zero_tail(off)?;
        }
    }
    Ok(out)
}
