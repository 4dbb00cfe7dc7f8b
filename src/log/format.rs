//! The on-disk format: segment header and batch frames, encoded and decoded.
//!
//! `docs/FORMAT.md` is the byte-level spec and the crash argument; this module is its only
//! implementation. It is pure: no I/O, and no allocation when encoding or decoding frames.
//!
//! One decoder, [`decode_frame`], serves open, replay, `verify` and `dump`. It checks everything a
//! frame says about itself (magic, bounds, CRC, record structure, count, flags, order). What needs
//! more than one frame — batch-sequence continuity, segment id against file name, what to do with a
//! damaged tail — belongs to recovery.
//!
//! The writer asserts on its side of the disk too: in debug builds [`FrameWriter::finish`] decodes
//! the frame it has just encoded, so a frame that is marked sorted but is not never reaches a sync.

use std::fmt;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MRGLOG\x00S";
/// The newest format version this build reads and writes. Version 2 added the segment
/// header flags (bytes 32..36); version 3 the frame trailer ([`FLAG_TRAILER`]: request ids
/// and a commit time); version 4 compaction frames ([`FLAG_COMPACTION`]). This build writes
/// every new segment as version 4, so that an older build refuses the segment instead of
/// taking its frames for damage; it reads all four, and appends to an older segment never
/// (it starts a new one).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format version this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
/// The newest format version this build reads: version 5 is a rewritten segment
/// ([`SEGMENT_REWRITTEN`]), which only in-place compaction writes; every other new segment
/// is [`FORMAT_VERSION`], so that older builds go on reading logs that were never rewritten.
pub const FORMAT_VERSION_MAX: u32 = 5;
/// The format version of a rewritten segment ([`SEGMENT_REWRITTEN`]).
pub const FORMAT_VERSION_REWRITTEN: u32 = 5;
/// Segment header flag (version 2): the file was a retired segment before, so past the end
/// of its frames lie old bytes, not zeros. Its writer ends every frame with an end marker.
pub const SEGMENT_RECYCLED: u32 = 1;
/// Segment header flag (version 5): the segment was rewritten in place by compaction. It
/// holds the frames of one or more consecutive segments (the first one's id is its id), each
/// with its batch sequence, flags and trailer, and only the records that were still live;
/// its size is its length, at most the configured one; nothing is ever appended to it. Files
/// listed after it whose ids lie inside its batches are the segments it replaced, left by a
/// crash before their removal (docs/FORMAT.md, "Recovery"). Never with [`SEGMENT_RECYCLED`].
pub const SEGMENT_REWRITTEN: u32 = 2;
/// The most segments one rewrite replaces (itself, the first, included): at most
/// `REWRITE_RUN_MAX - 1` files it replaced follow a rewritten segment, and recovery refuses
/// more. So a directory follower looks that far back, no further, for the rewritten segment
/// a file it was sent to may be a leftover of.
pub const REWRITE_RUN_MAX: usize = 16;
/// Length of the end marker: one frame header of zeros, which decodes as the end.
pub const END_MARKER_LEN: usize = FRAME_HEADER_LEN;
/// Length of the segment header; the first frame starts right after it.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// First 4 bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"MLFR";
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Length of a record header: `op u8 | key_len u16 | value_len u32`.
pub const RECORD_HEADER_LEN: usize = 7;
/// Frame flag: records strictly ascending by key (bytewise), hence no duplicate keys.
pub const FLAG_SORTED: u32 = 1;
/// Frame flag (version 3): the body ends with a trailer after the records: the request ids
/// the frame logs ([`ID_LEN`] bytes each), their count (u32), a reserved u32 (zero) and the
/// commit time (u64, nanoseconds since the Unix epoch). See [`trailer_len`].
pub const FLAG_TRAILER: u32 = 2;
/// Frame flag (version 4): a compaction batch. Its records are copies of values still live
/// in older segments, rewritten so that those segments can be retired (`Engine::compact`):
/// no new writes, so it acknowledges no operations (`ops_acknowledged` is 0).
pub const FLAG_COMPACTION: u32 = 4;
/// Bytes of one request id in a frame trailer.
pub const ID_LEN: usize = 16;
/// Bytes of a frame trailer besides its ids: count, reserved, commit time.
pub const TRAILER_FIXED_LEN: usize = 4 + 4 + 8;
/// Longest key the format can hold (`key_len` is a `u16`).
pub const KEY_LEN_MAX: usize = u16::MAX as usize;
/// Sequence number of the first batch of a log; it is also the id of the first segment.
pub const FIRST_BATCH_SEQ: u64 = 1;
/// The most frames a writer ever has written and not yet durable: frame `n` is written only
/// once frame `n - UNDURABLE_FRAMES_MAX` is durable. After a crash only those frames can be
/// torn or missing, so recovery takes a valid frame this many batches or more past damage as
/// proof that the damaged frame was durable (docs/FORMAT.md, "Recovery").
pub const UNDURABLE_FRAMES_MAX: u64 = 16;
/// Smallest valid segment: the header plus room for one frame header.
pub const SEGMENT_SIZE_MIN: u64 = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64;

const FLAGS_KNOWN: u32 = FLAG_SORTED | FLAG_TRAILER | FLAG_COMPACTION;
/// The frame CRC covers the frame from this offset (after magic and CRC) to the end of the body.
const FRAME_CRC_START: usize = 8;
/// The segment header CRC covers bytes `0..SEGMENT_CRC_AT` and is stored right after them.
const SEGMENT_CRC_AT: usize = 60;

// What the encoders and decoders below rely on:
// - the first frame starts at `SEGMENT_HEADER_LEN` and each takes `align8(..)` bytes, so
//   frames start 8-aligned (docs/FORMAT.md) only if the segment header's length is a multiple
//   of 8;
// - the segment header's CRC is its last 4 bytes, after its fields (flags end at byte 36);
const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(8));
const _: () = assert!(SEGMENT_CRC_AT + 4 == SEGMENT_HEADER_LEN && SEGMENT_CRC_AT >= 36);
// - the frame header holds magic, CRC (the CRC covers what follows them), body length, record
//   count (u32 each), batch sequence (u64), flags and ops acknowledged (u32 each);
const _: () = assert!(FRAME_CRC_START == 4 + 4);
const _: () = assert!(FRAME_HEADER_LEN == 4 + 4 + 4 + 4 + 8 + 4 + 4);
// - a record header is op (u8), key length (u16, hence `KEY_LEN_MAX`), value length (u32);
const _: () = assert!(RECORD_HEADER_LEN == 1 + 2 + 4 && KEY_LEN_MAX == u16::MAX as usize);
// - a segment size is a multiple of 8 of at least `SEGMENT_SIZE_MIN`, which must be one.
const _: () = assert!(SEGMENT_SIZE_MIN.is_multiple_of(8));

/// Bytes of a frame trailer holding `ids` request ids.
pub fn trailer_len(ids: usize) -> usize {
    ids * ID_LEN + TRAILER_FIXED_LEN
}

/// Rounds `n` up to a multiple of 8.
pub fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes a frame with a `body_len`-byte body occupies in the segment, padding included.
pub fn frame_len(body_len: usize) -> usize {
    align8(FRAME_HEADER_LEN + body_len)
}

/// Bytes one record occupies in a frame body (records are packed, not padded).
pub fn record_len(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len + value_len
}

/// File name of the segment whose first batch is `segment_id`: 20 decimal digits + `.seg`.
pub fn segment_file_name(segment_id: u64) -> String {
    format!("{segment_id:020}.seg")
}

/// The segment id a segment file name encodes, or `None` if `name` is not exactly
/// 20 ASCII digits followed by `.seg` ([`segment_file_digits`]), or its number does not fit
/// a `u64`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    segment_file_digits(name)?.parse().ok()
}

/// The 20 digits of a segment's file name, if `name` is one (exactly 20 ASCII digits
/// followed by `.seg`), whatever number they make: one past `u64::MAX` is a segment's name
/// too, of a batch no log has (refused, never skipped: `dir::list_segments`).
pub fn segment_file_digits(name: &str) -> Option<&str> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// File name of the `n`th retired segment kept for reuse (old bytes inside).
pub fn recycle_file_name(n: u64) -> String {
    format!("recycle-{n}.tmp")
}

/// The number in a [`recycle_file_name`], or `None` if `name` is not one.
pub fn parse_recycle_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, "recycle-")
}

/// File name of the `n`th segment prepared ahead of need (all zeros until activated).
pub fn prep_file_name(n: u64) -> String {
    format!("prep-{n}.tmp")
}

/// The number in a [`prep_file_name`], or `None` if `name` is not one.
pub fn parse_prep_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, "prep-")
}

/// The number `n` in `<prefix><n>.tmp`, decimal digits only, below 2^48 (the engine counts
/// on from the highest it finds, so a number near `u64::MAX` is not one it gave).
fn parse_numbered(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(".tmp")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n < 1 << 48)
}

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOp {
    /// Set the key to the value.
    Put = 1,
    /// Remove the key; the record's value is empty.
    Delete = 2,
}

impl RecordOp {
    /// The op a record's first byte encodes, or `None` for an unknown op code.
    pub fn from_byte(byte: u8) -> Option<RecordOp> {
        match byte {
            1 => Some(RecordOp::Put),
            2 => Some(RecordOp::Delete),
            _ => None,
        }
    }
}

/// The 64-byte header at offset 0 of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the first batch in this segment (also in the file name).
    pub segment_id: u64,
    /// The segment file's length in bytes.
    pub segment_size: u64,
    /// Whether the file is a recycled segment ([`SEGMENT_RECYCLED`]).
    pub recycled: bool,
    /// Whether the file is a rewritten segment ([`SEGMENT_REWRITTEN`]; version 5).
    pub rewritten: bool,
    /// The format version the header states: what its frames may hold (version 3: frame
    /// trailers). A writer appends only to a segment of [`FORMAT_VERSION`].
    pub version: u32,
}

