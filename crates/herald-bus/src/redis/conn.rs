//! Connections to Redis or Redis Cluster: where they go ([`Endpoint`]) and
//! the two kinds a process opens ([`Conn`]): the shared command connection
//! (publish, presence, ping) and one subscriber connection per attachment.
//!
//! Invariants: every request is bounded by [`RESPONSE_TIMEOUT`] (also the
//! wait for a reconnect), so a dead Redis turns into an error, never a hang;
//! each failure says whether it condemns the link ([`Failure::link`]: a
//! timeout, an I/O error) or is Redis answering (an error reply), which the
//! owners' health watch ([`super::watched`]) counts. Every socket gets TCP
//! keepalive and `TCP_USER_TIMEOUT` ([`tcp_settings`]) as a second line of
//! defence against half-open links behind the PINGs.
//! Cluster mode uses sharded pub/sub only (SPUBLISH/SSUBSCRIBE, one command
//! per channel: channels of one command must share a slot, else `CrossSlot`).
//! Nothing here keeps subscription state: the attachment's wanted set does.

use crate::BusError;
use ::redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use ::redis::{
    Client, Cmd, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline,
    ProtocolVersion, RedisError, Value,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use std::future::Future;
use std::time::Duration;

/// Bound of one request to Redis, the wait for a reconnect included.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of one TCP connect (+ handshake) to one Redis node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound of establishing a connection, retries included.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two reconnect attempts of a ConnectionManager.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Idle time before the kernel's first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Between two keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered keepalive probes before the kernel drops the socket.
const KEEPALIVE_RETRIES: u32 = 3;
/// Data unacknowledged this long makes the kernel drop the socket
/// (`TCP_USER_TIMEOUT`, Linux). It also caps the keepalive path above: a
/// silent peer costs a socket at most ~20 s even with no PING watch.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
const USER_TIMEOUT: Duration = Duration::from_secs(20);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command on a single Redis.
const SUBSCRIBE_BATCH: usize = 500;
/// SSUBSCRIBE/SUNSUBSCRIBE commands in flight at once on a cluster.
const CLUSTER_SUBSCRIBE_CONCURRENCY: usize = 32;

/// Where Redis is.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// One Redis server.
    Single(ConnectionInfo),
    /// Redis Cluster seeds.
    Cluster(Vec<ConnectionInfo>),
}

impl Endpoint {
    /// `redis://host:port` is one server; a comma-separated list of such URLs
    /// are Redis Cluster seeds (DESIGN.md `--redis-url`).
    pub(crate) fn parse(url: &str) -> Result<Endpoint, BusError> {
        if url.contains(',') {
            let seeds = url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(connection_info)
                .collect::<Result<Vec<_>, _>>()?;
            if seeds.is_empty() {
                return Err(BusError::Unavailable(
                    "redis url lists no cluster seed".into(),
                ));
            }
            Ok(Endpoint::Cluster(seeds))
        } else {
            Ok(Endpoint::Single(connection_info(url.trim())?))
        }
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }
}

fn connection_info(url: &str) -> Result<ConnectionInfo, BusError> {
    let info = url
        .into_connection_info()
        .map_err(|e| BusError::Unavailable(format!("invalid redis url: {e}")))?;
    Ok(info.set_tcp_settings(tcp_settings()))
}

/// The TCP options of every Redis socket (single and cluster): no Nagle
/// delay (small commands), keepalive probes and `TCP_USER_TIMEOUT`, so the
/// kernel also closes a link to a host that vanished without RST (the PING
/// watch notices within seconds; this bounds it when nothing is sent).
pub(crate) fn tcp_settings() -> TcpSettings {
    let settings = TcpSettings::default().set_nodelay(true).set_keepalive(
        TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES),
    );
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings = settings.set_user_timeout(USER_TIMEOUT);
    settings
}

/// `info` speaking RESP3 (pushes on the same connection; needed to
/// subscribe through a ConnectionManager or a cluster connection).
fn resp3(info: &ConnectionInfo) -> ConnectionInfo {
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.clone().set_redis_settings(redis)
}

/// A failed Redis request: the error for the caller, and whether it says
/// the link itself is bad (no answer in time, an I/O error, no connection
/// to a cluster node) rather than Redis answering with an error.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What the caller gets.
    pub(crate) error: BusError,
    /// Counts toward the owner's rebuild threshold.
    pub(crate) link: bool,
}

