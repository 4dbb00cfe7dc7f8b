//! What the fuzz targets check, shared with the ordinary test suite.
//!
//! The cargo-fuzz targets in `fuzz_targets/` are one-line wrappers around [`decode_frame`] and
//! [`open_dir`]; `tests/fuzz_corpus.rs` includes this file as a module (`#[path]`) and runs
//! every committed corpus and regression input through the same two functions, so an input
//! that once crashed a target is replayed by every `cargo test`.
//!
//! Both functions panic on a violated property (the fuzzer's crash signal) and return
//! normally otherwise. They depend only on `mergelog` and `tempfile`, which both the fuzz
//! crate and the root package's dev-dependencies provide.

use mergelog::internals::format::{
    self, frame_len, Decoded, FrameWriter, RecordOp, SegmentHeader, FRAME_HEADER_LEN, FRAME_MAGIC,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};
use mergelog::{
    Config, Durability, Engine, Error, LogReader, RecoveryMode, WindowPolicy, WritePath,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "follow.rs"]
mod follow;
#[path = "side_files.rs"]
mod side_files;
pub use follow::{follow_dir, real_log_dirs, FollowInput, Mutation};
pub use side_files::{side_files, Change, SideInput};

/// Target `decode_frame`: the input is a segment image. The header decoder and the frame
/// decoder (at every 8-aligned offset, which lands on frames, inside them and on garbage) must
/// never panic, and whatever they accept must hold up: a decoded header re-encodes to the same
/// 64 bytes (a version 2 header without flags to the same fields under version 1); a decoded frame lies in bounds, its records walk exactly to the end of its body
/// with the header's count, a sorted frame strictly ascends, and re-encoding it reproduces its
/// bytes (the decoder accepts only what the writer would write). Then the frames are walked
/// as a reader does, from offset 64, each starting where the previous one ended.
pub fn decode_frame(data: &[u8]) {
    if let Ok(h) = SegmentHeader::decode(data) {
        let again = h.encode();
        assert_eq!(SegmentHeader::decode(&again), Ok(h));
        if again[8..12] == data[8..12] {
            assert_eq!(&again[..], &data[..SEGMENT_HEADER_LEN]);
        } else {
            // A version 2 header without flags is written as version 1: the same fields,
            // with another version and CRC.
            assert_eq!(&again[..8], &data[..8]);
            assert_eq!(&again[12..60], &data[12..60]);
        }
    }
    for offset in (0..=data.len()).step_by(8) {
        check_frame_at(data, offset);
    }
    // Offsets past the end are "no room for a header", never an out-of-bounds read.
    for offset in [data.len() + 1, data.len() + 8, usize::MAX - 7, usize::MAX] {
        assert!(matches!(
            format::decode_frame(data, offset),
            Ok(Decoded::End)
        ));
    }
    // The reader's walk: frame after frame from the first frame offset.
    let mut offset = SEGMENT_HEADER_LEN;
    while let Ok(Decoded::Frame(f)) = format::decode_frame(data, offset) {
        assert!(
            f.end_offset() as usize > offset,
            "a frame must advance the walk"
        );
        offset = f.end_offset() as usize;
    }
}