impl SegmentHeader {
    /// The header of a new segment, as this build writes it: version [`FORMAT_VERSION`].
    pub fn new(segment_id: u64, segment_size: u64, recycled: bool) -> SegmentHeader {
        SegmentHeader {
            segment_id,
            segment_size,
            recycled,
            rewritten: false,
            version: FORMAT_VERSION,
        }
    }

    /// The header of a rewritten segment ([`SEGMENT_REWRITTEN`]): version
    /// [`FORMAT_VERSION_REWRITTEN`], `segment_size` its whole length.
    pub fn rewritten(segment_id: u64, segment_size: u64) -> SegmentHeader {
        SegmentHeader {
            segment_id,
            segment_size,
            recycled: false,
            rewritten: true,
            version: FORMAT_VERSION_REWRITTEN,
        }
    }

    /// The 64 header bytes, CRC included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        debug_assert!(
            segment_size_valid(self.segment_size),
            "segment size {} is not a multiple of 8 or below {SEGMENT_SIZE_MIN}",
            self.segment_size
        );
        debug_assert!(
            (FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&self.version)
                && (self.version >= 2 || !self.recycled)
                && (self.version >= FORMAT_VERSION_REWRITTEN || !self.rewritten)
                && !(self.recycled && self.rewritten),
            "segment header version {} cannot state recycled = {}, rewritten = {}",
            self.version,
            self.recycled,
            self.rewritten
        );
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.segment_size.to_le_bytes());
        let flags = if self.recycled { SEGMENT_RECYCLED } else { 0 }
            | if self.rewritten { SEGMENT_REWRITTEN } else { 0 };
        b[32..36].copy_from_slice(&flags.to_le_bytes());
        // 36..60 reserved, zero.
        let crc = crc32c::crc32c(&b[..SEGMENT_CRC_AT]);
        b[SEGMENT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes the header from the first 64 bytes of `bytes` (a whole segment image will do).
    ///
    /// Checks, in order: length, magic, version, CRC, header length, reserved bytes zero,
    /// flags (known to the version, not both), segment size. Whether the size matches the file and the id matches the file name is
    /// for the caller to check.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        use FormatErrorKind::*;
        let err = |kind| Err(FormatError { offset: 0, kind });
        let Some(b) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return err(SegmentHeaderTruncated {
                len: bytes.len() as u64,
            });
        };
        if b[0..8] != SEGMENT_MAGIC {
            return err(BadSegmentMagic);
        }
        let version = le_u32(b, 8);
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&version) {
            return err(UnsupportedVersion(version));
        }
        let stored = le_u32(b, SEGMENT_CRC_AT);
        let computed = crc32c::crc32c(&b[..SEGMENT_CRC_AT]);
        if stored != computed {
            return err(BadSegmentHeaderCrc { stored, computed });
        }
        let header_len = le_u32(b, 12);
        if header_len as usize != SEGMENT_HEADER_LEN {
            return err(BadSegmentHeaderLength(header_len));
        }
        // Version 1 reserves bytes 32..60; version 2 gives 32..36 to the header flags.
        let flags = if version >= 2 { le_u32(b, 32) } else { 0 };
        let reserved_from = if version >= 2 { 36 } else { 32 };
        if b[reserved_from..SEGMENT_CRC_AT].iter().any(|&x| x != 0) {
            return err(SegmentReservedNotZero);
        }
        let known = if version >= FORMAT_VERSION_REWRITTEN {
            SEGMENT_RECYCLED | SEGMENT_REWRITTEN
        } else {
            SEGMENT_RECYCLED
        };
        if flags & !known != 0 || flags == SEGMENT_RECYCLED | SEGMENT_REWRITTEN {
            return err(UnknownSegmentFlags(flags));
        }
        let segment_size = le_u64(b, 24);
        if !segment_size_valid(segment_size) {
            return err(BadSegmentSize(segment_size));
        }
        Ok(SegmentHeader {
            segment_id: le_u64(b, 16),
            segment_size,
            recycled: flags & SEGMENT_RECYCLED != 0,
            rewritten: flags & SEGMENT_REWRITTEN != 0,
            version,
        })
    }
}

pub(crate) fn segment_size_valid(size: u64) -> bool {
    size >= SEGMENT_SIZE_MIN && size.is_multiple_of(8)
}

/// Encodes one frame in place into `buf` (the memory map or a write buffer), which must be at
/// least `frame_len(body_len)` long; the caller sizes it from `record_len` sums.
///
/// Records go straight to their final place; the header is written by [`FrameWriter::finish`].
/// A record pushed when the body is `n` bytes long lands at `FRAME_HEADER_LEN + n` in `buf`.
pub struct FrameWriter<'a> {
    buf: &'a mut [u8],
    batch_seq: u64,
    flags: u32,
    body_len: usize,
    record_count: u32,
}

impl<'a> FrameWriter<'a> {
    pub fn new(buf: &'a mut [u8], batch_seq: u64, flags: u32) -> Self {
        debug_assert!(
            buf.len() >= FRAME_HEADER_LEN,
            "frame buffer shorter than a frame header"
        );
        debug_assert_eq!(flags & !FLAGS_KNOWN, 0, "unknown frame flags {flags:#x}");
        FrameWriter {
            buf,
            batch_seq,
            flags,
            body_len: 0,
            record_count: 0,
        }
    }

    /// Appends one record. A `Delete` must have an empty value.
    pub fn push(&mut self, op: RecordOp, key: &[u8], value: &[u8]) {
        // Hard asserts: the casts below would otherwise write a frame whose CRC is valid but
        // which can never be read back. The engine checks these limits at submit.
        assert!(
            key.len() <= KEY_LEN_MAX,
            "key of {} bytes exceeds KEY_LEN_MAX",
            key.len()
        );
        assert!(
            value.len() <= u32::MAX as usize,
            "value of {} bytes exceeds u32",
            value.len()
        );
        debug_assert!(
            op == RecordOp::Put || value.is_empty(),
            "delete with a value"
        );
        let at = FRAME_HEADER_LEN + self.body_len;
        let len = record_len(key.len(), value.len());
        debug_assert!(
            at + len <= self.buf.len(),
            "frame buffer of {} bytes has no room for a {len}-byte record at {at}",
            self.buf.len()
        );
        let (head, rest) = self.buf[at..at + len].split_at_mut(RECORD_HEADER_LEN);
        head[0] = op as u8;
        head[1..3].copy_from_slice(&(key.len() as u16).to_le_bytes());
        head[3..7].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let (k, v) = rest.split_at_mut(key.len());
        k.copy_from_slice(key);
        v.copy_from_slice(value);
        self.body_len += len;
        self.record_count += 1;
    }

    /// Length of the body pushed so far.
    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// Writes the header, CRC and zero padding; returns the frame's total aligned length.
    ///
    /// `ops_acknowledged` counts the write ops this frame acknowledges, including those
    /// coalesced away, so it is at least the number of records. A frame without a trailer
    /// (as versions 1 and 2 write them); the engine writes [`FrameWriter::finish_with`].
    pub fn finish(self, ops_acknowledged: u32) -> usize {
        self.finish_with(ops_acknowledged, None)
    }

    /// As [`FrameWriter::finish`], with the trailer `trailer` after the records (and
    /// [`FLAG_TRAILER`] set) if it is given. The buffer must hold `frame_len(body_len() +
    /// trailer_len(ids))` bytes.
    pub fn finish_with(mut self, ops_acknowledged: u32, trailer: Option<Trailer<'_>>) -> usize {
        if let Some(t) = trailer {
            self.write_trailer(t);
        }
        let body_len = u32::try_from(self.body_len).expect("frame body exceeds u32::MAX bytes");
        let body_end = FRAME_HEADER_LEN + self.body_len;
        let len = frame_len(self.body_len);
        let h = &mut self.buf[..FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[8..12].copy_from_slice(&body_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.record_count.to_le_bytes());
        h[16..24].copy_from_slice(&self.batch_seq.to_le_bytes());
        h[24..28].copy_from_slice(&self.flags.to_le_bytes());
        h[28..32].copy_from_slice(&ops_acknowledged.to_le_bytes());
        let crc = crc32c::crc32c(&self.buf[FRAME_CRC_START..body_end]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf[body_end..len].fill(0);
        if cfg!(debug_assertions) {
            // Assert right before the disk what the reader will check right after it:
            // sortedness, record structure, counts, the trailer.
            match decode_frame(&self.buf[..len], 0) {
                Ok(Decoded::Frame(f))
                    if f.len == len
                        && f.batch_seq == self.batch_seq
                        && f.record_count == self.record_count
                        && f.commit_time == trailer.map(|t| t.commit_time)
                        && f.ids.len() == trailer.map_or(0, |t| t.ids.len() * ID_LEN) => {}
                other => panic!("FrameWriter encoded a frame that does not decode: {other:?}"),
            }
        }
        len
    }

    /// Appends the trailer after the records; no record may follow.
    fn write_trailer(&mut self, t: Trailer<'_>) {
        let at = FRAME_HEADER_LEN + self.body_len;
        let len = trailer_len(t.ids.len());
        let count = u32::try_from(t.ids.len()).expect("more than u32::MAX request ids");
        let dst = &mut self.buf[at..at + len];
        let (ids, fixed) = dst.split_at_mut(t.ids.len() * ID_LEN);
        for (d, id) in ids.chunks_exact_mut(ID_LEN).zip(t.ids) {
            d.copy_from_slice(id);
        }
        fixed[0..4].copy_from_slice(&count.to_le_bytes());
        fixed[4..8].fill(0);
        fixed[8..16].copy_from_slice(&t.commit_time.to_le_bytes());
        self.body_len += len;
        self.flags |= FLAG_TRAILER;
    }
}

/// What a version 3 frame holds after its records (see [`FLAG_TRAILER`]).
#[derive(Clone, Copy, Debug)]
pub struct Trailer<'a> {
    /// The request ids the frame logs, in the order they entered the window.
    pub ids: &'a [[u8; ID_LEN]],
    /// When the frame was written: nanoseconds since the Unix epoch.
    pub commit_time: u64,
}

/// One record of a decoded frame, borrowed from the segment.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// What the record does to its key.
    pub op: RecordOp,
    /// The key (0 to 65,535 bytes).
    pub key: &'a [u8],
    /// Empty for a `Delete`.
    pub value: &'a [u8],
}

