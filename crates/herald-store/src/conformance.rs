//! The conformance suite: what every [`Store`] backend must do, checked the
//! same way against each (STYLE.md: conformance suites take a factory).
//!
//! Each check is a `pub async fn` taking the store under test, so a test
//! file can give every check its own `#[tokio::test]` per backend; [`checks`]
//! lists them with the [`StoreConfig`] each needs ([`config_for`]), and
//! [`run_all`] runs them all against a factory.
//!
//! Rules the checks keep:
//! - Channel names and keys carry a random suffix, so checks may run one
//!   after another on one store without seeing each other's rows (not at the
//!   same time: `prune` checks delete every expired row).
//! - No sleeps: time-based behaviour (key expiry, age retention) is driven by
//!   the request's `ts` and `prune`'s `now_ms`, not by waiting.
//! - Concurrency checks run on several tasks; call them from a
//!   multi-threaded runtime for real parallelism.
//!
//! Panics on failure (it is a test suite).

use crate::{
    AppendRequest, Appended, OutboxItem, OutboxTarget, Settle, Store, StoreConfig, StoreError,
    now_ms,
};
use bytes::Bytes;
use herald_protocol::{ChannelName, JsonData};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A check's future.
pub type CheckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One conformance check.
#[derive(Clone, Copy)]
pub struct Check {
    /// The function's name.
    pub name: &'static str,
    /// The configuration the store under test must be opened with.
    pub config: fn() -> StoreConfig,
    /// Runs the check.
    pub run: fn(Arc<dyn Store>) -> CheckFuture,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The configuration most checks run under: the defaults.
pub fn default_config() -> StoreConfig {
    StoreConfig::default()
}

/// Keep 5 messages per channel.
fn count_retention() -> StoreConfig {
    StoreConfig {
        retention_max_messages: 5,
        ..StoreConfig::default()
    }
}

/// Messages older than a minute are gone.
fn age_retention() -> StoreConfig {
    StoreConfig {
        retention_max_age: Duration::from_secs(60),
        ..StoreConfig::default()
    }
}

/// Keys are remembered for one second.
fn short_window() -> StoreConfig {
    StoreConfig {
        idempotency_window: Duration::from_secs(1),
        ..StoreConfig::default()
    }
}

macro_rules! registry {
    ($($name:ident => $config:expr),* $(,)?) => {
        /// Every check, with the configuration it needs.
        pub fn checks() -> Vec<Check> {
            vec![$(Check {
                name: stringify!($name),
                config: $config,
                run: |store| -> CheckFuture { Box::pin($name(store)) },
            }),*]
        }
    };
}

registry! {
    empty_channel => default_config,
    seqs_start_at_one_in_order => default_config,
    concurrent_appends_are_gap_free => default_config,
    multi_channel_publish_is_one_message => default_config,
    crossed_multi_channel_publishes_do_not_deadlock => default_config,
    duplicate_channels_are_written_once => default_config,
    retry_with_same_key_is_duplicate => default_config,
    concurrent_retries_store_once => default_config,
    concurrent_keyed_appends_store_each_key_once => default_config,
    same_key_other_data_conflicts => default_config,
    same_key_other_channels_conflicts => default_config,
    keys_are_scoped_to_publisher => default_config,
    expired_key_is_new => short_window,
    prune_forgets_old_keys => short_window,
    history_pages_with_after_and_limit => default_config,
    retention_by_count => count_retention,
    retention_by_age => age_retention,
    positions_of_several_channels => default_config,
    data_round_trips_byte_exact => default_config,
    ping_answers => default_config,
    publish_events_are_stored_with_the_message => default_config,
    claims_are_exclusive_and_leases_expire => default_config,
    enqueue_skips_pending_duplicates => default_config,
    commit_sink_sees_each_stored_append_in_seq_order => default_config,
    commit_sink_holds_the_answer => default_config,
}

/// The configuration the check named `name` needs (panics on an unknown
/// name: a typo in a test file must not silently run with the defaults).
pub fn config_for(name: &str) -> StoreConfig {
    let check = checks()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no conformance check named {name}"));
    (check.config)()
}

/// Runs every check, each against a store `make` opens with that check's
/// configuration.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    for check in checks() {
        eprintln!("conformance: {}", check.name);
        let store = make((check.config)()).await;
        (check.run)(store).await;
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

fn channel(prefix: &str) -> ChannelName {
    ChannelName::new(&unique(prefix)).expect("prefix and hex make a valid channel name")
}

fn json(text: &str) -> JsonData {
    JsonData::from_json_text(Bytes::copy_from_slice(text.as_bytes()))
        .expect("conformance data is valid JSON")
}

/// A request as ingest builds it: fresh id, ts now.
fn request(channels: &[&ChannelName], data: &str) -> AppendRequest {
    AppendRequest {
        outbox: Vec::new(),
        channels: channels.iter().map(|c| (*c).clone()).collect(),
        data: json(data),
        from: None,
        publisher: "conformance".into(),
        key: None,
        id: uuid::Uuid::now_v7().to_string(),
        ts: now_ms(),
    }
}

fn keyed(channels: &[&ChannelName], data: &str, publisher: &str, key: &str) -> AppendRequest {
    AppendRequest {
        outbox: Vec::new(),
        publisher: publisher.into(),
        key: Some(key.into()),
        ..request(channels, data)
    }
}

async fn append(store: &Arc<dyn Store>, req: AppendRequest) -> Appended {
    store.append(req).await.expect("append")
}

async fn seqs_of(store: &Arc<dyn Store>, ch: &ChannelName) -> Vec<u64> {
    store
        .history(ch, 0, 1000)
        .await
        .expect("history")
        .messages
        .iter()
        .map(|m| m.seq)
        .collect()
}

fn seq_in(a: &Appended, ch: &ChannelName) -> u64 {
    a.seqs
        .iter()
        .find(|(c, _)| c == ch)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("no seq for {ch} in {a:?}"))
}

