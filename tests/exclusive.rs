//! Exclusive access and permissions (DESIGN.md §2, "Exclusive access"): one engine per
//! directory at a time, whether the second opener is in the same process or another one; a
//! refused open changes nothing on disk; log files are created without world write
//! permission; a `LogReader` needs no lock and reads while an engine holds it.
//!
//! The other process is this test binary itself, re-executed with `--exact exclusive_child`
//! and the directory in `MERGELOG_EXCLUSIVE_CHILD_DIR` (as `tests/crash.rs` does). The child
//! opens the engine, makes one put durable, prints `@@OPEN`, and waits for its stdin to close;
//! then it closes the engine and exits.

mod common;

use common::log::segment_files;
use common::WAIT_MAX;
use mergelog::{Config, Engine, Error, LogReader};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_DIR_ENV: &str = "MERGELOG_EXCLUSIVE_CHILD_DIR";
const OPEN_MARK: &str = "@@OPEN";

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 256 << 10,
        ..Config::default()
    }
}

fn put(engine: &Engine, key: &[u8], value: &[u8]) {
    engine
        .put(key, value)
        .expect("put")
        .wait_timeout(WAIT_MAX)
        .expect("put durable");
}

fn expect_locked(dir: &Path, who: &str) {
    match Engine::open(dir, config()) {
        Err(Error::Locked(path)) => assert_eq!(path, dir, "Locked names the directory"),
        Err(e) => panic!("{who}: second open failed with {e:?}, not Locked"),
        Ok(_) => panic!("{who}: second open of a directory in use succeeded"),
    }
}

/// Every file of `dir` with its content, once the directory has stopped changing (the
/// engine prepares the next segment in the background).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let take = || {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(entry.path()).expect("read file"));
        }
        files
    };
    let deadline = Instant::now() + WAIT_MAX;
    let mut last = take();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = take();
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "{} never settles", dir.display());
        last = now;
    }
}

#[test]
fn second_open_in_the_same_process_is_locked_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = Engine::open(dir.path(), config()).expect("open");
    put(&first, b"k", b"v1");
    let before = snapshot(dir.path());
    assert!(
        before.contains_key("LOCK"),
        "the lock file exists: {:?}",
        before.keys()
    );

    for attempt in 0..3 {
        expect_locked(dir.path(), &format!("same process, attempt {attempt}"));
    }
    // A refused open touched no file: no repair, no prep-file cleanup, nothing created.
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused open changed the directory"
    );

    // The first engine goes on undisturbed.
    put(&first, b"k", b"v2");
    assert_eq!(first.read_to_vec(b"k").unwrap(), Some(b"v2".to_vec()));

    // close() releases the lock even before the engine value is dropped.
    first.close().expect("close");
    let second = Engine::open(dir.path(), config()).expect("open after close");
    assert_eq!(second.read_to_vec(b"k").unwrap(), Some(b"v2".to_vec()));
    expect_locked(dir.path(), "while the second engine holds it");
    drop(second);
    // Dropping (without close) releases it too.
    let third = Engine::open(dir.path(), config()).expect("open after drop");
    assert_eq!(third.read_to_vec(b"k").unwrap(), Some(b"v2".to_vec()));
    drop(first);
}

/// Many threads race to open one directory: exactly one wins at a time.
#[test]
fn racing_opens_in_one_process_get_one_engine() {
    let dir = tempfile::tempdir().unwrap();
    drop(Engine::open(dir.path(), config()).expect("create the log"));
    let barrier = std::sync::Barrier::new(8);
    let outcomes: Vec<Result<Engine, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    Engine::open(dir.path(), config())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The winner's engine stays open (it is in `outcomes`), so every other open is refused.
    let mut engines = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(engine) => engines.push(engine),
            Err(Error::Locked(_)) => {}
            Err(e) => panic!("racing open failed with {e:?}, not Locked"),
        }
    }
    assert_eq!(engines.len(), 1, "racing opens: {} engines", engines.len());
}

