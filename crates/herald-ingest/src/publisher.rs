//! The bus publisher: the store's commit sink (`herald_store::CommitSink`).
//! Each committed batch of stored messages reaches the bus in one
//! [`Bus::publish_batch`] (on Redis: one pipeline, one write, one round
//! trip), and each publisher is answered once that call returned or its
//! deadline passed (DESIGN.md guarantee 1: commit, then publish, then
//! answer).
//!
//! Before, every message's publish task sent its own PUBLISH through the
//! multiplexed connection's driver task (a queue hand-off, a timer and a
//! wake-up per message, ~19 % of ingest's CPU at 512 in flight,
//! benches/RESULTS.md); and the tasks of one commit batch, woken together,
//! sent them in scheduler order, not seq order.
//!
//! Invariants:
//! - Per channel, PUBLISH order is seq order (DESIGN.md guarantee 2, for
//!   this ingest's messages): the store hands batches over in seq order per
//!   channel, [`CommitSink::committed`] queues them in that order, one task
//!   publishes them in queue order (several queued batches are one call,
//!   still in order), one call at a time, and the bus keeps a channel's
//!   order within a call.
//! - A failed or late publish is handled as before: the message is
//!   committed, the publisher is answered 200 anyway, the failure is
//!   counted (`herald_bus_publish_failures_total`, per envelope) and
//!   logged, and the gateways' gap fill and catch-up deliver it (a retry
//!   with the same key republishes it from the store, `lib.rs`). Nothing
//!   is retried here: a publish that timed out may have been delivered.
//! - [`BUS_PUBLISH_DEADLINE`]: a batch's publishers are answered at most
//!   that long after its commit (plus one scheduling round): a round is
//!   bounded by its oldest batch's deadline, and a batch already past its
//!   deadline when its round starts is not published at all.
//! - Every caller is answered exactly once: dropping a `Committed` answers
//!   it (done, refused by a full queue, or at shutdown), so nothing here
//!   can leave a publisher waiting.
//!
//! Must not: block in `committed` (it runs on a store writer task), or
//! publish a message that was not committed (only the store hands them in).

use crate::{BUS_PUBLISH_DEADLINE, metrics};
use herald_bus::Bus;
use herald_protocol::bus::Envelope;
use herald_store::{CommitSink, Committed};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Committed batches waiting for the publisher. At ~20,000 messages/s in
/// batches of tens, 3 s (the deadline) of a stalled bus is about a
/// thousand; past this bound a batch is answered unpublished (counted as
/// failed: catch-up delivers it) instead of queueing without bound.
const QUEUE: usize = 4096;

/// Most queued batches taken at once.
const TAKE: usize = 64;

/// Most envelopes in one bus call, unless one batch alone has more (a
/// batch is never split: up to 256 messages, the store's batch bound, of
/// up to 100 channels). Keeps one pipeline well inside Redis's and the
/// response timeout's comfort: ~1 MiB of 200-byte messages.
const ROUND_ENVELOPES: usize = 4096;

/// The commit sink that feeds the publisher task (see the module doc).
pub(crate) struct Publisher {
    queue: mpsc::Sender<Handed>,
}

/// One committed batch, in hand-off order.
struct Handed {
    batch: Vec<Committed>,
    /// When the store handed it over (the deadline counts from here).
    at: Instant,
}

impl Handed {
    /// Envelopes (one per channel of each message).
    fn envelopes(&self) -> usize {
        self.batch.iter().map(|c| c.appended().seqs.len()).sum()
    }
}

impl Publisher {
    /// Starts the publisher task on the current runtime; it ends when the
    /// returned sink (held by the store) drops.
    pub(crate) fn spawn(bus: Arc<dyn Bus>) -> Arc<Publisher> {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(bus, rx));
        Arc::new(Publisher { queue })
    }
}

impl CommitSink for Publisher {
    fn committed(&self, batch: Vec<Committed>) {
        let duration = metrics::publish_duration();
        for c in &batch {
            duration.record(c.submitted().elapsed().as_secs_f64());
        }
        let handed = Handed {
            batch,
            at: Instant::now(),
        };
        let (handed, why) = match self.queue.try_send(handed) {
            Ok(()) => return,
            Err(TrySendError::Full(h)) => (h, "full"),
            Err(TrySendError::Closed(h)) => (h, "closed"),
        };
        let n = handed.envelopes();
        metrics::bus_publish_failures().increment(n as u64);
        tracing::warn!(
            messages = n,
            queue = why,
            "bus publish skipped after commit: the publisher's queue refused the batch"
        );
        // Dropping `handed` answers its publishers: committed, and
        // delivered by the gateways' catch-up.
    }
}

/// Publishes what is queued, oldest first: consecutive batches up to
/// [`ROUND_ENVELOPES`] per call, one call at a time.
async fn run(bus: Arc<dyn Bus>, mut queue: mpsc::Receiver<Handed>) {
    let mut taken = Vec::with_capacity(TAKE);
    while queue.recv_many(&mut taken, TAKE).await > 0 {
        let mut queued = taken.drain(..).peekable();
        while queued.peek().is_some() {
            let mut round = Vec::new();
            let mut envelopes = 0;
            while let Some(h) =
                queued.next_if(|h| round.is_empty() || envelopes + h.envelopes() <= ROUND_ENVELOPES)
            {
                envelopes += h.envelopes();
                round.push(h);
            }
            publish_round(bus.as_ref(), &mut round).await;
            // Dropping the round answers its publishers.
        }
    }
}

/// One round: drops (answers) the batches already past their deadline,
/// publishes the others in one [`Bus::publish_batch`] bounded by the
/// oldest one's deadline.
async fn publish_round(bus: &dyn Bus, round: &mut Vec<Handed>) {
    let now = Instant::now();
    // Hand-off order is oldest first.
    let overdue = round
        .iter()
        .take_while(|h| h.at + BUS_PUBLISH_DEADLINE <= now)
        .count();
    if overdue > 0 {
        let n: usize = round.drain(..overdue).map(|h| h.envelopes()).sum();
        metrics::bus_publish_failures().increment(n as u64);
        tracing::warn!(
            messages = n,
            "bus publish deadline passed after commit (queued behind a slow bus)"
        );
    }
    let Some(oldest) = round.first() else {
        return;
    };
    let deadline = oldest.at + BUS_PUBLISH_DEADLINE;
    let envs: Vec<Envelope> = round
        .iter()
        .flat_map(|h| &h.batch)
        .flat_map(|c| {
            let a = c.appended();
            a.seqs.iter().map(move |(ch, seq)| {
                Envelope::message(
                    ch.clone(),
                    *seq,
                    a.id.clone(),
                    a.ts,
                    c.from().map(str::to_owned),
                    c.data(),
                )
            })
        })
        .collect();
    let outcome = tokio::time::timeout_at(deadline.into(), bus.publish_batch(&envs)).await;
    let failed = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "deadline passed".to_owned(),
    };
    metrics::bus_publish_failures().increment(envs.len() as u64);
    let first = envs.first().and_then(|e| e.id.as_deref()).unwrap_or("");
    tracing::warn!(
        error = %failed,
        messages = envs.len(),
        first_msg_id = %first,
        "bus publish failed after commit"
    );
}
