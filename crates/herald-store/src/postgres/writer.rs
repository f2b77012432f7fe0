//! The PostgreSQL writers: [`WRITERS`] tasks share this store's append queue
//! and each commits the appends queued meanwhile together (group commit).
//!
//! [`PgStore`](super::PgStore) sends each append as a [`Job`] with a oneshot
//! reply over a bounded channel (awaiting a full channel is the
//! backpressure). A writer takes everything queued, up to [`MAX_BATCH`], and
//! runs it as one transaction on its connection ([`Conn`]: kept from batch
//! to batch), in a fixed number of round trips whatever the batch size:
//!
//! ```text
//! BEGIN
//!   lock every channel of the batch: one upsert, byte-sorted names, RETURNING last_seq
//!   [lock every key of the batch: pg_advisory_xact_lock, sorted; read their rows]
//!   take a hand-off ticket (handoff.rs)
//!   judge and assign seqs in memory, job by job
//!   one statement: INSERT all messages, UPDATE last_seq, [evict older rows]
//!   [evict this batch's own rows, when it passes the bound: its own DELETE]
//!   [UPSERT all key rows]; [INSERT webhook events]
//! COMMIT, then answer every job (stored ones through the commit sink, in
//! ticket order, when one is set)
//! ```
//!
//! Invariants:
//! - Lock order, the same in every replica and every writer: channel rows
//!   in byte order of their names (one `INSERT .. SELECT FROM unnest(sorted)
//!   .. ON CONFLICT DO UPDATE`, which takes the rows in array order), then
//!   the transaction-level advisory locks of the batch's idempotency keys in
//!   ascending order. No two batches wait on each other in a cycle. Prune
//!   never waits (`SKIP LOCKED`).
//! - A channel's seq comes from its `last_seq`, read under the row lock and
//!   written back in the same transaction as the messages: gap-free across
//!   replicas, and a rollback undoes everything.
//! - A key's row is read only once its advisory lock is held, so it shows
//!   the last committed append with that key (READ COMMITTED: each
//!   statement sees the latest commits). Within a batch, a later job sees
//!   the row an earlier one wrote (kept in memory): a retry in the same
//!   batch is a duplicate, other data a conflict.
//! - A conflict or a corrupt key row fails that job only, decided before it
//!   takes a seq: the in-memory counters advance only for appends that are
//!   stored. A database error in the batch's writes (e.g. a message row in
//!   the way) rolls the batch back, and its jobs run again one per
//!   transaction, so only the culprit fails. A serialization failure or
//!   deadlock (40001, 40P01) retries the batch once. Anything else (connection
//!   lost, a failed `COMMIT`) fails every job of the batch with a retryable
//!   [`StoreError::Unavailable`]: nothing is retried whose commit may have
//!   happened.
//! - Retention by count: a batch evicts, per channel it wrote, the seqs it
//!   moved past `last_seq - keep`, i.e. `(old bound, new bound]`; the first
//!   eviction of a channel after the store opened starts from 0 ([`Swept`]
//!   says why: dead index entries).
//! - Answers are sent only after `COMMIT` returned. With a commit sink
//!   (`Store::set_commit_sink`), the stored appends of a batch go to it in
//!   one call, in job order, and batches in the order of their tickets: per
//!   channel, ascending seq (handoff.rs says why).
//! - A job whose caller is gone before its batch starts is skipped; once the
//!   batch started it is committed like the others.

use super::handoff::{Handoff, Ticket};
use crate::append::{self, Plan, Remembered, Verdict};
use crate::{AppendRequest, Appended, StoreConfig, StoreError};
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Connection as _, Postgres, Row};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Most appends committed in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// Appends waiting for a writer before `append` waits for room.
pub(super) const QUEUE: usize = 1024;

/// Writer tasks per store: while one waits for its `COMMIT`, the other
/// builds the next batch.
pub(super) const WRITERS: usize = 2;

/// First half of the advisory lock ids of idempotency keys (`herd`); the
/// two-int4 key space never meets sqlx's one-bigint migration lock.
const KEY_LOCK_CLASS: i32 = 0x6865_7264;

/// One append for a writer.
#[derive(Debug)]
pub(super) struct Job {
    pub req: AppendRequest,
    pub plan: Plan,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
    /// When `append` queued it (the commit sink's commit-time metric).
    pub submitted: Instant,
}

/// The queue the writers share.
pub(super) type Queue = Arc<Mutex<mpsc::Receiver<Job>>>;