impl From<Failure> for BusError {
    fn from(f: Failure) -> BusError {
        f.error
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

fn unavailable(e: RedisError) -> Failure {
    // A response timeout of redis-rs is an I/O error (`TimedOut`).
    let link = matches!(
        e.kind(),
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound
    );
    Failure {
        error: BusError::Unavailable(e.to_string()),
        link,
    }
}

/// Runs `f` within `bound`; a timeout is an `Unavailable` link failure.
pub(crate) async fn bounded<T>(
    bound: Duration,
    what: &str,
    f: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(bound, f).await {
        Ok(r) => r,
        Err(_) => Err(Failure {
            error: BusError::Unavailable(format!("redis {what} timed out after {bound:?}")),
            link: true,
        }),
    }
}

/// A multiplexed, self-reconnecting connection (cheap to clone: clones share
/// one socket per node).
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis server.
    Single(ConnectionManager),
    /// Redis Cluster (one connection per node, routed by slot).
    Cluster(ClusterConnection),
}

impl Conn {
    /// A command connection: publish, presence, ping. Fails when Redis does
    /// not answer within the establish bound.
    pub(crate) async fn connect(ep: &Endpoint) -> Result<Conn, Failure> {
        bounded(ESTABLISH_TIMEOUT, "connect", async {
            match ep {
                Endpoint::Single(info) => {
                    let client = Client::open(info.clone()).map_err(unavailable)?;
                    let cm = client
                        .get_connection_manager_with_config(manager_config())
                        .await
                        .map_err(unavailable)?;
                    Ok(Conn::Single(cm))
                }
                Endpoint::Cluster(seeds) => {
                    let conn = cluster_builder(seeds.clone())
                        .build()
                        .map_err(unavailable)?
                        .get_async_connection()
                        .await
                        .map_err(unavailable)?;
                    Ok(Conn::Cluster(conn))
                }
            }
        })
        .await
    }

    /// A subscriber connection: RESP3, every push (messages, subscription
    /// confirmations, `Disconnection`) handed to `pushes`, which must not
    /// block. Automatic resubscription stays off on a single Redis: the
    /// attachment re-subscribes its wanted set itself (CRATES.md pitfalls).
    pub(crate) async fn connect_subscriber(
        ep: &Endpoint,
        pushes: impl AsyncPushSender,
    ) -> Result<Conn, Failure> {
        bounded(ESTABLISH_TIMEOUT, "connect", async {
            match ep {
                Endpoint::Single(info) => {
                    let client = Client::open(resp3(info)).map_err(unavailable)?;
                    let cm = client
                        .get_connection_manager_with_config(
                            manager_config().set_push_sender(pushes),
                        )
                        .await
                        .map_err(unavailable)?;
                    Ok(Conn::Single(cm))
                }
                Endpoint::Cluster(seeds) => {
                    let conn = cluster_builder(seeds.iter().map(resp3).collect())
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(pushes)
                        .build()
                        .map_err(unavailable)?
                        .get_async_connection()
                        .await
                        .map_err(unavailable)?;
                    Ok(Conn::Cluster(conn))
                }
            }
        })
        .await
    }

    /// Sends one command and reads its reply (bounded by
    /// [`RESPONSE_TIMEOUT`]).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Failure> {
        self.query_within(RESPONSE_TIMEOUT, cmd).await
    }

    /// Sends one command and reads its reply within `bound` (at most the
    /// connection's own response timeout, [`RESPONSE_TIMEOUT`]).
    async fn query_within<T: FromRedisValue>(
        &self,
        bound: Duration,
        cmd: &Cmd,
    ) -> Result<T, Failure> {
        bounded(bound, "request", async {
            match self.clone() {
                Conn::Single(mut c) => cmd.query_async(&mut c).await.map_err(unavailable),
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await.map_err(unavailable),
            }
        })
        .await
    }

    /// Sends a pipeline (one write, one round trip; not a transaction) and
    /// reads every reply, bounded by [`RESPONSE_TIMEOUT`] as a whole. On a
    /// cluster every command must be in one slot (else `CrossSlot`). An
    /// error reply to any command fails the whole call.
    pub(crate) async fn query_pipeline(&self, pipe: &Pipeline) -> Result<(), Failure> {
        bounded(RESPONSE_TIMEOUT, "pipeline", async {
            match self.clone() {
                Conn::Single(mut c) => pipe.query_async(&mut c).await.map_err(unavailable),
                Conn::Cluster(mut c) => pipe.query_async(&mut c).await.map_err(unavailable),
            }
        })
        .await
    }

