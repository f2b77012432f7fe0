//! The SQLite writer: one task owns this store's only write connection and
//! commits the appends queued meanwhile together (group commit).
//!
//! [`SqliteStore`](super::SqliteStore) sends each write as a [`Job`] with a
//! oneshot reply over a bounded channel (awaiting a full channel is the
//! backpressure). The writer takes everything queued, up to [`MAX_BATCH`],
//! and runs it as one transaction:
//!
//! ```text
//! BEGIN IMMEDIATE
//!   per append: [SELECT its key]  SAVEPOINT append; writes...; RELEASE append
//!   per prune step: one bounded DELETE
//! COMMIT, then answer every job (stored appends through the commit sink,
//! in one call per batch, when one is set)
//! ```
//!
//! Invariants:
//! - Answers are sent only after `COMMIT` returned: an acknowledged append is
//!   committed exactly as before (WAL, `synchronous = NORMAL`). When `BEGIN`
//!   or `COMMIT` fails, every job of the batch gets an error (none is
//!   durable). With a commit sink (`Store::set_commit_sink`), a batch's
//!   stored appends go to it in one call, in job order; batches follow one
//!   another (one writer), so per channel the sink sees ascending seqs.
//! - A channel's seq is still raised by the upsert in the transaction that
//!   inserts the message; the jobs of a batch run one after another, so two
//!   appends to one channel get consecutive seqs, and a later job sees the
//!   rows of an earlier one (a retry in the same batch is a duplicate).
//! - Each append runs inside its own savepoint: a `Conflict` (decided before
//!   anything is written) or an SQL error (`ROLLBACK TO`) affects that
//!   append only. An error outside a savepoint, or a savepoint that cannot be
//!   rolled back to (SQLite rolled the whole transaction back, e.g. on an
//!   I/O error), aborts the batch: everything is rolled back and every job
//!   answered with an error, so nothing runs outside the transaction.
//! - One round trip to sqlx's connection thread per append without a key
//!   (two with one: the key is read before deciding), plus `BEGIN` and
//!   `COMMIT` per batch. Each append's writes are one multi-statement query
//!   whose text depends only on its channel count and whether it has a key,
//!   so sqlx's per-connection statement cache prepares it once.
//! - A job whose caller is gone (its future was dropped) before the batch
//!   starts is skipped; once the batch started it is committed like the
//!   others, which a caller that gave up cannot tell from a lost answer.

use crate::append::{self, Plan, Remembered, Verdict};
use crate::commit::SinkSlot;
use crate::{
    AppendRequest, Appended, Claimed, CommitSink, Committed, OutboxItem, Settle, StoreConfig,
    StoreError,
};
use herald_protocol::JsonData;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row, Sqlite, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction. Bounds how long one transaction
/// holds SQLite's write lock (other processes on the file, readers'
/// checkpoints) and how long the first job of a batch waits for the last.
pub(super) const MAX_BATCH: usize = 256;

/// Jobs waiting for the writer before `append` waits for room.
pub(super) const QUEUE: usize = 1024;

