//! The local subscription table: channel -> local subscribers, sharded.
//!
//! Invariants:
//! - ONE bus subscription per channel per node: the first local subscriber
//!   subscribes the bus, the last one leaves it; (un)subscribes go through a
//!   single ordered task (`BusSync`) that re-checks the table, so churn
//!   never leaves a wanted channel unsubscribed.
//! - Per channel, messages are handed out in seq order, each once
//!   (DESIGN.md guarantee 2): a later seq waits while an earlier one is
//!   missing, and the gap is filled from history after `gap_timeout`.
//! - Each message is encoded once per encoding; every subscriber's queue gets
//!   the same `Bytes` (DESIGN.md performance model). Fan-out hands them to
//!   [`Outbox::deliver`], which writes an idle connection's socket at once
//!   (one non-blocking `write(2)`, no task wake-up) and queues otherwise;
//!   when direct sends would take most of a thread, fan-out queues
//!   every frame for the connections' writers instead (crate::gate).
//! - No await while a shard lock is held; locks are std mutexes.

use crate::ingest::Ingest;
use crate::metrics as m;
use crate::outbox::{Delivered, Outbox};
use crate::ws;
use bytes::Bytes;
use herald_bus::{BusHandler, BusSubscriber};
use herald_protocol::bus::{Envelope, Kind};
use herald_protocol::server::{self, ClientInfo, MessageKind};
use herald_protocol::{ChannelName, Encoding, JsonData};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const SHARDS: usize = 64;

/// History reads one fill tries before it gives up until the next
/// catch-up round (with [`FILL_BACKOFF`] doubling up to
/// [`FILL_BACKOFF_MAX`] between them: about 1.5 s in all).
const FILL_ATTEMPTS: u32 = 4;
/// First pause after a failed history read.
const FILL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two history reads of one fill.
const FILL_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Channels filled at once by a catch-up round.
const CATCHUP_CONCURRENCY: usize = 64;

/// What the hub knows of a connection: enough to hand it frames.
/// `repr(C)` with the outbox first: fan-out reads nothing else of it per
/// delivery (the encoding is copied into the channel's [`Sub`]), so the
/// lock and direct-write state sit at the start of the allocation.
#[repr(C)]
pub struct ConnHandle {
    /// Its outbound queue.
    pub outbox: Outbox,
    /// Process-unique number (table key).
    pub num: u64,
    /// The connection id shown to clients (`c_...`).
    pub id: Arc<str>,
    /// The connection's encoding.
    pub enc: Encoding,
    /// Who it is in presence; set once the token is verified.
    pub client: OnceLock<ClientInfo>,
}

/// A message on its way to subscribers, encoded lazily once per encoding.
struct Msg {
    seq: u64,
    ts: i64,
    frame: server::Message,
    encoded: [OnceLock<Bytes>; 2],
}

impl Msg {
    fn from_envelope(env: Envelope) -> Option<Self> {
        let seq = env.seq?;
        let ts = env.ts?;
        let data = JsonData::from_json_text(env.data).ok()?;
        Some(Self {
            seq,
            ts,
            frame: server::Message {
                kind: Some(MessageKind::Message),
                channel: env.ch,
                seq,
                id: env.id?,
                ts,
                from: env.from,
                data,
            },
            encoded: [OnceLock::new(), OnceLock::new()],
        })
    }

    fn from_history(mut frame: server::Message) -> Self {
        frame.kind = Some(MessageKind::Message);
        Self {
            seq: frame.seq,
            ts: frame.ts,
            frame,
            encoded: [OnceLock::new(), OnceLock::new()],
        }
    }

    fn bytes(&self, enc: Encoding) -> &Bytes {
        self.encoded[enc.index()].get_or_init(|| ws::encode_frame(enc, &self.frame))
    }
}

/// An ephemeral frame (signal or presence event), encoded lazily.
struct Ephemeral {
    frame: EphemeralFrame,
    /// Connection that must not receive it (the sender, or the client the
    /// presence event is about).
    skip_conn: Option<String>,
    /// Only subscribers with a presence grant receive it.
    presence_only: bool,
    encoded: [OnceLock<Bytes>; 2],
}

enum EphemeralFrame {
    Signal {
        channel: ChannelName,
        from: Option<String>,
        data: JsonData,
    },
    Presence {
        channel: ChannelName,
        event: String,
        client: ClientInfo,
    },
}

impl Ephemeral {
    fn bytes(&self, enc: Encoding) -> &Bytes {
        self.encoded[enc.index()].get_or_init(|| match &self.frame {
            EphemeralFrame::Signal {
                channel,
                from,
                data,
            } => ws::encode_frame(
                enc,
                &server::Signal {
                    kind: "signal",
                    channel,
                    from: from.as_deref(),
                    data,
                },
            ),
            EphemeralFrame::Presence {
                channel,
                event,
                client,
            } => ws::encode_frame(
                enc,
                &server::PresenceEvent {
                    kind: "presence",
                    channel,
                    event,
                    client,
                },
            ),
        })
    }
}

/// Publishes a presence `join` or `leave` event on the bus.
pub async fn publish_presence(
    bus: &dyn herald_bus::Bus,
    ch: &ChannelName,
    event: &str,
    client: ClientInfo,
) {
    let payload = PresencePayload {
        event: event.into(),
        client,
    };
    let data = serde_json::to_vec(&payload).expect("presence payload serializes");
    let env = Envelope {
        v: herald_protocol::bus::ENVELOPE_VERSION,
        k: Kind::Presence,
        ch: ch.clone(),
        seq: None,
        id: None,
        ts: None,
        from: None,
        data: Bytes::from(data),
    };
    if let Err(e) = bus.publish(&env).await {
        tracing::warn!(channel = %ch, error = %e, "presence event publish failed");
    }
}