// ---------------------------------------------------------------------------
// Checks

/// 500 appends from 50 tasks over 5 channels, most with keys (two
/// publishers, 40 keys each, data "A" or "B"): each channel's seqs are
/// exactly 1..=n; per (publisher, key) one append is stored, the same data
/// is a duplicate answered with the stored id/ts/seqs, other data a
/// conflict that stores nothing.
///
/// Under group commit many of these share one transaction, so a retry can
/// meet its first append in the same batch.
pub async fn concurrent_keyed_appends_store_each_key_once(store: Arc<dyn Store>) {
    const TASKS: usize = 50;
    const EACH: usize = 10;
    let chans: Vec<ChannelName> = (0..5).map(|i| channel(&format!("group_{i}"))).collect();

    /// What request `j` is: its channel, its (publisher, key) family when
    /// keyed, and its data variant.
    fn shape(j: usize) -> (usize, Option<(String, String)>, &'static str) {
        let family = j % 80;
        let variant = if j.is_multiple_of(3) { "B" } else { "A" };
        if j.is_multiple_of(7) {
            return (j % 5, None, variant);
        }
        let publisher = if family < 40 { "alice" } else { "bob" };
        // j ≡ family (mod 80), so a family always writes to one channel.
        (
            j % 5,
            Some((publisher.to_string(), format!("k{}", family % 40))),
            variant,
        )
    }

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (store, chans) = (store.clone(), chans.clone());
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let j = t * EACH + i;
                let (c, family, variant) = shape(j);
                // The same key from both publishers carries the same data:
                // only the scope tells them apart.
                let data = format!("{{\"key\":{},\"v\":\"{variant}\"}}", j % 40);
                let id = format!("id-{j}");
                let mut r = match &family {
                    None => request(&[&chans[c]], &data),
                    Some((p, k)) => keyed(&[&chans[c]], &data, p, k),
                };
                r.id = id;
                got.push((j, store.append(r).await));
            }
            got
        });
    }
    let mut results: Vec<(usize, Result<Appended, StoreError>)> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.extend(done.expect("append task"));
    }
    assert_eq!(results.len(), TASKS * EACH);

    // Stored messages, by channel: seq -> (id, j).
    let mut stored: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); chans.len()];
    // Per family: the stored one (j, result) and the others.
    let mut winners: HashMap<(String, String), (usize, Appended)> = HashMap::new();
    let mut retries: Vec<(usize, Result<Appended, StoreError>)> = Vec::new();
    for (j, r) in results {
        let (c, family, _) = shape(j);
        match (family, r) {
            (None, r) => {
                let a = r.expect("an append without a key succeeds");
                assert!(!a.duplicate);
                assert_eq!(a.id, format!("id-{j}"));
                let seq = a.seqs[0].1;
                assert!(stored[c].insert(seq, a.id).is_none(), "seq {seq} twice");
            }
            (Some(f), Ok(a)) if !a.duplicate => {
                assert_eq!(a.id, format!("id-{j}"));
                assert_eq!(a.seqs.len(), 1);
                assert_eq!(a.seqs[0].0, chans[c]);
                assert!(stored[c].insert(a.seqs[0].1, a.id.clone()).is_none());
                assert!(winners.insert(f, (j, a)).is_none(), "a key stored twice");
            }
            (Some(_), r) => retries.push((j, r)),
        }
    }
    assert_eq!(winners.len(), 80, "every (publisher, key) stored once");
    let (mut dups, mut conflicts) = (0, 0);
    for (j, r) in retries {
        let (_, family, variant) = shape(j);
        let family = family.expect("keyed");
        let (wj, w) = &winners[&family];
        let winner_variant = shape(*wj).2;
        match r {
            Ok(a) => {
                assert!(a.duplicate);
                assert_eq!(variant, winner_variant, "a duplicate has the stored data");
                assert_eq!((&a.id, a.ts, &a.seqs), (&w.id, w.ts, &w.seqs));
                dups += 1;
            }
            Err(StoreError::Conflict) => {
                assert_ne!(variant, winner_variant, "same data never conflicts");
                conflicts += 1;
            }
            Err(e) => panic!("request {j}: {e:?}"),
        }
    }
    assert!(
        dups > 0 && conflicts > 0,
        "dups {dups}, conflicts {conflicts}"
    );

    let mut total = 0;
    for (c, want) in chans.iter().zip(&stored) {
        let n = want.len() as u64;
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        let h = store.history(c, 0, 10_000).await.expect("history");
        assert_eq!(h.last_seq, h.messages.len() as u64, "{c}: last_seq");
        let got: Vec<(u64, String)> = h.messages.into_iter().map(|m| (m.seq, m.id)).collect();
        let want: Vec<(u64, String)> = want.iter().map(|(s, id)| (*s, id.clone())).collect();
        assert_eq!(got, want, "{c}: history is what was answered");
        total += n;
    }
    // Unkeyed ones plus one per family; conflicts and duplicates stored nothing.
    let unkeyed = (0..TASKS * EACH).filter(|j| j.is_multiple_of(7)).count() as u64;
    assert_eq!(total, unkeyed + 80);
}

