//! Target `follow_dir`: a directory follower (`LogReader::follow`) over a directory made as
//! `open_dir` makes it, read part-way, then the directory is changed under it (bytes
//! written or zeroed, a frame appended, a segment removed or added, the log rewound: a frame
//! yielded replaced by another of the same batch) and the follower reads on; see
//! [`FollowInput::parse`].
//!
//! Checks, beyond "no panic, no hang" (`try_next` only: the follower never waits):
//!
//! - a follower yields consecutive batches, starting at the one it was asked for (or the
//!   log's first, if that is later), and `next_seq` follows the last one;
//! - before the change, every batch it yields is the batch a reader (`PointInTime`: the
//!   longest valid prefix) of the directory holds under that number;
//! - after it, every batch is the one a reader held before the change or holds after it,
//!   and it never mixes the two logs: once it yields a batch that only the changed log
//!   holds, the batch before it must be the same in both (else it had to say
//!   `Error::Rewound`);
//! - a new follower of the changed directory yields only what a reader of it holds.

use super::{scratch_dir, OpenDirInput};
use mergelog::internals::format::{
    frame_len, record_len, segment_file_name, FrameWriter, RecordOp, SegmentHeader, FLAG_SORTED,
    SEGMENT_HEADER_LEN,
};
use mergelog::{Follower, LogReader, OwnedBatch, RecoveryMode};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How the directory changes under the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// Bytes written at an offset of a segment file.
    Write,
    /// Zeros written over `len` bytes at an offset.
    Zero,
    /// A frame of the next batch appended after the log's last frame (the log grows).
    Append,
    /// A segment file removed.
    Remove,
    /// A segment file for the next batch added after the last one, with one frame.
    AddSegment,
    /// The log rewound: the segment holding batch `s` (picked by the offset) zeroed from
    /// its frame on, and another frame of batch `s` written there.
    Rewind,
}

const MUTATIONS: [Mutation; 7] = [
    Mutation::None,
    Mutation::Write,
    Mutation::Zero,
    Mutation::Append,
    Mutation::Remove,
    Mutation::AddSegment,
    Mutation::Rewind,
];

/// Bytes of the header of a `follow_dir` input, before its payload and the `open_dir` part.
const HEADER: usize = 6;

#[derive(Clone, Debug)]
pub struct FollowInput {
    /// Batches read before the change (0–15).
    pub reads: usize,
    /// The first batch asked for: 0, 2, 5, or the log's next one.
    pub from: u8,
    pub mutation: Mutation,
    /// The segment (index in log order, modulo their count) the change is made in.
    pub segment: usize,
    pub offset: usize,
    pub payload: Vec<u8>,
    pub dir: OpenDirInput,
}

impl FollowInput {
    /// - byte 0: bits 0–3 the reads before the change, bits 4–5 where to start (0, 2, 5,
    ///   the log's end);
    /// - byte 1: the change (`MUTATIONS`, modulo 7);
    /// - byte 2: the segment; bytes 3–4: the offset (u16 LE); byte 5: the payload's length
    ///   `n`, then `n` bytes of payload;
    /// - the rest: an `open_dir` input (see `OpenDirInput::parse`).
    pub fn parse(data: &[u8]) -> FollowInput {
        let mut head = [0u8; HEADER];
        let n = data.len().min(HEADER);
        head[..n].copy_from_slice(&data[..n]);
        let rest = data.get(HEADER..).unwrap_or(&[]);
        let len = usize::from(head[5]).min(rest.len());
        FollowInput {
            reads: usize::from(head[0] & 15),
            from: head[0] >> 4 & 3,
            mutation: MUTATIONS[usize::from(head[1]) % MUTATIONS.len()],
            segment: usize::from(head[2]),
            offset: usize::from(u16::from_le_bytes([head[3], head[4]])),
            payload: rest[..len].to_vec(),
            dir: OpenDirInput::parse(&rest[len..]),
        }
    }

