//! Runs the conformance suite (`herald_store::conformance`) against both
//! backends: SQLite in a temp dir and PostgreSQL in a fresh database per
//! test (`herald_testkit::test_database`: `HERALD_TEST_DATABASE_URL` or a
//! private server). One test per check per backend, so a failure names both.
//!
//! Also here: what only a real restart or several handles can show (seq
//! continues after reopening; concurrent migrations and two "replicas" on one
//! PostgreSQL database; two handles on one SQLite file).
//!
//! Guarantees checked: DESIGN.md 1 (durable) and 2 (ordered, no duplicates).

// Test code: helpers outside `#[test]` fns unwrap too.
#![allow(clippy::unwrap_used)]

use herald_protocol::{ChannelName, JsonData};
use herald_store::conformance::{self, Check};
use herald_store::{AppendRequest, PgStore, SqliteStore, Store, StoreConfig, open};
use herald_testkit::{TestDb, test_database};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// A store in a fresh SQLite file; the dir must outlive the store.
async fn sqlite_store(cfg: StoreConfig) -> (Arc<dyn Store>, TempDir) {
    let dir = herald_testkit::temp_dir();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(path.to_str().unwrap(), cfg)
        .await
        .unwrap();
    (Arc::new(store), dir)
}

/// A store in a fresh PostgreSQL database; the database must outlive it.
async fn pg_store(cfg: StoreConfig) -> (Arc<dyn Store>, TestDb) {
    let db = test_database().await;
    let store = PgStore::open(db.url(), cfg).await.unwrap();
    (Arc::new(store), db)
}

macro_rules! backend {
    ($backend:ident, $make:ident; $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let cfg = herald_store::conformance::config_for(stringify!($check));
                    let (store, _keep) = super::$make(cfg).await;
                    herald_store::conformance::$check(store).await;
                }
            )*
        }
    };
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {
        backend!(sqlite, sqlite_store; $($check),*);
        backend!(postgres, pg_store; $($check),*);

        /// A check added to the suite but not listed here would never run.
        #[test]
        fn every_check_has_a_test() {
            let listed: Vec<&str> = vec![$(stringify!($check)),*];
            let all: Vec<&str> = conformance::checks().iter().map(|c: &Check| c.name).collect();
            assert_eq!(listed, all);
        }
    };
}

conformance_tests!(
    empty_channel,
    seqs_start_at_one_in_order,
    concurrent_appends_are_gap_free,
    multi_channel_publish_is_one_message,
    crossed_multi_channel_publishes_do_not_deadlock,
    duplicate_channels_are_written_once,
    retry_with_same_key_is_duplicate,
    concurrent_retries_store_once,
    concurrent_keyed_appends_store_each_key_once,
    same_key_other_data_conflicts,
    same_key_other_channels_conflicts,
    keys_are_scoped_to_publisher,
    expired_key_is_new,
    prune_forgets_old_keys,
    history_pages_with_after_and_limit,
    retention_by_count,
    retention_by_age,
    positions_of_several_channels,
    data_round_trips_byte_exact,
    ping_answers,
    publish_events_are_stored_with_the_message,
    claims_are_exclusive_and_leases_expire,
    enqueue_skips_pending_duplicates,
    commit_sink_sees_each_stored_append_in_seq_order,
    commit_sink_holds_the_answer,
);

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn req(channel: &str, n: u32) -> AppendRequest {
    AppendRequest {
        outbox: Vec::new(),
        channels: vec![ch(channel)],
        data: JsonData::from_value(&serde_json::json!({ "n": n })),
        from: None,
        publisher: "tests".into(),
        key: None,
        id: format!("id-{channel}-{n}"),
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    }
}

/// Appends 3, drops the store, reopens the same URL: seq continues at 4 and
/// the first three are still there (guarantee 1 across a restart).
async fn seq_continues_after_reopen(url: &str) {
    let cfg = StoreConfig::default;
    {
        let store = open(url, cfg()).await.unwrap();
        for n in 1..=3 {
            store.append(req("restart", n)).await.unwrap();
        }
    }
    let store = open(url, cfg()).await.unwrap();
    let got = store.append(req("restart", 4)).await.unwrap();
    assert_eq!(got.seqs, vec![(ch("restart"), 4)]);
    let h = store.history(&ch("restart"), 0, 10).await.unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(h.messages[0].id, "id-restart-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_seq_continues_after_reopen() {
    let dir = herald_testkit::temp_dir();
    // A missing parent directory is created too.
    let url = format!("sqlite://{}", dir.path().join("sub/dir/store.db").display());
    seq_continues_after_reopen(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seq_continues_after_reopen() {
    let db = test_database().await;
    seq_continues_after_reopen(db.url()).await;
}

/// Several ingest replicas start at once on an empty database (migrations
/// under sqlx's advisory lock), then append to one channel through their own
/// pools: seqs stay 1..=N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_migrate_and_append_together() {
    let db = test_database().await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = db.url().to_string();
        opening.spawn(async move { PgStore::open(&url, StoreConfig::default()).await });
    }
    let mut replicas = Vec::new();
    while let Some(opened) = opening.join_next().await {
        replicas.push(Arc::new(opened.unwrap().unwrap()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (r, store) in replicas.iter().enumerate() {
        let store = store.clone();
        tasks.spawn(async move {
            for n in 0..25 {
                store
                    .append(req("replicated", r as u32 * 100 + n))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let h = replicas[0]
        .history(&ch("replicated"), 0, 1000)
        .await
        .unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
}

/// Two handles on one SQLite file (two processes in production would look
/// the same to SQLite): writers from both stay gap-free (BEGIN IMMEDIATE +
/// busy_timeout across handles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_handles_share_a_file() {
    let dir = herald_testkit::temp_dir();
    let path = dir.path().join("shared.db");
    let path = path.to_str().unwrap();
    let a = Arc::new(
        SqliteStore::open(path, StoreConfig::default())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        SqliteStore::open(path, StoreConfig::default())
            .await
            .unwrap(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (h, store) in [a.clone(), b].into_iter().enumerate() {
        tasks.spawn(async move {
            for n in 0..50 {
                store
                    .append(req("shared", h as u32 * 100 + n))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let h = a.history(&ch("shared"), 0, 1000).await.unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
}

/// `run_all` drives the whole suite from one factory (what another backend
/// would use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_against_sqlite() {
    let dirs: Arc<Mutex<Vec<TempDir>>> = Arc::default();
    conformance::run_all(|cfg| {
        let dirs = dirs.clone();
        async move {
            let (store, dir) = sqlite_store(cfg).await;
            dirs.lock().unwrap().push(dir);
            store
        }
    })
    .await;
}

/// Opening fails cleanly (no panic) on a URL nobody serves or understands.
#[tokio::test]
async fn open_errors() {
    let port = herald_testkit::free_port();
    let err = open(
        &format!("postgres://x@127.0.0.1:{port}/db"),
        StoreConfig::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(err.is_retryable(), "{err:?}");
    assert!(open("mysql://x", StoreConfig::default()).await.is_err());
}
