//! docs/FORMAT.md as a contract: an independent reader of a log directory, written from the
//! document alone (no `mergelog::internals`, no crate decoding), checked against the public
//! reader on logs the public API writes.
//!
//! A storage user or a tool in another language reads a log with FORMAT.md in hand. This file
//! is such a tool: `Doc` decodes segment headers, frames, records, trailers (ids, commit
//! time), end markers of recycled segments and torn tails, and the side files (`CLEAN`,
//! `consumer-<name>`, `ids`) from bytes, with its own CRC-32C. Every test then compares what
//! it reads with what `LogReader`, `Engine::consumers`, `Engine::request_id_seq` and
//! `LogReader::check` say, batch by batch and field by field, and feeds both the same bad
//! bytes: what the document calls invalid must be what the engine refuses, at the same
//! offset. If the layout the code writes drifts from the document, a test here fails.

#![allow(clippy::disallowed_methods)] // the tests copy and damage log files on purpose

use mergelog::{
    Compaction, Config, Engine, Error, IdHorizon, LogReader, MergeOperator, RecordOp, RecoveryMode,
    WriteBatch,
};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

// ---------------------------------------------------------------------------------------
// The reader, from docs/FORMAT.md only.
// ---------------------------------------------------------------------------------------

/// CRC-32C (Castagnoli), reflected, init and final xor all ones.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

const SEGMENT_MAGIC: &[u8; 8] = b"MRGLOG\x00S";
const SEGMENT_HEADER_LEN: usize = 64;
const FRAME_HEADER_LEN: usize = 32;
const HEADER_RECYCLED: u32 = 1;
const HEADER_REWRITTEN: u32 = 2;
const FRAME_SORTED: u32 = 1;
const FRAME_TRAILER: u32 = 2;
const FRAME_COMPACTION: u32 = 4;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    version: u32,
    id: u64,
    size: u64,
    flags: u32,
}

