//! The fuzz target `raft_store` (`fuzz/fuzz_targets/raft_store.rs`) as an ordinary test: every
//! input of `fuzz/corpus/raft_store/` and `fuzz/regressions/raft_store/` replayed through the
//! same checks (`fuzz/src/raft_store.rs`, included here), without nightly or cargo-fuzz. Each
//! input runs on its own thread so that one failure does not hide the others; the test fails
//! listing every input that panicked.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

#[path = "../../fuzz/src/raft_store.rs"]
mod raft_store;

#[path = "../../fuzz/src/replay.rs"]
mod replay;

fn replay(kind: &str, floor: usize) {
    let dir = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join("raft_store");
    let files = replay::inputs(&dir);
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| replay::run_one("raft_store", path, raft_store::raft_store))
        .collect();
    replay::assert_replayed(kind, files.len(), &failures, floor);
}

/// The committed seed corpus.
#[test]
fn seed_corpus_replays() {
    replay("corpus", 8);
}

/// Every input a fuzz run found and `tools/fuzz.sh` kept.
#[test]
fn fuzz_regressions_replay() {
    replay("regressions", 6);
}

/// The seeds, made by `RaftInput::encode`, parse to what they say and are committed
/// (`MERGELOG_WRITE_SEEDS=1` writes them instead of comparing); the checks are not vacuous:
/// the unchanged templates hold entries stored whole and in chunks, a vote, a committed id
/// and (template 0) a purged id, and a damaged chunk is found.
#[test]
fn seeds_are_the_encoded_layouts_and_the_templates_hold_every_kind() {
    use raft_store::{templates, RaftInput};
    for (i, t) in templates().iter().enumerate() {
        assert!(
            t.entries.len() >= 4,
            "template {i}: {} entries",
            t.entries.len()
        );
        assert!(t.vote.is_some() && t.committed.is_some(), "template {i}");
        let chunked = t
            .batches
            .iter()
            .flatten()
            .filter(|r| r.key.len() == 13 && r.key[0] == b'c')
            .count();
        assert!(chunked >= 4, "template {i}: {chunked} chunk records");
    }
    assert!(templates()[0].purged.is_some());
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("as-written-0", RaftInput::encode(0, (0, 3), &[])),
        ("as-written-1", RaftInput::encode(1, (1, 2), &[])),
        (
            "split-batches",
            RaftInput::encode(0, (2, 5), &[8, 8, 8, 8, 8, 8, 8, 8]),
        ),
        // The first records of template 1: the vote, then the first append's chunks.
        ("vote-byte", RaftInput::encode(1, (0, 4), &[3, 0, 0x01])),
        ("drop-second", RaftInput::encode(1, (0, 6), &[0, 2])),
        (
            "chunk-byte",
            RaftInput::encode(1, (0, 6), &[0, 3, 20, 0x40]),
        ),
        ("chunk-cut", RaftInput::encode(1, (0, 6), &[0, 0, 5, 10])),
        ("chunk-key", RaftInput::encode(1, (0, 6), &[0, 4, 12, 0x01])),
        (
            "entry-added",
            RaftInput::encode(0, (0, 9), &[7, 0, 9, 0, 3, 1, 2, 3]),
        ),
        ("meta-replaced", RaftInput::encode(0, (0, 9), &[6, 2, 0, 0])),
        (
            "delete-added",
            RaftInput::encode(1, (0, 9), &[0, 7, 5, 3, 0, 0]),
        ),
        // Template 1's records: the vote, entry 3's 4 chunks and entry 5's 2, entries 0 to 5,
        // the committed id. Entry 2's term (its encoding's first byte) 3 xor 2 = 1, between
        // entries of term 3.
        (
            "term-down",
            RaftInput::encode(1, (0, 6), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 2]),
        ),
        // The committed id's term (its second byte, after `Some`'s) 3 xor 2 = 1: not entry
        // 3's log id.
        (
            "committed-term",
            RaftInput::encode(1, (0, 6), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2]),
        ),
    ];
    // Every record of template 1 kept, then calls on the opened store (`raft_store::drive`):
    // a vote up, appends at the end and past it, a committed id, a truncate, a purge.
    let records = templates()[1].batches.iter().map(Vec::len).sum::<usize>();
    let calls = [8, 1, 9, 2, 17, 3, 10, 1, 2, 0, 11, 3, 3, 3, 12, 1, 4, 2];
    let ops = [vec![0; records], calls.to_vec()].concat();
    let mut seeds = seeds;
    seeds.push(("calls", RaftInput::encode(1, (0, 6), &ops)));
    assert_eq!(RaftInput::parse(&seeds[seeds.len() - 1].1).calls, calls);
    let root = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")).join("corpus/raft_store");
    let write = std::env::var_os("MERGELOG_WRITE_SEEDS").is_some();
    for (name, bytes) in &seeds {
        let parsed = RaftInput::parse(bytes);
        assert!(!parsed.batches.is_empty(), "seed {name}");
        let path = root.join(name);
        if write {
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("seed {name} is not committed ({e})"));
            assert!(&committed == bytes, "seed {name} differs from its layout");
        }
    }
    assert!(RaftInput::parse(&seeds[0].1).unchanged);
    assert!(!RaftInput::parse(&seeds[5].1).unchanged);
    // The two last seeds are refused at open for what they damage.
    let refusal = |name: &str| {
        let (_, bytes) = seeds.iter().find(|(n, _)| *n == name).unwrap();
        raft_store::open_input(bytes).expect_err(name)
    };
    let e = refusal("term-down");
    assert!(
        e.contains("entry 2 has the log id T1-N1-2, whose term (leader id) is below that of"),
        "{e}"
    );
    let e = refusal("committed-term");
    assert!(
        e.contains("the committed log id T1-N1-3 is not that of entry 3, T3-N1-3"),
        "{e}"
    );
}