/// A frame that passed every check of [`decode_frame`], borrowed from the segment.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Offset of the frame header in the segment.
    pub offset: u64,
    /// Total length including padding: the next frame starts at `offset + len`.
    pub len: usize,
    pub batch_seq: u64,
    pub flags: u32,
    pub record_count: u32,
    pub ops_acknowledged: u32,
    /// The records (without the trailer, if the frame has one).
    pub body: &'a [u8],
    /// The trailer's request ids, [`ID_LEN`] bytes each (empty without a trailer).
    pub ids: &'a [u8],
    /// The trailer's commit time, nanoseconds since the Unix epoch (`None`: no trailer, a
    /// frame of format version 1 or 2).
    pub commit_time: Option<u64>,
}

impl<'a> Frame<'a> {
    /// The request ids the frame logs, in the order they entered the window.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = [u8; ID_LEN]> + 'a {
        self.ids
            .chunks_exact(ID_LEN)
            .map(|c| c.try_into().expect("chunks of ID_LEN"))
    }

    /// The records in log order, zero-copy.
    pub fn records(&self) -> Records<'a> {
        Records {
            body: self.body,
            pos: 0,
            body_offset: self.offset + FRAME_HEADER_LEN as u64,
        }
    }

    /// Whether the frame is a compaction batch ([`FLAG_COMPACTION`]).
    pub fn is_compaction(&self) -> bool {
        self.flags & FLAG_COMPACTION != 0
    }

    /// Whether the frame carries [`FLAG_SORTED`] (and, having decoded, really is sorted).
    pub fn is_sorted(&self) -> bool {
        self.flags & FLAG_SORTED != 0
    }

    /// Offset right after this frame, where the next frame (or the end) is.
    pub fn end_offset(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// Iterator over the records of a [`Frame`].
///
/// It parses without re-validating, relying on `decode_frame` having checked the body; on a
/// malformed body (a `Frame` built by hand) it stops early rather than panic.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    body: &'a [u8],
    pos: usize,
    body_offset: u64,
}

impl<'a> Records<'a> {
    /// Segment offset of the record the next call to `next` returns (for index entries).
    pub fn offset(&self) -> u64 {
        self.body_offset + self.pos as u64
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.pos >= self.body.len() {
            return None;
        }
        let raw = parse_record(self.body, self.pos).ok()?;
        let op = RecordOp::from_byte(raw.op)?;
        self.pos = raw.end;
        Some(Record {
            op,
            key: raw.key,
            value: raw.value,
        })
    }

    /// At most a record per [`RECORD_HEADER_LEN`] bytes left of the body; at least none (a
    /// malformed body ends early). Never the header's `record_count`, which a hand-built
    /// frame may set to anything: it must not drive a collector's allocation.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.body.len().saturating_sub(self.pos);
        (0, Some(left / RECORD_HEADER_LEN))
    }
}

/// What [`decode_frame`] found at an offset.
#[derive(Clone, Copy, Debug)]
pub enum Decoded<'a> {
    Frame(Frame<'a>),
    /// The written log ends here: an all-zero frame header, or no room for one.
    End,
}

/// Decodes the frame at byte `offset` of a whole segment image `seg`.
///
/// Checks, in this order, and reports the first failure: room for a header (else `End`),
/// all-zero header (`End`), magic, frame within the segment, CRC, the trailer well-formed (if
/// `TRAILER`), every record well-formed and exactly filling the body before the trailer,
/// record count, ops valid, unknown flags zero, `SORTED` implies
/// strictly ascending keys, `ops_acknowledged >= record_count` (0 for a compaction frame).
///
/// Never panics and never reads out of bounds, whatever the bytes. O(body), allocation-free.
/// Padding bytes after the body are not covered by the CRC and not read.
pub fn decode_frame(seg: &[u8], offset: usize) -> Result<Decoded<'_>, FormatError> {
    let at = |kind| FormatError {
        offset: offset as u64,
        kind,
    };
    let Some(h) = frame_header(seg, offset).map_err(at)? else {
        return Ok(Decoded::End);
    };
    let body = frame_body(seg, offset, &h).map_err(at)?;
    let (body, trailer) = split_trailer(body, h.flags).map_err(at)?;
    let walk = walk_records(body, h.flags & FLAG_SORTED != 0).map_err(at)?;
    check_header_against_records(&h, &walk).map_err(at)?;
    Ok(Decoded::Frame(Frame {
        offset: offset as u64,
        len: h.len,
        batch_seq: h.batch_seq,
        flags: h.flags,
        record_count: h.record_count,
        ops_acknowledged: h.ops_acknowledged,
        body,
        ids: trailer.map_or(&[][..], |t| t.0),
        commit_time: trailer.map(|t| t.1),
    }))
}

/// Splits a body whose frame has [`FLAG_TRAILER`] into the records and the trailer (ids,
/// commit time); a body without the flag is all records.
#[allow(clippy::type_complexity)]
fn split_trailer(
    body: &[u8],
    flags: u32,
) -> Result<(&[u8], Option<(&[u8], u64)>), FormatErrorKind> {
    if flags & FLAG_TRAILER == 0 {
        return Ok((body, None));
    }
    let bad = |reason| Err(FormatErrorKind::BadTrailer { reason });
    let Some(fixed_at) = body.len().checked_sub(TRAILER_FIXED_LEN) else {
        return bad("the body is shorter than a trailer");
    };
    let fixed = &body[fixed_at..];
    let count = le_u32(fixed, 0) as usize;
    if le_u32(fixed, 4) != 0 {
        return bad("the trailer's reserved bytes are not zero");
    }
    let Some(ids_at) = count
        .checked_mul(ID_LEN)
        .and_then(|n| fixed_at.checked_sub(n))
    else {
        return bad("the trailer's id count runs past the start of the body");
    };
    Ok((
        &body[..ids_at],
        Some((&body[ids_at..fixed_at], le_u64(fixed, 8))),
    ))
}

/// The batch sequence and total length of the frame at `offset`, from its header alone:
/// magic and bounds checked, nothing else (no CRC, no records). Only for stepping over frames
/// a scan has already verified (a reader's view, an engine's published bytes); `None` where
/// [`decode_frame`] would not find a frame whose header says so.
pub fn peek_frame(seg: &[u8], offset: usize) -> Option<(u64, usize)> {
    match frame_header(seg, offset) {
        Ok(Some(h)) => Some((h.batch_seq, h.len)),
        _ => None,
    }
}

/// The batch sequence and the CRC a frame header stores, from the header's first
/// [`FRAME_HEADER_LEN`] bytes of `h` alone: `None` unless its magic is right (nothing else is
/// checked, and the CRC is not computed). Two frames of one batch sequence with one stored
/// CRC are the same frame: the CRC covers the header's other fields, the records and the
/// trailer's commit time. A directory follower compares these to tell whether a frame it
/// yielded is still the one its file holds (`reader::Follower`), reading the header from its
/// mapping or, for a file it does not map, on its own.
pub fn stored_seq_and_crc(h: &[u8]) -> Option<(u64, u32)> {
    let h = h.get(..FRAME_HEADER_LEN)?;
    if h[..4] != FRAME_MAGIC {
        return None;
    }
    Some((le_u64(h, 16), le_u32(h, 4)))
}

/// The fields of a frame header as stored, and the frame's total length.
struct FrameHeader {
    stored_crc: u32,
    body_len: u32,
    record_count: u32,
    batch_seq: u64,
    flags: u32,
    ops_acknowledged: u32,
    /// Total length including padding (it fits in the segment).
    len: usize,
}

/// The first steps of [`decode_frame`]: `None` where the written log ends (no room for a
/// header, or an all-zero one); else the header at `offset`, once its magic is right and the
/// frame lies within the segment.
fn frame_header(seg: &[u8], offset: usize) -> Result<Option<FrameHeader>, FormatErrorKind> {
    use FormatErrorKind::*;
    let avail = seg.len().saturating_sub(offset);
    if avail < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let h = &seg[offset..offset + FRAME_HEADER_LEN];
    if h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != FRAME_MAGIC {
        return Err(BadFrameMagic(magic));
    }
    let stored_crc = le_u32(h, 4);
    let body_len = le_u32(h, 8);
    let record_count = le_u32(h, 12);
    let batch_seq = le_u64(h, 16);
    let flags = le_u32(h, 24);
    let ops_acknowledged = le_u32(h, 28);

    // In u64 so that a huge body_len cannot overflow on any target.
    let len = (FRAME_HEADER_LEN as u64 + u64::from(body_len) + 7) & !7;
    if len > avail as u64 {
        return Err(FrameOutOfBounds {
            body_len: u64::from(body_len),
            room: avail as u64,
        });
    }
    Ok(Some(FrameHeader {
        stored_crc,
        body_len,
        record_count,
        batch_seq,
        flags,
        ops_acknowledged,
        len: len as usize,
    }))
}

/// The body of the frame whose header `h` is at `offset`, once the CRC (over the header past
/// magic and CRC, and the whole body) matches.
fn frame_body<'a>(
    seg: &'a [u8],
    offset: usize,
    h: &FrameHeader,
) -> Result<&'a [u8], FormatErrorKind> {
    let body_start = offset + FRAME_HEADER_LEN;
    let body_end = body_start + h.body_len as usize;
    let computed = crc32c::crc32c(&seg[offset + FRAME_CRC_START..body_end]);
    if computed != h.stored_crc {
        return Err(FormatErrorKind::BadFrameCrc {
            stored: h.stored_crc,
            computed,
        });
    }
    Ok(&seg[body_start..body_end])
}

