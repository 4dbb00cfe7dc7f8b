//! A three-node openraft cluster in one process, each node's log in its own mergelog
//! directory, the network direct calls between the nodes: writes go through the leader,
//! the leader is killed, a new one is elected, writes go on, the killed node restarts from
//! its directory and catches up. No acknowledged write is lost and the three state
//! machines end equal.

// openraft's error types are what its traits and suite return.
#![allow(clippy::result_large_err)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mergelog::Engine;
use mergelog_raft::kv::{KvStateMachine, Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, Raft, RaftNetwork, RaftNetworkFactory, SnapshotPolicy};

type NodeId = u64;
type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, BasicNode, E>>;

/// Bounds every wait of the test (a hang fails it); nothing is timed with it.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// The running nodes, by id: a node not in it is down (unreachable).
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Option<Raft<TypeConfig>> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }
}

struct Connection {
    target: NodeId,
    router: Router,
}

fn down<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, BasicNode, E> {
    let error = std::io::Error::other(format!("node {target} is down"));
    RPCError::Unreachable(Unreachable::new(&error))
}

impl Connection {
    fn raft<E: std::error::Error>(
        &self,
    ) -> Result<Raft<TypeConfig>, RPCError<NodeId, BasicNode, E>> {
        self.router
            .get(self.target)
            .ok_or_else(|| down(self.target))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let raft = self.raft()?;
        let answer = raft.append_entries(rpc).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let raft = self.raft()?;
        let answer = raft.install_snapshot(rpc).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        let raft = self.raft()?;
        let answer = raft.vote(rpc).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection {
            target,
            router: self.clone(),
        }
    }
}

/// A running node: its Raft, its engine (to close it on a kill) and its state machine.
struct Node {
    raft: Raft<TypeConfig>,
    engine: Arc<Engine>,
    sm: KvStateMachine,
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // The state machine and its snapshots are in memory: a restarted node rebuilds its
        // state from its log, so the log is never purged here (purges: `restart.rs`).
        snapshot_policy: SnapshotPolicy::Never,
        ..Config::default()
    };
    Arc::new(config.validate().expect("a valid Raft config"))
}

/// Opens node `id`'s store in `dir` and starts it; returns it and its log's last index as
/// found in the directory, before Raft saw it.
async fn start(id: NodeId, dir: &Path, router: &Router) -> (Node, Option<u64>) {
    start_with(id, dir, router, common::small_config()).await
}

/// As `start`, with the engine configuration `config`.
async fn start_with(
    id: NodeId,
    dir: &Path,
    router: &Router,
    config: mergelog::Config,
) -> (Node, Option<u64>) {
    let mut store = LogStore::<TypeConfig>::open(dir, config).expect("store opens");
    let last = store
        .get_log_state()
        .await
        .unwrap()
        .last_log_id
        .map(|l| l.index);
    let engine = store.engine().clone();
    let sm = KvStateMachine::new();
    let raft = Raft::new(id, raft_config(), router.clone(), store, sm.clone())
        .await
        .expect("the node starts");
    router.nodes.lock().unwrap().insert(id, raft.clone());
    (Node { raft, engine, sm }, last)
}

/// Kills node `node`: unreachable at once, Raft stopped, its engine closed (the directory
/// is free), its state machine dropped.
async fn kill(id: NodeId, node: Node, router: &Router) {
    router.nodes.lock().unwrap().remove(&id);
    node.raft.shutdown().await.expect("raft shuts down");
    node.engine.close().expect("the engine closes");
}

async fn leader(nodes: &BTreeMap<NodeId, Node>, not: Option<NodeId>) -> NodeId {
    let any = nodes.values().next().expect("a node");
    let wait = any.raft.wait(Some(WAIT_MAX));
    let m = wait
        .metrics(
            |m| {
                m.current_leader
                    .is_some_and(|l| Some(l) != not && nodes.contains_key(&l))
            },
            "a leader among the running nodes",
        )
        .await
        .expect("a leader is elected");
    m.current_leader.unwrap()
}

/// Sets `key` to its own bytes through whichever node leads, retrying (bounded) when the
/// leader changes under it; the log index of the acknowledged write.
async fn write_one(router: Router, key: String) -> u64 {
    let value = key.as_bytes().to_vec();
    write_value(router, key, value).await
}

