//! Durable Raft appends per second: a single-node openraft cluster whose clients write
//! 100-byte values as fast as their writes are acknowledged (an acknowledged write is
//! durable in the log: openraft commits an entry only once the store called back), on
//! the mergelog store (as opened by default: `append` waits for its entries; and as
//! `mergelog-async`, `with_append_waits(false)`: `append` returns at once and the store's
//! completion thread calls back) and on a straightforward store (entries in memory, each
//! `append` written to a file and `fdatasync`ed before it calls back), in rotation, with 1
//! and 16 concurrent clients.
//!
//! ```sh
//! cargo bench -p mergelog-raft --bench appends                 # 3 rounds of 3 s per run
//! cargo bench -p mergelog-raft --bench appends -- --rounds 5 --secs 2
//! ```
//!
//! Prints appends per second per run, the ratios to the straightforward store per round,
//! and their medians per client count. The logs live in a temporary directory
//! (`TMPDIR` picks the disk).

#![allow(clippy::disallowed_methods)]
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::File;
use std::io::Write;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mergelog_raft::kv::{KvStateMachine, Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, BasicNode, Entry, LogId, LogState, OptionalSend, Raft, RaftLogReader, RaftNetwork,
    RaftNetworkFactory, StorageError, StorageIOError, Vote,
};

type Rpc<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

/// What a straightforward log store keeps in memory.
#[derive(Default)]
struct Memory {
    log: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
}

/// The straightforward store: entries in a map, and each `append` written to a file and
/// `fdatasync`ed before it calls back (the vote likewise, in its own file).
struct FileStore {
    memory: Arc<Mutex<Memory>>,
    log: File,
    vote: File,
}

fn io_error(e: std::io::Error) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl FileStore {
    fn create(dir: &Path) -> std::io::Result<FileStore> {
        Ok(FileStore {
            memory: Arc::default(),
            log: File::create(dir.join("log"))?,
            vote: File::create(dir.join("vote"))?,
        })
    }
}

#[derive(Clone)]
struct FileReader(Arc<Mutex<Memory>>);

impl RaftLogReader<TypeConfig> for FileReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let memory = self.0.lock().unwrap();
        Ok(memory.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogReader<TypeConfig> for FileStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        FileReader(self.memory.clone())
            .try_get_log_entries(range)
            .await
    }
}

impl RaftLogStorage<TypeConfig> for FileStore {
    type LogReader = FileReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let memory = self.memory.lock().unwrap();
        let last = memory.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: memory.last_purged,
            last_log_id: last.or(memory.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> FileReader {
        FileReader(self.memory.clone())
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let bytes = postcard::to_stdvec(vote).expect("a vote encodes");
        self.vote.write_all(&bytes).map_err(io_error)?;
        self.vote.sync_data().map_err(io_error)?;
        self.memory.lock().unwrap().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.memory.lock().unwrap().vote)
    }

    async fn save_committed(&mut self, c: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        self.memory.lock().unwrap().committed = c;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.memory.lock().unwrap().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        for entry in &entries {
            let encoded = postcard::to_stdvec(entry).expect("an entry encodes");
            bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&encoded);
        }
        self.log.write_all(&bytes).map_err(io_error)?;
        self.log.sync_data().map_err(io_error)?;
        let mut memory = self.memory.lock().unwrap();
        memory
            .log
            .extend(entries.into_iter().map(|e| (e.log_id.index, e)));
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    // Never called in this bench (one node, no snapshots): in memory only.
    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.memory.lock().unwrap().log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut memory = self.memory.lock().unwrap();
        memory.log = memory.log.split_off(&(log_id.index + 1));
        memory.last_purged = Some(log_id);
        Ok(())
    }
}

/// One node talks to nobody.
#[derive(Clone)]
struct Nobody;

fn unreachable<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("single node")))
}

