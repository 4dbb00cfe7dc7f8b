//! The asynchronous submit: `put_async`, `delete_async`, `merge_async`, `write_async`,
//! `get_async`, and the idempotent `put_with_id_async`, `delete_with_id_async`,
//! `merge_with_id_async`, `write_with_id_async`.
//!
//! Each is an `async fn` that resolves to the request's [`Ticket`] once the request is in the
//! ring, so a caller writes `engine.put_async(k, v).await?.await?` (the first `.await`
//! submits, the second waits for durability). Where the blocking form parks the thread (a
//! full ring, or a throttle on consumer lag, under `Backpressure::Block`), the future returns
//! `Pending` with its waker registered and is woken when the flusher releases ring space
//! (or the throttle lets go, or the engine closes): many thousands of clients can wait on a
//! couple of executor threads. Runtime-free: the wake-ups come from the engine's threads,
//! any executor can poll.
//!
//! Like every Rust future, it does nothing until polled: the request takes its place in the
//! total order at the poll that resolves it, not at the call. With space in the ring that is
//! the first poll, and it allocates nothing; only a wait registers (clones) the waker. A
//! waiting future keeps one waker registered, the one it was last polled with, and a future
//! dropped while it waits (given up on: a timeout around the submit) submits nothing and
//! leaves no waker with the engine.
//!
//! Why `async fn`s rather than a `writable()` future plus `try_put`: space seen by a
//! readiness future can be taken by another producer before the `try_put`, so every caller
//! would have to write the retry loop; here the loop is the future's.

use crate::config::Backpressure;
use crate::engine::Engine;
use crate::error::Result;
use crate::ids::{IdTicket, RequestId};
use crate::request::{self, WriteBatch};
use crate::stats::record;
use crate::ticket::{GetSlot, GetTicket, Ticket};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

impl Engine {
    /// As [`Engine::put`], without ever blocking the thread: resolves to the ticket once the
    /// put is submitted, waiting (as a future) for ring space or for a consumer-lag throttle
    /// to let go under `Backpressure::Block`.
    ///
    /// Two awaits: `engine.put_async(k, v).await?.await?`. The first submits and gives the
    /// [`Ticket`]; the request takes its place in the order at the poll that resolves it (a
    /// future does nothing until polled), so awaiting it before the next submit keeps a
    /// client's writes in order. The second, the ticket's, waits for durability and gives
    /// the batch ([`Seq`](crate::Seq)) the write is in: a client may submit several writes
    /// before awaiting their tickets, and they share syncs. The futures need no runtime (the
    /// engine's threads wake them; any executor polls them), allocate nothing while the ring
    /// has room, and leave no waker with the engine once dropped. `examples/kv_async.rs`
    /// runs many such clients on one thread with a small executor of `std`.
    ///
    /// # Errors
    ///
    /// As [`Engine::put`]'s. Where that would block (`Backpressure::Block`), the future waits
    /// instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's failure if
    /// the engine closes or fails meanwhile.
    pub async fn put_async(&self, key: &[u8], value: &[u8]) -> Result<Ticket> {
        self.check_key(key)?;
        self.check_value(value)?;
        let len = request::put_len(key, value);
        let pos = self
            .submit_async(len, |buf, now| {
                request::encode_put(buf, key, value, now, None)
            })
            .await?;
        Ok(self.ticket(pos))
    }

    /// As [`Engine::delete`], without ever blocking the thread (see [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::delete`]'s. Where that would block (`Backpressure::Block`), the future waits
    /// instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's failure if
    /// the engine closes or fails meanwhile.
    pub async fn delete_async(&self, key: &[u8]) -> Result<Ticket> {
        self.check_key(key)?;
        let len = request::delete_len(key);
        let pos = self
            .submit_async(len, |buf, now| request::encode_delete(buf, key, now, None))
            .await?;
        Ok(self.ticket(pos))
    }