/// What a writer needs of the store's settings (shared by the writers).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// Messages kept per channel.
    keep: u64,
    /// How long a key is remembered.
    window: Duration,
    /// Channels evicted up to date by this store (see [`Swept`]).
    swept: Arc<Swept>,
}

impl Settings {
    pub(super) fn new(cfg: &StoreConfig) -> Self {
        Self {
            keep: cfg.retention_max_messages,
            window: cfg.idempotency_window,
            swept: Arc::new(Swept::default()),
        }
    }
}

/// Channels known to hold no message at or below `last_seq - keep`: a
/// batch of this store evicted them through their bound since it opened.
///
/// Why: an eviction `DELETE .. WHERE seq <= bound` walks the channel's
/// primary-key range from its first entry, and every row evicted before
/// stays there as a dead entry until VACUUM. Once a channel is at its
/// retention bound each batch evicts a few more, so each eviction walked
/// all the earlier ones again: at 10,000 kept per channel, 16 channels and
/// ~25,000 messages/s, commits went from ~5 ms to ~60 ms apart within 3 s
/// of the first eviction (the ingest bench fell from ~25,000 to ~3,500/s,
/// benches/RESULTS.md). For a swept channel a batch evicts only
/// `(old last_seq - keep, new last_seq - keep]`, which starts past the
/// dead entries. The first eviction of a channel after the store opened
/// starts from the beginning, so rows an earlier configuration kept (a
/// larger `retention_max_messages` before a restart) still go when the
/// channel is next written. Batches of other replicas evict their own
/// ranges, so together a channel's batches cover everything up to its
/// bound (given one `retention_max_messages` across replicas; with
/// several, the larger ones' rows stay until the age retention).
#[derive(Debug, Default)]
pub(super) struct Swept {
    names: std::sync::Mutex<HashSet<String>>,
}

impl Swept {
    /// Names remembered at most; past it the set starts over (a channel
    /// then sweeps its whole range once more: correct, one walk slower).
    const MAX: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers channels whose eviction through their bound committed.
    fn insert<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut set = self.lock();
        for n in names {
            if set.len() >= Self::MAX {
                set.clear();
            }
            if !set.contains(n) {
                set.insert(n.to_owned());
            }
        }
    }
}

/// How long a writer keeps its connection without a batch: past it the
/// connection goes back to the pool, and the next batch takes one the pool
/// has pinged.
pub(super) const KEEP_IDLE: Duration = Duration::from_secs(1);

/// How long a writer keeps one connection at most, however busy: then it
/// goes back to the pool, whose `max_lifetime` (30 min) applies there, so
/// a busy writer's connection is renewed like every other.
pub(super) const KEEP_MAX: Duration = Duration::from_secs(30 * 60);

/// A writer's connection, kept from batch to batch. sqlx's pool pings a
/// connection when it hands it out and again when it takes it back: two
/// round trips on top of a batch's four (`BEGIN`, upsert, write, `COMMIT`)
/// if each batch took one from the pool. Kept only while batches come at
/// least every [`KEEP_IDLE`] (a connection the server closed meanwhile,
/// e.g. a PostgreSQL restart, is then found by the pool's ping, not by a
/// batch) and for [`KEEP_MAX`] at most; dropped after a batch that failed
/// on it (connection lost, a failed `COMMIT`), and given back when the
/// pool closes ([`PgStore::close`](super::PgStore::close) waits for it).
struct Conn {
    pool: PgPool,
    held: Option<Held>,
}

/// The kept connection, when it was taken from the pool, and when its last
/// batch began.
struct Held {
    conn: PoolConnection<Postgres>,
    taken: Instant,
    used: Instant,
}

impl Conn {
    /// The held connection (`true`: kept from an earlier batch), or one
    /// from the pool.
    async fn get(&mut self) -> Result<(&mut PoolConnection<Postgres>, bool), sqlx::Error> {
        if self.pool.is_closed() {
            self.held = None;
            return Err(sqlx::Error::PoolClosed);
        }
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.used.elapsed() > KEEP_IDLE || h.taken.elapsed() > KEEP_MAX)
        {
            self.held = None;
        }
        let now = Instant::now();
        let (held, kept) = match self.held.take() {
            Some(h) => (Held { used: now, ..h }, true),
            None => {
                let conn = self.pool.acquire().await?;
                let h = Held {
                    conn,
                    taken: now,
                    used: now,
                };
                (h, false)
            }
        };
        Ok((&mut self.held.insert(held).conn, kept))
    }

    /// Gives the connection back to the pool (which checks it).
    fn release(&mut self) {
        self.held = None;
    }
}

