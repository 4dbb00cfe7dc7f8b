//! # mergelog
//!
//! An I/O-scheduler-style merge-and-sort write batching engine over a memory-mapped,
//! append-only log.
//!
//! Producers on any thread submit puts, deletes, gets and atomic write batches; each call
//! returns with a [`Ticket`], at once unless the ingest ring is full or a write is throttled on
//! a consumer's lag (`Config::consumer_lag_max`): under the default `Backpressure::Block` it
//! then parks the thread until there is room (the `_async` forms wait as futures instead).
//! Requests wait, in place, in a lock-free ingest ring for a short window. The flusher then
//! coalesces the window (per key only the last write survives; reads of one key share one
//! lookup), sorts the survivors by key and appends them as one checksummed frame to the log; a
//! syncer thread makes it durable with one sync (while the flusher prepares the next window),
//! and every ticket of the window completes. Reopening verifies and replays the log.
//!
//! ```
//! use mergelog::{Config, Engine, WriteBatch};
//!
//! # fn main() -> mergelog::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(dir.path(), Config::default())?;
//!
//! // Submitting returns at once; the ticket completes when the write is durable.
//! let t1 = engine.put(b"apple", b"red")?;
//! let t2 = engine.put(b"apple", b"green")?; // may coalesce with t1: only the last is logged
//! let mut batch = WriteBatch::new();
//! batch.put(b"kiwi", b"brown").delete(b"plum");
//! let t3 = engine.write(&batch)?; // atomic: one frame, all or nothing
//! t1.wait()?;
//! t2.wait()?;
//! t3.wait()?;
//!
//! // A windowed get is ordered with the writes and sees every earlier one.
//! assert_eq!(engine.get(b"apple")?.wait()?, Some(b"green".to_vec()));
//! // A durable read goes straight to the index, zero-copy from the log's mapping.
//! assert_eq!(engine.read(b"kiwi")?.as_deref(), Some(&b"brown"[..]));
//!
//! // Replay the history in order; once a snapshot holds it, retire it (whole segments).
//! let batches = engine.replay()?.batches().count();
//! assert!(batches >= 1);
//! let retired = engine.retire_before(engine.replay()?.next_seq())?;
//! assert_eq!(retired.segments, 0); // everything is still in the segment being written
//!
//! let stats = engine.stats(); // counters and per-stage latency histograms
//! assert!(stats.syncs >= 1);
//! assert_eq!(engine.counts().syncs, stats.syncs); // counters alone: cheap to poll
//! engine.close()?; // drains, syncs, joins the flusher (Drop does it too)
//!
//! // Reopening replays the log.
//! let engine = Engine::open(dir.path(), Config::default())?;
//! assert_eq!(engine.read_to_vec(b"apple")?, Some(b"green".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! ## Three ways to use it
//!
//! - **A key-value write path.** [`Engine::put`], [`Engine::delete`] and [`Engine::write`]
//!   (or their `_async` forms: `engine.put_async(k, v).await?.await?`, submit then
//!   durability, on any executor) give a [`Ticket`] per request; [`Engine::read`] reads what
//!   is durable, [`Engine::get`] reads in order with the writes. `examples/kv_async.rs`:
//!   many clients on one thread.
//! - **A write-ahead log under your own state.** Apply writes in log order, each once its
//!   ticket is durable; checkpoint your state with the batch [`Seq`] `S` it covers; call
//!   [`Engine::retire_before`]`(S + 1)` once the checkpoint is durable; at open, replay
//!   `engine.replay()?.batches_from(S + 1)?` ([`LogReader::batches_from`]: an error, not a
//!   later start, if the log no longer holds batch `S + 1`, or ends before it).
//!   `examples/kv_wal/store.rs`, and README, "Using mergelog as a write-ahead log".
//! - **An event log with durable consumers.** [`Engine::consumer`] yields the batches after
//!   its last [`Consumer::commit`], across restarts (at-least-once: see [`Consumer`]);
//!   request ids ([`Engine::put_with_id`]) make a consumer's effects happen once.
//!   `examples/ledger.rs`, an event-sourced ledger in two processes.
//!
//! In async code, the `_async` submits and the futures (tickets, in-process followers' and
//! consumers' `poll_next`) never block the thread; the calls that do (file I/O: a consumer's
//! commit, retirement, compaction, backups; `close` and the engine's drop) say so under
//! "Blocking" in their docs, and README's "Calls that block the thread" lists them all.
//!
//! Every limit is a field of [`Config`], checked at [`Engine::open`] or at submit; every
//! error ([`Error`]) says what happened and, where something can be done, what to do.
//!
//! Each open engine runs `mergelog-flusher` (windows, coalescing, log writes) and
//! `Config::syncers` syncer threads (`mergelog-syncer`, `mergelog-syncer-1`, ...: syncs and
//! completions; two by default, one under `Durability::NoSync`), plus `mergelog-prep` while it
//! prepares the next segment file, `mergelog-compactor` under `Compaction::Auto`,
//! `mergelog-follow-poll` while a polling follower is awaited as a future, and `mergelog-close`
//! for an engine dropped inside a waker it calls (it closes the engine off that thread). The
//! names show in `top -H`, `perf` and `/proc` (where the kernel keeps their first 15 bytes), so
//! their CPU can be told apart from the producers'; `mergelog bench` reports it that way.
//!
//! See `ARCHITECTURE.md` for the map of the code and `docs/FORMAT.md` for the on-disk format.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// Every public function that returns a `Result` says when it fails (`# Errors`).
#![warn(clippy::missing_errors_doc)]