fn check_frame_at(data: &[u8], offset: usize) {
    let frame = match format::decode_frame(data, offset) {
        Ok(Decoded::Frame(frame)) => frame,
        Ok(Decoded::End) => {
            // End only where there is no room for a header or the header is all zeros.
            let rest = data.len().saturating_sub(offset);
            assert!(
                rest < FRAME_HEADER_LEN
                    || data[offset..offset + FRAME_HEADER_LEN]
                        .iter()
                        .all(|&b| b == 0),
                "End at offset {offset} over a non-zero header"
            );
            return;
        }
        Err(e) => {
            assert_eq!(e.offset, offset as u64, "an error names the frame's offset");
            return;
        }
    };
    assert_eq!(&data[offset..offset + 4], &FRAME_MAGIC[..]);
    assert_eq!(frame.offset, offset as u64);
    assert_eq!(frame.len, frame_len(frame.body.len()));
    assert!(offset + frame.len <= data.len());
    assert_eq!(frame.end_offset(), (offset + frame.len) as u64);

    let mut records = frame.records();
    let mut count = 0u32;
    let mut prev: Option<&[u8]> = None;
    loop {
        let at = records.offset() as usize;
        let Some(r) = records.next() else { break };
        assert_eq!(data[at], r.op as u8);
        assert_eq!(&data[at + RECORD_HEADER_LEN..][..r.key.len()], r.key);
        assert!(r.op == RecordOp::Put || r.value.is_empty());
        if frame.is_sorted() {
            assert!(prev < Some(r.key), "sorted frame out of order");
        }
        prev = Some(r.key);
        count += 1;
    }
    assert_eq!(
        records.offset(),
        (offset + FRAME_HEADER_LEN + frame.body.len()) as u64
    );
    assert_eq!(count, frame.record_count);
    assert!(frame.ops_acknowledged >= frame.record_count);

    let mut again = vec![0u8; frame.len];
    let mut w = FrameWriter::new(&mut again, frame.batch_seq, frame.flags);
    for r in frame.records() {
        w.push(r.op, r.key, r.value);
    }
    assert_eq!(w.finish(frame.ops_acknowledged), frame.len);
    let written = FRAME_HEADER_LEN + frame.body.len();
    assert_eq!(&again[..written], &data[offset..offset + written]);
}

/// How an `open_dir` input is laid out (see [`OpenDirInput::parse`]).
#[derive(Clone, Debug)]
pub struct OpenDirInput {
    /// The input hits a case `MERGELOG_FUZZ_AVOID` names: `open_dir` does nothing with it.
    pub skip: bool,
    /// Segment files: (id, bytes). Ids are distinct.
    pub segments: Vec<(u64, Vec<u8>)>,
    /// Also leave a zero-filled `prep-1.tmp` of the engine's segment size (adopted at open).
    pub prep_file: bool,
    /// Engine write path and durability.
    pub mmap: bool,
    pub sync: bool,
    /// After a successful open: put one key and wait for it.
    pub put: bool,
}

