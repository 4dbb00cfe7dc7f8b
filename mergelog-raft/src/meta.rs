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

/// An entry's encoding as the first pass ([`measure`]) found it: whole, if it fits one value,
/// or only its length and CRC-32C, for the chunks' header; the chunks are then encoded again
/// straight into chunk-sized buffers ([`put_chunks`]), so a large entry's encoding is never
/// in memory whole.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Measured {
    /// The encoding, at most the `keep` bytes `measure` was given, and not empty.
    Whole(Vec<u8>),
    /// Longer (or empty): stored in chunks.
    Chunked { len: u64, crc: u32 },
}

/// Encodes `value` once, keeping the encoding only while it is at most `keep` bytes long
/// (`LogStore::chunk_len`): beyond, the bytes go into its length and CRC-32C and are
/// dropped, a buffer of about `keep` bytes at a time.
pub(crate) fn measure<T: Serialize + ?Sized>(
    value: &T,
    keep: usize,
) -> Result<Measured, CodecError> {
    let flavor = Measure {
        buf: Vec::new(),
        keep,
        spilled: false,
        len: 0,
        crc: 0,
    };
    postcard::serialize_with_flavor(value, flavor).map_err(CodecError::Postcard)
}

/// The first pass's flavor: see [`measure`].
struct Measure {
    /// The encoding so far while not `spilled`; then bytes not yet in `len` and `crc`.
    buf: Vec<u8>,
    keep: usize,
    /// The encoding is longer than `keep`.
    spilled: bool,
    /// Bytes and CRC-32C of the encoding before `buf`.
    len: u64,
    crc: u32,
}

impl Measure {
    /// Moves `buf` into the length and the CRC.
    fn fold(&mut self) {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.len += self.buf.len() as u64;
        self.buf.clear();
        self.spilled = true;
    }
}

impl postcard::ser_flavors::Flavor for Measure {
    type Output = Measured;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.buf.push(byte);
        if self.buf.len() > self.keep {
            self.fold();
        }
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.buf.len() + data.len() <= self.keep {
            self.buf.extend_from_slice(data);
        } else {
            // Never buffered whole: a long slice goes straight into the CRC.
            self.fold();
            self.crc = crc32c::crc32c_append(self.crc, data);
            self.len += data.len() as u64;
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Measured> {
        if !self.spilled && !self.buf.is_empty() {
            return Ok(Measured::Whole(self.buf));
        }
        self.fold();
        Ok(Measured::Chunked {
            len: self.len,
            crc: self.crc,
        })
    }
}

/// The number of chunks of at most `chunk_len` bytes that hold an encoding of `len` bytes
/// after the chunk header; `None` beyond a u32.
pub(crate) fn chunk_count(len: u64, chunk_len: usize) -> Option<u32> {
    debug_assert!(chunk_len > CHUNK_HEADER);
    let rest = len.saturating_sub((chunk_len - CHUNK_HEADER) as u64);
    u32::try_from(1 + rest.div_ceil(chunk_len as u64)).ok()
}

/// Where [`put_chunks`] goes on from: chunk `n`, after the encoding's first `written` bytes
/// (their CRC-32C `crc`), which the chunks before it hold. `ChunksFrom::default()` is the
/// start: chunk 0, which begins with the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunksFrom {
    pub n: u32,
    pub written: u64,
    pub crc: u32,
}

