//! The bus and presence conformance suites: every implementation (local,
//! Redis, Redis Cluster) must pass them unchanged. They take a factory so one
//! suite serves every backend.

use crate::{Bus, BusHandler, Presence};
use herald_protocol::bus::{Envelope, Kind};
use herald_protocol::server::ClientInfo;
use herald_protocol::{ChannelName, JsonData};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A handler that records what it receives.
#[derive(Default)]
pub struct Recorder {
    /// Envelopes received, in order.
    pub got: Mutex<Vec<Envelope>>,
    /// Reconnects seen.
    pub reconnects: Mutex<u32>,
}

impl BusHandler for Recorder {
    fn on_envelope(&self, env: Envelope) {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).push(env);
    }
    fn on_reconnect(&self) {
        *self.reconnects.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}

impl Recorder {
    fn snapshot(&self) -> Vec<Envelope> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).expect("test channel names are valid")
}

fn msg(c: &str, seq: u64) -> Envelope {
    Envelope::message(
        ch(c),
        seq,
        format!("m{seq}"),
        1_700_000_000_000 + i64::try_from(seq).unwrap_or(0),
        Some("tester".into()),
        &JsonData::from_value(&serde_json::json!({"n": seq, "text": "héllo \"q\""})),
    )
}

async fn wait_for(rec: &Recorder, n: usize) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = rec.snapshot();
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs every bus check against buses made by `make`. Every bus `make`
/// returns must reach the same underlying bus (e.g. the same Redis), as the
/// nodes of one deployment do.
pub async fn run_bus<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Bus>>,
{
    delivers_to_subscribed_only(make().await).await;
    several_nodes(make().await, make().await).await;
    unsubscribe_stops(make().await).await;
    signal_and_presence_kinds(make().await).await;
    batch_keeps_order_per_channel(make().await).await;
}

/// A subscribed channel's envelopes arrive intact and in publish order; other
/// channels' do not arrive.
pub async fn delivers_to_subscribed_only(bus: Arc<dyn Bus>) {
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("conf_a")]).await.expect("subscribe");
    for i in 1..=20 {
        bus.publish(&msg("conf_b", i)).await.expect("publish");
        bus.publish(&msg("conf_a", i)).await.expect("publish");
    }
    let got = wait_for(&rec, 20).await;
    let want: Vec<Envelope> = (1..=20).map(|i| msg("conf_a", i)).collect();
    assert_eq!(
        got, want,
        "exactly conf_a's envelopes, in order, byte-exact"
    );
}

/// Two attached nodes both receive a channel they both subscribe to.
pub async fn several_nodes(bus1: Arc<dyn Bus>, bus2: Arc<dyn Bus>) {
    let r1 = Arc::new(Recorder::default());
    let r2 = Arc::new(Recorder::default());
    let s1 = bus1.attach(r1.clone());
    let s2 = bus2.attach(r2.clone());
    s1.subscribe(&[ch("conf_multi")]).await.expect("subscribe");
    s2.subscribe(&[ch("conf_multi")]).await.expect("subscribe");
    bus1.publish(&msg("conf_multi", 1)).await.expect("publish");
    bus2.publish(&msg("conf_multi", 2)).await.expect("publish");
    let g1 = wait_for(&r1, 2).await;
    let g2 = wait_for(&r2, 2).await;
    assert_eq!(g1.len(), 2);
    assert_eq!(g2.len(), 2);
}

/// After unsubscribe nothing more arrives (checked after a marker on another
/// subscribed channel, so no sleep is needed).
pub async fn unsubscribe_stops(bus: Arc<dyn Bus>) {
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("conf_u"), ch("conf_marker")])
        .await
        .expect("subscribe");
    bus.publish(&msg("conf_u", 1)).await.expect("publish");
    wait_for(&rec, 1).await;
    sub.unsubscribe(&[ch("conf_u")]).await.expect("unsubscribe");
    bus.publish(&msg("conf_u", 2)).await.expect("publish");
    bus.publish(&msg("conf_marker", 1)).await.expect("publish");
    let got = wait_for(&rec, 2).await;
    let chans: Vec<&str> = got.iter().map(|e| e.ch.as_str()).collect();
    assert_eq!(chans, ["conf_u", "conf_marker"]);
}

/// Signal and presence envelopes travel like messages.
pub async fn signal_and_presence_kinds(bus: Arc<dyn Bus>) {
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("conf_s")]).await.expect("subscribe");
    let d = JsonData::from_value(&serde_json::json!({"typing": true}));
    bus.publish(&Envelope::signal(ch("conf_s"), Some("op:1".into()), &d))
        .await
        .expect("publish");
    let got = wait_for(&rec, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].k, Kind::Signal);
    assert_eq!(got[0].seq, None);
    assert_eq!(got[0].data.as_ref(), br#"{"typing":true}"#);
}

/// One `publish_batch` of 300 envelopes over three channels, interleaved
/// (one of them not subscribed), and a second batch after it: each
/// subscribed channel's envelopes arrive intact, once, in slice order, the
/// second batch's after the first's (ingest publishes one commit batch per
/// call and relies on this for seq order, DESIGN.md guarantee 2).
pub async fn batch_keeps_order_per_channel(bus: Arc<dyn Bus>) {
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("conf_batch_a"), ch("conf_batch_b")])
        .await
        .expect("subscribe");
    let names = ["conf_batch_a", "conf_batch_b", "conf_batch_x"];
    let first: Vec<Envelope> = (1..=300u64)
        .map(|i| msg(names[usize::try_from(i % 3).unwrap_or(0)], i))
        .collect();
    bus.publish_batch(&first).await.expect("publish_batch");
    let second = [msg("conf_batch_b", 301), msg("conf_batch_a", 302)];
    bus.publish_batch(&second).await.expect("publish_batch");
    bus.publish_batch(&[])
        .await
        .expect("an empty batch is fine");
    let got = wait_for(&rec, 202).await;
    for name in ["conf_batch_a", "conf_batch_b"] {
        let want: Vec<&Envelope> = first
            .iter()
            .chain(&second)
            .filter(|e| e.ch.as_str() == name)
            .collect();
        let mine: Vec<&Envelope> = got.iter().filter(|e| e.ch.as_str() == name).collect();
        assert_eq!(mine, want, "{name}: every envelope once, in batch order");
    }
    assert!(got.iter().all(|e| e.ch.as_str() != "conf_batch_x"));
}

/// Runs every presence check against presences made by `make`.
pub async fn run_presence<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Presence>>,
{
    let p = make().await;
    let c = ch("conf_p");
    assert!(p.list(&c).await.expect("list").is_empty());
    let a = ClientInfo {
        sub: "u:1".into(),
        conn: "c_a".into(),
        info: Some(serde_json::json!({"name":"A"})),
    };
    let b = ClientInfo {
        sub: "u:2".into(),
        conn: "c_b".into(),
        info: None,
    };
    p.join(&c, &a).await.expect("join");
    p.join(&c, &b).await.expect("join");
    p.join(&c, &a).await.expect("join twice is harmless");
    let mut l = p.list(&c).await.expect("list");
    l.sort_by(|x, y| x.conn.cmp(&y.conn));
    assert_eq!(l, vec![a.clone(), b.clone()]);
    p.leave(&c, "c_a").await.expect("leave");
    assert_eq!(p.list(&c).await.expect("list"), vec![b]);
    p.leave(&c, "c_b").await.expect("leave");
    p.leave(&c, "c_b").await.expect("leave twice is harmless");
    assert!(p.list(&c).await.expect("list").is_empty());
}
