//! The store's keys and values: how entries, log ids and votes are laid out in the engine.
//!
//! An entry whose encoded bytes fit one value (`LogStore::chunk_len`) is the value of its key.
//! A larger one is stored in chunks: the keys `c` + index (8 bytes big-endian) + chunk number
//! (4 bytes big-endian) hold consecutive slices of a [`CHUNK_HEADER`] followed by the encoded
//! entry, and the entry's own key holds an empty value, which marks it chunked (a
//! postcard-encoded entry is never empty).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mergelog::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first byte of an entry's key; the index follows, big-endian.
const ENTRY_PREFIX: u8 = b'e';
/// The first byte of a chunk's key; the entry's index and the chunk's number follow,
/// big-endian, so an entry's chunks sort together and in order.
const CHUNK_PREFIX: u8 = b'c';
/// The length of a chunk's key, the longest key the store writes.
pub(crate) const CHUNK_KEY_LEN: usize = 1 + 8 + 4;
/// The header at the start of chunk 0: the encoded entry's length (u64), the number of
/// chunks (u32) and the CRC-32C of the encoded entry (u32), little-endian. The length and
/// the CRC tell a reassembled entry from one missing a chunk or mixing two writes' chunks.
pub(crate) const CHUNK_HEADER: usize = 8 + 4 + 4;
/// The last saved vote.
pub(crate) const VOTE_KEY: &[u8] = b"m/vote";
/// The last saved committed log id.
pub(crate) const COMMITTED_KEY: &[u8] = b"m/committed";
/// The last purged log id.
pub(crate) const PURGED_KEY: &[u8] = b"m/purged";