/// "The decoder checks magic, version, CRC, header length, reserved bytes, flags and size, in
/// that order."
fn decode_header(b: &[u8]) -> Result<Header, String> {
    if b.len() < SEGMENT_HEADER_LEN {
        return Err("shorter than a header".into());
    }
    if &b[0..8] != SEGMENT_MAGIC {
        return Err("magic".into());
    }
    let version = u32_at(b, 8);
    if !(1..=5).contains(&version) {
        return Err(format!("version {version}"));
    }
    if u32_at(b, 60) != crc32c(&b[0..60]) {
        return Err("header crc".into());
    }
    if u32_at(b, 12) != SEGMENT_HEADER_LEN as u32 {
        return Err("header length".into());
    }
    if b[36..60].iter().any(|&x| x != 0) {
        return Err("reserved".into());
    }
    let flags = u32_at(b, 32);
    let known = match version {
        1 => 0,
        2..=4 => HEADER_RECYCLED,
        _ => HEADER_RECYCLED | HEADER_REWRITTEN,
    };
    if flags & !known != 0 || flags == HEADER_RECYCLED | HEADER_REWRITTEN {
        return Err(format!("flags {flags:#x} in version {version}"));
    }
    let size = u64_at(b, 24);
    if !size.is_multiple_of(8) || size < 96 {
        return Err(format!("size {size}"));
    }
    Ok(Header {
        version,
        id: u64_at(b, 16),
        size,
        flags,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct DocBatch {
    segment: PathBuf,
    offset: u64,
    frame_len: usize,
    seq: u64,
    flags: u32,
    ops_acknowledged: u32,
    records: Vec<(u8, Vec<u8>, Vec<u8>)>,
    ids: Vec<[u8; 16]>,
    commit_time: Option<u64>,
}

impl DocBatch {
    /// What a failed comparison shows: everything but the bytes of keys and values.
    fn brief(&self) -> String {
        format!(
            "seq {} at {:?}+{} (len {}), flags {:#x}, acks {}, {} records (ops {:?}, {} key+value bytes), ids {:?}, time {:?}",
            self.seq,
            self.segment.file_name().unwrap(),
            self.offset,
            self.frame_len,
            self.flags,
            self.ops_acknowledged,
            self.records.len(),
            self.records.iter().map(|r| r.0).collect::<Vec<_>>(),
            self.records.iter().map(|r| r.1.len() + r.2.len()).sum::<usize>(),
            self.ids.len(),
            self.commit_time
        )
    }

    /// The batch without the file it was read from, to compare copies of a log.
    fn content(&self) -> DocBatch {
        DocBatch {
            segment: PathBuf::new(),
            ..self.clone()
        }
    }
}

enum FrameAt {
    /// 32 zero bytes, or fewer than 32 bytes left: the written part ends.
    End,
    Frame(DocBatch),
    Bad(String),
}

/// One frame at `off` of a segment whose bytes are `seg` ("A frame decodes only if all of
/// these hold, checked in this order").
fn decode_frame(seg: &[u8], off: usize, path: &Path) -> FrameAt {
    if seg.len() - off < FRAME_HEADER_LEN {
        return FrameAt::End;
    }
    let h = &seg[off..off + FRAME_HEADER_LEN];
    if h.iter().all(|&x| x == 0) {
        return FrameAt::End;
    }
    if &h[0..4] != b"MLFR" {
        return FrameAt::Bad("frame magic".into());
    }
    let body_len = u32_at(h, 8) as usize;
    let frame_len = align8(FRAME_HEADER_LEN + body_len);
    if off + frame_len > seg.len() {
        return FrameAt::Bad("frame does not fit".into());
    }
    if u32_at(h, 4) != crc32c(&seg[off + 8..off + FRAME_HEADER_LEN + body_len]) {
        return FrameAt::Bad("frame crc".into());
    }
    let record_count = u32_at(h, 12);
    let seq = u64_at(h, 16);
    let flags = u32_at(h, 24);
    let ops_acknowledged = u32_at(h, 28);
    let body = &seg[off + FRAME_HEADER_LEN..off + FRAME_HEADER_LEN + body_len];
    let mut records_end = body.len();
    let mut ids = Vec::new();
    let mut commit_time = None;
    if flags & FRAME_TRAILER != 0 {
        if body.len() < 16 {
            return FrameAt::Bad("trailer does not fit".into());
        }
        let fixed = body.len() - 16;
        let n = u32_at(body, fixed) as usize;
        if u32_at(body, fixed + 4) != 0 {
            return FrameAt::Bad("trailer reserved".into());
        }
        if n.checked_mul(16).is_none_or(|l| l > fixed) {
            return FrameAt::Bad("trailer ids do not fit".into());
        }
        commit_time = Some(u64_at(body, fixed + 8));
        records_end = fixed - 16 * n;
        for i in 0..n {
            ids.push(
                body[records_end + 16 * i..records_end + 16 * (i + 1)]
                    .try_into()
                    .unwrap(),
            );
        }
    }
    let mut records = Vec::new();
    let mut at = 0;
    while at < records_end {
        if records_end - at < 7 {
            return FrameAt::Bad("record header does not fit".into());
        }
        let op = body[at];
        let key_len = u16_at(body, at + 1) as usize;
        let value_len = u32_at(body, at + 3) as usize;
        let end = at + 7 + key_len + value_len;
        if end > records_end {
            return FrameAt::Bad("record does not fit".into());
        }
        if op == OP_DELETE && value_len != 0 {
            return FrameAt::Bad("a delete with a value".into());
        }
        let key = body[at + 7..at + 7 + key_len].to_vec();
        let value = body[at + 7 + key_len..end].to_vec();
        records.push((op, key, value));
        at = end;
    }
    if records.len() != record_count as usize {
        return FrameAt::Bad("record count".into());
    }
    if records.iter().any(|r| r.0 != OP_PUT && r.0 != OP_DELETE) {
        return FrameAt::Bad("op".into());
    }
    if flags & !(FRAME_SORTED | FRAME_TRAILER | FRAME_COMPACTION) != 0 {
        return FrameAt::Bad(format!("frame flags {flags:#x}"));
    }
    if flags & FRAME_SORTED != 0 && records.windows(2).any(|w| w[0].1 >= w[1].1) {
        return FrameAt::Bad("not sorted".into());
    }
    let acks_ok = if flags & FRAME_COMPACTION != 0 {
        ops_acknowledged == 0
    } else {
        ops_acknowledged >= record_count
    };
    if !acks_ok {
        return FrameAt::Bad("ops_acknowledged".into());
    }
    FrameAt::Frame(DocBatch {
        segment: path.to_path_buf(),
        offset: off as u64,
        frame_len,
        seq,
        flags,
        ops_acknowledged,
        records,
        ids,
        commit_time,
    })
}

#[derive(Debug)]
struct DocSegment {
    path: PathBuf,
    header: Header,
    /// End of its last frame.
    end: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct DocDamage {
    path: PathBuf,
    offset: u64,
    reason: String,
}

#[derive(Debug, Default)]
struct DocLog {
    segments: Vec<DocSegment>,
    batches: Vec<DocBatch>,
    /// The first bad frame or header; reading stopped there.
    damage: Option<DocDamage>,
    /// Nonzero bytes after the last frame of a last segment that is not recycled.
    junk_after_end: Option<u64>,
}

impl DocLog {
    fn next_seq(&self) -> Option<u64> {
        self.batches.last().map(|b| b.seq + 1)
    }
}

/// The log of `dir`: "the segments in ascending id order", read as "Recovery" and "Where the
/// written log ends" say. Stops at the first bad header or frame (reported as damage).
fn read_log(dir: &Path) -> DocLog {
    let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let digits = name.strip_suffix(".seg")?;
            if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((digits.parse().ok()?, p))
        })
        .collect();
    names.sort();
    let mut log = DocLog::default();
    let mut expected: Option<u64> = None;
    for (i, (name_id, path)) in names.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let damage = |offset: u64, reason: String| DocDamage {
            path: path.clone(),
            offset,
            reason,
        };
        let header = match decode_header(&bytes) {
            Ok(h) => h,
            Err(e) => {
                log.damage = Some(damage(0, e));
                return log;
            }
        };
        assert!(
            (1..=1 << 62).contains(name_id),
            "segment name outside 1..=2^62"
        );
        if header.id != *name_id
            || header.size != bytes.len() as u64
            || expected.is_some_and(|e| e != header.id)
        {
            log.damage = Some(damage(0, format!("header {header:?} out of place")));
            return log;
        }
        let last = i + 1 == names.len();
        let recycled = header.flags & HEADER_RECYCLED != 0;
        // "A recycled segment before the last ends after exactly the batches up to the next
        // segment's id."
        let stop_at = if recycled && !last {
            Some(names[i + 1].0)
        } else {
            None
        };
        let mut seq = header.id;
        let mut off = SEGMENT_HEADER_LEN;
        loop {
            if stop_at == Some(seq) {
                if let FrameAt::Frame(f) = decode_frame(&bytes, off, path) {
                    if f.seq == seq {
                        log.damage = Some(damage(off as u64, "next segment's batch".into()));
                    }
                }
                break;
            }
            match decode_frame(&bytes, off, path) {
                FrameAt::End => break,
                FrameAt::Bad(reason) => {
                    log.damage = Some(damage(off as u64, reason));
                    break;
                }
                FrameAt::Frame(f) if f.seq != seq => {
                    // "A frame that decodes with another sequence is stale or misplaced
                    // bytes, and counts as a bad frame."
                    log.damage = Some(damage(off as u64, format!("sequence {}", f.seq)));
                    break;
                }
                FrameAt::Frame(f) => {
                    off += f.frame_len;
                    seq += 1;
                    log.batches.push(f);
                }
            }
        }
        if last && !recycled && log.damage.is_none() && bytes[off..].iter().any(|&b| b != 0) {
            log.junk_after_end = Some(off as u64);
        }
        log.segments.push(DocSegment {
            path: path.clone(),
            header,
            end: off as u64,
        });
        if log.damage.is_some() {
            return log;
        }
        expected = Some(seq);
    }
    log
}

#[derive(Debug, PartialEq, Eq)]
struct DocClean {
    last_segment: u64,
    end: u64,
    next_seq: u64,
}

/// `CLEAN`, 48 bytes; anything else "is no mark".
fn read_clean(dir: &Path) -> Option<DocClean> {
    let b = std::fs::read(dir.join("CLEAN")).ok()?;
    if b.len() != 48
        || &b[0..8] != b"MLCLEAN\0"
        || u32_at(&b, 8) != 1
        || u32_at(&b, 12) != 0
        || u32_at(&b, 40) != crc32c(&b[0..40])
        || u32_at(&b, 44) != 0
    {
        return None;
    }
    Some(DocClean {
        last_segment: u64_at(&b, 16),
        end: u64_at(&b, 24),
        next_seq: u64_at(&b, 32),
    })
}

/// `consumer-<name>`, 32 bytes: the last committed batch; anything else is an error.
fn read_consumer(path: &Path) -> Result<u64, String> {
    let b = std::fs::read(path).map_err(|e| e.to_string())?;
    if b.len() != 32
        || &b[0..8] != b"MLCONSUM"
        || u32_at(&b, 8) != 1
        || u32_at(&b, 12) != 0
        || u32_at(&b, 24) != crc32c(&b[0..24])
        || u32_at(&b, 28) != 0
    {
        return Err("bad consumer file".into());
    }
    let committed = u64_at(&b, 16);
    if committed > 1 << 62 {
        return Err("committed batch above 2^62".into());
    }
    Ok(committed)
}

/// `ids`: (id, batch, commit time), oldest batch first.
fn read_ids(path: &Path) -> Result<Vec<([u8; 16], u64, u64)>, String> {
    let b = std::fs::read(path).map_err(|e| e.to_string())?;
    if b.len() < 28 || &b[0..8] != b"MLIDS\0\0\0" || u32_at(&b, 12) != 0 {
        return Err("bad ids header".into());
    }
    let version = u32_at(&b, 8);
    let n = u64_at(&b, 16) as usize;
    let end = 24 + 32 * n;
    match version {
        1 if b.len() == end + 4 => {}
        2 if b.len() >= end + 4 => {}
        _ => return Err(format!("ids version {version} or length {}", b.len())),
    }
    if u32_at(&b, end) != crc32c(&b[0..end]) {
        return Err("ids crc".into());
    }
    Ok((0..n)
        .map(|i| {
            let e = &b[24 + 32 * i..24 + 32 * (i + 1)];
            (e[0..16].try_into().unwrap(), u64_at(e, 16), u64_at(e, 24))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// The comparison with the public reader.
// ---------------------------------------------------------------------------------------

/// The public reader's view of `dir`, in `DocBatch` terms.
fn public_batches(reader: &LogReader) -> Vec<DocBatch> {
    reader
        .batches()
        .map(|b| {
            let mut flags = 0;
            if b.is_sorted() {
                flags |= FRAME_SORTED;
            }
            if b.commit_time().is_some() {
                flags |= FRAME_TRAILER;
            }
            if b.is_compaction() {
                flags |= FRAME_COMPACTION;
            }
            DocBatch {
                segment: b.segment().to_path_buf(),
                offset: b.offset(),
                frame_len: b.frame_len(),
                seq: u64::from(b.seq()),
                flags,
                ops_acknowledged: b.ops_acknowledged(),
                records: b
                    .records()
                    .map(|r| {
                        let op = match r.op {
                            RecordOp::Put => OP_PUT,
                            RecordOp::Delete => OP_DELETE,
                        };
                        (op, r.key.to_vec(), r.value.to_vec())
                    })
                    .collect(),
                ids: b.ids().map(|id| *id.as_bytes()).collect(),
                commit_time: b
                    .commit_time()
                    .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64),
            }
        })
        .collect()
}

/// Reads `dir` both ways and requires them to agree on every batch, and on where the log
/// ends. Returns the document's view.
fn agree(dir: &Path) -> DocLog {
    let doc = read_log(dir);
    let reader = LogReader::open(dir).unwrap();
    let public = public_batches(&reader);
    for (d, p) in doc.batches.iter().zip(&public) {
        assert!(
            d == p,
            "batch {}: document {}, LogReader {}",
            d.seq,
            d.brief(),
            p.brief()
        );
    }
    assert_eq!(
        doc.batches.len(),
        public.len(),
        "number of batches (document's last {:?}, LogReader's last {:?}; document's damage {:?})",
        doc.batches.last().map(DocBatch::brief),
        public.last().map(DocBatch::brief),
        doc.damage
    );
    assert_eq!(
        doc.segments
            .iter()
            .map(|s| (s.path.clone(), s.header.size))
            .collect::<Vec<_>>(),
        reader
            .segments()
            .into_iter()
            .map(|s| (s.path, s.bytes))
            .collect::<Vec<_>>(),
        "segment files"
    );
    if let Some(first) = doc.segments.first() {
        assert_eq!(u64::from(reader.first_seq()), first.header.id);
    }
    if let Some(next) = doc.next_seq() {
        assert_eq!(u64::from(reader.next_seq()), next);
    }
    if let (Some(last), None) = (doc.segments.last(), &doc.damage) {
        assert_eq!(reader.end_offset(), last.end, "end of the last frame");
    }
    match (&doc.damage, reader.damage()) {
        (None, None) => {}
        (Some(d), Some(p)) => assert_eq!((&d.path, d.offset), (&p.path, p.offset)),
        (d, p) => panic!("damage: document {d:?}, LogReader {p:?}"),
    }
    doc
}

// ---------------------------------------------------------------------------------------
// Logs written through the public API.
// ---------------------------------------------------------------------------------------

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        recycle_segments: 4,
        merge: Some(MergeOperator::Add),
        request_ids: IdHorizon {
            ids: 1024,
            age: None,
        },
        ..Config::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{:05}", i % 97).into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i}|").into_bytes();
    v.resize(40 + (i * 37) % 700, b'0' + (i % 10) as u8);
    v
}

fn id(i: usize) -> [u8; 16] {
    (0xD0C0_0000_0000_0000_0000_0000_0000_0000u128 + i as u128).to_le_bytes()
}

/// The write operations `write_round(_, _, n)` submits (a batch's each count).
fn ops_of_round(n: usize) -> u32 {
    (0..n).map(|j| [1, 1, 1, 4, 1, 2, 1][j % 7]).sum()
}

/// A mix of every kind of write; `round` varies keys and values. Returns the request ids it
/// logged, with the batches that logged them.
fn write_round(engine: &Engine, round: usize, n: usize) -> Vec<([u8; 16], u64)> {
    let mut ids = Vec::new();
    let mut tickets = Vec::new();
    for j in 0..n {
        let i = round * 1000 + j;
        match j % 7 {
            0 => tickets.push(engine.put(&key(i), &value(i)).unwrap()),
            1 => tickets.push(engine.delete(&key(i + 3)).unwrap()),
            2 => tickets.push(engine.merge(b"counter", &1i64.to_le_bytes()).unwrap()),
            3 => {
                let mut b = WriteBatch::new();
                b.put(&key(i), &value(i))
                    .delete(&key(i + 1))
                    .merge(b"counter", &2i64.to_le_bytes())
                    .put(b"", &value(i + 1));
                tickets.push(engine.write(&b).unwrap());
            }
            4 => {
                let t = engine.put_with_id(id(i), &key(i), &value(i)).unwrap();
                ids.push((id(i), u64::from(t.wait().unwrap().seq())));
            }
            5 => {
                let mut b = WriteBatch::new();
                b.put(&key(i), b"").put(&key(i + 2), &value(i));
                let t = engine.write_with_id(id(i), &b).unwrap();
                ids.push((id(i), u64::from(t.wait().unwrap().seq())));
            }
            _ => {
                let t = engine.delete_with_id(id(i), &key(i + 5)).unwrap();
                ids.push((id(i), u64::from(t.wait().unwrap().seq())));
            }
        }
        if j % 13 == 12 {
            // Single waited writes make single-record frames too.
            tickets.pop().unwrap().wait().unwrap();
        }
    }
    for t in tickets {
        t.wait().unwrap();
    }
    ids
}

/// Copies the log files of `from` (not `LOCK`) into a new directory.
fn copy_log(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name != "LOCK" && p.is_file() {
            std::fs::copy(&p, to.path().join(name)).unwrap();
        }
    }
    to
}

/// Reads batches up to `seq` and commits it.
fn consume_to(consumer: &mut mergelog::Consumer, seq: u64) {
    while u64::from(consumer.next_seq()) <= seq {
        consumer.try_next().unwrap().expect("a durable batch");
    }
    consumer.commit(seq).unwrap();
}

/// The flag sets the document says a frame may carry, as seen in `log`.
fn flag_sets(log: &DocLog) -> std::collections::BTreeSet<u32> {
    log.batches.iter().map(|b| b.flags).collect()
}

#[test]
fn every_feature_reads_the_same_from_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut logged_ids = write_round(&engine, 0, 300);
    let mut consumer = engine.consumer("audit.v1").unwrap();
    consume_to(&mut consumer, 5);
    logged_ids.extend(write_round(&engine, 1, 300));
    let doc = agree(dir.path());
    assert!(
        doc.segments.len() >= 3,
        "the log rolled: {:?}",
        doc.segments
    );
    assert_eq!(
        read_consumer(&dir.path().join("consumer-audit.v1")),
        Ok(u64::from(engine.consumers().unwrap()[0].committed))
    );

    // Retirement: the ids of the retired batches go to `ids`, the files into the pool.
    let cut = doc.segments[2].header.id;
    consume_to(&mut consumer, cut - 1);
    let retired = engine.retire_before(cut).unwrap();
    assert_eq!(retired.segments, 2);
    let carried = read_ids(&dir.path().join("ids")).unwrap();
    let mut expect: Vec<_> = logged_ids
        .iter()
        .filter(|(_, s)| *s < cut)
        .copied()
        .collect();
    expect.sort_by_key(|&(i, s)| (s, i));
    assert_eq!(
        carried.iter().map(|(i, s, _)| (*i, *s)).collect::<Vec<_>>(),
        expect,
        "the ids file holds the retired batches' ids, oldest batch first, then by id"
    );
    for (_, seq, time) in &carried {
        // "at or a little before the commit time in the trailer of the frame that logs it"
        let b = doc.batches.iter().find(|b| b.seq == *seq).unwrap();
        let commit = b.commit_time.unwrap();
        assert!(
            *time <= commit && commit - *time < 60_000_000_000,
            "id time {time}, frame {commit}"
        );
    }
    assert_eq!(
        read_consumer(&dir.path().join(format!("consumer-{}", "audit.v1"))),
        Ok(cut - 1)
    );

    // Recycled segments, and a compaction.
    let last_before_round2 = u64::from(engine.replay().unwrap().next_seq()) - 1;
    logged_ids.extend(write_round(&engine, 2, 600));
    // "ops_acknowledged counts the write operations the frame acknowledges, including those
    // coalesced away".
    let acked: u32 = agree(dir.path())
        .batches
        .iter()
        .filter(|b| b.seq > last_before_round2)
        .map(|b| b.ops_acknowledged)
        .sum();
    assert_eq!(acked, ops_of_round(600));
    let end = u64::from(engine.replay().unwrap().next_seq()) - 1;
    consume_to(&mut consumer, end);
    let compacted = engine.compact().unwrap();
    assert!(compacted.batches >= 1, "{compacted:?}");
    logged_ids.extend(write_round(&engine, 3, 100));
    let doc = agree(dir.path());
    assert!(
        doc.segments
            .iter()
            .any(|s| s.header.flags & HEADER_RECYCLED != 0),
        "a recycled segment: {:?}",
        doc.segments
    );
    let sets = flag_sets(&doc);
    assert!(sets.contains(&(FRAME_SORTED | FRAME_TRAILER)), "{sets:?}");
    assert!(
        sets.contains(&(FRAME_SORTED | FRAME_TRAILER | FRAME_COMPACTION)),
        "{sets:?}"
    );
    for b in doc
        .batches
        .iter()
        .filter(|b| b.flags & FRAME_COMPACTION != 0)
    {
        assert!(b.ids.is_empty() && b.ops_acknowledged == 0);
        assert!(b.records.iter().all(|r| r.0 == OP_PUT));
    }
    assert!(doc.segments.iter().all(|s| s.header.version == 4));

    assert!(
        doc.batches
            .iter()
            .any(|b| b.records.iter().any(|r| r.1.is_empty())),
        "an empty key"
    );
    assert!(doc
        .batches
        .iter()
        .any(|b| b.records.iter().any(|r| r.0 == OP_DELETE)));

    // The merge results are plain puts: the counter's last logged value is the total.
    let counter = doc
        .batches
        .iter()
        .flat_map(|b| &b.records)
        .rfind(|r| r.1 == b"counter")
        .unwrap();
    assert_eq!(counter.0, OP_PUT);
    assert_eq!(
        Some(counter.2.clone()),
        engine.read_to_vec(b"counter").unwrap()
    );

    // An unclean end: a copy of the open engine's files.
    let copy = copy_log(dir.path());
    assert_eq!(read_clean(copy.path()), None);
    let copied = agree(copy.path());
    assert_eq!(copied.batches.len(), doc.batches.len());
    assert_eq!(copied.junk_after_end, None);
    assert!(LogReader::check(
        copy.path(),
        RecoveryMode::AbsoluteConsistency,
        config().durability
    )
    .unwrap()
    .is_none());

    // The clean close: the mark names the last segment, the end of its frames and the next
    // batch.
    drop(consumer);
    engine.close().unwrap();
    drop(engine);
    let doc = agree(dir.path());
    let last = doc.segments.last().unwrap();
    assert_eq!(
        read_clean(dir.path()),
        Some(DocClean {
            last_segment: last.header.id,
            end: last.end,
            next_seq: doc.next_seq().unwrap(),
        })
    );

    // Reopened, the engine remembers every id the document reads, at its batch.
    let engine = Engine::open(dir.path(), config()).unwrap();
    let doc_ids: Vec<([u8; 16], u64)> = read_ids(&dir.path().join("ids"))
        .unwrap()
        .into_iter()
        .map(|(i, s, _)| (i, s))
        .chain(
            doc.batches
                .iter()
                .flat_map(|b| b.ids.iter().map(|i| (*i, b.seq))),
        )
        .collect();
    for (i, s) in &logged_ids {
        assert!(doc_ids.contains(&(*i, *s)), "id {i:?} at {s}");
        assert_eq!(engine.request_id_seq(*i).map(u64::from), Some(*s));
    }
    assert_eq!(
        u64::from(engine.consumers().unwrap()[0].committed),
        read_consumer(&dir.path().join("consumer-audit.v1")).unwrap()
    );
    engine.close().unwrap();
}