/// A channel that never had a message: empty history, `last_seq` 0,
/// `first_seq` 1, position 0.
pub async fn empty_channel(store: Arc<dyn Store>) {
    let ch = channel("empty");
    let h = store.history(&ch, 0, 100).await.expect("history");
    assert!(h.messages.is_empty());
    assert_eq!(h.last_seq, 0);
    assert_eq!(h.first_seq, 1);
    assert_eq!(
        store
            .positions(std::slice::from_ref(&ch))
            .await
            .expect("positions"),
        vec![0]
    );
    assert_eq!(
        store.positions(&[]).await.expect("positions"),
        Vec::<u64>::new()
    );
}

/// Seqs are 1, 2, 3, ... and history returns the messages in that order
/// with their id, ts and `from`.
pub async fn seqs_start_at_one_in_order(store: Arc<dyn Store>) {
    let ch = channel("order");
    let mut sent = Vec::new();
    for i in 1..=5u64 {
        let mut req = request(&[&ch], &format!("{{\"n\":{i}}}"));
        req.from = (i % 2 == 0).then(|| format!("user-{i}"));
        let a = append(&store, req.clone()).await;
        assert_eq!(a.seqs, vec![(ch.clone(), i)]);
        assert_eq!(a.id, req.id);
        assert_eq!(a.ts, req.ts);
        assert!(!a.duplicate);
        sent.push(req);
    }
    let h = store.history(&ch, 0, 100).await.expect("history");
    assert_eq!(h.last_seq, 5);
    assert_eq!(h.first_seq, 1);
    assert_eq!(h.messages.len(), 5);
    for (i, (m, req)) in h.messages.iter().zip(&sent).enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(m.channel, ch);
        assert_eq!(m.id, req.id);
        assert_eq!(m.ts, req.ts);
        assert_eq!(m.from, req.from);
        assert_eq!(m.data.as_bytes(), req.data.as_bytes());
    }
}

/// 200 appends to one channel from 20 tasks at once: seqs exactly 1..=200,
/// each once, each id once (DESIGN.md guarantee 2).
pub async fn concurrent_appends_are_gap_free(store: Arc<dyn Store>) {
    const TASKS: usize = 20;
    const EACH: usize = 10;
    let ch = channel("race");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        let ch = ch.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let a = append(&store, request(&[&ch], &format!("[{t},{i}]"))).await;
                got.push((seq_in(&a, &ch), a.id));
            }
            got
        });
    }
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        for (seq, id) in done.expect("append task") {
            assert!(
                by_seq.insert(seq, id).is_none(),
                "seq {seq} handed out twice"
            );
        }
    }
    let want: BTreeSet<u64> = (1..=(TASKS * EACH) as u64).collect();
    assert_eq!(by_seq.keys().copied().collect::<BTreeSet<_>>(), want);
    let h = store.history(&ch, 0, 1000).await.expect("history");
    assert_eq!(h.last_seq, (TASKS * EACH) as u64);
    let stored: Vec<u64> = h.messages.iter().map(|m| m.seq).collect();
    assert_eq!(stored, want.iter().copied().collect::<Vec<_>>());
    let ids: HashSet<&str> = h.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), TASKS * EACH, "ids must be distinct");
    for m in &h.messages {
        assert_eq!(by_seq.get(&m.seq), Some(&m.id));
    }
}

/// One publish to two channels: one id, one seq per channel in request
/// order, in both histories.
pub async fn multi_channel_publish_is_one_message(store: Arc<dyn Store>) {
    let a = channel("multi_a");
    let b = channel("multi_b");
    append(&store, request(&[&a], "1")).await;
    append(&store, request(&[&a], "2")).await;
    let req = request(&[&b, &a], "{\"both\":true}");
    let got = append(&store, req.clone()).await;
    assert_eq!(got.id, req.id);
    assert_eq!(got.seqs, vec![(b.clone(), 1), (a.clone(), 3)]);
    for (ch, seq) in [(&a, 3), (&b, 1)] {
        let h = store.history(ch, seq - 1, 10).await.expect("history");
        assert_eq!(h.messages.len(), 1);
        assert_eq!(h.messages[0].seq, seq);
        assert_eq!(h.messages[0].id, req.id);
        assert_eq!(h.messages[0].channel, *ch);
        assert_eq!(h.messages[0].data.as_bytes(), b"{\"both\":true}");
    }
}