/// Whether `MERGELOG_FUZZ_AVOID` (a comma-separated list) names `what`: a way to keep fuzzing
/// past a known, reported library bug without rediscovering it on every run. Tokens: `id0`
/// (skip inputs with a segment id 0), `idmax` (skip inputs with a segment id within 64 of
/// `u64::MAX`). Skipped inputs are not run at all, so an input means the same with or without
/// the setting, and what a run finds reproduces without it. The regression inputs stay in
/// `fuzz/regressions/`, and `tests/fuzz_corpus.rs` never sets this, so they keep failing there
/// until the bug is fixed.
fn avoid(what: &str) -> bool {
    static AVOID: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    AVOID
        .get_or_init(|| {
            std::env::var("MERGELOG_FUZZ_AVOID")
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .iter()
        .any(|t| t == what)
}

/// Segment size of the engine that `open_dir` opens (the smallest the config allows).
pub const ENGINE_SEGMENT_BYTES: u64 = 64 << 10;

const FIX_HEADERS: u8 = 1 << 2;
const FIX_FRAME_CRCS: u8 = 1 << 3;
const MMAP: u8 = 1 << 4;
const SYNC: u8 = 1 << 5;
const PREP: u8 = 1 << 6;
const PUT: u8 = 1 << 7;
/// Size selector bit: with `FIX_HEADERS`, the header is a rewritten segment's.
const REWRITTEN_HEADER: u16 = 1 << 14;
/// Bytes that describe one segment: id selector, size (u16 LE).
const SEGMENT_DESC: usize = 3;

impl OpenDirInput {
    /// Derives a directory from fuzz bytes:
    ///
    /// - byte 0, control: bits 0–1 the segment count (1–3); bit 2 rewrite each segment header
    ///   to be valid for its file name and size; bit 3 fix the CRC of every frame reachable
    ///   from offset 64 (so that mutations get past the CRC into the record checks); bit 4
    ///   the mmap write path; bit 5 `Sync` durability; bit 6 a prepared segment file; bit 7
    ///   a put after open.
    /// - per segment, 3 bytes: an id selector (first segment: 0, 1, a small id, or one near
    ///   `u64::MAX`; later ones: the previous id plus 1–15) and a little-endian `u16` size
    ///   selector (64 + 8·(s mod 120) bytes, or 64 + (s mod 960) when bit 15 is set: not a
    ///   multiple of 8; bit 14 is not part of the size: with control bit 2, the header is
    ///   made a rewritten segment's, version 5, so that the files after it whose ids lie
    ///   inside its batches are taken for the segments it replaced).
    /// - the rest: the segments' contents one after the other, zero-padded to each size
    ///   (zeros are what a preallocated segment holds).
    pub fn parse(data: &[u8]) -> OpenDirInput {
        let control = data.first().copied().unwrap_or(0);
        let count = 1 + usize::from(control & 3) % 3;
        let mut descs = data.get(1..).unwrap_or(&[]);
        let mut content = data.get(1 + count * SEGMENT_DESC..).unwrap_or(&[]);
        let mut segments: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut skip = false;
        for i in 0..count {
            let mut desc = [0u8; SEGMENT_DESC];
            let n = descs.len().min(SEGMENT_DESC);
            desc[..n].copy_from_slice(&descs[..n]);
            descs = &descs[n..];
            let sel = desc[0];
            let size_sel = u16::from_le_bytes([desc[1], desc[2]]);
            let rewritten = size_sel & REWRITTEN_HEADER != 0;
            let size_sel = size_sel & !REWRITTEN_HEADER;
            let size = if size_sel & 0x8000 == 0 {
                64 + 8 * (usize::from(size_sel) % 120)
            } else {
                64 + usize::from(size_sel) % 960
            };
            let mut bytes = vec![0u8; size];
            let n = content.len().min(size);
            bytes[..n].copy_from_slice(&content[..n]);
            content = &content[n..];
            let id = if i == 0 {
                Some(match sel % 8 {
                    0 => 0,
                    1..=4 => 1,
                    5 => u64::MAX - u64::from(sel >> 3) % 4,
                    6 => 2 + u64::from(sel >> 3),
                    _ => u64::MAX / 2 + u64::from(sel >> 3),
                })
            } else {
                let prev = segments.last().map_or(1, |s| s.0);
                prev.checked_add(u64::from(sel % 16))
            };
            let Some(id) = id else { continue };
            if (id == 0 && avoid("id0")) || (id > u64::MAX - 64 && avoid("idmax")) {
                skip = true;
            }
            if segments.iter().any(|s| s.0 == id) {
                continue;
            }
            if control & FIX_HEADERS != 0 {
                fix_header(&mut bytes, id, rewritten);
            }
            if control & FIX_FRAME_CRCS != 0 {
                fix_frame_crcs(&mut bytes);
            }
            segments.push((id, bytes));
        }
        OpenDirInput {
            skip,
            segments,
            prep_file: control & PREP != 0,
            mmap: control & MMAP != 0,
            sync: control & SYNC != 0,
            put: control & PUT != 0,
        }
    }

    /// The inverse of `parse` for seed corpora: segments are given whole (their headers and
    /// frames already valid), ids must follow the selector rules. Returns `None` if an id or
    /// a size cannot be expressed.
    pub fn encode(segments: &[(u64, Vec<u8>)], control_flags: u8) -> Option<Vec<u8>> {
        if segments.is_empty() || segments.len() > 3 {
            return None;
        }
        let mut out = vec![(segments.len() as u8 - 1) | (control_flags & !3)];
        let mut prev = None;
        for (id, bytes) in segments {
            let sel = match prev {
                None => match *id {
                    0 => 0u8,
                    1 => 1,
                    id if (2..2 + 32).contains(&id) => 6 | (((id - 2) as u8) << 3),
                    _ => return None,
                },
                Some(p) => {
                    let d = id.checked_sub(p)?;
                    if !(1..16).contains(&d) {
                        return None;
                    }
                    d as u8
                }
            };
            let size = bytes.len();
            if !(64..64 + 8 * 120).contains(&size) || size % 8 != 0 {
                return None;
            }
            let size_sel = ((size - 64) / 8) as u16;
            out.push(sel);
            out.extend_from_slice(&size_sel.to_le_bytes());
            prev = Some(*id);
        }
        for (_, bytes) in segments {
            out.extend_from_slice(bytes);
        }
        Some(out)
    }

    /// Writes the files into `dir` (which must exist and be empty).
    pub fn materialize(&self, dir: &Path) {
        for (id, bytes) in &self.segments {
            let path = dir.join(format::segment_file_name(*id));
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        }
        if self.prep_file {
            let path = dir.join(format::prep_file_name(1));
            std::fs::write(&path, vec![0u8; ENGINE_SEGMENT_BYTES as usize])
                .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        }
    }

    fn config(&self, recovery: RecoveryMode) -> Config {
        Config {
            ring_bytes: 64 << 10,
            segment_bytes: ENGINE_SEGMENT_BYTES,
            batch_bytes_max: 4096,
            window: WindowPolicy::Immediate,
            write_path: if self.mmap {
                WritePath::Mmap
            } else {
                WritePath::Pwrite
            },
            durability: if self.sync {
                Durability::Sync
            } else {
                Durability::NoSync
            },
            recovery,
            ..Config::default()
        }
    }
}

/// Rewrites bytes 0..64 of a segment image as a valid header for `id` and the image's size
/// (when the size is a valid segment size; otherwise with the size anyway, so the header's
/// CRC holds and the size check is what fails): version 1, or version 5 with the
/// `REWRITTEN` flag if `rewritten`.
fn fix_header(bytes: &mut [u8], id: u64, rewritten: bool) {
    let size = bytes.len() as u64;
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    // Version 1: what a segment without header flags is written as.
    let (version, flags) = match rewritten {
        true => (format::FORMAT_VERSION_REWRITTEN, format::SEGMENT_REWRITTEN),
        false => (1, 0),
    };
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    h[24..32].copy_from_slice(&size.to_le_bytes());
    let crc = crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    if let Ok(decoded) = SegmentHeader::decode(&h) {
        // Where the encoder can say it, it must say the same.
        assert_eq!(decoded.encode(), h);
    }
    bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&h);
}

/// Recomputes the CRC of each frame on the reader's walk from offset 64 that has the frame
/// magic and fits in the image.
fn fix_frame_crcs(bytes: &mut [u8]) {
    let mut off = SEGMENT_HEADER_LEN;
    while off + FRAME_HEADER_LEN <= bytes.len() && bytes[off..off + 4] == FRAME_MAGIC {
        let body_len = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
        let Some(end) = (off + FRAME_HEADER_LEN).checked_add(body_len) else {
            break;
        };
        if off + frame_len(body_len) > bytes.len() {
            break;
        }
        let crc = crc32c(&bytes[off + 8..end]);
        bytes[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
        off += frame_len(body_len);
    }
}

/// CRC-32C, bitwise (inputs are small; this keeps the module free of extra dependencies).
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

type State = BTreeMap<Vec<u8>, Vec<u8>>;

const MODES: [RecoveryMode; 3] = [
    RecoveryMode::TolerateCorruptedTail,
    RecoveryMode::PointInTime,
    RecoveryMode::AbsoluteConsistency,
];

/// How long `open_dir` waits for a put before calling the engine hung.
const WAIT_MAX: Duration = Duration::from_secs(20);

/// Set (by a panic hook the caller installs) when a thread of the engine (`mergelog-*`)
/// panicked. Under libFuzzer any panic aborts the process at once; in `tests/fuzz_corpus.rs`
/// an engine thread's panic would only show as a put that never completes, so the wait below
/// polls this flag to fail at once instead of after `WAIT_MAX`.
pub static ENGINE_THREAD_PANICKED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Waits for a ticket, failing the check if the engine hangs or one of its threads panicked.
fn wait_ticket(t: &mergelog::Ticket, what: &str) -> mergelog::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match t.wait_timeout(Duration::from_millis(20)) {
            Err(Error::Timeout) => {
                assert!(
                    !ENGINE_THREAD_PANICKED.load(std::sync::atomic::Ordering::SeqCst),
                    "{what}: an engine thread panicked (see above)"
                );
                // A hang guard, not a timing check: the engine must answer eventually.
                if started.elapsed() >= WAIT_MAX {
                    panic!("{what}: never completed");
                }
            }
            r => return r.map(drop),
        }
    }
}

