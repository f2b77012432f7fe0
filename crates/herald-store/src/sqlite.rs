//! The embedded store: one SQLite file in WAL mode (`herald dev`, single-node
//! ingest).
//!
//! Invariants:
//! - Every write runs in `BEGIN IMMEDIATE`: a deferred transaction that reads
//!   and then writes fails with `SQLITE_BUSY_SNAPSHOT` under concurrent
//!   writers whatever the busy timeout (CRATES.md, sqlx). All writes of this
//!   process go through one writer task on one connection ([`writer`]), so
//!   they never contend with each other in SQLite; `busy_timeout` (5 s)
//!   covers other processes on the same file.
//! - Group commit: the appends queued while a transaction runs are committed
//!   together in the next one, each in its own savepoint; an append returns
//!   only after its transaction committed (and, with a commit sink, after
//!   the sink let go of it; [`writer`] has the details).
//! - A channel's seq is raised by an upsert in the same transaction as the
//!   message insert (gap-free, see `lib.rs`).
//! - Reads use a separate pool (WAL readers run beside the writer) and see
//!   committed transactions only. One history page runs in one read
//!   transaction, so `last_seq`, `first_seq` and the messages are one
//!   snapshot.
//!
//! `synchronous = NORMAL` with WAL survives a process crash, not a power
//! loss; that is the embedded default's trade.

#[cfg(test)]
mod tests;
mod writer;

use crate::append::{self, Plan};
use crate::commit::SinkSlot;
use crate::{
    AppendRequest, Appended, Claimed, History, OutboxDepth, OutboxItem, Settle, Store, StoreConfig,
    StoreError, StoredMessage, now_ms,
};
use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::{ChannelName, JsonData};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::{Job, OutboxDone, OutboxOp, Writer};

/// Schema, embedded at compile time (`build.rs` reruns on changes).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows deleted per prune step, so a big prune never holds the write lock
/// for long.
const PRUNE_BATCH: i64 = 1000;

/// The SQLite store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    /// Read connections (history, positions, ping).
    pool: SqlitePool,
    cfg: StoreConfig,
    /// The writer task's queue: every append and prune step.
    jobs: mpsc::Sender<Job>,
    /// The commit sink the writer hands stored appends to.
    sink: Arc<SinkSlot>,
}

impl SqliteStore {
    /// Opens (creating when missing, parent directory included) the database
    /// file at `path`, applies the migrations and starts the writer task
    /// (needs a tokio runtime; it stops when the store drops).
    ///
    /// Errors: [`StoreError::Setup`] when the file cannot be created or
    /// opened, or a migration fails.
    pub async fn open(path: &str, cfg: StoreConfig) -> Result<Self, StoreError> {
        let file = std::path::Path::new(path);
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Setup(format!("creating directory {}: {e}", parent.display()))
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // Readers run in parallel under WAL.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Setup(format!("opening sqlite database {path}: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Setup(format!("migrating sqlite database {path}: {e}")))?;
        let conn = opts.connect().await.map_err(|e| {
            StoreError::Setup(format!("opening sqlite write connection {path}: {e}"))
        })?;
        let (jobs, queue) = mpsc::channel(writer::QUEUE);
        let sink = Arc::new(SinkSlot::default());
        tokio::spawn(Writer::new(opts, conn, &cfg, sink.clone()).run(queue));
        Ok(Self {
            pool,
            cfg,
            jobs,
            sink,
        })
    }

