//! Bad input: every limit checked at its boundary (the largest accepted input, the smallest
//! rejected one), every rejection answered with the `Error` variant that names the limit and
//! the size, and nothing of a rejected request ever reaching the log (each check ends by
//! reopening the directory and comparing its state with what was accepted).

mod common;

use common::log::{read_log, replay};
use common::{engine_state, State, WAIT_MAX};
use mergelog::internals::format::{frame_len, SEGMENT_HEADER_LEN};
use mergelog::{
    Backpressure, Config, Durability, Engine, Error, MergeOperator, RequestLimit, WindowPolicy,
    WriteBatch,
};
use std::path::PathBuf;
use std::time::Duration;

/// A small, fast configuration the tests start from.
fn base() -> Config {
    Config {
        ring_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        batch_bytes_max: 256 << 10,
        durability: Durability::NoSync,
        ..Config::default()
    }
}

/// True if `msg` holds `word` as a whole token (so that "10" does not match "100").
fn names(msg: &str, word: &str) -> bool {
    msg.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|t| t == word)
}

fn assert_names(err: &Error, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(
            names(&msg, w),
            "{err:?} displays {msg:?}, which does not name {w:?}"
        );
    }
}

/// An engine plus the state it must hold: what was accepted, nothing else.
struct Store {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: Config,
    engine: Option<Engine>,
    model: State,
    /// Operations accepted by the current engine instance (its `stats().submitted`).
    accepted: u64,
}

impl Store {
    /// Opens a fresh directory and writes two keys, so that "nothing changed" is checked
    /// against a non-empty state.
    fn new(config: Config) -> Store {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        let engine = Engine::open(&dir, config.clone()).expect("open");
        let mut s = Store {
            _tmp: tmp,
            dir,
            config,
            engine: Some(engine),
            model: State::new(),
            accepted: 0,
        };
        // Cut to the limits, so that even a zero limit has a valid seed.
        let (k, v) = (s.config.key_len_max, s.config.value_len_max);
        s.put(&b"seed-1"[..k.min(6)], &b"one"[..v.min(3)]);
        s.put(&b"seed-2"[..k.min(6)], &b"two"[..v.min(3)]);
        s
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine is open")
    }

    /// A put that must be accepted and become durable.
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let t = self.engine().put(key, value).expect("put accepted");
        // Cut the window now, whatever the configuration's linger.
        let _cut = self.engine().flush().expect("flush");
        t.wait_timeout(WAIT_MAX).expect("put durable");
        self.accepted += 1;
        self.model.insert(key.to_vec(), value.to_vec());
    }

    /// A batch that must be accepted and become durable.
    fn write(&mut self, batch: &WriteBatch, ops: &[(&[u8], Option<&[u8]>)]) {
        let t = self.engine().write(batch).expect("batch accepted");
        let _cut = self.engine().flush().expect("flush");
        t.wait_timeout(WAIT_MAX).expect("batch durable");
        self.accepted += ops.len() as u64;
        for (k, v) in ops {
            match v {
                Some(v) => self.model.insert(k.to_vec(), v.to_vec()),
                None => self.model.remove(*k),
            };
        }
    }

    /// The engine holds exactly the accepted state now, its log replays to it, and so does
    /// the engine reopened on the directory.
    fn verify(&mut self) {
        let engine = self.engine.take().expect("engine is open");
        let t = engine.flush().expect("flush");
        t.wait_timeout(WAIT_MAX).expect("flush durable");
        assert_eq!(engine_state(&engine), self.model, "state before reopen");
        engine.close().expect("close");
        assert_eq!(
            engine.stats().submitted,
            self.accepted,
            "stats.submitted counts exactly the accepted operations"
        );
        drop(engine);
        let frames = read_log(&self.dir, Some(self.config.segment_bytes));
        assert_eq!(replay(&frames), self.model, "log replay");
        let engine = Engine::open(&self.dir, self.config.clone()).expect("reopen");
        assert_eq!(engine_state(&engine), self.model, "state after reopen");
        self.engine = Some(engine);
        self.accepted = 0;
    }
}

/// The ways a key reaches the engine.
#[derive(Clone, Copy, Debug)]
enum KeyUse {
    Put,
    Delete,
    Get,
    BatchPut,
    BatchDelete,
    Read,
}

const KEY_USES: [KeyUse; 6] = [
    KeyUse::Put,
    KeyUse::Delete,
    KeyUse::Get,
    KeyUse::BatchPut,
    KeyUse::BatchDelete,
    KeyUse::Read,
];

/// Uses `key` as `how`; an accepted request is waited for and recorded.
fn use_key(s: &mut Store, how: KeyUse, key: &[u8]) -> Result<(), Error> {
    let value = b"v".as_slice();
    match how {
        KeyUse::Put => {
            s.engine().put(key, value)?.wait_timeout(WAIT_MAX)?;
            s.model.insert(key.to_vec(), value.to_vec());
        }
        KeyUse::Delete => {
            s.engine().delete(key)?.wait_timeout(WAIT_MAX)?;
            s.model.remove(key);
        }
        KeyUse::Get => {
            let got = s.engine().get(key)?.wait_timeout(WAIT_MAX)?;
            assert_eq!(got.as_ref(), s.model.get(key), "windowed get");
        }
        KeyUse::BatchPut => {
            // The valid first op (the empty key fits every limit) must not be applied
            // when the second is rejected.
            let mut b = WriteBatch::new();
            b.put(b"", b"x").put(key, value);
            s.engine().write(&b)?.wait_timeout(WAIT_MAX)?;
            s.model.insert(Vec::new(), b"x".to_vec());
            s.model.insert(key.to_vec(), value.to_vec());
            s.accepted += 1;
        }
        KeyUse::BatchDelete => {
            let mut b = WriteBatch::new();
            b.put(b"", b"y").delete(key);
            s.engine().write(&b)?.wait_timeout(WAIT_MAX)?;
            s.model.insert(Vec::new(), b"y".to_vec());
            s.model.remove(key);
            s.accepted += 1;
        }
        KeyUse::Read => {
            let got = s.engine().read_to_vec(key)?;
            assert_eq!(got.as_ref(), s.model.get(key), "read");
            return Ok(());
        }
    }
    s.accepted += 1;
    Ok(())
}

#[test]
fn key_length_limit_is_checked_by_every_call() {
    // (key_len_max, a configuration that can carry such keys)
    let limits = [0, 1, 100, 4096, 65_535];
    for max in limits {
        let mut s = Store::new(Config {
            key_len_max: max,
            ..base()
        });
        for how in KEY_USES {
            let fits = vec![b'k'; max];
            use_key(&mut s, how, &fits)
                .unwrap_or_else(|e| panic!("{how:?}: key of {max} bytes (the limit) refused: {e}"));
            let over = vec![b'k'; max + 1];
            match use_key(&mut s, how, &over) {
                Err(e @ Error::KeyTooLong { len, max: m }) => {
                    assert_eq!((len, m), (max + 1, max), "{how:?}: {e:?}");
                    assert_names(&e, &["key_len_max", &len.to_string(), &max.to_string()]);
                }
                other => panic!("{how:?}: key of {} bytes gave {other:?}", max + 1),
            }
        }
        s.verify();
    }
}

