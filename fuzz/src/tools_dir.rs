//! Target `tools_dir`: the `mergelog` command's log readers (`verify`, `inspect`, `dump`, as
//! library functions: `mergelog_tools`) over a directory of arbitrary segments.
//!
//! The directory is an `open_dir` input's (`OpenDirInput::parse`, fuzz/src/lib.rs). The tools
//! and the engine's own judgement (`LogReader::check`, and `Engine::open` on a copy) are asked
//! about it, and must agree:
//!
//! - none of them panics or changes a byte of the directory;
//! - `verify` finds the log clean exactly when the strict check (`AbsoluteConsistency`, a log
//!   written with syncs) does, and damaged exactly when that check refuses it, at the same
//!   file and offset; the engine's strict open agrees with the check
//!   (`check_agrees_with_open`);
//! - `inspect` reads every such directory: damage where `verify` finds the log damaged (file
//!   and offset; whether the engine refuses it is what the default check says), none where it
//!   is clean;
//! - `dump` reads every such directory, and says the engine would refuse the log (exit 1)
//!   exactly when the default check (`TolerateCorruptedTail`) refuses it, naming the file and
//!   offset in a note; a torn tail the default open would cut is named too.
//!
//! Depends on `mergelog`, `mergelog-tools` and `tempfile`, and on the fuzz library's
//! `OpenDirInput` through `crate::fuzz_checks` (the fuzz target and `tools/tests/fuzz_corpus.rs`
//! both provide it).

use crate::fuzz_checks::{check_agrees_with_open, scratch_dir, snapshot, OpenDirInput};
use mergelog::{Config, Durability, Engine, Error, LogReader, RecoveryMode};
use mergelog_tools::dump::{dump, DumpArgs};
use mergelog_tools::inspect::inspect;
use mergelog_tools::verify::{self, Outcome};
use std::path::Path;

/// The file and offset of a refusal, if `e` is one.
fn refusal(e: &Error) -> Option<(&Path, u64)> {
    match e {
        Error::Corrupt { path, offset, .. } | Error::DamagedHistory { path, offset, .. } => {
            Some((path, *offset))
        }
        _ => None,
    }
}

/// Target `tools_dir`: see the module's documentation.
pub fn tools_dir(data: &[u8]) {
    let input = OpenDirInput::parse(data);
    if input.skip {
        return;
    }
    let root = scratch_dir();
    let dir = root.path().join("t");
    std::fs::create_dir(&dir).expect("mkdir");
    input.materialize(&dir);
    let before = snapshot(&dir);

    let strict = LogReader::check(&dir, RecoveryMode::AbsoluteConsistency, Durability::Sync);
    let default = LogReader::check(&dir, RecoveryMode::TolerateCorruptedTail, Durability::Sync);
    let verified = verify::check(&dir, false);
    let inspected = inspect(&dir, usize::MAX);
    let args = DumpArgs {
        dir: dir.clone(),
        from: 0,
        json: false,
        encoding: None,
    };
    let mut out = Vec::new();
    let dumped = dump(&args, &mut out);
    assert!(
        snapshot(&dir) == before,
        "the tools or the checks changed the directory"
    );

    // verify and the strict check.
    let verify_damage = match (&verified, &strict) {
        (Ok(Outcome::Clean(..)), Ok(None)) => None,
        (Ok(Outcome::Clean(..)), other) => {
            panic!("verify finds clean a log the strict check does not: {other:?}")
        }
        (Ok(Outcome::Damaged(d)), Err(e)) => {
            assert_eq!(
                Some((d.path.as_path(), d.offset)),
                refusal(e),
                "verify ({}) and the strict check ({e}) name different damage",
                d.reason
            );
            Some(d)
        }
        (Ok(Outcome::Damaged(d)), other) => panic!(
            "verify finds damage ({} at {}: {}) where the strict check finds {other:?}",
            d.path.display(),
            d.offset,
            d.reason
        ),
        (Err(e), other) => panic!("verify failed ({e}); the strict check: {other:?}"),
    };

    // The engine's strict open agrees with the strict check (on the same directory: the
    // tools are done with it, and the open may repair it).
    let config = Config {
        recovery: RecoveryMode::AbsoluteConsistency,
        durability: Durability::Sync,
        segment_bytes: crate::fuzz_checks::ENGINE_SEGMENT_BYTES,
        ring_bytes: 64 << 10,
        batch_bytes_max: 4096,
        ..Config::default()
    };
    // inspect.
    let inspected = inspected.unwrap_or_else(|e| panic!("inspect failed: {e}"));
    match (verify_damage, inspected.damage()) {
        (None, None) => {}
        (None, Some(((file, offset, reason), _))) => {
            panic!("inspect finds damage ({file} at {offset}: {reason}) in a clean log")
        }
        (Some(d), None) => panic!(
            "inspect finds no damage where verify does ({} at {}: {})",
            d.path.display(),
            d.offset,
            d.reason
        ),
        (Some(_), Some(((file, _, _), refuses))) => {
            assert!(!file.is_empty(), "inspect's damage names no file");
            let expected = match &default {
                Ok(_) => false,
                Err(e) => refusal(e).is_some(),
            };
            assert_eq!(
                refuses,
                Some(expected),
                "inspect says the engine refuses the log: {refuses:?}; the default check: \
                 {default:?}"
            );
        }
    }
    assert!(inspected.consumer_damage().is_none(), "no consumer files");

    // dump.
    let dumped = dumped.unwrap_or_else(|e| panic!("dump failed: {e}"));
    let named = |path: &Path, offset: u64| {
        let at = format!("{} at offset {offset}", path.display());
        dumped.notes.iter().any(|n| n.contains(&at))
    };
    match &default {
        Err(e) => {
            let (path, offset) =
                refusal(e).unwrap_or_else(|| panic!("the default check failed: {e}"));
            assert!(dumped.refused, "dump does not say the engine refuses ({e})");
            assert!(
                named(path, offset),
                "dump's notes do not name the damage ({e}): {:?}",
                dumped.notes
            );
        }
        Ok(cut) => {
            assert!(
                !dumped.refused,
                "dump says the engine refuses a log the default check opens: {:?}",
                dumped.notes
            );
            if let Some(d) = cut {
                assert!(
                    named(&d.path, d.offset),
                    "dump's notes do not name the torn tail ({} at {}): {:?}",
                    d.path.display(),
                    d.offset,
                    dumped.notes
                );
            }
        }
    }

    let opened = Engine::open(&dir, config);
    check_agrees_with_open(&strict, &opened, "AbsoluteConsistency (tools_dir)");
    if let Ok(engine) = opened {
        let _ = engine.close();
    }
}
