//! Group commit (SQLite only): one failing append leaves the others of its
//! batch alone. Concurrent keyed appends sharing transactions are checked on
//! both backends by the conformance suite
//! (`concurrent_keyed_appends_store_each_key_once`).

use super::SqliteStore;
use super::writer::{Job, QUEUE};
use crate::append::Plan;
use crate::{AppendRequest, Appended, Store, StoreConfig, StoreError, now_ms};
use bytes::Bytes;
use herald_protocol::{ChannelName, JsonData};
use std::collections::HashSet;
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

async fn open(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let path = dir.path().join("store.db");
    Arc::new(
        SqliteStore::open(
            path.to_str().expect("utf-8 temp path"),
            StoreConfig::default(),
        )
        .await
        .expect("open"),
    )
}

async fn history_seqs_ids(store: &SqliteStore, c: &ChannelName) -> Vec<(u64, String)> {
    let h = store.history(c, 0, 10_000).await.expect("history");
    assert_eq!(h.last_seq, h.messages.len() as u64, "{c}: last_seq");
    h.messages.into_iter().map(|m| (m.seq, m.id)).collect()
}

/// Hands `r` to the writer as `append` does, returning when it is queued.
async fn queue(
    store: &SqliteStore,
    r: AppendRequest,
) -> oneshot::Receiver<Result<Appended, StoreError>> {
    let (reply, answer) = oneshot::channel();
    let plan = Plan::new(&r);
    store
        .jobs
        .send(Job::Append {
            req: r,
            plan,
            reply,
            submitted: std::time::Instant::now(),
        })
        .await
        .expect("the writer runs");
    answer
}

/// Holds SQLite's write lock from another connection while appends queue,
/// so they land in one batch, in this order: a conflict with an older key,
/// a plain append, a new key, an append whose insert fails (its seq is
/// taken by a row written behind the store's back), a conflict and a
/// duplicate of the new key within the batch, a duplicate of the older key
/// and a two-channel append. Only the failing ones fail, and they leave
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failure_in_a_batch_leaves_the_others() {
    let dir = herald_testkit::temp_dir();
    let store = open(&dir).await;
    let (x, y, poison) = (ch("batch_x"), ch("batch_y"), ch("batch_poison"));
    let first = store
        .append(keyed(&[&x], "1", "id-first", "pub", "k1"))
        .await
        .expect("append");
    assert_eq!(first.seqs, vec![(x.clone(), 1)]);

    let mut blocker = store.pool.acquire().await.expect("read connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .expect("begin");
    sqlx::query(
        "INSERT INTO messages (channel, seq, id, ts, data) VALUES (?, 1, 'manual', ?, '0')",
    )
    .bind(poison.as_str())
    .bind(now_ms())
    .execute(&mut *blocker)
    .await
    .expect("manual row");

    // Taken alone by the writer, which then waits for the write lock.
    let lone = queue(&store, req(&[&x], "0", "id-lone")).await;
    herald_testkit::eventually(Duration::from_secs(10), "the writer takes it", || {
        let free = store.jobs.capacity();
        async move { free == QUEUE }
    })
    .await;
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
    sqlx::query("COMMIT")
        .execute(&mut *blocker)
        .await
        .expect("commit");
    drop(blocker);

    let lone = lone.await.expect("answered").expect("append");
    assert_eq!(lone.seqs, vec![(x.clone(), 2)]);
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.expect("answered"));
    }
    let mut got = got.into_iter();
    let mut next = || got.next().expect("a result per job");
    assert!(matches!(next(), Err(StoreError::Conflict)));
    assert_eq!(next().expect("plain").seqs, vec![(x.clone(), 3)]);
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
    assert_eq!(both.seqs, vec![(y.clone(), 2), (x.clone(), 4)]);

    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (hx, hy) = (
        history_seqs_ids(&store, &x).await,
        history_seqs_ids(&store, &y).await,
    );
    assert_eq!(
        hx.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        hx.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
        ids(&["id-first", "id-lone", "id-plain", "id-both"])
    );
    assert_eq!(
        hy,
        vec![(1, "id-new".to_string()), (2, "id-both".to_string())]
    );
    // The failed append rolled back to its savepoint: no channel row.
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
    assert_eq!(after.seqs, vec![(x.clone(), 5)]);
}

/// After `close`, appends and pings fail with a retryable error; nothing
/// hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_refuses_later_writes() {
    let dir = herald_testkit::temp_dir();
    let store = open(&dir).await;
    let c = ch("closing");
    store.append(req(&[&c], "1", "id-1")).await.expect("append");
    store.close().await;
    let err = store
        .append(req(&[&c], "2", "id-2"))
        .await
        .expect_err("closed");
    assert!(err.is_retryable(), "{err:?}");
    assert!(store.ping().await.is_err());
    // Reopening sees the committed append.
    let store = open(&dir).await;
    let got = store.append(req(&[&c], "3", "id-3")).await.expect("append");
    assert_eq!(got.seqs, vec![(c, 2)]);
}

/// A keyed publish to 100 channels (ingest's most) in reverse name order:
/// one query with 300 channel statements; seqs in request order, and a
/// retry with the channels in name order gets them in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_keyed_publish() {
    let dir = herald_testkit::temp_dir();
    let store = open(&dir).await;
    let chans: Vec<ChannelName> = (0..100)
        .rev()
        .map(|i| ch(&format!("wide_{i:03}")))
        .collect();
    let refs: Vec<&ChannelName> = chans.iter().collect();
    store
        .append(req(&refs[..1], "0", "id-0"))
        .await
        .expect("append");
    let got = store
        .append(keyed(&refs, "1", "id-1", "pub", "k"))
        .await
        .expect("append");
    let want: Vec<(ChannelName, u64)> = chans
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), if i == 0 { 2 } else { 1 }))
        .collect();
    assert_eq!(got.seqs, want);
    let mut sorted = refs.clone();
    sorted.sort();
    let again = store
        .append(keyed(&sorted, "1", "id-2", "pub", "k"))
        .await
        .expect("append");
    assert!(again.duplicate);
    assert_eq!(again.id, "id-1");
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(again.seqs, want_sorted);
    for c in &chans {
        let h = store.history(c, 0, 10).await.expect("history");
        assert_eq!(h.messages.last().map(|m| m.id.as_str()), Some("id-1"));
    }
}