/// What the pass over a frame's records found, besides its structure.
struct RecordWalk {
    /// Records found.
    found: u32,
    /// The first unknown op byte.
    bad_op: Option<u8>,
    /// The index of the first record whose key is not above the one before (a `SORTED`
    /// frame only).
    unsorted: Option<u32>,
}

/// One pass over the records. Structural errors return at once; the others are remembered
/// and reported afterwards (`check_header_against_records`) so that the documented order
/// holds.
fn walk_records(body: &[u8], sorted: bool) -> Result<RecordWalk, FormatErrorKind> {
    let mut pos = 0;
    let mut found: u32 = 0;
    let mut bad_op = None;
    let mut unsorted = None;
    let mut prev_key: Option<&[u8]> = None;
    while pos < body.len() {
        let raw = match parse_record(body, pos) {
            Ok(raw) => raw,
            Err(reason) => {
                return Err(FormatErrorKind::BadRecord {
                    index: found,
                    reason,
                })
            }
        };
        if bad_op.is_none() && RecordOp::from_byte(raw.op).is_none() {
            bad_op = Some(raw.op);
        }
        if sorted && unsorted.is_none() && prev_key.is_some_and(|p| p >= raw.key) {
            unsorted = Some(found);
        }
        prev_key = Some(raw.key);
        pos = raw.end;
        found += 1; // A record is at least 7 bytes, so this cannot overflow a u32 body.
    }
    Ok(RecordWalk {
        found,
        bad_op,
        unsorted,
    })
}

/// The last steps of [`decode_frame`], in its documented order: record count, ops valid,
/// unknown flags zero, sortedness, `ops_acknowledged >= record_count` (0 for a compaction frame).
fn check_header_against_records(h: &FrameHeader, walk: &RecordWalk) -> Result<(), FormatErrorKind> {
    use FormatErrorKind::*;
    if walk.found != h.record_count {
        return Err(RecordCountMismatch {
            header: h.record_count,
            found: walk.found,
        });
    }
    if let Some(op) = walk.bad_op {
        return Err(BadOp(op));
    }
    if h.flags & !FLAGS_KNOWN != 0 {
        return Err(UnknownFlags(h.flags & !FLAGS_KNOWN));
    }
    if let Some(index) = walk.unsorted {
        return Err(Unsorted { index });
    }
    // A compaction batch acknowledges nothing (it copies); every other batch at least its
    // records (coalesced writes count too).
    let compaction = h.flags & FLAG_COMPACTION != 0;
    if compaction && h.ops_acknowledged != 0 || !compaction && h.ops_acknowledged < h.record_count {
        return Err(BadOpsAcknowledged {
            ops_acknowledged: h.ops_acknowledged,
            record_count: h.record_count,
        });
    }
    Ok(())
}

struct RawRecord<'a> {
    op: u8,
    key: &'a [u8],
    value: &'a [u8],
    /// Body offset right after this record.
    end: usize,
}

/// Parses the record at `pos` of `body`: the one place that knows the record layout on read.
fn parse_record(body: &[u8], pos: usize) -> Result<RawRecord<'_>, &'static str> {
    let Some(h) = body.get(pos..).and_then(|r| r.get(..RECORD_HEADER_LEN)) else {
        return Err("record header runs past the end of the frame body");
    };
    let op = h[0];
    let key_len = usize::from(u16::from_le_bytes([h[1], h[2]]));
    let value_len = le_u32(h, 3) as usize;
    let key_start = pos + RECORD_HEADER_LEN;
    let rest = &body[key_start..];
    if key_len > rest.len() || value_len > rest.len() - key_len {
        return Err("key and value run past the end of the frame body");
    }
    if op == RecordOp::Delete as u8 && value_len != 0 {
        return Err("delete record carries a value");
    }
    let (key, rest) = rest.split_at(key_len);
    Ok(RawRecord {
        op,
        key,
        value: &rest[..value_len],
        end: key_start + key_len + value_len,
    })
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A segment header or frame that failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// Offset in the segment of the structure that failed: 0 for the segment header, else the
    /// frame's first byte (where a point-in-time recovery would cut).
    pub offset: u64,
    pub kind: FormatErrorKind,
}

/// What was wrong. Kinds after `BadFrameCrc` concern frames whose CRC matched, i.e. that a
/// writer produced as they are: a bug, not disk damage.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatErrorKind {
    /// Fewer than 64 bytes where a segment header should be.
    SegmentHeaderTruncated {
        len: u64,
    },
    BadSegmentMagic,
    UnsupportedVersion(u32),
    BadSegmentHeaderCrc {
        stored: u32,
        computed: u32,
    },
    BadSegmentHeaderLength(u32),
    SegmentReservedNotZero,
    /// A version 2 header flag this build does not know.
    UnknownSegmentFlags(u32),
    /// Not a multiple of 8, or below [`SEGMENT_SIZE_MIN`].
    BadSegmentSize(u64),
    /// Neither the frame magic nor an all-zero end marker.
    BadFrameMagic([u8; 4]),
    /// The frame (header, body, padding) does not fit in the `room` bytes from its offset to
    /// the end of the segment.
    FrameOutOfBounds {
        body_len: u64,
        room: u64,
    },
    BadFrameCrc {
        stored: u32,
        computed: u32,
    },
    /// Record `index` (0-based) is malformed.
    BadRecord {
        index: u32,
        reason: &'static str,
    },
    RecordCountMismatch {
        header: u32,
        found: u32,
    },
    BadOp(u8),
    /// The unknown bits that were set.
    UnknownFlags(u32),
    /// The frame is marked sorted but record `index` is not above the one before it.
    Unsorted {
        index: u32,
    },
    BadOpsAcknowledged {
        ops_acknowledged: u32,
        record_count: u32,
    },
    /// The frame says it has a trailer ([`FLAG_TRAILER`]) but it is malformed.
    BadTrailer {
        reason: &'static str,
    },
}

impl FormatErrorKind {
    /// Whether the frame failed a check after its CRC matched: it lies in the segment whole,
    /// as a writer wrote it (a bug, or bytes of another build), never what a torn write
    /// leaves. Recovery does not cut such a frame as a torn tail (docs/FORMAT.md, "Frames").
    pub(crate) fn past_crc(&self) -> bool {
        use FormatErrorKind::*;
        matches!(
            self,
            BadTrailer { .. }
                | BadRecord { .. }
                | RecordCountMismatch { .. }
                | BadOp(_)
                | UnknownFlags(_)
                | Unsorted { .. }
                | BadOpsAcknowledged { .. }
        )
    }

    fn in_segment_header(&self) -> bool {
        use FormatErrorKind::*;
        matches!(
            self,
            SegmentHeaderTruncated { .. }
                | BadSegmentMagic
                | UnsupportedVersion(_)
                | BadSegmentHeaderCrc { .. }
                | BadSegmentHeaderLength(_)
                | SegmentReservedNotZero
                | UnknownSegmentFlags(_)
                | BadSegmentSize(_)
        )
    }
}

const WRITER_BUG: &str =
    "the checksum matches, so mergelog wrote it this way: a bug, please report it";

impl fmt::Display for FormatErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatErrorKind::*;
        match self {
            SegmentHeaderTruncated { len } => write!(
                f,
                "the file is {len} bytes, too short for the {SEGMENT_HEADER_LEN}-byte segment header (truncated?)"
            ),
            BadSegmentMagic => f.write_str(
                "no mergelog segment magic: not a mergelog segment file, or its first bytes are damaged",
            ),
            UnsupportedVersion(v) => write!(
                f,
                "format version {v}, but this build reads only versions {FORMAT_VERSION_MIN} to {FORMAT_VERSION_MAX}: open it with the mergelog that wrote it"
            ),
            BadSegmentHeaderCrc { stored, computed } => write!(
                f,
                "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is damaged"
            ),
            BadSegmentHeaderLength(n) => write!(
                f,
                "header length field is {n}, format version {FORMAT_VERSION} requires {SEGMENT_HEADER_LEN}"
            ),
            SegmentReservedNotZero => f.write_str(
                "reserved header bytes are not zero (32..60 in version 1, 36..60 in version 2)",
            ),
            UnknownSegmentFlags(flags) => write!(
                f,
                "unknown segment header flags {flags:#x} (versions 2 to 4 know only {SEGMENT_RECYCLED:#x}, recycled; version 5 also {SEGMENT_REWRITTEN:#x}, rewritten, never both)"
            ),
            BadSegmentSize(n) => write!(
                f,
                "segment size {n} is not a multiple of 8 of at least {SEGMENT_SIZE_MIN} bytes"
            ),
            BadFrameMagic(m) => write!(
                f,
                "expected the frame magic \"MLFR\" or an all-zero end marker, found {m:02x?}: the log is damaged here"
            ),
            FrameOutOfBounds { body_len, room } => write!(
                f,
                "the header claims a {body_len}-byte body, which with header and padding does not fit in the {room} bytes left in the segment: damaged length or truncated file"
            ),
            BadFrameCrc { stored, computed } => write!(
                f,
                "frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the frame is torn by an interrupted write, or damaged"
            ),
            BadRecord { index, reason } => write!(f, "record {index}: {reason}; {WRITER_BUG}"),
            RecordCountMismatch { header, found } => write!(
                f,
                "the header says {header} records but the body holds {found}; {WRITER_BUG}"
            ),
            BadOp(op) => write!(
                f,
                "unknown record op code {op} (1 = put, 2 = delete); {WRITER_BUG}"
            ),
            UnknownFlags(bits) => write!(
                f,
                "unknown frame flag bits {bits:#x} are set: written by a newer mergelog, or a bug"
            ),
            Unsorted { index } => write!(
                f,
                "the frame is marked sorted but the key of record {index} is not greater than the one before it; {WRITER_BUG}"
            ),
            BadOpsAcknowledged {
                ops_acknowledged,
                record_count,
            } => write!(
                f,
                "the frame acknowledges {ops_acknowledged} ops for its {record_count} records (a compaction frame acknowledges 0, any other at least one per record); {WRITER_BUG}"
            ),
            BadTrailer { reason } => write!(f, "frame trailer: {reason}; {WRITER_BUG}"),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.in_segment_header() {
            write!(f, "invalid segment header: {}", self.kind)
        } else {
            write!(
                f,
                "invalid frame at byte offset {}: {}",
                self.offset, self.kind
            )
        }
    }
}

