//! Every limit of the engine, named once and validated once, at `Engine::open`.

use crate::error::{Error, RequestLimit, Result};
use crate::log::format;
use crate::merge::MergeOperator;
use std::time::Duration;

/// When an acknowledgement may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge once the batch is synced to stable storage (fdatasync or msync). Survives
    /// power loss.
    #[default]
    Sync,
    /// Acknowledge once the batch is in the page cache. Survives a process crash, not power
    /// loss: after one, the log opens without (some of) the writes since the last segment
    /// roll, which syncs the segment it leaves so that no segment is torn behind a newer one.
    /// Open such a log with `NoSync` too (or with `RecoveryMode::PointInTime`): the page
    /// cache may have written any of those frames and not others, and an open with `Sync`
    /// takes valid frames 16 or more batches past a lost one as proof that it was durable,
    /// and refuses the log (`Error::DamagedHistory`).
    NoSync,
}

/// How batch bytes reach the segment file. Reads always go through the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WritePath {
    /// Encode into a reused buffer, `pwrite` it, then `fdatasync` (LMDB's arrangement).
    /// The default: measured faster on the project's machines (see README).
    #[default]
    Pwrite,
    /// Encode straight into the shared writable mapping, then `msync` the written range.
    /// Refused at open (`Error::InvalidConfig`) for a directory on btrfs: there a store into
    /// the mapping asks the file system for room, and on a full disk it waited in the kernel,
    /// unkillable, until room was made (the pwrite path gets an error instead, and the engine
    /// refuses writes with `Error::NoSpace`).
    Mmap,
}

/// What a producer experiences when the ingest ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// The producer spins briefly, then parks until the flusher frees space.
    #[default]
    Block,
    /// The call fails at once with `Error::Busy`.
    Reject,
}

/// When the flusher cuts a window. Every policy also cuts at `window_age_max`,
/// `batch_bytes_max`, `batch_ops_max` and on `flush()`. And a blocking wait on a ticket
/// (`Ticket::wait`, `GetTicket::wait`, `IdTicket::wait`; not their `wait_timeout`, nor a
/// future) made while nothing else is being written or synced, the last window having come
/// from one producer, may write the caller's window at once on its own thread, whatever the
/// policy: a lone producer that waits for each write can get one batch per write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowPolicy {
    /// Cut as soon as waiting longer buys nothing: the log is idle and either as many
    /// requests have arrived as the previous batch acknowledged (those writers are the ones
    /// likely to resubmit) or the ring has been quiet for `quiet`.
    Adaptive {
        /// How long without a new request counts as quiet.
        quiet: Duration,
    },
    /// Hold every window open for a fixed time after its first request (unless a lone
    /// producer's blocking wait writes it sooner: above).
    Linger(Duration),
    /// Cut as soon as anything is published (group commit with no wait).
    Immediate,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy::Adaptive {
            quiet: Duration::from_micros(20),
        }
    }
}

/// What opening does with damage it finds in the log (names as in RocksDB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn tail is cut off (zeroed and synced): damage in the last segment's last
    /// `UNDURABLE_FRAMES_MAX` (16) frames with no evidence of durable history past it, or a
    /// last segment whose activation a crash tore. Damage to durable history (valid frames 16
    /// or more batches later, or a clean-close mark past it) is `Error::DamagedHistory`, and
    /// damage in an earlier segment `Error::Corrupt`, each naming file and offset; nothing is
    /// changed then. The whole table: docs/FORMAT.md, "Recovery".
    #[default]
    TolerateCorruptedTail,
    /// Stop at the first bad frame anywhere and drop everything after it.
    PointInTime,
    /// Any bad frame is an error.
    AbsoluteConsistency,
}

/// A limit on how far the slowest durable consumer (`Engine::consumer`) may fall behind the
/// durable log before submissions are throttled (`Config::consumer_lag_max`). Lag is counted
/// as `ConsumerInfo` counts it: durable batches not yet committed, the bytes of their
/// frames, and the age of the oldest of them (by its frame's commit time). At least one of the
/// three is set, and none is zero. The slowest consumer is the one with the oldest commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConsumerLag {
    /// Throttle while the slowest consumer lags by more than this many batches.
    pub batches: Option<u64>,
    /// Throttle while the slowest consumer lags by more than this many bytes of frames.
    pub bytes: Option<u64>,
    /// Throttle while the oldest batch the slowest consumer has not committed is older than
    /// this.
    pub age: Option<Duration>,
}

