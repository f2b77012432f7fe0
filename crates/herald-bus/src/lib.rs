//! The bus between herald nodes, and presence beside it.
//!
//! # Layout
//! - `lib.rs`: the [`Bus`], [`BusSubscriber`], [`BusHandler`] and [`Presence`]
//!   traits and [`BusError`].
//! - [`local`]: the in-process bus and presence of `herald dev` (one node).
//! - [`redis`]: the Redis bus ([`redis::RedisBus`]: pub/sub on one Redis,
//!   sharded pub/sub on Redis Cluster) and [`redis::RedisPresence`].
//! - [`metrics`]: the counters this crate records.
//! - [`conformance`]: the suite every bus implementation must pass unchanged.
//!
//! This crate cannot reach the store: whatever travels here (signals,
//! presence) stays ephemeral (DESIGN.md guarantee 7). A bus may drop, delay or
//! reorder messages across publishers; gateways repair that by seq.

use async_trait::async_trait;
use herald_protocol::ChannelName;
use herald_protocol::bus::Envelope;
use herald_protocol::server::ClientInfo;
use std::sync::Arc;

pub mod conformance;
pub mod local;
pub mod metrics;
pub mod redis;

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached (retryable).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
}

/// Receives what the bus delivers to one attached node.
///
/// Called from the bus's own task: implementations must not block (no I/O,
/// no await; hand work off).
pub trait BusHandler: Send + Sync + 'static {
    /// An envelope on a channel this node subscribed to.
    fn on_envelope(&self, env: Envelope);
    /// The bus connection was lost and is back: anything published meanwhile
    /// may be lost, so every subscribed channel must catch up from history.
    fn on_reconnect(&self);
}

/// One node's subscription set on the bus.
#[async_trait]
pub trait BusSubscriber: Send + Sync + 'static {
    /// Subscribes to channels; returns once the bus will deliver their
    /// messages published from now on. Subscribing twice is harmless.
    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), BusError>;
    /// Unsubscribes; harmless for channels not subscribed.
    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), BusError>;
}

/// A publish/subscribe bus carrying [`Envelope`]s.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one envelope on its channel (best effort, at most once).
    async fn publish(&self, env: &Envelope) -> Result<(), BusError>;

    /// Publishes several envelopes (best effort, each at most once), in the
    /// order given per channel: a subscriber of a channel receives its
    /// envelopes of the slice in slice order (those that arrive). Ingest
    /// hands it one commit batch, so one call is one write and one round
    /// trip where the bus allows (Redis: one pipeline). An error means some
    /// or all of them may not have been delivered.
    ///
    /// The default publishes them one after the other (right for an
    /// in-process bus; a remote one should override it).
    async fn publish_batch(&self, envs: &[Envelope]) -> Result<(), BusError> {
        let mut failed = None;
        for env in envs {
            if let Err(e) = self.publish(env).await {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
    /// Attaches a node: the handler receives envelopes of the channels the
    /// returned subscriber subscribes to.
    fn attach(&self, handler: Arc<dyn BusHandler>) -> Arc<dyn BusSubscriber>;
    /// Whether the bus answers (for `/readyz`).
    async fn ping(&self) -> Result<(), BusError>;
}

/// Who is subscribed to a channel, across nodes (best effort, never stored).
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records a client on a channel.
    async fn join(&self, channel: &ChannelName, client: &ClientInfo) -> Result<(), BusError>;
    /// Removes a connection from a channel.
    async fn leave(&self, channel: &ChannelName, conn: &str) -> Result<(), BusError>;
    /// The clients on a channel now.
    async fn list(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, BusError>;

    /// Whether entries expire unless refreshed (presence shared between
    /// nodes): the gateway then runs its refresh and expiry sweeps. Default:
    /// no (in-process presence is cleaned up by its own node).
    fn expires(&self) -> bool {
        false
    }

    /// Re-asserts a node's live entries so they do not expire (called every
    /// `[presence] ttl / 3`). Entries no longer present (removed by a
    /// `leave` after the caller's snapshot, or expired meanwhile) are NOT
    /// written back, so a client that just left is never resurrected; they
    /// are returned, and the caller re-joins those it still holds. Default:
    /// nothing to refresh.
    async fn refresh(
        &self,
        _entries: &[(ChannelName, ClientInfo)],
    ) -> Result<Vec<(ChannelName, ClientInfo)>, BusError> {
        Ok(Vec::new())
    }

    /// Removes and returns the entries of `channel` whose expiry passed (a
    /// node that died without cleaning up), so the caller can announce their
    /// `leave`. Default: nothing expires (in-process presence is cleaned up
    /// by its own node).
    async fn expire(&self, _channel: &ChannelName) -> Result<Vec<ClientInfo>, BusError> {
        Ok(Vec::new())
    }
}
