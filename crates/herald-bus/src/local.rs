//! In-process bus and presence for a single node (`herald dev`).
//!
//! Delivery is synchronous in the publisher's task: the handler (the hub)
//! never blocks, so a publish costs one lookup per attached node.
//! Invariant: an envelope reaches exactly the attachments that hold the
//! channel at the moment of the publish.

use crate::{Bus, BusError, BusHandler, BusSubscriber, Presence};
use async_trait::async_trait;
use herald_protocol::ChannelName;
use herald_protocol::bus::Envelope;
use herald_protocol::server::ClientInfo;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// The in-process bus.
#[derive(Default, Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    // std RwLock: nothing awaits while it is held.
    attached: RwLock<Vec<Weak<LocalSubscriber>>>,
}

/// One attachment of [`LocalBus`].
pub struct LocalSubscriber {
    handler: Arc<dyn BusHandler>,
    channels: Mutex<HashSet<ChannelName>>,
}

impl LocalBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, env: &Envelope) -> Result<(), BusError> {
        let targets: Vec<Arc<LocalSubscriber>> = {
            let attached = self
                .inner
                .attached
                .read()
                .unwrap_or_else(|e| e.into_inner());
            attached.iter().filter_map(Weak::upgrade).collect()
        };
        for t in targets {
            let wanted = t
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&env.ch);
            if wanted {
                t.handler.on_envelope(env.clone());
            }
        }
        Ok(())
    }

    fn attach(&self, handler: Arc<dyn BusHandler>) -> Arc<dyn BusSubscriber> {
        let sub = Arc::new(LocalSubscriber {
            handler,
            channels: Mutex::new(HashSet::new()),
        });
        let mut attached = self
            .inner
            .attached
            .write()
            .unwrap_or_else(|e| e.into_inner());
        attached.retain(|w| w.strong_count() > 0);
        attached.push(Arc::downgrade(&sub));
        sub
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[async_trait]
impl BusSubscriber for LocalSubscriber {
    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), BusError> {
        let mut set = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        set.extend(channels.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), BusError> {
        let mut set = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        for c in channels {
            set.remove(c);
        }
        Ok(())
    }
}

/// In-process presence: channel -> connection -> client.
#[derive(Default, Clone)]
pub struct LocalPresence {
    map: Arc<Mutex<HashMap<ChannelName, Members>>>,
}

/// How many members a channel keeps in a sorted `Vec` before it moves to a
/// `BTreeMap`.
const SMALL_MEMBERS: usize = 16;

/// One channel's members, by connection id. A sorted `Vec` while small: most
/// presence channels are a user's own (one member), and a `BTreeMap`'s first
/// leaf costs ~1.1 KB per channel; a `BTreeMap` past [`SMALL_MEMBERS`], so a
/// big room's joins stay logarithmic.
enum Members {
    Small(Vec<ClientInfo>),
    Large(BTreeMap<String, ClientInfo>),
}

impl Members {
    fn insert(&mut self, client: &ClientInfo) {
        match self {
            Members::Small(v) => match v.binary_search_by(|c| c.conn.cmp(&client.conn)) {
                Ok(i) => v[i] = client.clone(),
                Err(_) if v.len() >= SMALL_MEMBERS => {
                    let mut m: BTreeMap<String, ClientInfo> =
                        v.drain(..).map(|c| (c.conn.clone(), c)).collect();
                    m.insert(client.conn.clone(), client.clone());
                    *self = Members::Large(m);
                }
                Err(i) => {
                    if v.len() == v.capacity() && v.len() < 4 {
                        // One slot at a time while tiny (a first push reserves 4).
                        v.reserve_exact(1);
                    }
                    v.insert(i, client.clone());
                }
            },
            Members::Large(m) => {
                m.insert(client.conn.clone(), client.clone());
            }
        }
    }

    fn remove(&mut self, conn: &str) {
        match self {
            Members::Small(v) => {
                if let Ok(i) = v.binary_search_by(|c| c.conn.as_str().cmp(conn)) {
                    v.remove(i);
                }
            }
            Members::Large(m) => {
                m.remove(conn);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Members::Small(v) => v.is_empty(),
            Members::Large(m) => m.is_empty(),
        }
    }

    fn list(&self) -> Vec<ClientInfo> {
        match self {
            Members::Small(v) => v.clone(),
            Members::Large(m) => m.values().cloned().collect(),
        }
    }
}

impl LocalPresence {
    /// A new, empty presence table.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn join(&self, channel: &ChannelName, client: &ClientInfo) -> Result<(), BusError> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(channel.clone())
            .or_insert_with(|| Members::Small(Vec::new()))
            .insert(client);
        Ok(())
    }

    async fn leave(&self, channel: &ChannelName, conn: &str) -> Result<(), BusError> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get_mut(channel) {
            c.remove(conn);
            if c.is_empty() {
                m.remove(channel);
            }
        }
        Ok(())
    }

    async fn list(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, BusError> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.get(channel).map(Members::list).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test]
    async fn local_bus_conformance() {
        // Every node of one deployment shares the same bus.
        let bus = LocalBus::new();
        conformance::run_bus(|| {
            let b = bus.clone();
            async move { Arc::new(b) as Arc<dyn Bus> }
        })
        .await;
    }

    #[tokio::test]
    async fn presence_keeps_order_across_the_small_to_large_switch() {
        let p = LocalPresence::new();
        let ch = ChannelName::new("room").unwrap();
        let client = |i: usize| ClientInfo {
            sub: format!("u{i}"),
            conn: format!("c{i:03}"),
            info: None,
        };
        // Joined in reverse order, past the switch, with a re-join and leaves
        // on both sides of it.
        for i in (0..SMALL_MEMBERS * 2).rev() {
            p.join(&ch, &client(i)).await.unwrap();
            if i == SMALL_MEMBERS * 2 - 1 {
                p.join(&ch, &client(i)).await.unwrap();
            }
        }
        p.leave(&ch, "c000").await.unwrap();
        p.leave(&ch, "c020").await.unwrap();
        let conns: Vec<String> = p
            .list(&ch)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.conn)
            .collect();
        let want: Vec<String> = (1..SMALL_MEMBERS * 2)
            .filter(|&i| i != 20)
            .map(|i| format!("c{i:03}"))
            .collect();
        assert_eq!(conns, want);
        for i in 0..SMALL_MEMBERS * 2 {
            p.leave(&ch, &format!("c{i:03}")).await.unwrap();
        }
        assert!(p.list(&ch).await.unwrap().is_empty());
        assert!(
            p.map.lock().unwrap().is_empty(),
            "an empty channel is dropped"
        );
    }

    #[tokio::test]
    async fn local_presence_conformance() {
        conformance::run_presence(|| async { Arc::new(LocalPresence::new()) as Arc<dyn Presence> })
            .await;
    }
}
