//! Group commit (PostgreSQL): one failing append leaves the others of its
//! batch alone, and two stores ("replicas") on one database lock their
//! batches without deadlock. Concurrent keyed appends sharing transactions
//! are checked on both backends by the conformance suite
//! (`concurrent_keyed_appends_store_each_key_once`).

use super::PgStore;
use super::writer::{Job, QUEUE};
use crate::append::Plan;
use crate::{AppendRequest, Appended, Store, StoreConfig, StoreError, now_ms};
use bytes::Bytes;
use herald_protocol::{ChannelName, JsonData};
use herald_testkit::{TestDb, test_database};
use sqlx::Connection as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).expect("valid channel name")
}

fn req(channels: &[&ChannelName], data: &str, id: &str) -> AppendRequest {
    AppendRequest {
        outbox: Vec::new(),
        channels: channels.iter().map(|c| (*c).clone()).collect(),
        data: JsonData::from_json_text(Bytes::copy_from_slice(data.as_bytes())).expect("json"),
        from: None,
        publisher: "tests".into(),
        key: None,
        id: id.into(),
        ts: now_ms(),
    }
}

fn keyed(
    channels: &[&ChannelName],
    data: &str,
    id: &str,
    publisher: &str,
    key: &str,
) -> AppendRequest {
    AppendRequest {
        outbox: Vec::new(),
        publisher: publisher.into(),
        key: Some(key.into()),
        ..req(channels, data, id)
    }
}

/// A store on a fresh database; the database must outlive it.
async fn open() -> (Arc<PgStore>, TestDb) {
    let db = test_database().await;
    let store = PgStore::open(db.url(), StoreConfig::default())
        .await
        .expect("open");
    (Arc::new(store), db)
}

async fn history_seqs_ids(store: &PgStore, c: &ChannelName) -> Vec<(u64, String)> {
    let h = store.history(c, 0, 10_000).await.expect("history");
    assert_eq!(h.last_seq, h.messages.len() as u64, "{c}: last_seq");
    h.messages.into_iter().map(|m| (m.seq, m.id)).collect()
}

/// Hands `r` to the writers as `append` does, returning when it is queued.
async fn queue(
    store: &PgStore,
    r: AppendRequest,
) -> oneshot::Receiver<Result<Appended, StoreError>> {
    let (reply, answer) = oneshot::channel();
    let plan = Plan::new(&r);
    store
        .jobs
        .send(Job {
            req: r,
            plan,
            reply,
            submitted: std::time::Instant::now(),
        })
        .await
        .expect("the writers run");
    answer
}

/// Waits until the writers took everything queued.
async fn taken(store: &PgStore) {
    herald_testkit::eventually(Duration::from_secs(10), "a writer takes it", || {
        let free = store.jobs.capacity();
        async move { free == QUEUE }
    })
    .await;
}

/// Takes channel `c`'s row lock in a transaction on a connection of its
/// own, as another replica's batch would, until [`unlock_row`].
async fn lock_row(url: &str, c: &ChannelName) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM channels WHERE name = $1 FOR UPDATE")
        .bind(c.as_str())
        .execute(&mut conn)
        .await
        .expect("lock the row");
    conn
}

/// Commits [`lock_row`]'s transaction and closes its connection.
async fn unlock_row(mut conn: sqlx::PgConnection) {
    sqlx::query("COMMIT")
        .execute(&mut conn)
        .await
        .expect("commit");
    conn.close().await.expect("close");
}