    /// PING within `bound` (on a cluster: every primary). Also what makes a
    /// ConnectionManager that gave up reconnecting try again.
    pub(crate) async fn ping(&self, bound: Duration) -> Result<(), Failure> {
        self.query_within::<Value>(bound, &::redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    /// Subscribes to Redis channels; returns once Redis confirmed every one
    /// of them. Single Redis: one SUBSCRIBE per batch of channels. Cluster:
    /// one SSUBSCRIBE per channel (several in flight), routed to the
    /// channel's shard. On error some channels may be subscribed, others not.
    pub(crate) async fn subscribe(&self, names: &[String]) -> Result<(), Failure> {
        match self {
            Conn::Single(cm) => {
                for batch in names.chunks(SUBSCRIBE_BATCH) {
                    let mut cm = cm.clone();
                    bounded(RESPONSE_TIMEOUT, "subscribe", async {
                        cm.subscribe(batch).await.map_err(unavailable)
                    })
                    .await?;
                }
                Ok(())
            }
            Conn::Cluster(cc) => per_channel(cc, names, Sharded::Subscribe).await,
        }
    }

    /// Unsubscribes from Redis channels (confirmed, like [`Conn::subscribe`]).
    pub(crate) async fn unsubscribe(&self, names: &[String]) -> Result<(), Failure> {
        match self {
            Conn::Single(cm) => {
                for batch in names.chunks(SUBSCRIBE_BATCH) {
                    let mut cm = cm.clone();
                    bounded(RESPONSE_TIMEOUT, "unsubscribe", async {
                        cm.unsubscribe(batch).await.map_err(unavailable)
                    })
                    .await?;
                }
                Ok(())
            }
            Conn::Cluster(cc) => per_channel(cc, names, Sharded::Unsubscribe).await,
        }
    }
}

#[derive(Clone, Copy)]
enum Sharded {
    Subscribe,
    Unsubscribe,
}

/// One SSUBSCRIBE/SUNSUBSCRIBE per channel, a bounded number in flight,
/// each bounded by [`RESPONSE_TIMEOUT`]; tries every channel and returns
/// the first error. (Owned, boxed futures: a closure borrowing `names`
/// trips the `Send` check of the async-trait futures.)
async fn per_channel(cc: &ClusterConnection, names: &[String], op: Sharded) -> Result<(), Failure> {
    let calls: Vec<BoxFuture<'static, Result<(), Failure>>> = names
        .iter()
        .map(|name| {
            let mut cc = cc.clone();
            let name = name.clone();
            async move {
                bounded(RESPONSE_TIMEOUT, "sharded subscribe", async move {
                    match op {
                        Sharded::Subscribe => cc.ssubscribe(name).await,
                        Sharded::Unsubscribe => cc.sunsubscribe(name).await,
                    }
                    .map_err(unavailable)
                })
                .await
            }
            .boxed()
        })
        .collect();
    let results: Vec<Result<(), Failure>> = futures_util::stream::iter(calls)
        .buffer_unordered(CLUSTER_SUBSCRIBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_max_delay(MAX_RECONNECT_DELAY)
}

fn cluster_builder(seeds: Vec<ConnectionInfo>) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .tcp_settings(tcp_settings())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_cluster_urls() {
        assert!(
            !Endpoint::parse("redis://127.0.0.1:6379")
                .unwrap()
                .is_cluster()
        );
        let ep = Endpoint::parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001,").unwrap();
        match ep {
            Endpoint::Cluster(seeds) => assert_eq!(seeds.len(), 2),
            Endpoint::Single(_) => panic!("a comma means cluster"),
        }
        assert!(Endpoint::parse("not a url").is_err());
        assert!(Endpoint::parse(",").is_err());
    }

    #[test]
    fn subscriber_connections_speak_resp3() {
        let Endpoint::Single(info) = Endpoint::parse("redis://127.0.0.1:6379").unwrap() else {
            panic!("single");
        };
        assert_eq!(
            resp3(&info).redis_settings().protocol(),
            ProtocolVersion::RESP3
        );
        assert!(resp3(&info).tcp_settings().nodelay());
    }

    #[test]
    fn every_socket_gets_keepalive_and_user_timeout() {
        let Endpoint::Single(info) = Endpoint::parse("redis://127.0.0.1:6379").unwrap() else {
            panic!("single");
        };
        let tcp = info.tcp_settings();
        assert!(tcp.nodelay());
        assert!(tcp.keepalive().is_some());
        #[cfg(target_os = "linux")]
        assert_eq!(tcp.user_timeout(), Some(USER_TIMEOUT));
    }

    #[test]
    fn only_link_errors_condemn_the_link() {
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out").into();
        assert!(unavailable(io).link);
        let reply: RedisError = (
            ErrorKind::Server(::redis::ServerErrorKind::ResponseError),
            "ERR x",
        )
            .into();
        assert!(!unavailable(reply).link);
    }
}