/// The largest `Config::segment_bytes`: 4 GiB. A frame's body length is a u32 in the format,
/// and a frame never exceeds its segment; larger segments would also only postpone a
/// preallocation that fills the disk.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 32;

/// The most retired segments `Config::recycle_segments` may keep.
pub const RECYCLE_SEGMENTS_MAX: usize = 64;

/// The largest `Config::value_len_max`, `Config::batch_bytes_max` and `Config::batch_ops_max`:
/// 2^31 − 1 (2,147,483,647). Lengths and counts travel as u32s, with a bit to spare.
pub(crate) const LEN_MAX: usize = u32::MAX as usize / 2;

/// The most syncer threads `Config::syncers` may ask for.
pub const SYNCERS_MAX: usize = 16;

/// The most threads `Config::idle_poll_threads` may ask for.
pub const IDLE_POLL_THREADS_MAX: usize = 64;

/// Engine configuration. `Config::default()` is a sound production setting.
///
/// Set the fields that matter to you and take the rest from the default; `Engine::open`
/// checks the whole ([`Config::validate`]) and refuses it with [`Error::InvalidConfig`],
/// naming the setting, before it makes anything.
///
/// ```
/// use mergelog::{Config, WindowPolicy};
/// use std::time::Duration;
///
/// let config = Config {
///     segment_bytes: 16 << 20,        // 16 MiB segments
///     value_len_max: 64 << 10,        // values up to 64 KiB
///     window: WindowPolicy::Linger(Duration::from_micros(500)),
///     ..Config::default()
/// };
/// assert!(config.validate().is_ok());
///
/// // A rule broken: the message names the setting and says what to do.
/// let config = Config { window: WindowPolicy::Linger(Duration::from_millis(5)), ..config };
/// let refused = config.validate().unwrap_err();
/// assert!(refused.to_string().contains("window_age_max"), "{refused}");
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// Bytes of the ingest ring; a power of two, at least 64 KiB and at most 2 GiB. Default
    /// 16 MiB.
    pub ring_bytes: usize,
    /// Size of each segment file: a multiple of 4096, 64 KiB to 4 GiB, and room for one full
    /// batch after the segment's header (64 + 32 + `batch_bytes_max` rounded up to 8 bytes:
    /// with the default 4 MiB batches, 1 MiB segments are refused; lower `batch_bytes_max`
    /// with them). Default 64 MiB.
    pub segment_bytes: u64,
    /// Longest key accepted, at most 65,535. Default 4096. The empty key is a valid key.
    pub key_len_max: usize,
    /// Longest value accepted, at most 2^31 − 1 (2,147,483,647). Default 1 MiB.
    pub value_len_max: usize,
    /// A window is cut once its requests reach this many ring bytes; 4096 to 2^31 − 1, and a
    /// segment must hold one such batch (`segment_bytes`). Default 4 MiB.
    pub batch_bytes_max: usize,
    /// A window is cut once it holds this many operations; 1 to 2^31 − 1.
    /// Default 1,048,576. A request joins a window that holds fewer, and a request is never
    /// split: a window may end past this by one request's operations (a `WriteBatch`, which
    /// is atomic, of any length), and nothing joins it after that.
    pub batch_ops_max: usize,
    /// A window is cut this long after its first request, whatever the policy; 1 ns to 10 s,
    /// and at least the policy's own wait (`Linger`'s time, `Adaptive`'s quiet time).
    /// Default 1 ms.
    pub window_age_max: Duration,
    /// When to cut a window.
    pub window: WindowPolicy,
    /// Collapse duplicate writes and reads per key and sort the survivors (default true).
    /// Off gives plain group commit, for comparison.
    pub coalesce: bool,
    /// When acknowledgements are given.
    pub durability: Durability,
    /// How batch bytes reach the file.
    pub write_path: WritePath,
    /// Syncer threads: how many syncs may be in flight at once (1 to 16; default 2, and
    /// the second sync only while the disk is slow: `overlap_syncs_above`). A sync covers
    /// every frame written before it started, so with several the next window's sync can
    /// start while the one before is still running; they still complete in order, one
    /// contiguous durable watermark, and a failed one fails the engine (each syncer syncs
    /// through a file description of its own, so that a writeback error is reported to every
    /// one of them). Only large windows use it: a window of fewer than 128 requests still
    /// waits over the sync in flight and goes out with the requests it completes. With 1, the
    /// one syncer takes, syncs and completes each group by itself. Ignored with
    /// `Durability::NoSync`, which syncs nothing.
    pub syncers: usize,
    /// With `syncers` > 1: a sync starts while another runs only once the recent syncs have
    /// taken longer than this on average (a moving average over about the last eight); once
    /// the average falls below half of it, one sync at a time again. On a disk that others
    /// keep busy, two syncs in flight get more of it; on a quiet one they only split what one
    /// sync would carry, and each takes longer. Default 300 µs; `Duration::ZERO` overlaps
    /// whenever a syncer is free. At most 10 s.
    pub overlap_syncs_above: Duration,
    /// Threads that keep this machine's CPUs from idling while requests are in flight
    /// (`mergelog-poll`; 0 to 64, default 0: none). Each spins while a submitted request is
    /// not yet durable, at the lowest scheduling priority (`SCHED_IDLE`: a thread woken on its
    /// CPU preempts it at once), and sleeps otherwise. On a virtual machine whose idle CPUs
    /// halt (guest halt polling off), waking a thread on a halted CPU costs an exit to the
    /// host, and a request takes several such wake-ups (producer to flusher, flusher to
    /// syncer, the disk's interrupt, syncer to producer); a CPU kept busy takes them at once.
    /// It trades CPU for latency: on the project's 2-core virtual machine, with 1 thread, 4
    /// writers × 1 outstanding made 1.25–1.51× the puts per second (p50 172–194 against
    /// 217–252 µs) for 1.7× the CPU per put, and 1 × 1 1.15–1.25× for 2.5–2.7× the CPU per
    /// put (docs/decisions.md, "CPUs kept from idling"). Off by default: it burns CPU that the
    /// host could give others, and gains nothing where idle CPUs poll (bare metal, halt
    /// polling on). More than one per CPU is no use.
    pub idle_poll_threads: usize,
    /// What a producer sees when the ring is full.
    pub backpressure: Backpressure,
    /// What opening does with damage.
    pub recovery: RecoveryMode,
    /// How many segments `Engine::retire_before` keeps for reuse instead of deleting them
    /// (at most 64; the newest ones retired). A reused segment needs no zeros written before
    /// it can take frames: a log that retires its history then writes each byte once instead
    /// of twice. A file is reused only once nothing maps it: every mapping of a segment file
    /// (the engine's, which `ValueRef`s, `replay()` and followers share, and a `LogReader`'s
    /// in any process) holds a shared `flock` on it. Opening a log whose last segment is a
    /// reused file zeroes what follows its frames (tens of milliseconds for a 64 MiB
    /// segment). A run of `Compaction::Auto` keeps more while the engine runs: as many of the
    /// segments it retires as the log will fill before the next run can retire any, plus a
    /// margin learned from the runs that came too late (see `AutoCompaction`); `close` gives up what the pool holds beyond this number, and the
    /// prepared next segment too when this is 0 (a closed log then holds its segments only).
    /// An open after a crash keeps none of these spare files (one may hold frames of a roll the
    /// crash undid: docs/FORMAT.md, "Why a crash loses nothing acknowledged").
    /// Default 0, as RocksDB's `recycle_log_file_num`: retired segments are deleted.
    pub recycle_segments: usize,
    /// Keeps one segment's worth of disk in reserve (a zero-filled spare file, made at open)
    /// so that a compaction can make room on a full disk (default `false`). When the disk
    /// fills, writes are refused with `Error::NoSpace` (README, "A full disk"), and the way
    /// out for a log that is the store is `Engine::compact`, whose copies need a segment
    /// before it can retire any: without the reserve it fails with `NoSpace` too. With it,
    /// the copies take the reserve when no new segment can be made (the engine refuses writes
    /// from then on, until `Engine::resume`), the compaction retires the segments it has
    /// copied as it goes and reuses their files for the rest, and the reserve is made again
    /// from the first segments it retires. Costs `segment_bytes` of disk, held in the pool
    /// (a `recycle-N.tmp` file); needs compaction (not `Compaction::Off`). Like the pool, an
    /// open after a crash makes it afresh. `Stats::segments.reserved` says whether it is
    /// ready. With `Compaction::Auto` the compacting thread makes room by itself when the
    /// disk fills: the writers need only call `resume` until it succeeds.
    pub reserve_segment: bool,
    /// Throttling on consumer lag (default `None`: never). While the slowest durable
    /// consumer lags by more than the limit, `put`, `delete`, `merge` and `write` are throttled as
    /// `backpressure` says: `Reject` refuses them with `Error::Throttled` (back off and
    /// retry, as from the `Error::Busy` of a full ring: `Error::is_back_off` is true for
    /// both); `Block` waits until the lag falls to 90 % of the limit (the release point, so
    /// that one commit does not flip it on and off), writes are refused for lack of room
    /// (`Error::NoSpace`), or the engine closes (`Error::Closed`) or fails. `get` and `flush` add nothing to the backlog and are
    /// never throttled. No consumer, no throttling. The lag is re-measured on every commit
    /// of a consumer of this engine, when one is opened or removed, as batches become
    /// durable, and (for consumers made or committing from another process, through
    /// `LogReader::consumer`) by re-reading their files at most every 100 ms. The engine
    /// keeps each consumer's position: only that re-read (and the open) reads the consumer
    /// files, not a commit. With a bytes or age limit, a re-measure whose slowest consumer
    /// changed (and every re-read) walks the frame headers of the last segment and the
    /// frames of the slowest consumer's (as `Engine::consumers` does), so keep segments
    /// moderate if you set one.
    pub consumer_lag_max: Option<ConsumerLag>,
    /// How long request ids (`Engine::put_with_id` and friends) are remembered: a
    /// resubmission within it is a duplicate, never logged twice. Default: the newest
    /// 262,144 ids (up to twice as many), whatever their age.
    pub request_ids: crate::ids::IdHorizon,
    /// The operator of `Engine::merge` and `WriteBatch::merge` (default `None`: merges are
    /// refused at submit). The log holds merged values, never operands: an engine may be
    /// reopened with another operator, or none, and reads, replay and followers see the
    /// same values. `open` refuses an `Append` bound outside 1..=`value_len_max`, and the
    /// counter operators (8-byte values) with `value_len_max` under 8.
    pub merge: Option<MergeOperator>,
    /// When the log is compacted (`Engine::compact`): `Off`, `OnDemand` (the default: only
    /// when called) or `Auto` (also on a background thread, by live ratio and size).
    pub compaction: crate::compact::Compaction,
    /// How many pipeline events to keep for `Engine::take_trace` (default 0: none recorded).
    /// When on, the flusher and the syncers note each window's cut and hand-on, each group
    /// taken, each sync's start and end, each compaction batch, each roll and each wait for
    /// the bound on frames not yet durable (`TraceKind::UndurableBound`): a diagnostic
    /// timeline, a few events per window, never one per request. At most
    /// [`TRACE_EVENTS_MAX`](crate::TRACE_EVENTS_MAX); later events are counted, not kept.
    pub trace_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_bytes: 16 << 20,
            segment_bytes: 64 << 20,
            key_len_max: 4096,
            value_len_max: 1 << 20,
            batch_bytes_max: 4 << 20,
            batch_ops_max: 1 << 20,
            window_age_max: Duration::from_millis(1),
            window: WindowPolicy::default(),
            coalesce: true,
            durability: Durability::Sync,
            write_path: WritePath::default(),
            syncers: 2,
            overlap_syncs_above: Duration::from_micros(300),
            idle_poll_threads: 0,
            backpressure: Backpressure::default(),
            recovery: RecoveryMode::default(),
            recycle_segments: 0,
            reserve_segment: false,
            consumer_lag_max: None,
            request_ids: crate::ids::IdHorizon::default(),
            merge: None,
            compaction: crate::compact::Compaction::default(),
            trace_events: 0,
        }
    }
}