#[test]
fn plain_group_commit_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        Config {
            coalesce: false,
            compaction: Compaction::OnDemand,
            ..config()
        },
    )
    .unwrap();
    let mut tickets = Vec::new();
    for i in 0..400 {
        tickets.push(engine.put(&key(i % 5), &value(i)).unwrap());
        if i % 50 == 0 {
            tickets.push(engine.delete(&key(i % 5)).unwrap());
        }
    }
    for t in tickets {
        t.wait().unwrap();
    }
    engine.close().unwrap();
    let doc = agree(dir.path());
    assert!(doc.batches.iter().all(|b| b.flags == FRAME_TRAILER));
    let acked: u32 = doc.batches.iter().map(|b| b.ops_acknowledged).sum();
    assert_eq!(acked, 400 + 8);
    assert!(doc
        .batches
        .iter()
        .all(|b| b.ops_acknowledged as usize == b.records.len()));
    assert!(doc.batches.iter().any(|b| {
        let keys: std::collections::BTreeSet<_> = b.records.iter().map(|r| &r.1).collect();
        keys.len() < b.records.len()
    }));
}

// ---------------------------------------------------------------------------------------
// Bad bytes: what the document calls invalid is what the engine refuses, where it says.
// ---------------------------------------------------------------------------------------

/// A frame as "Frames" lays it out, from the document: header, records, trailer, padding
/// (`pad` fills the padding, which "readers ignore").
fn encode_frame(
    seq: u64,
    flags: u32,
    ops_acknowledged: u32,
    records: &[(u8, &[u8], &[u8])],
    trailer: Option<(&[[u8; 16]], u64)>,
    pad: u8,
) -> Vec<u8> {
    let mut body = Vec::new();
    for (op, k, v) in records {
        body.push(*op);
        body.extend_from_slice(&(k.len() as u16).to_le_bytes());
        body.extend_from_slice(&(v.len() as u32).to_le_bytes());
        body.extend_from_slice(k);
        body.extend_from_slice(v);
    }
    if let Some((ids, time)) = trailer {
        for id in ids {
            body.extend_from_slice(id);
        }
        body.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&time.to_le_bytes());
    }
    let mut f = Vec::new();
    f.extend_from_slice(b"MLFR");
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&(records.len() as u32).to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&ops_acknowledged.to_le_bytes());
    f.extend_from_slice(&body);
    let crc = crc32c(&f[8..]);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f.resize(align8(f.len()), pad);
    f
}

