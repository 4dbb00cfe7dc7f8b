//! A small in-memory key-value state machine and the type config that goes with it, the
//! shape of openraft's own `memstore` example: for openraft's storage suite, the cluster
//! test and the bench. Its snapshots are kept in memory too; a restarted node rebuilds its
//! state by re-applying its log up to the committed id (which the log store keeps), which
//! works only while the log has not been purged: a purged node has lost the in-memory
//! snapshot its purge relied on and cannot restart this way (the cluster test builds no
//! snapshots, `SnapshotPolicy::Never`). A real state machine keeps its snapshots durably.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The type config of the key-value state machine: `u64` node ids, basic nodes.
    pub TypeConfig:
        D = Request,
        R = Response,
);

type Entry = openraft::Entry<TypeConfig>;
type Membership = StoredMembership<u64, openraft::BasicNode>;

/// A client write: set `key` to `value`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The key.
    pub key: String,
    /// The new value.
    pub value: Vec<u8>,
}

/// The answer to a write: the value the key had before (none for blank and membership
/// entries).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The key's previous value.
    pub previous: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    data: BTreeMap<String, Vec<u8>>,
    snapshot: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// The state machine: a map from keys to values, the last applied log id and membership.
/// Cheap to clone; clones share the state (a test keeps one to look inside).
#[derive(Clone, Default)]
pub struct KvStateMachine {
    state: Arc<Mutex<State>>,
}

impl KvStateMachine {
    /// An empty state machine.
    pub fn new() -> KvStateMachine {
        KvStateMachine::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every key and value.
    pub fn data(&self) -> BTreeMap<String, Vec<u8>> {
        self.state().data.clone()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.state().last_applied
    }
}

/// Serialized state: what a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Image {
    data: BTreeMap<String, Vec<u8>>,
}

fn sm_err(e: &postcard::Error) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for KvStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut state = self.state();
        let bytes = postcard::to_stdvec(&Image {
            data: state.data.clone(),
        })
        .map_err(|e| sm_err(&e))?;
        state.snapshots_built += 1;
        let last = state.last_applied.map_or("none".into(), |l| l.to_string());
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("{last}-{}", state.snapshots_built),
        };
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for KvStateMachine {
    type SnapshotBuilder = KvStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let state = self.state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state();
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => Response {
                    previous: state.data.insert(request.key, request.value),
                },
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let image: Image = postcard::from_bytes(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let mut state = self.state();
        state.data = image.data;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self.state().snapshot.clone().map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