    /// As [`Engine::merge`], without ever blocking the thread (see [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::merge`]'s. Where that would block (`Backpressure::Block`), the future waits
    /// instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's failure if
    /// the engine closes or fails meanwhile.
    pub async fn merge_async(&self, key: &[u8], operand: &[u8]) -> Result<Ticket> {
        self.check_merge(key, operand)?;
        let len = request::merge_len(key, operand);
        let pos = self
            .submit_async(len, |buf, now| {
                request::encode_merge(buf, key, operand, now, None)
            })
            .await?;
        Ok(self.ticket(pos))
    }

    /// As [`Engine::write`], without ever blocking the thread (see [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::write`]'s. Where that would block (`Backpressure::Block`), the future waits
    /// instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's failure if
    /// the engine closes or fails meanwhile.
    pub async fn write_async(&self, batch: &WriteBatch) -> Result<Ticket> {
        self.check_batch(batch)?;
        let len = request::batch_len(batch);
        let pos = self
            .submit_async(len, |buf, now| request::encode_batch(buf, batch, now, None))
            .await?;
        Ok(self.ticket(pos))
    }

    /// As [`Engine::get`], without ever blocking the thread (see [`Engine::put_async`]; a
    /// get is never throttled).
    ///
    /// # Errors
    ///
    /// As [`Engine::get`]'s. Where that would block (`Backpressure::Block`), the future waits
    /// instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's failure if
    /// the engine closes or fails meanwhile.
    pub async fn get_async(&self, key: &[u8]) -> Result<GetTicket> {
        self.check_key(key)?;
        let slot = Arc::new(GetSlot::default());
        let len = request::get_len(key);
        // Each claim moves one reference into the record; only the claim that succeeds runs
        // the fill.
        let pos = self
            .claim_async(len, |buf, now| {
                request::encode_get(buf, key, slot.clone(), now)
            })
            .await?;
        Ok(GetTicket::new(self.ticket(pos), slot))
    }

