//! The Redis bus (PROTOCOL.md section 9): envelopes published on the Redis
//! channel `<prefix><channel>`, PUBLISH/SUBSCRIBE on one Redis, sharded
//! SPUBLISH/SSUBSCRIBE on Redis Cluster (each message touches one shard).
//!
//! # Layout
//! - this file: [`RedisBusConfig`] and [`RedisBus`] (publish, batch
//!   publish as one pipeline, attach, ping).
//! - `conn.rs`: single vs cluster endpoints, the bounded connections, the
//!   TCP options of every socket (keepalive, `TCP_USER_TIMEOUT`).
//! - `watched.rs`: a connection slot that counts consecutive link failures
//!   and drops the connection at the threshold.
//! - `command.rs`: the shared command connection and its keeper (PING,
//!   rebuild, fail fast meanwhile).
//! - `subscriber.rs`: [`RedisSubscriber`], one node's attachment.
//! - `presence.rs`: [`RedisPresence`], presence with expiring entries.
//!
//! Invariants: ONE shared multiplexed command connection per [`RedisBus`]
//! (publish, presence, ping), ONE subscriber connection per attachment;
//! each attachment's wanted-channel set is the source of truth for what it
//! receives and is re-subscribed after every lost connection, followed by
//! `on_reconnect` so the gateway catches up from history (Redis pub/sub
//! loses what is published while a subscriber is away). Every Redis request
//! is bounded by a timeout. A connection that stops answering without
//! closing (a half-open link: a partition, a host gone without RST) is
//! noticed by PINGs every [`RedisBusConfig::ping_interval`] and dropped
//! after [`RedisBusConfig::failures_before_rebuild`] consecutive failures,
//! then rebuilt (see [`RedisBusConfig`] for the bound); redis-rs alone
//! reconnects on I/O errors only, so it would wait for the kernel. No
//! connection pool: deadpool is not used (CRATES.md: publish through the
//! multiplexed connection).

use crate::{Bus, BusError, BusHandler, BusSubscriber};
use async_trait::async_trait;
use herald_protocol::bus::Envelope;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod command;
mod conn;
mod presence;
mod subscriber;
mod watched;

use command::CommandConn;
use conn::Endpoint;
pub use presence::RedisPresence;
pub use subscriber::RedisSubscriber;

/// Settings of [`RedisBus`].
///
/// Detection bound of a dead link (half-open, partitioned, or a Redis that
/// stopped answering): each connection is PINGed every `ping_interval`, each
/// PING bounded by `ping_timeout`, and dropped after
/// `failures_before_rebuild` consecutive failures (of PINGs or of any other
/// request on it, each bounded). So it is dropped within about
/// `ping_interval + failures_before_rebuild × max(ping_interval,
/// ping_timeout)`: 1 s + 3 × 1 s ≈ 4 s with the defaults (sooner under
/// traffic, when several requests time out together). A new connection is
/// then built (≤ 5 s per attempt, retried every `ping_interval`); an
/// attachment re-subscribes its channels and calls
/// [`BusHandler::on_reconnect`]. Meanwhile command requests fail at once
/// with [`crate::BusError::Unavailable`]. TCP keepalive and
/// `TCP_USER_TIMEOUT` (~20 s) on every socket back this up.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port` for one Redis; a comma-separated list of such
    /// URLs are Redis Cluster seeds.
    pub url: String,
    /// Prefix of the Redis channel names (`[bus] prefix`, default `herald:`).
    pub prefix: String,
    /// How often each connection (an attachment's subscriber connection, the
    /// shared command connection) is PINGed, so a lost or silent connection
    /// is noticed and re-established (default 1 s, at least 10 ms; also the
    /// retry interval of a failed re-subscribe or rebuild).
    pub ping_interval: Duration,
    /// Bound of one health PING (default 1 s, at least 10 ms). A Redis that
    /// takes longer `failures_before_rebuild` times in a row is treated as
    /// gone.
    pub ping_timeout: Duration,
    /// Consecutive failed requests (timeouts, I/O errors; not error replies)
    /// after which a connection is dropped and rebuilt (default 3, at least
    /// 1). See the detection bound above.
    pub failures_before_rebuild: u32,
}

/// Default of [`RedisBusConfig::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Default of [`RedisBusConfig::ping_timeout`].
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Default of [`RedisBusConfig::failures_before_rebuild`].
pub const DEFAULT_FAILURES_BEFORE_REBUILD: u32 = 3;

impl Default for RedisBusConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald:".into(),
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            failures_before_rebuild: DEFAULT_FAILURES_BEFORE_REBUILD,
        }
    }
}

/// The health-watch settings of [`RedisBusConfig`], clamped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Health {
    /// See [`RedisBusConfig::ping_interval`].
    pub(crate) ping_interval: Duration,
    /// See [`RedisBusConfig::ping_timeout`].
    pub(crate) ping_timeout: Duration,
    /// See [`RedisBusConfig::failures_before_rebuild`].
    pub(crate) max_failures: u32,
}

