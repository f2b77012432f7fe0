//! The production store: PostgreSQL shared by several ingest replicas.
//!
//! Invariants:
//! - Appends go through [`writer`]: a few writer tasks commit the appends
//!   queued meanwhile together (group commit), in one transaction per batch;
//!   an append returns only after its batch committed (and, with a commit
//!   sink, after the sink let go of it; [`handoff`] orders the batches).
//! - A channel's seq is read under its row lock and written back in the same
//!   transaction as the message insert; the row lock held until commit
//!   serialises that channel's writers across replicas, and a rollback undoes
//!   the increment (gap-free; never a SEQUENCE).
//! - Lock order is fixed: the channel rows of a whole batch in byte order of
//!   their names, then the advisory locks of its idempotency keys in
//!   ascending order. Two batches (of this or another replica) never wait on
//!   each other in a cycle, whatever channel order their requests list.
//! - A key is read only while its advisory lock is held, so two appends with
//!   one key (any replica) are decided one after the other, the second
//!   against the committed first.
//! - Prune never waits on a row lock (`SKIP LOCKED`), so it cannot deadlock
//!   with appends evicting the same rows; what it skips goes next time.
//! - Migrations take sqlx's advisory lock, so replicas may start together.

mod handoff;
#[cfg(test)]
mod tests;
mod writer;

use crate::append::{self, Plan};
use crate::{
    AppendRequest, Appended, Claimed, History, OutboxDepth, OutboxItem, Settle, Store, StoreConfig,
    StoreError, StoredMessage, now_ms,
};
use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::{ChannelName, JsonData};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use writer::Job;

/// Schema, embedded at compile time (`build.rs` reruns on changes).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows deleted per prune statement.
const PRUNE_BATCH: i64 = 5000;

/// The PostgreSQL store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    cfg: StoreConfig,
    /// The writers' queue.
    jobs: mpsc::Sender<Job>,
    /// The writers' hand-off order and the commit sink.
    handoff: Arc<handoff::Handoff>,
}

