//! What happens after something went wrong: a failed sync, damaged media, a crash while the
//! directory was being made, a closure that calls back into the engine, a window that could
//! spin, and shutdown with work still in flight. Each module holds the tests of one concern
//! (issue "Trust after failure"); every test fails without the fix it guards.

// The helpers are shared with other test crates, which use other subsets of them.
#[path = "../common/mod.rs"]
mod common;

mod clean_close;
mod damage;
mod point_in_time;