/// The key of entry `index`: big-endian, so keys sort as indexes do and a frame's sorted
/// records are runs of consecutive entries.
pub(crate) fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The index of an entry key; `None` for any other key.
pub(crate) fn entry_index(key: &[u8]) -> Option<u64> {
    match key {
        [ENTRY_PREFIX, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The key of chunk `n` of entry `index`.
pub(crate) fn chunk_key(index: u64, n: u32) -> [u8; CHUNK_KEY_LEN] {
    let mut key = [CHUNK_PREFIX; CHUNK_KEY_LEN];
    key[1..9].copy_from_slice(&index.to_be_bytes());
    key[9..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The entry index and chunk number of a chunk key; `None` for any other key.
pub(crate) fn chunk_of(key: &[u8]) -> Option<(u64, u32)> {
    match key {
        [CHUNK_PREFIX, rest @ ..] if rest.len() == 12 => Some((
            u64::from_be_bytes(rest[..8].try_into().ok()?),
            u32::from_be_bytes(rest[8..].try_into().ok()?),
        )),
        _ => None,
    }
}

/// The index of the entry a record belongs to: its own key or one of its chunks.
pub(crate) fn record_index(key: &[u8]) -> Option<u64> {
    entry_index(key).or_else(|| chunk_of(key).map(|(index, _)| index))
}

/// The header of an entry stored in chunks (see [`CHUNK_HEADER`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    /// Bytes of the encoded entry.
    pub len: u64,
    /// Chunks holding the header and the encoded entry.
    pub count: u32,
    /// CRC-32C of the encoded entry.
    pub crc: u32,
}

impl ChunkHeader {
    pub(crate) fn to_bytes(self) -> [u8; CHUNK_HEADER] {
        let mut out = [0; CHUNK_HEADER];
        out[..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// The header at the start of `chunk0`, if it is long enough to hold one.
    pub(crate) fn parse(chunk0: &[u8]) -> Option<ChunkHeader> {
        let h = chunk0.get(..CHUNK_HEADER)?;
        Some(ChunkHeader {
            len: u64::from_le_bytes(h[..8].try_into().ok()?),
            count: u32::from_le_bytes(h[8..12].try_into().ok()?),
            crc: u32::from_le_bytes(h[12..].try_into().ok()?),
        })
    }
}

/// How `encoded` is stored in chunks of at most `chunk_len` bytes: chunk 0 (the header and
/// the first bytes) and the chunks after it, slices of `encoded` in order. `None` if they
/// would number more than a u32 holds.
pub(crate) fn chunks(
    encoded: &[u8],
    chunk_len: usize,
) -> Option<(Vec<u8>, std::slice::Chunks<'_, u8>)> {
    debug_assert!(chunk_len > CHUNK_HEADER);
    let first = encoded.len().min(chunk_len - CHUNK_HEADER);
    let rest = &encoded[first..];
    let header = ChunkHeader {
        len: encoded.len() as u64,
        count: u32::try_from(1 + rest.len().div_ceil(chunk_len)).ok()?,
        crc: crc32c::crc32c(encoded),
    };
    let mut chunk0 = Vec::with_capacity(CHUNK_HEADER + first);
    chunk0.extend_from_slice(&header.to_bytes());
    chunk0.extend_from_slice(&encoded[..first]);
    Some((chunk0, rest.chunks(chunk_len)))
}

/// A value that does not decode, or a log that is not consecutive.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// Encoding or decoding a value failed.
    Postcard(postcard::Error),
    /// The engine could not be read.
    Engine(mergelog::Error),
    /// The log lacks an entry it must hold.
    Hole(u64),
    /// An entry stored in chunks does not reassemble: a chunk is missing, or the length or
    /// the CRC do not match.
    Chunk(u64, String),
    /// An entry needs more chunks than the format numbers.
    TooLarge(usize),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Postcard(e) => {
                write!(f, "mergelog-raft: a stored value does not decode: {e}")
            }
            CodecError::Engine(e) => write!(f, "mergelog-raft: {e}"),
            CodecError::Hole(i) => {
                write!(f, "mergelog-raft: the log has a hole: entry {i} is missing")
            }
            CodecError::Chunk(i, what) => {
                write!(
                    f,
                    "mergelog-raft: entry {i}, stored in chunks, is damaged: {what}"
                )
            }
            CodecError::TooLarge(len) => write!(
                f,
                "mergelog-raft: an entry of {len} encoded bytes needs more than 2^32 chunks"
            ),
        }
    }
}

impl std::error::Error for CodecError {}

pub(crate) fn hole(index: u64) -> CodecError {
    CodecError::Hole(index)
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(CodecError::Postcard)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(CodecError::Postcard)
}

/// The durable value of a meta key, decoded.
pub(crate) fn read_key<T: DeserializeOwned>(
    engine: &Engine,
    key: &[u8],
) -> Result<Option<T>, CodecError> {
    match engine.read(key).map_err(CodecError::Engine)? {
        Some(value) => decode(&value).map(Some),
        None => Ok(None),
    }
}

/// How many entries at or after `first` the engine holds, the lowest and the highest index
/// (`None` if none).
pub(crate) fn entries_from(
    engine: &Engine,
    first: u64,
) -> Result<Option<(u64, u64, u64)>, CodecError> {
    let mut found = None::<(u64, u64, u64)>;
    engine.for_each(|key, _| {
        if let Some(i) = entry_index(key).filter(|i| *i >= first) {
            found = Some(found.map_or((1, i, i), |(n, lo, hi)| (n + 1, lo.min(i), hi.max(i))));
        }
    });
    Ok(found)
}

/// The indexes of the entries below `bound` the engine holds, in order.
pub(crate) fn entries_below(engine: &Engine, bound: u64) -> Vec<u64> {
    let mut found = Vec::new();
    engine.for_each(|key, _| found.extend(entry_index(key).filter(|i| *i < bound)));
    found.sort_unstable();
    found
}

/// The entries stored in chunks and the chunk keys the engine holds: the indexes whose key
/// holds the empty value that marks a chunked entry, and for each index with chunk keys one
/// more than the highest chunk number found.
pub(crate) fn chunk_keys(engine: &Engine) -> (BTreeSet<u64>, BTreeMap<u64, u32>) {
    let mut marked = BTreeSet::new();
    let mut chunks = BTreeMap::<u64, u32>::new();
    engine.for_each(|key, value| {
        if let Some(i) = entry_index(key).filter(|_| value.is_empty()) {
            marked.insert(i);
        } else if let Some((i, n)) = chunk_of(key) {
            let count = chunks.entry(i).or_default();
            *count = (*count).max(n.saturating_add(1));
        }
    });
    (marked, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk 0 holds the header and the first bytes, the others the rest in order; each at
    /// most the chunk length; their concatenation after the header is the encoding, whose
    /// length and CRC the header holds.
    #[test]
    fn chunks_hold_the_header_and_the_encoding_in_order() {
        let chunk_len = 64;
        for len in [0, 1, 47, 48, 49, 64, 112, 113, 1000] {
            let encoded: Vec<u8> = (0..len).map(|i| (i * 7 + i / 64) as u8).collect();
            let (chunk0, rest) = chunks(&encoded, chunk_len).unwrap();
            let rest: Vec<&[u8]> = rest.collect();
            let header = ChunkHeader::parse(&chunk0).unwrap();
            assert_eq!(header.len, len as u64);
            assert_eq!(header.count as usize, 1 + rest.len());
            assert_eq!(header.crc, crc32c::crc32c(&encoded));
            assert!(chunk0.len() <= chunk_len && rest.iter().all(|c| c.len() <= chunk_len));
            assert!(
                rest.iter().all(|c| !c.is_empty()),
                "no empty chunk at {len}"
            );
            let joined: Vec<u8> = std::iter::once(&chunk0[CHUNK_HEADER..])
                .chain(rest)
                .flatten()
                .copied()
                .collect();
            assert_eq!(joined, encoded);
        }
    }

    #[test]
    fn chunk_keys_sort_by_entry_then_chunk_and_read_back() {
        let key = chunk_key(0x0102_0304_0506_0708, 0x0a0b_0c0d);
        assert_eq!(key.len(), CHUNK_KEY_LEN);
        assert_eq!(chunk_of(&key), Some((0x0102_0304_0506_0708, 0x0a0b_0c0d)));
        assert_eq!(record_index(&key), Some(0x0102_0304_0506_0708));
        assert_eq!(record_index(&entry_key(9)), Some(9));
        assert_eq!(chunk_of(&entry_key(9)), None);
        assert_eq!(record_index(b"m/vote"), None);
        assert!(chunk_key(1, 300) < chunk_key(2, 0) && chunk_key(2, 0) < chunk_key(2, 1));
    }
}