impl std::error::Error for FormatError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The engine reuses its encode buffer without zeroing it: every byte of a frame must be
    /// written by `FrameWriter`, whatever the buffer held before.
    #[test]
    fn frame_writer_writes_every_byte_of_the_frame() {
        let records: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"bcd", b""), (b"e", b"1234")];
        let encode = |buf: &mut [u8]| {
            let mut w = FrameWriter::new(buf, 42, FLAG_SORTED);
            for (k, v) in records {
                let op = if v.is_empty() {
                    RecordOp::Delete
                } else {
                    RecordOp::Put
                };
                w.push(op, k, v);
            }
            w.finish(5)
        };
        let body: usize = records
            .iter()
            .map(|(k, v)| record_len(k.len(), v.len()))
            .sum();
        let len = frame_len(body);
        assert!(
            len > FRAME_HEADER_LEN + body,
            "the example must need padding"
        );
        let mut clean = vec![0u8; len];
        assert_eq!(encode(&mut clean), len);
        for stale in [0xffu8, 0xa5, 0x01] {
            let mut dirty = vec![stale; len];
            assert_eq!(encode(&mut dirty), len);
            assert_eq!(
                dirty, clean,
                "a byte left over from an earlier frame ({stale:#x})"
            );
        }
    }

    /// An encoder written from the byte tables in FORMAT.md, independent of `FrameWriter`, so
    /// tests can craft frames that the writer would refuse to produce.
    fn raw_frame(body: &[u8], count: u32, seq: u64, flags: u32, ops_ack: u32) -> Vec<u8> {
        let mut f = vec![0u8; frame_len(body.len())];
        f[0..4].copy_from_slice(b"MLFR");
        f[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        f[12..16].copy_from_slice(&count.to_le_bytes());
        f[16..24].copy_from_slice(&seq.to_le_bytes());
        f[24..28].copy_from_slice(&flags.to_le_bytes());
        f[28..32].copy_from_slice(&ops_ack.to_le_bytes());
        f[32..32 + body.len()].copy_from_slice(body);
        reseal_frame(&mut f);
        f
    }

    /// Recomputes the CRC of the frame at the start of `f` after a test edited it.
    fn reseal_frame(f: &mut [u8]) {
        let body_len = le_u32(f, 8) as usize;
        let crc = crc32c::crc32c(&f[8..32 + body_len]);
        f[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    fn raw_record(op: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut r = vec![op];
        r.extend_from_slice(&(key.len() as u16).to_le_bytes());
        r.extend_from_slice(&(value.len() as u32).to_le_bytes());
        r.extend_from_slice(key);
        r.extend_from_slice(value);
        r
    }

    fn body_of(records: &[(u8, &[u8], &[u8])]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|&(op, k, v)| raw_record(op, k, v))
            .collect()
    }

    /// A segment image: header, then `frame` at offset 64, then `tail` zero bytes.
    fn segment_with(frame: &[u8], tail: usize) -> Vec<u8> {
        let size = align8(SEGMENT_HEADER_LEN + frame.len() + tail).max(SEGMENT_SIZE_MIN as usize);
        let mut seg = vec![0u8; size];
        let header = SegmentHeader::new(7, size as u64, false);
        seg[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        seg[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + frame.len()].copy_from_slice(frame);
        seg
    }

    fn decode_err(seg: &[u8], offset: usize) -> FormatErrorKind {
        match decode_frame(seg, offset) {
            Err(e) => {
                assert_eq!(e.offset, offset as u64);
                e.kind
            }
            Ok(d) => panic!("expected an error, decoded {d:?}"),
        }
    }

    fn decode_ok(seg: &[u8], offset: usize) -> Frame<'_> {
        match decode_frame(seg, offset) {
            Ok(Decoded::Frame(f)) => f,
            other => panic!("expected a frame at {offset}, got {other:?}"),
        }
    }

    /// A small frame whose last body byte is nonzero, so zeroing any suffix changes it.
    fn sample_frame() -> Vec<u8> {
        let body = body_of(&[
            (1, b"apple", b"red"),
            (2, b"banana", b""),
            (1, b"cherry", b"dark\x01"),
        ]);
        raw_frame(&body, 3, 42, FLAG_SORTED, 5)
    }

    /// Re-encodes a decoded frame with `FrameWriter`: decoding accepts only canonical bytes, so
    /// this must reproduce header and body exactly.
    fn reencode(f: &Frame<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; f.len];
        let mut w = FrameWriter::new(&mut buf, f.batch_seq, f.flags & !FLAG_TRAILER);
        for r in f.records() {
            w.push(r.op, r.key, r.value);
        }
        assert_eq!(w.body_len(), f.body.len());
        let ids: Vec<[u8; ID_LEN]> = f.ids().collect();
        let trailer = f.commit_time.map(|commit_time| Trailer {
            ids: &ids,
            commit_time,
        });
        assert_eq!(w.finish_with(f.ops_acknowledged, trailer), f.len);
        buf
    }

    /// Everything a consumer of a decoded frame relies on; used on arbitrary accepted input.
    fn check_accepted(seg: &[u8], f: &Frame<'_>) {
        let start = f.offset as usize;
        assert_eq!(f.len % 8, 0);
        assert!(start + f.len <= seg.len());
        let trailer = f.commit_time.map_or(0, |_| trailer_len(f.ids().len()));
        assert_eq!(f.len, frame_len(f.body.len() + trailer));
        assert_eq!(f.ids.len() % ID_LEN, 0);
        let mut recs = f.records();
        let mut n = 0u32;
        let mut prev: Option<&[u8]> = None;
        loop {
            let at = recs.offset() as usize;
            let Some(r) = recs.next() else { break };
            assert_eq!(seg[at], r.op as u8);
            assert_eq!(&seg[at + RECORD_HEADER_LEN..][..r.key.len()], r.key);
            if r.op == RecordOp::Delete {
                assert!(r.value.is_empty());
            }
            if f.is_sorted() {
                assert!(prev < Some(r.key));
            }
            prev = Some(r.key);
            n += 1;
        }
        assert_eq!(
            recs.offset(),
            f.offset + (FRAME_HEADER_LEN + f.body.len()) as u64
        );
        assert_eq!(n, f.record_count);
        assert!(f.ops_acknowledged >= f.record_count);
        let again = reencode(f);
        let written = FRAME_HEADER_LEN + f.body.len();
        assert_eq!(again[..written], seg[start..start + written]);
    }

    #[test]
    fn frame_bytes_follow_the_spec_tables() {
        let mut buf = [0xAAu8; 64];
        let mut w = FrameWriter::new(&mut buf, 0x0102_0304_0506_0708, FLAG_SORTED);
        w.push(RecordOp::Put, b"ab", b"xyz");
        w.push(RecordOp::Delete, b"b", b"");
        let len = w.finish(9);
        let body: &[u8] = &[
            1, 2, 0, 3, 0, 0, 0, b'a', b'b', b'x', b'y', b'z', // put "ab" = "xyz"
            2, 1, 0, 0, 0, 0, 0, b'b', // delete "b"
        ];
        let mut expected = [0u8; 56];
        expected[0..4].copy_from_slice(b"MLFR");
        expected[8..12].copy_from_slice(&[20, 0, 0, 0]);
        expected[12..16].copy_from_slice(&[2, 0, 0, 0]);
        expected[16..24].copy_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expected[24..28].copy_from_slice(&[1, 0, 0, 0]);
        expected[28..32].copy_from_slice(&[9, 0, 0, 0]);
        expected[32..52].copy_from_slice(body);
        let crc = crc32c::crc32c(&expected[8..52]);
        expected[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(len, 56);
        assert_eq!(&buf[..56], &expected[..]);
        assert_eq!(&buf[56..], &[0xAA; 8], "finish wrote past the frame");
    }

    /// `peek_frame` reads what the header says and nothing else: a frame's sequence and
    /// length where `decode_frame` finds it, the end where it finds the end, and (unlike it)
    /// a frame whose body is damaged, which only a verified view may step over.
    #[test]
    fn peek_frame_reads_the_header_alone() {
        let seg = segment_with(&sample_frame(), 64);
        let f = decode_ok(&seg, SEGMENT_HEADER_LEN);
        assert_eq!(
            peek_frame(&seg, SEGMENT_HEADER_LEN),
            Some((f.batch_seq, f.len))
        );
        assert_eq!(
            peek_frame(&seg, SEGMENT_HEADER_LEN + f.len),
            None,
            "the end"
        );
        assert_eq!(
            peek_frame(&seg, seg.len() - 8),
            None,
            "no room for a header"
        );
        let mut damaged = seg.clone();
        damaged[SEGMENT_HEADER_LEN + 40] ^= 1;
        assert!(decode_frame(&damaged, SEGMENT_HEADER_LEN).is_err());
        assert_eq!(
            peek_frame(&damaged, SEGMENT_HEADER_LEN),
            Some((f.batch_seq, f.len))
        );
        let mut bad_magic = seg;
        bad_magic[SEGMENT_HEADER_LEN] = b'X';
        assert_eq!(peek_frame(&bad_magic, SEGMENT_HEADER_LEN), None);
    }

    /// A version 3 frame's trailer, byte by byte as FORMAT.md's table gives it.
    #[test]
    fn trailer_bytes_follow_the_spec_table() {
        let body = &raw_record(1, b"k", b"v");
        let ids = [[0x11; ID_LEN], [0x22; ID_LEN]];
        let mut buf = vec![0xAAu8; frame_len(body.len() + trailer_len(2))];
        let mut w = FrameWriter::new(&mut buf, 5, FLAG_SORTED);
        w.push(RecordOp::Put, b"k", b"v");
        let len = w.finish_with(
            1,
            Some(Trailer {
                ids: &ids,
                commit_time: 0x0102_0304_0506_0708,
            }),
        );
        assert_eq!(len, frame_len(9 + 2 * 16 + 16));
        assert_eq!(
            le_u32(&buf, 8) as usize,
            9 + 2 * 16 + 16,
            "body_len covers the trailer"
        );
        assert_eq!(le_u32(&buf, 24), FLAG_SORTED | FLAG_TRAILER);
        let t = &buf[32 + 9..];
        assert_eq!(&t[..16], &[0x11; 16]);
        assert_eq!(&t[16..32], &[0x22; 16]);
        assert_eq!(&t[32..36], &2u32.to_le_bytes());
        assert_eq!(&t[36..40], &[0; 4]);
        assert_eq!(&t[40..48], &0x0102_0304_0506_0708u64.to_le_bytes());
        let seg = segment_with(&buf[..len], 0);
        let f = decode_ok(&seg, SEGMENT_HEADER_LEN);
        assert_eq!(f.body, &body[..], "the records, without the trailer");
        assert_eq!(f.ids().collect::<Vec<_>>(), ids);
        assert_eq!(f.commit_time, Some(0x0102_0304_0506_0708));
        // A trailer with no ids, and a frame without records.
        let mut buf = vec![0u8; frame_len(trailer_len(0))];
        let w = FrameWriter::new(&mut buf, 6, FLAG_SORTED);
        w.finish_with(
            0,
            Some(Trailer {
                ids: &[],
                commit_time: 9,
            }),
        );
        let seg = segment_with(&buf, 0);
        let f = decode_ok(&seg, SEGMENT_HEADER_LEN);
        assert_eq!(
            (f.record_count, f.ids().len(), f.commit_time),
            (0, 0, Some(9))
        );
    }

    #[test]
    fn malformed_trailers_are_refused() {
        let rec = raw_record(1, b"k", b"v");
        let trailer = |count: u32, reserved: u32| {
            let mut t = vec![0x33u8; 16];
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&reserved.to_le_bytes());
            t.extend_from_slice(&7u64.to_le_bytes());
            t
        };
        let kind = |body: &[u8]| {
            let f = raw_frame(body, 1, 1, FLAG_TRAILER, 1);
            decode_err(&segment_with(&f, 0), SEGMENT_HEADER_LEN)
        };
        let reason = |k: FormatErrorKind| match k {
            FormatErrorKind::BadTrailer { reason } => reason,
            other => panic!("not a trailer error: {other:?}"),
        };
        assert!(reason(kind(&rec)).contains("shorter"));
        let body = [rec.clone(), trailer(1, 1)].concat();
        assert!(reason(kind(&body)).contains("reserved"));
        let body = [rec.clone(), trailer(9, 0)].concat();
        assert!(reason(kind(&body)).contains("count"));
        let body = [rec.clone(), trailer(u32::MAX, 0)].concat();
        assert!(reason(kind(&body)).contains("count"));
        // The count is what splits records from ids: one id too few leaves 16 bytes that do
        // not parse as records.
        let body = [rec.clone(), trailer(0, 0)].concat();
        assert!(matches!(kind(&body), FormatErrorKind::BadRecord { .. }));
        let f = raw_frame(&[rec, trailer(1, 0)].concat(), 1, 1, FLAG_TRAILER, 1);
        let seg = segment_with(&f, 0);
        assert_eq!(decode_ok(&seg, SEGMENT_HEADER_LEN).ids().len(), 1);
    }

    #[test]
    fn segment_header_bytes_follow_the_spec_table() {
        let h = SegmentHeader::new(0x1122_3344_5566_7788, 64 << 20, false);
        let b = h.encode();
        assert_eq!(&b[0..8], b"MRGLOG\x00S");
        // Every new segment is version 4 (frames may carry trailers and be compaction
        // batches), flags or not.
        assert_eq!(&b[8..12], &[4, 0, 0, 0]);
        assert_eq!(&b[12..16], &[64, 0, 0, 0]);
        assert_eq!(
            &b[16..24],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(&b[24..32], &[0, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(&b[32..60], &[0; 28]);
        assert_eq!(&b[60..64], &crc32c::crc32c(&b[..60]).to_le_bytes());
        let r = SegmentHeader {
            recycled: true,
            ..h
        }
        .encode();
        assert_eq!(&r[8..12], &[4, 0, 0, 0]);
        assert_eq!(&r[32..36], &[1, 0, 0, 0]);
        assert_eq!(&r[36..60], &[0; 24]);
        assert_eq!(
            SegmentHeader::decode(&r).unwrap(),
            SegmentHeader {
                recycled: true,
                ..h
            }
        );
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
    }

    /// A version 1 header (no flags field: bytes 32..60 reserved) still decodes, as a
    /// segment that is not recycled; in version 1 the flags bytes must be zero.
    #[test]
    fn version_1_headers_still_decode() {
        let reseal = |mut b: [u8; SEGMENT_HEADER_LEN]| {
            let crc = crc32c::crc32c(&b[..60]);
            b[60..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let h = SegmentHeader::new(7, 1 << 20, false);
        let mut v1 = h.encode();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&reseal(v1)).unwrap(),
            SegmentHeader { version: 1, ..h }
        );
        // Version 2 (flags, no trailers) decodes as what it is.
        let v2 = SegmentHeader {
            version: 2,
            recycled: true,
            ..h
        };
        assert_eq!(SegmentHeader::decode(&v2.encode()).unwrap(), v2);
        let mut v1_flagged = SegmentHeader {
            recycled: true,
            ..h
        }
        .encode();
        v1_flagged[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&reseal(v1_flagged)).unwrap_err().kind,
            FormatErrorKind::SegmentReservedNotZero
        );
    }

    #[test]
    fn a_rewritten_header_round_trips_as_version_5() {
        let h = SegmentHeader::rewritten(77, 4200);
        let b = h.encode();
        assert_eq!(b[8..12], FORMAT_VERSION_REWRITTEN.to_le_bytes());
        assert_eq!(le_u32(&b, 32), SEGMENT_REWRITTEN);
        let d = SegmentHeader::decode(&b).unwrap();
        assert_eq!(d, h);
        assert!(d.rewritten && !d.recycled);
        // What every other new segment gets stays version 4, unflagged.
        let plain = SegmentHeader::decode(&SegmentHeader::new(77, 4200, false).encode()).unwrap();
        assert_eq!((plain.version, plain.rewritten), (FORMAT_VERSION, false));
    }

    #[test]
    fn segment_header_errors() {
        use FormatErrorKind::*;
        let good = SegmentHeader::new(1, 4096, false).encode();
        let kind = |b: &[u8]| SegmentHeader::decode(b).unwrap_err().kind;
        // Edits a field, then reseals the CRC so the check after the CRC is reached.
        let edited = |at: usize, bytes: &[u8]| {
            let mut b = good;
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let crc = crc32c::crc32c(&b[..60]);
            b[60..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        assert_eq!(kind(&good[..63]), SegmentHeaderTruncated { len: 63 });
        assert_eq!(kind(&[]), SegmentHeaderTruncated { len: 0 });
        assert_eq!(kind(&edited(7, b"s")), BadSegmentMagic);
        assert_eq!(kind(&[0; 64]), BadSegmentMagic);
        assert_eq!(kind(&edited(8, &6u32.to_le_bytes())), UnsupportedVersion(6));
        assert_eq!(kind(&edited(8, &0u32.to_le_bytes())), UnsupportedVersion(0));
        // Flags exist from version 2 on (a recycled header is written as one).
        let v2 = |at: usize, bytes: &[u8]| {
            let mut b = SegmentHeader {
                recycled: true,
                ..SegmentHeader::decode(&good).unwrap()
            }
            .encode();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let crc = crc32c::crc32c(&b[..60]);
            b[60..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        // Flag 2, rewritten, exists from version 5 on, and never with flag 1.
        assert_eq!(kind(&v2(32, &[2])), UnknownSegmentFlags(2));
        let v5 = |flags: u8| {
            let mut b = SegmentHeader::rewritten(1, 4096).encode();
            b[32] = flags;
            let crc = crc32c::crc32c(&b[..60]);
            b[60..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        assert_eq!(kind(&v5(3)), UnknownSegmentFlags(3));
        assert_eq!(kind(&v5(6)), UnknownSegmentFlags(6));
        assert_eq!(kind(&v2(35, &[0x80])), UnknownSegmentFlags(0x8000_0001));
        assert_eq!(kind(&v2(40, &[1])), SegmentReservedNotZero);
        assert_eq!(kind(&edited(36, &[1])), SegmentReservedNotZero);
        let mut flipped = good;
        flipped[20] ^= 0x10;
        assert!(matches!(kind(&flipped), BadSegmentHeaderCrc { .. }));
        assert_eq!(
            kind(&edited(12, &[72, 0, 0, 0])),
            BadSegmentHeaderLength(72)
        );
        assert_eq!(kind(&edited(40, &[1])), SegmentReservedNotZero);
        assert_eq!(
            kind(&edited(24, &4100u64.to_le_bytes())),
            BadSegmentSize(4100)
        );
        assert_eq!(kind(&edited(24, &88u64.to_le_bytes())), BadSegmentSize(88));
        // Decoding from a whole segment image reads only the first 64 bytes.
        let mut seg = good.to_vec();
        seg.extend_from_slice(&[0xFF; 100]);
        assert_eq!(SegmentHeader::decode(&seg).unwrap().segment_size, 4096);
    }

    #[test]
    fn every_bit_flip_in_a_segment_header_is_detected() {
        let good = SegmentHeader::new(99, 1 << 20, false).encode();
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&b).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }

    #[test]
    fn zeros_are_the_end_of_the_log() {
        let seg = vec![0u8; 4096];
        for offset in (SEGMENT_HEADER_LEN..4096 + 16).step_by(8) {
            assert!(
                matches!(decode_frame(&seg, offset), Ok(Decoded::End)),
                "{offset}"
            );
        }
        // No room for a frame header is the end too, whatever the bytes.
        let ones = vec![0xFFu8; 100];
        for offset in 69..120 {
            assert!(
                matches!(decode_frame(&ones, offset), Ok(Decoded::End)),
                "{offset}"
            );
        }
        assert!(matches!(decode_frame(&ones, usize::MAX), Ok(Decoded::End)));
    }

    #[test]
    fn a_frame_is_followed_by_the_end() {
        let seg = segment_with(&sample_frame(), 256);
        let f = decode_ok(&seg, SEGMENT_HEADER_LEN);
        check_accepted(&seg, &f);
        assert!(matches!(
            decode_frame(&seg, f.end_offset() as usize),
            Ok(Decoded::End)
        ));
    }

    #[test]
    fn every_bit_flip_in_a_frame_is_detected() {
        let frame = sample_frame();
        let covered = FRAME_HEADER_LEN + le_u32(&frame, 8) as usize;
        let mut seg = segment_with(&frame, 4096);
        for byte in SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + covered {
            for bit in 0..8 {
                seg[byte] ^= 1 << bit;
                let got = decode_frame(&seg, SEGMENT_HEADER_LEN);
                assert!(
                    got.is_err(),
                    "flip of bit {bit} at {byte} not detected: {got:?}"
                );
                seg[byte] ^= 1 << bit;
            }
        }
        // The padding is outside the CRC; readers ignore it.
        for byte in SEGMENT_HEADER_LEN + covered..SEGMENT_HEADER_LEN + frame.len() {
            seg[byte] ^= 0xFF;
            decode_ok(&seg, SEGMENT_HEADER_LEN);
            seg[byte] ^= 0xFF;
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let frame = sample_frame();
        let written = FRAME_HEADER_LEN + le_u32(&frame, 8) as usize;
        // Torn write into preallocated zeros: the frame's bytes from k on never arrived.
        for k in 0..written {
            let mut torn = frame.clone();
            torn[k..].fill(0);
            let seg = segment_with(&torn, 64);
            match decode_frame(&seg, SEGMENT_HEADER_LEN) {
                Ok(Decoded::End) => assert_eq!(k, 0, "header zero only if nothing arrived"),
                Ok(Decoded::Frame(_)) => panic!("frame zeroed from {k} decoded"),
                Err(_) => {}
            }
        }
        // Segment image cut short at k.
        let seg = segment_with(&frame, 0);
        let end = SEGMENT_HEADER_LEN + frame.len();
        for cut in SEGMENT_HEADER_LEN..end {
            let got = decode_frame(&seg[..cut], SEGMENT_HEADER_LEN);
            if cut - SEGMENT_HEADER_LEN < FRAME_HEADER_LEN {
                assert!(matches!(got, Ok(Decoded::End)), "cut at {cut}: {got:?}");
            } else {
                let kind = got.unwrap_err().kind;
                assert!(
                    matches!(kind, FormatErrorKind::FrameOutOfBounds { .. }),
                    "{kind:?}"
                );
            }
        }
        decode_ok(&seg[..end], SEGMENT_HEADER_LEN);
    }

    #[test]
    fn each_frame_error_kind_from_a_crafted_frame() {
        use FormatErrorKind::*;
        let at = SEGMENT_HEADER_LEN;
        let put = |k: &'static [u8]| (1u8, k, &b"v"[..]);
        let kind = |frame: Vec<u8>| decode_err(&segment_with(&frame, 64), at);

        let mut f = sample_frame();
        f[3] = b'X';
        assert_eq!(kind(f), BadFrameMagic(*b"MLFX"));
        let mut f = vec![0u8; 32];
        f[31] = 1; // torn header: only a late byte arrived
        assert_eq!(kind(f), BadFrameMagic([0; 4]));

        let mut f = sample_frame();
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let seg = segment_with(&f, 64);
        let room = (seg.len() - at) as u64;
        let body_len = u64::from(u32::MAX);
        assert_eq!(decode_err(&seg, at), FrameOutOfBounds { body_len, room });

        let mut f = sample_frame();
        f[40] ^= 4;
        assert!(matches!(kind(f), BadFrameCrc { .. }));

        let mut body = body_of(&[put(b"a")]);
        body.extend_from_slice(&[1, 0, 0]); // 3 bytes of a 7-byte record header
        let reason = "record header runs past the end of the frame body";
        assert_eq!(
            kind(raw_frame(&body, 2, 1, 0, 2)),
            BadRecord { index: 1, reason }
        );

        let mut body = body_of(&[put(b"a"), put(b"b")]);
        body.truncate(body.len() - 1); // value cut short
        let reason = "key and value run past the end of the frame body";
        assert_eq!(
            kind(raw_frame(&body, 2, 1, 0, 2)),
            BadRecord { index: 1, reason }
        );

        let mut body = body_of(&[put(b"a")]);
        body[1..3].copy_from_slice(&u16::MAX.to_le_bytes()); // key runs past the end
        assert_eq!(
            kind(raw_frame(&body, 1, 1, 0, 1)),
            BadRecord { index: 0, reason }
        );

        let body = body_of(&[put(b"a"), (2, b"b", b"oops")]);
        let reason = "delete record carries a value";
        assert_eq!(
            kind(raw_frame(&body, 2, 1, 0, 2)),
            BadRecord { index: 1, reason }
        );

        let body = body_of(&[put(b"a"), put(b"b")]);
        let want = RecordCountMismatch {
            header: 3,
            found: 2,
        };
        assert_eq!(kind(raw_frame(&body, 3, 1, 0, 3)), want);
        let empty = RecordCountMismatch {
            header: 1,
            found: 0,
        };
        assert_eq!(kind(raw_frame(&[], 1, 1, 0, 1)), empty);

        let body = body_of(&[put(b"a"), (0, b"b", b""), (9, b"c", b"")]);
        assert_eq!(kind(raw_frame(&body, 3, 1, 0, 3)), BadOp(0));

        let body = body_of(&[put(b"a")]);
        assert_eq!(
            kind(raw_frame(&body, 1, 1, 0x8000_0001, 1)),
            UnknownFlags(0x8000_0000)
        );

        let body = body_of(&[put(b"a"), put(b"c"), put(b"b")]);
        assert_eq!(
            kind(raw_frame(&body, 3, 1, FLAG_SORTED, 3)),
            Unsorted { index: 2 }
        );

        let body = body_of(&[put(b"a"), put(b"a")]);
        assert_eq!(
            kind(raw_frame(&body, 2, 1, FLAG_SORTED, 2)),
            Unsorted { index: 1 }
        );

        let body = body_of(&[put(b"ab"), put(b"a")]);
        assert_eq!(
            kind(raw_frame(&body, 2, 1, FLAG_SORTED, 2)),
            Unsorted { index: 1 }
        );

        let body = body_of(&[put(b"a"), put(b"b")]);
        // A compaction frame acknowledges nothing: 0 passes, anything else does not.
        let seg = segment_with(&raw_frame(&body, 2, 1, FLAG_COMPACTION, 0), 0);
        assert!(decode_ok(&seg, SEGMENT_HEADER_LEN).is_compaction());
        assert_eq!(
            kind(raw_frame(&body, 2, 1, FLAG_COMPACTION, 2)),
            BadOpsAcknowledged {
                ops_acknowledged: 2,
                record_count: 2
            }
        );
        let want = BadOpsAcknowledged {
            ops_acknowledged: 1,
            record_count: 2,
        };
        assert_eq!(kind(raw_frame(&body, 2, 1, 0, 1)), want);
    }

    #[test]
    fn errors_are_reported_in_the_documented_order() {
        use FormatErrorKind::*;
        let at = SEGMENT_HEADER_LEN;
        let kind = |frame: Vec<u8>| decode_err(&segment_with(&frame, 64), at);
        // Bad op, unknown flag, unsorted and short ops_acknowledged at once: the op wins.
        let body = body_of(&[(1, b"b", b""), (7, b"a", b"")]);
        assert_eq!(kind(raw_frame(&body, 2, 1, FLAG_SORTED | 8, 0)), BadOp(7));
        // A count mismatch is reported before a bad op.
        assert!(matches!(
            kind(raw_frame(&body, 5, 1, 0, 9)),
            RecordCountMismatch { .. }
        ));
        // Unknown flags before unsorted, unsorted before ops_acknowledged.
        let body = body_of(&[(1, b"b", b""), (1, b"a", b"")]);
        assert_eq!(
            kind(raw_frame(&body, 2, 1, FLAG_SORTED | 8, 0)),
            UnknownFlags(8)
        );
        assert_eq!(
            kind(raw_frame(&body, 2, 1, FLAG_SORTED, 0)),
            Unsorted { index: 1 }
        );
        // Unsorted keys are fine in a frame not marked sorted.
        let f = raw_frame(&body, 2, 1, 0, 2);
        let seg = segment_with(&f, 64);
        assert!(!decode_ok(&seg, at).is_sorted());
    }

    #[test]
    fn empty_frame_and_empty_key_are_valid() {
        let f = raw_frame(&[], 0, 3, FLAG_SORTED, 0);
        let seg = segment_with(&f, 64);
        let frame = decode_ok(&seg, SEGMENT_HEADER_LEN);
        assert_eq!(frame.len, FRAME_HEADER_LEN);
        assert_eq!(frame.records().count(), 0);
        let body = body_of(&[(2, b"", b""), (1, b"\x00", b"")]);
        let seg = segment_with(&raw_frame(&body, 2, 3, FLAG_SORTED, 2), 64);
        check_accepted(&seg, &decode_ok(&seg, SEGMENT_HEADER_LEN));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "Unsorted")]
    fn writer_refuses_an_unsorted_frame_marked_sorted() {
        let mut buf = [0u8; 128];
        let mut w = FrameWriter::new(&mut buf, 1, FLAG_SORTED);
        w.push(RecordOp::Put, b"b", b"1");
        w.push(RecordOp::Put, b"a", b"2");
        w.finish(2);
    }

    #[test]
    fn records_hand_out_their_segment_offsets() {
        let seg = segment_with(&sample_frame(), 64);
        let f = decode_ok(&seg, SEGMENT_HEADER_LEN);
        let mut recs = f.records();
        let (low, high) = recs.size_hint();
        assert!(
            low <= 3 && high.is_some_and(|h| h >= 3),
            "{:?}",
            recs.size_hint()
        );
        assert_eq!(recs.offset(), 96);
        assert_eq!(recs.next().unwrap().key, b"apple");
        assert_eq!(recs.offset(), 96 + 7 + 5 + 3);
    }

    #[test]
    fn records_of_a_hand_built_frame_stop_rather_than_panic() {
        let f = Frame {
            offset: 0,
            len: 40,
            batch_seq: 1,
            flags: 0,
            record_count: 2,
            ops_acknowledged: 2,
            body: &[1, 9, 0, 0, 0, 0, 0, b'x'],
            ids: &[],
            commit_time: None,
        };
        assert_eq!(f.records().count(), 0);
        let bad_op = Frame {
            body: &[5, 0, 0, 0, 0, 0, 0],
            ..f
        };
        assert_eq!(bad_op.records().count(), 0);
    }

    /// A hand-built frame's `record_count` (here `u32::MAX` over one record) bounds neither
    /// side of the records' size hint: the hint holds what they yield, and is bounded by the
    /// body's bytes, so collecting them allocates no more than the body warrants.
    #[test]
    fn the_records_size_hint_is_bounded_by_the_body() {
        let f = Frame {
            offset: 0,
            len: 64,
            batch_seq: 1,
            flags: 0,
            record_count: u32::MAX,
            ops_acknowledged: u32::MAX,
            body: &[1, 1, 0, 1, 0, 0, 0, b'k', b'v'],
            ids: &[],
            commit_time: None,
        };
        let mut recs = f.records();
        loop {
            let (low, high) = recs.size_hint();
            let left = recs.clone().count();
            assert!(
                low <= left,
                "lower bound {low} over the {left} records left"
            );
            assert!(high.is_some_and(|h| h >= left && h <= f.body.len()));
            if recs.next().is_none() {
                break;
            }
        }
        assert_eq!(f.records().collect::<Vec<_>>().len(), 1);
    }

    #[test]
    fn error_messages_name_the_offset_and_the_problem() {
        let mut f = sample_frame();
        f[40] ^= 4;
        let seg = segment_with(&f, 64);
        let e = decode_frame(&seg, SEGMENT_HEADER_LEN).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid frame at byte offset 64: frame checksum mismatch"),
            "{msg}"
        );
        let e = SegmentHeader::decode(&[0; 64]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("invalid segment header: no mergelog segment magic"));
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn spare_file_names() {
        for n in [0, 7, (1 << 48) - 1] {
            assert_eq!(parse_prep_file_name(&prep_file_name(n)), Some(n));
            assert_eq!(parse_recycle_file_name(&recycle_file_name(n)), Some(n));
            assert_eq!(parse_prep_file_name(&recycle_file_name(n)), None);
            assert_eq!(parse_recycle_file_name(&prep_file_name(n)), None);
        }
        assert_eq!(parse_recycle_file_name(&recycle_file_name(u64::MAX)), None);
        for bad in [
            "prep-.tmp",
            "prep-+1.tmp",
            "prep-1.seg",
            "recycle-1",
            "recycle-x.tmp",
        ] {
            assert_eq!(parse_prep_file_name(bad), None, "{bad}");
            assert_eq!(parse_recycle_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn segment_file_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.seg");
        for id in [1, 42, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(id)), Some(id));
        }
        // A segment's name whose number no `u64` holds: none as an id, listed all the same.
        for past in ["18446744073709551616.seg", "99999999999999999999.seg"] {
            assert_eq!(parse_segment_file_name(past), None, "{past}");
            assert_eq!(segment_file_digits(past), past.strip_suffix(".seg"));
        }
        for bad in [
            "1.seg",
            "0000000000000000001.seg",
            "+0000000000000000001.seg",
            "00000000000000000001.tmp",
            "00000000000000000001.seg.tmp",
            "prep-3.tmp",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
            assert_eq!(segment_file_digits(bad), None, "{bad}");
        }
        assert_eq!(prep_file_name(3), "prep-3.tmp");
        assert_eq!(parse_segment_file_name(&prep_file_name(3)), None);
    }

    type Rec = (bool, Vec<u8>, Vec<u8>);

    fn records_strategy() -> impl Strategy<Value = Vec<Rec>> {
        let key = prop::collection::vec(prop_oneof![Just(0u8), Just(b'k'), any::<u8>()], 0..12);
        let value = prop::collection::vec(any::<u8>(), 0..40);
        prop::collection::vec((any::<bool>(), key, value), 0..16)
    }

    /// A frame to write: records, sorted, extra acknowledged ops, and a trailer (ids, time).
    type TestFrame = (Vec<Rec>, bool, u32, Option<(Vec<[u8; ID_LEN]>, u64)>);

    /// Writes frames back to back from offset 64 of a fresh segment, as the flusher does.
    fn write_segment(frames: &[TestFrame], first_seq: u64) -> Vec<u8> {
        let body: usize = frames
            .iter()
            .map(|(recs, _, _, t)| {
                frame_len(
                    recs.iter()
                        .map(|(_, k, v)| record_len(k.len(), v.len()))
                        .sum::<usize>()
                        + t.as_ref().map_or(0, |(ids, _)| trailer_len(ids.len())),
                )
            })
            .sum();
        let size = align8(SEGMENT_HEADER_LEN + body + 64);
        let mut seg = vec![0u8; size];
        let header = SegmentHeader::new(first_seq, size as u64, false);
        seg[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        let mut at = SEGMENT_HEADER_LEN;
        for (i, (recs, sorted, extra_ops, trailer)) in frames.iter().enumerate() {
            let flags = if *sorted { FLAG_SORTED } else { 0 };
            let mut w = FrameWriter::new(&mut seg[at..], first_seq + i as u64, flags);
            for (put, k, v) in recs {
                let (op, v) = if *put {
                    (RecordOp::Put, &v[..])
                } else {
                    (RecordOp::Delete, &[][..])
                };
                w.push(op, k, v);
            }
            let trailer = trailer.as_ref().map(|(ids, time)| Trailer {
                ids,
                commit_time: *time,
            });
            at += w.finish_with(recs.len() as u32 + extra_ops, trailer);
        }
        seg
    }

    /// Makes records fit for a sorted frame: ascending, unique keys.
    fn sorted(mut recs: Vec<Rec>) -> Vec<Rec> {
        recs.sort_by(|a, b| a.1.cmp(&b.1));
        recs.dedup_by(|a, b| a.1 == b.1);
        recs
    }

    fn frames_strategy() -> impl Strategy<Value = Vec<TestFrame>> {
        let trailer = prop::option::of((
            prop::collection::vec(any::<[u8; ID_LEN]>(), 0..6),
            any::<u64>(),
        ));
        let frame = (records_strategy(), any::<bool>(), 0u32..100, trailer)
            .prop_map(|(recs, s, extra, t)| (if s { sorted(recs) } else { recs }, s, extra, t));
        prop::collection::vec(frame, 1..5)
    }

    proptest! {
        #[test]
        fn segment_header_round_trip(id in any::<u64>(), size in (SEGMENT_SIZE_MIN / 8)..(u64::MAX / 8)) {
            let h = SegmentHeader::new(id, size * 8, false);
            prop_assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn frames_round_trip(frames in frames_strategy(), first_seq in 1u64..u64::MAX / 2) {
            let seg = write_segment(&frames, first_seq);
            prop_assert_eq!(SegmentHeader::decode(&seg).unwrap().segment_id, first_seq);
            let mut at = SEGMENT_HEADER_LEN;
            for (i, (recs, is_sorted, extra, trailer)) in frames.iter().enumerate() {
                let f = decode_ok(&seg, at);
                prop_assert_eq!(f.commit_time, trailer.as_ref().map(|t| t.1));
                let ids: Vec<[u8; ID_LEN]> = f.ids().collect();
                prop_assert_eq!(ids, trailer.as_ref().map_or(vec![], |t| t.0.clone()));
                prop_assert_eq!(f.offset, at as u64);
                prop_assert_eq!(f.batch_seq, first_seq + i as u64);
                prop_assert_eq!(f.is_sorted(), *is_sorted);
                prop_assert_eq!(f.record_count as usize, recs.len());
                prop_assert_eq!(f.ops_acknowledged, recs.len() as u32 + extra);
                let got: Vec<Rec> = f
                    .records()
                    .map(|r| (r.op == RecordOp::Put, r.key.to_vec(), r.value.to_vec()))
                    .collect();
                let want: Vec<Rec> = recs
                    .iter()
                    .map(|(put, k, v)| (*put, k.clone(), if *put { v.clone() } else { vec![] }))
                    .collect();
                prop_assert_eq!(got, want);
                check_accepted(&seg, &f);
                at += f.len;
            }
            prop_assert!(matches!(decode_frame(&seg, at), Ok(Decoded::End)));
        }

        #[test]
        fn decode_never_panics_on_random_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            offset in 0usize..600,
        ) {
            let _ = SegmentHeader::decode(&bytes);
            if let Ok(Decoded::Frame(f)) = decode_frame(&bytes, offset) {
                check_accepted(&bytes, &f);
            }
        }

        #[test]
        fn decode_never_panics_on_damaged_segments(
            frames in frames_strategy(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut seg = write_segment(&frames, 1);
            for (at, byte) in damage {
                let i = at.index(seg.len());
                seg[i] = byte;
            }
            let seg = &seg[..cut.index(seg.len() + 1)];
            for offset in (0..seg.len() + 8).step_by(8) {
                if let Ok(Decoded::Frame(f)) = decode_frame(seg, offset) {
                    check_accepted(seg, &f);
                }
            }
        }
    }
}