/// A scratch directory: under `/dev/shm` when it exists (the engine syncs a lot, and a
/// memory file system makes that free), else the system temp dir.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("mergelog-fuzz-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("mergelog-fuzz-")
        .tempdir()
        .expect("create a temp dir")
}

/// Target `open_dir`: writes 1–3 segment files derived from the input into a fresh directory
/// (see [`OpenDirInput::parse`]), then opens it with `LogReader` in every recovery mode and
/// with `Engine` in every mode (each on a fresh copy, since the engine repairs). Every open
/// must return `Ok` or `Err`, never panic or hang. Beyond that:
///
/// - a reader yields consecutive batch sequence numbers ending right before `next_seq`;
/// - an engine's `for_each`, `len` and `read` agree, and, when a reader in the same mode also
///   opened, the engine's state is the reader's replay (both keep the same valid prefix);
/// - an engine that opened takes a put (when asked) and closes without error (the flusher
///   must not panic); the log it leaves is then clean: it reopens in `AbsoluteConsistency`
///   with the same state.
pub fn open_dir(data: &[u8]) {
    let input = OpenDirInput::parse(data);
    if input.skip {
        return;
    }
    let root = scratch_dir();
    let read_dir = root.path().join("r");
    std::fs::create_dir(&read_dir).expect("mkdir");
    input.materialize(&read_dir);

    let mut reader_states: Vec<Option<State>> = Vec::new();
    for mode in MODES {
        reader_states.push(read_log(&read_dir, mode));
    }
    for (i, mode) in MODES.into_iter().enumerate() {
        let dir = root.path().join(format!("e{i}"));
        std::fs::create_dir(&dir).expect("mkdir");
        input.materialize(&dir);
        open_engine(&input, &dir, mode, reader_states[i].as_ref());
    }
}

