//! Checking one segment image: which frames are valid, where they end, and what stopped them.
//!
//! Pure: a function of the bytes and of what the scan expects of them (the id the file name
//! gives, the batch the segment must start with, the next segment's id, whether only zeros
//! may follow the frames). No files, no recovery mode, no I/O: what the damage means is
//! `policy`'s question, what to do about it `repair`'s.

use super::Expect;
use crate::log::format::{
    decode_frame, peek_frame, segment_size_valid, Decoded, FormatError, Frame, SegmentHeader,
    FORMAT_VERSION_MAX, FRAME_HEADER_LEN, FRAME_MAGIC, SEGMENT_HEADER_LEN, SEGMENT_RECYCLED,
    SEGMENT_REWRITTEN, UNDURABLE_FRAMES_MAX,
};
use std::fmt;

/// What the scan expects of a segment before it looks at its bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expected {
    /// The segment id its file name gives.
    pub name_id: u64,
    /// The batch sequence its first frame must have: the first segment's own id, else where
    /// the previous segment ended.
    pub first_seq: u64,
    /// The next segment's id, if one follows.
    pub next_id: Option<u64>,
    /// Whether only zeros may follow the last frame: the tail that a writer opens (a reader's
    /// tail may be being written right now).
    pub zeros_after: bool,
}

/// What is wrong with a segment header (damage at offset 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// It does not decode.
    Format(FormatError),
    /// It names another id than the file name.
    Id { header: u64, name: u64 },
    /// It gives another size than the file's.
    Size { header: u64, file: u64 },
    /// The segment does not start where the previous one ended.
    Sequence { id: u64, expected: u64 },
    /// Its header was never written over the file's: all zeros (a prepared file) or the
    /// header of its earlier life (`earlier`, an id below the name's: a recycled file). A
    /// roll renames the file before its header is durable and leaves both syncs to the
    /// first sync in the segment, so after a power loss the last segment may be this, with
    /// nothing acknowledged in it (`Segment::activate`).
    Unactivated { earlier: Option<u64> },
    /// It does not decode, but every byte is either that of the header the roll would have
    /// written or what the file held there before (zeros, or its earlier header in the fields
    /// that may differ): the header's write, torn by a power loss (`torn_activation`). As
    /// `Unactivated`, nothing in the segment was acknowledged.
    TornActivation,
}

impl HeaderProblem {
    /// Whether this is what a roll that a power loss tore leaves.
    pub fn unactivated(&self) -> bool {
        matches!(
            self,
            HeaderProblem::Unactivated { .. } | HeaderProblem::TornActivation
        )
    }
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::Format(e) => fmt::Display::fmt(e, f),
            HeaderProblem::Id { header, name } => write!(
                f,
                "segment header names id {header} but the file name says {name}"
            ),
            HeaderProblem::Size { header, file } => write!(
                f,
                "segment header says {header} bytes but the file has {file}"
            ),
            HeaderProblem::Sequence { id, expected } => write!(
                f,
                "segment starts at batch {id} but the previous segment ended before batch {expected}"
            ),
            HeaderProblem::Unactivated { earlier: None } => write!(
                f,
                "segment header never written (all zeros), as a roll that a power loss tore leaves it"
            ),
            HeaderProblem::Unactivated { earlier: Some(id) } => write!(
                f,
                "segment header still the file's earlier one (id {id}), as a roll that a power loss tore leaves it"
            ),
            HeaderProblem::TornActivation => write!(
                f,
                "segment header partly written (each byte the new header's or the file's earlier one), as a roll that a power loss tore leaves it"
            ),
        }
    }
}

/// What stopped the frames of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The written frames end: an all-zero frame header (a fresh segment's zeros, a recycled
    /// one's end marker) or no room for one.
    End,
    /// A recycled segment before the last: its batches reached the next segment's id, and
    /// what follows is old bytes.
    Counted,
    /// The segment header is bad: nothing of the segment is valid.
    Header(HeaderProblem),
    /// The frame at the end of the valid ones does not decode (torn, or corrupt).
    Frame(FormatError),
    /// The frame there decodes, with another batch sequence than the expected one (stale or
    /// misplaced bytes).
    Sequence { found: u64, expected: u64 },
    /// A recycled segment before the last: a frame with the next segment's first batch
    /// follows its last batch (a log that runs on into the next segment: files mixed up, not
    /// a crash).
    RunsOn { seq: u64 },
    /// Non-zero bytes after the last frame, at `at`: the remains of a frame whose header
    /// never reached the disk.
    Torn { at: u64 },
}

impl Stop {
    /// Whether the decoder found this damage (a bad header, or a bad frame whose own header
    /// may still be valid), as opposed to a clean end or bytes after it.
    pub fn decode_damage(&self) -> bool {
        matches!(
            self,
            Stop::Header(_) | Stop::Frame(_) | Stop::Sequence { .. } | Stop::RunsOn { .. }
        )
    }
}

/// What [`Verifier`] found, once it has gone through the segment's frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// End of the last valid frame (the end of the header if there is none).
    pub end: u64,
    /// The batch sequence the next frame would have.
    pub next_seq: u64,
    /// Valid frames.
    pub frames: u64,
    /// The header is valid and marks a recycled segment.
    pub recycled: bool,
    pub stop: Stop,
}

