//! What happens at the edges of an engine's normal life, where a mistake shows as a hang or
//! a spinning thread rather than a wrong value: user code that calls the engine back from
//! inside `for_each`, a window that a request does not fit, and shutdown (followers blocked
//! on a closing engine, two `close` calls at once). Every wait is bounded: a hang fails the
//! test instead of stalling the suite.

#[path = "../common/mod.rs"]
mod common;
mod hooks;

mod for_each;
mod shutdown;
mod window;