/// A change made to the bytes of a file.
type Change = Box<dyn Fn(&mut Vec<u8>)>;

/// Stores the frame CRC of the frame at `off` again after a change to its bytes.
fn fix_frame_crc(seg: &mut [u8], off: usize) {
    let body_len = u32_at(seg, off + 8) as usize;
    let crc = crc32c(&seg[off + 8..off + FRAME_HEADER_LEN + body_len]);
    seg[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
}

fn fix_header_crc(seg: &mut [u8]) {
    let crc = crc32c(&seg[0..60]);
    seg[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Where an error says the damage is.
fn error_at(e: &Error) -> Option<(PathBuf, u64)> {
    match e {
        Error::Corrupt { path, offset, .. } | Error::DamagedHistory { path, offset, .. } => {
            Some((path.clone(), *offset))
        }
        _ => None,
    }
}

/// A closed log of several segments, every frame with records, ids in some.
fn base_log() -> (tempfile::TempDir, DocLog) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    write_round(&engine, 0, 500);
    engine.close().unwrap();
    drop(engine);
    let doc = agree(dir.path());
    assert!(doc.segments.len() >= 3, "{:?}", doc.segments);
    (dir, doc)
}

/// A copy of `dir` with `change` made to the bytes of file `name`.
fn changed(dir: &Path, name: &Path, change: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let copy = copy_log(dir);
    let path = copy.path().join(name.file_name().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    change(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    copy
}

/// The document and the engine's reader judge `dir` alike: the same batches if the document
/// finds nothing wrong, else an error (or, in the last segment, a stop) at the same file and
/// offset. Returns the document's damage.
fn judged_alike(what: &str, dir: &Path) -> Option<DocDamage> {
    let doc = read_log(dir);
    match LogReader::open(dir) {
        Ok(_) => {
            agree(dir);
        }
        Err(e) => {
            let Some(d) = &doc.damage else {
                panic!("{what}: the document reads it whole, the engine refuses: {e}")
            };
            let here = (dir.join(d.path.file_name().unwrap()), d.offset);
            assert_eq!(
                error_at(&e),
                Some(here),
                "{what}: document {d:?}, engine {e}"
            );
        }
    }
    doc.damage
}

#[test]
fn frames_the_document_calls_bad_are_refused_where_it_says() {
    let (dir, doc) = base_log();
    // The second frame of the second segment: damage there is before the last segment, so
    // every mode refuses it, at its offset.
    let seg = &doc.segments[1];
    // Past its first frame, one of several records whose first key is not empty (the
    // workload writes the empty key, which a sorted frame puts first; which frames hold it
    // depends on how the windows were cut): "keys not ascending" makes that key larger.
    let frame = doc
        .batches
        .iter()
        .filter(|b| b.segment == seg.path)
        .skip(1)
        .find(|b| {
            b.records.len() >= 2
                && b.flags == FRAME_SORTED | FRAME_TRAILER
                && !b.records[0].1.is_empty()
        })
        .expect("a frame of several records in the second segment")
        .clone();
    let off = frame.offset as usize;
    let body = off + FRAME_HEADER_LEN;
    let body_len = frame.frame_len; // an upper bound, enough for the checks below
    let _ = body_len;
    let bad: Vec<(&str, Change)> = vec![
        ("magic", Box::new(move |b| b[off] = b'X')),
        ("crc", Box::new(move |b| b[body + 3] ^= 1)),
        ("crc stored", Box::new(move |b| b[off + 4] ^= 1)),
        (
            "body_len past the segment",
            Box::new(move |b| {
                put_u32(b, off + 8, 1 << 30);
            }),
        ),
        (
            "unknown flag",
            Box::new(move |b| {
                put_u32(b, off + 24, FRAME_SORTED | FRAME_TRAILER | 8);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "high flag",
            Box::new(move |b| {
                put_u32(b, off + 24, FRAME_SORTED | FRAME_TRAILER | 1 << 31);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "record_count too high",
            Box::new(move |b| {
                let n = u32_at(b, off + 12);
                put_u32(b, off + 12, n + 1);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "record_count too low",
            Box::new(move |b| {
                let n = u32_at(b, off + 12);
                put_u32(b, off + 12, n - 1);
                put_u32(b, off + 28, n - 1);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "op 3",
            Box::new(move |b| {
                b[body] = 3;
                fix_frame_crc(b, off);
            }),
        ),
        (
            "op 0",
            Box::new(move |b| {
                b[body] = 0;
                fix_frame_crc(b, off);
            }),
        ),
        (
            "ops_acknowledged below record_count",
            Box::new(move |b| {
                let n = u32_at(b, off + 12);
                put_u32(b, off + 28, n - 1);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "COMPACTION acknowledging writes",
            Box::new(move |b| {
                put_u32(b, off + 24, FRAME_SORTED | FRAME_TRAILER | FRAME_COMPACTION);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "keys not ascending",
            Box::new(move |b| {
                // The first key's bytes made larger than any other's.
                let key_len = u16_at(b, body + 1) as usize;
                assert!(key_len > 0);
                b[body + 7..body + 7 + key_len].fill(0xFF);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "trailer reserved",
            Box::new(move |b| {
                let body_len = u32_at(b, off + 8) as usize;
                b[body + body_len - 12] = 1;
                fix_frame_crc(b, off);
            }),
        ),
        (
            "trailer ids past the body",
            Box::new(move |b| {
                let body_len = u32_at(b, off + 8) as usize;
                put_u32(b, body + body_len - 16, 1 << 20);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "trailer ids eat a record",
            Box::new(move |b| {
                let body_len = u32_at(b, off + 8) as usize;
                let n = u32_at(b, body + body_len - 16);
                put_u32(b, body + body_len - 16, n + 1);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "a key past its record",
            Box::new(move |b| {
                let key_len = u16_at(b, body + 1);
                b[body + 1..body + 3].copy_from_slice(&(key_len + 1).to_le_bytes());
                fix_frame_crc(b, off);
            }),
        ),
        (
            "another batch's sequence",
            Box::new(move |b| {
                let s = u64_at(b, off + 16);
                b[off + 16..off + 24].copy_from_slice(&(s + 1).to_le_bytes());
                fix_frame_crc(b, off);
            }),
        ),
    ];
    for (what, change) in &bad {
        let copy = changed(dir.path(), &seg.path, change);
        let damage = judged_alike(what, copy.path());
        assert_eq!(
            damage.map(|d| d.offset),
            Some(off as u64),
            "{what}: the document finds it bad"
        );
        assert!(LogReader::open_with(copy.path(), RecoveryMode::AbsoluteConsistency).is_err());
    }

    let good: Vec<(&str, Change)> = vec![
        (
            "SORTED cleared",
            Box::new(move |b| {
                put_u32(b, off + 24, FRAME_TRAILER);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "ops_acknowledged above record_count",
            Box::new(move |b| {
                put_u32(b, off + 28, u32::MAX);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "a commit time of 0",
            Box::new(move |b| {
                let body_len = u32_at(b, off + 8) as usize;
                b[body + body_len - 8..body + body_len].fill(0);
                fix_frame_crc(b, off);
            }),
        ),
    ];
    for (what, change) in &good {
        let copy = changed(dir.path(), &seg.path, change);
        assert_eq!(judged_alike(what, copy.path()), None, "{what}");
    }
}

#[test]
fn segment_headers_and_versions_read_as_the_document_says() {
    let (dir, doc) = base_log();
    let seg = &doc.segments[1];
    let end = seg.end as usize;
    let header = |version: u32, flags: u32| {
        move |b: &mut Vec<u8>| {
            put_u32(b, 8, version);
            put_u32(b, 32, flags);
            fix_header_crc(b);
        }
    };
    let bad: Vec<(&str, Change)> = vec![
        ("magic", Box::new(|b| b[7] = b'T')),
        ("crc", Box::new(|b| b[17] ^= 0x80)),
        ("version 0", Box::new(header(0, 0))),
        ("version 6", Box::new(header(6, 0))),
        (
            "version 1 with RECYCLED",
            Box::new(header(1, HEADER_RECYCLED)),
        ),
        (
            "version 4 with REWRITTEN",
            Box::new(header(4, HEADER_REWRITTEN)),
        ),
        (
            "version 5 with both flags",
            Box::new(header(5, HEADER_RECYCLED | HEADER_REWRITTEN)),
        ),
        ("an unknown flag", Box::new(header(5, 4))),
        (
            "header length",
            Box::new(|b| {
                put_u32(b, 12, 72);
                fix_header_crc(b);
            }),
        ),
        (
            "reserved",
            Box::new(|b| {
                b[40] = 1;
                fix_header_crc(b);
            }),
        ),
        (
            "size not the length",
            Box::new(|b| {
                let size = u64_at(b, 24) - 8;
                b[24..32].copy_from_slice(&size.to_le_bytes());
                fix_header_crc(b);
            }),
        ),
        (
            "id not the name",
            Box::new(|b| {
                let id = u64_at(b, 16) + 1;
                b[16..24].copy_from_slice(&id.to_le_bytes());
                fix_header_crc(b);
            }),
        ),
        ("truncated", Box::new(|b| b.truncate(b.len() - 4096))),
        (
            "a size not a multiple of 8",
            Box::new(move |b| {
                b.truncate(end + 28);
                b[24..32].copy_from_slice(&(end as u64 + 28).to_le_bytes());
                fix_header_crc(b);
            }),
        ),
        ("shorter than a header", Box::new(|b| b.truncate(60))),
    ];
    for (what, change) in &bad {
        let copy = changed(dir.path(), &seg.path, change);
        let damage = judged_alike(what, copy.path());
        assert_eq!(damage.map(|d| d.offset), Some(0), "{what}");
    }
    // Frames with a trailer in a version 1 or 2 segment: "a reader does not check a frame's
    // flags against its segment's version". A version 5 header with no flag, or RECYCLED,
    // reads as a segment that is not rewritten; REWRITTEN as one whose frames end at the end
    // marker.
    let good: Vec<(&str, Change)> = vec![
        ("version 1", Box::new(header(1, 0))),
        ("version 2", Box::new(header(2, 0))),
        ("version 2 recycled", Box::new(header(2, HEADER_RECYCLED))),
        ("version 3", Box::new(header(3, 0))),
        ("version 5", Box::new(header(5, 0))),
        ("version 5 recycled", Box::new(header(5, HEADER_RECYCLED))),
        ("version 5 rewritten", Box::new(header(5, HEADER_REWRITTEN))),
        // "segments of one log may differ in size"; the frames end "where fewer than 32
        // bytes remain".
        (
            "a shorter file, its size stated",
            Box::new(move |b| {
                b.truncate(end + 24);
                b[24..32].copy_from_slice(&(end as u64 + 24).to_le_bytes());
                fix_header_crc(b);
            }),
        ),
        (
            "rewritten, as long as its frames",
            Box::new(move |b| {
                b.truncate(end);
                b[24..32].copy_from_slice(&(end as u64).to_le_bytes());
                put_u32(b, 8, 5);
                put_u32(b, 32, HEADER_REWRITTEN);
                fix_header_crc(b);
            }),
        ),
    ];
    for (what, change) in &good {
        let copy = changed(dir.path(), &seg.path, change);
        assert_eq!(judged_alike(what, copy.path()), None, "{what}");
        let read = read_log(copy.path());
        assert_eq!(read.batches.len(), doc.batches.len(), "{what}");
        assert!(
            read.batches
                .iter()
                .zip(&doc.batches)
                .all(|(a, b)| a.content() == b.content()),
            "{what}"
        );
    }
}

#[test]
fn frames_written_from_the_document_read_back() {
    let (dir, doc) = base_log();
    let last = doc.segments.last().unwrap();
    let next = doc.next_seq().unwrap();
    let ids = [[7u8; 16], [3u8; 16]];
    let frames: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "every op, ids, padding of ones",
            encode_frame(
                next,
                FRAME_SORTED | FRAME_TRAILER,
                9,
                &[
                    (OP_PUT, b"", b"empty key"),
                    (OP_DELETE, b"a", b""),
                    (OP_PUT, b"b", b"x"),
                ],
                Some((&ids, 1234)),
                0xAA,
            ),
            true,
        ),
        (
            "no trailer (version 1 and 2 frames)",
            encode_frame(
                next,
                0,
                2,
                &[(OP_PUT, b"z", b"1"), (OP_PUT, b"z", b"2")],
                None,
                0,
            ),
            true,
        ),
        (
            "no records, one id",
            encode_frame(
                next,
                FRAME_SORTED | FRAME_TRAILER,
                0,
                &[],
                Some((&ids[..1], 5)),
                0,
            ),
            true,
        ),
        (
            "an empty frame",
            encode_frame(next, 0, 0, &[], None, 0),
            true,
        ),
        (
            "a compaction frame",
            encode_frame(
                next,
                FRAME_SORTED | FRAME_TRAILER | FRAME_COMPACTION,
                0,
                &[(OP_PUT, b"k", b"v")],
                Some((&[], 9)),
                0,
            ),
            true,
        ),
        (
            "a delete with a value",
            encode_frame(
                next,
                FRAME_TRAILER,
                1,
                &[(OP_DELETE, b"k", b"v")],
                Some((&[], 9)),
                0,
            ),
            false,
        ),
        (
            "a key twice in a SORTED frame",
            encode_frame(
                next,
                FRAME_SORTED,
                2,
                &[(OP_PUT, b"k", b""), (OP_PUT, b"k", b"")],
                None,
                0,
            ),
            false,
        ),
        (
            "a trailer shorter than its 16 fixed bytes",
            {
                let mut f = encode_frame(next, FRAME_TRAILER, 0, &[], None, 0);
                // body_len 8 of zeros: no room for n, reserved and the commit time.
                f.extend_from_slice(&[0; 8]);
                f[8..12].copy_from_slice(&8u32.to_le_bytes());
                let crc = crc32c(&f[8..40]);
                f[4..8].copy_from_slice(&crc.to_le_bytes());
                f
            },
            false,
        ),
    ];
    for (what, frame, valid) in frames {
        // Appended after the last frame of a log that was not closed cleanly (a clean mark
        // would name its end): a frame of the next batch, or a torn tail.
        let copy = changed(dir.path(), &last.path, |b| {
            let at = last.end as usize;
            b[at..at + frame.len()].copy_from_slice(&frame);
        });
        std::fs::remove_file(copy.path().join("CLEAN")).unwrap();
        let read = read_log(copy.path());
        let damage = judged_alike(what, copy.path());
        if valid {
            assert_eq!(damage, None, "{what}");
            assert_eq!(read.batches.len(), doc.batches.len() + 1, "{what}");
        } else {
            assert_eq!(damage.map(|d| d.offset), Some(last.end), "{what}");
        }
    }
}

#[test]
fn torn_tails_and_the_clean_mark() {
    let (dir, doc) = base_log();
    let last = doc.segments.last().unwrap();
    let tail = doc.batches.last().unwrap().clone();
    assert_eq!(tail.segment, last.path);
    let clean = read_clean(dir.path()).unwrap();
    assert_eq!(clean.next_seq, tail.seq + 1);
    let torn = |b: &mut Vec<u8>| {
        // The second half of the last frame never reached the disk.
        let from = tail.offset as usize + tail.frame_len / 2;
        b[from..tail.offset as usize + tail.frame_len].fill(0);
    };

    // After an unclean end (no mark): a torn tail, cut by the default mode, refused by
    // `AbsoluteConsistency`.
    let copy = changed(dir.path(), &last.path, torn);
    std::fs::remove_file(copy.path().join("CLEAN")).unwrap();
    let damage = judged_alike("torn", copy.path()).unwrap();
    assert_eq!(damage.offset, tail.offset);
    let checked = LogReader::check(copy.path(), RecoveryMode::default(), config().durability)
        .unwrap()
        .unwrap();
    assert_eq!(
        (checked.path.file_name(), checked.offset),
        (last.path.file_name(), tail.offset)
    );
    assert!(LogReader::check(
        copy.path(),
        RecoveryMode::AbsoluteConsistency,
        config().durability
    )
    .is_err());
    let engine = Engine::open(copy.path(), config()).unwrap();
    let cut = engine.open_report().truncated.clone().unwrap();
    assert_eq!(cut.offset, tail.offset);
    engine.close().unwrap();
    drop(engine);
    let reopened = agree(copy.path());
    assert_eq!(reopened.batches.len(), doc.batches.len() - 1);
    assert!(reopened
        .batches
        .iter()
        .zip(&doc.batches)
        .all(|(a, b)| a.content() == b.content()));
    assert_eq!(
        read_clean(copy.path()).unwrap(),
        DocClean {
            last_segment: last.header.id,
            end: tail.offset,
            next_seq: tail.seq,
        }
    );

    // With the clean mark naming the end past it: damage to durable history.
    let copy = changed(dir.path(), &last.path, torn);
    let e =
        LogReader::check(copy.path(), RecoveryMode::default(), config().durability).unwrap_err();
    assert!(matches!(e, Error::DamagedHistory { .. }), "{e}");
    assert_eq!(error_at(&e).map(|(_, o)| o), Some(tail.offset));

    // "The bound on undurable frames": a bad frame followed by a valid one 16 or more batches
    // on is damage to durable history; closer to the end, a torn tail.
    let in_last: Vec<&DocBatch> = doc
        .batches
        .iter()
        .filter(|b| b.segment == last.path)
        .collect();
    assert!(
        in_last.len() > 20,
        "{} frames in the last segment",
        in_last.len()
    );
    for back in [15, 16, 17] {
        let bad = in_last[in_last.len() - 1 - back];
        let copy = changed(dir.path(), &last.path, |b| {
            b[bad.offset as usize + FRAME_HEADER_LEN] ^= 1;
        });
        std::fs::remove_file(copy.path().join("CLEAN")).unwrap();
        let checked = LogReader::check(copy.path(), RecoveryMode::default(), config().durability);
        // The frames after the bad one run up to batch `tail.seq`: `back` batches past it.
        if back >= 16 {
            match checked {
                Err(Error::DamagedHistory {
                    offset,
                    first_lost,
                    last_lost,
                    ..
                }) => assert_eq!(
                    (offset, first_lost, last_lost),
                    (bad.offset, bad.seq, tail.seq),
                    "{back}"
                ),
                other => panic!("{back} frames before the end: {other:?}"),
            }
        } else {
            assert_eq!(
                checked.unwrap().map(|d| d.offset),
                Some(bad.offset),
                "{back}"
            );
        }
    }

    // A mark that is no mark ("Anything else in the file ... is no mark"): a torn tail again.
    let no_marks: Vec<(&str, Change)> = vec![
        (
            "reserved",
            Box::new(|b| {
                b[12] = 1;
                let crc = crc32c(&b[0..40]);
                b[40..44].copy_from_slice(&crc.to_le_bytes());
            }),
        ),
        ("last field", Box::new(|b| b[44] = 1)),
        ("crc", Box::new(|b| b[41] ^= 1)),
        (
            "version",
            Box::new(|b| {
                b[8] = 2;
                let crc = crc32c(&b[0..40]);
                b[40..44].copy_from_slice(&crc.to_le_bytes());
            }),
        ),
        ("length", Box::new(|b| b.push(0))),
    ];
    for (what, change) in &no_marks {
        let copy = changed(dir.path(), &last.path, torn);
        let mark = copy.path().join("CLEAN");
        let mut b = std::fs::read(&mark).unwrap();
        change(&mut b);
        std::fs::write(&mark, b).unwrap();
        assert_eq!(read_clean(copy.path()), None, "{what}");
        let checked = LogReader::check(copy.path(), RecoveryMode::default(), config().durability);
        assert_eq!(
            checked
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .map(|d| d.offset),
            Some(tail.offset),
            "{what}"
        );
    }
}

#[test]
fn side_files_the_document_calls_bad_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    write_round(&engine, 0, 500);
    let mut consumer = engine.consumer("c").unwrap();
    let segments = engine.segments();
    let kept = u64::from(segments[1].first_seq);
    consume_to(&mut consumer, kept - 1);
    assert_eq!(engine.retire_before(kept).unwrap().segments, 1);
    // "Created at 'nothing consumed' (the batch before the log's first)".
    drop(engine.consumer("late").unwrap());
    assert_eq!(
        read_consumer(&dir.path().join("consumer-late")),
        Ok(kept - 1)
    );
    drop(consumer);
    engine.close().unwrap();
    drop(engine);
    let ids = read_ids(&dir.path().join("ids")).unwrap();
    assert!(!ids.is_empty());
    // The kept room: "as long as a file of twice `Config::request_ids.ids` ids ..., in whole
    // 4 KiB blocks"; `ids` runs past its contents once exchanged with it.
    let room = (28 + 64 * config().request_ids.ids as u64).div_ceil(4096) * 4096;
    for name in ["ids", "ids.tmp"] {
        let len = std::fs::metadata(dir.path().join(name)).map(|m| m.len());
        assert_eq!(len.ok(), Some(room), "{name}");
    }
    assert_eq!(read_consumer(&dir.path().join("consumer-c")), Ok(kept - 1));

    let opens = |copy: &Path| {
        Engine::open(copy, config()).and_then(|e| {
            e.consumers()?;
            e.close()
        })
    };
    assert!(opens(copy_log(dir.path()).path()).is_ok());
    let resealed = |b: &mut Vec<u8>, crc_at: usize| {
        let crc = crc32c(&b[0..crc_at]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    };
    let bad_consumers: Vec<(&str, Change)> = vec![
        ("crc", Box::new(|b| b[16] ^= 1)),
        (
            "reserved",
            Box::new(move |b| {
                b[13] = 1;
                resealed(b, 24);
            }),
        ),
        ("last field", Box::new(|b| b[31] = 1)),
        (
            "version",
            Box::new(move |b| {
                b[8] = 2;
                resealed(b, 24);
            }),
        ),
        (
            "above 2^62",
            Box::new(move |b| {
                b[16..24].copy_from_slice(&((1u64 << 62) + 1).to_le_bytes());
                resealed(b, 24);
            }),
        ),
        ("length", Box::new(|b| b.push(0))),
    ];
    for (what, change) in &bad_consumers {
        let copy = changed(dir.path(), &dir.path().join("consumer-c"), change);
        assert!(
            read_consumer(&copy.path().join("consumer-c")).is_err(),
            "{what}"
        );
        let e = opens(copy.path()).expect_err(what);
        assert!(matches!(e, Error::Corrupt { .. }), "consumer {what}: {e}");
    }
    let n = ids.len();
    let end = 24 + 32 * n;
    let bad_ids: Vec<(&str, Change)> = vec![
        ("crc", Box::new(move |b| b[end - 1] ^= 1)),
        (
            "reserved",
            Box::new(move |b| {
                b[12] = 1;
                resealed(b, end);
            }),
        ),
        (
            "version 3",
            Box::new(move |b| {
                b[8] = 3;
                resealed(b, end);
            }),
        ),
        (
            "version 1 with room after it",
            Box::new(move |b| {
                b[8] = 1;
                resealed(b, end);
                b.truncate(end + 8);
            }),
        ),
        (
            "count past the file",
            Box::new(move |b| {
                let len = b.len() as u64;
                b[16..24].copy_from_slice(&len.to_le_bytes());
            }),
        ),
    ];
    for (what, change) in &bad_ids {
        let copy = changed(dir.path(), &dir.path().join("ids"), change);
        assert!(read_ids(&copy.path().join("ids")).is_err(), "{what}");
        let e = opens(copy.path()).expect_err(what);
        assert!(matches!(e, Error::Corrupt { .. }), "ids {what}: {e}");
    }
    let good_ids: Vec<(&str, Change)> = vec![
        (
            "version 1, exact",
            Box::new(move |b| {
                b[8] = 1;
                resealed(b, end);
                b.truncate(end + 4);
            }),
        ),
        ("version 2, no room", Box::new(move |b| b.truncate(end + 4))),
        (
            "version 2, junk in the room",
            Box::new(move |b| {
                b.truncate(end + 4);
                b.extend_from_slice(&[0xEE; 100]);
            }),
        ),
    ];
    for (what, change) in &good_ids {
        let copy = changed(dir.path(), &dir.path().join("ids"), change);
        assert_eq!(
            read_ids(&copy.path().join("ids")).as_ref(),
            Ok(&ids),
            "{what}"
        );
        let engine = Engine::open(copy.path(), config()).unwrap();
        for (id, seq, _) in &ids {
            assert_eq!(
                engine.request_id_seq(*id).map(u64::from),
                Some(*seq),
                "{what}"
            );
        }
        engine.close().unwrap();
    }
}

/// "A frame that fails a check after the CRC was written that way by a writer: it is a bug,
/// not damage." So the default mode does not take it for a torn tail and zero it, even as the
/// last frame after an unclean end: a torn write cannot leave a frame whose CRC matches. It
/// refuses, changing nothing (the frame may hold acknowledged writes); `PointInTime` cuts.
#[test]
fn a_whole_frame_that_breaks_a_rule_is_refused_not_cut() {
    let (dir, doc) = base_log();
    let last = doc.segments.last().unwrap();
    let tail = doc.batches.last().unwrap().clone();
    let off = tail.offset as usize;
    let rules: Vec<(&str, Change)> = vec![
        (
            "unknown flag",
            Box::new(move |b| {
                put_u32(b, off + 24, FRAME_SORTED | FRAME_TRAILER | 8);
                fix_frame_crc(b, off);
            }),
        ),
        (
            "op 3",
            Box::new(move |b| {
                b[off + FRAME_HEADER_LEN] = 3;
                fix_frame_crc(b, off);
            }),
        ),
        (
            "record_count",
            Box::new(move |b| {
                let n = u32_at(b, off + 12);
                put_u32(b, off + 12, n + 1);
                fix_frame_crc(b, off);
            }),
        ),
    ];
    for (what, change) in &rules {
        let copy = changed(dir.path(), &last.path, change);
        std::fs::remove_file(copy.path().join("CLEAN")).unwrap();
        let seg = copy.path().join(last.path.file_name().unwrap());
        let before = std::fs::read(&seg).unwrap();
        assert_eq!(
            read_log(copy.path()).damage.map(|d| d.offset),
            Some(tail.offset),
            "{what}"
        );
        let checked = LogReader::check(copy.path(), RecoveryMode::default(), config().durability);
        let e = checked.expect_err(what);
        assert_eq!(
            error_at(&e),
            Some((seg.clone(), tail.offset)),
            "{what}: {e}"
        );
        let e = Engine::open(copy.path(), config())
            .map(|_| ())
            .expect_err(what);
        assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
        assert_eq!(
            error_at(&e),
            Some((seg.clone(), tail.offset)),
            "{what}: {e}"
        );
        assert!(
            std::fs::read(&seg).unwrap() == before,
            "{what}: nothing changed"
        );
        let engine = Engine::open(
            copy.path(),
            Config {
                recovery: RecoveryMode::PointInTime,
                ..config()
            },
        )
        .unwrap();
        assert_eq!(
            engine.open_report().truncated.as_ref().map(|d| d.offset),
            Some(tail.offset),
            "{what}"
        );
        engine.close().unwrap();
    }
}

/// A directory follower waiting at the live end of the last segment meets a frame written
/// whole (its CRC matches) that breaks a rule: no write in progress can become it, so it is
/// damage, `Error::Corrupt` at the frame, as `LogReader::check` and recovery say; before, the
/// follower took it for the end of the log and waited at it for ever (`Ok(None)`).
#[test]
fn a_directory_follower_reports_a_whole_frame_that_breaks_a_rule_not_waits() {
    let (dir, doc) = base_log();
    let last = doc.segments.last().unwrap();
    let tail = doc.batches.last().unwrap().clone();
    let (off, len) = (tail.offset as usize, tail.frame_len);
    // The log one frame shorter: the tail frame zeroed, kept to be written back wrong.
    let mut frame = Vec::new();
    let copy = changed(dir.path(), &last.path, |b| {
        frame = b[off..off + len].to_vec();
        b[off..off + len].fill(0);
    });
    std::fs::remove_file(copy.path().join("CLEAN")).unwrap();
    let seg = copy.path().join(last.path.file_name().unwrap());
    let reader = LogReader::open(copy.path()).unwrap();
    let mut follower = reader.follow(tail.seq - 1);
    let before = follower
        .try_next()
        .unwrap()
        .expect("the batch before the tail");
    assert_eq!(before.seq.get(), tail.seq - 1);
    assert!(
        follower.try_next().unwrap().is_none(),
        "the log's end, for now"
    );
    // The frame lands whole, with a flag no build defines (its CRC made to match).
    put_u32(&mut frame, 24, FRAME_SORTED | FRAME_TRAILER | 8);
    fix_frame_crc(&mut frame, 0);
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &frame, off as u64).unwrap();
    let e = follower
        .try_next()
        .map(|b| b.map(|b| b.seq))
        .expect_err("a whole frame that breaks a rule is damage, not the log's end");
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert_eq!(error_at(&e), Some((seg, tail.offset)), "{e}");
}

/// "A recycled segment before the last ends after exactly the batches up to the next
/// segment's id, whatever follows them (a frame with the next segment's first batch right
/// there is an error: files that do not belong together)."
#[test]
fn a_recycled_segment_ends_at_the_next_ones_id() {
    let dir = tempfile::tempdir().unwrap();
    // A recycled segment holds old bytes past its frames only where the
    // old file's frames ran further than the new ones, which depends on
    // how the batches fell: write rounds until one does (each round has
    // about even odds per recycled segment).
    let mut found = None;
    for round in 1..=8 {
        let engine = Engine::open(dir.path(), config()).unwrap();
        if round == 1 {
            write_round(&engine, 0, 400);
        }
        let segments = engine.segments();
        engine
            .retire_before(segments[segments.len() - 1].first_seq)
            .unwrap();
        write_round(&engine, round, 700);
        engine.close().unwrap();
        drop(engine);
        let doc = agree(dir.path());
        let old_bytes_past_end = |s: &DocSegment| {
            let bytes = std::fs::read(&s.path).unwrap();
            bytes[s.end as usize..].iter().any(|&b| b != 0)
        };
        found = doc
            .segments
            .iter()
            .enumerate()
            .position(|(i, s)| {
                s.header.flags & HEADER_RECYCLED != 0
                    && i + 1 < doc.segments.len()
                    && old_bytes_past_end(s)
            })
            .map(|i| (i, doc));
        if found.is_some() {
            break;
        }
    }
    let (i, doc) = found.expect("a recycled segment before the last, old bytes past its frames");
    let seg = &doc.segments[i];
    let next = doc.segments[i + 1].header.id;
    let frame = encode_frame(next, FRAME_TRAILER, 0, &[], Some((&[], 1)), 0);
    let copy = changed(dir.path(), &seg.path, |b| {
        let at = seg.end as usize;
        b[at..at + frame.len()].copy_from_slice(&frame);
    });
    let damage = judged_alike("runs on", copy.path());
    assert_eq!(damage.map(|d| d.offset), Some(seg.end));
    // Any other frame there is old bytes, not read.
    let frame = encode_frame(next + 1, FRAME_TRAILER, 0, &[], Some((&[], 1)), 0);
    let copy = changed(dir.path(), &seg.path, |b| {
        let at = seg.end as usize;
        b[at..at + frame.len()].copy_from_slice(&frame);
    });
    assert_eq!(judged_alike("old bytes", copy.path()), None);
}
