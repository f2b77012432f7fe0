//! One node's attachment to the Redis bus: its subscriber connection, its
//! wanted-channel set, and the two tasks that serve them.
//!
//! Invariants:
//! - ONE subscriber connection per attachment, opened on the first
//!   [`BusSubscriber::subscribe`] and closed when the attachment drops.
//!   It is PINGed every ping interval; `failures_before_rebuild`
//!   consecutive link failures (PINGs or (re)subscribes, each bounded) mean
//!   a half-open or dead link: it is dropped and a new one built (see
//!   [`super::RedisBusConfig`] for the detection bound), since redis-rs
//!   reconnects on I/O errors only and a silent socket raises none.
//! - The wanted set is the source of truth. Redis's view is repaired from it
//!   after every lost or rebuilt connection (`Disconnection` push, a shard
//!   dropping a channel, a connection dropped as dead), never trusted to
//!   come back by itself (CRATES.md: the library's automatic resubscription
//!   is unreliable on a cluster, and a ConnectionManager stops reconnecting
//!   after its retries); each repair ends with `on_reconnect`. Only
//!   envelopes of wanted channels reach the handler.
//! - Pushes carry their connection's generation: a `Disconnection` or
//!   `SUnsubscribe` from a replaced connection triggers nothing (messages it
//!   still delivers pass the wanted-set filter like any other).
//! - The push sender never blocks: pushes go through an unbounded channel to
//!   the push task, which decodes and calls the handler (which itself must
//!   not block, see [`BusHandler`]).
//! - Both tasks hold only a `Weak` and a cancellation token: dropping the
//!   last `Arc` of the attachment stops them and closes the connection.
//!
//! Must not: hold the wanted-set lock across an await; panic on anything
//! Redis sends.

use super::Health;
use super::conn::{Conn, Endpoint, Failure};
use super::watched::{Role, Watched};
use crate::{BusError, BusHandler, BusSubscriber, metrics};
use ::redis::{PushInfo, PushKind, Value};
use async_trait::async_trait;
use herald_protocol::ChannelName;
use herald_protocol::bus::Envelope;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Pushes handled per wake-up of the push task.
const PUSH_BATCH: usize = 256;

/// A push and the generation of the connection it came from.
type Push = (u64, PushInfo);

/// One attachment of [`super::RedisBus`] (see the module docs).
pub struct RedisSubscriber {
    /// Receives the envelopes of wanted channels and the reconnects.
    handler: Arc<dyn BusHandler>,
    /// Where the subscriber connection goes.
    endpoint: Endpoint,
    /// Redis channel of a herald channel = prefix + name.
    prefix: Arc<str>,
    /// The channels this node wants (std Mutex: never held across an await).
    wanted: Mutex<HashSet<ChannelName>>,
    /// The subscriber connection, opened by the first subscribe (retried
    /// by the next one when it fails), dropped when it stops answering and
    /// then rebuilt by the maintenance task.
    conn: Watched,
    /// PING pace and bound.
    health: Health,
    /// Serialises changes of Redis's subscription state (subscribe,
    /// unsubscribe, resubscribe), so Redis applies them in the order the
    /// wanted set did. A tokio Mutex because it is held across the Redis
    /// round trip; callers batch (DESIGN.md: subscribe/unsubscribe batched).
    ops: tokio::sync::Mutex<()>,
    /// Sender half handed (tagged with the generation) to each connection.
    pushes: UnboundedSender<Push>,
    /// The connection was lost (or dropped as dead: then a new one must be
    /// built first): the wanted set must be re-subscribed, then the handler
    /// told (`on_reconnect`).
    resync: AtomicBool,
    /// Set once a resubscribe attempt failed, so an outage warns once.
    resync_failing: AtomicBool,
    /// Wakes the maintenance task when a resync is needed.
    wake: Arc<Notify>,
    /// Stops both tasks when the attachment drops.
    stop: CancellationToken,
}

