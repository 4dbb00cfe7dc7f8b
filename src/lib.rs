//! # mergelog
//!
//! An I/O-scheduler-style merge-and-sort write batching engine over a memory-mapped,
//! append-only log.
//!
//! Producers on any thread submit puts, deletes, gets and atomic write batches; each call
//! returns at once with a [`Ticket`]. Requests wait, in place, in a lock-free ingest ring for
//! a short window. The flusher thread then coalesces the window (per key only the last write
//! survives; reads of one key share one lookup), sorts the survivors by key, appends them as
//! one checksummed frame to the log and makes it durable with one sync. Then every ticket of
//! the window completes. Reopening verifies and replays the log.
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
//! let stats = engine.stats();
//! assert!(stats.syncs >= 1);
//! engine.close()?; // drains, syncs, joins the flusher (Drop does it too)
//!
//! // Reopening replays the log.
//! let engine = Engine::open(dir.path(), Config::default())?;
//! assert_eq!(engine.read_to_vec(b"apple")?, Some(b"green".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! See `ARCHITECTURE.md` for the map of the code and `docs/FORMAT.md` for the on-disk format.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[doc(hidden)]
pub mod coalesce;
mod config;
mod engine;
mod error;
mod index;
#[doc(hidden)]
pub mod log;
mod reader;
#[doc(hidden)]
pub mod ring;
mod stats;
mod ticket;

pub use config::{Backpressure, Config, Durability, RecoveryMode, WindowPolicy, WritePath};
pub use engine::{Engine, OpenReport, WriteBatch};
pub use error::{Error, Result};
pub use index::ValueRef;
pub use log::format::{Record, RecordOp};
pub use log::recovery::Damage;
pub use reader::{Batch, Follower, LogReader, OwnedBatch};
pub use stats::{StageHistograms, Stats};
pub use ticket::{GetTicket, Ticket};

/// Internal stages, exposed for the criterion benches and the fuzz targets only. Not a
/// stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::coalesce;
    pub use crate::log::format;
    pub use crate::log::io;
    pub use crate::ring;
}