/// One writer: runs until every sender is gone.
pub(super) async fn run(pool: PgPool, settings: Settings, queue: Queue, handoff: Arc<Handoff>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let closed = pool.close_event();
    tokio::pin!(closed);
    let mut conn = Conn { pool, held: None };
    loop {
        let taken = tokio::select! {
            // `recv_many` is cancel-safe: nothing is taken if `closed` wins.
            n = async { queue.lock().await.recv_many(&mut batch, MAX_BATCH).await } => n,
            () = &mut closed, if conn.held.is_some() => {
                conn.release();
                continue;
            }
        };
        if taken == 0 {
            return;
        }
        batch.retain(|j: &Job| !j.reply.is_closed());
        if !batch.is_empty() {
            commit(&mut conn, &settings, &handoff, std::mem::take(&mut batch)).await;
        }
    }
}

/// Why a batch attempt did not commit.
enum Failure {
    /// A statement before `COMMIT` failed with a database error: the batch is
    /// rolled back, and some job may be the cause.
    Statement(sqlx::Error),
    /// `BEGIN` failed: nothing of the batch reached the database.
    Begin(sqlx::Error),
    /// Anything else: connection or `COMMIT` failed; or stored channel data
    /// is unreadable.
    Batch(StoreError),
}

/// A serialization failure or deadlock: the same batch may pass next time.
fn transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40001" | "40P01")))
}

/// What every job of a failed batch is told. Retryable: nothing was stored.
#[derive(Debug, thiserror::Error)]
#[error("write transaction rolled back: {0}")]
struct RolledBack(String);

fn rolled_back(why: &str) -> StoreError {
    StoreError::Unavailable(sqlx::Error::AnyDriverError(Box::new(RolledBack(
        why.to_string(),
    ))))
}

/// Commits `jobs` (non-empty) and answers every one.
async fn commit(conn: &mut Conn, settings: &Settings, handoff: &Arc<Handoff>, jobs: Vec<Job>) {
    let mut retried = false;
    let mut fresh = false;
    let failure = loop {
        let (tried, kept) = match conn.get().await {
            Ok((c, kept)) => (attempt(c, settings, handoff, &jobs).await, kept),
            Err(e) => (Err(Failure::Batch(e.into())), false),
        };
        if matches!(tried, Err(Failure::Batch(_) | Failure::Begin(_))) {
            // The connection may be broken: the pool checks it.
            conn.release();
        }
        match tried {
            // A kept connection the server closed since the last batch (a
            // restart): once more on one the pool has checked.
            Err(Failure::Begin(e)) if kept && !fresh => {
                tracing::debug!(error = %e, "postgres connection lost while kept; batch retried");
                fresh = true;
            }
            Err(Failure::Begin(e)) => break e.into(),
            Ok((results, ticket)) => {
                tracing::trace!(size = jobs.len(), "postgres batch committed");
                ticket.deliver(jobs.into_iter().zip(results).collect());
                return;
            }
            Err(Failure::Statement(e)) if transient(&e) && !retried => {
                tracing::debug!(error = %e, "postgres batch retried");
                retried = true;
            }
            Err(Failure::Statement(e)) if jobs.len() > 1 && !transient(&e) => {
                // Find the culprit: one transaction per job, in order.
                tracing::warn!(size = jobs.len(), error = %e, "postgres batch split");
                for job in jobs {
                    Box::pin(commit(conn, settings, handoff, vec![job])).await;
                }
                return;
            }
            Err(Failure::Statement(e)) => break StoreError::from(e),
            Err(Failure::Batch(e)) => break e,
        }
    };
    tracing::warn!(size = jobs.len(), error = %failure, "postgres batch rolled back");
    let mut jobs = jobs;
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            let _ = job.reply.send(Err(failure));
        }
        return;
    }
    let why = failure.to_string();
    for job in jobs {
        let _ = job.reply.send(Err(rolled_back(&why)));
    }
}

/// A key's row to write at the end of the batch.
struct KeyRow<'a> {
    publisher: &'a str,
    key: &'a str,
    rem: Remembered,
}

