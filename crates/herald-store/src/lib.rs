//! Durable message storage: per-channel gap-free seq, idempotency, history,
//! retention.
//!
//! # Layout
//! - `lib.rs`: the [`Store`] trait, its types and [`StoreError`].
//! - `commit.rs`: the commit hand-off ([`CommitSink`], [`Committed`]): each
//!   committed batch's stored appends, in seq order per channel, to whoever
//!   publishes them before their callers are answered.
//! - [`sqlite`]: the embedded default (one file, WAL, `BEGIN IMMEDIATE`);
//!   `sqlite/writer.rs`: its writer task, which commits concurrent appends
//!   together (group commit, one savepoint each).
//! - [`postgres`]: production backend shared by several ingest replicas;
//!   `postgres/writer.rs`: its writer tasks, which commit concurrent appends
//!   together (group commit, one round-trip set per batch);
//!   `postgres/handoff.rs`: the order in which its two writers hand
//!   committed batches over.
//! - [`conformance`]: one suite every backend must pass unchanged.
//! - `append.rs`: what both backends share about an append: channel order
//!   (request order out, sorted order for locking), the idempotency
//!   fingerprint, the remembered result and how a retry is judged.
//! - `migrations/<backend>/`: schema, applied on open.
//!
//! Invariants (DESIGN.md guarantees 1 and 2): a channel's seq is assigned in
//! the same transaction as the insert, so seqs are 1, 2, 3, ... with no gap
//! and no duplicate under concurrent writers; one publish to several channels
//! is one message id, one seq per channel, one transaction.

use async_trait::async_trait;
use herald_protocol::{ChannelName, JsonData};
use std::time::Duration;

mod append;
mod commit;
pub mod conformance;
pub mod postgres;
pub mod sqlite;

pub use commit::{CommitSink, Committed};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A publish to persist.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// One or more distinct channels (at least one).
    pub channels: Vec<ChannelName>,
    /// The payload.
    pub data: JsonData,
    /// Shown to subscribers as `from`.
    pub from: Option<String>,
    /// Who publishes; idempotency keys are scoped to it (PROTOCOL.md section 8).
    pub publisher: String,
    /// Idempotency key.
    pub key: Option<String>,
    /// Message id, assigned by ingest (used unless the key was seen before).
    pub id: String,
    /// Timestamp in ms, assigned by ingest (same rule).
    pub ts: i64,
    /// Webhook endpoints that want this publish: one `publish` event per
    /// (endpoint, channel) is written to the outbox in the same
    /// transaction as the message (none for a duplicate).
    pub outbox: Vec<OutboxTarget>,
}

/// An endpoint that wants the `publish` event of one channel of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTarget {
    /// The endpoint's name (`[[webhooks]] name`).
    pub endpoint: String,
    /// One of the append's channels.
    pub channel: ChannelName,
}

/// A webhook delivery to store in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The endpoint's name.
    pub endpoint: String,
    /// The event's id; an (endpoint, event id) pair already pending is not
    /// stored twice.
    pub event_id: String,
    /// The JSON body, as POSTed.
    pub body: String,
}

/// A pending delivery claimed by one ingest until its lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Row id, for [`Store::settle`].
    pub row: i64,
    /// The event's id.
    pub event_id: String,
    /// The JSON body.
    pub body: String,
    /// Delivery attempts made before this one.
    pub attempts: u32,
    /// When the event was stored (ms), for the age limit.
    pub created_ms: i64,
}

/// What became of a claimed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Delivered, or given up on: the row is deleted.
    Done,
    /// Failed: try again at `at_ms`, `attempts` made so far.
    Retry {
        /// Next attempt, ms since the epoch.
        at_ms: i64,
        /// Attempts made so far.
        attempts: u32,
    },
}

/// The outbox's backlog of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxDepth {
    /// The endpoint's name.
    pub endpoint: String,
    /// Rows pending (due or not).
    pub pending: u64,
}

/// What an append committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Message id (the first one when the key was seen before).
    pub id: String,
    /// Timestamp in ms.
    pub ts: i64,
    /// One seq per channel, in the order of the request's channels.
    pub seqs: Vec<(ChannelName, u64)>,
    /// True when the key was seen before and nothing new was stored.
    pub duplicate: bool,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Channel.
    pub channel: ChannelName,
    /// Seq in that channel.
    pub seq: u64,
    /// Message id.
    pub id: String,
    /// Timestamp in ms.
    pub ts: i64,
    /// Publisher shown as `from`.
    pub from: Option<String>,
    /// Payload.
    pub data: JsonData,
}