/// Opens `dir` with a `LogReader` in `mode` and replays it; `None` if it refused to open.
fn read_log(dir: &Path, mode: RecoveryMode) -> Option<State> {
    let reader = LogReader::open_with(dir, mode).ok()?;
    let mut state = State::new();
    let mut expect: Option<u64> = None;
    for batch in reader.batches() {
        if let Some(e) = expect {
            assert_eq!(batch.seq(), e, "reader batches must be consecutive");
        }
        expect = batch.seq().get().checked_add(1);
        let mut n = 0;
        for r in batch.records() {
            n += 1;
            match r.op {
                RecordOp::Put => {
                    state.insert(r.key.to_vec(), r.value.to_vec());
                }
                RecordOp::Delete => {
                    state.remove(r.key);
                }
            }
        }
        assert_eq!(n, batch.len(), "a batch yields len() records");
    }
    if let Some(e) = expect {
        assert_eq!(reader.next_seq(), e, "next_seq follows the last batch");
    }
    // A follower over the same log must not panic either (bounded: it may wait for more).
    let mut follower = reader.follow(0);
    for _ in 0..8 {
        match follower.try_next() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Some(state)
}

/// The end of a run over an opened engine: a put if the input asks for one (recorded in
/// `state` once durable), then `close`. A failed write is reported (`Err`), not a crash, and
/// the engine may have failed already (e.g. it could not prepare a segment); a refusal of
/// any other kind, or a panic reported by `close`, is a fault. Returns whether the engine
/// closed cleanly without failing (so that reopening it should find `state`).
pub(crate) fn put_then_close(
    engine: Engine,
    state: &mut State,
    put: Option<(Vec<u8>, Vec<u8>)>,
    what: &str,
) -> bool {
    if let Some((key, value)) = put {
        match engine.put(&key, &value) {
            Ok(t) => {
                if wait_ticket(&t, "a put after open").is_ok() {
                    state.insert(key, value);
                }
            }
            Err(Error::Failed(_)) => {}
            Err(e) => panic!("put refused on a freshly opened engine ({what}): {e}"),
        }
    }
    let failed = engine.failure().is_some();
    let closed = engine.close();
    if let Err(e) = &closed {
        assert!(
            !e.to_string().contains("panicked"),
            "close after open ({what}): {e}"
        );
    }
    drop(engine);
    !failed && closed.is_ok()
}

/// The engine's durable state, checking `for_each`, `len` and `read` against each other.
fn engine_state(engine: &Engine) -> State {
    let mut state = State::new();
    engine.for_each(|k, v| {
        assert!(
            state.insert(k.to_vec(), v.to_vec()).is_none(),
            "for_each visited a key twice"
        );
    });
    assert_eq!(engine.len(), state.len(), "len disagrees with for_each");
    for (k, v) in &state {
        match engine.read_to_vec(k) {
            Ok(Some(got)) => assert_eq!(&got, v, "read disagrees with for_each"),
            Ok(None) => panic!("read misses a key for_each visited"),
            // A key longer than key_len_max was logged by someone else: unreadable by key.
            Err(Error::KeyTooLong { .. }) => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
    state
}

/// Every file of `dir`, by name, with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("list the directory") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(&path).expect("read a file"));
        }
    }
    files
}