    /// As [`Engine::put_with_id`], without ever blocking the thread (see
    /// [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::put_with_id`]'s. Where that would block (`Backpressure::Block`), the future
    /// waits instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's
    /// failure if the engine closes or fails meanwhile.
    pub async fn put_with_id_async(
        &self,
        id: impl Into<RequestId>,
        key: &[u8],
        value: &[u8],
    ) -> Result<IdTicket> {
        self.check_key(key)?;
        self.check_value(value)?;
        let id = id.into();
        let len = request::put_len(key, value) + request::id_len(Some(&id));
        let pos = self
            .submit_async(len, |buf, now| {
                request::encode_put(buf, key, value, now, Some(&id))
            })
            .await?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// As [`Engine::delete_with_id`], without ever blocking the thread (see
    /// [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::delete_with_id`]'s. Where that would block (`Backpressure::Block`), the future
    /// waits instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's
    /// failure if the engine closes or fails meanwhile.
    pub async fn delete_with_id_async(
        &self,
        id: impl Into<RequestId>,
        key: &[u8],
    ) -> Result<IdTicket> {
        self.check_key(key)?;
        let id = id.into();
        let len = request::delete_len(key) + request::id_len(Some(&id));
        let pos = self
            .submit_async(len, |buf, now| {
                request::encode_delete(buf, key, now, Some(&id))
            })
            .await?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// As [`Engine::merge_with_id`], without ever blocking the thread (see
    /// [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::merge_with_id`]'s. Where that would block (`Backpressure::Block`), the future
    /// waits instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's
    /// failure if the engine closes or fails meanwhile.
    pub async fn merge_with_id_async(
        &self,
        id: impl Into<RequestId>,
        key: &[u8],
        operand: &[u8],
    ) -> Result<IdTicket> {
        self.check_merge(key, operand)?;
        let id = id.into();
        let len = request::merge_len(key, operand) + request::id_len(Some(&id));
        let pos = self
            .submit_async(len, |buf, now| {
                request::encode_merge(buf, key, operand, now, Some(&id))
            })
            .await?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// As [`Engine::write_with_id`], without ever blocking the thread (see
    /// [`Engine::put_async`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::write_with_id`]'s. Where that would block (`Backpressure::Block`), the future
    /// waits instead; it resolves to [`Error::Closed`](crate::Error::Closed) or the engine's
    /// failure if the engine closes or fails meanwhile.
    pub async fn write_with_id_async(
        &self,
        id: impl Into<RequestId>,
        batch: &WriteBatch,
    ) -> Result<IdTicket> {
        self.check_batch(batch)?;
        let id = id.into();
        let len = request::batch_len(batch) + request::id_len(Some(&id));
        let pos = self
            .submit_async(len, |buf, now| {
                request::encode_batch(buf, batch, now, Some(&id))
            })
            .await?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// The asynchronous `submit`: passes the throttle, then claims ring space for `len`
    /// payload bytes and fills it with `fill(buf, stamp)`, waiting as a future where
    /// `submit` would park. Returns the request's end position (its ticket).
    async fn submit_async(&self, len: usize, fill: impl Fn(&mut [u8], u64)) -> Result<u64> {
        self.admit_async(len).await?;
        self.claim_async(len, fill).await
    }

    /// The ring half of [`Engine::submit_async`], without the throttle (a get's).
    async fn claim_async(&self, len: usize, fill: impl Fn(&mut [u8], u64)) -> Result<u64> {
        self.check_submit(len)?;
        let inner = &*self.inner;
        let reject = inner.config.backpressure == Backpressure::Reject;
        let mut waited: Option<Instant> = None;
        let mut wait = SpaceWait {
            ring: &inner.ring,
            slot: crate::ring::SpaceSlot::default(),
        };
        let pushed = poll_fn(|cx| {
            let now = self.stamp();
            let fill = |buf: &mut [u8]| fill(buf, now);
            if reject {
                return Poll::Ready(inner.ring.try_push(len, fill));
            }
            let r = inner.ring.poll_push(len, cx, &mut wait.slot, fill);
            if r.is_pending() {
                waited.get_or_insert_with(Instant::now);
            }
            r
        })
        .await;
        if let Some(waited) = waited {
            record(
                &mut inner.counters.stages.lock().ring_wait,
                waited.elapsed().as_nanos() as u64,
            );
        }
        self.pushed(len, pushed)
    }

    /// The asynchronous `admit`: lets the submission of `len` payload bytes through unless
    /// writes are refused for lack of room (`NoSpace`) or throttled on consumer lag; then
    /// refuses it (`Reject`) or waits as a future until the throttle lets go, writes are
    /// refused for lack of room, or the engine closes or fails (`Block`; `NoSpace` is given
    /// here, `check_submit` and the ring report the others).
    async fn admit_async(&self, len: usize) -> Result<()> {
        let inner = &*self.inner;
        if !inner.throttle.gated() {
            return Ok(());
        }
        // As `throttled`: a request too large is refused for its size, not held.
        self.check_submit(len)?;
        self.refused_for_room()?;
        // A closed engine takes nothing: `Throttled` would say retry (`Block` waits for
        // nothing then, and the ring refuses it as `Closed`).
        if !inner.throttle.engaged() || inner.ring.is_closed() {
            return Ok(());
        }
        crate::stats::Counters::add(&inner.counters.throttled, 1);
        if inner.config.backpressure == Backpressure::Reject {
            return Err(inner.throttle.refusal());
        }
        // Its entry in the throttle's list goes when the future does, waiting or not.
        let mut slot = inner.throttle.task_slot();
        poll_fn(|cx| slot.poll_wait(cx, || self.throttle_let_go())).await;
        // A spell of refusals for room let it go: refused as every write now is.
        self.refused_for_room()
    }
}

/// A future's place in the ring's list of tasks waiting for space: its waker leaves the list
/// with the future (`Ring::forget_space_waker`), so a submit given up on while the flusher is
/// stalled leaves nothing with the engine until the next release.
struct SpaceWait<'a> {
    ring: &'a crate::ring::Ring,
    slot: crate::ring::SpaceSlot,
}

impl Drop for SpaceWait<'_> {
    fn drop(&mut self) {
        self.ring.forget_space_waker(&self.slot);
    }
}