    /// The inverse of `parse`, for seeds.
    pub fn encode(
        reads: u8,
        from: u8,
        mutation: Mutation,
        segment: u8,
        offset: u16,
        payload: &[u8],
        dir: &[u8],
    ) -> Vec<u8> {
        let m = MUTATIONS.iter().position(|&x| x == mutation).unwrap() as u8;
        let mut out = vec![reads & 15 | (from & 3) << 4, m, segment];
        out.extend(offset.to_le_bytes());
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
        out.extend_from_slice(dir);
        out
    }
}

/// The batches a `PointInTime` reader of `dir` holds, by sequence; `None` if none opens.
fn reader_batches(dir: &Path) -> Option<(BTreeMap<u64, OwnedBatch>, u64)> {
    let r = LogReader::open_with(dir, RecoveryMode::PointInTime).ok()?;
    let batches = r.batches().map(|b| (b.seq().get(), b.to_owned())).collect();
    Some((batches, r.next_seq().get()))
}

/// Calls `try_next` up to `n` times, stopping at the first `Ok(None)` or error.
fn read_some(f: &mut Follower, n: usize, out: &mut Vec<OwnedBatch>) {
    for _ in 0..n {
        let before = f.next_seq().get();
        match f.try_next() {
            Ok(Some(b)) => {
                if let Some(prev) = out.last() {
                    assert_eq!(
                        b.seq.get(),
                        prev.seq.get() + 1,
                        "a follower's batches must be consecutive"
                    );
                }
                assert!(b.seq.get() >= before, "a follower went back");
                assert_eq!(
                    f.next_seq().get(),
                    b.seq.get() + 1,
                    "next_seq follows the last batch yielded"
                );
                out.push(b);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// The segment files of `dir` in id order.
fn segment_files(dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    mergelog::internals::list_segments(dir).unwrap_or_default()
}

/// One frame of batch `seq` with one put of `key`, as the engine would write it.
fn frame(seq: u64, key: &[u8]) -> Vec<u8> {
    let key = if key.is_empty() { b"k" as &[u8] } else { key };
    let len = frame_len(record_len(key.len(), 1));
    let mut buf = vec![0u8; len];
    let mut w = FrameWriter::new(&mut buf, seq, FLAG_SORTED);
    w.push(RecordOp::Put, key, b"f");
    w.finish(1);
    buf
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    // Never past the end: a mapping of the file would fault on a page the file no longer
    // backs only if it shrank, and writing past the end grows it, which no writer does.
    let len = f.metadata().expect("stat").len();
    if at >= len {
        return;
    }
    let n = bytes.len().min((len - at) as usize);
    f.write_all_at(&bytes[..n], at).expect("write");
}

/// Changes `dir` as `input` says. `before`: the reader's batches and next batch.
fn mutate(input: &FollowInput, dir: &Path, next_seq: u64, end_offset: u64) {
    let files = segment_files(dir);
    let Some(pick) = (!files.is_empty()).then(|| input.segment % files.len()) else {
        return;
    };
    let (id, path) = &files[pick];
    let key = &input.payload[..input.payload.len().min(32)];
    match input.mutation {
        Mutation::None => {}
        Mutation::Write => write_at(path, input.offset as u64, &input.payload),
        Mutation::Zero => {
            let n = input.payload.first().map_or(8, |&b| usize::from(b) + 1);
            write_at(path, input.offset as u64, &vec![0u8; n]);
        }
        Mutation::Append => {
            let (_, last) = files.last().expect("a file");
            write_at(last, end_offset, &frame(next_seq, key));
        }
        Mutation::Remove => std::fs::remove_file(path).expect("remove a segment"),
        Mutation::AddSegment => {
            let size = 512;
            let mut seg = vec![0u8; size];
            seg[..SEGMENT_HEADER_LEN]
                .copy_from_slice(&SegmentHeader::new(next_seq, size as u64, false).encode());
            let f = frame(next_seq, key);
            if SEGMENT_HEADER_LEN + f.len() <= size {
                seg[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + f.len()].copy_from_slice(&f);
            }
            let p = dir.join(segment_file_name(next_seq.max(1)));
            if !p.exists() {
                std::fs::write(&p, &seg).expect("add a segment");
            }
        }
        Mutation::Rewind => {
            // The frames of the picked segment, walked from its start.
            let Ok(bytes) = std::fs::read(path) else {
                return;
            };
            let mut starts = Vec::new();
            let mut off = SEGMENT_HEADER_LEN;
            let mut seq = *id;
            while let Ok(mergelog::internals::format::Decoded::Frame(f)) =
                mergelog::internals::format::decode_frame(&bytes, off)
            {
                if f.batch_seq != seq {
                    break;
                }
                starts.push((off, seq));
                off = f.end_offset() as usize;
                seq += 1;
            }
            let Some(&(at, seq)) =
                (!starts.is_empty()).then(|| &starts[input.offset % starts.len()])
            else {
                return;
            };
            write_at(path, at as u64, &vec![0u8; bytes.len() - at]);
            let mut key = key.to_vec();
            key.extend_from_slice(b"-rewound");
            write_at(path, at as u64, &frame(seq, &key));
            // The later segments go, as a cut removes them.
            for (_, later) in &files[pick + 1..] {
                let _ = std::fs::remove_file(later);
            }
        }
    }
}

/// Whether `b` is the batch `log` holds under its number.
fn holds(log: &BTreeMap<u64, OwnedBatch>, b: &OwnedBatch) -> bool {
    log.get(&b.seq.get()) == Some(b)
}

pub fn follow_dir(data: &[u8]) {
    let input = FollowInput::parse(data);
    if input.dir.skip {
        return;
    }
    let root = scratch_dir();
    let dir = root.path().join("f");
    std::fs::create_dir(&dir).expect("mkdir");
    input.dir.materialize(&dir);

    let before = reader_batches(&dir);
    let (next_seq, end_offset) = match LogReader::open_with(&dir, RecoveryMode::PointInTime) {
        Ok(r) => (r.next_seq().get(), r.end_offset()),
        Err(_) => (1, SEGMENT_HEADER_LEN as u64),
    };
    let from = match input.from {
        0 => 0,
        1 => 2,
        2 => 5,
        _ => next_seq,
    };
    let Ok(reader) = LogReader::open_with(&dir, RecoveryMode::PointInTime) else {
        // A follower is made from a reader: nothing to follow.
        return;
    };
    let mut follower = reader.follow(from);
    drop(reader);
    let mut yielded = Vec::new();
    read_some(&mut follower, input.reads, &mut yielded);
    if let Some((log, _)) = &before {
        for b in &yielded {
            assert!(
                holds(log, b),
                "the follower yielded batch {} that the reader does not hold as such",
                b.seq.get()
            );
        }
    }
    let split = yielded.len();

    mutate(&input, &dir, next_seq, end_offset);
    let after = reader_batches(&dir);
    read_some(&mut follower, 24, &mut yielded);
    // Whether a reader of the changed directory stopped at damage before its last file: a
    // follower that starts in a later segment does not read the earlier ones, and yields the
    // batches after the damage (left open; see docs/decisions.md, session 38).
    let last_file = segment_files(&dir).last().map(|f| f.1.clone());
    let damaged_early = LogReader::open_with(&dir, RecoveryMode::PointInTime)
        .ok()
        .and_then(|r| r.damage().map(|d| Some(&d.path) != last_file.as_ref()))
        .unwrap_or(false);

    let empty = BTreeMap::new();
    let old = before.as_ref().map_or(&empty, |b| &b.0);
    let new = after.as_ref().map_or(&empty, |a| &a.0);
    if before.is_some() {
        let mut only_new_since: Option<usize> = None;
        for (i, b) in yielded.iter().enumerate().skip(split) {
            let (in_old, in_new) = (holds(old, b), holds(new, b));
            assert!(
                in_old || in_new || after.is_none() || damaged_early,
                "batch {} yielded after the change is in neither log",
                b.seq.get()
            );
            if in_old && !in_new {
                assert!(
                    only_new_since.is_none(),
                    "batch {} of the old log yielded after one of the new",
                    b.seq.get()
                );
            }
            if in_new && !in_old && only_new_since.is_none() {
                only_new_since = Some(i);
                if let Some(prev) = i.checked_sub(1).map(|j| &yielded[j]) {
                    assert!(
                        holds(new, prev),
                        "batch {} of the changed log yielded right after batch {} of the \
                         old one, which the changed log does not hold (a rewound log must \
                         be Error::Rewound)",
                        b.seq.get(),
                        prev.seq.get()
                    );
                }
            }
        }
    }

    // A new follower of the changed directory yields only what a reader of it holds. (Not
    // when the reader stopped at damage before the last file: a follower that starts in a
    // later segment does not read the earlier ones, and yields the batches after the damage;
    // see docs/decisions.md, session 38.)
    let reader = LogReader::open_with(&dir, RecoveryMode::PointInTime)
        .ok()
        .filter(|_| !damaged_early);
    if let Some(reader) = reader {
        let mut fresh = reader.follow(from);
        let mut got = Vec::new();
        read_some(&mut fresh, 24, &mut got);
        for b in &got {
            assert!(
                holds(new, b),
                "a new follower yielded batch {} that the reader does not hold as such",
                b.seq.get()
            );
        }
    }
}

/// `open_dir` inputs holding a real log, for seeds: 12 batches written through `Engine`
/// (puts, a delete, request ids, so frames with trailers), their frames laid out in one,
/// two or three small segments (frames are the same wherever they lie; a segment's header
/// names its first batch and its size).
pub fn real_log_dirs() -> Vec<Vec<u8>> {
    let root = scratch_dir();
    let dir = root.path().join("log");
    let config = mergelog::Config {
        segment_bytes: super::ENGINE_SEGMENT_BYTES,
        batch_bytes_max: 4096,
        window: mergelog::WindowPolicy::Immediate,
        ..mergelog::Config::default()
    };
    let engine = mergelog::Engine::open(&dir, config).expect("open");
    for n in 0u8..12 {
        let key = [b'k', b'0' + n % 5];
        let t = match n {
            5 => engine.delete(&key[..]).expect("delete").wait().map(|_| ()),
            n if n % 3 == 0 => engine
                .put_with_id(u128::from(n) + 1, &key[..], &[n; 7])
                .expect("put")
                .wait()
                .map(|_| ()),
            _ => engine
                .put(&key[..], &[n; 9])
                .expect("put")
                .wait()
                .map(|_| ()),
        };
        t.expect("durable");
    }
    engine.close().expect("close");
    drop(engine);
    let reader = LogReader::open(&dir).expect("reopen");
    let frames: Vec<(u64, Vec<u8>)> = {
        let files = reader.segments();
        let image = std::fs::read(&files[0].path).expect("read");
        reader
            .batches()
            .map(|b| {
                let at = b.offset() as usize;
                (b.seq().get(), image[at..at + b.frame_len()].to_vec())
            })
            .collect()
    };
    let segment = |frames: &[(u64, Vec<u8>)]| {
        let size = 64 + 8 * 119;
        let mut seg = vec![0u8; size];
        seg[..SEGMENT_HEADER_LEN]
            .copy_from_slice(&SegmentHeader::new(frames[0].0, size as u64, false).encode());
        let mut off = SEGMENT_HEADER_LEN;
        for (_, f) in frames {
            seg.get_mut(off..off + f.len())?.copy_from_slice(f);
            off += f.len();
        }
        Some((frames[0].0, seg))
    };
    // (A layout whose frames do not fit the largest size an input can give is left out.)
    let layouts: [&[usize]; 4] = [&[8], &[12], &[5, 12], &[3, 7, 12]];
    layouts
        .iter()
        .filter_map(|ends| {
            let mut segs = Vec::new();
            let mut start = 0;
            for &end in *ends {
                segs.push(segment(&frames[start..end])?);
                start = end;
            }
            // Control: a put after open.
            OpenDirInput::encode(&segs, 0x80)
        })
        .collect()
}