/// One write for the writer task.
#[derive(Debug)]
pub(super) enum Job {
    /// Persist a publish.
    Append {
        req: AppendRequest,
        plan: Plan,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
        /// When `append` queued it (the commit sink's commit-time metric).
        submitted: Instant,
    },
    /// One bounded delete (`sql` binds the cutoff, then the limit); answers
    /// the rows deleted.
    Delete {
        sql: &'static str,
        cutoff: i64,
        limit: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// A webhook outbox write (enqueue, claim, settle).
    Outbox {
        op: OutboxOp,
        reply: oneshot::Sender<Result<OutboxDone, StoreError>>,
    },
    /// Finish what is queued before, close the connection, stop.
    Close { reply: oneshot::Sender<()> },
}

/// An outbox write ([`crate::Store::enqueue`], `claim`, `settle`).
#[derive(Debug)]
pub(super) enum OutboxOp {
    Enqueue(Vec<OutboxItem>),
    Claim {
        endpoint: String,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
        owner: String,
    },
    Settle {
        row: i64,
        owner: String,
        outcome: Settle,
    },
}

/// An outbox write's answer.
#[derive(Debug)]
pub(super) enum OutboxDone {
    Added(u64),
    Claimed(Vec<Claimed>),
    Settled(bool),
}

/// Runs one outbox write inside the batch's transaction.
async fn outbox_op(
    tx: &mut Transaction<'_, Sqlite>,
    op: &OutboxOp,
) -> Result<OutboxDone, sqlx::Error> {
    match op {
        OutboxOp::Enqueue(items) => Ok(OutboxDone::Added(
            insert_outbox(tx, items, crate::now_ms()).await?,
        )),
        OutboxOp::Claim {
            endpoint,
            limit,
            now_ms,
            lease_ms,
            owner,
        } => {
            let rows = sqlx::query(
                "UPDATE webhook_outbox SET lease_ms = ?, lease_owner = ? WHERE id IN \
                 (SELECT id FROM webhook_outbox WHERE endpoint = ? AND next_ms <= ? \
                  AND lease_ms <= ? ORDER BY id LIMIT ?) \
                 RETURNING id, event_id, body, attempts, created_ms",
            )
            .bind(now_ms.saturating_add(*lease_ms))
            .bind(owner)
            .bind(endpoint)
            .bind(now_ms)
            .bind(now_ms)
            .bind(i64::from(*limit))
            .fetch_all(&mut **tx)
            .await?;
            let mut out = rows
                .iter()
                .map(|r| {
                    Ok(Claimed {
                        row: r.try_get("id")?,
                        event_id: r.try_get("event_id")?,
                        body: r.try_get("body")?,
                        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                        created_ms: r.try_get("created_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            out.sort_by_key(|c| c.row);
            Ok(OutboxDone::Claimed(out))
        }
        OutboxOp::Settle {
            row,
            owner,
            outcome,
        } => {
            let done = match outcome {
                Settle::Done => {
                    sqlx::query("DELETE FROM webhook_outbox WHERE id = ? AND lease_owner = ?")
                        .bind(row)
                        .bind(owner)
                        .execute(&mut **tx)
                        .await?
                }
                Settle::Retry { at_ms, attempts } => {
                    sqlx::query(
                        "UPDATE webhook_outbox SET next_ms = ?, attempts = ?, lease_ms = 0, \
                         lease_owner = NULL WHERE id = ? AND lease_owner = ?",
                    )
                    .bind(at_ms)
                    .bind(i64::from(*attempts))
                    .bind(row)
                    .bind(owner)
                    .execute(&mut **tx)
                    .await?
                }
            };
            Ok(OutboxDone::Settled(done.rows_affected() == 1))
        }
    }
}

/// Inserts outbox rows due at `now_ms`, skipping an (endpoint, event id)
/// already pending; returns the rows added.
async fn insert_outbox(
    tx: &mut Transaction<'_, Sqlite>,
    items: &[OutboxItem],
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut added = 0;
    for i in items {
        added += sqlx::query(
            "INSERT INTO webhook_outbox (endpoint, event_id, body, next_ms, created_ms) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint, event_id) DO NOTHING",
        )
        .bind(&i.endpoint)
        .bind(&i.event_id)
        .bind(&i.body)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    }
    Ok(added)
}

impl Job {
    /// Whether nobody waits for this job's answer any more.
    fn caller_gone(&self) -> bool {
        match self {
            Job::Append { reply, .. } => reply.is_closed(),
            Job::Delete { reply, .. } => reply.is_closed(),
            Job::Outbox { reply, .. } => reply.is_closed(),
            Job::Close { .. } => false,
        }
    }
}

/// What a stored append hands to the commit sink besides its result.
struct Payload {
    from: Option<String>,
    data: JsonData,
    submitted: Instant,
}

/// A job done inside the transaction, answered after it ends.
enum Answer {
    Append(
        oneshot::Sender<Result<Appended, StoreError>>,
        Result<Appended, StoreError>,
        Payload,
    ),
    Delete(oneshot::Sender<Result<u64, StoreError>>, u64),
    Outbox(oneshot::Sender<Result<OutboxDone, StoreError>>, OutboxDone),
}

impl Answer {
    /// Sends the result (the transaction committed).
    fn send(self) {
        // A caller that went away meanwhile does not want the answer.
        match self {
            Answer::Append(reply, result, _) => {
                let _ = reply.send(result);
            }
            Answer::Delete(reply, n) => {
                let _ = reply.send(Ok(n));
            }
            Answer::Outbox(reply, done) => {
                let _ = reply.send(Ok(done));
            }
        }
    }
}

/// What every job of a failed batch is told (except the job whose error
/// aborted it, which gets that error). Retryable: nothing was stored.
#[derive(Debug, thiserror::Error)]
#[error("write transaction rolled back: {0}")]
struct RolledBack(String);

fn rolled_back(why: &str) -> StoreError {
    StoreError::Unavailable(sqlx::Error::AnyDriverError(Box::new(RolledBack(
        why.to_string(),
    ))))
}

/// Answers a job that was not committed with `err`.
fn fail_job(job: Job, err: StoreError) {
    match job {
        Job::Append { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Job::Delete { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Job::Outbox { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Job::Close { reply } => {
            let _ = reply.send(());
        }
    }
}

/// Answers an already processed job of a batch that did not commit.
fn fail_answer(answer: Answer, why: &str) {
    match answer {
        Answer::Append(reply, _, _) => {
            let _ = reply.send(Err(rolled_back(why)));
        }
        Answer::Delete(reply, _) => {
            let _ = reply.send(Err(rolled_back(why)));
        }
        Answer::Outbox(reply, _) => {
            let _ = reply.send(Err(rolled_back(why)));
        }
    }
}

/// Why a batch stops: the error of the job that caused it (it gets this
/// one; the others get [`RolledBack`] with its text).
struct Abort(StoreError);

impl From<sqlx::Error> for Abort {
    fn from(e: sqlx::Error) -> Self {
        Abort(e.into())
    }
}

/// The writer task's state.
pub(super) struct Writer {
    /// How to (re)open the write connection.
    opts: SqliteConnectOptions,
    /// The write connection; `None` after it broke, reopened by the next
    /// batch.
    conn: Option<SqliteConnection>,
    /// Messages kept per channel, as SQL binds it.
    keep: i64,
    /// How long a key is remembered.
    window: Duration,
    /// Write query text per (channel count, has a key).
    sql: HashMap<(usize, bool), Arc<str>>,
    /// The commit sink, shared with the store.
    sink: Arc<SinkSlot>,
}

impl Writer {
    /// A writer on an open connection (opened by `SqliteStore::open` after
    /// the migrations, so it sees the current schema).
    pub(super) fn new(
        opts: SqliteConnectOptions,
        conn: SqliteConnection,
        cfg: &StoreConfig,
        sink: Arc<SinkSlot>,
    ) -> Self {
        Self {
            opts,
            conn: Some(conn),
            keep: i64::try_from(cfg.retention_max_messages).unwrap_or(i64::MAX),
            window: cfg.idempotency_window,
            sql: HashMap::new(),
            sink,
        }
    }

    /// Runs until every sender is gone or a [`Job::Close`] arrives.
    pub(super) async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut closing = None;
        while closing.is_none() && jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // A close ends the batch: what came after it is refused below.
            if let Some(at) = batch.iter().position(|j| matches!(j, Job::Close { .. })) {
                for job in batch.drain(at..) {
                    match job {
                        Job::Close { reply } if closing.is_none() => closing = Some(reply),
                        other => fail_job(other, StoreError::Unavailable(sqlx::Error::PoolClosed)),
                    }
                }
            }
            batch.retain(|j| !j.caller_gone());
            if !batch.is_empty() {
                self.commit_batch(&mut batch).await;
            }
            batch.clear();
        }
        // Refuse what is still queued, then close (checkpointing the WAL if
        // this is the file's last connection).
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            fail_job(job, StoreError::Unavailable(sqlx::Error::PoolClosed));
        }
        if let Some(conn) = self.conn.take()
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the sqlite write connection");
        }
        if let Some(reply) = closing {
            let _ = reply.send(());
        }
    }

    /// Runs `batch` (non-empty) in one transaction and answers every job,
    /// (re)opening the connection first when needed.
    async fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        if self.conn.is_none() {
            match self.opts.connect().await {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => {
                    let why = e.to_string();
                    for job in batch.drain(..) {
                        fail_job(job, rolled_back(&why));
                    }
                    return;
                }
            }
        }
        let Self {
            conn,
            keep,
            window,
            sql,
            sink,
            ..
        } = self;
        let Some(open) = conn.as_mut() else {
            return;
        };
        if run_batch(open, batch, *keep, *window, sql, sink).await {
            *conn = None;
        }
    }
}

/// Answers the jobs of a committed batch: stored appends through `sink`
/// (one call, job order), everything else at once.
fn answer_committed(answers: Vec<Answer>, sink: Option<&Arc<dyn CommitSink>>) {
    let Some(sink) = sink else {
        for answer in answers {
            answer.send();
        }
        return;
    };
    let mut stored = Vec::new();
    for answer in answers {
        match answer {
            Answer::Append(reply, Ok(a), p) if !a.duplicate => {
                stored.push(Committed::new(a, p.from, p.data, p.submitted, reply));
            }
            other => other.send(),
        }
    }
    if !stored.is_empty() {
        sink.committed(stored);
    }
}

/// Runs `batch` in one transaction on `conn` and answers every job; true
/// when the connection must be replaced.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Job>,
    keep: i64,
    window: Duration,
    sql: &mut HashMap<(usize, bool), Arc<str>>,
    sink: &SinkSlot,
) -> bool {
    let size = batch.len();
    let begun = conn.begin_with("BEGIN IMMEDIATE").await;
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(e) => {
            let why = e.to_string();
            for job in batch.drain(..) {
                fail_job(job, rolled_back(&why));
            }
            // A database error (SQLITE_BUSY past the timeout) leaves the
            // connection usable; anything else means it broke.
            return !matches!(e, sqlx::Error::Database(_));
        }
    };
    let mut answers = Vec::with_capacity(size);
    let mut jobs = batch.drain(..);
    let mut aborted = None;
    while let Some(job) = jobs.next() {
        let failed = match job {
            Job::Append {
                req,
                plan,
                reply,
                submitted,
            } => match append_one(&mut tx, &req, &plan, keep, window, sql).await {
                Ok(result) => {
                    let payload = Payload {
                        from: req.from,
                        data: req.data,
                        submitted,
                    };
                    answers.push(Answer::Append(reply, result, payload));
                    continue;
                }
                Err(Abort(err)) => {
                    let job = Job::Append {
                        req,
                        plan,
                        reply,
                        submitted,
                    };
                    (job, err)
                }
            },
            Job::Delete {
                sql: text,
                cutoff,
                limit,
                reply,
            } => {
                let done = sqlx::query(text)
                    .bind(cutoff)
                    .bind(limit)
                    .execute(&mut *tx)
                    .await;
                match done {
                    Ok(done) => {
                        answers.push(Answer::Delete(reply, done.rows_affected()));
                        continue;
                    }
                    Err(e) => {
                        let job = Job::Delete {
                            sql: text,
                            cutoff,
                            limit,
                            reply,
                        };
                        (job, e.into())
                    }
                }
            }
            Job::Outbox { op, reply } => match outbox_op(&mut tx, &op).await {
                Ok(done) => {
                    answers.push(Answer::Outbox(reply, done));
                    continue;
                }
                Err(e) => (Job::Outbox { op, reply }, e.into()),
            },
            Job::Close { reply } => {
                // `run` takes closes out of a batch; answer anyway.
                let _ = reply.send(());
                continue;
            }
        };
        let (job, err) = failed;
        let why = err.to_string();
        fail_job(job, err);
        for job in jobs.by_ref() {
            fail_job(job, rolled_back(&why));
        }
        aborted = Some(why);
        break;
    }
    drop(jobs);
    // sqlx keeps counting a transaction whose ROLLBACK or COMMIT failed
    // (its next BEGIN would be refused): such a connection is replaced.
    let outcome = match aborted {
        Some(why) => match tx.rollback().await {
            Ok(()) => Err((why, false)),
            Err(e) => {
                tracing::warn!(error = %e, "rolling back an aborted sqlite batch");
                Err((why, true))
            }
        },
        None => tx.commit().await.map_err(|e| (e.to_string(), true)),
    };
    match outcome {
        Ok(()) => {
            tracing::trace!(size, "sqlite batch committed");
            answer_committed(answers, sink.get().as_ref());
            false
        }
        Err((why, broken)) => {
            tracing::warn!(size, error = %why, "sqlite batch rolled back");
            for answer in answers {
                fail_answer(answer, &why);
            }
            broken
        }
    }
}

/// One append inside the batch's transaction.
///
/// `Ok(Err(_))`: this append failed and left nothing behind (conflict,
/// corrupt key row, an SQL error rolled back to its savepoint); the batch
/// goes on. `Err(_)`: the transaction cannot go on.
async fn append_one(
    tx: &mut Transaction<'_, Sqlite>,
    req: &AppendRequest,
    plan: &Plan,
    keep: i64,
    window: Duration,
    sql: &mut HashMap<(usize, bool), Arc<str>>,
) -> Result<Result<Appended, StoreError>, Abort> {
    let Ok(data) = std::str::from_utf8(req.data.as_bytes()) else {
        return Ok(Err(StoreError::Corrupt(
            "data is not UTF-8 JSON text".into(),
        )));
    };
    if let Some(key) = &req.key {
        // Outside the savepoint: a failed read aborts the batch.
        let row = sqlx::query(
            "SELECT id, ts, fingerprint, seqs, created_ms FROM idempotency \
             WHERE publisher = ? AND key = ?",
        )
        .bind(&req.publisher)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            let rem = match remembered(&row) {
                Ok(rem) => rem,
                Err(e) => return Ok(Err(e)),
            };
            match append::judge(&rem, plan, req.ts, window) {
                Ok(Verdict::Duplicate(found)) => return Ok(Ok(found)),
                Ok(Verdict::Expired) => {} // overwritten below
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    let n = plan.lock_order.len();
    let keyed = req.key.is_some();
    let text = sql
        .entry((n, keyed))
        .or_insert_with(|| write_sql(n, keyed).into())
        .clone();
    let q = bind_writes(sqlx::query(AssertSqlSafe(text)), req, plan, data, keep);
    let rows = match q.fetch_all(&mut **tx).await {
        Ok(rows) => rows,
        Err(e) => {
            // The statements after the failing one did not run, so the
            // savepoint is still open unless SQLite rolled back everything.
            let undo = sqlx::query("ROLLBACK TO append; RELEASE append")
                .execute(&mut **tx)
                .await;
            if let Err(undo) = undo {
                tracing::warn!(error = %undo, "rolling back to an append's savepoint");
                return Err(Abort(e.into()));
            }
            tracing::warn!(error = %e, msg_id = %req.id, "sqlite append rolled back to its savepoint");
            return Ok(Err(e.into()));
        }
    };
    // The savepoint is released: a seq that cannot be read back now can
    // only be undone with the whole batch.
    if rows.len() != n {
        return Err(Abort(StoreError::Corrupt(format!(
            "{} seqs returned for {n} channels",
            rows.len()
        ))));
    }
    let mut assigned = Vec::with_capacity(n);
    for (ch, row) in plan.lock_order.iter().zip(&rows) {
        let seq = row.try_get::<i64, _>(0)?;
        assigned.push((ch.clone(), append::seq_from_db(seq).map_err(Abort)?));
    }
    // In the message's transaction: a committed message never lacks its
    // webhook events (a failure here rolls back the whole batch).
    let events = append::outbox_rows(req, &assigned);
    if !events.is_empty() {
        insert_outbox(tx, &events, crate::now_ms()).await?;
    }
    Ok(Ok(Appended {
        id: req.id.clone(),
        ts: req.ts,
        seqs: plan.in_request_order(&assigned),
        duplicate: false,
    }))
}

/// Reads a key's row.
fn remembered(row: &sqlx::sqlite::SqliteRow) -> Result<Remembered, StoreError> {
    Ok(Remembered {
        id: row.try_get("id")?,
        ts: row.try_get("ts")?,
        fingerprint: row.try_get("fingerprint")?,
        seqs: row.try_get("seqs")?,
        created_ms: row.try_get("created_ms")?,
    })
}

/// The writes of one append with `n` channels, in one savepoint, returning
/// one row per channel (its new `last_seq`, in lock order). Binds are
/// positional `?` only, in order of appearance ([`bind_writes`]): sqlx
/// numbers `?NNN` across all statements of a query but counts a
/// statement's unused lower slots as positional ones, so numbered binds
/// break in multi-statement text.
///
/// Per channel: the upsert raises `last_seq` (the seq), the insert reads
/// it back in the same transaction, and the delete evicts beyond the kept
/// count (`seq <= last_seq - kept`, i.e. [`append::evict_through`]). With
/// a key, its row is then written (new or expired: overwritten) with the
/// seqs in request order, the text `append::encode_seqs` makes:
/// `[["chat_1",5],...]`.
fn write_sql(n: usize, keyed: bool) -> String {
    const CHANNEL: &str = "\
INSERT INTO channels (name, last_seq) VALUES (?, 1) \
ON CONFLICT (name) DO UPDATE SET last_seq = channels.last_seq + 1 RETURNING last_seq;
INSERT INTO messages (channel, seq, id, ts, sender, data) \
SELECT name, last_seq, ?, ?, ?, ? FROM channels WHERE name = ?;
DELETE FROM messages WHERE channel = ? \
AND seq <= (SELECT last_seq FROM channels WHERE name = ?) - ?;
";
    let mut s = String::from("SAVEPOINT append;\n");
    for _ in 0..n {
        s.push_str(CHANNEL);
    }
    if keyed {
        let seqs = vec!["json_array(?, (SELECT last_seq FROM channels WHERE name = ?))"; n];
        s.push_str(
            "INSERT INTO idempotency (publisher, key, id, ts, fingerprint, seqs, created_ms) \
             VALUES (?, ?, ?, ?, ?, json_array(",
        );
        s.push_str(&seqs.join(", "));
        s.push_str(
            "), ?) ON CONFLICT (publisher, key) DO UPDATE SET id = excluded.id, \
             ts = excluded.ts, fingerprint = excluded.fingerprint, seqs = excluded.seqs, \
             created_ms = excluded.created_ms;\n",
        );
    }
    s.push_str("RELEASE append;");
    s
}

/// Binds [`write_sql`]'s parameters, in its order.
fn bind_writes<'q>(
    mut q: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    req: &'q AppendRequest,
    plan: &'q Plan,
    data: &'q str,
    keep: i64,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
    for ch in &plan.lock_order {
        let name = ch.as_str();
        q = q
            .bind(name)
            .bind(&req.id)
            .bind(req.ts)
            .bind(req.from.as_deref())
            .bind(data)
            .bind(name)
            .bind(name)
            .bind(name)
            .bind(keep);
    }
    if let Some(key) = &req.key {
        q = q
            .bind(&req.publisher)
            .bind(key)
            .bind(&req.id)
            .bind(req.ts)
            .bind(&plan.fingerprint);
        for ch in &plan.ordered {
            q = q.bind(ch.as_str()).bind(ch.as_str());
        }
        q = q.bind(req.ts);
    }
    q
}