/// Presence event payload inside a bus envelope (`k: "p"`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PresencePayload {
    /// `join` or `leave`.
    pub event: String,
    /// Who.
    pub client: ClientInfo,
}

enum SubState {
    /// Delivering live messages with seq > `after`.
    Live { after: u64 },
    /// Subscribe in progress: live frames wait here until the reply and
    /// replay are out (PROTOCOL.md section 5 ordering).
    Buffering {
        buf: Vec<(Option<u64>, Bytes)>,
        bytes: usize,
    },
}

struct Sub {
    conn: Arc<ConnHandle>,
    /// `conn.enc`, here so that the fan-out loop, which walks this
    /// contiguous array, need not read the handle for it.
    enc: Encoding,
    presence: bool,
    state: SubState,
}

struct Channel {
    subs: Vec<Sub>,
    /// Last seq handed to subscribers; `None` until the first subscriber
    /// learned the channel's position.
    last: Option<u64>,
    /// Out-of-order messages waiting for an earlier seq.
    pending: BTreeMap<u64, Arc<Msg>>,
    fill_scheduled: bool,
    /// Resolved once the bus delivers this channel; `None` afterwards (an
    /// idle node of one-member channels should not keep a cell per channel).
    bus_ready: Option<Arc<tokio::sync::OnceCell<()>>>,
}

impl Channel {
    fn new() -> Self {
        Self {
            subs: Vec::new(),
            last: None,
            pending: BTreeMap::new(),
            fill_scheduled: false,
            bus_ready: Some(Arc::new(tokio::sync::OnceCell::new())),
        }
    }
}

/// Why a subscriber could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    /// The channel's per-node cap is reached.
    Cap,
}

/// Outcome of trying to go live after the reply and replay.
pub enum GoLive {
    /// Live now.
    Done,
    /// Messages `from..=to` went past this node before the subscriber could
    /// see them: send them from history, then try again from `to`.
    Missing {
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// The subscriber is gone (connection closing).
    Gone,
}

enum BusCmd {
    Subscribe(
        ChannelName,
        oneshot::Sender<Result<(), herald_bus::BusError>>,
    ),
    Unsubscribe(ChannelName),
}

/// The sharded subscription table.
pub struct Hub {
    shards: Box<[Mutex<HashMap<ChannelName, Channel>>]>,
    hasher: RandomState,
    ingest: Arc<dyn Ingest>,
    bus_cmds: mpsc::UnboundedSender<BusCmd>,
    gap_timeout: Duration,
    max_buffer_bytes: usize,
    /// Frames fan-out wrote to sockets itself ([`Outbox::deliver`]), counted
    /// like the writers' (once per message, not per subscriber).
    sent: m::Sent,
    /// Direct writes or queued ones (crate::gate).
    gate: crate::gate::Gate,
    me: Weak<Hub>,
}

impl Hub {
    /// Builds the hub and starts its bus-sync task. `attach` connects the
    /// hub, as a [`BusHandler`], to the bus.
    pub fn new(
        ingest: Arc<dyn Ingest>,
        attach: impl FnOnce(Arc<dyn BusHandler>) -> Arc<dyn BusSubscriber>,
        gap_timeout: Duration,
        max_buffer_bytes: usize,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new_cyclic(|me| Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            ingest,
            bus_cmds: tx,
            gap_timeout,
            max_buffer_bytes,
            sent: m::Sent::default(),
            gate: crate::gate::Gate::new(),
            me: me.clone(),
        });
        let handler: Arc<dyn BusHandler> = Arc::new(HubHandler(Arc::downgrade(&hub)));
        let bus_sub = attach(handler);
        tokio::spawn(bus_sync(Arc::downgrade(&hub), bus_sub, rx));
        hub
    }