/// Publishes to [a, b] and [b, a] at the same time neither deadlock nor
/// break either channel's seqs, and every message is in both channels.
pub async fn crossed_multi_channel_publishes_do_not_deadlock(store: Arc<dyn Store>) {
    const TASKS: usize = 10;
    const EACH: usize = 5;
    let a = channel("cross_a");
    let b = channel("cross_b");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let chans = if t % 2 == 0 { [&a, &b] } else { [&b, &a] };
                let got = append(&store, request(&chans, &format!("[{t},{i}]"))).await;
                assert_eq!(got.seqs[0].0, *chans[0], "seqs in request order");
                ids.push(got.id);
            }
            ids
        });
    }
    let all = async {
        let mut ids = HashSet::new();
        while let Some(done) = tasks.join_next().await {
            ids.extend(done.expect("append task"));
        }
        ids
    };
    let ids = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("crossed publishes deadlocked");
    let n = (TASKS * EACH) as u64;
    for ch in [&a, &b] {
        let h = store.history(ch, 0, 1000).await.expect("history");
        assert_eq!(
            h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        let here: HashSet<String> = h.messages.iter().map(|m| m.id.clone()).collect();
        assert_eq!(here, ids, "every message in both channels");
    }
}

/// A channel listed twice is written once (ingest rejects this; the store
/// stays consistent anyway).
pub async fn duplicate_channels_are_written_once(store: Arc<dyn Store>) {
    let a = channel("dup");
    let got = append(&store, request(&[&a, &a], "1")).await;
    assert_eq!(got.seqs, vec![(a.clone(), 1)]);
    assert_eq!(seqs_of(&store, &a).await, vec![1]);
}

/// A retry with the same key, channels and data (a new id and ts, as ingest
/// assigns them per attempt) returns the first result with
/// `duplicate: true` and stores nothing; listing the channels in another
/// order is the same publish, answered in the new order.
pub async fn retry_with_same_key_is_duplicate(store: Arc<dyn Store>) {
    let a = channel("retry_a");
    let b = channel("retry_b");
    let key = unique("key");
    let first = append(&store, keyed(&[&a, &b], "{\"x\":1}", "pub", &key)).await;
    assert!(!first.duplicate);
    let mut again = keyed(&[&a, &b], "{\"x\":1}", "pub", &key);
    again.ts += 10;
    let second = append(&store, again).await;
    assert!(second.duplicate);
    assert_eq!(second.id, first.id);
    assert_eq!(second.ts, first.ts);
    assert_eq!(second.seqs, first.seqs);
    let swapped = append(&store, keyed(&[&b, &a], "{\"x\":1}", "pub", &key)).await;
    assert!(swapped.duplicate);
    assert_eq!(swapped.id, first.id);
    assert_eq!(swapped.seqs, vec![(b.clone(), 1), (a.clone(), 1)]);
    assert_eq!(seqs_of(&store, &a).await, vec![1]);
    assert_eq!(seqs_of(&store, &b).await, vec![1]);
    assert_eq!(
        store.positions(&[a, b]).await.expect("positions"),
        vec![1, 1]
    );
}

/// Ten concurrent attempts with one key store exactly one message; all get
/// the same id and seqs, exactly one with `duplicate: false`.
pub async fn concurrent_retries_store_once(store: Arc<dyn Store>) {
    const TASKS: usize = 10;
    let ch = channel("retries");
    let key = unique("key");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (store, ch, key) = (store.clone(), ch.clone(), key.clone());
        tasks.spawn(async move { append(&store, keyed(&[&ch], "\"once\"", "pub", &key)).await });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.push(done.expect("append task"));
    }
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "{results:?}"
    );
    let first = results.iter().find(|r| !r.duplicate).expect("one original");
    for r in &results {
        assert_eq!(r.id, first.id);
        assert_eq!(r.ts, first.ts);
        assert_eq!(r.seqs, vec![(ch.clone(), 1)]);
    }
    assert_eq!(seqs_of(&store, &ch).await, vec![1]);
}

/// The same key with other data is a conflict, and stores nothing.
pub async fn same_key_other_data_conflicts(store: Arc<dyn Store>) {
    let ch = channel("conflict_data");
    let key = unique("key");
    append(&store, keyed(&[&ch], "{\"v\":1}", "pub", &key)).await;
    let err = store
        .append(keyed(&[&ch], "{\"v\":2}", "pub", &key))
        .await
        .expect_err("other data under the same key");
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(seqs_of(&store, &ch).await, vec![1]);
}

/// The same key with another channel set is a conflict, and stores nothing.
pub async fn same_key_other_channels_conflicts(store: Arc<dyn Store>) {
    let a = channel("conflict_a");
    let b = channel("conflict_b");
    let key = unique("key");
    append(&store, keyed(&[&a], "1", "pub", &key)).await;
    for chans in [&[&a, &b][..], &[&b][..]] {
        let err = store
            .append(keyed(chans, "1", "pub", &key))
            .await
            .expect_err("other channels under the same key");
        assert!(matches!(err, StoreError::Conflict), "{err:?}");
    }
    assert_eq!(
        store.positions(&[a, b]).await.expect("positions"),
        vec![1, 0]
    );
}

/// Keys are scoped to the publisher: the same key from two publishers is two
/// messages.
pub async fn keys_are_scoped_to_publisher(store: Arc<dyn Store>) {
    let ch = channel("scoped");
    let key = unique("key");
    let one = append(&store, keyed(&[&ch], "1", "alice", &key)).await;
    let two = append(&store, keyed(&[&ch], "1", "bob", &key)).await;
    assert!(!one.duplicate && !two.duplicate);
    assert_ne!(one.id, two.id);
    assert_eq!((seq_in(&one, &ch), seq_in(&two, &ch)), (1, 2));
    let again = append(&store, keyed(&[&ch], "1", "bob", &key)).await;
    assert!(again.duplicate);
    assert_eq!(again.id, two.id);
}