/// One transaction for `jobs`; on success, one result per job and the
/// batch's hand-off turn (a failed attempt settles its turn by dropping it).
async fn attempt(
    conn: &mut PoolConnection<Postgres>,
    settings: &Settings,
    handoff: &Arc<Handoff>,
    jobs: &[Job],
) -> Result<(Vec<Result<Appended, StoreError>>, Ticket), Failure> {
    let stmt = |e: sqlx::Error| match e {
        sqlx::Error::Database(_) => Failure::Statement(e),
        other => Failure::Batch(other.into()),
    };
    let mut tx = conn.begin().await.map_err(Failure::Begin)?;

    // Channel rows, locked in byte order (BTreeSet of &str), counters read.
    let names: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.plan.lock_order.iter().map(|c| c.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = sqlx::query(
        "INSERT INTO channels (name, last_seq) SELECT n, 0 FROM unnest($1::text[]) AS n \
         ON CONFLICT (name) DO UPDATE SET last_seq = channels.last_seq \
         RETURNING name, last_seq",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await
    .map_err(stmt)?;
    let mut counters: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("name").map_err(|e| Failure::Batch(e.into()))?;
        let last: i64 = row
            .try_get("last_seq")
            .map_err(|e| Failure::Batch(e.into()))?;
        append::seq_from_db(last).map_err(Failure::Batch)?;
        counters.insert(name, last);
    }
    let start = counters.clone();

    // Keys: advisory locks in ascending order, then their rows.
    let keys: BTreeSet<(&str, &str)> = jobs
        .iter()
        .filter_map(|j| j.req.key.as_deref().map(|k| (j.req.publisher.as_str(), k)))
        .collect();
    let mut remembered: HashMap<(&str, &str), Result<Remembered, String>> = HashMap::new();
    if !keys.is_empty() {
        let locks: Vec<i32> = keys
            .iter()
            .map(|(p, k)| key_lock(p, k))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
            .bind(KEY_LOCK_CLASS)
            .bind(&locks)
            .execute(&mut *tx)
            .await
            .map_err(stmt)?;
        let (pubs, ks): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT publisher, key, id, ts, fingerprint, seqs, created_ms FROM idempotency \
             WHERE (publisher, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&pubs)
        .bind(&ks)
        .fetch_all(&mut *tx)
        .await
        .map_err(stmt)?;
        for row in rows {
            let (p, k) = (
                row.try_get::<String, _>("publisher"),
                row.try_get::<String, _>("key"),
            );
            let (Ok(p), Ok(k)) = (p, k) else {
                return Err(Failure::Batch(StoreError::Corrupt(
                    "idempotency row without publisher or key".into(),
                )));
            };
            // Map back to the borrowed pair of the batch.
            if let Some(&pair) = keys.iter().find(|&&(kp, kk)| kp == p && kk == k) {
                remembered.insert(pair, read_remembered(&row).map_err(|e| e.to_string()));
            }
        }
    }

    // Every lock is held: from here on nothing waits for another
    // transaction, and a batch writing one of these channels after us can
    // only take its ticket after our COMMIT (handoff.rs).
    let ticket = handoff.ticket();

    // Judge and assign, job by job, in memory.
    let mut results = Vec::with_capacity(jobs.len());
    let mut msgs = Messages::default();
    let mut key_rows: Vec<KeyRow<'_>> = Vec::new();
    let mut outbox = Vec::new();
    for job in jobs {
        let (req, plan) = (&job.req, &job.plan);
        let pair = req.key.as_deref().map(|k| (req.publisher.as_str(), k));
        if let Some(pair) = pair {
            match remembered.get(&pair) {
                Some(Err(why)) => {
                    results.push(Err(StoreError::Corrupt(why.clone())));
                    continue;
                }
                Some(Ok(rem)) => match append::judge(rem, plan, req.ts, settings.window) {
                    Ok(Verdict::Duplicate(found)) => {
                        results.push(Ok(found));
                        continue;
                    }
                    Ok(Verdict::Expired) => {} // overwritten below
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                },
                None => {}
            }
        }
        let mut assigned = Vec::with_capacity(plan.lock_order.len());
        for ch in &plan.lock_order {
            let Some(last) = counters.get_mut(ch.as_str()) else {
                return Err(Failure::Batch(StoreError::Corrupt(format!(
                    "channel {ch} was not locked"
                ))));
            };
            *last += 1;
            msgs.push(ch.as_str(), *last, req);
            assigned.push((
                ch.clone(),
                append::seq_from_db(*last).map_err(Failure::Batch)?,
            ));
        }
        outbox.extend(append::outbox_rows(req, &assigned));
        let seqs = plan.in_request_order(&assigned);
        if let Some((p, k)) = pair {
            let rem = Remembered {
                id: req.id.clone(),
                ts: req.ts,
                fingerprint: plan.fingerprint.clone(),
                seqs: append::encode_seqs(&seqs),
                created_ms: req.ts,
            };
            key_rows.retain(|r| (r.publisher, r.key) != (p, k));
            key_rows.push(KeyRow {
                publisher: p,
                key: k,
                rem: rem.clone(),
            });
            remembered.insert((p, k), Ok(rem));
        }
        results.push(Ok(Appended {
            id: req.id.clone(),
            ts: req.ts,
            seqs,
            duplicate: false,
        }));
    }

    // The counters that moved, and what they move past the retention bound.
    let mut moved: Vec<(&str, i64)> = counters
        .iter()
        .filter(|(n, v)| start.get(n.as_str()) != Some(v))
        .map(|(n, v)| (n.as_str(), *v))
        .collect();
    moved.sort_unstable();
    // Evict (lower, bound]: from the old bound for a channel already
    // swept by this store, else from the start (`Swept`).
    let mut evict = Evictions::default();
    {
        let swept = settings.swept.lock();
        for &(n, v) in &moved {
            let Some(bound) = append::evict_through(v, settings.keep) else {
                continue;
            };
            let old = start.get(n).copied().unwrap_or(0);
            let lower = if swept.contains(n) {
                append::evict_through(old, settings.keep).unwrap_or(0)
            } else {
                0
            };
            if bound > lower {
                evict.name.push(n);
                evict.lower.push(lower);
                evict.bound.push(bound);
                // A bound past the old `last_seq` evicts rows this batch
                // writes: the DELETE must see them (below).
                evict.reaches_new |= bound > old;
            }
        }
    }

    // The batch's writes. Messages, counters and (when it only reaches
    // rows committed before) the eviction go in one statement: one round
    // trip, not three. Its parts run on one snapshot, which is why an
    // eviction that reaches this batch's own rows is a statement of its
    // own after it (`reaches_new`: more than `keep` appends to a channel
    // in one batch). `moved` is non-empty exactly when `msgs` is.
    if !msgs.channel.is_empty() {
        let (ns, vs): (Vec<&str>, Vec<i64>) = moved.iter().copied().unzip();
        let with_evict = !evict.name.is_empty() && !evict.reaches_new;
        let sql = if with_evict {
            WRITE_MESSAGES_COUNTERS_EVICT
        } else {
            WRITE_MESSAGES_COUNTERS
        };
        let q = sqlx::query(sql)
            .bind(&msgs.channel)
            .bind(&msgs.seq)
            .bind(&msgs.id)
            .bind(&msgs.ts)
            .bind(&msgs.sender)
            .bind(&msgs.data)
            .bind(&ns)
            .bind(&vs);
        let q = if with_evict {
            q.bind(&evict.name).bind(&evict.lower).bind(&evict.bound)
        } else {
            q
        };
        q.execute(&mut *tx).await.map_err(stmt)?;
        if evict.reaches_new {
            sqlx::query(EVICT)
                .bind(&evict.name)
                .bind(&evict.lower)
                .bind(&evict.bound)
                .execute(&mut *tx)
                .await
                .map_err(stmt)?;
        }
    }
    if !key_rows.is_empty() {
        let col = |f: for<'r> fn(&'r KeyRow<'_>) -> &'r str| {
            key_rows.iter().map(f).collect::<Vec<&str>>()
        };
        let num = |f: fn(&KeyRow<'_>) -> i64| key_rows.iter().map(f).collect::<Vec<i64>>();
        sqlx::query(
            "INSERT INTO idempotency (publisher, key, id, ts, fingerprint, seqs, created_ms) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
             $6::text[], $7::int8[]) \
             ON CONFLICT (publisher, key) DO UPDATE SET id = excluded.id, ts = excluded.ts, \
             fingerprint = excluded.fingerprint, seqs = excluded.seqs, \
             created_ms = excluded.created_ms",
        )
        .bind(col(|r| r.publisher))
        .bind(col(|r| r.key))
        .bind(col(|r| &r.rem.id))
        .bind(num(|r| r.rem.ts))
        .bind(col(|r| &r.rem.fingerprint))
        .bind(col(|r| &r.rem.seqs))
        .bind(num(|r| r.rem.created_ms))
        .execute(&mut *tx)
        .await
        .map_err(stmt)?;
    }
    if !outbox.is_empty() {
        // In the messages' transaction: a committed message never lacks
        // its webhook events.
        super::insert_outbox(&mut tx, &outbox, crate::now_ms())
            .await
            .map_err(stmt)?;
    }
    tx.commit().await.map_err(|e| Failure::Batch(e.into()))?;
    // Only now: a rolled-back eviction evicted nothing.
    settings.swept.insert(evict.name.iter().copied());
    Ok((results, ticket))
}

/// The eviction of `(lower, bound]` per channel, by column, with the three
/// arrays' placeholders given: one text for the eviction of its own and the
/// one inside the write statement.
macro_rules! evict_sql {
    ($names:literal, $lower:literal, $bound:literal) => {
        concat!(
            "DELETE FROM messages m USING unnest(",
            $names,
            "::text[], ",
            $lower,
            "::int8[], ",
            $bound,
            "::int8[]) AS e(n, lo, b) WHERE m.channel = e.n AND m.seq > e.lo AND m.seq <= e.b"
        )
    };
}

/// The write statement: a `WITH` part setting the channels' new
/// `last_seq` (`$7`, `$8`), any further `WITH` parts given, then the
/// insert of the batch's messages (`$1`..`$6`, by column).
macro_rules! write_sql {
    ($($more:expr),*) => {
        concat!(
            "WITH counters AS (UPDATE channels SET last_seq = u.v \
             FROM unnest($7::text[], $8::int8[]) AS u(n, v) WHERE channels.name = u.n)",
            $(", ", $more,)*
            " INSERT INTO messages (channel, seq, id, ts, sender, data) SELECT * FROM \
             unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::bytea[])"
        )
    };
}

/// A batch's messages and its channels' new `last_seq`, in one statement.
const WRITE_MESSAGES_COUNTERS: &str = write_sql!();

/// [`WRITE_MESSAGES_COUNTERS`] and the evictions (`$9`..`$11`) of rows
/// committed before the batch: the statement's parts share one snapshot, so
/// the `DELETE` does not see the rows the `INSERT` adds (it must not need
/// to).
const WRITE_MESSAGES_COUNTERS_EVICT: &str =
    write_sql!(concat!("evicted AS (", evict_sql!("$9", "$10", "$11"), ")"));

/// Evicts `(lower, bound]` of each channel (`$1`..`$3`, by column).
const EVICT: &str = evict_sql!("$1", "$2", "$3");

/// The evictions of a batch, by column (one `unnest` delete).
#[derive(Default)]
struct Evictions<'a> {
    name: Vec<&'a str>,
    lower: Vec<i64>,
    bound: Vec<i64>,
    /// Some bound is past its channel's `last_seq` before the batch.
    reaches_new: bool,
}

