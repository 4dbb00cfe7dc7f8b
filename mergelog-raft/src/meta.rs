//! The store's keys and values: how entries, log ids and votes are laid out in the engine.

use std::fmt;

use mergelog::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first byte of an entry's key; the index follows, big-endian.
const ENTRY_PREFIX: u8 = b'e';
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

/// A value that does not decode, or a log that is not consecutive.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// Encoding or decoding a value failed.
    Postcard(postcard::Error),
    /// The engine could not be read.
    Engine(mergelog::Error),
    /// The log lacks an entry it must hold.
    Hole(u64),
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