/// Holds channel `x`'s row lock from another connection while both writers
/// wait for it with one append each, so the appends queued meanwhile land in
/// one batch, in this order: a conflict with an older key, a plain append, a
/// new key, an append whose insert fails (its seq is taken by a row written
/// behind the store's back), a conflict and a duplicate of the new key
/// within the batch, a duplicate of the older key and a two-channel append.
/// Only the failing ones fail, and they leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failure_in_a_batch_leaves_the_others() {
    let (store, db) = open().await;
    let (x, y, poison) = (ch("batch_x"), ch("batch_y"), ch("batch_poison"));
    let first = store
        .append(keyed(&[&x], "1", "id-first", "pub", "k1"))
        .await
        .expect("append");
    assert_eq!(first.seqs, vec![(x.clone(), 1)]);
    sqlx::query(
        "INSERT INTO messages (channel, seq, id, ts, data) VALUES ($1, 1, 'manual', $2, '0')",
    )
    .bind(poison.as_str())
    .bind(now_ms())
    .execute(&store.pool)
    .await
    .expect("manual row");

    let blocker = lock_row(db.url(), &x).await;

    // Each writer takes one alone, then waits for x.
    let lone_a = queue(&store, req(&[&x], "0", "id-lone-a")).await;
    taken(&store).await;
    let lone_b = queue(&store, req(&[&x], "0", "id-lone-b")).await;
    taken(&store).await;
    let jobs = vec![
        keyed(&[&x], "2", "id-conflict-old", "pub", "k1"),
        req(&[&x], "3", "id-plain"),
        keyed(&[&y], "\"a\"", "id-new", "pub", "k2"),
        req(&[&poison], "4", "id-poisoned"),
        keyed(&[&y], "\"b\"", "id-conflict-new", "pub", "k2"),
        keyed(&[&y], "\"a\"", "id-dup-new", "pub", "k2"),
        keyed(&[&x], "1", "id-dup-old", "pub", "k1"),
        req(&[&y, &x], "5", "id-both"),
    ];
    let mut handles = Vec::new();
    for r in jobs {
        handles.push(queue(&store, r).await);
    }
    unlock_row(blocker).await;

    let lone_a = lone_a.await.expect("answered").expect("append");
    let lone_b = lone_b.await.expect("answered").expect("append");
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.expect("answered"));
    }
    let mut got = got.into_iter();
    let mut next = || got.next().expect("a result per job");
    assert!(matches!(next(), Err(StoreError::Conflict)));
    let plain = next().expect("plain");
    let new = next().expect("new key");
    assert!(!new.duplicate);
    assert_eq!(new.seqs, vec![(y.clone(), 1)]);
    let poisoned = next().expect_err("its seq is taken");
    assert!(poisoned.is_retryable(), "{poisoned:?}");
    assert!(matches!(next(), Err(StoreError::Conflict)));
    let dup = next().expect("duplicate in the batch");
    assert!(dup.duplicate);
    assert_eq!((&dup.id, dup.ts, &dup.seqs), (&new.id, new.ts, &new.seqs));
    let dup = next().expect("duplicate of the older key");
    assert!(dup.duplicate);
    assert_eq!((&dup.id, &dup.seqs), (&first.id, &first.seqs));
    let both = next().expect("two channels");
    assert_eq!(both.seqs[0], (y.clone(), 2));

    // x: 1, then the two lone ones and the batch's two in answered order.
    let mut answered: Vec<(u64, String)> = [&lone_a, &lone_b, &plain, &both]
        .iter()
        .map(|a| {
            let seq = a.seqs.iter().find(|(c, _)| c == &x).expect("x").1;
            (seq, a.id.clone())
        })
        .collect();
    answered.push((1, "id-first".into()));
    answered.sort();
    assert_eq!(
        answered.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let plain_seq = plain.seqs[0].1;
    assert!(plain_seq < both.seqs[1].1, "batch order within the batch");
    assert_eq!(history_seqs_ids(&store, &x).await, answered);
    assert_eq!(
        history_seqs_ids(&store, &y).await,
        vec![(1, "id-new".to_string()), (2, "id-both".to_string())]
    );
    // The failed append was rolled back: no seq taken, only the manual row.
    assert_eq!(
        store
            .positions(std::slice::from_ref(&poison))
            .await
            .expect("positions"),
        vec![0]
    );
    let left: HashSet<String> = store
        .history(&poison, 0, 10)
        .await
        .expect("history")
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, HashSet::from(["manual".to_string()]));

    // The store goes on after the failure.
    let after = store
        .append(req(&[&x], "6", "id-after"))
        .await
        .expect("append");
    assert_eq!(after.seqs, vec![(x.clone(), 6)]);
}