impl PgStore {
    /// Connects (pool of up to 16, 5 s acquire timeout), applies the
    /// migrations (safe when several replicas start at once) and starts the
    /// writer tasks (needs a tokio runtime; they stop when the store drops).
    ///
    /// Errors: [`StoreError::Setup`] for a bad URL or a failed migration,
    /// [`StoreError::Unavailable`] when the server cannot be reached.
    pub async fn open(url: &str, cfg: StoreConfig) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Setup(format!("bad postgres URL: {e}")))?
            .application_name("herald");
        // One direct connection first: an unreachable server fails here at
        // once instead of after the pool's acquire timeout.
        sqlx::PgConnection::connect_with(&opts)
            .await
            .map_err(StoreError::Unavailable)?
            .close()
            .await
            .map_err(StoreError::Unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(StoreError::Unavailable)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Setup(format!("migrating postgres database: {e}")))?;
        let (jobs, queue) = mpsc::channel(writer::QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let handoff = Arc::new(handoff::Handoff::default());
        let settings = writer::Settings::new(&cfg);
        for _ in 0..writer::WRITERS {
            tokio::spawn(writer::run(
                pool.clone(),
                settings.clone(),
                queue.clone(),
                handoff.clone(),
            ));
        }
        Ok(Self {
            pool,
            cfg,
            jobs,
            handoff,
        })
    }

    /// Closes the pool, waiting for checked-out connections (a batch being
    /// committed) to return. Later appends fail with `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Deletes up to [`PRUNE_BATCH`] rows per statement until fewer remain;
    /// `sql` binds the cutoff, then the batch size. Returns the rows deleted.
    async fn delete_batches(&self, sql: &'static str, cutoff: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(sql)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PRUNE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl Store for PgStore {
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
        let (reply, answer) = oneshot::channel();
        let submitted = std::time::Instant::now();
        self.jobs
            .send(Job {
                req,
                plan,
                reply,
                submitted,
            })
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        // A writer answers every job it takes; a dropped sender means the
        // writers stopped (their task ended with the runtime).
        answer
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?
    }

    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<History, StoreError> {
        let cutoff = now_ms().saturating_sub(crate::millis(self.cfg.retention_max_age));
        // One snapshot for last_seq, first_seq and the page.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM channels WHERE name = $1")
            .bind(channel.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let last_seq = append::seq_from_db(last.unwrap_or(0))?;
        // Age-expired messages are gone for readers even before prune runs.
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM messages WHERE channel = $1 AND ts >= $2 ORDER BY seq LIMIT 1",
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
             WHERE channel = $1 AND seq > $2 AND ts >= $3 ORDER BY seq LIMIT $4",
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
                let data: Vec<u8> = row.try_get("data")?;
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
        let rows = sqlx::query("SELECT name, last_seq FROM channels WHERE name = ANY($1)")
            .bind(&names)
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
        let deleted = self
            .delete_batches(
                "DELETE FROM messages WHERE (channel, seq) IN \
                 (SELECT channel, seq FROM messages WHERE ts < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                msg_cutoff,
            )
            .await?;
        self.delete_batches(
            "DELETE FROM idempotency WHERE (publisher, key) IN \
             (SELECT publisher, key FROM idempotency WHERE created_ms < $1 \
              LIMIT $2 FOR UPDATE SKIP LOCKED)",
            key_cutoff,
        )
        .await?;
        tracing::debug!(deleted, "postgres prune");
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn enqueue(&self, items: Vec<OutboxItem>) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut conn = self.pool.acquire().await?;
        Ok(insert_outbox(&mut conn, &items, now_ms()).await?)
    }

    async fn claim(
        &self,
        endpoint: &str,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
        owner: &str,
    ) -> Result<Vec<Claimed>, StoreError> {
        // SKIP LOCKED: replicas claiming at once take disjoint rows; the
        // lease keeps them disjoint after the commit.
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET lease_ms = $3 + $4, lease_owner = $5 \
             WHERE id IN (SELECT id FROM webhook_outbox \
               WHERE endpoint = $1 AND next_ms <= $3 AND lease_ms <= $3 \
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, event_id, body, attempts, created_ms",
        )
        .bind(endpoint)
        .bind(i64::from(limit))
        .bind(now_ms)
        .bind(lease_ms)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Claimed {
                    row: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    body: r.try_get("body")?,
                    attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.sort_by_key(|c| c.row);
        Ok(out)
    }

    async fn settle(&self, row: i64, owner: &str, outcome: Settle) -> Result<bool, StoreError> {
        let done = match outcome {
            Settle::Done => {
                sqlx::query("DELETE FROM webhook_outbox WHERE id = $1 AND lease_owner = $2")
                    .bind(row)
                    .bind(owner)
                    .execute(&self.pool)
                    .await?
            }
            Settle::Retry { at_ms, attempts } => {
                sqlx::query(
                    "UPDATE webhook_outbox SET next_ms = $3, attempts = $4, lease_ms = 0, \
                     lease_owner = NULL WHERE id = $1 AND lease_owner = $2",
                )
                .bind(row)
                .bind(owner)
                .bind(at_ms)
                .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_depth(&self) -> Result<Vec<OutboxDepth>, StoreError> {
        let rows = sqlx::query(crate::append::OUTBOX_DEPTH_SQL)
            .fetch_all(&self.pool)
            .await?;
        crate::append::outbox_depth_rows(&rows)
    }

    fn set_commit_sink(&self, sink: Arc<dyn crate::CommitSink>) -> bool {
        self.handoff.set_sink(sink);
        true
    }
}

/// Inserts outbox rows (due at `now_ms`), skipping an (endpoint, event id)
/// already pending; returns the rows added.
pub(crate) async fn insert_outbox(
    conn: &mut sqlx::PgConnection,
    items: &[OutboxItem],
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let col = |f: fn(&OutboxItem) -> &str| items.iter().map(f).collect::<Vec<&str>>();
    let done = sqlx::query(
        "INSERT INTO webhook_outbox (endpoint, event_id, body, next_ms, created_ms) \
         SELECT e, i, b, $4, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(e, i, b) \
         ON CONFLICT (endpoint, event_id) DO NOTHING",
    )
    .bind(col(|i| &i.endpoint))
    .bind(col(|i| &i.event_id))
    .bind(col(|i| &i.body))
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
