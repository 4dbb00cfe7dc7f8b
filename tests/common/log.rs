//! A log directory on disk: its segment files, listed by the library's one listing
//! (`mergelog::internals::list_segments`), its prepared and pool files, the contents of all
//! its files, and its frames decoded with the format module.

use super::State;
use mergelog::internals::format::{
    decode_frame, parse_prep_file_name, parse_recycle_file_name, Decoded, Frame, RecordOp,
    SegmentHeader, FIRST_BATCH_SEQ, FLAG_COMPACTION, FLAG_SORTED, SEGMENT_HEADER_LEN,
};
use std::path::{Path, PathBuf};

/// One record of a decoded frame, copied out of the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRecord {
    pub put: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// One decoded frame, copied out of the segment.
#[derive(Clone, Debug)]
pub struct LoggedFrame {
    pub segment_id: u64,
    pub offset: u64,
    pub batch_seq: u64,
    pub flags: u32,
    pub ops_acknowledged: u32,
    pub body_len: usize,
    pub records: Vec<LoggedRecord>,
}

impl LoggedFrame {
    pub fn is_sorted(&self) -> bool {
        self.flags & FLAG_SORTED != 0
    }

    pub fn is_compaction(&self) -> bool {
        self.flags & FLAG_COMPACTION != 0
    }
}

/// The segment files of `dir` (`<20 digits>.seg`) in id order: the library's listing,
/// failing the test if the directory cannot be read.
pub fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    mergelog::internals::list_segments(dir)
        .unwrap_or_else(|e| panic!("list the segments of {}: {e}", dir.display()))
}

/// The segments prepared ahead of need in `dir` (`prep-<n>.tmp`) in number order.
pub fn prepared_files(dir: &Path) -> Vec<PathBuf> {
    numbered_files(dir, parse_prep_file_name)
}

/// The pool files of `dir` (retired segments kept for reuse, `recycle-<n>.tmp`) in number
/// order.
pub fn pool_files(dir: &Path) -> Vec<PathBuf> {
    numbered_files(dir, parse_recycle_file_name)
}

/// The files of `dir` whose name `parse` reads a number from, in number order.
fn numbered_files(dir: &Path, parse: fn(&str) -> Option<u64>) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry"))
        .filter_map(|entry| {
            let n = parse(entry.file_name().to_str()?)?;
            Some((n, entry.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, path)| path).collect()
}

/// Every file of `dir` but the lock file, with its bytes, in path order: compare two
/// results to check that something left the directory as it was.
pub fn dir_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.file_name().is_some_and(|n| n != "LOCK"))
        .map(|path| {
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Decodes every frame of every segment of `dir` (the engine must be closed), checking what
/// the format promises across frames: every segment header decodes, names its own file and
/// has the file's size (`segment_bytes` when given); a segment's first frame carries the
/// segment's id; batch sequence numbers are consecutive (from `FIRST_BATCH_SEQ`, or from the
/// first segment's id once a prefix was retired); every frame marked sorted is strictly
/// ascending by key.
pub fn read_log(dir: &Path, segment_bytes: Option<u64>) -> Vec<LoggedFrame> {
    let mut frames: Vec<LoggedFrame> = Vec::new();
    for (id, path) in segment_files(dir) {
        read_segment(id, &path, segment_bytes, &mut frames);
    }
    let first = segment_files(dir).first().map_or(FIRST_BATCH_SEQ, |s| s.0);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            f.batch_seq,
            first + i as u64,
            "batch sequence numbers must be consecutive (segment {}, offset {})",
            f.segment_id,
            f.offset
        );
    }
    frames
}

/// Decodes the frames of segment `id` (at `path`) onto `frames`, checking its header and
/// that its first frame carries its id.
fn read_segment(id: u64, path: &Path, segment_bytes: Option<u64>, frames: &mut Vec<LoggedFrame>) {
    let image = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let header = SegmentHeader::decode(&image)
        .unwrap_or_else(|e| panic!("{}: bad segment header: {e:?}", path.display()));
    assert_eq!(header.segment_id, id, "{}: header id", path.display());
    assert_eq!(
        header.segment_size,
        image.len() as u64,
        "{}: header size vs file size",
        path.display()
    );
    if let Some(size) = segment_bytes {
        assert_eq!(image.len() as u64, size, "{}: file size", path.display());
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut first = true;
    loop {
        let frame = match decode_frame(&image, offset) {
            Ok(Decoded::Frame(f)) => f,
            Ok(Decoded::End) => break,
            Err(e) => panic!("{} offset {offset}: bad frame: {e:?}", path.display()),
        };
        if first {
            assert_eq!(
                frame.batch_seq,
                id,
                "{}: the first frame's batch sequence must be the segment id",
                path.display()
            );
            first = false;
        }
        frames.push(logged_frame(id, &frame, path, offset));
        offset = frame.end_offset() as usize;
    }
}

/// Copies `frame` (at `offset` of segment `id`, at `path`) out of the segment, checking what
/// a frame promises: `record_count` records, at least as many operations acknowledged, and
/// strictly ascending keys if it is marked sorted.
fn logged_frame(id: u64, frame: &Frame<'_>, path: &Path, offset: usize) -> LoggedFrame {
    let records: Vec<LoggedRecord> = frame
        .records()
        .map(|r| LoggedRecord {
            put: r.op == RecordOp::Put,
            key: r.key.to_vec(),
            value: r.value.to_vec(),
        })
        .collect();
    assert_eq!(
        records.len(),
        frame.record_count as usize,
        "{} offset {offset}: records() yields record_count records",
        path.display()
    );
    // A compaction batch copies: it acknowledges nothing; any other at least its records.
    assert!(
        if frame.is_compaction() {
            frame.ops_acknowledged == 0
        } else {
            frame.ops_acknowledged >= frame.record_count
        },
        "{} offset {offset}: ops_acknowledged {} for record_count {}",
        path.display(),
        frame.ops_acknowledged,
        frame.record_count
    );
    if frame.is_sorted() {
        for pair in records.windows(2) {
            assert!(
                pair[0].key < pair[1].key,
                "{} offset {offset}: sorted frame has {:?} before {:?}",
                path.display(),
                pair[0].key,
                pair[1].key
            );
        }
    }
    LoggedFrame {
        segment_id: id,
        offset: frame.offset,
        batch_seq: frame.batch_seq,
        flags: frame.flags,
        ops_acknowledged: frame.ops_acknowledged,
        body_len: frame.body.len(),
        records,
    }
}

/// The state that replaying `frames` in log order gives.
pub fn replay(frames: &[LoggedFrame]) -> State {
    let mut state = State::new();
    for f in frames {
        for r in &f.records {
            if r.put {
                state.insert(r.key.clone(), r.value.clone());
            } else {
                state.remove(&r.key);
            }
        }
    }
    state
}

/// Sequence number the next frame written to `dir` will get.
pub fn next_batch_seq(dir: &Path) -> u64 {
    if !dir.exists() {
        return FIRST_BATCH_SEQ;
    }
    read_log(dir, None)
        .last()
        .map_or(FIRST_BATCH_SEQ, |f| f.batch_seq + 1)
}
