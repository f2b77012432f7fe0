//! A STAND-IN FOR THE APPLICATION'S BACKEND, built into `herald dev` for the
//! demo page only. Herald itself never reads `data`; an application does
//! this in its own backend (webhooks, or its own message endpoint). It plays
//! the seeds' role routing and their AI bot on the demo's conversations
//! (`chat_site<N>-<suffix>`, see [`super::scenario`]) and operator inboxes:
//!
//! - **dashboard**: every message in a conversation is summarized on its
//!   website's `dashboard_website_<N>`, so the operators' conversation lists
//!   update (`{"type":"message","conversation",..,"seq",..,"role",..}`);
//! - **bot** (`[dev] bot`, on unless `herald dev --no-bot`): a visitor's
//!   message (`data.role == "user"`) gets a reply from `bot:ai` on the same
//!   channel, `{"role":"bot","content",..,"reply_to":<id>}`; an operator's
//!   message with `data.type == "handoff"` hands the conversation over: the
//!   bot announces `{"type":"handoff","role":"bot","operator",..,"content",..}`
//!   and stays silent there from then on. As `examples/fastapi/bot.py` does,
//!   with the same idempotency keys (`bot-reply:<id>`, `bot-handoff:<id>`);
//! - **DMs**: an operator's `{"type":"dm"}` message in another operator's
//!   inbox `chat_<username>` is copied into the sender's own inbox, so each
//!   inbox holds the whole thread.
//!
//! Invariants: it sees only what clients publish over WebSocket (the
//! gateway's publish path in [`super::InProcessIngest`] hands it each
//! committed message through a bounded queue and never waits for it); it
//! publishes through [`IngestService::publish`] like any backend, with keys
//! derived from the message it answers, so a message seen twice never makes
//! two answers; one task handles events in commit order, so a handoff is
//! always applied before the visitor messages committed after it. Channels
//! outside the demo's are never touched.

use super::scenario::{self, BOT_SUB, Operator, Site};
use herald_ingest::{IngestService, PublishInput};
use herald_protocol::{ChannelName, JsonData};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events waiting for the backend. Past it new events are dropped with a
/// warning: a stand-in must never slow the gateway down.
const QUEUE: usize = 1024;
/// The idempotency scope of the stand-in's publishes: its own "API key
/// owner", apart from the app's (`api:default`) and clients' (`sub:..`).
const PUBLISHER: &str = "api:dev-backend";
/// Tries per publish (a busy SQLite answers `unavailable`); the keys make
/// retries safe.
const TRIES: u32 = 3;
/// Longest `content` copied into a dashboard summary, in characters.
const SUMMARY_CHARS: usize = 200;
/// Conversations whose handoff state is remembered; past it the memory is
/// cleared and rebuilt from history on demand.
const REMEMBERED: usize = 10_000;
/// History page when looking for an earlier handoff.
const PAGE: u32 = 1000;

/// A message a client published, committed by ingest.
#[derive(Debug, Clone)]
pub struct Event {
    /// Where.
    pub channel: ChannelName,
    /// Its message id.
    pub id: String,
    /// Its seq in `channel`.
    pub seq: u64,
    /// The publisher's `sub`.
    pub from: String,
    /// The payload.
    pub data: JsonData,
}

/// The sending side, held by the gateway's in-process ingest.
#[derive(Clone)]
pub struct Hook {
    tx: mpsc::Sender<Event>,
}

impl Hook {
    /// Whether the backend acts on messages of `channel`.
    pub fn wants(channel: &ChannelName) -> bool {
        channel.as_str().strip_prefix("chat_").is_some_and(|c| {
            scenario::conversation_site(c).is_some() || scenario::operator_by_username(c).is_some()
        })
    }

    /// Hands a committed message over; never waits.
    pub fn notify(&self, ev: Event) {
        if !Self::wants(&ev.channel) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(ev) {
            tracing::warn!(channel = %ev.channel, "demo backend queue full: event dropped");
        }
    }
}

/// Starts the stand-in backend; it runs until every [`Hook`] is dropped.
pub fn start(ingest: Arc<IngestService>, bot: bool) -> Hook {
    let (tx, rx) = mpsc::channel(QUEUE);
    let backend = Backend {
        ingest,
        bot,
        handed_off: HashMap::new(),
    };
    tokio::spawn(backend.run(rx));
    Hook { tx }
}

