//! Presence on Redis: who is on a channel, across nodes, with entries that
//! expire when their gateway stops refreshing them.
//!
//! Per channel two keys: the hash `<prefix>presence:<channel>` (field conn ->
//! ClientInfo JSON) and the sorted set `<prefix>presence:<channel>:exp`
//! (member conn, score = expiry in ms). On a cluster the channel part is a
//! hash tag, `<prefix>presence:{<channel>}` and `...:{<channel>}:exp`, so
//! both keys live in one slot.
//!
//! Invariants: the two keys change together, only inside Lua scripts
//! (atomic, on a cluster too); times are Redis's clock (`TIME`), never a
//! gateway's, so skewed nodes agree on what expired; an expired entry is
//! removed and returned by exactly one [`Presence::expire`] call. Both keys
//! expire 3 ttl after their last write, so a channel nobody refreshes or
//! sweeps leaves no garbage. Best effort and never stored (DESIGN.md
//! guarantee 7).

use super::Health;
use super::command::CommandConn;
use super::conn::Endpoint;
use crate::{BusError, Presence};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use herald_protocol::ChannelName;
use herald_protocol::server::ClientInfo;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// `KEYS`: hash, zset. `ARGV`: ttl ms, then conn, json pairs. (Re)writes each
/// entry with expiry now + ttl.
const JOIN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 3)
redis.call('PEXPIRE', KEYS[2], ttl * 3)
return 1
";

/// `KEYS`: hash, zset. `ARGV`: ttl ms, then conn, json pairs. Extends the
/// expiry of entries that still exist; returns the conns that do not (left
/// or expired since the caller's snapshot: never written back here).
const REFRESH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 2, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[i])
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 3)
redis.call('PEXPIRE', KEYS[2], ttl * 3)
return missing
";

/// `KEYS`: hash, zset. `ARGV`: conn. Removes the entry.
const LEAVE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