    /// Finishes the queued writes, closes the write connection, then the
    /// pool (WAL checkpoint). Later writes fail with `Unavailable`.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.jobs.send(Job::Close { reply }).await.is_ok() {
            // An error means the writer is gone already.
            let _ = done.await;
        }
        self.pool.close().await;
    }

    /// Hands `job` to the writer and waits for its answer.
    async fn submit<T>(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        // The writer answers every job it takes; a dropped sender means it
        // stopped (closed, or its task ended with the runtime).
        answer
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        let plan = Plan::new(&req);
        if plan.ordered.is_empty() {
            // Nothing to store; the trait requires at least one channel.
            return Ok(Appended {
                id: req.id,
                ts: req.ts,
                seqs: Vec::new(),
                duplicate: false,
            });
        }
        if std::str::from_utf8(req.data.as_bytes()).is_err() {
            return Err(StoreError::Corrupt("data is not UTF-8 JSON text".into()));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job::Append {
            req,
            plan,
            reply,
            submitted: std::time::Instant::now(),
        };
        self.submit(job, answer).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<History, StoreError> {
        let cutoff = now_ms().saturating_sub(crate::millis(self.cfg.retention_max_age));
        let mut tx = self.pool.begin().await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM channels WHERE name = ?")
            .bind(channel.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let last_seq = append::seq_from_db(last.unwrap_or(0))?;
        // Age-expired messages are gone for readers even before prune runs.
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM messages WHERE channel = ? AND ts >= ? ORDER BY seq LIMIT 1",
        )
        .bind(channel.as_str())
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        let first_seq = match first {
            Some(s) => append::seq_from_db(s)?,
            None => last_seq + 1,
        };
        let rows = sqlx::query(
            "SELECT seq, id, ts, sender, data FROM messages \
             WHERE channel = ? AND seq > ? AND ts >= ? ORDER BY seq LIMIT ?",
        )
        .bind(channel.as_str())
        .bind(append::seq_to_db(after))
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let messages = rows
            .into_iter()
            .map(|row| {
                let data: String = row.try_get("data")?;
                Ok(StoredMessage {
                    channel: channel.clone(),
                    seq: append::seq_from_db(row.try_get("seq")?)?,
                    id: row.try_get("id")?,
                    ts: row.try_get("ts")?,
                    from: row.try_get("sender")?,
                    data: JsonData::from_json_text(Bytes::from(data))
                        .map_err(|e| StoreError::Corrupt(format!("message data: {e}")))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(History {
            messages,
            last_seq,
            first_seq,
        })
    }

    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, StoreError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
        let names = serde_json::to_string(&names).expect("a list of strings always serializes");
        let rows = sqlx::query(
            "SELECT name, last_seq FROM channels WHERE name IN (SELECT value FROM json_each(?))",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            found.insert(name, append::seq_from_db(row.try_get("last_seq")?)?);
        }
        Ok(channels
            .iter()
            .map(|c| found.get(c.as_str()).copied().unwrap_or(0))
            .collect())
    }

    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        let msg_cutoff = now_ms.saturating_sub(crate::millis(self.cfg.retention_max_age));
        let key_cutoff = now_ms.saturating_sub(crate::millis(self.cfg.idempotency_window));
        let mut deleted = 0;
        loop {
            let n = self
                .write_batch(
                    "DELETE FROM messages WHERE rowid IN \
                     (SELECT rowid FROM messages WHERE ts < ? LIMIT ?)",
                    msg_cutoff,
                )
                .await?;
            deleted += n;
            if n < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        loop {
            let n = self
                .write_batch(
                    "DELETE FROM idempotency WHERE rowid IN \
                     (SELECT rowid FROM idempotency WHERE created_ms < ? LIMIT ?)",
                    key_cutoff,
                )
                .await?;
            if n < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        tracing::debug!(deleted, "sqlite prune");
        Ok(deleted)
    }

    async fn enqueue(&self, items: Vec<OutboxItem>) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        match self.outbox(OutboxOp::Enqueue(items)).await? {
            OutboxDone::Added(n) => Ok(n),
            other => Err(StoreError::Corrupt(format!("enqueue answered {other:?}"))),
        }
    }

    async fn claim(
        &self,
        endpoint: &str,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
        owner: &str,
    ) -> Result<Vec<Claimed>, StoreError> {
        let op = OutboxOp::Claim {
            endpoint: endpoint.to_owned(),
            limit,
            now_ms,
            lease_ms,
            owner: owner.to_owned(),
        };
        match self.outbox(op).await? {
            OutboxDone::Claimed(rows) => Ok(rows),
            other => Err(StoreError::Corrupt(format!("claim answered {other:?}"))),
        }
    }

    async fn settle(&self, row: i64, owner: &str, outcome: Settle) -> Result<bool, StoreError> {
        let op = OutboxOp::Settle {
            row,
            owner: owner.to_owned(),
            outcome,
        };
        match self.outbox(op).await? {
            OutboxDone::Settled(held) => Ok(held),
            other => Err(StoreError::Corrupt(format!("settle answered {other:?}"))),
        }
    }

    async fn outbox_depth(&self) -> Result<Vec<OutboxDepth>, StoreError> {
        let rows = sqlx::query(crate::append::OUTBOX_DEPTH_SQL)
            .fetch_all(&self.pool)
            .await?;
        crate::append::outbox_depth_rows(&rows)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::Unavailable(sqlx::Error::PoolClosed));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn set_commit_sink(&self, sink: Arc<dyn crate::CommitSink>) -> bool {
        self.sink.set(sink);
        true
    }
}

impl SqliteStore {
    /// One outbox write, committed by the writer.
    async fn outbox(&self, op: OutboxOp) -> Result<OutboxDone, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Outbox { op, reply }, answer).await
    }

    /// One bounded delete (`sql` binds the cutoff, then the batch size),
    /// committed by the writer; returns the rows deleted.
    async fn write_batch(&self, sql: &'static str, cutoff: i64) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Delete {
            sql,
            cutoff,
            limit: PRUNE_BATCH,
            reply,
        };
        self.submit(job, answer).await
    }
}