#[test]
fn value_length_limit_is_checked_by_put_and_batch() {
    let limits = [
        (0, base()),
        (1, base()),
        (1000, base()),
        // The default limit, with a ring and batch that can carry a 1 MiB value.
        (
            Config::default().value_len_max,
            Config {
                ring_bytes: 8 << 20,
                batch_bytes_max: 2 << 20,
                segment_bytes: 4 << 20,
                ..base()
            },
        ),
    ];
    for (max, config) in limits {
        let mut s = Store::new(Config {
            value_len_max: max,
            ..config
        });
        // As a put.
        s.put(b"at-limit", &vec![7; max]);
        match s.engine().put(b"over-limit", &vec![7; max + 1]) {
            Err(e @ Error::ValueTooLong { len, max: m }) => {
                assert_eq!((len, m), (max + 1, max), "{e:?}");
                assert_names(&e, &["value_len_max", &len.to_string(), &max.to_string()]);
            }
            other => panic!("value of {} bytes gave {other:?}", max + 1),
        }
        // In a batch, after a valid op.
        let fits = vec![8; max];
        let mut b = WriteBatch::new();
        b.put(b"b1", b"").put(b"b2", &fits);
        s.write(&b, &[(b"b1", Some(b"")), (b"b2", Some(&fits))]);
        let mut b = WriteBatch::new();
        b.put(b"b3", b"").put(b"b4", &vec![8; max + 1]);
        match s.engine().write(&b) {
            Err(Error::ValueTooLong { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
            other => panic!("batch with a value of {} bytes gave {other:?}", max + 1),
        }
        assert_eq!(
            s.engine().read_to_vec(b"at-limit").unwrap(),
            Some(vec![7; max])
        );
        s.verify();
    }
}

/// Finds the largest request `config` accepts by provoking `RequestTooLarge` with a value
/// of `probe` bytes, then checks both sides of it: a put of exactly the limit is accepted and
/// round-trips, one byte more is refused as over `expected` (its message naming
/// `limit_setting`), and a batch over the limit is refused whole.
fn check_request_limit(config: Config, probe: usize, expected: RequestLimit, limit_setting: &str) {
    let mut s = Store::new(config);
    let key = b"big".as_slice();
    let (len, max) = match s.engine().put(key, &vec![1; probe]) {
        Err(e @ Error::RequestTooLarge { len, max, limit }) => {
            assert_eq!(limit, expected, "{e:?}");
            assert!(
                names(&limit.to_string(), limit_setting),
                "{e:?}: limit {limit} should name {limit_setting}"
            );
            assert_names(&e, &[limit_setting, &len.to_string(), &max.to_string()]);
            (len, max)
        }
        other => panic!("a {probe}-byte value gave {other:?}"),
    };
    assert!(len > max, "RequestTooLarge {{ len: {len}, max: {max} }}");
    // The request encoding spends a fixed overhead besides key and value.
    let overhead = len - key.len() - probe;
    let fits = max - overhead - key.len();
    s.put(key, &vec![2; fits]);
    match s.engine().put(b"bi", &vec![3; fits + 2]) {
        Err(Error::RequestTooLarge { len: l, max: m, .. }) => {
            assert_eq!((l, m), (max + 1, max), "one byte over the limit")
        }
        other => panic!("a request of limit + 1 bytes gave {other:?}"),
    }
    // A batch each of whose ops fits, but not both together.
    let half = vec![4; fits / 2 + 64];
    let mut b = WriteBatch::new();
    b.put(b"half-1", &half).put(b"half-2", &half);
    match s.engine().write(&b) {
        Err(Error::RequestTooLarge { max: m, .. }) => assert_eq!(m, max),
        other => panic!("a batch over the limit gave {other:?}"),
    }
    assert_eq!(s.engine().read_to_vec(key).unwrap(), Some(vec![2; fits]));
    s.verify();
}

#[test]
fn request_larger_than_a_ring_record_is_refused() {
    // A 64 KiB ring carries far less than the batch limit.
    let config = Config {
        ring_bytes: 64 << 10,
        batch_bytes_max: 1 << 20,
        segment_bytes: 2 << 20,
        ..base()
    };
    check_request_limit(config, 32 << 10, RequestLimit::RingRecord, "ring_bytes");
}

#[test]
fn request_larger_than_batch_bytes_max_is_refused() {
    let config = Config {
        ring_bytes: 1 << 20,
        batch_bytes_max: 8 << 10,
        segment_bytes: 64 << 10,
        ..base()
    };
    check_request_limit(
        config,
        10 << 10,
        RequestLimit::BatchBytesMax,
        "batch_bytes_max",
    );
}

#[test]
fn batch_with_one_bad_op_is_refused_whole() {
    let mut s = Store::new(Config {
        key_len_max: 16,
        value_len_max: 64,
        ..base()
    });
    let long_key = [b'k'; 17];
    let long_value = [b'v'; 65];
    type Case = (&'static str, WriteBatch, fn(&Error) -> bool);
    let cases: [Case; 4] = [
        (
            "long key last",
            {
                let mut b = WriteBatch::new();
                b.put(b"ok-1", b"1").put(&long_key, b"2");
                b
            },
            |e| matches!(e, Error::KeyTooLong { len: 17, max: 16 }),
        ),
        (
            "long key first",
            {
                let mut b = WriteBatch::new();
                b.delete(&long_key).put(b"ok-2", b"1");
                b
            },
            |e| matches!(e, Error::KeyTooLong { len: 17, max: 16 }),
        ),
        (
            "long value in the middle",
            {
                let mut b = WriteBatch::new();
                b.put(b"ok-3", b"1")
                    .put(b"ok-4", &long_value)
                    .delete(b"seed-1");
                b
            },
            |e| matches!(e, Error::ValueTooLong { len: 65, max: 64 }),
        ),
        (
            "long value overwriting a key",
            {
                let mut b = WriteBatch::new();
                b.delete(b"seed-2").put(b"seed-2", &long_value);
                b
            },
            |e| matches!(e, Error::ValueTooLong { len: 65, max: 64 }),
        ),
    ];
    for (name, batch, expected) in &cases {
        match s.engine().write(batch) {
            Err(e) => assert!(expected(&e), "{name}: wrong error {e:?}"),
            Ok(_) => panic!("{name}: batch accepted"),
        }
    }
    s.verify();
}

/// A batch operation whose key is too long for the u32 length it travels with (4 GiB or
/// more) is refused at submit as too long, as any over-long key is: never stored with a
/// truncated length (which made the rest of the batch parse as garbage, and could slice out
/// of bounds). The key is a lazily zeroed allocation: its pages are never touched, so the
/// test costs address space, not memory.
#[test]
fn a_batch_key_too_long_for_u32_is_refused_as_too_long() {
    let mut s = Store::new(base());
    let huge = vec![0u8; (1usize << 32) + 1];
    let max = s.config.key_len_max;
    let too_long = |r: Result<(), Error>, what: &str| match r {
        Err(Error::KeyTooLong { len, max: m }) => {
            assert!(len > max && m == max, "{what}: {len} bytes over {m}");
        }
        other => panic!("{what}: expected KeyTooLong, got {other:?}"),
    };
    let mut b = WriteBatch::new();
    b.delete(&huge).put(b"after", b"v");
    assert_eq!(b.len(), 2);
    too_long(s.engine().write(&b).map(drop), "first op");
    too_long(s.engine().write_with_id(1u128, &b).map(drop), "with an id");
    let mut b = WriteBatch::new();
    b.put(b"before", b"v").put(&huge, b"v").merge(b"k", b"");
    too_long(s.engine().write(&b).map(drop), "second op");
    drop(huge);
    s.verify();
}

#[test]
fn empty_batch_is_refused() {
    let mut s = Store::new(base());
    let mut b = WriteBatch::new();
    assert!(matches!(s.engine().write(&b), Err(Error::EmptyBatch)));
    b.put(b"cleared", b"x").delete(b"seed-1");
    b.clear();
    assert!(b.is_empty());
    match s.engine().write(&b) {
        Err(e @ Error::EmptyBatch) => assert!(!e.to_string().is_empty()),
        other => panic!("a cleared batch gave {other:?}"),
    }
    s.verify();
}

#[test]
fn empty_key_is_a_valid_key() {
    let mut s = Store::new(base());
    s.put(b"", b"empty-key");
    let got = s.engine().get(b"").unwrap().wait_timeout(WAIT_MAX).unwrap();
    s.accepted += 1;
    assert_eq!(got, Some(b"empty-key".to_vec()));
    assert_eq!(
        s.engine().read(b"").unwrap().as_deref(),
        Some(&b"empty-key"[..])
    );
    s.verify();
    assert_eq!(
        s.engine().read_to_vec(b"").unwrap(),
        Some(b"empty-key".to_vec())
    );
    // An empty value is a value, not an absence.
    s.put(b"", b"");
    assert_eq!(s.engine().read_to_vec(b"").unwrap(), Some(Vec::new()));
    s.verify();
    s.engine()
        .delete(b"")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    s.accepted += 1;
    s.model.remove(&b""[..]);
    assert_eq!(s.engine().read_to_vec(b"").unwrap(), None);
    let mut b = WriteBatch::new();
    b.put(b"", b"from a batch");
    s.write(&b, &[(b"", Some(b"from a batch"))]);
    s.verify();
}

/// One configuration rule: the setting it names and a configuration on each side of it.
struct Rule {
    setting: &'static str,
    valid: Config,
    invalid: Config,
}

fn rules() -> Vec<Rule> {
    let b = base;
    // The largest batch_bytes_max a 1 MiB segment holds: header + one full frame.
    let segment = 1u64 << 20;
    let batch_fit = segment as usize - SEGMENT_HEADER_LEN - frame_len(0);
    assert_eq!(SEGMENT_HEADER_LEN + frame_len(batch_fit), segment as usize);
    vec![
        Rule {
            setting: "ring_bytes",
            valid: Config {
                ring_bytes: 1 << 17,
                ..b()
            },
            invalid: Config {
                ring_bytes: (1 << 17) + 4096,
                ..b()
            },
        },
        Rule {
            setting: "ring_bytes",
            valid: Config {
                ring_bytes: 64 << 10,
                ..b()
            },
            invalid: Config {
                ring_bytes: 32 << 10,
                ..b()
            },
        },
        Rule {
            setting: "ring_bytes",
            valid: b(),
            invalid: Config {
                ring_bytes: 0,
                ..b()
            },
        },
        Rule {
            setting: "segment_bytes",
            valid: Config {
                segment_bytes: segment + 4096,
                ..b()
            },
            invalid: Config {
                segment_bytes: segment + 2048,
                ..b()
            },
        },
        Rule {
            setting: "segment_bytes",
            valid: Config {
                segment_bytes: segment,
                batch_bytes_max: batch_fit,
                ..b()
            },
            invalid: Config {
                segment_bytes: segment,
                batch_bytes_max: batch_fit + 1,
                ..b()
            },
        },
        Rule {
            setting: "batch_bytes_max",
            valid: Config {
                segment_bytes: segment,
                batch_bytes_max: batch_fit,
                ..b()
            },
            invalid: Config {
                segment_bytes: segment,
                batch_bytes_max: batch_fit + 1,
                ..b()
            },
        },
        Rule {
            setting: "key_len_max",
            valid: Config {
                key_len_max: 65_535,
                ..b()
            },
            invalid: Config {
                key_len_max: 65_536,
                ..b()
            },
        },
        Rule {
            setting: "window_age_max",
            valid: Config {
                window_age_max: Duration::from_nanos(1),
                window: WindowPolicy::Immediate,
                ..b()
            },
            invalid: Config {
                window_age_max: Duration::ZERO,
                window: WindowPolicy::Immediate,
                ..b()
            },
        },
        Rule {
            setting: "window_age_max",
            valid: Config {
                window: WindowPolicy::Linger(Duration::from_millis(1)),
                window_age_max: Duration::from_millis(1),
                ..b()
            },
            invalid: Config {
                window: WindowPolicy::Linger(Duration::from_millis(2)),
                window_age_max: Duration::from_millis(1),
                ..b()
            },
        },
        // A policy that waits longer than every window may last names the setting a user
        // changed, `window` (with the default 1 ms `window_age_max`, a `Linger(5 ms)` is
        // refused): the message said only "linger 2ms exceeds window_age_max = 1ms".
        Rule {
            setting: "window",
            valid: Config {
                window: WindowPolicy::Linger(Duration::from_millis(2)),
                window_age_max: Duration::from_millis(2),
                ..b()
            },
            invalid: Config {
                window: WindowPolicy::Linger(Duration::from_millis(2)),
                ..b()
            },
        },
        Rule {
            setting: "window",
            valid: Config {
                window: WindowPolicy::Adaptive {
                    quiet: Duration::from_millis(1),
                },
                ..b()
            },
            invalid: Config {
                window: WindowPolicy::Adaptive {
                    quiet: Duration::from_millis(2),
                },
                ..b()
            },
        },
        Rule {
            setting: "batch_ops_max",
            valid: Config {
                batch_ops_max: 1,
                ..b()
            },
            invalid: Config {
                batch_ops_max: 0,
                ..b()
            },
        },
        Rule {
            setting: "recycle_segments",
            valid: Config {
                recycle_segments: 64,
                ..b()
            },
            invalid: Config {
                recycle_segments: 65,
                ..b()
            },
        },
        Rule {
            setting: "syncers",
            valid: Config { syncers: 16, ..b() },
            invalid: Config { syncers: 0, ..b() },
        },
        Rule {
            setting: "syncers",
            valid: Config { syncers: 1, ..b() },
            invalid: Config { syncers: 17, ..b() },
        },
        Rule {
            setting: "idle_poll_threads",
            valid: Config {
                idle_poll_threads: 64,
                ..b()
            },
            invalid: Config {
                idle_poll_threads: 65,
                ..b()
            },
        },
        Rule {
            setting: "reserve_segment",
            valid: Config {
                reserve_segment: true,
                ..b()
            },
            invalid: Config {
                reserve_segment: true,
                compaction: mergelog::Compaction::Off,
                ..b()
            },
        },
        // A compaction policy that asks never to compact a log below one size and always
        // above a smaller one cannot be followed: `min_log_bytes` silently won.
        Rule {
            setting: "max_log_bytes",
            valid: Config {
                compaction: mergelog::Compaction::Auto(mergelog::AutoCompaction {
                    min_log_bytes: 1 << 20,
                    max_log_bytes: Some(1 << 20),
                    ..Default::default()
                }),
                ..b()
            },
            invalid: Config {
                compaction: mergelog::Compaction::Auto(mergelog::AutoCompaction {
                    min_log_bytes: 1 << 30,
                    max_log_bytes: Some(1 << 20),
                    ..Default::default()
                }),
                ..b()
            },
        },
        Rule {
            setting: "overlap_syncs_above",
            valid: Config {
                overlap_syncs_above: Duration::from_secs(10),
                ..b()
            },
            invalid: Config {
                overlap_syncs_above: Duration::from_secs(10) + Duration::from_nanos(1),
                ..b()
            },
        },
    ]
}

/// A size limit refused for being too large says the largest value it accepts, the one its
/// doc gives: 2^31 - 1 for `batch_bytes_max`, `batch_ops_max` and `value_len_max` (a value's
/// length travels as a u32 with a bit to spare). The messages said "between 4096 and 2^31"
/// and "between 1 and 2^31" while refusing 2^31 itself, and "is too large" without a limit.
/// (Validated only: the 4 GiB segment such a batch needs is not opened.)
#[test]
fn a_size_limit_refused_for_being_too_large_says_the_largest_value_it_accepts() {
    let largest = (1usize << 31) - 1;
    let with = |setting: &str, n: usize| {
        let mut c = Config {
            segment_bytes: mergelog::SEGMENT_BYTES_MAX,
            ..base()
        };
        match setting {
            "batch_bytes_max" => c.batch_bytes_max = n,
            "batch_ops_max" => c.batch_ops_max = n,
            _ => c.value_len_max = n,
        }
        c
    };
    for setting in ["batch_bytes_max", "batch_ops_max", "value_len_max"] {
        with(setting, largest)
            .validate()
            .unwrap_or_else(|e| panic!("{setting} = {largest} refused: {e}"));
        for past in [largest + 1, usize::MAX] {
            match with(setting, past).validate() {
                Err(Error::InvalidConfig(msg)) => assert!(
                    names(&msg, setting) && names(&msg, &largest.to_string()),
                    "{setting} = {past}: the message does not name the setting and the largest \
                     value accepted ({largest}): {msg:?}"
                ),
                other => panic!("{setting} = {past}: {other:?}"),
            }
        }
    }
}

/// A segment larger than the format holds (a frame's body length is a u32) is refused before
/// anything is written: it would otherwise be zero-filled until the disk is full. (The rules
/// above open their valid side, which would write 4 GiB of zeros here.)
#[test]
fn a_segment_larger_than_the_format_holds_is_refused_before_writing() {
    let at_most = Config {
        segment_bytes: mergelog::SEGMENT_BYTES_MAX,
        ..base()
    };
    at_most.validate().expect("4 GiB segments are valid");
    for segment_bytes in [mergelog::SEGMENT_BYTES_MAX + 4096, 1 << 50] {
        let config = Config {
            segment_bytes,
            ..base()
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        for err in [config.validate().err(), Engine::open(&dir, config).err()] {
            match err {
                Some(Error::InvalidConfig(msg)) => {
                    assert!(names(&msg, "segment_bytes"), "message {msg:?}")
                }
                other => panic!("segment_bytes = {segment_bytes}: {other:?}"),
            }
        }
        let files = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert_eq!(files, 0, "nothing written");
    }
}

#[test]
fn invalid_config_is_refused_naming_the_setting() {
    for (i, rule) in rules().into_iter().enumerate() {
        let what = format!("rule {i} ({})", rule.setting);
        rule.valid
            .validate()
            .unwrap_or_else(|e| panic!("{what}: valid side refused: {e}"));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        let engine = Engine::open(&dir, rule.valid.clone())
            .unwrap_or_else(|e| panic!("{what}: valid side does not open: {e}"));
        engine
            .put(b"k", b"v")
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        engine.close().unwrap();
        drop(engine);

        for err in [
            rule.invalid.validate().err(),
            Engine::open(tmp.path().join("never"), rule.invalid.clone()).err(),
        ] {
            match err {
                Some(Error::InvalidConfig(msg)) => {
                    assert!(names(&msg, rule.setting), "{what}: message {msg:?}");
                    assert_names(&Error::InvalidConfig(msg), &[rule.setting]);
                }
                other => panic!("{what}: invalid side gave {other:?}"),
            }
        }
        // A refused open touches nothing.
        assert!(
            !tmp.path().join("never").exists(),
            "{what}: refused open made a directory"
        );
        // And the valid directory still holds exactly what was written.
        let engine = Engine::open(&dir, rule.valid.clone()).unwrap();
        assert_eq!(
            engine_state(&engine),
            State::from([(b"k".to_vec(), b"v".to_vec())])
        );
    }
}

#[test]
fn full_ring_with_reject_says_busy_and_keeps_what_it_accepted() {
    // The flusher holds each window open for 200 ms and no byte or op limit cuts it first,
    // so a flood of 8 KiB puts fills the 64 KiB ring deterministically.
    let mut s = Store::new(Config {
        ring_bytes: 64 << 10,
        batch_bytes_max: 1 << 20,
        segment_bytes: 4 << 20,
        window_age_max: Duration::from_secs(1),
        window: WindowPolicy::Linger(Duration::from_millis(200)),
        backpressure: Backpressure::Reject,
        ..base()
    });
    let mut accepted = Vec::new();
    let mut busy = 0;
    for i in 0..64u32 {
        let key = format!("flood-{i:03}").into_bytes();
        let value = vec![i as u8; 8 << 10];
        match s.engine().put(&key, &value) {
            Ok(t) => accepted.push((t, key, value)),
            Err(e @ Error::Busy) => {
                assert!(!e.to_string().is_empty());
                busy += 1;
            }
            Err(e) => panic!("put {i}: {e:?}"),
        }
    }
    assert!(
        busy > 0,
        "64 puts of 8 KiB into a 64 KiB ring were never refused"
    );
    assert!(!accepted.is_empty(), "no put was accepted");
    // The backlog is observable: while the first accepted put is not durable, it counts.
    let backlog = s.engine().stats().backlog_bytes;
    if !accepted[0].0.is_done() {
        assert!(backlog > 0, "backlog_bytes is 0 with a put in flight");
    }
    for (t, key, value) in accepted {
        t.wait_timeout(WAIT_MAX)
            .expect("accepted put becomes durable");
        s.accepted += 1;
        s.model.insert(key, value);
    }
    assert_eq!(
        s.engine().stats().backlog_bytes,
        0,
        "backlog once all is durable"
    );
    // The ring drained: a put is accepted again.
    s.put(b"after-the-flood", b"ok");
    s.verify();
}

#[test]
fn calls_after_close_say_closed_and_reads_still_work() {
    let mut s = Store::new(base());
    s.put(b"kept", b"value");
    let engine = s.engine();
    engine.close().expect("close");
    let mut batch = WriteBatch::new();
    batch.put(b"k", b"v");
    let calls: [(&str, Result<(), Error>); 5] = [
        ("put", engine.put(b"k", b"v").map(drop)),
        ("delete", engine.delete(b"kept").map(drop)),
        ("get", engine.get(b"kept").map(drop)),
        ("write", engine.write(&batch).map(drop)),
        ("flush", engine.flush().map(drop)),
    ];
    for (name, r) in calls {
        match r {
            Err(e @ Error::Closed) => assert!(!e.to_string().is_empty()),
            other => panic!("{name} after close gave {other:?}"),
        }
    }
    engine.close().expect("close twice");
    assert_eq!(
        engine.read_to_vec(b"kept").unwrap(),
        Some(b"value".to_vec())
    );
    assert_eq!(
        engine.read(b"seed-1").unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(engine_state(engine), s.model);
    assert_eq!(engine.stats().submitted, s.accepted);
    // Reopening finds exactly what was accepted before the close.
    drop(s.engine.take());
    s.engine = Some(Engine::open(&s.dir, s.config.clone()).unwrap());
    s.accepted = 0;
    s.verify();
}

#[test]
fn second_open_of_a_directory_is_locked() {
    let mut s = Store::new(base());
    match Engine::open(&s.dir, s.config.clone()) {
        Err(Error::Locked(path)) => {
            assert_eq!(path, s.dir, "Locked names the directory");
            let msg = Error::Locked(path).to_string();
            assert!(msg.contains(&s.dir.display().to_string()), "{msg}");
        }
        other => panic!("second open gave {other:?}"),
    }
    // The failed open disturbed nothing: the first engine goes on.
    s.put(b"after-locked", b"ok");
    s.verify();
    // Once the first engine is closed (not yet dropped) the directory opens again, and the
    // closed engine still reads.
    let first = s.engine.take().expect("engine is open");
    first.close().expect("close");
    let second = Engine::open(&s.dir, s.config.clone()).expect("open after close");
    assert_eq!(engine_state(&second), s.model);
    assert_eq!(engine_state(&first), s.model);
    second
        .put(b"second", b"2")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    drop(second);
    drop(first);
    s.model.insert(b"second".to_vec(), b"2".to_vec());
    let engine = Engine::open(&s.dir, s.config.clone()).expect("open after drop");
    assert_eq!(engine_state(&engine), s.model);
}

/// A counter's 8 bytes.
fn counter(n: i64) -> [u8; 8] {
    n.to_le_bytes()
}

/// An engine whose windows linger, so that requests submitted together share a window.
fn merging(op: MergeOperator) -> Config {
    Config {
        merge: Some(op),
        window: WindowPolicy::Linger(Duration::from_millis(5)),
        window_age_max: Duration::from_millis(10),
        ..base()
    }
}

/// A merge on an engine opened without an operator says what to set, instead of blaming an
/// operator called "none" that no one configured.
#[test]
fn a_merge_without_an_operator_says_which_setting_gives_one() {
    let s = Store::new(base());
    let e = s.engine().merge(b"k", &counter(1)).unwrap_err();
    let message = e.to_string();
    assert!(
        !message.contains("the none operator"),
        "the message blames a \"none\" operator: {message}"
    );
    assert_names(&e, &["Config", "merge", "MergeOperator", "nothing"]);
}

/// What can be checked from the request alone is refused at submit, naming the operator
/// and the size, and nothing of the request (a batch's other operations included) is applied.
#[test]
fn merge_operands_are_checked_at_submit() {
    let mut s = Store::new(Config {
        value_len_max: 64,
        ..base()
    });
    let e = s.engine().merge(b"k", &counter(1)).unwrap_err();
    assert!(
        matches!(e, Error::MergeRefused { operator: None, .. }),
        "{e:?}"
    );
    assert_names(&e, &["no", "Config", "merge"]);
    s.verify();

    let mut s = Store::new(Config {
        value_len_max: 64,
        ..merging(MergeOperator::Add)
    });
    for len in [0, 7, 9] {
        let e = s.engine().merge(b"k", &vec![1; len]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::MergeRefused {
                    operator: Some("add"),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_names(&e, &["add", &len.to_string(), "8"]);
    }
    let e = s.engine().merge(b"k", &[0; 65]).unwrap_err();
    assert!(
        matches!(e, Error::ValueTooLong { len: 65, max: 64 }),
        "{e:?}"
    );
    let mut b = WriteBatch::new();
    b.put(b"k", &counter(5)).merge(b"k", &[1; 4]);
    let e = s.engine().write(&b).unwrap_err();
    assert_names(&e, &["add", "4", "8"]);
    // The largest operand an appending engine takes is value_len_max.
    let mut a = Store::new(Config {
        value_len_max: 64,
        ..merging(MergeOperator::Append { max_len: 64 })
    });
    let t = a
        .engine()
        .merge(b"log", &[7; 64])
        .expect("an operand of value_len_max");
    t.wait_timeout(WAIT_MAX).expect("durable");
    a.accepted += 1;
    a.model.insert(b"log".to_vec(), vec![7; 64]);
    a.verify();
    // The merge that fits goes through, and the state holds it alone.
    let t = s
        .engine()
        .merge(b"k", &counter(-2))
        .expect("an 8-byte operand");
    t.wait_timeout(WAIT_MAX).expect("durable");
    s.accepted += 1;
    s.model.insert(b"k".to_vec(), counter(-2).to_vec());
    s.verify();
    // An append bound the values cannot hold is a configuration error.
    for max_len in [0, 65] {
        let config = Config {
            value_len_max: 64,
            ..merging(MergeOperator::Append { max_len })
        };
        let e = Engine::open(tempfile::tempdir().unwrap().path(), config).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        assert_names(
            &e,
            &["merge", "max_len", &max_len.to_string(), "value_len_max"],
        );
    }
    // A counter operator with values too short for a counter would refuse every merge.
    for op in [MergeOperator::Add, MergeOperator::Max, MergeOperator::Min] {
        let name = format!("{op:?}");
        let config = Config {
            value_len_max: 7,
            ..merging(op.clone())
        };
        let e = Engine::open(tempfile::tempdir().unwrap().path(), config).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        assert_names(&e, &["merge", &name, "value_len_max", "7", "8"]);
        let config = Config {
            value_len_max: 8,
            ..merging(op)
        };
        let engine = Engine::open(tempfile::tempdir().unwrap().path(), config)
            .expect("8-byte values hold a counter");
        engine.close().expect("closes");
    }
}

/// What depends on the value a merge applies to is refused by the flusher: that request's
/// ticket says so (a batch's whole), every other request of the window completes, nothing of
/// the refused one reaches the state or the log, and the engine goes on.
#[test]
fn a_merge_the_operator_refuses_fails_only_its_own_ticket() {
    let mut s = Store::new(merging(MergeOperator::Add));
    s.put(b"text", b"not a counter");
    let engine = s.engine();
    let mut bad_batch = WriteBatch::new();
    bad_batch
        .merge(b"count", &counter(100))
        .put(b"other", b"x")
        .merge(b"text", &counter(1));
    let mut good_batch = WriteBatch::new();
    good_batch
        .merge(b"count", &counter(10))
        .put(b"fresh", &counter(7));
    // One window (the linger holds it open): refused and accepted requests side by side.
    let ok1 = engine.merge(b"count", &counter(1)).unwrap();
    let bad1 = engine.merge(b"text", &counter(1)).unwrap();
    let get_text = engine.get(b"text").unwrap();
    let bad2 = engine.write(&bad_batch).unwrap();
    let get_count = engine.get(b"count").unwrap();
    let ok2 = engine.write(&good_batch).unwrap();
    let ok3 = engine.merge(b"fresh", &counter(-8)).unwrap();
    for t in [&ok1, &ok2, &ok3] {
        t.wait_timeout(WAIT_MAX)
            .expect("an accepted merge is durable");
    }
    for (t, what) in [(&bad1, "merge"), (&bad2, "batch")] {
        let e = t.wait_timeout(WAIT_MAX).unwrap_err();
        assert!(
            matches!(
                e,
                Error::MergeRefused {
                    operator: Some("add"),
                    ..
                }
            ),
            "{what}: {e:?}"
        );
        assert_names(&e, &["add", "13", "counter"]);
    }
    assert_eq!(
        get_text.wait_timeout(WAIT_MAX).unwrap().unwrap(),
        b"not a counter"
    );
    assert_eq!(
        get_count.wait_timeout(WAIT_MAX).unwrap().unwrap(),
        counter(1),
        "the refused batch's merge is not seen"
    );
    assert!(
        engine.failure().is_none(),
        "a refusal does not fail the engine"
    );
    let counts = engine.counts();
    assert_eq!((counts.merges, counts.merges_refused), (6, 2));
    // Submitted: the six accepted operations, and the four of the refused requests.
    s.accepted += 3 + 2 + 1 + 4;
    s.model.insert(b"count".to_vec(), counter(11).to_vec());
    s.model.insert(b"fresh".to_vec(), counter(-1).to_vec());
    s.verify();
    // A flush's ticket right behind a refused merge is not refused.
    let bad = s.engine().merge(b"text", &counter(1)).unwrap();
    s.engine()
        .flush()
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .expect("flush");
    assert!(bad.wait_timeout(WAIT_MAX).is_err());
    s.accepted += 1;
    s.put(b"after", b"1");
    s.verify();
}

/// A custom operator's result longer than value_len_max, or a panic in it, refuses the
/// request; the engine goes on.
#[test]
fn a_custom_operator_that_grows_too_long_or_panics_refuses_the_request() {
    let op = MergeOperator::custom(|existing, operands| {
        assert!(
            !operands.contains(&&b"panic"[..]),
            "the operand asked for it"
        );
        let mut v = existing.unwrap_or_default().to_vec();
        operands.iter().for_each(|o| v.extend_from_slice(o));
        v
    });
    let mut s = Store::new(Config {
        value_len_max: 8,
        ..merging(op)
    });
    let ok = s.engine().merge(b"k", b"abcd").unwrap();
    let long = s.engine().merge(b"k", b"efghi").unwrap();
    let panics = s.engine().merge(b"k", b"panic").unwrap();
    let ok2 = s.engine().merge(b"k", b"efgh").unwrap();
    ok.wait_timeout(WAIT_MAX).unwrap();
    ok2.wait_timeout(WAIT_MAX).unwrap();
    let e = long.wait_timeout(WAIT_MAX).unwrap_err();
    assert_names(&e, &["custom", "9", "value_len_max", "8"]);
    let e = panics.wait_timeout(WAIT_MAX).unwrap_err();
    assert_names(&e, &["custom", "panicked"]);
    assert!(s.engine().failure().is_none());
    s.accepted += 4;
    s.model.insert(b"k".to_vec(), b"abcdefgh".to_vec());
    s.verify();
}

/// A merge's result may be far longer than its operand, so a window of small merges can
/// need a frame larger than a segment holds. The flusher refuses the window's last merges
/// until the frame fits (each ticket says why, naming the segment's size), writes the rest,
/// and goes on; a request whose results alone exceed a segment is refused whole.
#[test]
fn merges_whose_results_would_overflow_a_segment_are_refused_not_written_past_its_end() {
    const RESULT: usize = 100 << 10;
    // Every merge makes the key's value 100 KiB long: ten fill a 1 MiB segment.
    let op = MergeOperator::custom(|_, operands| {
        let mut v = vec![b'x'; RESULT];
        v[..operands[0].len()].copy_from_slice(operands[0]);
        v
    });
    // Windows are cut by `flush` alone (a linger far longer than the test), so that all the
    // requests below are one window however the submitting thread is scheduled.
    let mut s = Store::new(Config {
        value_len_max: 128 << 10,
        window: WindowPolicy::Linger(Duration::from_secs(5)),
        window_age_max: Duration::from_secs(10),
        ..merging(op)
    });
    let grown = |operand: &[u8]| {
        let mut v = vec![b'x'; RESULT];
        v[..operand.len()].copy_from_slice(operand);
        v
    };
    // One window: single merges with puts between them, and a batch of twenty merges.
    let mut batch = WriteBatch::new();
    for i in 0..20u32 {
        batch.merge(format!("b{i:02}").as_bytes(), b"batch");
    }
    batch.put(b"batch-put", b"1");
    let mut singles = Vec::new();
    let mut puts = Vec::new();
    for i in 0..30u32 {
        let key = format!("m{i:02}");
        singles.push((
            key.clone(),
            s.engine().merge(key.as_bytes(), b"one").unwrap(),
        ));
        let key = format!("p{i:02}");
        puts.push((key.clone(), s.engine().put(key.as_bytes(), b"v").unwrap()));
    }
    let whole = s.engine().write(&batch).unwrap();
    let _cut = s.engine().flush().expect("flush");
    for (key, t) in &puts {
        t.wait_timeout(WAIT_MAX)
            .expect("a put beside the merges is written");
        s.model.insert(key.as_bytes().to_vec(), b"v".to_vec());
    }
    let e = whole.wait_timeout(WAIT_MAX).unwrap_err();
    assert!(matches!(e, Error::MergeRefused { .. }), "{e:?}");
    assert_names(&e, &["segment", "1048576", "retry"]);
    let mut refused = 0;
    for (key, t) in &singles {
        match t.wait_timeout(WAIT_MAX) {
            Ok(_) => {
                assert_eq!(
                    refused, 0,
                    "{key}: the window's last merges are the refused ones"
                );
                s.model.insert(key.as_bytes().to_vec(), grown(b"one"));
            }
            Err(e) => {
                assert!(matches!(e, Error::MergeRefused { .. }), "{key}: {e:?}");
                assert_names(&e, &["segment", "1048576"]);
                refused += 1;
            }
        }
    }
    assert!(
        (1..30).contains(&refused),
        "some single merges fit and some did not: {refused} refused"
    );
    assert!(
        s.engine().failure().is_none(),
        "a refusal does not fail the engine"
    );
    assert_eq!(s.engine().counts().merges_refused, refused + 1);
    // Submitted: every operation, the refused requests' included.
    s.accepted += 30 + 30 + 21;
    s.verify();
    // The engine goes on: a refused merge retried alone is applied.
    let (key, _) = &singles[29];
    let retried = s.engine().merge(key.as_bytes(), b"again").unwrap();
    let _cut = s.engine().flush().expect("flush");
    retried
        .wait_timeout(WAIT_MAX)
        .expect("a retried merge fits its own window");
    s.accepted += 1;
    s.model.insert(key.as_bytes().to_vec(), grown(b"again"));
    s.verify();
}

/// A timeout too long for the clock (`Duration::MAX`) is a wait without a deadline, never a
/// panic on the deadline's addition: every timed wait (tickets, id tickets, get tickets,
/// followers of the engine and of the directory, consumers) returns what it waited for,
/// including one that really waits for a batch written later.
#[test]
fn a_timeout_of_duration_max_waits_without_a_deadline() {
    let s = Store::new(base());
    let engine = s.engine();
    let seq = engine
        .put(b"k", b"v")
        .expect("put")
        .wait_timeout(Duration::MAX)
        .expect("Ticket::wait_timeout(MAX)");
    match engine
        .put_with_id(7u128, b"k", b"w")
        .expect("put with id")
        .wait_timeout(Duration::MAX)
    {
        Ok(mergelog::Outcome::Written(_)) => {}
        other => panic!("IdTicket::wait_timeout(MAX) gave {other:?}"),
    }
    let got = engine.get(b"k").expect("get").wait_timeout(Duration::MAX);
    assert_eq!(
        got.expect("GetTicket::wait_timeout(MAX)"),
        Some(b"w".to_vec())
    );
    let batch = |b: mergelog::Result<Option<mergelog::OwnedBatch>>, what: &str| {
        b.unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: no batch"))
            .seq
    };
    let mut follower = engine.follow(seq);
    assert_eq!(
        batch(follower.next_timeout(Duration::MAX), "Engine::follow"),
        seq
    );
    let reader = mergelog::LogReader::open(&s.dir).expect("reader");
    let mut from_dir = reader.follow(seq);
    assert_eq!(
        batch(from_dir.next_timeout(Duration::MAX), "LogReader::follow"),
        seq
    );
    let mut consumer = engine.consumer("c").expect("consumer");
    let first = consumer.next_seq();
    assert_eq!(
        batch(consumer.next_timeout(Duration::MAX), "Consumer"),
        first
    );
    // A wait that has to sleep until a batch is written after it starts.
    let next = follower.next_seq();
    let waited = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| batch(follower.next_timeout(Duration::MAX), "a later batch"));
        std::thread::sleep(Duration::from_millis(20));
        engine
            .put(b"later", b"x")
            .expect("put")
            .wait()
            .expect("durable");
        waiter.join().expect("the waiter")
    });
    assert_eq!(waited, next);
}

/// Windows of merges whose results (sizes drawn at random, up to 12 KiB each against 64 KiB
/// segments) may or may not fit a segment, with puts and gets between them: every merge is
/// applied or refused as a whole for want of room (the test above checks that the refused
/// ones are the window's last), gets see exactly the merges applied before them, and the
/// state, the log's replay and a reopen agree with the model of the applied requests.
mod merges_that_may_not_fit {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Req {
        /// Key index, result length, result byte.
        Merge(u8, u16, u8),
        Put(u8),
        Get(u8),
    }

    fn req() -> impl Strategy<Value = Req> {
        prop_oneof![
            6 => (0u8..24, 0u16..12 << 10, any::<u8>()).prop_map(|(k, n, b)| Req::Merge(k, n, b)),
            1 => (0u8..24).prop_map(Req::Put),
            1 => (0u8..24).prop_map(Req::Get),
        ]
    }

    /// The operand names the result: two bytes of length, one byte to fill it with.
    fn sized(_: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8> {
        let o = operands[operands.len() - 1];
        vec![o[2]; u16::from_le_bytes([o[0], o[1]]) as usize]
    }

    fn key(k: u8) -> Vec<u8> {
        format!("key-{k:02}").into_bytes()
    }

    enum Pending {
        Merge(Vec<u8>, Vec<u8>, mergelog::Ticket),
        Put(Vec<u8>, mergelog::Ticket),
        Get(Vec<u8>, mergelog::GetTicket),
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn every_merge_is_applied_or_refused_whole(
            windows in proptest::collection::vec(proptest::collection::vec(req(), 1..40), 1..4)
        ) {
            let mut s = Store::new(Config {
                segment_bytes: 64 << 10,
                batch_bytes_max: 16 << 10,
                value_len_max: 16 << 10,
                window: WindowPolicy::Linger(Duration::from_millis(20)),
                window_age_max: Duration::from_millis(40),
                ..merging(MergeOperator::custom(sized))
            });
            for window in &windows {
                let mut pending = Vec::new();
                for r in window {
                    let e = s.engine();
                    pending.push(match *r {
                        Req::Merge(k, n, b) => {
                            let [n0, n1] = n.to_le_bytes();
                            let t = e.merge(&key(k), &[n0, n1, b]).unwrap();
                            Pending::Merge(key(k), vec![b; n as usize], t)
                        }
                        Req::Put(k) => Pending::Put(key(k), e.put(&key(k), b"p").unwrap()),
                        Req::Get(k) => Pending::Get(key(k), e.get(&key(k)).unwrap()),
                    });
                }
                // Outcomes in submission order; the model applies what was applied.
                for p in pending {
                    s.accepted += 1;
                    match p {
                        Pending::Merge(k, v, t) => match t.wait_timeout(WAIT_MAX) {
                            Ok(_) => {
                                s.model.insert(k, v);
                            }
                            Err(e) => {
                                prop_assert!(
                                    matches!(e, Error::MergeRefused { .. }),
                                    "{:?}", e
                                );
                                prop_assert!(e.to_string().contains("65536"), "{}", e);
                            }
                        },
                        Pending::Put(k, t) => {
                            t.wait_timeout(WAIT_MAX).expect("a put is written");
                            s.model.insert(k, b"p".to_vec());
                        }
                        Pending::Get(k, t) => {
                            let got = t.wait_timeout(WAIT_MAX).expect("a get is answered");
                            prop_assert_eq!(got.as_ref(), s.model.get(&k), "get of {:?}", k);
                        }
                    }
                }
            }
            prop_assert!(s.engine().failure().is_none());
            s.verify();
        }
    }
}

/// A reader (`LogReader::open`, `open_with`, `check`) of a directory that does not exist says
/// so, with the operating system's error; one of a file says that it is not a directory.
/// (Before, both said "not a directory": a mistyped path read as a file in the way.)
#[test]
// The file in the way is made directly: the storage seam's lint (clippy.toml) is for the library.
#[allow(clippy::disallowed_methods)]
fn a_reader_of_a_missing_directory_says_it_does_not_exist() {
    use mergelog::{Durability, LogReader, RecoveryMode};
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-log");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mode = RecoveryMode::default();
    for (path, says, kind) in [
        (
            &missing,
            "No such file or directory",
            std::io::ErrorKind::NotFound,
        ),
        (&file, "not a directory", std::io::ErrorKind::NotADirectory),
    ] {
        let errors = [
            LogReader::open(path).map(drop).unwrap_err(),
            LogReader::open_with(path, mode).map(drop).unwrap_err(),
            LogReader::check(path, mode, Durability::Sync)
                .map(drop)
                .unwrap_err(),
        ];
        for e in errors {
            let message = e.to_string();
            assert!(
                message.contains(says) && message.contains(&*path.to_string_lossy()),
                "{path:?}: {message:?} does not say {says:?} of the path"
            );
            match &e {
                Error::Io { source, .. } => assert_eq!(source.kind(), kind, "{e:?}"),
                other => panic!("{path:?}: {other:?} is not an Io error"),
            }
        }
    }
}

/// A reader (`LogReader::open`, `open_with`, `check`) of a directory that holds entries but
/// none of a log's files (a mistyped path to some other directory) refuses it, naming the
/// directory and an entry, where it read as an empty, clean log ("no batches"). An empty
/// directory, a log's directory with another file beside the log's, and one holding only a
/// log's `LOCK` still open, as empty or as the log they hold.
#[test]
// The files are made directly: the storage seam's lint (clippy.toml) is for the library.
#[allow(clippy::disallowed_methods)]
fn a_reader_of_a_directory_holding_no_log_says_so() {
    use mergelog::{Durability, LogReader, RecoveryMode};
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    std::fs::create_dir(other.join("photos")).unwrap();
    let mode = RecoveryMode::default();
    let errors = [
        LogReader::open(&other).map(drop),
        LogReader::open_with(&other, RecoveryMode::PointInTime).map(drop),
        LogReader::check(&other, mode, Durability::Sync).map(drop),
    ];
    for got in errors {
        let e = match got {
            Err(e) => e,
            Ok(()) => panic!("{other:?} (notes.txt, photos/) read as a log"),
        };
        let message = e.to_string();
        assert!(
            message.contains(&*other.to_string_lossy())
                && message.contains("no mergelog log")
                && message.contains("it holds notes.txt and 1 other file"),
            "{message:?} does not say that the directory holds no log"
        );
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    // Still read: an empty directory (no batches) ...
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let reader = LogReader::open(&empty).expect("an empty directory");
    assert_eq!(reader.batches().count(), 0);
    LogReader::check(&empty, mode, Durability::Sync).expect("check of an empty directory");
    // ... one holding only a log's lock file (its segments gone) ...
    let locked = tmp.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("LOCK"), b"").unwrap();
    std::fs::write(locked.join("notes.txt"), b"x").unwrap();
    LogReader::open(&locked).expect("a directory holding a log's LOCK");
    // ... and a log with a file of the user's beside it, open or closed.
    let log = tmp.path().join("log");
    let engine = Engine::open(&log, Config::default()).unwrap();
    std::fs::write(log.join("notes.txt"), b"x").unwrap();
    assert_eq!(
        LogReader::open(&log)
            .expect("a fresh engine's log")
            .batches()
            .count(),
        0
    );
    engine.put(b"k", b"v").unwrap().wait().unwrap();
    engine.close().unwrap();
    assert_eq!(LogReader::open(&log).expect("a log").batches().count(), 1);
    LogReader::check(&log, mode, Durability::Sync).expect("check of a log");
}

/// A writable open of a directory that holds entries but no file of a log (a mistyped path)
/// is refused as the readers refuse it, changing nothing there; an empty or missing
/// directory still gets a new log, and no directory an engine left (open, closed, after a
/// retirement with consumers, a compaction, the files a crash leaves, a backup) is taken
/// for a foreign one.
#[test]
#[allow(clippy::disallowed_methods)] // the test makes the directories' files itself
fn a_writable_open_of_a_directory_holding_no_log_is_refused() {
    use mergelog::{LogReader, RequestId};
    let tmp = tempfile::tempdir().unwrap();
    let is_foreign_refusal = |r: &mergelog::Result<Engine>| matches!(r, Err(e @ Error::Io { .. }) if e.to_string().contains("no mergelog log"));

    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("foo.seg"), b"x").unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    let before = std::fs::read_dir(&other).unwrap().count();
    let got = Engine::open(&other, base());
    let e = match got {
        Err(e) => e,
        Ok(engine) => {
            engine.close().unwrap();
            let made: Vec<_> = std::fs::read_dir(&other)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            panic!("Engine::open made a log in {other:?} (foo.seg, notes.txt): it holds {made:?}")
        }
    };
    let message = e.to_string();
    assert!(
        matches!(e, Error::Io { .. })
            && message.contains(&*other.to_string_lossy())
            && message.contains("no mergelog log")
            && message.contains("it holds foo.seg and 1 other file"),
        "{e:?}: not the readers' refusal naming the near miss"
    );
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        before,
        "the refused open left a file in {other:?}"
    );

    // Still a new log: a missing directory, an empty one, a fresh mount point's lost+found.
    for (name, found) in [
        ("missing", None),
        ("empty", Some(None)),
        ("mount", Some(Some("lost+found"))),
    ] {
        let d = tmp.path().join(name);
        if let Some(entry) = found {
            std::fs::create_dir(&d).unwrap();
            if let Some(entry) = entry {
                std::fs::create_dir(d.join(entry)).unwrap();
            }
        }
        let engine = Engine::open(&d, base()).unwrap_or_else(|e| panic!("{name}: {e}"));
        engine.put(b"k", b"v").unwrap().wait().unwrap();
        engine.close().unwrap();
        assert_eq!(LogReader::open(&d).unwrap().batches().count(), 1, "{name}");
    }

    // Every kind of file an engine leaves, each alone beside a user's file: never a foreign
    // directory (another refusal, such as a clean-close mark naming batches no segment
    // holds, is fine: that is damage, which the open names).
    let config = Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 32 << 10,
        recycle_segments: 1,
        ..base()
    };
    let log = tmp.path().join("log");
    let mut names = std::collections::BTreeSet::new();
    let mut note = |dir: &std::path::Path| {
        for e in std::fs::read_dir(dir).unwrap() {
            names.insert(e.unwrap().file_name().into_string().unwrap());
        }
    };
    {
        let engine = Engine::open(&log, config.clone()).unwrap();
        let mut slow = engine.consumer("slow").unwrap();
        let value = vec![7u8; 4 << 10];
        for i in 0u128..60 {
            let key = format!("k{}", i % 5);
            engine
                .put_with_id(RequestId::from(i), key.as_bytes(), &value)
                .unwrap()
                .wait()
                .unwrap();
        }
        let first = slow.next_timeout(WAIT_MAX).unwrap().unwrap();
        slow.commit(first.seq).unwrap();
        engine.retire_before(engine.durable_seq()).unwrap();
        note(&log);
        engine.compact().unwrap();
        engine.retire_before_forced(engine.durable_seq()).unwrap();
        note(&log);
        engine.backup(tmp.path().join("backup")).unwrap();
        drop(slow);
        engine.close().unwrap();
        note(&log);
    }
    // What a crash between steps leaves (docs/FORMAT.md, "Files"), and the clean-close mark
    // (which a `NoSync` log does not get).
    names.extend(
        [
            "CLEAN",
            "CLEAN.tmp",
            "ids.tmp",
            "unshare.tmp",
            "consumer.tmp-slow.1.0",
            "prep-3.tmp",
        ]
        .map(String::from),
    );
    for name in ["LOCK", "ids", "consumer-slow", "recycle-1.tmp"] {
        assert!(
            names.contains(name),
            "the scenario left no {name}: {names:?}"
        );
    }
    for name in &names {
        let d = tmp.path().join(format!("one-{name}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::copy(log.join(name), d.join(name))
            .or_else(|_| std::fs::write(d.join(name), b"").map(|()| 0))
            .unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let got = Engine::open(&d, config.clone());
        assert!(!is_foreign_refusal(&got), "{name}: {:?}", got.map(drop));
        if let Ok(engine) = got {
            engine.close().unwrap();
        }
    }
    // And the directories themselves, with a user's file beside: the log, and the backup.
    for d in [log, tmp.path().join("backup")] {
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let engine = Engine::open(&d, config.clone()).unwrap_or_else(|e| panic!("{d:?}: {e}"));
        assert_eq!(
            engine.read_to_vec(b"k1").unwrap().as_deref(),
            Some(&[7u8; 4 << 10][..])
        );
        engine.close().unwrap();
    }
}