impl RedisSubscriber {
    /// Creates the attachment and spawns its push and maintenance tasks on
    /// `rt`.
    pub(crate) fn spawn(
        rt: &tokio::runtime::Handle,
        endpoint: Endpoint,
        prefix: Arc<str>,
        health: Health,
        handler: Arc<dyn BusHandler>,
    ) -> Arc<RedisSubscriber> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sub = Arc::new(RedisSubscriber {
            handler,
            endpoint,
            prefix,
            wanted: Mutex::new(HashSet::new()),
            conn: Watched::new(Role::Subscriber, health.max_failures),
            health,
            ops: tokio::sync::Mutex::new(()),
            pushes: tx,
            resync: AtomicBool::new(false),
            resync_failing: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        });
        rt.spawn(push_task(Arc::downgrade(&sub), rx, sub.stop.clone()));
        rt.spawn(maintenance_task(
            Arc::downgrade(&sub),
            sub.wake.clone(),
            sub.stop.clone(),
            health.ping_interval,
        ));
        sub
    }

    fn redis_name(&self, ch: &ChannelName) -> String {
        format!("{}{}", self.prefix, ch.as_str())
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, HashSet<ChannelName>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The subscriber connection and its generation, opened if there is
    /// none (first use, or dropped as dead). Callers hold `ops`, so one
    /// connection is built at a time.
    async fn connection(&self) -> Result<(Conn, u64), BusError> {
        if let Some(current) = self.conn.current() {
            return Ok(current);
        }
        let generation = self.conn.next_generation();
        let tx = self.pushes.clone();
        let conn =
            Conn::connect_subscriber(&self.endpoint, move |p: PushInfo| tx.send((generation, p)))
                .await?;
        self.conn.install(generation, conn.clone());
        Ok((conn, generation))
    }

    /// Records a request's outcome on connection `generation`; when it
    /// condemns the connection, a rebuild and resync is due.
    fn observe<T>(&self, generation: u64, outcome: &Result<T, Failure>) {
        if self.conn.observe(generation, outcome) {
            self.request_resync();
        }
    }

    fn request_resync(&self) {
        self.resync.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Handles one push from subscriber connection `generation`.
    fn on_push(&self, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => self.on_message(push.data),
            // A replaced connection going away is expected.
            PushKind::Disconnection if self.conn.is_current(generation) => {
                debug!("bus subscriber connection lost");
                self.request_resync();
            }
            // A shard drops sharded subscriptions when its slot moves (or on
            // failover); our own SUNSUBSCRIBE confirmations come here too,
            // but those channels already left the wanted set.
            PushKind::SUnsubscribe if self.conn.is_current(generation) => {
                if let Some(ch) = push.data.first().and_then(|v| self.channel_of(v))
                    && self.wanted().contains(&ch)
                {
                    debug!(channel = %ch.as_str(), "shard dropped a wanted channel");
                    self.request_resync();
                }
            }
            _ => {}
        }
    }

    /// The herald channel of a Redis channel name, if it is one of ours.
    fn channel_of(&self, v: &Value) -> Option<ChannelName> {
        let Value::BulkString(b) = v else { return None };
        let name = std::str::from_utf8(b).ok()?.strip_prefix(&*self.prefix)?;
        ChannelName::new(name).ok()
    }

    /// `[redis channel, payload]`: decode, check, hand to the handler.
    fn on_message(&self, data: Vec<Value>) {
        let mut it = data.into_iter();
        let (Some(Value::BulkString(redis_ch)), Some(Value::BulkString(payload))) =
            (it.next(), it.next())
        else {
            metrics::malformed_payloads().increment(1);
            warn!("dropped a bus push without channel and payload");
            return;
        };
        let env = match Envelope::decode(&payload) {
            Ok(env) => env,
            Err(e) => {
                metrics::malformed_payloads().increment(1);
                warn!(error = %e, bytes = payload.len(), "dropped a malformed bus payload");
                return;
            }
        };
        // The envelope names its channel; it must be the Redis channel it
        // came on, or a bad publisher could reach another channel's
        // subscribers (DESIGN.md guarantee 5).
        let matches = redis_ch.len() == self.prefix.len() + env.ch.as_str().len()
            && redis_ch.starts_with(self.prefix.as_bytes())
            && redis_ch.ends_with(env.ch.as_str().as_bytes());
        if !matches {
            metrics::malformed_payloads().increment(1);
            warn!(channel = %env.ch.as_str(), "dropped a bus envelope published on another channel");
            return;
        }
        // Redis may still deliver a channel just unsubscribed (in flight, or
        // a stray subscription after a timeout): the wanted set decides.
        if self.wanted().contains(&env.ch) {
            self.handler.on_envelope(env);
        }
    }

    /// Runs on every tick and wake-up of the maintenance task: re-subscribes
    /// after a lost connection, on a new one if it was dropped as dead (then
    /// tells the handler), otherwise PINGs: failed PINGs condemn a silent
    /// connection, and a PING makes a ConnectionManager that gave up
    /// reconnect to a restarted Redis.
    async fn maintain(&self) {
        let resync = self.resync.swap(false, Ordering::AcqRel);
        match self.conn.current() {
            // Never subscribed (or the first connect failed: the next
            // subscribe retries): no connection to keep alive.
            None if !resync => {}
            Some((conn, generation)) if !resync => {
                let outcome = conn.ping(self.health.ping_timeout).await;
                if let Err(e) = &outcome {
                    debug!(error = %e, "bus subscriber ping failed");
                }
                self.observe(generation, &outcome);
            }
            _ => self.resync().await,
        }
    }

    /// Re-subscribes the wanted set (on a new connection if needed) and
    /// tells the handler; on failure, retries on the next tick.
    async fn resync(&self) {
        match self.resubscribe_all().await {
            Ok(n) => {
                self.resync_failing.store(false, Ordering::Relaxed);
                metrics::resubscribes().increment(1);
                info!(channels = n, "bus re-subscribed after a lost connection");
                // DESIGN.md guarantee 3: what was published meanwhile
                // may be lost; the gateway catches up from history.
                self.handler.on_reconnect();
            }
            Err(e) => {
                self.resync.store(true, Ordering::Release);
                if self.resync_failing.swap(true, Ordering::Relaxed) {
                    debug!(error = %e, "bus re-subscribe failed again; retrying");
                } else {
                    warn!(error = %e, "bus re-subscribe failed; retrying every ping interval");
                }
            }
        }
    }

    /// Subscribes the whole wanted set again (duplicates are harmless), on
    /// a new connection if the last one was dropped.
    async fn resubscribe_all(&self) -> Result<usize, BusError> {
        let _ops = self.ops.lock().await;
        let (conn, generation) = self.connection().await?;
        let names: Vec<String> = self.wanted().iter().map(|c| self.redis_name(c)).collect();
        let outcome = conn.subscribe(&names).await;
        self.observe(generation, &outcome);
        outcome?;
        Ok(names.len())
    }
}