/// Encodes `value` a second time, into chunks of at most `chunk_len` bytes handed to
/// `emit(n, chunk)` in order: chunk 0 the header (`len` bytes, their CRC-32C `crc`, as
/// [`measure`] found them, and the chunk count) and the first bytes, the others the rest.
/// A buffer of one chunk is all it holds. The chunks are checked against the header as they
/// go (no byte past `len`) and at the end (the length, the CRC): a value whose encoding
/// changed between the passes is an error (`CodecError::Changed`) before the entry's key is
/// put, never chunks that do not reassemble.
///
/// Starts at chunk `from.n` (the encoding's bytes before it are passed over), and stops at
/// the first chunk `emit` does not take (`Ok(false)`: the store would have to wait to
/// submit a batch, which it does as a future, outside the encoding): returns where to go on
/// from then (`Some`), `None` once every chunk was taken. The chunks of several runs are one
/// encoding's, each run's bytes checked as above, and the CRC at the end is of the bytes
/// the chunks hold, whichever run made them.
pub(crate) fn put_chunks<T, E>(
    value: &T,
    index: u64,
    (len, crc): (u64, u32),
    chunk_len: usize,
    from: ChunksFrom,
    emit: E,
) -> Result<Option<ChunksFrom>, CodecError>
where
    T: Serialize + ?Sized,
    E: FnMut(u32, &[u8]) -> Result<bool, mergelog::Error>,
{
    let count = chunk_count(len, chunk_len).ok_or(CodecError::TooLarge(len))?;
    let header = ChunkHeader { len, count, crc };
    let mut stopped = None;
    let chunker = Chunker::new(index, header, chunk_len, from, emit, &mut stopped);
    let done = postcard::serialize_with_flavor(value, chunker);
    match (stopped, done) {
        (Some(Stopped::Failed(e)), _) => Err(e),
        (Some(Stopped::Paused(at)), _) => Ok(Some(at)),
        (None, Err(e)) => Err(CodecError::Postcard(e)),
        (None, Ok(())) => Ok(None),
    }
}

/// Why a [`Chunker`] stopped: postcard's error says nothing of it.
#[derive(Debug)]
enum Stopped {
    Failed(CodecError),
    /// A chunk not taken: go on from there.
    Paused(ChunksFrom),
}

/// The second pass's flavor: see [`put_chunks`].
struct Chunker<'f, E> {
    /// The entry's index, for an error.
    index: u64,
    header: ChunkHeader,
    chunk_len: usize,
    /// Bytes of the encoding still to pass over (a run that goes on from a later chunk).
    skip: u64,
    /// The chunk being filled (chunk 0 begins with the header).
    buf: Vec<u8>,
    /// Its number, and the encoding's bytes before it and their CRC.
    at: ChunksFrom,
    /// Bytes of the encoding and their CRC so far, the header not counted.
    written: u64,
    crc: u32,
    emit: E,
    stopped: &'f mut Option<Stopped>,
}

impl<'f, E: FnMut(u32, &[u8]) -> Result<bool, mergelog::Error>> Chunker<'f, E> {
    fn new(
        index: u64,
        header: ChunkHeader,
        chunk_len: usize,
        from: ChunksFrom,
        emit: E,
        stopped: &'f mut Option<Stopped>,
    ) -> Self {
        let mut buf = Vec::with_capacity(chunk_len);
        if from.n == 0 {
            buf.extend_from_slice(&header.to_bytes());
        }
        Chunker {
            index,
            header,
            chunk_len,
            skip: from.written,
            buf,
            at: from,
            written: from.written,
            crc: from.crc,
            emit,
            stopped,
        }
    }

    fn stop(&mut self, why: Stopped) -> postcard::Error {
        *self.stopped = Some(why);
        postcard::Error::SerializeBufferFull
    }

    fn changed(&mut self, what: String) -> postcard::Error {
        self.stop(Stopped::Failed(CodecError::Changed(self.index, what)))
    }

    /// Passes over the bytes the chunks before `at` hold, then appends the rest a chunk at a
    /// time.
    fn feed(&mut self, mut data: &[u8]) -> postcard::Result<()> {
        if self.skip > 0 {
            let passed = data
                .len()
                .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            self.skip -= passed as u64;
            data = &data[passed..];
        }
        while !data.is_empty() {
            let take = data.len().min(self.chunk_len - self.buf.len());
            self.add(&data[..take])?;
            data = &data[take..];
        }
        Ok(())
    }

    /// Appends `data` (at most what fills the chunk) and hands the chunk on once full.
    fn add(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.written += data.len() as u64;
        if self.written > self.header.len {
            let what = format!(
                "its encoding grew past the {} bytes first found",
                self.header.len
            );
            return Err(self.changed(what));
        }
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.buf.extend_from_slice(data);
        match self.buf.len() < self.chunk_len {
            true => Ok(()),
            false => self.emit_chunk(),
        }
    }

    fn emit_chunk(&mut self) -> postcard::Result<()> {
        match (self.emit)(self.at.n, &self.buf) {
            Ok(true) => {}
            Ok(false) => return Err(self.stop(Stopped::Paused(self.at))),
            Err(e) => return Err(self.stop(Stopped::Failed(CodecError::Engine(e)))),
        }
        self.at = ChunksFrom {
            n: self.at.n + 1,
            written: self.written,
            crc: self.crc,
        };
        self.buf.clear();
        Ok(())
    }
}