    fn shard(&self, ch: &str) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Channel>> {
        let i = (self.hasher.hash_one(ch) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the channel has local subscribers.
    pub fn has_channel(&self, ch: &ChannelName) -> bool {
        self.shard(ch.as_str()).contains_key(ch)
    }

    /// Adds a subscriber in the buffering state. The caller then awaits
    /// [`Hub::bus_ready`], reads the channel's position (and replays), and
    /// calls [`Hub::go_live`].
    pub fn add(
        &self,
        ch: &ChannelName,
        conn: &Arc<ConnHandle>,
        presence: bool,
        cap: Option<usize>,
    ) -> Result<(), AddError> {
        let mut shard = self.shard(ch.as_str());
        let new_channel = !shard.contains_key(ch);
        let chan = shard.entry(ch.clone()).or_insert_with(Channel::new);
        if cap.is_some_and(|c| chan.subs.len() >= c) {
            if new_channel {
                shard.remove(ch);
            }
            return Err(AddError::Cap);
        }
        if chan.subs.capacity() == 0 {
            // A channel of one (a user's own channel, the common case) holds
            // one slot, not the four a first push reserves.
            chan.subs.reserve_exact(1);
        }
        chan.subs.push(Sub {
            conn: conn.clone(),
            enc: conn.enc,
            presence,
            state: SubState::Buffering {
                buf: Vec::new(),
                bytes: 0,
            },
        });
        drop(shard);
        m::subscriptions().increment(1.0);
        if new_channel {
            m::channels().increment(1.0);
        }
        Ok(())
    }

    /// Waits until the bus delivers `ch` (the first subscriber on this node
    /// subscribes it; the others wait for the same subscription).
    pub async fn bus_ready(&self, ch: &ChannelName) -> Result<(), herald_bus::BusError> {
        let cell = match self.shard(ch.as_str()).get(ch) {
            Some(Channel {
                bus_ready: Some(cell),
                ..
            }) => cell.clone(),
            Some(_) => return Ok(()),
            None => return Err(herald_bus::BusError::Closed),
        };
        cell.get_or_try_init(|| async {
            let (tx, rx) = oneshot::channel();
            self.bus_cmds
                .send(BusCmd::Subscribe(ch.clone(), tx))
                .map_err(|_| herald_bus::BusError::Closed)?;
            rx.await.map_err(|_| herald_bus::BusError::Closed)?
        })
        .await?;
        // Ready for good (a reconnect re-subscribes the whole set): drop
        // the cell, unless the channel was emptied and made again meanwhile.
        if let Some(c) = self.shard(ch.as_str()).get_mut(ch)
            && c.bus_ready.as_ref().is_some_and(|x| Arc::ptr_eq(x, &cell))
        {
            c.bus_ready = None;
        }
        Ok(())
    }

    /// Moves a buffering subscriber to live delivery of seq > `after` (the
    /// seq its reply announced, or the last one it was sent from history).
    pub fn go_live(&self, ch: &ChannelName, conn: u64, after: u64) -> GoLive {
        let mut shard = self.shard(ch.as_str());
        let Some(chan) = shard.get_mut(ch) else {
            return GoLive::Gone;
        };
        if chan.last.is_none() {
            // First position known on this node: everything up to `after`
            // is this subscriber's history; later seqs flow from here.
            chan.last = Some(after);
            let stale: Vec<u64> = chan.pending.range(..=after).map(|(s, _)| *s).collect();
            for s in stale {
                chan.pending.remove(&s);
            }
            self.drain_pending(ch, chan);
        }
        let last = chan.last.unwrap_or(after);
        let Some(sub) = chan.subs.iter_mut().find(|s| s.conn.num == conn) else {
            return GoLive::Gone;
        };
        let SubState::Buffering { buf, .. } = &mut sub.state else {
            return GoLive::Done;
        };
        // Messages after `after` that this node handed out before the
        // subscriber was buffering must come from history first.
        let first_buffered = buf
            .iter()
            .filter_map(|(s, _)| *s)
            .find(|s| *s > after)
            .unwrap_or(last + 1);
        if after < last && first_buffered > after + 1 {
            return GoLive::Missing {
                from: after + 1,
                to: first_buffered - 1,
            };
        }
        let buf = std::mem::take(buf);
        sub.state = SubState::Live { after };
        for (seq, bytes) in buf {
            if seq.is_none_or(|s| s > after) && !sub.conn.outbox.push(bytes) {
                break;
            }
        }
        GoLive::Done
    }

    /// Removes a subscriber. Returns true when it was there.
    pub fn remove(&self, ch: &ChannelName, conn: u64) -> bool {
        let mut shard = self.shard(ch.as_str());
        let Some(chan) = shard.get_mut(ch) else {
            return false;
        };
        let before = chan.subs.len();
        chan.subs.retain(|s| s.conn.num != conn);
        let removed = chan.subs.len() != before;
        let empty = chan.subs.is_empty();
        if empty {
            shard.remove(ch);
        }
        drop(shard);
        if removed {
            m::subscriptions().decrement(1.0);
        }
        if empty {
            m::channels().decrement(1.0);
            // Checked again by the bus-sync task, which skips it if the
            // channel came back meanwhile.
            let _ = self.bus_cmds.send(BusCmd::Unsubscribe(ch.clone()));
        }
        removed
    }

    /// Channels with subscribers and a known position, for catch-up.
    pub fn positions_known(&self) -> Vec<(ChannelName, u64)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(s.iter().filter_map(|(k, c)| c.last.map(|l| (k.clone(), l))));
        }
        out
    }

    /// Hands a persisted message to subscribers in seq order.
    fn on_message(&self, msg: Arc<Msg>) {
        let ch = msg.frame.channel.clone();
        let mut shard = self.shard(ch.as_str());
        let Some(chan) = shard.get_mut(&ch) else {
            return;
        };
        let Some(last) = chan.last else {
            // Position not known yet: hold it for go_live.
            chan.pending.insert(msg.seq, msg);
            return;
        };
        if msg.seq <= last {
            m::duplicates_dropped().increment(1);
            return;
        }
        chan.pending.insert(msg.seq, msg);
        self.drain_pending(&ch, chan);
    }