/// The kind, file and offset of a refusal of damage, if `e` is one.
/// `LogReader::check` must say what `Engine::open` (in the mode `mode`) did: the same damage
/// cut, or the same refusal (kind, file and offset).
pub fn check_agrees_with_open(
    checked: &mergelog::Result<Option<mergelog::Damage>>,
    opened: &mergelog::Result<Engine>,
    mode: &str,
) {
    match (checked, opened) {
        (Ok(damage), Ok(engine)) => assert_eq!(
            damage,
            &engine.open_report().truncated,
            "LogReader::check and Engine::open ({mode}) disagree on the damage cut"
        ),
        (Err(c), Err(o)) if refusal(c).is_some() || refusal(o).is_some() => assert_eq!(
            refusal(c),
            refusal(o),
            "LogReader::check ({c}) and Engine::open ({o}) refuse differently ({mode})"
        ),
        (Err(c), Ok(_)) if refusal(c).is_some() => {
            panic!("LogReader::check refused ({c}) what Engine::open ({mode}) opened")
        }
        (Ok(_), Err(o)) if refusal(o).is_some() => {
            panic!("Engine::open ({mode}) refused ({o}) what LogReader::check accepted")
        }
        _ => {}
    }
}

fn refusal(e: &Error) -> Option<(&'static str, &Path, u64)> {
    match e {
        Error::Corrupt { path, offset, .. } => Some(("Corrupt", path, *offset)),
        Error::DamagedHistory { path, offset, .. } => Some(("DamagedHistory", path, *offset)),
        _ => None,
    }
}

fn open_engine(input: &OpenDirInput, dir: &PathBuf, mode: RecoveryMode, reader: Option<&State>) {
    // `LogReader::check` must say what the open below will do, and change nothing.
    let before = snapshot(dir);
    let durability = input.config(mode).durability;
    let checked = LogReader::check(dir, mode, durability);
    assert!(
        snapshot(dir) == before,
        "LogReader::check changed the directory ({mode:?})"
    );
    let opened = Engine::open(dir, input.config(mode));
    check_agrees_with_open(&checked, &opened, &format!("{mode:?}"));
    let engine = match opened {
        Ok(e) => e,
        Err(Error::Locked(_)) => panic!("Engine::open of an unused directory says Locked"),
        Err(_) => return,
    };
    let mut state = engine_state(&engine);
    if let Some(reader) = reader {
        assert_eq!(&state, reader, "engine and reader ({mode:?}) disagree");
    }
    let put = input.put.then(|| {
        (
            b"fuzz-key".to_vec(),
            input.segments.len().to_le_bytes().to_vec(),
        )
    });
    if !put_then_close(engine, &mut state, put, &format!("{mode:?}")) {
        return;
    }
    // A log the engine opened (and repaired) and closed cleanly is clean.
    let again =
        Engine::open(dir, input.config(RecoveryMode::AbsoluteConsistency)).unwrap_or_else(|e| {
            panic!("a cleanly closed log (opened in {mode:?}) does not reopen: {e}")
        });
    assert_eq!(
        engine_state(&again),
        state,
        "reopened state differs (opened in {mode:?})"
    );
    again.close().expect("close after reopen");
}