impl RaftNetwork<TypeConfig> for Nobody {
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        Err(unreachable())
    }

    async fn vote(&mut self, _: VoteRequest<u64>, _: RPCOption) -> Rpc<VoteResponse<u64>> {
        Err(unreachable())
    }
}

impl RaftNetworkFactory<TypeConfig> for Nobody {
    type Network = Nobody;
    async fn new_client(&mut self, _: u64, _: &BasicNode) -> Nobody {
        Nobody
    }
}

/// Starts a single-node cluster on `store` and waits until it leads.
async fn single_node<S: RaftLogStorage<TypeConfig>>(store: S) -> Raft<TypeConfig> {
    let config = openraft::Config {
        heartbeat_interval: 100,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("a valid config"));
    let raft = Raft::new(1, config, Nobody, store, KvStateMachine::new())
        .await
        .expect("the node starts");
    let members = BTreeSet::from([1u64]);
    raft.initialize(members).await.expect("initializes");
    raft.wait(Some(Duration::from_secs(30)))
        .current_leader(1, "leads")
        .await
        .expect("a leader");
    raft
}

/// `clients` tasks write 100-byte values for `secs`; acknowledged writes per second.
async fn drive(raft: &Raft<TypeConfig>, clients: usize, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (raft, done) = (raft.clone(), done.clone());
            tokio::spawn(async move {
                // One key per client keeps the state machine small; the log gets every write.
                let key = format!("client-{c}");
                while Instant::now() < deadline {
                    let request = Request {
                        key: key.clone(),
                        value: vec![c as u8; 100],
                    };
                    raft.client_write(request)
                        .await
                        .expect("a write is acknowledged");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a client ends");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The stores compared: mergelog's (waiting in `append`, the default, or not) and the
/// straightforward one.
#[derive(Clone, Copy)]
enum Store {
    Mergelog { append_waits: bool },
    File,
}

async fn run(store: Store, clients: usize, secs: f64) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    if let Store::Mergelog { append_waits } = store {
        let store = LogStore::<TypeConfig>::open(dir.path(), mergelog::Config::default())
            .expect("opens")
            .with_append_waits(append_waits);
        let engine = store.engine().clone();
        let raft = single_node(store).await;
        let rate = drive(&raft, clients, secs).await;
        raft.shutdown().await.expect("shuts down");
        engine.close().expect("closes");
        rate
    } else {
        let raft = single_node(FileStore::create(dir.path()).expect("creates")).await;
        let rate = drive(&raft, clients, secs).await;
        raft.shutdown().await.expect("shuts down");
        rate
    }
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
        })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds = arg("--rounds", 3.0) as usize;
    let secs = arg("--secs", 3.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "durable Raft appends/s, 100-byte values, single node; {rounds} rounds of {secs} s per run"
    );
    println!(
        "{:>7} {:>5} {:>12} {:>15} {:>15} {:>7} {:>7}",
        "clients", "round", "mergelog", "mergelog-async", "file+fdatasync", "ratio", "async"
    );
    let stores = [
        Store::Mergelog { append_waits: true },
        Store::Mergelog {
            append_waits: false,
        },
        Store::File,
    ];
    for clients in [1, 16] {
        let (mut ratios, mut async_ratios) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            // Rotate which goes first: a drifting disk then favours none.
            let mut rates = [0.0; 3];
            for k in 0..stores.len() {
                let i = (round + k) % stores.len();
                rates[i] = runtime.block_on(run(stores[i], clients, secs));
            }
            let (ratio, async_ratio) = (rates[0] / rates[2], rates[1] / rates[2]);
            ratios.push(ratio);
            async_ratios.push(async_ratio);
            println!(
                "{clients:>7} {round:>5} {:>12.0} {:>15.0} {:>15.0} {ratio:>6.2}x {async_ratio:>6.2}x",
                rates[0], rates[1], rates[2]
            );
        }
        println!(
            "{clients:>7} median ratio to file+fdatasync: mergelog {:.2}x, mergelog-async {:.2}x",
            median(ratios),
            median(async_ratios)
        );
    }
}