impl Verdict {
    /// Whether the header is what a torn roll leaves ([`HeaderProblem::Unactivated`]).
    pub fn unactivated(&self) -> bool {
        matches!(&self.stop, Stop::Header(p) if p.unactivated())
    }

    /// Where the damage is and what was wrong, if the segment has any: the header's at 0,
    /// anything else at [`Verdict::end`].
    pub fn damage(&self) -> Option<(u64, String)> {
        let reason = match &self.stop {
            Stop::End | Stop::Counted => return None,
            Stop::Header(p) => return Some((0, p.to_string())),
            Stop::Frame(e) => e.to_string(),
            Stop::Sequence { found, expected } => format!(
                "frame has batch sequence {found} where {expected} was expected (stale or misplaced bytes)"
            ),
            Stop::RunsOn { seq } => format!(
                "frame with batch sequence {seq} follows the segment's last batch, but the next segment starts with it"
            ),
            Stop::Torn { at } => {
                format!("non-zero byte at offset {at} after the last frame (a torn write)")
            }
        };
        Some((self.end, reason))
    }
}

/// Checks a segment image frame by frame: an iterator over its valid frames in log order,
/// then [`Verifier::verdict`]. Lazily, so that the scan visits each frame as it is checked,
/// without holding every frame of a segment.
pub(crate) struct Verifier<'a> {
    image: &'a [u8],
    expected: Expected,
    verdict: Verdict,
    /// Frames may follow (the verdict's `stop` is not final yet).
    open: bool,
}

/// Starts checking the segment `image` (the whole file) against `expected`: the header (magic,
/// version, CRC, and the id that the name and the order promise) right away, the frames as
/// the returned iterator goes.
pub(crate) fn verify<'a>(image: &'a [u8], expected: &Expected) -> Verifier<'a> {
    let never_written =
        image.len() >= SEGMENT_HEADER_LEN && image[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0);
    // A roll names its file after the batch it starts with: only such a file can be one whose
    // activation a crash cut short.
    let named_next = expected.name_id == expected.first_seq;
    let out_of_sequence = HeaderProblem::Sequence {
        id: expected.name_id,
        expected: expected.first_seq,
    };
    let problem = match SegmentHeader::decode(image) {
        Err(_) if never_written && !named_next => Err(out_of_sequence),
        Err(_) if never_written => Err(HeaderProblem::Unactivated { earlier: None }),
        Err(_) if named_next && torn_activation(image, expected.name_id) => {
            Err(HeaderProblem::TornActivation)
        }
        Err(e) => Err(HeaderProblem::Format(e)),
        Ok(h) if h.segment_id < expected.name_id && !named_next => Err(out_of_sequence),
        Ok(h) if h.segment_id < expected.name_id => Err(HeaderProblem::Unactivated {
            earlier: Some(h.segment_id),
        }),
        Ok(h) if h.segment_id != expected.name_id => Err(HeaderProblem::Id {
            header: h.segment_id,
            name: expected.name_id,
        }),
        Ok(h) if h.segment_size != image.len() as u64 => Err(HeaderProblem::Size {
            header: h.segment_size,
            file: image.len() as u64,
        }),
        Ok(_) if expected.name_id != expected.first_seq => Err(HeaderProblem::Sequence {
            id: expected.name_id,
            expected: expected.first_seq,
        }),
        Ok(h) => Ok(h.recycled),
    };
    let mut verdict = Verdict {
        end: SEGMENT_HEADER_LEN as u64,
        next_seq: expected.first_seq,
        frames: 0,
        recycled: problem == Ok(true),
        stop: Stop::End,
    };
    if let Err(p) = problem {
        verdict.stop = Stop::Header(p);
    }
    Verifier {
        image,
        expected: *expected,
        open: verdict.stop == Stop::End,
        verdict,
    }
}

/// Whether a header that does not decode is what a write of the header a roll makes, torn by
/// a power loss, leaves over what the file held before: each byte is the new header's or the
/// old one's. The old header is zeros (a prepared file) or the header of the file's earlier
/// life (a pool file: the same magic, length and size, reserved zeros; its id and CRC may be
/// anything, its version and flags any this build knows). docs/FORMAT.md assumes no write
/// atomic, not even one sector's. A header of a version or with flags this build does not
/// know is never taken for one: a newer build's segment is refused, not dropped.
fn torn_activation(image: &[u8], id: u64) -> bool {
    let size = image.len() as u64;
    if image.len() < SEGMENT_HEADER_LEN || !segment_size_valid(size) {
        return false;
    }
    let header = &image[..SEGMENT_HEADER_LEN];
    // Recycled or not, the new header differs only in the flags, which are checked below.
    let new = SegmentHeader::new(id, size, false).encode();
    let known_flags = (SEGMENT_RECYCLED | SEGMENT_REWRITTEN) as u8;
    header
        .iter()
        .zip(new)
        .enumerate()
        .all(|(i, (&b, n))| match i {
            // Version: the low byte one this build reads (or zero), the others zero.
            8 => u32::from(b) <= FORMAT_VERSION_MAX,
            9..12 => b == 0,
            // Id and CRC: the earlier header's may be anything.
            16..24 | 60..64 => true,
            // Flags: bits this build knows.
            32 => b & !known_flags == 0,
            33..36 => b == 0,
            _ => b == n || b == 0,
        })
}

