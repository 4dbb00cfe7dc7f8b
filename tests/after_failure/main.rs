//! What happens after something went wrong, or at the edges of an engine's normal life: a
//! failed sync, damaged media, a crash while the directory was being made, a closure that
//! calls back into the engine, a window that a request does not fit, and shutdown with work
//! still in flight. Each module holds the tests of one concern (issue "Trust after failure");
//! every test fails without the fix it guards. Every wait is bounded: a hang fails the test
//! instead of stalling the suite.

// These tests damage logs on purpose (and take the clean-close mark away): they change files
// behind the engine's back, not through its storage seam.
#![allow(clippy::disallowed_methods)]

// The helpers are shared with other test crates, which use other subsets of them.
#[path = "../common/mod.rs"]
mod common;
mod hooks;

mod clean_close;
mod compaction;
mod damage;
mod dir_durability;
mod followers;
mod for_each;
mod lifecycle;
mod no_room;
mod no_room_ids;
mod no_room_races;
mod point_in_time;
mod preparation;
mod reopen_after_eio;
mod retirement;
mod review;
mod shutdown;
mod spares;
mod syncers;
mod window;