/// A key older than the window (measured from the stored request's `ts` to
/// the new one's) is forgotten: the publish is stored anew, even with other
/// data, and the new result is what later retries get. Needs a 1 s window.
pub async fn expired_key_is_new(store: Arc<dyn Store>) {
    let ch = channel("expired");
    let key = unique("key");
    let now = now_ms();
    let mut old = keyed(&[&ch], "\"a\"", "pub", &key);
    old.ts = now - 3_000;
    let first = append(&store, old).await;
    assert_eq!(first.seqs, vec![(ch.clone(), 1)]);

    let fresh = keyed(&[&ch], "\"a\"", "pub", &key);
    let second = append(&store, AppendRequest { ts: now, ..fresh }).await;
    assert!(!second.duplicate, "a key past its window is new");
    assert_ne!(second.id, first.id);
    assert_eq!(second.seqs, vec![(ch.clone(), 2)]);

    let retry = append(
        &store,
        AppendRequest {
            outbox: Vec::new(),
            ts: now,
            ..keyed(&[&ch], "\"a\"", "pub", &key)
        },
    )
    .await;
    assert!(retry.duplicate);
    assert_eq!(retry.id, second.id);

    let later = AppendRequest {
        outbox: Vec::new(),
        ts: now + 3_000,
        ..keyed(&[&ch], "\"other\"", "pub", &key)
    };
    let third = append(&store, later).await;
    assert!(!third.duplicate, "other data is fine once the key expired");
    assert_eq!(third.seqs, vec![(ch.clone(), 3)]);
    assert_eq!(seqs_of(&store, &ch).await, vec![1, 2, 3]);
}

/// `prune` forgets keys older than the window (here 1 s) relative to its
/// `now_ms`, and keeps messages younger than the retention age.
pub async fn prune_forgets_old_keys(store: Arc<dyn Store>) {
    let ch = channel("prune_keys");
    let key = unique("key");
    let req = keyed(&[&ch], "1", "pub", &key);
    let ts = req.ts;
    append(&store, req).await;
    // Young messages are not counted as deleted.
    assert_eq!(store.prune(ts + 5_000).await.expect("prune"), 0);
    assert_eq!(seqs_of(&store, &ch).await, vec![1], "young messages stay");
    // Same ts: only a deleted key row makes this new.
    let again = append(
        &store,
        AppendRequest {
            outbox: Vec::new(),
            ts,
            ..keyed(&[&ch], "1", "pub", &key)
        },
    )
    .await;
    assert!(!again.duplicate, "prune must delete keys past the window");
    assert_eq!(again.seqs, vec![(ch.clone(), 2)]);
}

/// `after` and `limit` page through history; `last_seq`/`first_seq` are the
/// channel's whatever the page.
pub async fn history_pages_with_after_and_limit(store: Arc<dyn Store>) {
    let ch = channel("paging");
    for i in 0..10 {
        append(&store, request(&[&ch], &i.to_string())).await;
    }
    let page = |after: u64, limit: u32| {
        let (store, ch) = (store.clone(), ch.clone());
        async move {
            let h = store.history(&ch, after, limit).await.expect("history");
            assert_eq!((h.last_seq, h.first_seq), (10, 1));
            h.messages.iter().map(|m| m.seq).collect::<Vec<_>>()
        }
    };
    assert_eq!(page(0, 3).await, vec![1, 2, 3]);
    assert_eq!(page(3, 3).await, vec![4, 5, 6]);
    assert_eq!(page(6, 100).await, vec![7, 8, 9, 10]);
    assert_eq!(page(9, 3).await, vec![10]);
    assert_eq!(page(10, 3).await, Vec::<u64>::new());
    assert_eq!(page(1000, 3).await, Vec::<u64>::new());
    assert_eq!(page(u64::MAX, 3).await, Vec::<u64>::new());
    assert_eq!(page(0, 0).await, Vec::<u64>::new());
    // Data of a page is that seq's data.
    let h = store.history(&ch, 4, 1).await.expect("history");
    assert_eq!(h.messages[0].data.as_bytes(), b"4");
}

/// Keeping 5 messages per channel: after 12 publishes history holds 8..=12
/// and says `first_seq` 8. Needs `retention_max_messages = 5`.
pub async fn retention_by_count(store: Arc<dyn Store>) {
    let ch = channel("count");
    let other = channel("count_other");
    append(&store, request(&[&other], "0")).await;
    for i in 1..=12 {
        append(&store, request(&[&ch], &i.to_string())).await;
    }
    let h = store.history(&ch, 0, 100).await.expect("history");
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![8, 9, 10, 11, 12]
    );
    assert_eq!((h.first_seq, h.last_seq), (8, 12));
    assert_eq!(h.messages[0].data.as_bytes(), b"8");
    let h = store.history(&ch, 9, 100).await.expect("history");
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    assert_eq!(h.first_seq, 8);
    // Eviction is per channel.
    assert_eq!(seqs_of(&store, &other).await, vec![1]);
}