/// Sets `key` to `value` as `write_one` does.
async fn write_value(router: Router, key: String, value: Vec<u8>) -> u64 {
    for _ in 0..100 {
        let any = router
            .nodes
            .lock()
            .unwrap()
            .values()
            .next()
            .cloned()
            .expect("a node");
        let leader = any.metrics().borrow().current_leader;
        if let Some(raft) = leader.and_then(|l| router.get(l)) {
            let request = Request {
                key: key.clone(),
                value: value.clone(),
            };
            if let Ok(answer) = raft.client_write(request).await {
                return answer.log_id.index;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader acknowledged {key} in 100 attempts");
}

/// Writes `count` keys `{prefix}{i}` through the leader, 4 at a time; returns the writes
/// acknowledged (all of them) and the highest log index they landed at.
async fn write(router: &Router, prefix: &str, count: usize) -> (BTreeMap<String, Vec<u8>>, u64) {
    let mut acked = BTreeMap::new();
    let mut highest = 0;
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i:04}")).collect();
    for chunk in keys.chunks(4) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|key| tokio::spawn(write_one(router.clone(), key.clone())))
            .collect();
        for (key, task) in chunk.iter().zip(tasks) {
            highest = highest.max(task.await.expect("the write task ends"));
            acked.insert(key.clone(), key.as_bytes().to_vec());
        }
    }
    (acked, highest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_losing_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let dirs: BTreeMap<NodeId, PathBuf> = (1..=3)
        .map(|id| (id, root.path().join(format!("node{id}"))))
        .collect();
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for (&id, dir) in &dirs {
        nodes.insert(id, start(id, dir, &router).await.0);
    }
    let members: BTreeMap<NodeId, BasicNode> =
        dirs.keys().map(|&id| (id, BasicNode::default())).collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("the cluster initializes");

    let (mut acked, _) = write(&router, "before-", 40).await;
    let old = leader(&nodes, None).await;
    let acked_index = nodes[&old]
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index);
    let node = nodes.remove(&old).unwrap();
    kill(old, node, &router).await;

    let new = leader(&nodes, Some(old)).await;
    assert_ne!(new, old, "a new leader is elected");
    let (during, _) = write(&router, "during-", 40).await;
    acked.extend(during);

    // The killed node restarts from its directory: its log holds at least every write it
    // had applied as leader, before Raft or the network gave it anything.
    let (node, last_on_disk) = start(old, &dirs[&old], &router).await;
    assert!(
        last_on_disk >= acked_index,
        "log on disk {last_on_disk:?} < applied {acked_index:?}"
    );
    nodes.insert(old, node);
    let (after, last) = write(&router, "after-", 20).await;
    acked.extend(after);

    for (id, node) in &nodes {
        let wait = node.raft.wait(Some(WAIT_MAX));
        wait.applied_index_at_least(Some(last), format!("node {id} applies everything"))
            .await
            .expect("every node catches up");
    }
    let states: Vec<_> = nodes.values().map(|n| n.sm.data()).collect();
    for (key, value) in &acked {
        assert_eq!(
            states[0].get(key),
            Some(value),
            "acknowledged write {key} is present"
        );
    }
    assert_eq!(states[0], states[1], "state machines equal");
    assert_eq!(states[0], states[2], "state machines equal");
    for (id, node) in std::mem::take(&mut nodes) {
        kill(id, node, &router).await;
    }
}

/// A client write of a value larger than the engine's `value_len_max` (its entry is stored
/// in chunks) is committed and applied on every node, and the nodes keep running: writes go
/// on after it, and a follower restarted from its directory reads it back from its log.
/// (Before entries were stored in chunks, the engine refused the entry and openraft stopped
/// each node that appended it: the write was never acknowledged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_larger_than_value_len_max_is_committed_on_every_node() {
    // Values of at most 64 KiB; the large one is 1 MiB.
    let config = mergelog::Config {
        value_len_max: 64 << 10,
        ..common::small_config()
    };
    let root = tempfile::tempdir().unwrap();
    let dirs: BTreeMap<NodeId, PathBuf> = (1..=3)
        .map(|id| (id, root.path().join(format!("node{id}"))))
        .collect();
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for (&id, dir) in &dirs {
        nodes.insert(id, start_with(id, dir, &router, config.clone()).await.0);
    }
    let members: BTreeMap<NodeId, BasicNode> =
        dirs.keys().map(|&id| (id, BasicNode::default())).collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("the cluster initializes");
    let (mut acked, _) = write(&router, "before-", 4).await;
    // Bytes that vary along the value, so that a chunk out of place shows.
    let large: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_value(router.clone(), "large".into(), large.clone()).await;
    acked.insert("large".into(), large);
    let (after, last) = write(&router, "after-", 4).await;
    acked.extend(after);
    let check = |nodes: &BTreeMap<NodeId, Node>| {
        for (id, node) in nodes {
            assert!(
                node.raft.metrics().borrow().running_state.is_ok(),
                "node {id} stopped"
            );
            assert_eq!(node.sm.data(), acked, "node {id} applied every write");
        }
    };
    for (id, node) in &nodes {
        let wait = node.raft.wait(Some(WAIT_MAX));
        wait.applied_index_at_least(Some(last), format!("node {id} applies everything"))
            .await
            .expect("every node applies the writes");
    }
    check(&nodes);

    // A follower restarts from its directory: its log holds the large entry, which it
    // applies again.
    let leader = leader(&nodes, None).await;
    let follower = *nodes.keys().find(|&&id| id != leader).unwrap();
    let node = nodes.remove(&follower).unwrap();
    kill(follower, node, &router).await;
    let (node, last_on_disk) = start_with(follower, &dirs[&follower], &router, config).await;
    assert!(
        last_on_disk >= Some(last),
        "the follower's log holds the writes"
    );
    nodes.insert(follower, node);
    let wait = nodes[&follower].raft.wait(Some(WAIT_MAX));
    wait.applied_index_at_least(Some(last), "the restarted follower applies everything")
        .await
        .expect("the restarted follower applies the writes");
    check(&nodes);
    for (id, node) in std::mem::take(&mut nodes) {
        kill(id, node, &router).await;
    }
}