impl Config {
    /// Checks every limit against the others; the error names the setting and the rule.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], naming the setting and the rule it breaks, for the first
    /// setting found out of its range or inconsistent with another.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidConfig(s));
        self.compaction.validate().or_else(bad)?;
        if self.trace_events > crate::trace::TRACE_EVENTS_MAX {
            return bad(format!(
                "trace_events = {} exceeds {}",
                self.trace_events,
                crate::trace::TRACE_EVENTS_MAX
            ));
        }
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < 64 << 10 {
            return bad(format!(
                "ring_bytes = {} must be a power of two and at least 65536",
                self.ring_bytes
            ));
        }
        if self.ring_bytes > 1 << 31 {
            return bad(format!("ring_bytes = {} exceeds 2 GiB", self.ring_bytes));
        }
        if self.key_len_max > format::KEY_LEN_MAX {
            return bad(format!(
                "key_len_max = {} exceeds the format's limit of {}",
                self.key_len_max,
                format::KEY_LEN_MAX
            ));
        }
        if self.value_len_max > LEN_MAX {
            return bad(format!(
                "value_len_max = {} exceeds {LEN_MAX} (2^31 - 1)",
                self.value_len_max
            ));
        }
        if self.batch_ops_max == 0 || self.batch_ops_max > LEN_MAX {
            return bad(format!(
                "batch_ops_max = {} must be between 1 and {LEN_MAX} (2^31 - 1)",
                self.batch_ops_max
            ));
        }
        if self.batch_bytes_max < 4096 || self.batch_bytes_max > LEN_MAX {
            return bad(format!(
                "batch_bytes_max = {} must be between 4096 and {LEN_MAX} (2^31 - 1)",
                self.batch_bytes_max
            ));
        }
        if !self.segment_bytes.is_multiple_of(4096)
            || self.segment_bytes < 64 << 10
            || self.segment_bytes > SEGMENT_BYTES_MAX
        {
            return bad(format!(
                "segment_bytes = {} must be a multiple of 4096, at least 65536 and at most \
                 {SEGMENT_BYTES_MAX} (4 GiB)",
                self.segment_bytes
            ));
        }
        // A frame never exceeds the ring bytes of its window (a ring record spends more header
        // than a log record and its share of the frame trailer: 8 + 16 bytes of ring and
        // request header against 7 of record header and 16 of trailer; an id costs 16 bytes
        // in both), so a full window must fit in an empty segment.
        let frame_max = format::SEGMENT_HEADER_LEN + format::frame_len(self.batch_bytes_max);
        if frame_max as u64 > self.segment_bytes {
            return bad(format!(
                "segment_bytes = {} cannot hold one full batch (batch_bytes_max = {} needs {} bytes); raise segment_bytes or lower batch_bytes_max",
                self.segment_bytes, self.batch_bytes_max, frame_max
            ));
        }
        if self.recycle_segments > RECYCLE_SEGMENTS_MAX {
            return bad(format!(
                "recycle_segments = {} exceeds {RECYCLE_SEGMENTS_MAX}",
                self.recycle_segments
            ));
        }
        if self.reserve_segment && self.compaction == crate::compact::Compaction::Off {
            return bad(
                "reserve_segment = true needs compaction (the reserve is for a compaction's \
                 copies); compaction is Off"
                    .to_string(),
            );
        }
        if self.syncers == 0 || self.syncers > SYNCERS_MAX {
            return bad(format!(
                "syncers = {} must be between 1 and {SYNCERS_MAX}",
                self.syncers
            ));
        }
        if self.idle_poll_threads > IDLE_POLL_THREADS_MAX {
            return bad(format!(
                "idle_poll_threads = {} must be at most {IDLE_POLL_THREADS_MAX}",
                self.idle_poll_threads
            ));
        }
        if self.overlap_syncs_above > Duration::from_secs(10) {
            return bad(format!(
                "overlap_syncs_above = {:?} must be at most 10 s",
                self.overlap_syncs_above
            ));
        }
        if self.window_age_max.is_zero() || self.window_age_max > Duration::from_secs(10) {
            return bad(format!(
                "window_age_max = {:?} must be between 1 ns and 10 s",
                self.window_age_max
            ));
        }
        self.check_consumer_lag()?;
        match &self.merge {
            Some(MergeOperator::Append { max_len }) => {
                let max_len = *max_len;
                if max_len == 0 || max_len > self.value_len_max {
                    return bad(format!(
                        "merge = Append {{ max_len: {max_len} }} must be between 1 and value_len_max = {}",
                        self.value_len_max
                    ));
                }
            }
            // A counter is 8 bytes: with values shorter than that every merge would be
            // refused, which is a configuration error, not a request's.
            Some(op @ (MergeOperator::Add | MergeOperator::Max | MergeOperator::Min))
                if self.value_len_max < 8 =>
            {
                return bad(format!(
                    "merge = {op:?} keeps 8-byte counters: value_len_max = {} must be at least 8",
                    self.value_len_max
                ));
            }
            _ => {}
        }
        if self.request_ids.ids == 0 || self.request_ids.age == Some(Duration::ZERO) {
            return bad(format!(
                "request_ids = {:?} must remember at least one id, for more than no time",
                self.request_ids
            ));
        }
        match self.window {
            WindowPolicy::Adaptive { quiet } if quiet > self.window_age_max => {
                return bad(format!(
                    "window = Adaptive {{ quiet: {quiet:?} }} waits longer than window_age_max \
                     = {:?}, which cuts every window: shorten quiet or raise window_age_max",
                    self.window_age_max
                ))
            }
            WindowPolicy::Linger(l) if l > self.window_age_max => {
                return bad(format!(
                    "window = Linger({l:?}) waits longer than window_age_max = {:?}, which \
                     cuts every window: raise window_age_max to at least {l:?}",
                    self.window_age_max
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Refuses a `consumer_lag_max` that sets no limit or a zero one.
    fn check_consumer_lag(&self) -> Result<()> {
        let Some(lag) = self.consumer_lag_max else {
            return Ok(());
        };
        let zero =
            lag.batches == Some(0) || lag.bytes == Some(0) || lag.age == Some(Duration::ZERO);
        if zero || (lag.batches.is_none() && lag.bytes.is_none() && lag.age.is_none()) {
            return Err(Error::InvalidConfig(format!(
                "consumer_lag_max = {lag:?} must set batches, bytes or age, none of them zero"
            )));
        }
        Ok(())
    }

    /// The largest request (ring payload) this configuration accepts.
    pub(crate) fn request_len_max(&self, ring_payload_max: usize) -> (usize, RequestLimit) {
        let batch = self.batch_bytes_max - crate::ring::RECORD_HEADER;
        if ring_payload_max <= batch {
            (ring_payload_max, RequestLimit::RingRecord)
        } else {
            (batch, RequestLimit::BatchBytesMax)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults README.md quotes in its "Key settings (`Config`)" paragraph are
    /// `Config::default()`'s: a newcomer sizes a deployment by them.
    #[test]
    fn the_readme_quotes_the_defaults() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("Key settings (`Config`)")
            .expect("README has its Key settings paragraph");
        let end = start + readme[start..].find("\n\n").expect("the paragraph ends");
        // The paragraph with its line breaks as spaces.
        let text = readme[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let d = Config::default();
        let mib = |n: u64| {
            assert!(n.is_multiple_of(1 << 20), "{n} is not whole MiB");
            format!("{} MiB", n >> 20)
        };
        let thousands = |n: usize| {
            let s = n.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        };
        assert_eq!(d.durability, Durability::Sync);
        assert_eq!(d.write_path, WritePath::Pwrite);
        assert!(matches!(d.window, WindowPolicy::Adaptive { .. }));
        assert_eq!(d.backpressure, Backpressure::Block);
        assert_eq!(d.recovery, RecoveryMode::TolerateCorruptedTail);
        assert_eq!(d.compaction, crate::compact::Compaction::OnDemand);
        assert!(d.coalesce && d.merge.is_none() && d.consumer_lag_max.is_none());
        assert!(!d.reserve_segment);
        let quoted = [
            format!("`window_age_max` ({:?})", d.window_age_max).replace("ms", " ms"),
            format!("`batch_bytes_max` ({})", mib(d.batch_bytes_max as u64)),
            format!("`batch_ops_max` ({})", thousands(d.batch_ops_max)),
            format!("`ring_bytes` ({})", mib(d.ring_bytes as u64)),
            format!("`segment_bytes` ({},", mib(d.segment_bytes)),
            format!("`key_len_max` ({},", d.key_len_max),
            format!("`value_len_max` ({})", mib(d.value_len_max as u64)),
            format!("`recycle_segments` ({}:", d.recycle_segments),
            format!("`syncers` ({}:", d.syncers),
            format!(
                "`overlap_syncs_above` ({} µs:",
                d.overlap_syncs_above.as_micros()
            ),
            format!("`trace_events` ({}:", d.trace_events),
            format!("`idle_poll_threads` ({}:", d.idle_poll_threads),
            format!(
                "`request_ids` (the newest {} ids",
                thousands(d.request_ids.ids)
            ),
            "`durability` (`Sync` default".to_string(),
            "`write_path` (`Pwrite` default".to_string(),
            "`window` (`Adaptive` default".to_string(),
            "`backpressure` (`Block` default".to_string(),
            "`recovery` (`TolerateCorruptedTail` default".to_string(),
            "`compaction` (`OnDemand` default".to_string(),
            "`coalesce` (on)".to_string(),
            "`reserve_segment` (`false`".to_string(),
            "`consumer_lag_max` (`None`".to_string(),
            "`merge` (`None`".to_string(),
        ];
        for q in &quoted {
            assert!(
                text.contains(q.as_str()),
                "README does not say {q:?}:\n{text}"
            );
        }
    }
}