impl<'a> Verifier<'a> {
    /// What is wrong with the segment's header, if anything: checked when the verifier was
    /// made, before any frame.
    pub fn header_problem(&self) -> Option<&HeaderProblem> {
        match &self.verdict.stop {
            Stop::Header(p) => Some(p),
            _ => None,
        }
    }

    /// Goes through the frames not yet visited, and says what was found.
    pub fn verdict(mut self) -> Verdict {
        for _ in &mut self {}
        self.verdict
    }

    /// The frame at the end of the valid ones, if it continues the log; else what stops it.
    fn step(&self) -> Result<Frame<'a>, Stop> {
        let v = &self.verdict;
        let at = v.end as usize;
        // A recycled segment before the last holds exactly the batches up to the next one's
        // id, and after them old bytes (normally behind an end marker, but an mmap writer's
        // marker is not always synced). A fresh one ends at its zeros.
        let counted = self.expected.next_id.filter(|_| v.recycled);
        if counted.is_some_and(|next| v.next_seq >= next) {
            // Old bytes follow, but never the next batch: that would be a log that runs on
            // into the next segment (files mixed up, not a crash).
            return Err(match decode_frame(self.image, at) {
                Ok(Decoded::Frame(f)) if f.batch_seq == v.next_seq => {
                    Stop::RunsOn { seq: f.batch_seq }
                }
                _ => Stop::Counted,
            });
        }
        match decode_frame(self.image, at) {
            Ok(Decoded::End) => Err(self.end_stop()),
            Ok(Decoded::Frame(f)) if f.batch_seq != v.next_seq => Err(Stop::Sequence {
                found: f.batch_seq,
                expected: v.next_seq,
            }),
            Ok(Decoded::Frame(f)) => Ok(f),
            Err(e) => Err(Stop::Frame(e)),
        }
    }

    /// How the frames end where the decoder found the end.
    fn end_stop(&self) -> Stop {
        // Past the end marker of the tail segment there must be only the preallocated zeros;
        // anything else is the remains of a frame whose header never reached the disk. (A
        // reader skips this: the engine may be writing there right now.) In a recycled
        // segment the old bytes there cannot be told from such remains: the writer zeroes
        // them all instead (`repair::zero_recycled_tail`), so that the frames it appends are
        // followed by zeros, as in a fresh segment.
        if !self.expected.zeros_after || self.verdict.recycled {
            return Stop::End;
        }
        let end = self.verdict.end;
        let rest = &self.image[(end as usize).min(self.image.len())..];
        match rest.iter().position(|&b| b != 0) {
            Some(nz) => Stop::Torn {
                at: end + nz as u64,
            },
            None => Stop::End,
        }
    }
}

impl<'a> Iterator for Verifier<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if !self.open {
            return None;
        }
        match self.step() {
            Ok(f) => {
                self.verdict.frames += 1;
                self.verdict.next_seq += 1;
                self.verdict.end += f.len as u64;
                Some(f)
            }
            Err(stop) => {
                self.verdict.stop = stop;
                self.open = false;
                None
            }
        }
    }
}

/// What [`later_frames`] found past the damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Later {
    /// No frames a writer wrote after it.
    Nothing,
    /// A chain of them: its first frame's offset and its last batch.
    Chain(u64, u64),
    /// The search stopped at this offset having checksummed more candidate bytes than
    /// [`SEARCH_BUDGET`] segments' worth, which only bytes shaped as frame headers claiming
    /// long, overlapping bodies cost: it cannot tell what follows.
    GaveUp(u64),
}

/// How many times a segment's length the evidence search may checksum: a log's own frames
/// cost each byte about twice (as a candidate, then in a chain), so only bytes made to look
/// like frame headers over and over, each claiming a long body, reach it.
pub(crate) const SEARCH_BUDGET: usize = 4;

/// Looks past damage at `stop` (where batch `expected` should have been) for the frames a
/// writer wrote after it: a frame at an 8-aligned offset from `from` on that decodes, has a
/// batch sequence `t >= min_seq`, leaves room for the batches before it (`expected..t`, at
/// least a frame header each) between `stop` and itself, and begins a chain of consecutive
/// batches that runs to the end of the frames (zeros, or the end of the segment).
///
/// The last two conditions keep a copy of log frames inside a damaged frame's value (an
/// application may store log bytes as values) from passing for evidence; such a copy could
/// only pass by also carrying plausible sequence numbers and ending where the log ends, and
/// then the open refuses, which changes nothing and names the way out (`PointInTime`). A
/// candidate's header is checked (sequence, room) before its checksum is computed, and the
/// checksums computed are bounded ([`SEARCH_BUDGET`]): bytes crafted as a frame header every
/// few bytes, each claiming megabytes, made the search quadratic in the segment's size.
pub(crate) fn later_frames(
    image: &[u8],
    stop: u64,
    from: u64,
    expected: u64,
    min_seq: u64,
) -> Later {
    let budget = image.len().saturating_mul(SEARCH_BUDGET);
    let mut checked = 0usize;
    // Decodes the frame at `at` (its checksum included) once the budget allows its length.
    let mut decode = |at: usize| -> Option<Result<Decoded<'_>, ()>> {
        if let Some((_, len)) = peek_frame(image, at) {
            checked = checked.saturating_add(len);
            if checked > budget {
                return None;
            }
        }
        Some(decode_frame(image, at).map_err(|_| ()))
    };
    let mut off = (from as usize + 7) & !7;
    while off + FRAME_MAGIC.len() <= image.len() {
        if image[off..off + FRAME_MAGIC.len()] != FRAME_MAGIC {
            off += 8;
            continue;
        }
        let plausible = peek_frame(image, off).is_some_and(|(seq, _)| {
            let room = seq
                .saturating_sub(expected)
                .saturating_mul(FRAME_HEADER_LEN as u64);
            seq >= min_seq && room <= off as u64 - stop
        });
        if !plausible {
            off += 8;
            continue;
        }
        let f = match decode(off) {
            None => return Later::GaveUp(off as u64),
            Some(Ok(Decoded::Frame(f))) => f,
            Some(_) => {
                off += 8;
                continue;
            }
        };
        // Walk the chain from here to its end.
        let (mut at, mut last) = (off + f.len, f.batch_seq);
        let chained = loop {
            match decode(at) {
                None => return Later::GaveUp(at as u64),
                Some(Ok(Decoded::End)) => break true,
                Some(Ok(Decoded::Frame(g))) if g.batch_seq == last + 1 => {
                    last = g.batch_seq;
                    at += g.len;
                }
                Some(_) => break false,
            }
        };
        if chained {
            return Later::Chain(off as u64, last);
        }
        off = at.max(off + 8);
    }
    Later::Nothing
}