impl Drop for RedisSubscriber {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl BusSubscriber for RedisSubscriber {
    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), BusError> {
        if channels.is_empty() {
            return Ok(());
        }
        let _ops = self.ops.lock().await;
        let (conn, generation) = self.connection().await?;
        let mut seen = HashSet::with_capacity(channels.len());
        let mut added = Vec::new();
        let mut names = Vec::with_capacity(channels.len());
        {
            let mut wanted = self.wanted();
            for ch in channels {
                if seen.insert(ch) {
                    names.push(self.redis_name(ch));
                    if wanted.insert(ch.clone()) {
                        added.push(ch.clone());
                    }
                }
            }
        }
        let outcome = conn.subscribe(&names).await;
        self.observe(generation, &outcome);
        if let Err(e) = outcome {
            // The caller gets an error and does not hold these channels: do
            // not resubscribe them later. Stray ones Redis did take are
            // filtered out and vanish with the next connection.
            let mut wanted = self.wanted();
            for ch in &added {
                wanted.remove(ch);
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), BusError> {
        if channels.is_empty() {
            return Ok(());
        }
        let _ops = self.ops.lock().await;
        let names: Vec<String> = {
            let mut wanted = self.wanted();
            let set: HashSet<&ChannelName> = channels.iter().collect();
            for ch in &set {
                wanted.remove(*ch);
            }
            set.into_iter().map(|c| self.redis_name(c)).collect()
        };
        // Delivery stops now (filtered by the wanted set) whatever Redis
        // answers; on error the stale Redis subscription lasts at most until
        // the connection is replaced.
        match self.conn.current() {
            Some((conn, generation)) => {
                let outcome = conn.unsubscribe(&names).await;
                self.observe(generation, &outcome);
                outcome.map_err(BusError::from)
            }
            None => Ok(()),
        }
    }
}

/// Drains the pushes of the subscriber connection into the attachment.
async fn push_task(
    sub: Weak<RedisSubscriber>,
    mut rx: UnboundedReceiver<Push>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUSH_BATCH);
    loop {
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, PUSH_BATCH) => n,
        };
        let Some(s) = sub.upgrade() else { return };
        if n == 0 {
            // Stream end: the connection is gone for good (only when the
            // attachment drops, as it holds a sender). Resync for safety.
            s.request_resync();
            return;
        }
        for (generation, push) in batch.drain(..) {
            s.on_push(generation, push);
        }
    }
}

/// Re-subscribes after lost connections and PINGs every `every`.
async fn maintenance_task(
    sub: Weak<RedisSubscriber>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            _ = tick.tick() => {}
        }
        // Holding the Arc for one round is fine: every request in it is
        // bounded by the response timeout.
        let Some(s) = sub.upgrade() else { return };
        s.maintain().await;
    }
}