/// `KEYS`: hash, zset. The JSON of the entries whose expiry is in the future
/// (HMGET in chunks: Lua's `unpack` has a stack limit).
const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
local out = {}
for i = 1, #live, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #live) do chunk[#chunk + 1] = live[j] end
  local vals = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #vals do
    if vals[j] then out[#out + 1] = vals[j] end
  end
end
return out
";

/// `KEYS`: hash, zset. `ARGV`: limit. Removes up to `limit` entries whose
/// expiry passed; returns `{removed count, {json...}}`.
const EXPIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #dead == 0 then return {0, {}} end
local vals = redis.call('HMGET', KEYS[1], unpack(dead))
redis.call('HDEL', KEYS[1], unpack(dead))
redis.call('ZREM', KEYS[2], unpack(dead))
local out = {}
for j = 1, #vals do
  if vals[j] then out[#out + 1] = vals[j] end
end
return {#dead, out}
";

/// Entries removed per EXPIRE script run (bounded work per script: Redis
/// runs nothing else meanwhile).
const EXPIRE_BATCH: usize = 500;
/// Script runs per [`Presence::expire`] call (bounds one sweep).
const EXPIRE_MAX_ROUNDS: usize = 100;
/// Channels written at once by [`Presence::refresh`].
const REFRESH_CONCURRENCY: usize = 16;

/// Presence on Redis or Redis Cluster (see the module docs).
#[derive(Clone)]
pub struct RedisPresence {
    /// Shared command connection (self-healing, see `command.rs`).
    conn: CommandConn,
    /// Hash-tag the channel in key names (Redis Cluster).
    cluster: bool,
    /// Key prefix (the bus prefix).
    prefix: Arc<str>,
    /// Entry lifetime after a join or refresh, in ms (at least 1).
    ttl_ms: u64,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Connects to `url` (one Redis, or comma-separated cluster seeds), keys
    /// under `prefix`, entries expiring `ttl` after their last join or
    /// refresh (DESIGN.md `[presence] ttl`, default 30 s). Fails when Redis
    /// does not answer. Its connection is watched and rebuilt like the bus's
    /// (default [`super::RedisBusConfig`] health settings). Must run inside
    /// a Tokio runtime.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<RedisPresence, BusError> {
        let endpoint = Endpoint::parse(url)?;
        let cluster = endpoint.is_cluster();
        let conn = CommandConn::connect(endpoint, Health::default()).await?;
        Ok(Self::with_conn(conn, cluster, prefix, ttl))
    }

    pub(crate) fn with_conn(
        conn: CommandConn,
        cluster: bool,
        prefix: &str,
        ttl: Duration,
    ) -> RedisPresence {
        RedisPresence {
            conn,
            cluster,
            prefix: Arc::from(prefix),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Entry lifetime after a join or refresh.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    fn script(&self, script: &str, channel: &ChannelName) -> ::redis::Cmd {
        let (hash, exp) = keys(&self.prefix, self.cluster, channel);
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(script).arg(2).arg(hash).arg(exp);
        cmd
    }

    /// Writes `clients` of one channel in one script run (`JOIN` or
    /// `REFRESH`); returns the script's answer.
    async fn run_entries(
        &self,
        script: &str,
        channel: &ChannelName,
        clients: &[&ClientInfo],
    ) -> Result<::redis::Value, BusError> {
        let mut cmd = self.script(script, channel);
        cmd.arg(self.ttl_ms);
        for c in clients {
            let json = serde_json::to_vec(c)
                .map_err(|e| BusError::Unavailable(format!("client info to json: {e}")))?;
            cmd.arg(&c.conn).arg(json);
        }
        self.conn.query::<::redis::Value>(&cmd).await
    }

    /// Writes `clients` of one channel with expiry now + ttl.
    async fn write(&self, channel: &ChannelName, clients: &[&ClientInfo]) -> Result<(), BusError> {
        self.run_entries(JOIN, channel, clients).await.map(|_| ())
    }
}

/// The hash and sorted-set keys of a channel (hash-tagged on a cluster).
fn keys(prefix: &str, cluster: bool, channel: &ChannelName) -> (String, String) {
    let hash = if cluster {
        format!("{prefix}presence:{{{}}}", channel.as_str())
    } else {
        format!("{prefix}presence:{}", channel.as_str())
    };
    let exp = format!("{hash}:exp");
    (hash, exp)
}

/// Parses stored entries; an unreadable one is logged and skipped.
fn parse_entries(raw: Vec<Vec<u8>>, channel: &ChannelName) -> Vec<ClientInfo> {
    raw.into_iter()
        .filter_map(|b| match serde_json::from_slice::<ClientInfo>(&b) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, channel = %channel.as_str(), "skipped an unreadable presence entry");
                None
            }
        })
        .collect()
}

#[async_trait]
impl Presence for RedisPresence {
    fn expires(&self) -> bool {
        true
    }

    /// (Re)writes the entry with expiry now + ttl.
    async fn join(&self, channel: &ChannelName, client: &ClientInfo) -> Result<(), BusError> {
        self.write(channel, &[client]).await
    }

    async fn leave(&self, channel: &ChannelName, conn: &str) -> Result<(), BusError> {
        let mut cmd = self.script(LEAVE, channel);
        cmd.arg(conn);
        self.conn.query::<::redis::Value>(&cmd).await.map(|_| ())
    }

    /// The entries whose expiry is in the future.
    async fn list(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, BusError> {
        let raw: Vec<Vec<u8>> = self.conn.query(&self.script(LIST, channel)).await?;
        Ok(parse_entries(raw, channel))
    }

    /// One script run per channel (all its entries), several channels at once.
    async fn refresh(
        &self,
        entries: &[(ChannelName, ClientInfo)],
    ) -> Result<Vec<(ChannelName, ClientInfo)>, BusError> {
        let mut by_channel: BTreeMap<&ChannelName, Vec<&ClientInfo>> = BTreeMap::new();
        for (ch, c) in entries {
            by_channel.entry(ch).or_default().push(c);
        }
        // Owned, boxed futures: borrowing closures trip the `Send` check of
        // async-trait futures. Made a chunk at a time: a node with 19,000
        // one-member channels would otherwise allocate 19,000 futures and
        // client copies at once every refresh, which the allocator then
        // keeps as resident memory.
        type Missing = Vec<(ChannelName, ClientInfo)>;
        let mut channels = by_channel.into_iter();
        let mut missing = Vec::new();
        // Every chunk runs even after a failure (each write keeps entries
        // alive); the first error is the answer.
        let mut failed = None;
        loop {
            let writes: Vec<BoxFuture<'static, Result<Missing, BusError>>> = channels
                .by_ref()
                .take(REFRESH_CONCURRENCY * 4)
                .map(|(ch, clients)| {
                    let this = self.clone();
                    let ch = ch.clone();
                    let clients: Vec<ClientInfo> = clients.into_iter().cloned().collect();
                    async move {
                        let answer = this
                            .run_entries(REFRESH, &ch, &clients.iter().collect::<Vec<_>>())
                            .await?;
                        let gone: Vec<String> = ::redis::FromRedisValue::from_redis_value(answer)
                            .map_err(|e| {
                            BusError::Unavailable(format!("refresh answer: {e}"))
                        })?;
                        Ok(clients
                            .into_iter()
                            .filter(|c| gone.contains(&c.conn))
                            .map(|c| (ch.clone(), c))
                            .collect())
                    }
                    .boxed()
                })
                .collect();
            if writes.is_empty() {
                return match failed {
                    Some(e) => Err(e),
                    None => Ok(missing),
                };
            }
            let results: Vec<Result<Missing, BusError>> = futures_util::stream::iter(writes)
                .buffer_unordered(REFRESH_CONCURRENCY)
                .collect()
                .await;
            for r in results {
                match r {
                    Ok(m) => missing.extend(m),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
    }

    async fn expire(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, BusError> {
        let mut out = Vec::new();
        for _ in 0..EXPIRE_MAX_ROUNDS {
            let mut cmd = self.script(EXPIRE, channel);
            cmd.arg(EXPIRE_BATCH);
            let (removed, raw): (usize, Vec<Vec<u8>>) = self.conn.query(&cmd).await?;
            out.extend(parse_entries(raw, channel));
            if removed < EXPIRE_BATCH {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        let ch = ChannelName::new("chat_1").unwrap();
        assert_eq!(
            keys("herald:", false, &ch),
            (
                "herald:presence:chat_1".to_owned(),
                "herald:presence:chat_1:exp".to_owned()
            )
        );
        // Both keys hash to one slot on a cluster (same `{...}` tag).
        assert_eq!(
            keys("herald:", true, &ch),
            (
                "herald:presence:{chat_1}".to_owned(),
                "herald:presence:{chat_1}:exp".to_owned()
            )
        );
    }

    #[test]
    fn unreadable_entries_are_skipped() {
        let ch = ChannelName::new("c").unwrap();
        let good = br#"{"sub":"u:1","conn":"c1"}"#.to_vec();
        let got = parse_entries(vec![b"{not json".to_vec(), good], &ch);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].conn, "c1");
    }
}