/// Messages older than the retention age are not returned even before
/// prune runs, `first_seq` moves past them, and prune deletes them. Needs
/// `retention_max_age = 60 s`.
pub async fn retention_by_age(store: Arc<dyn Store>) {
    let ch = channel("age");
    let now = now_ms();
    for i in 1..=3 {
        append(
            &store,
            AppendRequest {
                outbox: Vec::new(),
                ts: now - 120_000,
                ..request(&[&ch], &i.to_string())
            },
        )
        .await;
    }
    for i in 4..=5 {
        append(&store, request(&[&ch], &i.to_string())).await;
    }
    let check = |label: &'static str| {
        let (store, ch) = (store.clone(), ch.clone());
        async move {
            let h = store.history(&ch, 0, 100).await.expect("history");
            assert_eq!(
                h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
                vec![4, 5],
                "{label}"
            );
            assert_eq!((h.first_seq, h.last_seq), (4, 5), "{label}");
        }
    };
    check("before prune").await;
    assert_eq!(store.prune(now_ms()).await.expect("prune"), 3);
    check("after prune").await;
    assert_eq!(store.prune(now_ms()).await.expect("prune"), 0);
    assert_eq!(
        store
            .positions(std::slice::from_ref(&ch))
            .await
            .expect("positions"),
        vec![5]
    );

    // All expired: nothing returned, first_seq = last_seq + 1.
    let gone = channel("age_gone");
    append(
        &store,
        AppendRequest {
            outbox: Vec::new(),
            ts: now - 120_000,
            ..request(&[&gone], "1")
        },
    )
    .await;
    let h = store.history(&gone, 0, 100).await.expect("history");
    assert!(h.messages.is_empty());
    assert_eq!((h.first_seq, h.last_seq), (2, 1));
}

/// Positions of several channels, in the order asked, repeats and unknown
/// channels included.
pub async fn positions_of_several_channels(store: Arc<dyn Store>) {
    let a = channel("pos_a");
    let b = channel("pos_b");
    let c = channel("pos_c");
    for _ in 0..3 {
        append(&store, request(&[&a], "1")).await;
    }
    append(&store, request(&[&b], "1")).await;
    append(&store, request(&[&a, &b], "1")).await;
    let got = store
        .positions(&[c.clone(), a.clone(), b.clone(), a.clone()])
        .await
        .expect("positions");
    assert_eq!(got, vec![0, 4, 2, 4]);
}

/// `data` and `from` come back byte for byte: whitespace, escapes, unicode,
/// nesting, big numbers.
pub async fn data_round_trips_byte_exact(store: Arc<dyn Store>) {
    let ch = channel("bytes");
    let texts = [
        r#"{"text":"héllo wörld 👋 日本語","esc":"quote \" backslash \\ nul \u0000 tab \t","n":12345678901234567890123}"#,
        "{ \"spaced\" :\t[ 1 , 2.50 , -3e10 ,null,true,false ] ,\n \"nested\": {\"a\": {\"b\": {\"c\": [[], {}]}}} }",
        r#""just a string with \ud83d\ude00 escapes""#,
        "0",
        "[]",
        "null",
    ];
    let from = Some("操作員 op:42 <x@y>".to_string());
    for t in texts {
        append(
            &store,
            AppendRequest {
                outbox: Vec::new(),
                from: from.clone(),
                ..request(&[&ch], t)
            },
        )
        .await;
    }
    let h = store.history(&ch, 0, 100).await.expect("history");
    assert_eq!(h.messages.len(), texts.len());
    for (m, t) in h.messages.iter().zip(texts) {
        assert_eq!(m.data.as_bytes(), t.as_bytes());
        assert_eq!(m.from, from);
    }
}

/// `ping` answers on a working store.
pub async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}

// ---------------------------------------------------------------------------
// Webhook outbox
// ---------------------------------------------------------------------------

/// A fresh endpoint name (checks share a store).
fn endpoint(what: &str) -> String {
    unique(what)
}

fn item(endpoint: &str, n: usize) -> OutboxItem {
    OutboxItem {
        endpoint: endpoint.to_owned(),
        event_id: format!("ev_{n}"),
        body: format!("{{\"n\":{n}}}"),
    }
}