// Under `--cfg loom` only the ring, the pipeline's hand-offs and the completion's watermark
// are built (with `sync`, the shim that gives them loom's atomics, mutex, parking and futex):
// their loom model tests need loom's primitives, which the threads of the rest of the engine
// cannot use.
#[cfg(not(loom))]
mod backup;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod coalesce;
#[cfg(not(loom))]
mod compact;
#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod consumer;
#[cfg(not(loom))]
mod engine;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod ids;
#[cfg(not(loom))]
mod index;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod log;
#[cfg(not(loom))]
mod merge;
// Under loom only its loom tests use it.
#[cfg_attr(loom, allow(dead_code))]
mod pipeline;
#[cfg(not(loom))]
mod reader;
#[cfg(not(loom))]
mod request;
#[doc(hidden)]
pub mod ring;
#[cfg(not(loom))]
mod room;
#[cfg(not(loom))]
mod seq;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod submit_async;
mod sync;
#[cfg(not(loom))]
mod throttle;
#[cfg(not(loom))]
mod ticket;
#[cfg(not(loom))]
mod trace;
// Under loom only its loom tests use it.
#[cfg_attr(loom, allow(dead_code))]
mod watermark;

#[cfg(not(loom))]
pub use backup::Backup;
#[cfg(not(loom))]
pub use compact::{AutoCompaction, Compacted, Compaction, Space};
#[cfg(not(loom))]
pub use config::{
    Backpressure, Config, ConsumerLag, Durability, RecoveryMode, WindowPolicy, WritePath,
    SEGMENT_BYTES_MAX,
};
#[cfg(not(loom))]
pub use consumer::{Consumer, ConsumerInfo, ConsumerPosition};
#[cfg(not(loom))]
pub use engine::{Engine, OpenReport, Retired, SegmentInfo};
#[cfg(not(loom))]
pub use error::{Error, RequestLimit, Result};
#[cfg(not(loom))]
pub use ids::{IdHorizon, IdTicket, Outcome, RequestId};
#[cfg(not(loom))]
pub use index::ValueRef;
#[cfg(not(loom))]
pub use log::format::{Record, RecordOp};
#[cfg(not(loom))]
pub use log::recovery::Damage;
#[cfg(not(loom))]
pub use merge::{MergeFn, MergeOperator};
#[cfg(not(loom))]
pub use reader::{Batch, Follower, LogReader, OwnedBatch, OwnedRecord, PendingId};
#[cfg(not(loom))]
pub use request::WriteBatch;
#[cfg(not(loom))]
pub use seq::Seq;
#[cfg(not(loom))]
pub use stats::{CompactionCounts, Counts, SegmentCounts, StageHistograms, Stats, SyncTime};
#[cfg(not(loom))]
pub use ticket::{GetTicket, Ticket};
#[cfg(not(loom))]
pub use trace::{Trace, TraceEvent, TraceKind, TRACE_EVENTS_MAX};

/// Internal stages, exposed for the criterion benches and the fuzz targets only. Not a
/// stable API.
#[cfg(not(loom))]
#[doc(hidden)]
pub mod internals {
    pub use crate::coalesce;
    pub use crate::index::BenchIndex;
    pub use crate::log::dir::{list_segments, what_it_holds};
    pub use crate::log::fds;
    pub use crate::log::format;
    pub use crate::log::io;
    pub use crate::ring;
}

/// The README's Rust blocks, as doctests (`cargo test --doc`), so the first code a newcomer
/// copies builds: compiled, not run (the library example opens a path under `/var/lib`: the
/// crate documentation's example above runs the same on a temporary directory; the
/// full-disk one needs a full disk). The README is not the crate's documentation (the `//!`
/// text above is); it is included only here, under `cfg(doctest)`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;
