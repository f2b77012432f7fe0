//! The embedded store: one SQLite file in WAL mode (`herald dev`, single-node
//! ingest).
//!
//! Invariants:
//! - Every write runs in `BEGIN IMMEDIATE`: a deferred transaction that reads
//!   and then writes fails with `SQLITE_BUSY_SNAPSHOT` under concurrent
//!   writers whatever the busy timeout (CRATES.md, sqlx). Writers of this
//!   process also queue on an in-process lock first, so they take turns
//!   without polling SQLite's busy handler; `busy_timeout` (5 s) covers
//!   other processes on the same file.
//! - A channel's seq is raised by an upsert in the same transaction as the
//!   message insert (gap-free, see `lib.rs`).
//! - Reads of one history page run in one read transaction, so `last_seq`,
//!   `first_seq` and the messages are one snapshot.
//!
//! `synchronous = NORMAL` with WAL survives a process crash, not a power
//! loss; that is the embedded default's trade.

use crate::append::{self, Plan, Remembered, Verdict};
use crate::{
    AppendRequest, Appended, History, Store, StoreConfig, StoreError, StoredMessage, now_ms,
};
use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::{ChannelName, JsonData};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::time::Duration;

/// Schema, embedded at compile time (`build.rs` reruns on changes).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows deleted per prune transaction, so a big prune never holds the write
/// lock for long.
const PRUNE_BATCH: i64 = 1000;

/// The SQLite store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    cfg: StoreConfig,
    /// Serialises this process's write transactions (SQLite has one writer;
    /// waiting here is FIFO and costs no polling). Held across awaits by
    /// design, hence tokio's mutex.
    write: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating when missing, parent directory included) the database
    /// file at `path` and applies the migrations.
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
        // Readers run in parallel under WAL; writers take turns anyway.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Setup(format!("opening sqlite database {path}: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Setup(format!("migrating sqlite database {path}: {e}")))?;
        Ok(Self {
            pool,
            cfg,
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// Closes the pool, waiting for connections to finish (WAL checkpoint).
    pub async fn close(&self) {
        self.pool.close().await;
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
        let _turn = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;

        if let Some(key) = &req.key {
            let row = sqlx::query(
                "SELECT id, ts, fingerprint, seqs, created_ms FROM idempotency \
                 WHERE publisher = ? AND key = ?",
            )
            .bind(&req.publisher)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                None => {
                    sqlx::query(
                        "INSERT INTO idempotency (publisher, key, id, ts, fingerprint, seqs, created_ms) \
                         VALUES (?, ?, ?, ?, ?, '[]', ?)",
                    )
                    .bind(&req.publisher)
                    .bind(key)
                    .bind(&req.id)
                    .bind(req.ts)
                    .bind(&plan.fingerprint)
                    .bind(req.ts)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(row) => {
                    let rem = Remembered {
                        id: row.try_get("id")?,
                        ts: row.try_get("ts")?,
                        fingerprint: row.try_get("fingerprint")?,
                        seqs: row.try_get("seqs")?,
                        created_ms: row.try_get("created_ms")?,
                    };
                    match append::judge(&rem, &plan, req.ts, self.cfg.idempotency_window)? {
                        Verdict::Duplicate(found) => {
                            tx.rollback().await?;
                            return Ok(found);
                        }
                        Verdict::Expired => {
                            sqlx::query(
                                "UPDATE idempotency SET id = ?, ts = ?, fingerprint = ?, seqs = '[]', \
                                 created_ms = ? WHERE publisher = ? AND key = ?",
                            )
                            .bind(&req.id)
                            .bind(req.ts)
                            .bind(&plan.fingerprint)
                            .bind(req.ts)
                            .bind(&req.publisher)
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
            }
        }

        let data = std::str::from_utf8(req.data.as_bytes())
            .map_err(|_| StoreError::Corrupt("data is not UTF-8 JSON text".into()))?;
        let mut assigned = Vec::with_capacity(plan.lock_order.len());
        for ch in &plan.lock_order {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO channels (name, last_seq) VALUES (?, 1) \
                 ON CONFLICT (name) DO UPDATE SET last_seq = channels.last_seq + 1 \
                 RETURNING last_seq",
            )
            .bind(ch.as_str())
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO messages (channel, seq, id, ts, sender, data) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(ch.as_str())
            .bind(seq)
            .bind(&req.id)
            .bind(req.ts)
            .bind(req.from.as_deref())
            .bind(data)
            .execute(&mut *tx)
            .await?;
            if let Some(bound) = append::evict_through(seq, self.cfg.retention_max_messages) {
                sqlx::query("DELETE FROM messages WHERE channel = ? AND seq <= ?")
                    .bind(ch.as_str())
                    .bind(bound)
                    .execute(&mut *tx)
                    .await?;
            }
            assigned.push((ch.clone(), append::seq_from_db(seq)?));
        }
        let seqs = plan.in_request_order(&assigned);

        if let Some(key) = &req.key {
            sqlx::query("UPDATE idempotency SET seqs = ? WHERE publisher = ? AND key = ?")
                .bind(append::encode_seqs(&seqs))
                .bind(&req.publisher)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Appended {
            id: req.id,
            ts: req.ts,
            seqs,
            duplicate: false,
        })
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl SqliteStore {
    /// One bounded delete (`sql` binds the cutoff, then the batch size) in its
    /// own write transaction; returns the rows deleted.
    async fn write_batch(&self, sql: &'static str, cutoff: i64) -> Result<u64, StoreError> {
        let _turn = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query(sql)
            .bind(cutoff)
            .bind(PRUNE_BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