/// A client publish's `publish` events are written with the message: one
/// per (endpoint, channel) target, carrying the committed seq, id, ts, from
/// and data; a duplicate (same key) writes none.
pub async fn publish_events_are_stored_with_the_message(store: Arc<dyn Store>) {
    let (a, b) = (channel("chat"), channel("dashboard"));
    let (bot, audit) = (endpoint("bot"), endpoint("audit"));
    append(&store, request(&[&a], r#"{"warm":1}"#)).await;
    let mut req = keyed(&[&a, &b], r#"{"content":"hi"}"#, "sub:v1", &unique("key"));
    req.from = Some("v1".into());
    req.outbox = vec![
        OutboxTarget {
            endpoint: bot.clone(),
            channel: a.clone(),
        },
        OutboxTarget {
            endpoint: audit.clone(),
            channel: a.clone(),
        },
        OutboxTarget {
            endpoint: audit.clone(),
            channel: b.clone(),
        },
    ];
    let first = append(&store, req.clone()).await;
    let again = append(
        &store,
        AppendRequest {
            id: "other".into(),
            ..req
        },
    )
    .await;
    assert!(again.duplicate);
    let now = now_ms() + 1000;
    let got = store
        .claim(&bot, 10, now, 30_000, "o")
        .await
        .expect("claim");
    assert_eq!(
        got.len(),
        1,
        "one event for the bot, none for the duplicate: {got:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&got[0].body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"id": got[0].event_id, "type": "publish", "ts": first.ts,
            "channel": a.as_str(),
            "message": {"channel": a.as_str(), "seq": 2, "id": first.id, "ts": first.ts,
                "from": "v1", "data": {"content": "hi"}}})
    );
    assert_eq!(got[0].attempts, 0);
    let got = store
        .claim(&audit, 10, now, 30_000, "o")
        .await
        .expect("claim");
    let seqs: BTreeSet<(String, u64)> = got
        .iter()
        .map(|c| {
            let v: serde_json::Value = serde_json::from_str(&c.body).expect("outbox call");
            (
                v["channel"].as_str().expect("outbox call").to_owned(),
                v["message"]["seq"].as_u64().expect("outbox call"),
            )
        })
        .collect();
    assert_eq!(
        seqs,
        BTreeSet::from([(a.to_string(), 2), (b.to_string(), 1)]),
        "one event per channel with that channel's seq"
    );
    let ids: HashSet<&str> = got.iter().map(|c| c.event_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "distinct event ids per channel");
}

/// Two claimers at once take disjoint rows that cover the due ones; a
/// leased row is not claimed again until its lease runs out, and then the
/// old claimer can no longer settle it; `Retry` makes a row due later,
/// `Done` removes it; depth counts what is pending.
pub async fn claims_are_exclusive_and_leases_expire(store: Arc<dyn Store>) {
    let ep = endpoint("hook");
    let n = 40;
    let added = store
        .enqueue((0..n).map(|i| item(&ep, i)).collect())
        .await
        .expect("enqueue");
    assert_eq!(added, n as u64);
    let now = now_ms() + 1000;
    let (s1, s2) = (store.clone(), store.clone());
    let (e1, e2) = (ep.clone(), ep.clone());
    let (x, y) = tokio::join!(
        tokio::spawn(async move { s1.claim(&e1, 25, now, 10_000, "one").await }),
        tokio::spawn(async move { s2.claim(&e2, 25, now, 10_000, "two").await }),
    );
    let (x, y) = (
        x.expect("outbox call").expect("claim"),
        y.expect("outbox call").expect("claim"),
    );
    let xs: HashSet<i64> = x.iter().map(|c| c.row).collect();
    let ys: HashSet<i64> = y.iter().map(|c| c.row).collect();
    assert!(xs.is_disjoint(&ys), "two claimers got the same row");
    assert_eq!(
        xs.len() + ys.len(),
        n,
        "together they claimed every due row"
    );
    assert!(
        store
            .claim(&ep, 100, now + 5_000, 10_000, "three")
            .await
            .expect("outbox call")
            .is_empty(),
        "leased rows are not claimed again"
    );
    let depth = store.outbox_depth().await.expect("depth");
    assert!(
        depth
            .iter()
            .any(|d| d.endpoint == ep && d.pending == n as u64),
        "{depth:?}"
    );

    // "one"'s lease runs out: "three" takes its rows over.
    let later = now + 10_001;
    let taken = store
        .claim(&ep, 100, later, 10_000, "three")
        .await
        .expect("outbox call");
    assert_eq!(
        taken.iter().map(|c| c.row).collect::<HashSet<_>>(),
        xs.union(&ys).copied().collect()
    );
    let row = x[0].row;
    assert!(
        !store
            .settle(row, "one", Settle::Done)
            .await
            .expect("outbox call"),
        "a lost lease settles nothing"
    );
    assert!(
        store
            .settle(
                row,
                "three",
                Settle::Retry {
                    at_ms: later + 60_000,
                    attempts: 1
                }
            )
            .await
            .expect("outbox call")
    );
    for c in taken.iter().filter(|c| c.row != row) {
        assert!(
            store
                .settle(c.row, "three", Settle::Done)
                .await
                .expect("outbox call")
        );
    }
    assert!(
        store
            .claim(&ep, 100, later + 59_999, 10_000, "four")
            .await
            .expect("outbox call")
            .is_empty()
    );
    let back = store
        .claim(&ep, 100, later + 60_000, 10_000, "four")
        .await
        .expect("outbox call");
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].row, back[0].attempts), (row, 1));
    assert!(
        store
            .settle(row, "four", Settle::Done)
            .await
            .expect("outbox call")
    );
    let depth = store.outbox_depth().await.expect("depth");
    assert!(!depth.iter().any(|d| d.endpoint == ep), "{depth:?}");
}