impl Health {
    fn of(cfg: &RedisBusConfig) -> Health {
        let floor = Duration::from_millis(10);
        Health {
            ping_interval: cfg.ping_interval.max(floor),
            // A PING bound past the connection's own response timeout
            // would never be reached.
            ping_timeout: cfg.ping_timeout.clamp(floor, conn::RESPONSE_TIMEOUT),
            max_failures: cfg.failures_before_rebuild.max(1),
        }
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::of(&RedisBusConfig::default())
    }
}

/// The bus over Redis or Redis Cluster. One per process; [`Bus::attach`]
/// it once per node (the gateway's hub).
pub struct RedisBus {
    /// Shared command connection (publish, presence, ping); clones share
    /// the socket and its keeper.
    conn: CommandConn,
    /// Where subscriber connections go.
    endpoint: Endpoint,
    /// Redis channel of a herald channel = prefix + name.
    prefix: Arc<str>,
    /// PING pace, PING bound and rebuild threshold of every connection.
    health: Health,
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
    /// connections' keeper and the attachments' tasks then use.
    pub async fn connect(cfg: RedisBusConfig) -> Result<RedisBus, BusError> {
        let endpoint = Endpoint::parse(&cfg.url)?;
        let health = Health::of(&cfg);
        let conn = CommandConn::connect(endpoint.clone(), health).await?;
        Ok(RedisBus {
            conn,
            endpoint,
            prefix: Arc::from(cfg.prefix),
            health,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Whether this bus runs on Redis Cluster (sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    /// `PUBLISH` (`SPUBLISH` on a cluster).
    fn verb(&self) -> &'static str {
        if self.endpoint.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// One publish command per envelope, in order, as one pipeline (the
    /// replies, receiver counts, are not kept).
    fn pipeline<'a>(&self, envs: impl IntoIterator<Item = &'a Envelope>) -> ::redis::Pipeline {
        let verb = self.verb();
        let mut pipe = ::redis::pipe();
        // The Redis channel name, rebuilt in one buffer: the command copies it.
        let mut name = Vec::with_capacity(self.prefix.len() + 64);
        for env in envs {
            name.clear();
            name.extend_from_slice(self.prefix.as_bytes());
            name.extend_from_slice(env.ch.as_str().as_bytes());
            pipe.cmd(verb).arg(&name[..]).arg(env.encode()).ignore();
        }
        pipe
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
    /// bounded by the response timeout (immediate [`BusError::Unavailable`]
    /// while the connection is being rebuilt). An error means the envelope
    /// may or may not have been delivered.
    async fn publish(&self, env: &Envelope) -> Result<(), BusError> {
        let mut cmd = ::redis::cmd(self.verb());
        cmd.arg(format!("{}{}", self.prefix, env.ch.as_str()))
            .arg(env.encode());
        self.conn.query::<i64>(&cmd).await.map(|_receivers| ())
    }

    /// One Redis: every envelope in ONE pipeline on the shared command
    /// connection (one write, one round trip, one response-timeout bound,
    /// one entry in the health count); Redis runs a connection's commands
    /// in order, so each channel's envelopes go out in slice order. A
    /// cluster pipeline must stay within one slot: one pipeline per
    /// channel (its envelopes in slice order), all channels at once, each
    /// to its shard. An error (the first, when several pipelines fail)
    /// means any envelope of the call may be lost; nothing is retried.
    async fn publish_batch(&self, envs: &[Envelope]) -> Result<(), BusError> {
        match envs {
            [] => return Ok(()),
            [one] => return self.publish(one).await,
            _ => {}
        }
        if !self.endpoint.is_cluster() {
            return self.conn.query_pipeline(&self.pipeline(envs)).await;
        }
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        let mut channels: Vec<Vec<&Envelope>> = Vec::new();
        for env in envs {
            let i = *index_of.entry(env.ch.as_str()).or_insert_with(|| {
                channels.push(Vec::new());
                channels.len() - 1
            });
            channels[i].push(env);
        }
        let pipes: Vec<::redis::Pipeline> =
            channels.into_iter().map(|one| self.pipeline(one)).collect();
        let results =
            futures_util::future::join_all(pipes.iter().map(|p| self.conn.query_pipeline(p))).await;
        results.into_iter().collect()
    }

    /// A new attachment with its own subscriber connection (opened by its
    /// first subscribe) and tasks, which stop when the returned `Arc` drops.
    fn attach(&self, handler: Arc<dyn BusHandler>) -> Arc<dyn BusSubscriber> {
        RedisSubscriber::spawn(
            &self.runtime,
            self.endpoint.clone(),
            self.prefix.clone(),
            self.health,
            handler,
        )
    }

    /// PING through the command connection.
    async fn ping(&self) -> Result<(), BusError> {
        self.conn.ping().await
    }
}
