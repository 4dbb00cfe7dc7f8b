//! The clean-close mark: a small file, `CLEAN`, that `Engine::close` writes once every frame
//! is durable, naming where the log ended. Its presence tells the next writable open two
//! things:
//!
//! - the page cache holds nothing the disk does not (no write or sync failed since the log
//!   was last made durable), so the open need not rewrite the last segment's tail to
//!   re-establish what the disk holds (see [`crate::log::segment::Segment::rewrite`]);
//! - every batch up to the mark was durable: a log that now ends before it lost acknowledged
//!   history, which is damage, never a torn tail.
//!
//! A writable open reads the mark and removes it (durably) before it accepts a write, so the
//! mark never outlives the clean end it describes. The file operations (and their order) are
//! in `dir.rs`; this module has the format. Layout (little-endian, 48 bytes):
//!
//! ```text
//! 0  magic "MLCLEAN\0"  8  version u32 (1)  12 reserved u32 (0)
//! 16 segment_id u64 (first batch of the last segment)  24 end u64 (end of its last frame)
//! 32 next_seq u64 (the batch the next frame gets)      40 crc32c u32 of bytes 0..40, 44 zero u32
//! ```

use crate::error::Result;
use crate::log::dir;
use crate::log::io::SharedIo;
use crate::log::recovery::SEQ_MAX;
use std::path::Path;

/// Name of the mark in the log directory.
pub const CLEAN_FILE: &str = "CLEAN";
/// Name of a mark being written (renamed to [`CLEAN_FILE`] once synced).
pub const CLEAN_TMP: &str = "CLEAN.tmp";
const MAGIC: [u8; 8] = *b"MLCLEAN\0";
const VERSION: u32 = 1;
/// Bytes of the mark.
pub const CLEAN_LEN: usize = 48;
const RESERVED_AT: usize = 12;
const CRC_AT: usize = 40;

/// Where a cleanly closed log ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanMark {
    /// Id (first batch) of the last segment.
    pub segment_id: u64,
    /// End of the last frame in that segment.
    pub end: u64,
    /// Sequence number the next frame gets: batches below it are durable.
    pub next_seq: u64,
}

impl CleanMark {
    /// The mark's bytes.
    pub fn encode(&self) -> [u8; CLEAN_LEN] {
        let mut b = [0u8; CLEAN_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.end.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a mark; `None` for anything that is not exactly a valid one.
    pub fn decode(b: &[u8]) -> Option<CleanMark> {
        if b.len() != CLEAN_LEN || b[0..8] != MAGIC {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        if u32_at(8) != VERSION
            || u32_at(RESERVED_AT) != 0
            || u32_at(CRC_AT) != crc32c::crc32c(&b[..CRC_AT])
            || u32_at(CRC_AT + 4) != 0
        {
            return None;
        }
        // A next batch past the largest a log reaches is no log's end: taken for one, an
        // open of a directory without segments would go on from it (`PointInTime`) and name
        // a segment after it that no open accepts.
        if u64_at(32) > SEQ_MAX {
            return None;
        }
        Some(CleanMark {
            segment_id: u64_at(16),
            end: u64_at(24),
            next_seq: u64_at(32),
        })
    }
}

/// What a writable open found of the mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No mark: the last run did not close cleanly (or never wrote a frame).
    Absent,
    /// A file that is not a valid mark: treated as absent (the open then rewrites the tail,
    /// which is safe whatever the truth), but it is removed too.
    Invalid,
    /// A valid mark.
    Mark(CleanMark),
}

impl Found {
    pub fn mark(&self) -> Option<CleanMark> {
        match self {
            Found::Mark(m) => Some(*m),
            _ => None,
        }
    }
}

/// Reads the mark of `dir`.
pub(crate) fn read(dir: &Path) -> Result<Found> {
    Ok(match dir::read_clean_mark(dir)? {
        Some(bytes) => CleanMark::decode(&bytes).map_or(Found::Invalid, Found::Mark),
        None => Found::Absent,
    })
}

/// Removes the mark and syncs the directory: from here on the log may change.
pub(crate) fn remove(io: &SharedIo, dir: &Path) -> Result<()> {
    dir::remove_clean_mark(&**io, dir)
}

/// Writes the mark: to a temporary file, synced, renamed into place, directory synced
/// ([`dir::write_clean_mark`]). A crash at any step leaves either no mark or the whole one.
pub(crate) fn write(io: &SharedIo, dir: &Path, mark: &CleanMark) -> Result<()> {
    dir::write_clean_mark(&**io, dir, &mark.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_any_changed_byte_is_refused() {
        let m = CleanMark {
            segment_id: 7,
            end: 4096 + 64,
            next_seq: 12,
        };
        let b = m.encode();
        assert_eq!(CleanMark::decode(&b), Some(m));
        for i in 0..CLEAN_LEN {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert_eq!(CleanMark::decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(CleanMark::decode(&b[..CLEAN_LEN - 1]), None);
    }

    /// Nonzero reserved bytes under a CRC that covers them are no mark, as a bad CRC is.
    #[test]
    fn nonzero_reserved_bytes_are_no_mark() {
        let mut b = CleanMark {
            segment_id: 7,
            end: 4096 + 64,
            next_seq: 12,
        }
        .encode();
        b[RESERVED_AT] = 1;
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(CleanMark::decode(&b), None);
    }
}