/// An (endpoint, event id) pair already pending is stored once; the same
/// event id for another endpoint is its own delivery.
pub async fn enqueue_skips_pending_duplicates(store: Arc<dyn Store>) {
    let (e1, e2) = (endpoint("a"), endpoint("b"));
    assert_eq!(
        store
            .enqueue(vec![item(&e1, 1), item(&e1, 2)])
            .await
            .expect("outbox call"),
        2
    );
    assert_eq!(
        store
            .enqueue(vec![item(&e1, 2), item(&e1, 3), item(&e2, 2)])
            .await
            .expect("outbox call"),
        2
    );
    assert_eq!(store.enqueue(Vec::new()).await.expect("outbox call"), 0);
    let now = now_ms() + 1000;
    let got = store
        .claim(&e1, 100, now, 1000, "o")
        .await
        .expect("outbox call");
    let ids: Vec<&str> = got.iter().map(|c| c.event_id.as_str()).collect();
    assert_eq!(ids, ["ev_1", "ev_2", "ev_3"], "oldest first, each once");
    assert_eq!(got[0].body, r#"{"n":1}"#);
    assert_eq!(
        store
            .claim(&e2, 100, now, 1000, "o")
            .await
            .expect("outbox call")
            .len(),
        1
    );
}

/// Records what a commit sink is handed, and holds it while `hold` is set
/// (its callers wait until it lets go).
#[derive(Default)]
struct Recording {
    /// (channel, seq) of every stored append, per channel in hand-off order.
    seen: std::sync::Mutex<Vec<(ChannelName, u64, String)>>,
    /// Batches held back (their callers are not answered yet).
    held: std::sync::Mutex<Vec<crate::Committed>>,
    hold: std::sync::atomic::AtomicBool,
}

impl crate::CommitSink for Recording {
    fn committed(&self, batch: Vec<crate::Committed>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for c in &batch {
            assert!(!c.appended().duplicate, "a duplicate reached the sink");
            for (ch, seq) in &c.appended().seqs {
                seen.push((ch.clone(), *seq, c.appended().id.clone()));
            }
        }
        drop(seen);
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
        }
    }
}

/// With a commit sink, 400 appends from 16 tasks over 3 channels (a fifth
/// of them on two channels at once, some keyed and retried) reach the sink
/// once each, and per channel in ascending seq order, the order the bus
/// must publish them in (DESIGN.md guarantee 2); duplicates and conflicts
/// never reach it and are answered as without a sink.
pub async fn commit_sink_sees_each_stored_append_in_seq_order(store: Arc<dyn Store>) {
    let sink = Arc::new(Recording::default());
    assert!(
        store.set_commit_sink(sink.clone()),
        "both backends support the commit hand-off"
    );
    let chans: Vec<ChannelName> = (0..3).map(|i| channel(&format!("sink_{i}"))).collect();
    let key = unique("sink_key");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16usize {
        let (store, chans, key) = (store.clone(), chans.clone(), key.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25usize {
                let j = t * 25 + i;
                let (a, b) = (&chans[j % 3], &chans[(j + 1) % 3]);
                let r = if j % 5 == 0 {
                    request(&[a, b], &format!("{{\"j\":{j}}}"))
                } else if j % 50 == 1 {
                    // One key, the same data from every task: stored once.
                    keyed(&[&chans[0]], "{\"keyed\":true}", "sink", &key)
                } else {
                    request(&[a], &format!("{{\"j\":{j}}}"))
                };
                let got = store.append(r).await.expect("append");
                if !got.duplicate {
                    ids.push(got.id);
                }
            }
            ids
        });
    }
    let mut stored = HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        stored.extend(ids.expect("task"));
    }
    // A conflict (same key, other data) is answered without the sink.
    let conflict = store
        .append(keyed(&[&chans[0]], "{\"keyed\":false}", "sink", &key))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict)),
        "{conflict:?}"
    );

    let seen = sink.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let handed: HashSet<String> = seen.iter().map(|(_, _, id)| id.clone()).collect();
    assert_eq!(
        handed, stored,
        "every stored append, and only those, reached the sink"
    );
    for ch in &chans {
        let order: Vec<u64> = seen
            .iter()
            .filter(|(c, _, _)| c == ch)
            .map(|(_, s, _)| *s)
            .collect();
        let n = u64::try_from(order.len()).expect("small");
        assert_eq!(
            order,
            (1..=n).collect::<Vec<_>>(),
            "{ch}: hand-off order must be seq order"
        );
        assert_eq!(
            seqs_of(&store, ch).await,
            (1..=n).collect::<Vec<_>>(),
            "{ch}: history"
        );
    }
}

/// A stored append is answered only once the sink let go of it (the
/// publish after commit happens before the answer, DESIGN.md guarantee 1);
/// a duplicate of it is answered at once meanwhile.
pub async fn commit_sink_holds_the_answer(store: Arc<dyn Store>) {
    let sink = Arc::new(Recording::default());
    assert!(store.set_commit_sink(sink.clone()));
    let ch = channel("sink_hold");
    let key = unique("hold_key");
    let first = append(&store, keyed(&[&ch], "{\"n\":1}", "hold", &key)).await;
    assert_eq!(first.seqs, vec![(ch.clone(), 1)]);

    sink.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let pending = tokio::spawn({
        let (store, ch) = (store.clone(), ch.clone());
        async move { store.append(request(&[&ch], "{\"n\":2}")).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink never got the append"
        );
        tokio::task::yield_now().await;
    }
    // Committed (history shows it) but not answered while the sink holds it.
    assert_eq!(seqs_of(&store, &ch).await, vec![1, 2]);
    assert!(
        !pending.is_finished(),
        "answered while the sink still held it"
    );
    // Not through the sink: a duplicate is answered at once.
    let dup = append(&store, keyed(&[&ch], "{\"n\":1}", "hold", &key)).await;
    assert!(dup.duplicate);
    assert_eq!(dup.seqs, first.seqs);
    assert!(!pending.is_finished());

    sink.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    sink.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let second = pending.await.expect("task").expect("append");
    assert_eq!(second.seqs, vec![(ch.clone(), 2)]);
    assert!(!second.duplicate);
}
