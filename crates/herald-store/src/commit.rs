//! The commit hand-off: what a writer gives a [`CommitSink`] right after a
//! transaction committed, before the appends in it are answered.
//!
//! Ingest uses it to publish a whole commit batch on the bus as one unit
//! (one Redis pipeline) and to answer each publisher once its message is on
//! the bus (DESIGN.md guarantee 1: commit, then publish, then answer).
//!
//! Invariants:
//! - Only appends that stored a message are handed over: never a duplicate
//!   (nothing stored), a conflict or a failure; those are answered by the
//!   writer as without a sink.
//! - Per channel, the sink sees seqs in ascending order: within one call
//!   (appends in commit order) and across the calls of one store (the
//!   backends hand batches over in the order their channel locks were
//!   taken, see `postgres/handoff.rs`; SQLite has one writer).
//! - Every [`Committed`] answers its caller exactly once: when dropped,
//!   however it is dropped (the sink is done with it, its queue refused it,
//!   the runtime shut down). A sink cannot lose an answer.
//!
//! Must not: block or await in [`CommitSink::committed`] (it runs on a
//! writer task, between two batches, holding the hand-off lock).

use crate::{Appended, StoreError};
use herald_protocol::JsonData;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::oneshot;

/// Receives every batch of stored appends of a store (see
/// [`crate::Store::set_commit_sink`]).
pub trait CommitSink: Send + Sync + 'static {
    /// One committed transaction's stored appends, in commit order. Called
    /// from a writer task: must return at once (hand the batch to another
    /// task). Each append's caller is answered when its [`Committed`] drops.
    fn committed(&self, batch: Vec<Committed>);
}

/// A store's sink, set once after open and read once per batch.
#[derive(Default)]
pub(crate) struct SinkSlot(RwLock<Option<Arc<dyn CommitSink>>>);

impl SinkSlot {
    /// Routes stored appends through `sink` from now on.
    pub(crate) fn set(&self, sink: Arc<dyn CommitSink>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// The sink, if one is set.
    pub(crate) fn get(&self) -> Option<Arc<dyn CommitSink>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for SinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SinkSlot")
            .field(&self.get().is_some())
            .finish()
    }
}

/// One stored append, committed, whose caller waits for it to drop.
pub struct Committed {
    /// What the caller gets (taken by `drop`).
    appended: Appended,
    /// The request's `from`.
    from: Option<String>,
    /// The request's payload.
    data: JsonData,
    /// When `append` queued it (for the commit-time metric).
    submitted: Instant,
    /// The caller's answer; `None` once sent.
    reply: Option<oneshot::Sender<Result<Appended, StoreError>>>,
}

impl Committed {
    /// A committed append whose answer goes to `reply` on drop.
    pub(crate) fn new(
        appended: Appended,
        from: Option<String>,
        data: JsonData,
        submitted: Instant,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    ) -> Self {
        Self {
            appended,
            from,
            data,
            submitted,
            reply: Some(reply),
        }
    }

    /// What was stored: id, ts and one seq per channel (request order);
    /// `duplicate` is false.
    pub fn appended(&self) -> &Appended {
        &self.appended
    }

    /// The publisher shown as `from`.
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// The payload.
    pub fn data(&self) -> &JsonData {
        &self.data
    }

    /// When the append was handed to the store: `submitted().elapsed()` in
    /// [`CommitSink::committed`] is the time to commit.
    pub fn submitted(&self) -> Instant {
        self.submitted
    }
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed")
            .field("appended", &self.appended)
            .finish_non_exhaustive()
    }
}

impl Drop for Committed {
    /// Answers the caller with the stored result (a caller that went away
    /// does not want it).
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let appended = std::mem::replace(
                &mut self.appended,
                Appended {
                    id: String::new(),
                    ts: 0,
                    seqs: Vec::new(),
                    duplicate: false,
                },
            );
            let _ = reply.send(Ok(appended));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::ChannelName;

    #[test]
    fn dropping_answers_once_with_the_stored_result() {
        let (tx, mut rx) = oneshot::channel();
        let appended = Appended {
            id: "m1".into(),
            ts: 7,
            seqs: vec![(ChannelName::new("c").expect("valid"), 3)],
            duplicate: false,
        };
        let c = Committed::new(
            appended.clone(),
            Some("u".into()),
            JsonData::from_value(&serde_json::json!(1)),
            Instant::now(),
            tx,
        );
        assert_eq!(c.appended(), &appended);
        assert_eq!(c.from(), Some("u"));
        assert!(rx.try_recv().is_err(), "no answer before the drop");
        drop(c);
        assert_eq!(rx.try_recv().expect("answered").expect("ok"), appended);
    }
}