    /// Delivers every contiguous pending message; schedules a gap fill if
    /// some remain behind a missing seq.
    fn drain_pending(&self, ch: &ChannelName, chan: &mut Channel) {
        let Some(mut last) = chan.last else { return };
        while let Some(entry) = chan.pending.first_entry() {
            if *entry.key() <= last {
                entry.remove();
                continue;
            }
            if *entry.key() != last + 1 {
                break;
            }
            let msg = entry.remove();
            last = msg.seq;
            deliver_message(chan, &msg, self.max_buffer_bytes, &self.sent, &self.gate);
        }
        chan.last = Some(last);
        if !chan.pending.is_empty() && !chan.fill_scheduled {
            chan.fill_scheduled = true;
            m::gaps_detected().increment(1);
            if let Some(hub) = self.me.upgrade() {
                let ch = ch.clone();
                let delay = self.gap_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if !hub.fill(&ch, None).await {
                        // Given up for now; the next catch-up round (which
                        // sees the channel behind) tries again.
                        tracing::warn!(channel = %ch, "gap fill gave up after its retries");
                    }
                });
            }
        }
    }

    /// Fetches missing messages of `ch` from history and hands them out:
    /// up to `target` when given, else up to the highest pending seq.
    /// Retries failed history reads with backoff, [`FILL_ATTEMPTS`] times
    /// in all, so that one channel whose history cannot be read never holds
    /// up the others; true when the channel is whole (or gone), false when
    /// it gave up (the next catch-up round tries again).
    pub async fn fill(&self, ch: &ChannelName, target: Option<u64>) -> bool {
        let mut backoff = FILL_BACKOFF;
        let mut failures = 0;
        loop {
            let after = {
                let mut shard = self.shard(ch.as_str());
                let Some(chan) = shard.get_mut(ch) else {
                    return true;
                };
                let Some(last) = chan.last else {
                    chan.fill_scheduled = false;
                    return true;
                };
                let want = target
                    .unwrap_or(0)
                    .max(chan.pending.keys().next_back().copied().unwrap_or(0));
                if want <= last {
                    chan.fill_scheduled = false;
                    return true;
                }
                last
            };
            match self.ingest.history(ch, after, 1000).await {
                Ok(page) => {
                    m::gap_fills().increment(1);
                    for item in page.messages {
                        if item.channel != *ch {
                            continue;
                        }
                        self.on_message(Arc::new(Msg::from_history(item)));
                    }
                    let mut shard = self.shard(ch.as_str());
                    let Some(chan) = shard.get_mut(ch) else {
                        return true;
                    };
                    if chan.last == Some(after) {
                        // No progress: seq `after + 1` is not in history
                        // (evicted by retention, or never committed), and
                        // nothing can fill it. Skip to the earliest message
                        // that exists (held in `pending` now) so delivery
                        // goes on; with none, stop.
                        match chan.pending.first_key_value() {
                            Some((&first, _)) => {
                                tracing::warn!(channel = %ch, from = after + 1, to = first - 1, "gap not in history; skipping");
                                m::gaps_skipped().increment(1);
                                // Live subscribers missed messages nothing
                                // can give them any more: tell them, never
                                // silently (DESIGN.md guarantee 3). They
                                // reconnect with `since` and get
                                // `recovered:false`.
                                for sub in &chan.subs {
                                    if let SubState::Live { after: a } = sub.state
                                        && a < first - 1
                                    {
                                        sub.conn
                                            .outbox
                                            .close(herald_protocol::CloseCode::ServiceRestart);
                                    }
                                }
                                chan.last = Some(first - 1);
                                self.drain_pending(ch, chan);
                            }
                            None => {
                                chan.fill_scheduled = false;
                                return true;
                            }
                        }
                    }
                    backoff = FILL_BACKOFF;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= FILL_ATTEMPTS {
                        tracing::warn!(channel = %ch, error = %e, attempts = failures, "history read failed; channel left for the next catch-up");
                        if let Some(chan) = self.shard(ch.as_str()).get_mut(ch) {
                            chan.fill_scheduled = false;
                        }
                        return false;
                    }
                    tracing::debug!(channel = %ch, error = %e, "gap fill from history failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(FILL_BACKOFF_MAX);
                }
            }
        }
    }

    /// Checks every subscribed channel's latest seq against ingest and fills
    /// what the bus lost (after a reconnect, and every catch-up interval).
    ///
    /// Channels behind are filled concurrently ([`CATCHUP_CONCURRENCY`] at
    /// a time), each with bounded retries: a channel whose history keeps
    /// failing is counted in `herald_catchup_stuck_channels` and tried
    /// again next round, while every other channel is repaired.
    pub async fn catch_up(&self) {
        use futures_util::StreamExt;
        let known = self.positions_known();
        let mut behind: Vec<(ChannelName, u64)> = Vec::new();
        for batch in known.chunks(herald_protocol::api::MAX_POSITIONS) {
            let names: Vec<ChannelName> = batch.iter().map(|(c, _)| c.clone()).collect();
            match self.ingest.positions(&names).await {
                Ok(pos) => {
                    for ((ch, last), p) in batch.iter().zip(pos) {
                        if p > *last {
                            m::catchups().increment(1);
                            behind.push((ch.clone(), p));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "catch-up positions failed"),
            }
        }
        let stuck = futures_util::stream::iter(behind)
            .map(|(ch, p)| async move { self.fill(&ch, Some(p)).await })
            .buffer_unordered(CATCHUP_CONCURRENCY)
            .filter(|ok| std::future::ready(!ok))
            .count()
            .await;
        m::stuck_channels().set(stuck as f64);
    }

    fn on_ephemeral(&self, ch: &ChannelName, e: Ephemeral) {
        let shard = self.shard(ch.as_str());
        let Some(chan) = shard.get(ch) else { return };
        let mut out = FanOut::start(&self.gate);
        // Ephemeral frames go to live subscribers only. Buffering ones are
        // mid-subscribe; they did not hold the channel when it was sent.
        for (i, sub) in chan.subs.iter().enumerate() {
            out.read_ahead(&chan.subs, i);
            if e.presence_only && !sub.presence {
                continue;
            }
            if e.skip_conn.as_deref() == Some(&*sub.conn.id) {
                continue;
            }
            if let SubState::Live { .. } = sub.state {
                out.hand(&sub.conn.outbox, e.bytes(sub.enc));
            }
        }
        out.finish(&self.sent);
    }

    /// Number of shards, for walking the hub one shard at a time
    /// ([`Hub::presence_entries`]).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The (channel, client) pairs of shard `shard`, for the presence
    /// refresh. Every subscriber is in its channel's presence (PROTOCOL.md
    /// section 5: the list is who is subscribed now; the grant decides who
    /// may read it), so every one is refreshed: one left out expires after
    /// the ttl and the others see it `leave` while it is still here. One
    /// shard at a time: a node's
    /// whole set at once (19,000 copies of client info every ttl/3 on a
    /// node of one-member channels) would raise its resident memory for
    /// good.
    pub fn presence_entries(&self, shard: usize) -> Vec<(ChannelName, ClientInfo)> {
        let Some(s) = self.shards.get(shard) else {
            return Vec::new();
        };
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (ch, chan) in s.iter() {
            for sub in &chan.subs {
                if let Some(c) = sub.conn.client.get() {
                    out.push((ch.clone(), c.clone()));
                }
            }
        }
        out
    }

    /// Whether connection `conn` (its id) is subscribed to `ch` here.
    pub fn holds(&self, ch: &ChannelName, conn: &str) -> bool {
        self.shard(ch.as_str())
            .get(ch)
            .is_some_and(|c| c.subs.iter().any(|s| &*s.conn.id == conn))
    }

    /// Channels with local subscribers.
    pub fn channel_names(&self) -> Vec<ChannelName> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            out.extend(s.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned());
        }
        out
    }

    /// Number of channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Totals of the table and its `top` channels by local subscribers
    /// (most first, then by name), for the admin page. One shard lock at a
    /// time, each held only to walk that shard; at most `top` names are
    /// kept (a bounded heap), so the answer and the copying stay bounded
    /// whatever the number of channels.
    pub fn channel_stats(&self, top: usize) -> ChannelStats {
        let mut stats = ChannelStats::default();
        let mut heap = TopN::new(top);
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            stats.channels += s.len();
            for (name, chan) in s.iter() {
                stats.subscriptions += chan.subs.len();
                heap.offer(chan.subs.len(), name.as_str(), || name.clone());
            }
        }
        stats.top = heap.into_sorted();
        stats
    }
}

