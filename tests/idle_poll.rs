//! `Config::idle_poll_threads`: the idle pollers start with the engine, run in the idle
//! scheduling class, leave every request's outcome as it was, and end with the close. A test
//! binary of its own: it counts the process's threads by name.

mod common;

use common::WAIT_MAX;
use mergelog::{Config, Engine};

/// The ids of this process's threads named `name`, and each one's scheduling policy (field 41
/// of `/proc/self/task/<tid>/stat`).
fn threads_named(name: &str) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let task = task.expect("a task").path();
        // A thread that ended since the listing has no files any more.
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // The name, in parentheses, may hold spaces: the fields after it start at field 3.
        let after = &stat[stat.rfind(')').expect("stat's name") + 2..];
        let policy = after
            .split(' ')
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .expect("stat's policy field");
        let tid = task.file_name().unwrap().to_string_lossy().into_owned();
        found.push((tid, policy));
    }
    found
}

#[test]
fn pollers_start_idle_leave_outcomes_alone_and_end_with_the_close() {
    const SCHED_IDLE: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        idle_poll_threads: 2,
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config()).expect("open");
    // Each poller names itself and takes the idle class as it starts, after the open returned
    // perhaps: looked at until both have, within the hang guard.
    let started = std::time::Instant::now();
    let idle = |p: &[(String, u32)]| p.len() == 2 && p.iter().all(|&(_, pol)| pol == SCHED_IDLE);
    let mut pollers = threads_named("mergelog-poll");
    while !idle(&pollers) && started.elapsed() < WAIT_MAX {
        std::thread::sleep(std::time::Duration::from_millis(1));
        pollers = threads_named("mergelog-poll");
    }
    assert!(
        idle(&pollers),
        "two pollers, each in the idle class (policy {SCHED_IDLE}): {pollers:?}"
    );
    std::thread::scope(|s| {
        for w in 0..4 {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..500u32 {
                    let key = format!("w{w}-{i}");
                    engine
                        .put(key.as_bytes(), &i.to_le_bytes())
                        .expect("put")
                        .wait_timeout(WAIT_MAX)
                        .expect("durable");
                }
            });
        }
    });
    engine.close().expect("close");
    assert_eq!(
        threads_named("mergelog-poll"),
        Vec::new(),
        "pollers left running after the close"
    );
    drop(engine);
    let engine = Engine::open(dir.path(), Config::default()).expect("reopen");
    assert_eq!(
        threads_named("mergelog-poll"),
        Vec::new(),
        "none by default"
    );
    for w in 0..4 {
        for i in 0..500u32 {
            let key = format!("w{w}-{i}");
            let got = engine
                .get(key.as_bytes())
                .expect("get")
                .wait()
                .expect("read");
            assert_eq!(got.as_deref(), Some(&i.to_le_bytes()[..]), "{key}");
        }
    }
    engine.close().expect("close");
}