/// Two stores ("replicas", each with its own writers and pool) on one
/// database append concurrently to overlapping channel sets listed in
/// opposite orders (["a","b"], ["b","a"], ["c","a"], ["b"]), some keyed:
/// no deadlock, no error, and each channel's seqs are exactly 1..=n, each
/// answered once and matching history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_cross_channels_without_deadlock() {
    const TASKS: usize = 16;
    const EACH: usize = 25;
    let db = test_database().await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(Arc::new(
            PgStore::open(db.url(), StoreConfig::default())
                .await
                .expect("open"),
        ));
    }
    let (a, b, c) = (ch("cross_a"), ch("cross_b"), ch("cross_c"));
    let sets: Vec<Vec<ChannelName>> = vec![
        vec![a.clone(), b.clone()],
        vec![b.clone(), a.clone()],
        vec![c.clone(), a.clone()],
        vec![b.clone()],
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = replicas[t % 2].clone();
        let sets = sets.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let j = t * EACH + i;
                let set: Vec<&ChannelName> = sets[j % sets.len()].iter().collect();
                let id = format!("id-{j}");
                let r = if j.is_multiple_of(3) {
                    keyed(&set, "{}", &id, &format!("p{t}"), &format!("k{i}"))
                } else {
                    req(&set, "{}", &id)
                };
                got.push(store.append(r).await.expect("append"));
            }
            got
        });
    }
    let mut stored: HashMap<ChannelName, BTreeMap<u64, String>> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        for got in done.expect("append task") {
            assert!(!got.duplicate);
            for (c, seq) in got.seqs {
                let prev = stored.entry(c).or_default().insert(seq, got.id.clone());
                assert!(prev.is_none(), "seq {seq} answered twice");
            }
        }
    }
    let mut total = 0;
    for c in [&a, &b, &c] {
        let want = &stored[c];
        let n = want.len() as u64;
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "{c}: gap-free"
        );
        let want: Vec<(u64, String)> = want.iter().map(|(s, id)| (*s, id.clone())).collect();
        for store in &replicas {
            assert_eq!(history_seqs_ids(store, c).await, want, "{c}: history");
        }
        total += n;
    }
    // Two channels for three sets of four, one for the fourth.
    assert_eq!(total as usize, TASKS * EACH * 7 / 4);
}

/// The seqs a channel's history holds.
async fn kept(store: &PgStore, c: &ChannelName) -> Vec<u64> {
    let h = store.history(c, 0, 10_000).await.expect("history");
    h.messages.iter().map(|m| m.seq).collect()
}

/// Keep 5 per channel.
fn keep_five() -> StoreConfig {
    StoreConfig {
        retention_max_messages: 5,
        ..StoreConfig::default()
    }
}