/// The local subscription table seen from the admin page
/// ([`Hub::channel_stats`]).
#[derive(Debug, Clone, Default)]
pub struct ChannelStats {
    /// Channels with at least one local subscriber.
    pub channels: usize,
    /// Subscriptions held by local connections.
    pub subscriptions: usize,
    /// The busiest channels and their local subscriber counts, most first
    /// (ties by name).
    pub top: Vec<(ChannelName, usize)>,
}

/// The `n` largest items by count (ties: the smaller name first), without
/// copying the items that do not make it: `make` runs only for an item that
/// enters the heap.
pub(crate) struct TopN<T> {
    n: usize,
    /// Min-heap on (count, name reversed): its top is the item to drop next.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Ranked<T>>>,
}

/// An item ranked by count, then by name (the smaller name ranks higher).
pub(crate) struct Ranked<T> {
    count: usize,
    item: T,
}

impl<T: AsRef<str>> Ranked<T> {
    fn key(&self) -> (usize, std::cmp::Reverse<&str>) {
        (self.count, std::cmp::Reverse(self.item.as_ref()))
    }
}

impl<T: AsRef<str>> PartialEq for Ranked<T> {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl<T: AsRef<str>> Eq for Ranked<T> {}
impl<T: AsRef<str>> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: AsRef<str>> Ord for Ranked<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl<T: AsRef<str>> TopN<T> {
    /// Keeps the `n` best.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            heap: std::collections::BinaryHeap::with_capacity(n.min(1024) + 1),
        }
    }

    /// Offers an item named `name`; `make` builds it (with that name) only
    /// when it ranks among the best.
    pub(crate) fn offer(&mut self, count: usize, name: &str, make: impl FnOnce() -> T) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() >= self.n
            && let Some(std::cmp::Reverse(worst)) = self.heap.peek()
            && (count, std::cmp::Reverse(name)) <= worst.key()
        {
            return;
        }
        self.heap.push(std::cmp::Reverse(Ranked {
            count,
            item: make(),
        }));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    /// The kept items, best first.
    pub(crate) fn into_sorted(self) -> Vec<(T, usize)> {
        // Ascending order of `Reverse` is descending rank: best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|std::cmp::Reverse(r)| (r.item, r.count))
            .collect()
    }
}

/// One fan-out of one frame kind: hands each subscriber its frame by the
/// path the gate chose for the whole fan-out (crate::gate), counts the
/// frames and bytes it wrote to sockets itself once at the end (two counter
/// updates per message rather than two per subscriber), and tells the gate
/// what the fan-out cost.
struct FanOut<'a> {
    gate: &'a crate::gate::Gate,
    direct: bool,
    started: Instant,
    handed: usize,
    frames: u64,
    bytes: u64,
}

impl<'a> FanOut<'a> {
    fn start(gate: &'a crate::gate::Gate) -> Self {
        Self {
            gate,
            direct: gate.direct(),
            started: Instant::now(),
            handed: 0,
            frames: 0,
            bytes: 0,
        }
    }

    /// One frame to one connection: written at once when the fan-out is
    /// direct and the connection idle ([`Outbox::deliver`]), else queued
    /// for its writer.
    fn hand(&mut self, outbox: &Outbox, frame: &Bytes) {
        self.handed += 1;
        let d = if self.direct {
            outbox.deliver(frame)
        } else if outbox.push(frame.clone()) {
            Delivered::Queued
        } else {
            Delivered::Refused
        };
        match d {
            Delivered::Written => {
                self.frames += 1;
                self.bytes += frame.len() as u64;
            }
            // The writer counts the frame (and the rest of its bytes).
            Delivered::Partial(n) => self.bytes += n as u64,
            Delivered::Queued | Delivered::Refused => {}
        }
    }

