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
    map: Arc<Mutex<HashMap<ChannelName, BTreeMap<String, ClientInfo>>>>,
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
            .or_default()
            .insert(client.conn.clone(), client.clone());
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
        Ok(m.get(channel)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default())
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
    async fn local_presence_conformance() {
        conformance::run_presence(|| async { Arc::new(LocalPresence::new()) as Arc<dyn Presence> })
            .await;
    }
}
