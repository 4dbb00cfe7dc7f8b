//! What the engine leaves on disk after something went wrong, and what a later open makes of
//! it: one module per concern, each with its own doc.

#[path = "../recovery_common/mod.rs"]
mod recovery_common;

mod dir_durability;
mod reopen_after_eio;
