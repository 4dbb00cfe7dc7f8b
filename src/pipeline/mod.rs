//! The pipeline's hand-offs between threads, kept apart from the threads themselves (in
//! `engine.rs`) so that loom can model them: this module is built under `--cfg loom` too, with
//! the atomics and the mutex of [`crate::sync`].
//!
//! * [`handoff`]: waiting for the durable watermark without blocking a thread: the wakers of
//!   pending futures ([`handoff::FutureWakers`], used by `ticket::Completion`) and the
//!   flusher's nap until the sync in flight completes ([`handoff::SyncNap`]).
//! * [`window`]: when the flusher cuts a window, a pure function over what it observed (not
//!   built under loom: it has no hand-off to model).

pub(crate) mod handoff;
#[cfg(not(loom))]
pub(crate) mod window;
