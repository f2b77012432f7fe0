//! The order in which the PostgreSQL writers hand committed batches to the
//! commit sink (`commit.rs`): per channel, ascending seq across batches,
//! although two writers commit side by side.
//!
//! Each batch attempt takes a [`Ticket`] once it holds all its locks (the
//! channel rows, then the key locks), before its writes and `COMMIT`.
//! Batches are handed over in ticket order: a batch that committed while an
//! earlier ticket is still open waits in [`Handoff`] until that one
//! committed or failed.
//!
//! Why ticket order is seq order per channel: two batches that write one
//! channel both lock its row. The second one's lock statement returns only
//! after the first one committed (or rolled back), and the first took its
//! ticket before sending `COMMIT`; so the first one's ticket is the smaller
//! one. Batches of other replicas do not matter (their messages go out on
//! their own bus connection; gateways order by seq, DESIGN.md guarantee 2).
//!
//! Invariants:
//! - Every ticket is settled exactly once: delivered with its committed
//!   results, or (dropped unused: a failed or cancelled attempt) as empty.
//!   A settled turn never blocks the ones after it.
//! - A ticket is taken only after every lock of its transaction is held,
//!   so what remains before it settles (the writes, `COMMIT`) waits on no
//!   other transaction: an open ticket never waits for a later one.
//! - The sink is called under the turn lock (a std Mutex: the sink returns
//!   at once, nothing awaits), so two writers cannot interleave their
//!   hand-offs. Answers that do not go through the sink (duplicates,
//!   conflicts, failures, or every answer when no sink is set) are sent at
//!   once, outside the lock: only the sink needs the order.

use super::writer::Job;
use crate::commit::SinkSlot;
use crate::{Appended, CommitSink, Committed, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The turn keeper of one store's writers, and its sink.
#[derive(Default)]
pub(super) struct Handoff {
    /// Where stored appends go (none: answered at commit).
    sink: SinkSlot,
    turns: Mutex<Turns>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Turns {
    /// Tickets handed out so far (the next one is `issued`).
    issued: u64,
    /// The ticket whose batch goes next.
    next: u64,
    /// Settled tickets at or after `next`: their stored appends (empty when
    /// the attempt failed or stored nothing).
    settled: BTreeMap<u64, Vec<Committed>>,
}

impl Handoff {
    /// Routes stored appends through `sink` from now on.
    pub(super) fn set_sink(&self, sink: Arc<dyn CommitSink>) {
        self.sink.set(sink);
    }

    fn sink(&self) -> Option<Arc<dyn CommitSink>> {
        self.sink.get()
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next turn, for an attempt that now holds all its locks.
    pub(super) fn ticket(self: &Arc<Self>) -> Ticket {
        let mut t = self.turns();
        let n = t.issued;
        t.issued += 1;
        Ticket {
            handoff: self.clone(),
            n,
            settled: false,
        }
    }

    /// Settles turn `n` and hands over every turn that is now due, in order.
    fn settle(&self, n: u64, stored: Vec<Committed>, sink: Option<&Arc<dyn CommitSink>>) {
        let mut t = self.turns();
        t.settled.insert(n, stored);
        loop {
            let next = t.next;
            let Some(batch) = t.settled.remove(&next) else {
                return;
            };
            t.next += 1;
            if batch.is_empty() {
                continue;
            }
            match sink {
                Some(sink) => sink.committed(batch),
                // The sink was removed meanwhile (never done today):
                // dropping answers the callers.
                None => drop(batch),
            }
        }
    }
}

/// One batch attempt's turn. Dropped without [`Ticket::deliver`] (the
/// attempt failed or was cancelled), it settles empty.
pub(super) struct Ticket {
    handoff: Arc<Handoff>,
    n: u64,
    settled: bool,
}

impl Ticket {
    /// Answers a committed batch: stored appends through the sink in this
    /// ticket's turn, everything else at once.
    pub(super) fn deliver(mut self, results: Vec<(Job, Result<Appended, StoreError>)>) {
        self.settled = true;
        let sink = self.handoff.sink();
        let mut stored = Vec::new();
        for (job, result) in results {
            match result {
                Ok(a) if !a.duplicate && sink.is_some() => {
                    let Job {
                        req,
                        reply,
                        submitted,
                        ..
                    } = job;
                    stored.push(Committed::new(a, req.from, req.data, submitted, reply));
                }
                other => {
                    let _ = job.reply.send(other);
                }
            }
        }
        self.handoff.settle(self.n, stored, sink.as_ref());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            let sink = self.handoff.sink();
            self.handoff.settle(self.n, Vec::new(), sink.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppendRequest;
    use crate::append::Plan;
    use herald_protocol::{ChannelName, JsonData};
    use std::time::Instant;
    use tokio::sync::oneshot;

    /// Records the first seq of each batch it gets.
    #[derive(Default)]
    struct Seen(Mutex<Vec<u64>>);

    impl CommitSink for Seen {
        fn committed(&self, batch: Vec<Committed>) {
            let mut seen = self.0.lock().expect("not poisoned");
            seen.extend(batch.iter().map(|c| c.appended().seqs[0].1));
        }
    }

    fn job(
        seq: u64,
    ) -> (
        Job,
        Result<Appended, StoreError>,
        oneshot::Receiver<Result<Appended, StoreError>>,
    ) {
        let ch = ChannelName::new("c").expect("valid");
        let req = AppendRequest {
            channels: vec![ch.clone()],
            data: JsonData::from_value(&serde_json::json!(seq)),
            from: None,
            publisher: "p".into(),
            key: None,
            id: format!("m{seq}"),
            ts: 0,
            outbox: Vec::new(),
        };
        let plan = Plan::new(&req);
        let (reply, rx) = oneshot::channel();
        let appended = Appended {
            id: req.id.clone(),
            ts: 0,
            seqs: vec![(ch, seq)],
            duplicate: false,
        };
        (
            Job {
                req,
                plan,
                reply,
                submitted: Instant::now(),
            },
            Ok(appended),
            rx,
        )
    }

    #[test]
    fn batches_go_out_in_ticket_order_and_failed_turns_do_not_block() {
        let handoff = Arc::new(Handoff::default());
        let seen = Arc::new(Seen::default());
        handoff.set_sink(seen.clone());
        let (first, second, third) = (handoff.ticket(), handoff.ticket(), handoff.ticket());
        // The third commits first, then the second fails: both wait for
        // the first, whose hand-off releases the third too.
        let (j3, r3, mut rx3) = job(3);
        third.deliver(vec![(j3, r3)]);
        drop(second);
        assert!(seen.0.lock().expect("not poisoned").is_empty());
        assert!(rx3.try_recv().is_err(), "answered before the sink had it");
        let (j1, r1, _rx1) = job(1);
        first.deliver(vec![(j1, r1)]);
        assert_eq!(*seen.0.lock().expect("not poisoned"), vec![1, 3]);
        // Seen dropped its Committed: the caller has its answer.
        assert_eq!(rx3.try_recv().expect("answered").expect("ok").seqs[0].1, 3);
    }

    #[test]
    fn without_a_sink_answers_at_once() {
        let handoff = Arc::new(Handoff::default());
        let first = handoff.ticket();
        let second = handoff.ticket();
        let (j, r, mut rx) = job(2);
        second.deliver(vec![(j, r)]);
        assert!(rx.try_recv().is_ok(), "no sink: nothing to wait for");
        drop(first);
    }
}