/// The bot's "AI": the canned answers of `examples/fastapi/bot.py`.
pub fn answer(text: &str) -> &'static str {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let any = |set: &[&str]| words.iter().any(|w| set.contains(w));
    if any(&["hello", "hi", "hey"]) {
        "Hello! I'm the assistant. How can I help you today?"
    } else if any(&["price", "prices", "cost", "plan", "plans"]) {
        "Our plans start at $10 a month. Want me to send you the details?"
    } else if any(&["human", "operator", "agent", "person"]) {
        "I'm asking an operator to join this conversation."
    } else {
        "Thanks for your message! Let me look into that for you."
    }
}

/// A short string field of `data` (role, type), or null.
fn short(data: &Value, key: &str) -> Value {
    match data.get(key).and_then(Value::as_str) {
        Some(s) if s.len() <= 32 => Value::String(s.to_owned()),
        _ => Value::Null,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

struct Backend {
    ingest: Arc<IngestService>,
    bot: bool,
    /// Conversation -> handed over to an operator (see [`Self::is_handed_off`]).
    handed_off: HashMap<ChannelName, bool>,
}

impl Backend {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        while let Some(ev) = rx.recv().await {
            self.handle(ev).await;
        }
    }

    async fn handle(&mut self, ev: Event) {
        let Some(name) = ev.channel.as_str().strip_prefix("chat_") else {
            return;
        };
        let data = ev.data.to_value();
        if let Some(site) = scenario::conversation_site(name) {
            let conversation = name.to_owned();
            self.summarize(site, &conversation, &ev.id, ev.seq, &ev.from, &data)
                .await;
            if self.bot {
                self.play_bot(site, &conversation, &ev, &data).await;
            }
        } else if let Some(owner) = scenario::operator_by_username(name) {
            self.copy_dm(owner, &ev, &data).await;
        }
    }

    /// Publishes through ingest; the message's id and seq, or `None` (logged)
    /// when ingest refused it every time.
    async fn publish(
        &self,
        channel: &ChannelName,
        data: &Value,
        from: &str,
        key: String,
    ) -> Option<(String, u64)> {
        let input = PublishInput {
            channels: vec![channel.clone()],
            data: JsonData::from_value(data),
            key: Some(key),
            from: Some(from.to_owned()),
            publisher: PUBLISHER.to_owned(),
        };
        for attempt in 1..=TRIES {
            match self.ingest.publish(input.clone()).await {
                Ok(a) => return a.seqs.first().map(|(_, seq)| (a.id, *seq)),
                Err(e) => {
                    tracing::warn!(code = ?e.code, error = %e.message, channel = %channel,
                        attempt, "demo backend: publish failed");
                    if attempt < TRIES {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    }
                }
            }
        }
        None
    }

    /// The seeds notify the website's dashboard of every conversation
    /// message: a summary on `dashboard_website_<site>`.
    async fn summarize(
        &self,
        site: &Site,
        conversation: &str,
        id: &str,
        seq: u64,
        from: &str,
        data: &Value,
    ) {
        let Ok(dashboard) = ChannelName::new(&scenario::dashboard_channel(site)) else {
            return;
        };
        let content = data
            .get("content")
            .and_then(Value::as_str)
            .map(|s| truncate(s, SUMMARY_CHARS));
        let summary = json!({
            "type": "message",
            "conversation": conversation,
            "channel": scenario::chat_channel(conversation),
            "message_id": id,
            "seq": seq,
            "role": short(data, "role"),
            "event": short(data, "type"),
            "from": from,
            "content": content,
        });
        self.publish(&dashboard, &summary, from, format!("dashboard:{id}"))
            .await;
    }

    /// `examples/fastapi/bot.py`'s `Bot.handle`, plus the dashboard summary
    /// of what the bot says.
    async fn play_bot(&mut self, site: &Site, conversation: &str, ev: &Event, data: &Value) {
        if data.get("type").and_then(Value::as_str) == Some("handoff") && ev.from.starts_with("op:")
        {
            self.remember(ev.channel.clone(), true);
            let handoff = json!({
                "type": "handoff", "role": "bot", "operator": ev.from,
                "content": "An operator has joined the conversation.",
            });
            let key = format!("bot-handoff:{}", ev.id);
            if let Some((id, seq)) = self.publish(&ev.channel, &handoff, BOT_SUB, key).await {
                self.summarize(site, conversation, &id, seq, BOT_SUB, &handoff)
                    .await;
            }
            return;
        }
        if data.get("role").and_then(Value::as_str) != Some("user") {
            return; // the bot's own replies, operators' messages...
        }
        if self.is_handed_off(&ev.channel).await {
            return;
        }
        let content = data.get("content").and_then(Value::as_str).unwrap_or("");
        let reply = json!({"role": "bot", "content": answer(content), "reply_to": ev.id});
        let key = format!("bot-reply:{}", ev.id);
        if let Some((id, seq)) = self.publish(&ev.channel, &reply, BOT_SUB, key).await {
            self.summarize(site, conversation, &id, seq, BOT_SUB, &reply)
                .await;
        }
    }

    fn remember(&mut self, channel: ChannelName, handed_off: bool) {
        if self.handed_off.len() >= REMEMBERED && !self.handed_off.contains_key(&channel) {
            self.handed_off.clear();
        }
        self.handed_off.insert(channel, handed_off);
    }

    /// Whether an operator took `channel` over. Remembered in memory; a
    /// conversation not seen since start is looked up in its history (the
    /// bot's `handoff` announcement), so a restart of `herald dev` keeps
    /// the bot silent where it was. (A real app keeps this in its database.)
    async fn is_handed_off(&mut self, channel: &ChannelName) -> bool {
        if let Some(h) = self.handed_off.get(channel) {
            return *h;
        }
        let mut after = 0;
        loop {
            let page = match self.ingest.history(channel, after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(code = ?e.code, error = %e.message, channel = %channel,
                        "demo backend: history read failed");
                    return false; // not remembered: asked again next time
                }
            };
            let found = page.messages.iter().any(|m| {
                m.from.as_deref() == Some(BOT_SUB)
                    && m.data.to_value().get("type").and_then(Value::as_str) == Some("handoff")
            });
            let last = page.messages.last().map(|m| m.seq);
            if found || page.messages.len() < PAGE as usize || last.is_none() {
                self.remember(channel.clone(), found);
                return found;
            }
            after = last.unwrap_or(after);
        }
    }

    /// A DM lands in the recipient's inbox; its copy goes to the sender's.
    async fn copy_dm(&self, owner: &Operator, ev: &Event, data: &Value) {
        if data.get("type").and_then(Value::as_str) != Some("dm") {
            return;
        }
        let Some(sender) = scenario::operator_by_sub(&ev.from) else {
            return;
        };
        if sender == owner {
            return; // a copy, or a note to self
        }
        let Ok(inbox) = ChannelName::new(&scenario::chat_channel(sender.username)) else {
            return;
        };
        let mut copy = data.clone();
        if let Some(o) = copy.as_object_mut() {
            o.insert("to".into(), json!(owner.username));
            o.insert("copy_of".into(), json!(ev.id));
        }
        self.publish(&inbox, &copy, &ev.from, format!("dm-copy:{}", ev.id))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_bot_py() {
        assert!(answer("Hi there").starts_with("Hello!"));
        assert!(answer("What are your PRICES?").starts_with("Our plans"));
        assert!(answer("can I talk to a human").starts_with("I'm asking an operator"));
        assert!(answer("").starts_with("Thanks for your message"));
        assert!(answer("this").starts_with("Thanks"), "hi inside a word");
    }

    #[test]
    fn summaries_are_short() {
        assert_eq!(truncate("héllo", 3), "hél…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(short(&json!({"role": "user"}), "role"), json!("user"));
        assert_eq!(short(&json!({"role": {"x": 1}}), "role"), Value::Null);
        assert_eq!(short(&json!({"role": "x".repeat(33)}), "role"), Value::Null);
    }

    #[test]
    fn only_demo_channels_are_wanted() {
        let ch = |s: &str| ChannelName::new(s).unwrap();
        assert!(Hook::wants(&ch("chat_site1-abc")));
        assert!(Hook::wants(&ch("chat_alice")));
        assert!(!Hook::wants(&ch("chat_42")));
        assert!(!Hook::wants(&ch("chat_demo")));
        assert!(!Hook::wants(&ch("dashboard_website_1")));
    }
}