    /// Before subscriber `i` of a direct fan-out, every [`TOUCH_AHEAD`]
    /// subscribers: reads the next ones' outbox lock lines, then their
    /// socket handles. Each subscriber's first read is otherwise a cache
    /// miss after the kernel's send path has run over the caches; read
    /// together, the misses overlap (a syscall's entry waits for pending
    /// loads, so one at a time they would not). Two passes, because the
    /// second takes each lock (`try_lock`), a locked instruction that would
    /// wait for the misses one by one.
    fn read_ahead(&self, subs: &[Sub], i: usize) {
        if !self.direct || !i.is_multiple_of(TOUCH_AHEAD) {
            return;
        }
        let ahead = &subs[i..(i + TOUCH_AHEAD).min(subs.len())];
        for s in ahead {
            s.conn.outbox.touch();
        }
        for s in ahead {
            s.conn.outbox.touch_socket();
        }
    }

    fn finish(self, sent: &m::Sent) {
        if self.frames > 0 {
            sent.frames.increment(self.frames);
        }
        if self.bytes > 0 {
            sent.bytes.increment(self.bytes);
        }
        self.gate.record(self.handed, self.started, self.direct);
    }
}

/// Subscribers whose outboxes a direct fan-out reads ahead at once.
const TOUCH_AHEAD: usize = 8;

fn deliver_message(
    chan: &mut Channel,
    msg: &Msg,
    max_buffer: usize,
    sent: &m::Sent,
    gate: &crate::gate::Gate,
) {
    let lag = (herald_protocol::now_ms() - msg.ts).max(0);
    m::delivery_lag().record(lag as f64 / 1000.0);
    let mut out = FanOut::start(gate);
    for i in 0..chan.subs.len() {
        out.read_ahead(&chan.subs, i);
        let sub = &mut chan.subs[i];
        match &mut sub.state {
            SubState::Live { after } => {
                if msg.seq > *after {
                    out.hand(&sub.conn.outbox, msg.bytes(sub.enc));
                }
            }
            SubState::Buffering { buf, bytes } => {
                let b = msg.bytes(sub.enc).clone();
                *bytes += b.len();
                if *bytes > max_buffer {
                    sub.conn
                        .outbox
                        .close_now(herald_protocol::CloseCode::SlowConsumer);
                } else {
                    buf.push((Some(msg.seq), b));
                }
            }
        }
    }
    out.finish(sent);
}

struct HubHandler(Weak<Hub>);

impl BusHandler for HubHandler {
    fn on_envelope(&self, env: Envelope) {
        let Some(hub) = self.0.upgrade() else { return };
        match env.k {
            Kind::Message => match Msg::from_envelope(env) {
                Some(msg) => hub.on_message(Arc::new(msg)),
                None => m::bad_envelopes().increment(1),
            },
            Kind::Signal => {
                let Ok(data) = JsonData::from_json_text(env.data) else {
                    m::bad_envelopes().increment(1);
                    return;
                };
                let ch = env.ch.clone();
                hub.on_ephemeral(
                    &ch,
                    Ephemeral {
                        frame: EphemeralFrame::Signal {
                            channel: env.ch,
                            from: env.from,
                            data,
                        },
                        // A signal's envelope carries the sender connection
                        // in `id`, so it is not echoed (docs/protocol-notes.md).
                        skip_conn: env.id,
                        presence_only: false,
                        encoded: [OnceLock::new(), OnceLock::new()],
                    },
                );
            }
            Kind::Presence => {
                let Ok(p) = serde_json::from_slice::<PresencePayload>(&env.data) else {
                    m::bad_envelopes().increment(1);
                    return;
                };
                let ch = env.ch.clone();
                let skip = Some(p.client.conn.clone());
                hub.on_ephemeral(
                    &ch,
                    Ephemeral {
                        frame: EphemeralFrame::Presence {
                            channel: env.ch,
                            event: p.event,
                            client: p.client,
                        },
                        skip_conn: skip,
                        presence_only: true,
                        encoded: [OnceLock::new(), OnceLock::new()],
                    },
                );
            }
        }
    }

    fn on_reconnect(&self) {
        if let Some(hub) = self.0.upgrade() {
            tokio::spawn(async move { hub.catch_up().await });
        }
    }
}