/// The child half of `second_open_from_another_process_is_locked`.
#[test]
fn exclusive_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return; // an ordinary test run
    };
    let engine = match Engine::open(&dir, config()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("child: open failed: {e}");
            std::process::exit(3);
        }
    };
    put(&engine, b"child", b"was here");
    println!("{OPEN_MARK}");
    // Hold the directory until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    engine.close().expect("child close");
    println!("@@CLOSED");
}

struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_child(dir: &Path) -> (ChildGuard, mpsc::Receiver<String>) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "exclusive_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(Some(child)), rx)
}

fn wait_for_line(rx: &mpsc::Receiver<String>, mark: &str) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // libtest may print "test exclusive_child ... " on the same line first.
            Ok(line) if line.trim_end().ends_with(mark) => return,
            Ok(_) => {}
            Err(e) => panic!("child never printed {mark}: {e}"),
        }
    }
}

#[test]
fn second_open_from_another_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_child(dir.path());
    wait_for_line(&lines, OPEN_MARK);

    let before = snapshot(dir.path());
    expect_locked(dir.path(), "other process");
    expect_locked(dir.path(), "other process, again");
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused open changed the directory"
    );

    // A reader needs no lock: it sees the child's durable put while the child holds the lock.
    let reader = LogReader::open(dir.path()).expect("reader while the child holds the lock");
    let records: Vec<(Vec<u8>, Vec<u8>)> = reader
        .batches()
        .flat_map(|b| {
            b.records()
                .map(|r| (r.key.to_vec(), r.value.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(records, vec![(b"child".to_vec(), b"was here".to_vec())]);

    // Let the child go: close its stdin, then it closes the engine and exits.
    let mut proc = child.0.take().expect("child");
    drop(proc.stdin.take());
    wait_for_line(&lines, "@@CLOSED");
    let deadline = Instant::now() + WAIT_MAX;
    let status = loop {
        if let Some(s) = proc.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = proc.kill();
            panic!("child did not exit after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "child exited with {status}");

    let engine = Engine::open(dir.path(), config()).expect("open after the child exited");
    assert_eq!(
        engine.read_to_vec(b"child").unwrap(),
        Some(b"was here".to_vec())
    );
}

/// A lock held by a process that dies without closing (SIGKILL) is released by the kernel.
#[test]
fn lock_of_a_killed_process_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_child(dir.path());
    wait_for_line(&lines, OPEN_MARK);
    expect_locked(dir.path(), "other process");
    let mut proc = child.0.take().expect("child");
    proc.kill().expect("kill");
    proc.wait().expect("wait");
    let engine = Engine::open(dir.path(), config()).expect("open after the holder was killed");
    assert_eq!(
        engine.read_to_vec(b"child").unwrap(),
        Some(b"was here".to_vec())
    );
}

/// Sets the process umask for the life of the guard. The umask is process-wide, so the tests
/// that set it take turns (otherwise one could restore the old mask while the other still
/// relies on mask 0, and pass without testing anything).
struct Umask {
    old: libc::mode_t,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static UMASK_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        let turn = UMASK_TURN.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
        let old = unsafe { libc::umask(mask) };
        Umask { old, _turn: turn }
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(self.old) };
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
}

#[test]
fn log_files_are_not_world_writable() {
    // With umask 0 the file system applies no mask: the modes are exactly what the engine asks
    // for. (Only making files more permissive than usual, so harmless to parallel tests.)
    let _umask = Umask::set(0);
    let root = tempfile::tempdir().unwrap();
    let dir: PathBuf = root.path().join("log");
    let engine = Engine::open(&dir, config()).expect("open");
    // Enough to roll into several segments, so activated prepared files are checked too.
    let value = vec![7u8; 1000];
    for i in 0..300u32 {
        let t = engine.put(&i.to_be_bytes(), &value).expect("put");
        if i % 50 == 49 {
            t.wait_timeout(WAIT_MAX).expect("durable");
        }
    }
    engine.flush().unwrap().wait_timeout(WAIT_MAX).unwrap();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let m = mode(&path);
        assert_eq!(m & 0o002, 0, "{name} is world-writable (mode {m:o})");
        assert_eq!(m & 0o020, 0, "{name} is group-writable (mode {m:o})");
        checked.push(name);
    }
    let segments = segment_files(&dir).len();
    assert!(
        checked.iter().any(|n| n == "LOCK"),
        "no LOCK file: {checked:?}"
    );
    assert!(segments >= 3, "the log did not roll: {checked:?}");
    engine.close().unwrap();
    // Files made by recovery (a repaired tail) keep their mode too.
    let engine = Engine::open(&dir, config()).expect("reopen");
    drop(engine);
    for entry in std::fs::read_dir(&dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let m = mode(&path);
        assert_eq!(
            m & 0o002,
            0,
            "{} is world-writable (mode {m:o})",
            path.display()
        );
    }
}

#[test]
fn reader_reads_while_the_engine_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    for i in 0..100u32 {
        put(&engine, format!("key-{i:03}").as_bytes(), &i.to_le_bytes());
    }
    // The engine holds the lock...
    expect_locked(dir.path(), "same process");
    // ...and a reader opens anyway, in every mode, and sees every durable write.
    for mode in [
        mergelog::RecoveryMode::TolerateCorruptedTail,
        mergelog::RecoveryMode::PointInTime,
        mergelog::RecoveryMode::AbsoluteConsistency,
    ] {
        let reader = LogReader::open_with(dir.path(), mode)
            .unwrap_or_else(|e| panic!("reader ({mode:?}) while locked: {e}"));
        let mut state = BTreeMap::new();
        for batch in reader.batches() {
            for r in batch.records() {
                state.insert(r.key.to_vec(), r.value.to_vec());
            }
        }
        assert_eq!(state.len(), 100, "{mode:?}");
        for i in 0..100u32 {
            assert_eq!(
                state.get(format!("key-{i:03}").as_bytes()),
                Some(&i.to_le_bytes().to_vec()),
                "{mode:?}"
            );
        }
    }
    // A reader opened before more writes follows them as they land.
    let reader = LogReader::open(dir.path()).expect("reader");
    let mut follower = reader.follow(reader.next_seq());
    put(&engine, b"late", b"write");
    let batch = follower
        .next_timeout(WAIT_MAX)
        .expect("follow")
        .expect("the late write's batch");
    assert!(batch
        .records
        .iter()
        .any(|r| r.key == b"late" && r.value == b"write"));
    // The engine is still the only writer, and it still works.
    expect_locked(dir.path(), "after the readers");
    put(&engine, b"after", b"readers");
    engine.close().unwrap();
}

/// The directory the engine creates (when it does not exist yet) is not world-writable
/// either: otherwise anyone could delete or replace its segment files.
#[test]
fn log_directory_the_engine_creates_is_not_world_writable() {
    let _umask = Umask::set(0);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("log");
    let engine = Engine::open(&dir, config()).expect("open");
    for d in [&dir, &root.path().join("a")] {
        let m = mode(d);
        assert_eq!(
            m & 0o002,
            0,
            "{} is world-writable (mode {m:o})",
            d.display()
        );
    }
    engine.close().unwrap();
}

/// A process forked while an engine is open holds a copy of its lock descriptor until it
/// execs or exits, and the lock lives as long as any copy does: closing the engine and opening
/// the directory again right away must not report it locked by another engine (the open
/// waits briefly for such a copy to go).
#[test]
fn a_reopen_waits_out_a_forked_childs_copy_of_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    // SAFETY: the child only sleeps and `_exit`s, both async-signal-safe, so forking a
    // multi-threaded process is sound here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: async-signal-safe calls only (see above).
        unsafe {
            libc::usleep(40_000);
            libc::_exit(0);
        }
    }
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(dir.path(), config());
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    reopened.expect("a reopen while a forked child holds a copy of the lock descriptor");
}
