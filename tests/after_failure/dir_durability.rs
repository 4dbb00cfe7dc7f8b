//! The log directory itself is durable (issue item 3): opening a directory that does not
//! exist creates each missing component of its path in turn, through the storage seam, and
//! syncs the parent of each one it created before anything is created inside the new
//! directory; opening a directory that exists creates no directory and syncs no parent.
//! A recording `Io` hook sees the order.

use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Before,
    After,
}

type Event = (Phase, IoOp, PathBuf);

/// Records every operation, before and after, and allows it.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Io for Recorder {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let event = (Phase::Before, op, path.to_owned());
        self.events.lock().unwrap().push(event);
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        let event = (Phase::After, op, path.to_owned());
        self.events.lock().unwrap().push(event);
    }
}

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        ..Config::default()
    }
}

/// Opens `dir` through a recorder, writes one put, closes; returns what was recorded.
fn open_recorded(dir: &Path) -> Vec<Event> {
    let rec = Arc::new(Recorder::default());
    let engine = Engine::open_with_io(dir, config(), rec.clone()).expect("open");
    engine.put(b"k", b"v").unwrap().wait().unwrap();
    engine.close().unwrap();
    rec.events()
}

/// The index of the first event at or after `from` matching `phase`, `op` and `path`.
fn find(events: &[Event], from: usize, phase: Phase, op: IoOp, path: &Path) -> Option<usize> {
    events[from..]
        .iter()
        .position(|(ph, o, p)| *ph == phase && *o == op && p == path)
        .map(|i| from + i)
}

fn show(events: &[Event]) -> String {
    events
        .iter()
        .map(|(ph, op, p)| format!("  {ph:?} {op:?} {}\n", p.display()))
        .collect()
}

#[test]
fn opening_a_new_nested_directory_syncs_the_parent_of_each_directory_it_creates() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_owned();
    let (a, b, c) = (t.join("a"), t.join("a/b"), t.join("a/b/c"));
    let events = open_recorded(&c);
    let log = show(&events);
    assert!(c.is_dir());

    let created: Vec<&PathBuf> = events
        .iter()
        .filter(|(ph, op, _)| *ph == Phase::After && *op == IoOp::CreateDir)
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(
        created,
        [&a, &b, &c],
        "the directories created, in order:\n{log}"
    );
    // Nothing is created in the new directory (the lock file, then the first segment's file)
    // before every directory on its path is durable.
    let first_file = events
        .iter()
        .position(|(ph, op, p)| {
            *ph == Phase::Before && *op == IoOp::Create && p.parent() == Some(&c)
        })
        .unwrap_or_else(|| panic!("no file was created in {}:\n{log}", c.display()));
    let first_segment = events
        .iter()
        .position(|(ph, op, p)| {
            *ph == Phase::Before
                && *op == IoOp::Create
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("prep-"))
        })
        .unwrap_or_else(|| panic!("no segment file was created:\n{log}"));
    assert!(first_file <= first_segment);
    for (dir, parent) in [(&a, &t), (&b, &a), (&c, &b)] {
        let made = find(&events, 0, Phase::After, IoOp::CreateDir, dir).unwrap();
        let sync = find(&events, made, Phase::Before, IoOp::SyncDir, parent).unwrap_or_else(|| {
            panic!(
                "{} was never synced after {} was created in it:\n{log}",
                parent.display(),
                dir.display()
            )
        });
        let synced = find(&events, sync, Phase::After, IoOp::SyncDir, parent).unwrap();
        assert!(
            synced < first_file,
            "the sync of {} (event {synced}) completes after the first file is created in {} \
             (event {first_file}):\n{log}",
            parent.display(),
            c.display()
        );
    }
}

#[test]
fn opening_an_existing_directory_creates_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_owned();
    let c = t.join("a/b/c");
    // An empty directory that exists, then the same directory holding a log.
    for (what, dir) in [("an empty directory", &t), ("a log directory", &c)] {
        if dir == &c {
            open_recorded(&c);
        }
        let events = open_recorded(dir);
        let log = show(&events);
        assert!(
            !events.iter().any(|(_, op, _)| *op == IoOp::CreateDir),
            "opening {what} created a directory:\n{log}"
        );
        let parents: Vec<&Path> = dir.ancestors().skip(1).collect();
        assert!(
            !events
                .iter()
                .any(|(_, op, p)| *op == IoOp::SyncDir && parents.contains(&p.as_path())),
            "opening {what} synced a directory above it:\n{log}"
        );
    }
}