/// One page of a channel's history.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Retained messages with seq > after, ascending, at most `limit`.
    pub messages: Vec<StoredMessage>,
    /// The channel's last seq (0 when it never had a message).
    pub last_seq: u64,
    /// The lowest seq still retained (`last_seq + 1` when none is retained).
    /// A reader that needs seq `after + 1` and finds `first_seq > after + 1`
    /// knows the gap reaches beyond retention (`recovered:false`).
    pub first_seq: u64,
}

/// Retention and idempotency settings (DESIGN.md `[store]`).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_window: Duration,
    /// Messages kept per channel (default 10 000).
    pub retention_max_messages: u64,
    /// Age after which messages are evicted (default 7 days).
    pub retention_max_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            idempotency_window: Duration::from_secs(24 * 3600),
            retention_max_messages: 10_000,
            retention_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Store failures. Each maps to one client-visible code in ingest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key was used before with another channel set or data
    /// (PROTOCOL.md `conflict`).
    #[error("idempotency key reused with other channels or data")]
    Conflict,
    /// The database cannot be reached or failed (`unavailable`, retryable).
    #[error("store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Opening or migrating failed.
    #[error("store setup failed: {0}")]
    Setup(String),
    /// Stored data that cannot be read back (a bug or manual edit).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    /// Decoding problems mean the stored data is not what we wrote
    /// ([`StoreError::Corrupt`]); everything else (pool timeout, I/O, closed
    /// pool, database errors) is [`StoreError::Unavailable`], which ingest
    /// answers with a retryable `unavailable`.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Unavailable(other),
        }
    }
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Wall-clock milliseconds since the Unix epoch (what `ts` fields hold).
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A duration in whole milliseconds, saturating (config values are bounded
/// far below, but a huge one must not wrap into the past).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The durable message store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Persists a message in every channel of the request in one transaction
    /// and returns the seqs. With a key already used by the same publisher
    /// within the idempotency window: the same channel set and data return
    /// the first result with `duplicate: true`; anything else is
    /// [`StoreError::Conflict`]. Evicts beyond `retention_max_messages` for
    /// the channels written.
    async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError>;

    /// Messages with seq > `after`, ascending, at most `limit`.
    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<History, StoreError>;

    /// Last seq of each channel (0 for a channel that never had a message),
    /// in the order given.
    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, StoreError>;

    /// Deletes messages older than `retention_max_age` and idempotency keys
    /// older than `idempotency_window`, relative to `now_ms`. Returns how many
    /// messages were deleted. Called periodically by ingest.
    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores webhook deliveries (gateway events); an (endpoint, event id)
    /// already pending is skipped. Returns how many rows were added.
    async fn enqueue(&self, items: Vec<OutboxItem>) -> Result<u64, StoreError>;

    /// Claims up to `limit` deliveries of `endpoint` that are due at
    /// `now_ms` and not leased, oldest first, leasing them to `owner` until
    /// `now_ms + lease_ms`. Replicas sharing the database never claim one
    /// row at once (PostgreSQL: `FOR UPDATE SKIP LOCKED`); a row whose
    /// lease ran out (its claimer died) is claimed again.
    async fn claim(
        &self,
        endpoint: &str,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
        owner: &str,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Settles a claimed delivery, if `owner` still holds its lease
    /// (returns false when another claimer took it over).
    async fn settle(&self, row: i64, owner: &str, outcome: Settle) -> Result<bool, StoreError>;

    /// Pending deliveries per endpoint (endpoints with none are absent).
    async fn outbox_depth(&self) -> Result<Vec<OutboxDepth>, StoreError>;

    /// Routes every stored append through `sink` (the commit hand-off,
    /// `commit.rs`): after each commit the writer hands the batch's stored
    /// appends to it, in seq order per channel within and across batches,
    /// and an [`Store::append`] that stored a message returns only once the
    /// sink dropped its [`Committed`]. Duplicates, conflicts and failures
    /// are answered as before, without the sink. Set it once, before the
    /// first append; a later call replaces it.
    ///
    /// Returns false when the backend has no hand-off (the default): its
    /// appends are answered at commit and never reach `sink`.
    fn set_commit_sink(&self, sink: std::sync::Arc<dyn CommitSink>) -> bool {
        drop(sink);
        false
    }
}

/// Opens the store named by a database URL: `sqlite://PATH` (created when
/// missing) or `postgres://...`; applies migrations.
pub async fn open(url: &str, config: StoreConfig) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open(path, config).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PgStore::open(url, config).await?,
        ))
    } else {
        Err(StoreError::Setup(format!(
            "unsupported database URL scheme (expected sqlite:// or postgres://): {}",
            url.split("://").next().unwrap_or("")
        )))
    }
}
