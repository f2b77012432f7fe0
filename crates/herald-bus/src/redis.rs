//! The Redis bus (PROTOCOL.md section 9): envelopes published on the Redis
//! channel `<prefix><channel>`, PUBLISH/SUBSCRIBE on one Redis, sharded
//! SPUBLISH/SSUBSCRIBE on Redis Cluster (each message touches one shard).
//!
//! # Layout
//! - this file: [`RedisBusConfig`] and [`RedisBus`] (publish, attach, ping).
//! - `conn.rs`: single vs cluster endpoints, the bounded connections.
//! - `subscriber.rs`: [`RedisSubscriber`], one node's attachment.
//! - `presence.rs`: [`RedisPresence`], presence with expiring entries.
//!
//! Invariants: ONE shared multiplexed command connection per [`RedisBus`]
//! (publish, ping), ONE subscriber connection per attachment; each
//! attachment's wanted-channel set is the source of truth for what it
//! receives and is re-subscribed after every lost connection, followed by
//! `on_reconnect` so the gateway catches up from history (Redis pub/sub
//! loses what is published while a subscriber is away). Every Redis request
//! is bounded by a timeout.

use crate::{Bus, BusError, BusHandler, BusSubscriber};
use async_trait::async_trait;
use herald_protocol::bus::Envelope;
use std::sync::Arc;
use std::time::Duration;

mod conn;
mod presence;
mod subscriber;

use conn::{Conn, Endpoint};
pub use presence::RedisPresence;
pub use subscriber::RedisSubscriber;

/// Settings of [`RedisBus`].
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port` for one Redis; a comma-separated list of such
    /// URLs are Redis Cluster seeds.
    pub url: String,
    /// Prefix of the Redis channel names (`[bus] prefix`, default `herald:`).
    pub prefix: String,
    /// How often each attachment PINGs its subscriber connection, so a lost
    /// connection is noticed and re-established (default 1 s; also the retry
    /// interval of a failed re-subscribe).
    pub ping_interval: Duration,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald:".into(),
            ping_interval: Duration::from_secs(1),
        }
    }
}

/// The bus over Redis or Redis Cluster. One per process; [`Bus::attach`]
/// it once per node (the gateway's hub).
pub struct RedisBus {
    /// Shared command connection (publish, ping); clones share the socket.
    conn: Conn,
    /// Where subscriber connections go.
    endpoint: Endpoint,
    /// Redis channel of a herald channel = prefix + name.
    prefix: Arc<str>,
    /// See [`RedisBusConfig::ping_interval`].
    ping_interval: Duration,
    /// Runtime the attachments' tasks run on (`attach` is not async).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("cluster", &self.endpoint.is_cluster())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects the shared command connection and checks that Redis answers
    /// (bounded: fails with [`BusError::Unavailable`] when it does not, or
    /// when the URL is invalid). Must run inside a Tokio runtime, which the
    /// attachments' tasks then use.
    pub async fn connect(cfg: RedisBusConfig) -> Result<RedisBus, BusError> {
        let endpoint = Endpoint::parse(&cfg.url)?;
        let conn = Conn::connect(&endpoint).await?;
        conn.ping().await?;
        Ok(RedisBus {
            conn,
            endpoint,
            prefix: Arc::from(cfg.prefix),
            ping_interval: cfg.ping_interval.max(Duration::from_millis(10)),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Whether this bus runs on Redis Cluster (sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    /// A [`RedisPresence`] on this bus's command connection and prefix, with
    /// entries that expire `ttl` after their last join or refresh.
    pub fn presence(&self, ttl: Duration) -> RedisPresence {
        RedisPresence::with_conn(
            self.conn.clone(),
            self.endpoint.is_cluster(),
            &self.prefix,
            ttl,
        )
    }
}

#[async_trait]
impl Bus for RedisBus {
    /// `PUBLISH <prefix><channel> <envelope>` (`SPUBLISH` on a cluster),
    /// bounded by the response timeout. An error means the envelope may or
    /// may not have been delivered.
    async fn publish(&self, env: &Envelope) -> Result<(), BusError> {
        let verb = if self.endpoint.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = ::redis::cmd(verb);
        cmd.arg(format!("{}{}", self.prefix, env.ch.as_str()))
            .arg(env.encode());
        self.conn.query::<i64>(&cmd).await.map(|_receivers| ())
    }

    /// A new attachment with its own subscriber connection (opened by its
    /// first subscribe) and tasks, which stop when the returned `Arc` drops.
    fn attach(&self, handler: Arc<dyn BusHandler>) -> Arc<dyn BusSubscriber> {
        RedisSubscriber::spawn(
            &self.runtime,
            self.endpoint.clone(),
            self.prefix.clone(),
            self.ping_interval,
            handler,
        )
    }

    /// PING through the command connection.
    async fn ping(&self) -> Result<(), BusError> {
        self.conn.ping().await
    }
}