impl<E: FnMut(u32, &[u8]) -> Result<bool, mergelog::Error>> postcard::ser_flavors::Flavor
    for Chunker<'_, E>
{
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.feed(&[byte])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.feed(data)
    }

    fn finalize(mut self) -> postcard::Result<()> {
        if self.skip > 0 {
            let what = format!(
                "its encoding is shorter than the {} bytes its first chunks hold",
                self.at.written
            );
            return Err(self.changed(what));
        }
        // The last chunk, unless the one before ended the encoding (chunk 0 always goes: it
        // holds the header).
        if !self.buf.is_empty() {
            self.emit_chunk()?;
        }
        let h = self.header;
        if (self.written, self.crc, self.at.n) != (h.len, h.crc, h.count) {
            let what = format!(
                "its encoding changed between two passes: {} bytes (CRC-32C {:#010x}) in {} \
                 chunks, {} bytes ({:#010x}) in {} first",
                self.written, self.crc, self.at.n, h.len, h.crc, h.count
            );
            return Err(self.changed(what));
        }
        Ok(())
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
    /// An entry stored in chunks does not reassemble: a chunk is missing, or the length or
    /// the CRC do not match.
    Chunk(u64, String),
    /// An entry needs more chunks than the format numbers.
    TooLarge(u64),
    /// An entry's second encoding, into its chunks, was not its first (a `Serialize` that
    /// does not give the same bytes twice).
    Changed(u64, String),
    /// A stored value's encoding is followed by this many bytes.
    Trailing(usize),
    /// The entry stored under index `.0` has the log id of index `.1`.
    Misplaced(u64, u64),
    /// The log's bounds do not fit the index range: what is at its end.
    Bounds(&'static str),
    /// Entry `.0`, whose log id is `.1`, has a lower leader id (term) than `.2`, the log id
    /// of the entry before it or the purged log id: along a Raft log they never go down.
    TermDown(u64, String, String),
    /// The committed log id `.0` is not one of the log's: what is wrong with it.
    Committed(String, String),
    /// The log has no purged log id and its first entry is `.0`, above 0: entries 0 to
    /// `.0 - 1` are missing at its front.
    Front(u64),
    /// The vote `.0` (or "no vote (term 0)") is of a term below that of the last log id `.1`.
    VoteBelow(String, String),
    /// A write (`.0`: "append", "vote", "committed log id", "truncate", "purge") refused: what
    /// the next open would refuse in it.
    Refused(&'static str, String),
    /// A store operation (`.0`: "append", "truncate" or "purge") stopped part way, dropped or
    /// failed after submitting some of its batches: every call fails until a reopen.
    Torn(&'static str),
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
            CodecError::Changed(i, what) => write!(
                f,
                "mergelog-raft: entry {i} could not be stored in chunks: {what}"
            ),
            CodecError::Trailing(n) => write!(
                f,
                "mergelog-raft: a stored value does not decode: {n} byte{} after its encoding",
                if *n == 1 { "" } else { "s" }
            ),
            CodecError::Misplaced(i, found) => write!(
                f,
                "mergelog-raft: the log is damaged: entry {i} holds the log id of index {found}"
            ),
            CodecError::TermDown(i, id, before) => write!(
                f,
                "mergelog-raft: the log is damaged: entry {i} has the log id {id}, whose term \
                 (leader id) is below that of {before}: terms never go down along a Raft log"
            ),
            CodecError::Committed(id, what) => write!(
                f,
                "mergelog-raft: the log is damaged: the committed log id {id} is {what}"
            ),
            CodecError::Front(first) => write!(
                f,
                "mergelog-raft: the log has a hole: entries 0 to {} are missing at its front (it \
                 has no purged log id, and its first entry is {first}): a log starts at entry 0, \
                 and only a purge, which logs the purged log id first, removes its front",
                first - 1
            ),
            CodecError::VoteBelow(vote, last) => write!(
                f,
                "mergelog-raft: the log is damaged: {vote} is of a term below that of the last \
                 log id {last}: a node saves a leader's vote before it takes the leader's \
                 entries, and its vote never goes down"
            ),
            CodecError::Refused(write, what) => write!(
                f,
                "mergelog-raft: {write} refused (nothing written): {what}; the store's next open \
                 would refuse the log"
            ),
            CodecError::Torn(what) => write!(
                f,
                "mergelog-raft: the store must be reopened: an earlier {what} stopped part way \
                 (its future was dropped, or it failed, after some of its batches were \
                 submitted), so the log may hold part of it that the store does not know of; \
                 every call fails until a reopen, which reads the log as a crash there leaves it"
            ),
            CodecError::Bounds(what) => write!(
                f,
                "mergelog-raft: the log is damaged: {what} (u64::MAX), where no log can go on"
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

/// Decodes a stored value: all of it. Bytes after a value's encoding are not what the store
/// wrote there (postcard alone ignores them), so they are an error, not a value that decodes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match postcard::take_from_bytes(bytes).map_err(CodecError::Postcard)? {
        (value, []) => Ok(value),
        (_, rest) => Err(CodecError::Trailing(rest.len())),
    }
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
/// holds the empty value that marks a chunked entry, and for each index with chunk keys the
/// chunk numbers found, in order. The numbers themselves, not a count up to the highest: a
/// damaged key's number (up to 2^32 - 1) is no measure of the work of deleting its chunks.
pub(crate) fn chunk_keys(engine: &Engine) -> (BTreeSet<u64>, BTreeMap<u64, Vec<u32>>) {
    let mut marked = BTreeSet::new();
    let mut chunks = BTreeMap::<u64, Vec<u32>>::new();
    engine.for_each(|key, value| {
        if let Some(i) = entry_index(key).filter(|_| value.is_empty()) {
            marked.insert(i);
        } else if let Some((i, n)) = chunk_of(key) {
            chunks.entry(i).or_default().push(n);
        }
    });
    for numbers in chunks.values_mut() {
        numbers.sort_unstable();
    }
    (marked, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    use postcard::ser_flavors::Flavor;

    /// Serializes to exactly its bytes (a tuple: no length prefix), one `try_push` each.
    struct Raw<'a>(&'a [u8]);

    impl Serialize for Raw<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(self.0.len())?;
            for b in self.0 {
                t.serialize_element(b)?;
            }
            t.end()
        }
    }

    /// Hands `data` to `flavor` in pieces of the lengths `pieces` cycles through (1 goes by
    /// `try_push`), as a serializer does: one byte, a varint, a whole byte slice.
    fn feed(flavor: &mut impl Flavor, data: &[u8], pieces: &[usize]) {
        let mut rest = data;
        for &n in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at(n.min(rest.len()));
            match piece {
                [b] => flavor.try_push(*b).unwrap(),
                _ => flavor.try_extend(piece).unwrap(),
            }
            rest = after;
        }
    }

    /// The first pass keeps an encoding of at most `keep` bytes whole, and of a longer one
    /// its length and CRC only, whatever pieces it comes in; the second puts the header and
    /// the encoding in chunks of at most the chunk length: chunk 0 the header and the first
    /// bytes, the others the rest in order, none empty, as many as the header says.
    #[test]
    fn chunks_hold_the_header_and_the_encoding_in_order() {
        let chunk_len = 64;
        for len in [0, 1, 47, 48, 49, 64, 65, 112, 113, 1000] {
            let encoded: Vec<u8> = (0..len).map(|i| (i * 7 + i / 64) as u8).collect();
            let expected = match len {
                1..=64 => Measured::Whole(encoded.clone()),
                _ => Measured::Chunked {
                    len: len as u64,
                    crc: crc32c::crc32c(&encoded),
                },
            };
            assert_eq!(measure(&Raw(&encoded), chunk_len).unwrap(), expected);
            for pieces in [&[1][..], &[3, 1, 200], &[63, 1, 2, 64]] {
                let mut flavor = Measure {
                    buf: Vec::new(),
                    keep: chunk_len,
                    spilled: false,
                    len: 0,
                    crc: 0,
                };
                feed(&mut flavor, &encoded, pieces);
                assert_eq!(flavor.finalize().unwrap(), expected, "{len} in {pieces:?}");
            }
            if len > 0 && len <= chunk_len {
                continue;
            }
            let (len64, crc) = (len as u64, crc32c::crc32c(&encoded));
            let count = chunk_count(len64, chunk_len).unwrap();
            for pieces in [&[1][..], &[3, 1, 200], &[63, 1, 2, 64]] {
                let mut chunks = Vec::new();
                let mut failed = None;
                let header = ChunkHeader {
                    len: len64,
                    count,
                    crc,
                };
                let emit = |n: u32, chunk: &[u8]| {
                    chunks.push((n, chunk.to_vec()));
                    Ok(true)
                };
                let from = ChunksFrom::default();
                let mut chunker = Chunker::new(7, header, chunk_len, from, emit, &mut failed);
                feed(&mut chunker, &encoded, pieces);
                chunker.finalize().unwrap();
                assert!(failed.is_none());
                assert_eq!(chunks.len(), count as usize, "{len} in {pieces:?}");
                assert!(chunks
                    .iter()
                    .enumerate()
                    .all(|(i, (n, _))| i == *n as usize));
                let chunk0 = &chunks[0].1;
                assert_eq!(ChunkHeader::parse(chunk0), Some(header));
                assert!(chunks
                    .iter()
                    .all(|(_, c)| !c.is_empty() && c.len() <= chunk_len));
                // Every chunk but the last is full.
                assert!(chunks[..chunks.len() - 1]
                    .iter()
                    .all(|(_, c)| c.len() == chunk_len));
                let joined: Vec<u8> = std::iter::once(&chunk0[CHUNK_HEADER..])
                    .chain(chunks[1..].iter().map(|(_, c)| &c[..]))
                    .flatten()
                    .copied()
                    .collect();
                assert_eq!(joined, encoded);
                // And the same through a serializer.
                let mut again = Vec::new();
                let put = |n: u32, chunk: &[u8]| {
                    again.push((n, chunk.to_vec()));
                    Ok(true)
                };
                let from = ChunksFrom::default();
                let put = put_chunks(&Raw(&encoded), 7, (len64, crc), chunk_len, from, put);
                assert_eq!(put.ok(), Some(None));
                assert_eq!(again, chunks);
                // And the same in runs that each stop at a chunk not taken: every chunk
                // number in turn is refused once, and the next run goes on from it.
                for refused in 0..count {
                    let (mut resumed, mut from, mut runs) = (Vec::new(), ChunksFrom::default(), 0);
                    let mut refuse = Some(refused);
                    loop {
                        runs += 1;
                        let put = |n: u32, chunk: &[u8]| {
                            if refuse == Some(n) {
                                refuse = None;
                                return Ok(false);
                            }
                            resumed.push((n, chunk.to_vec()));
                            Ok(true)
                        };
                        let ran = put_chunks(&Raw(&encoded), 7, (len64, crc), chunk_len, from, put);
                        match ran.unwrap() {
                            Some(at) => {
                                assert_eq!(at.n, refused, "{len}: stopped at chunk {}", at.n);
                                from = at;
                            }
                            None => break,
                        }
                    }
                    assert_eq!(runs, 2, "{len}, chunk {refused} refused");
                    assert!(
                        resumed == chunks,
                        "{len}, chunk {refused} refused: other chunks"
                    );
                }
            }
        }
    }

    /// A value whose second encoding differs from its first (longer, shorter, other bytes):
    /// the chunks stop with an error naming the entry, never a full set of chunks that does
    /// not reassemble.
    #[test]
    fn an_encoding_that_changes_between_the_passes_is_an_error() {
        let chunk_len = 64;
        let first: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let (len, crc) = (first.len() as u64, crc32c::crc32c(&first));
        let mut other = first.clone();
        other[200] ^= 1;
        for second in [&first[..299], &[&first[..], &[1]].concat(), &other] {
            let mut emitted = 0;
            let put = |_: u32, _: &[u8]| {
                emitted += 1;
                Ok(true)
            };
            let from = ChunksFrom::default();
            let err = put_chunks(&Raw(second), 9, (len, crc), chunk_len, from, put).unwrap_err();
            assert!(
                matches!(err, CodecError::Changed(9, _)),
                "{} bytes: {err}",
                second.len()
            );
            assert!(err
                .to_string()
                .contains("entry 9 could not be stored in chunks"));
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