/// The bounded eviction (`writer::Swept`): 300 appends from 30 tasks to
/// one channel, through two "replicas" (stores) on one database, with 5
/// kept: both writers of both stores evict only the range their batch
/// moves past the bound, and together they leave exactly the last 5 (that
/// no range is walked twice is what the benches show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_evictions_of_concurrent_batches_keep_exactly_the_last() {
    let db = test_database().await;
    let a = Arc::new(PgStore::open(db.url(), keep_five()).await.expect("open"));
    let b = Arc::new(PgStore::open(db.url(), keep_five()).await.expect("open"));
    let c = ch("evict_shared");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..30 {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        let c = c.clone();
        tasks.spawn(async move {
            for i in 0..10 {
                store
                    .append(req(
                        &[&c],
                        &format!("{}", t * 10 + i),
                        &format!("e-{t}-{i}"),
                    ))
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    assert_eq!(kept(&a, &c).await, vec![296, 297, 298, 299, 300]);
}

/// Rows kept by a larger `retention_max_messages` before a restart are
/// evicted by the first write after it: the first eviction of a channel
/// in a store's life is not bounded below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_eviction_after_open_sweeps_what_a_larger_retention_kept() {
    let db = test_database().await;
    let c = ch("evict_lowered");
    {
        let cfg = StoreConfig {
            retention_max_messages: 20,
            ..StoreConfig::default()
        };
        let store = PgStore::open(db.url(), cfg).await.expect("open");
        for i in 1..=30 {
            store
                .append(req(&[&c], &format!("{i}"), &format!("l-{i}")))
                .await
                .expect("append");
        }
        let h = store.history(&c, 0, 100).await.expect("history");
        assert_eq!(h.messages.len(), 20);
        store.close().await;
    }
    let store = PgStore::open(db.url(), keep_five()).await.expect("reopen");
    store
        .append(req(&[&c], "31", "l-31"))
        .await
        .expect("append");
    assert_eq!(kept(&store, &c).await, vec![27, 28, 29, 30, 31]);
}

/// A batch that appends more than `keep` messages to a channel evicts some
/// of its own rows (a statement after its insert, as the insert's own
/// statement does not see them), while the same batch's eviction of older
/// rows of another channel still happens: with 5 kept, x (3 stored) gets
/// 10 more, 8 of them in one batch behind x's row lock, and y (7 stored)
/// one more in that batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_bound_evicts_its_own_rows_too() {
    let db = test_database().await;
    let store = Arc::new(PgStore::open(db.url(), keep_five()).await.expect("open"));
    let (x, y) = (ch("evict_batch_x"), ch("evict_batch_y"));
    for i in 1..=3 {
        store
            .append(req(&[&x], &i.to_string(), &format!("x-{i}")))
            .await
            .expect("append");
    }
    for i in 1..=7 {
        store
            .append(req(&[&y], &i.to_string(), &format!("y-{i}")))
            .await
            .expect("append");
    }
    assert_eq!(kept(&store, &y).await, vec![3, 4, 5, 6, 7]);

    let blocker = lock_row(db.url(), &x).await;
    // Each writer takes one alone, then waits for x.
    let mut handles = vec![queue(&store, req(&[&x], "0", "x-lone-a")).await];
    taken(&store).await;
    handles.push(queue(&store, req(&[&x], "0", "x-lone-b")).await);
    taken(&store).await;
    for i in 0..8 {
        handles.push(queue(&store, req(&[&x], &i.to_string(), &format!("x-b-{i}"))).await);
    }
    handles.push(queue(&store, req(&[&y], "8", "y-8")).await);
    unlock_row(blocker).await;
    for h in handles {
        h.await.expect("answered").expect("append");
    }
    assert_eq!(kept(&store, &x).await, vec![9, 10, 11, 12, 13]);
    assert_eq!(kept(&store, &y).await, vec![4, 5, 6, 7, 8]);
    let h = store.history(&x, 0, 100).await.expect("history");
    assert_eq!((h.first_seq, h.last_seq), (9, 13));
}

/// The writers keep their connections from batch to batch
/// (`writer::Conn`): when the server drops them meanwhile (a restart, or
/// here `pg_terminate_backend`), the next batch's `BEGIN` fails on the dead
/// one, and the writer runs the batch again on a connection the pool has
/// checked: no publish fails, no seq is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_server_dropped_costs_no_append() {
    let (store, db) = open().await;
    let c = ch("held_conn");
    // Both writers take a connection and keep it.
    let a = queue(&store, req(&[&c], "1", "h-1")).await;
    taken(&store).await;
    let b = queue(&store, req(&[&c], "2", "h-2")).await;
    a.await.expect("answered").expect("append");
    b.await.expect("answered").expect("append");

    let mut admin = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    let dropped: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'herald'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!dropped.is_empty(), "the store's connections were found");
    admin.close().await.expect("close");

    // Both writers' kept connections are dead: two appends at once, so
    // that each writer meets its own.
    let x = queue(&store, req(&[&c], "3", "h-3")).await;
    taken(&store).await;
    let y = queue(&store, req(&[&c], "4", "h-4")).await;
    x.await.expect("answered").expect("append after the drop");
    y.await.expect("answered").expect("append after the drop");
    let stored = store
        .append(req(&[&c], "5", "h-5"))
        .await
        .expect("append");
    assert_eq!(stored.seqs, vec![(c.clone(), 5)]);
    assert_eq!(history_seqs_ids(&store, &c).await.len(), 5, "history holds 1..=5");
    store.close().await;
}