/// Applies (un)subscribe commands to the bus in order, batching what is
/// queued; an unsubscribe is skipped when the channel came back meanwhile.
async fn bus_sync(
    hub: Weak<Hub>,
    bus: Arc<dyn BusSubscriber>,
    mut rx: mpsc::UnboundedReceiver<BusCmd>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(h) = hub.upgrade() else { return };
        let mut subs: Vec<ChannelName> = Vec::new();
        let mut acks = Vec::new();
        let mut unsubs: HashMap<ChannelName, ()> = HashMap::new();
        for cmd in batch.drain(..) {
            match cmd {
                BusCmd::Subscribe(ch, ack) => {
                    unsubs.remove(&ch);
                    subs.push(ch);
                    acks.push(ack);
                }
                BusCmd::Unsubscribe(ch) => {
                    if let Entry::Vacant(v) = unsubs.entry(ch) {
                        v.insert(());
                    }
                }
            }
        }
        let unsubs: Vec<ChannelName> = unsubs
            .into_keys()
            .filter(|c| !h.has_channel(c) && !subs.contains(c))
            .collect();
        drop(h);
        if !unsubs.is_empty()
            && let Err(e) = bus.unsubscribe(&unsubs).await
        {
            tracing::warn!(error = %e, "bus unsubscribe failed");
        }
        if !subs.is_empty() {
            let r = bus.subscribe(&subs).await;
            for ack in acks {
                let _ = ack.send(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(herald_bus::BusError::Unavailable(e.to_string())),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Ordering, gap fill and the buffering handshake, against an in-memory
    //! history (the real store is covered by the store conformance suite and
    //! the end-to-end tests).
    use super::*;
    use crate::ingest::{IngestError, PublishCall};
    use crate::outbox::Take;
    use herald_bus::Bus;
    use herald_bus::local::LocalBus;
    use herald_protocol::api::HistoryPage;
    use herald_protocol::server::PublishResult;

    #[derive(Default)]
    struct MemHistory {
        msgs: Mutex<Vec<server::Message>>,
    }

    #[async_trait::async_trait]
    impl Ingest for MemHistory {
        async fn publish(&self, _: PublishCall) -> Result<PublishResult, IngestError> {
            Err(IngestError::unavailable("not used"))
        }
        async fn events(
            &self,
            _: &[herald_protocol::webhook::GatewayEvent],
        ) -> Result<(), IngestError> {
            Err(IngestError::unavailable("not used"))
        }
        async fn history(
            &self,
            ch: &ChannelName,
            after: u64,
            limit: u32,
        ) -> Result<HistoryPage, IngestError> {
            let m = self.msgs.lock().unwrap();
            let all: Vec<_> = m.iter().filter(|x| x.channel == *ch).cloned().collect();
            let last_seq = all.iter().map(|x| x.seq).max().unwrap_or(0);
            let messages = all
                .into_iter()
                .filter(|x| x.seq > after)
                .take(limit as usize)
                .collect();
            Ok(HistoryPage { messages, last_seq })
        }
        async fn positions(&self, chs: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
            let m = self.msgs.lock().unwrap();
            Ok(chs
                .iter()
                .map(|c| {
                    m.iter()
                        .filter(|x| x.channel == *c)
                        .map(|x| x.seq)
                        .max()
                        .unwrap_or(0)
                })
                .collect())
        }
    }

    fn ch() -> ChannelName {
        ChannelName::new("chat_1").unwrap()
    }

    fn message(seq: u64) -> server::Message {
        server::Message {
            kind: None,
            channel: ch(),
            seq,
            id: format!("m{seq}"),
            ts: 1,
            from: None,
            data: JsonData::from_value(&serde_json::json!({"n": seq})),
        }
    }

    struct Fixture {
        hub: Arc<Hub>,
        bus: LocalBus,
        history: Arc<MemHistory>,
    }

    impl Fixture {
        fn new() -> Self {
            let bus = LocalBus::new();
            let history = Arc::new(MemHistory::default());
            let b = bus.clone();
            let hub = Hub::new(
                history.clone(),
                move |h| b.attach(h),
                Duration::from_millis(200),
                1 << 20,
            );
            Self { hub, bus, history }
        }

        /// Commits seq in history; publishes it on the bus when `bus` is set.
        async fn commit(&self, seq: u64, bus: bool) {
            let m = message(seq);
            self.history.msgs.lock().unwrap().push(m.clone());
            if bus {
                let env = Envelope::message(m.channel, seq, m.id, m.ts, None, &m.data);
                self.bus.publish(&env).await.unwrap();
            }
        }

        async fn subscriber(&self, num: u64) -> Arc<ConnHandle> {
            let conn = Arc::new(ConnHandle {
                num,
                id: Arc::from(format!("c{num}")),
                enc: Encoding::Json,
                outbox: Outbox::new(1 << 20),
                client: OnceLock::new(),
            });
            self.hub.add(&ch(), &conn, false, None).unwrap();
            self.hub.bus_ready(&ch()).await.unwrap();
            conn
        }
    }

    /// Reads the seqs of the message frames queued for a connection, waiting
    /// (in paused time) until `n` have arrived.
    async fn seqs(conn: &ConnHandle, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            let take = tokio::time::timeout(Duration::from_secs(30), conn.outbox.take()).await;
            let Ok(Take::Frames(frames)) = take else {
                break;
            };
            for f in frames {
                // Unmasked server frames: header of 2 bytes below 126.
                let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
                out.push(v["seq"].as_u64().unwrap());
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn reorders_by_seq() {
        let f = Fixture::new();
        let c = f.subscriber(1).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 0), GoLive::Done));
        f.commit(2, false).await;
        f.commit(1, false).await;
        for s in [2, 1, 3] {
            if s == 3 {
                f.commit(3, false).await;
            }
            let env = Envelope::message(ch(), s, format!("m{s}"), 1, None, &message(s).data);
            f.bus.publish(&env).await.unwrap();
        }
        assert_eq!(seqs(&c, 3).await, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn drops_duplicates() {
        let f = Fixture::new();
        let c = f.subscriber(1).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 0), GoLive::Done));
        f.commit(1, true).await;
        let env = Envelope::message(ch(), 1, "m1".into(), 1, None, &message(1).data);
        f.bus.publish(&env).await.unwrap();
        f.commit(2, true).await;
        assert_eq!(seqs(&c, 2).await, vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn fills_a_gap_from_history() {
        let f = Fixture::new();
        let c = f.subscriber(1).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 0), GoLive::Done));
        f.commit(1, true).await;
        f.commit(2, false).await; // lost on the bus
        f.commit(3, true).await;
        assert_eq!(seqs(&c, 3).await, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn gap_beyond_history_closes_live_subscribers_with_1012() {
        let f = Fixture::new();
        let c = f.subscriber(1).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 0), GoLive::Done));
        f.commit(1, true).await;
        assert_eq!(seqs(&c, 1).await, vec![1]);
        // seq 2 was committed, lost on the bus and evicted from history.
        f.commit(3, true).await;
        let take = tokio::time::timeout(Duration::from_secs(30), c.outbox.take()).await;
        assert!(matches!(
            take,
            Ok(Take::Close(herald_protocol::CloseCode::ServiceRestart))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_delivers_a_lost_last_message() {
        let f = Fixture::new();
        let c = f.subscriber(1).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 0), GoLive::Done));
        f.commit(1, true).await;
        f.commit(2, false).await; // lost, and nothing follows
        assert_eq!(seqs(&c, 1).await, vec![1]);
        f.hub.catch_up().await;
        assert_eq!(seqs(&c, 1).await, vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn buffering_subscriber_gets_messages_after_its_seq_once() {
        let f = Fixture::new();
        let a = f.subscriber(1).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 0), GoLive::Done));
        f.commit(1, true).await;
        let b = f.subscriber(2).await;
        // b read position 1; 2 and 3 arrive while it is still replaying.
        f.commit(2, true).await;
        f.commit(3, true).await;
        assert!(matches!(f.hub.go_live(&ch(), 2, 1), GoLive::Done));
        f.commit(4, true).await;
        assert_eq!(seqs(&a, 4).await, vec![1, 2, 3, 4]);
        assert_eq!(seqs(&b, 3).await, vec![2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn late_subscriber_is_told_what_it_missed() {
        let f = Fixture::new();
        let a = f.subscriber(1).await;
        // b registers, then reads position 0 from a slow read...
        let b = f.subscriber(2).await;
        // ...while a goes live at 2 and messages 1..3 pass.
        f.commit(1, false).await;
        f.commit(2, false).await;
        assert!(matches!(f.hub.go_live(&ch(), 1, 2), GoLive::Done));
        f.commit(3, true).await;
        assert_eq!(seqs(&a, 1).await, vec![3]);
        match f.hub.go_live(&ch(), 2, 0) {
            GoLive::Missing { from, to } => assert_eq!((from, to), (1, 2)),
            _ => panic!("expected Missing"),
        }
        assert!(matches!(f.hub.go_live(&ch(), 2, 2), GoLive::Done));
        assert_eq!(seqs(&b, 1).await, vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn cap_refuses_past_the_limit() {
        let f = Fixture::new();
        let conn = |n: u64| {
            Arc::new(ConnHandle {
                num: n,
                id: Arc::from("x"),
                enc: Encoding::Json,
                outbox: Outbox::new(10),
                client: OnceLock::new(),
            })
        };
        assert!(f.hub.add(&ch(), &conn(1), false, Some(1)).is_ok());
        assert_eq!(
            f.hub.add(&ch(), &conn(2), false, Some(1)),
            Err(AddError::Cap)
        );
        assert!(f.hub.remove(&ch(), 1));
        assert!(!f.hub.has_channel(&ch()));
    }

    #[test]
    fn top_n_keeps_the_largest_then_the_smaller_name() {
        let mut t = TopN::new(3);
        for (name, n) in [("e", 1), ("b", 5), ("a", 2), ("d", 5), ("c", 2), ("f", 9)] {
            t.offer(n, name, || name.to_owned());
        }
        let got: Vec<(String, usize)> = t.into_sorted();
        assert_eq!(got, vec![("f".into(), 9), ("b".into(), 5), ("d".into(), 5)]);
        let mut none = TopN::new(0);
        none.offer(1, "x", || -> String {
            unreachable!("nothing is kept with n = 0")
        });
        assert!(none.into_sorted().is_empty());
    }

    #[tokio::test]
    async fn channel_stats_rank_channels_by_subscribers() {
        let f = Fixture::new();
        let conn = |n: u64| {
            Arc::new(ConnHandle {
                num: n,
                id: Arc::from(format!("c{n}")),
                enc: Encoding::Json,
                outbox: Outbox::new(10),
                client: OnceLock::new(),
            })
        };
        let name = |s: &str| ChannelName::new(s).unwrap();
        for (ch, conns) in [("chat_a", 1..=1), ("chat_b", 1..=3), ("chat_c", 1..=2)] {
            for n in conns {
                f.hub.add(&name(ch), &conn(n), false, None).unwrap();
            }
        }
        let s = f.hub.channel_stats(2);
        assert_eq!((s.channels, s.subscriptions), (3, 6));
        assert_eq!(s.top, vec![(name("chat_b"), 3), (name("chat_c"), 2)]);
        assert!(f.hub.channel_stats(0).top.is_empty());
    }

    #[tokio::test]
    async fn presence_entries_hold_every_subscriber() {
        let f = Fixture::new();
        let conn = |n: u64| {
            let c = Arc::new(ConnHandle {
                num: n,
                id: Arc::from(format!("c{n}")),
                enc: Encoding::Json,
                outbox: Outbox::new(10),
                client: OnceLock::new(),
            });
            let _ = c.client.set(ClientInfo {
                sub: format!("u{n}"),
                conn: format!("c{n}"),
                info: None,
            });
            c
        };
        // One subscriber with a presence grant, one without: both are in
        // the channel's presence (join() adds every subscriber), so both
        // must be refreshed, or the second expires while still subscribed.
        f.hub.add(&ch(), &conn(1), true, None).unwrap();
        f.hub.add(&ch(), &conn(2), false, None).unwrap();
        let mut all: Vec<(ChannelName, ClientInfo)> = (0..f.hub.shard_count())
            .flat_map(|i| f.hub.presence_entries(i))
            .collect();
        all.sort_by(|a, b| a.1.conn.cmp(&b.1.conn));
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|(c, _)| *c == ch()));
        assert_eq!(all[0].1.conn, "c1");
        assert_eq!(all[1].1.conn, "c2");
        assert!(f.hub.presence_entries(f.hub.shard_count()).is_empty());
    }
}