/// Evidence that the frames of a last segment stopped before the end of durable history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loss {
    /// Where the first later frame is (`None` if only the clean-close mark says so).
    pub first_later: Option<u64>,
    /// The last batch that would be lost.
    pub last_lost: u64,
    /// Where the search for later frames gave up ([`Later::GaveUp`]): then nothing is known
    /// about what follows, and the open refuses as `Error::Corrupt` (`PointInTime` cuts).
    pub gave_up: Option<u64>,
}

impl Loss {
    /// Says why `what` (the damage, or where the frames end) lost durable history.
    pub fn reason(&self, what: &str) -> String {
        let last_lost = self.last_lost;
        if let Some(at) = self.gave_up {
            return format!(
                "{what}, and the search for frames written after it gave up at offset {at} \
                 (bytes shaped as frame headers claiming long bodies, over and over, cost \
                 more than {SEARCH_BUDGET} passes over the segment): what follows is unknown, \
                 so nothing was changed (open with RecoveryMode::PointInTime to cut here)"
            );
        }
        let later = match self.first_later {
            Some(off) => format!("valid frames up to batch {last_lost} follow at offset {off}"),
            None => format!("the log was closed cleanly after batch {last_lost}"),
        };
        format!("{what}, but {later}")
    }
}

/// Whether the frames of the last segment, which stop at `stop` (damage there if `damaged`,
/// else the end of its frames) with batch `next_seq` expected, lost durable history: a valid
/// frame at least [`UNDURABLE_FRAMES_MAX`] batches later follows (only for a log written with
/// syncs), or the clean-close mark says the log went on.
pub(crate) fn durable_loss(
    image: &[u8],
    stop: u64,
    damaged: bool,
    next_seq: u64,
    segment_id: u64,
    expect: &Expect,
) -> Option<Loss> {
    let later = if expect.synced {
        // Past a bad frame, from the next 8 bytes on (its own header may be valid).
        let from = if damaged { stop + 8 } else { stop };
        later_frames(image, stop, from, next_seq, next_seq + UNDURABLE_FRAMES_MAX)
    } else {
        Later::Nothing
    };
    let marked = expect
        .clean
        .filter(|m| m.next_seq > next_seq && m.segment_id >= segment_id)
        .map(|m| m.next_seq - 1);
    match (later, marked) {
        (Later::Nothing, None) => None,
        (Later::Chain(off, top), m) => Some(Loss {
            first_later: Some(off),
            last_lost: m.map_or(top, |m| m.max(top)),
            gave_up: None,
        }),
        (Later::Nothing, Some(m)) => Some(Loss {
            first_later: None,
            last_lost: m,
            gave_up: None,
        }),
        (Later::GaveUp(at), m) => Some(Loss {
            first_later: None,
            last_lost: m.unwrap_or(next_seq),
            gave_up: Some(at),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::clean::CleanMark;
    use crate::log::format::{
        frame_len, record_len, FormatErrorKind, FrameWriter, RecordOp, FLAG_SORTED,
    };
    use proptest::prelude::*;

    const SIZE: usize = 4096;

    /// Batch `seq` as the engine writes it (`FrameWriter`): one put, with a value of
    /// `value_len` nonzero bytes.
    fn frame_of(seq: u64, value_len: usize) -> Vec<u8> {
        let key = format!("key{seq}");
        let value = vec![seq as u8 | 1; value_len];
        let mut buf = vec![0u8; frame_len(record_len(key.len(), value.len()))];
        let mut w = FrameWriter::new(&mut buf, seq, FLAG_SORTED);
        w.push(RecordOp::Put, key.as_bytes(), &value);
        assert_eq!(w.finish(1), buf.len());
        buf
    }

    fn frame(seq: u64) -> Vec<u8> {
        frame_of(seq, 5)
    }

    /// A `SIZE`-byte segment `id`: its header, then the frames of `seqs` back to back, then
    /// zeros. Also returns each frame's offset, and where the frames end.
    fn segment(id: u64, recycled: bool, seqs: &[u64]) -> (Vec<u8>, Vec<u64>, u64) {
        let mut image = vec![0u8; SIZE];
        let header = SegmentHeader::new(id, SIZE as u64, recycled);
        image[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        let mut at = SEGMENT_HEADER_LEN as u64;
        let mut offsets = Vec::new();
        for &seq in seqs {
            offsets.push(at);
            at = put(&mut image, at, &frame(seq));
        }
        (image, offsets, at)
    }

    /// Writes `bytes` at `at`; returns where they end.
    fn put(image: &mut [u8], at: u64, bytes: &[u8]) -> u64 {
        image[at as usize..][..bytes.len()].copy_from_slice(bytes);
        at + bytes.len() as u64
    }

    /// The last segment as a writer opens it: first batch `id`, only zeros after the frames.
    fn tail(id: u64) -> Expected {
        Expected {
            name_id: id,
            first_seq: id,
            next_id: None,
            zeros_after: true,
        }
    }

    /// Runs the check to the end: (offset, batch) of each valid frame, and the verdict.
    fn run(image: &[u8], expected: &Expected) -> (Vec<(u64, u64)>, Verdict) {
        let mut v = verify(image, expected);
        let frames = (&mut v).map(|f| (f.offset, f.batch_seq)).collect();
        (frames, v.verdict())
    }

    fn frame_error(stop: &Stop) -> &FormatError {
        match stop {
            Stop::Frame(e) => e,
            other => panic!("expected a bad frame, got {other:?}"),
        }
    }

    #[test]
    fn a_clean_segment_verifies_every_frame() {
        let (image, offs, end) = segment(5, false, &[5, 6, 7]);
        for zeros_after in [true, false] {
            let expected = Expected {
                zeros_after,
                ..tail(5)
            };
            let (frames, v) = run(&image, &expected);
            assert_eq!(frames, vec![(offs[0], 5), (offs[1], 6), (offs[2], 7)]);
            assert_eq!(
                v,
                Verdict {
                    end,
                    next_seq: 8,
                    frames: 3,
                    recycled: false,
                    stop: Stop::End,
                }
            );
            assert_eq!(v.damage(), None);
        }
    }

    #[test]
    fn an_empty_segment_ends_after_its_header() {
        let (image, _, _) = segment(9, false, &[]);
        let (frames, v) = run(&image, &tail(9));
        assert!(frames.is_empty());
        assert_eq!((v.end, v.next_seq, v.frames), (64, 9, 0));
        assert_eq!(v.stop, Stop::End);
    }

    #[test]
    fn a_torn_last_frame_ends_the_valid_frames() {
        let (mut image, offs, end) = segment(5, false, &[5, 6, 7]);
        // The last frame's second half never reached the disk.
        let half = (offs[2] + end) / 2;
        image[half as usize..end as usize].fill(0);
        let (frames, v) = run(&image, &tail(5));
        assert_eq!(frames, vec![(offs[0], 5), (offs[1], 6)]);
        assert_eq!((v.end, v.next_seq, v.frames), (offs[2], 7, 2));
        let e = frame_error(&v.stop);
        assert_eq!(e.offset, offs[2]);
        assert!(matches!(e.kind, FormatErrorKind::BadFrameCrc { .. }), "{e}");
        assert!(v.stop.decode_damage());
        assert_eq!(v.damage(), Some((offs[2], e.to_string())));
    }

    #[test]
    fn a_corrupt_frame_in_the_middle_stops_the_frames_there() {
        let (mut image, offs, _) = segment(5, false, &[5, 6, 7, 8]);
        image[offs[1] as usize + 40] ^= 0x10; // a bit flip in batch 6's body
        let (frames, v) = run(&image, &tail(5));
        // The frames after it are intact, but never part of the verdict.
        assert_eq!(frames, vec![(offs[0], 5)]);
        assert_eq!((v.end, v.next_seq), (offs[1], 6));
        assert_eq!(frame_error(&v.stop).offset, offs[1]);
    }

    #[test]
    fn a_frame_after_a_sequence_gap_is_misplaced() {
        let (image, offs, _) = segment(5, false, &[5, 6, 8, 9]);
        let (frames, v) = run(&image, &tail(5));
        assert_eq!(frames, vec![(offs[0], 5), (offs[1], 6)]);
        assert_eq!(
            v.stop,
            Stop::Sequence {
                found: 8,
                expected: 7
            }
        );
        assert!(v.stop.decode_damage());
        assert_eq!(
            v.damage(),
            Some((
                offs[2],
                "frame has batch sequence 8 where 7 was expected (stale or misplaced bytes)"
                    .to_string()
            ))
        );
    }

    #[test]
    fn bytes_after_the_last_frame_are_a_torn_write_for_a_writer_only() {
        let (mut image, _, end) = segment(5, false, &[5, 6]);
        image[end as usize + 40] = 1;
        let (frames, v) = run(&image, &tail(5));
        assert_eq!(frames.len(), 2);
        assert_eq!(v.stop, Stop::Torn { at: end + 40 });
        assert!(!v.stop.decode_damage());
        assert_eq!(
            v.damage(),
            Some((
                end,
                format!(
                    "non-zero byte at offset {} after the last frame (a torn write)",
                    end + 40
                )
            ))
        );
        // A reader's tail may be being written: it stops at the end.
        let reader = Expected {
            zeros_after: false,
            ..tail(5)
        };
        assert_eq!(run(&image, &reader).1.stop, Stop::End);
    }

    /// Recycled segment 20: batches 20..=22, their end marker (32 zero bytes), then frames of
    /// the file's earlier life. Returns the image and where the frames end.
    fn recycled_with_old_frames() -> (Vec<u8>, u64) {
        let (mut image, _, end) = segment(20, true, &[20, 21, 22]);
        let old = end + crate::log::format::END_MARKER_LEN as u64;
        let old = put(&mut image, old, &frame(3));
        put(&mut image, old, &frame(4));
        (image, end)
    }

    #[test]
    fn a_recycled_last_segment_ends_at_its_end_marker() {
        let (image, end) = recycled_with_old_frames();
        // The old bytes are not checked (the writer zeroes them instead).
        let (frames, v) = run(&image, &tail(20));
        assert_eq!(frames.len(), 3);
        assert_eq!((v.end, v.next_seq, v.recycled), (end, 23, true));
        assert_eq!(v.stop, Stop::End);
        // The same bytes in a fresh segment are the remains of a torn write.
        let mut fresh = image.clone();
        let header = SegmentHeader::new(20, SIZE as u64, false);
        fresh[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        let v = run(&fresh, &tail(20)).1;
        assert!(!v.recycled);
        assert_eq!(v.stop, Stop::Torn { at: end + 32 });
    }

    #[test]
    fn a_recycled_segment_before_the_last_holds_the_batches_up_to_the_next_one() {
        let (image, end) = recycled_with_old_frames();
        let before = |next| Expected {
            next_id: Some(next),
            zeros_after: false,
            ..tail(20)
        };
        let (frames, v) = run(&image, &before(23));
        assert_eq!(frames.len(), 3);
        assert_eq!((v.end, v.stop.clone()), (end, Stop::Counted));
        assert_eq!(v.damage(), None);
        // Old frames right after the last batch, with no end marker, end it just the same.
        let (mut unmarked, _, end) = segment(20, true, &[20, 21, 22]);
        put(&mut unmarked, end, &frame(9));
        assert_eq!(run(&unmarked, &before(23)).1.stop, Stop::Counted);
        // Fewer batches than the next id promises: the end marker ends them (the next
        // segment's header then does not continue the sequence).
        let v = run(&image, &before(30)).1;
        assert_eq!((v.frames, v.stop), (3, Stop::End));
        // But never followed by the next segment's first batch.
        let (mut runs_on, _, end) = segment(20, true, &[20, 21, 22]);
        put(&mut runs_on, end, &frame(23));
        let v = run(&runs_on, &before(23)).1;
        assert_eq!((v.frames, v.stop.clone()), (3, Stop::RunsOn { seq: 23 }));
        assert_eq!(
            v.damage(),
            Some((
                end,
                "frame with batch sequence 23 follows the segment's last batch, but the next \
                 segment starts with it"
                    .to_string()
            ))
        );
    }

    #[test]
    fn header_damage_leaves_nothing_of_the_segment() {
        let (image, _, _) = segment(5, false, &[5, 6]);
        let check = |image: &[u8], expected: Expected, want: &str| {
            let (frames, v) = run(image, &expected);
            assert!(frames.is_empty());
            assert!(matches!(v.stop, Stop::Header(_)), "{:?}", v.stop);
            assert!(v.stop.decode_damage());
            assert_eq!(
                (v.end, v.next_seq, v.recycled),
                (64, expected.first_seq, false)
            );
            let (offset, reason) = v.damage().unwrap();
            assert_eq!(offset, 0);
            assert!(reason.contains(want), "{reason}");
        };
        let mut bad_magic = image.clone();
        bad_magic[1] ^= 0xff;
        check(&bad_magic, tail(5), "invalid segment header");
        // A flipped reserved byte, or a size byte that is neither the header's nor zero: no
        // torn write of a roll's header leaves that.
        let mut bad_reserved = image.clone();
        bad_reserved[40] = 0x5a;
        check(&bad_reserved, tail(5), "invalid segment header");
        let mut bad_size = image.clone();
        bad_size[25] ^= 0x40;
        check(&bad_size, tail(5), "invalid segment header");
        check(&image[..40], tail(5), "invalid segment header");
        check(
            &image,
            tail(4),
            "segment header names id 5 but the file name says 4",
        );
        // What a roll that a power loss tore leaves: the header of the file's earlier life
        // (an id below the name's), or zeros. Told apart from other damage (a header naming
        // a later id, garbage): only these may the last segment be dropped for.
        check(
            &image,
            tail(6),
            "segment header still the file's earlier one (id 5), as a roll that a power loss tore",
        );
        let mut zeros = image.clone();
        zeros[..SEGMENT_HEADER_LEN].fill(0);
        check(&zeros, tail(5), "segment header never written (all zeros)");
        assert!(run(&zeros, &tail(5)).1.unactivated());
        assert!(run(&image, &tail(6)).1.unactivated());
        for not_torn in [&bad_magic, &bad_reserved, &bad_size] {
            assert!(!run(not_torn, &tail(5)).1.unactivated());
        }
        assert!(!run(&image, &tail(4)).1.unactivated());
        let mut one_byte = zeros.clone();
        one_byte[3] = 1;
        assert!(!run(&one_byte, &tail(5)).1.unactivated());
        // The header's write torn over zeros (a prepared file) or over the file's earlier
        // header (a pool file: another id, flags, CRC): each byte one or the other. Also a
        // durable header whose id or CRC bytes were damaged looks like this: the policy then
        // looks for evidence of durable history past it, as for any unactivated segment.
        let recycled = SegmentHeader::new(5, SIZE as u64, true).encode();
        let earlier = SegmentHeader::new(2, SIZE as u64, false).encode();
        for cut in [1, 9, 17, 30, 40, 61, 63] {
            let mut over_zeros = image.clone();
            over_zeros[cut..SEGMENT_HEADER_LEN].fill(0);
            let mut over_earlier = image.clone();
            over_earlier[..SEGMENT_HEADER_LEN].copy_from_slice(&earlier);
            over_earlier[..cut].copy_from_slice(&recycled[..cut]);
            for torn in [over_zeros, over_earlier] {
                if SegmentHeader::decode(&torn).is_ok() {
                    continue; // the bytes written so far happen to decode (to an earlier id)
                }
                let v = run(&torn, &tail(5)).1;
                assert!(v.unactivated(), "cut at {cut}: {:?}", v.stop);
                check(&torn, tail(5), "segment header partly written");
                // Only under the name a roll would give it: the batch the segment must start with.
                assert!(!run(
                    &torn,
                    &Expected {
                        first_seq: 4,
                        ..tail(5)
                    }
                )
                .1
                .unactivated());
            }
        }
        let mut crc_damaged = image.clone();
        crc_damaged[61] ^= 0x10;
        assert!(run(&crc_damaged, &tail(5)).1.unactivated());
        // A header of a version, or with a flag, this build does not know (a newer build's
        // segment, after a downgrade) is refused, never dropped as torn: no torn write of two
        // headers this build reads leaves those bytes.
        let mut newer = image.clone();
        newer[8] = FORMAT_VERSION_MAX as u8 + 1;
        let mut unknown_flag = image.clone();
        unknown_flag[32] |= 0x80;
        let mut high_version = image.clone();
        high_version[10] = 1;
        for (what, h) in [
            ("newer", &newer),
            ("flag", &unknown_flag),
            ("high", &high_version),
        ] {
            let v = run(h, &tail(5)).1;
            assert!(!v.unactivated(), "{what}: {:?}", v.stop);
        }
        // Zeros, or an earlier header, in a file not named after the batch it must start
        // with: no roll left that, so it is damage, not an unactivated segment.
        for (bytes, name) in [(&zeros, 5), (&image, 6)] {
            let v = run(
                bytes,
                &Expected {
                    first_seq: 4,
                    ..tail(name)
                },
            )
            .1;
            assert!(!v.unactivated(), "{:?}", v.stop);
            assert!(matches!(
                v.stop,
                Stop::Header(HeaderProblem::Sequence { .. })
            ));
        }
        check(
            &image[..SIZE - 8],
            tail(5),
            &format!(
                "segment header says {SIZE} bytes but the file has {}",
                SIZE - 8
            ),
        );
        let out_of_sequence = Expected {
            first_seq: 4,
            ..tail(5)
        };
        check(
            &image,
            out_of_sequence,
            "segment starts at batch 5 but the previous segment ended before batch 4",
        );
    }

    #[test]
    fn the_verdict_covers_the_frames_not_yet_visited() {
        let (image, _, end) = segment(5, false, &[5, 6, 7]);
        let mut v = verify(&image, &tail(5));
        assert_eq!(v.next().map(|f| f.batch_seq), Some(5));
        let v = v.verdict();
        assert_eq!((v.frames, v.next_seq, v.end), (3, 8, end));
    }

    /// Segment 1: batches 1..=3, a torn batch 4, then (if `later`) the three batches from
    /// `later` on, at offset 2048 (room for a frame header for each batch in between). Returns the image and where batch 4 starts.
    fn damaged_then(later: Option<u64>) -> (Vec<u8>, u64) {
        let (mut image, offs, end) = segment(1, false, &[1, 2, 3, 4]);
        image[(offs[3] + end) as usize / 2] ^= 1;
        if let Some(first) = later {
            let mut at = 2048;
            for seq in first..first + 3 {
                at = put(&mut image, at, &frame(seq));
            }
        }
        (image, offs[3])
    }

    #[test]
    fn frames_far_enough_past_damage_are_evidence_of_durable_history() {
        let synced = Expect {
            synced: true,
            ..Expect::default()
        };
        let (image, stop) = damaged_then(Some(4 + UNDURABLE_FRAMES_MAX));
        assert_eq!(
            durable_loss(&image, stop, true, 4, 1, &synced),
            Some(Loss {
                first_later: Some(2048),
                last_lost: 4 + UNDURABLE_FRAMES_MAX + 2,
                gave_up: None,
            })
        );
        // Without syncs the bound says nothing.
        assert_eq!(
            durable_loss(&image, stop, true, 4, 1, &Expect::default()),
            None
        );
        // Within the bound, later frames may be undurable ones written before the crash.
        let (image, stop) = damaged_then(Some(4 + UNDURABLE_FRAMES_MAX - 3));
        assert_eq!(durable_loss(&image, stop, true, 4, 1, &synced), None);
        let (image, stop) = damaged_then(None);
        assert_eq!(durable_loss(&image, stop, true, 4, 1, &synced), None);
    }

    /// Bytes past the damage that put a plausible frame header every 32 bytes, each
    /// claiming a body to the end of the segment, would cost a checksum over most of the
    /// segment per header: the search gives up within its budget and says where, and the
    /// open then refuses rather than guess (a cut could drop durable frames it never
    /// reached). A header that is not plausible (its batch too early, or too far on for the
    /// room before it) is never checksummed.
    #[test]
    fn the_evidence_search_gives_up_on_bytes_crafted_to_make_it_quadratic() {
        let size = 1 << 20;
        let crafted = |seq: u64| {
            let mut image = vec![0u8; size];
            let header = SegmentHeader::new(1, size as u64, false);
            image[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
            let mut off = 2048;
            while off + 64 <= size {
                image[off..off + 4].copy_from_slice(&FRAME_MAGIC);
                let body = (size - off - FRAME_HEADER_LEN) as u32;
                image[off + 8..off + 12].copy_from_slice(&body.to_le_bytes());
                image[off + 16..off + 24].copy_from_slice(&seq.to_le_bytes());
                off += FRAME_HEADER_LEN;
            }
            image
        };
        let (stop, min) = (64, 4 + UNDURABLE_FRAMES_MAX);
        let image = crafted(min);
        match later_frames(&image, stop, stop + 8, 4, min) {
            Later::GaveUp(at) => assert!(at > 2048 && (at as usize) < size, "{at}"),
            other => panic!("{other:?}"),
        }
        let synced = Expect {
            synced: true,
            ..Expect::default()
        };
        let loss = durable_loss(&image, stop, true, 4, 1, &synced).unwrap();
        assert!(loss.gave_up.is_some(), "{loss:?}");
        assert!(loss.reason("bad").contains("gave up at offset"), "{loss:?}");
        // Batches too early to be evidence: not one checksum, nothing found.
        let image = crafted(min - 1);
        assert_eq!(later_frames(&image, stop, stop + 8, 4, min), Later::Nothing);
    }

    #[test]
    fn a_clean_close_mark_past_the_stop_is_evidence_of_durable_history() {
        let (image, stop) = damaged_then(None);
        let mark = |segment_id, next_seq| Expect {
            synced: false,
            clean: Some(CleanMark {
                segment_id,
                end: 0,
                next_seq,
            }),
            carried_last: None,
        };
        let loss = durable_loss(&image, stop, true, 4, 1, &mark(1, 9));
        assert_eq!(
            loss,
            Some(Loss {
                first_later: None,
                last_lost: 8,
                gave_up: None,
            })
        );
        assert_eq!(
            loss.unwrap().reason("the frames end at offset 9"),
            "the frames end at offset 9, but the log was closed cleanly after batch 8"
        );
        // A mark that the frames reached, or one of an earlier segment, says nothing.
        assert_eq!(durable_loss(&image, stop, true, 4, 1, &mark(1, 4)), None);
        assert_eq!(durable_loss(&image, stop, true, 4, 2, &mark(1, 9)), None);
        // With later frames too, the larger of the two is lost.
        let (image, stop) = damaged_then(Some(30));
        let both = Expect {
            synced: true,
            ..mark(1, 9)
        };
        let loss = durable_loss(&image, stop, true, 4, 1, &both).unwrap();
        assert_eq!(loss.last_lost, 32);
        assert_eq!(
            loss.reason("bad"),
            "bad, but valid frames up to batch 32 follow at offset 2048"
        );
    }

    proptest! {
        /// A crash keeps a prefix of the written bytes: whatever prefix survives (the rest
        /// zeros, or the file cut short), the check yields a prefix of the frames, and every
        /// frame that survived whole.
        #[test]
        fn any_prefix_of_a_valid_image_verifies_to_a_prefix_of_its_frames(
            value_lens in proptest::collection::vec(0usize..200, 0..12),
            cut in any::<prop::sample::Index>(),
            zeros_after in any::<bool>(),
        ) {
            let mut image = vec![0u8; SIZE];
            let header = SegmentHeader::new(7, SIZE as u64, false);
            image[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
            let mut at = SEGMENT_HEADER_LEN as u64;
            let mut all = Vec::new();
            for (i, &len) in value_lens.iter().enumerate() {
                let seq = 7 + i as u64;
                let f = frame_of(seq, len);
                all.push((at, seq, at + f.len() as u64));
                at = put(&mut image, at, &f);
            }
            let expected = Expected { zeros_after, ..tail(7) };
            let (frames, v) = run(&image, &expected);
            let whole: Vec<(u64, u64)> = all.iter().map(|&(o, s, _)| (o, s)).collect();
            prop_assert_eq!(&frames, &whole);
            prop_assert_eq!(v.stop, Stop::End);

            let len = cut.index(image.len() + 1);
            let mut zeroed = image.clone();
            zeroed[len..].fill(0);
            for short in [&zeroed[..], &image[..len]] {
                let (frames, v) = run(short, &expected);
                prop_assert!(frames.len() <= whole.len());
                prop_assert_eq!(&frames[..], &whole[..frames.len()]);
                prop_assert_eq!(v.frames, frames.len() as u64);
                prop_assert_eq!(v.next_seq, 7 + frames.len() as u64);
                let end = frames.len().checked_sub(1).map_or(64, |i| all[i].2);
                prop_assert_eq!(v.end, end);
            }
            // Zeroing after a frame's end leaves it whole.
            let kept = all.iter().filter(|f| f.2 as usize <= len).count();
            prop_assert!(run(&zeroed, &expected).0.len() >= kept || len < SEGMENT_HEADER_LEN);
        }
    }
}