/// The message rows of a batch, by column (one `unnest` insert).
#[derive(Default)]
struct Messages<'a> {
    channel: Vec<&'a str>,
    seq: Vec<i64>,
    id: Vec<&'a str>,
    ts: Vec<i64>,
    sender: Vec<Option<&'a str>>,
    data: Vec<&'a [u8]>,
}

impl<'a> Messages<'a> {
    fn push(&mut self, channel: &'a str, seq: i64, req: &'a AppendRequest) {
        self.channel.push(channel);
        self.seq.push(seq);
        self.id.push(&req.id);
        self.ts.push(req.ts);
        self.sender.push(req.from.as_deref());
        self.data.push(req.data.as_bytes());
    }
}

/// Reads a key's row.
fn read_remembered(row: &PgRow) -> Result<Remembered, StoreError> {
    Ok(Remembered {
        id: row.try_get("id")?,
        ts: row.try_get("ts")?,
        fingerprint: row.try_get("fingerprint")?,
        seqs: row.try_get("seqs")?,
        created_ms: row.try_get("created_ms")?,
    })
}

/// Second half of a key's advisory lock id: the first 4 bytes of sha256 of
/// the length-prefixed publisher and the key. Two keys sharing one only
/// wait for each other.
fn key_lock(publisher: &str, key: &str) -> i32 {
    let mut h = Sha256::new();
    h.update(publisher.len().to_be_bytes());
    h.update(publisher.as_bytes());
    h.update(key.as_bytes());
    let d = h.finalize();
    i32::from_be_bytes([d[0], d[1], d[2], d[3]])
}
