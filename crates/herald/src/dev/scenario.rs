//! The demo's cast: the two websites, the two operators, how a conversation
//! names its website, and the grants each role gets (the seeds' role
//! routing, as an application backend would set it in its tokens).
//!
//! A stand-in for the application's own database and token endpoint: a real
//! app knows its sites, operators and conversations from its tables. Here
//! the conversation id carries its website (`site<N>-<suffix>`, so the
//! channel `chat_site1-4f9a1c`), which keeps `herald dev` stateless: the
//! routing survives a restart with nothing to remember.

use herald_auth::TokenSpec;
use serde_json::json;
use std::time::Duration;

/// Lifetime of a demo token. The page asks for a new one (the SDK's
/// `getToken`) when the SDK needs it.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The `sub` the stand-in bot publishes as.
pub const BOT_SUB: &str = "bot:ai";

/// One website of the demo: its dashboard is `dashboard_website_<id>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Site {
    /// The id in channel names.
    pub id: &'static str,
    /// Shown on the page.
    pub name: &'static str,
}

/// One operator of the demo: `sub` `op:<id>`, DM inbox `chat_<username>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Operator {
    /// The id in the `sub`.
    pub id: &'static str,
    /// The DM channel is `chat_<username>` (the seeds' `chat_sishirbhusal`).
    pub username: &'static str,
    /// Shown in presence and messages.
    pub name: &'static str,
}

/// The websites every operator watches.
pub const SITES: [Site; 2] = [
    Site {
        id: "1",
        name: "Acme Shoes",
    },
    Site {
        id: "2",
        name: "Globex Travel",
    },
];

/// The operators.
pub const OPERATORS: [Operator; 2] = [
    Operator {
        id: "1",
        username: "alice",
        name: "Alice",
    },
    Operator {
        id: "2",
        username: "bob",
        name: "Bob",
    },
];

/// Longest conversation suffix (after `site<N>-`).
const MAX_SUFFIX: usize = 64;

/// The site with this id.
pub fn site(id: &str) -> Option<&'static Site> {
    SITES.iter().find(|s| s.id == id)
}

/// The operator with this id (`1`, `2`).
pub fn operator(id: &str) -> Option<&'static Operator> {
    OPERATORS.iter().find(|o| o.id == id)
}

/// The operator whose `sub` this is (`op:1`).
pub fn operator_by_sub(sub: &str) -> Option<&'static Operator> {
    operator(sub.strip_prefix("op:")?)
}

/// The operator whose DM inbox is `chat_<username>`.
pub fn operator_by_username(username: &str) -> Option<&'static Operator> {
    OPERATORS.iter().find(|o| o.username == username)
}

/// The website of a conversation id `site<N>-<suffix>` (suffix: 1 to 64 of
/// `A-Z a-z 0-9 _ -`), or `None` when it is not a demo conversation.
pub fn conversation_site(conversation: &str) -> Option<&'static Site> {
    let rest = conversation.strip_prefix("site")?;
    let (id, suffix) = rest.split_once('-')?;
    let ok = !suffix.is_empty()
        && suffix.len() <= MAX_SUFFIX
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { site(id) } else { None }
}

/// `chat_<conversation>`.
pub fn chat_channel(conversation: &str) -> String {
    format!("chat_{conversation}")
}

/// `dashboard_website_<site>`.
pub fn dashboard_channel(site: &Site) -> String {
    format!("dashboard_website_{}", site.id)
}

/// A visitor of `conversation`: subscribe, publish, signal and see presence
/// on its own `chat_<conversation>` only, nothing else. No automatic
/// subscription: the page subscribes with `since` (what it last saw).
pub fn visitor_token(conversation: &str, site: &Site) -> TokenSpec {
    let chat = chat_channel(conversation);
    TokenSpec {
        sub: format!("visitor:{conversation}"),
        ttl: Some(TOKEN_TTL),
        channels: vec![],
        subscribe: vec![chat.clone()],
        publish: vec![chat.clone()],
        signal: vec![chat.clone()],
        presence: vec![chat],
        info: Some(json!({"name": "Visitor", "role": "visitor", "site": site.id})),
    }
}

/// An operator: the dashboards of every site and its own DM inbox as
/// automatic subscriptions, and every `chat_*` channel (conversations and
/// the other operators' inboxes) to subscribe, publish, signal and see
/// presence on, as the seeds grant their operators.
pub fn operator_token(op: &Operator) -> TokenSpec {
    let mut channels: Vec<String> = SITES.iter().map(dashboard_channel).collect();
    channels.push(chat_channel(op.username));
    let chats = vec!["chat_*".to_owned()];
    TokenSpec {
        sub: format!("op:{}", op.id),
        ttl: Some(TOKEN_TTL),
        channels,
        subscribe: chats.clone(),
        publish: chats.clone(),
        signal: chats.clone(),
        presence: chats,
        info: Some(json!({"name": op.name, "role": "operator", "username": op.username})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_name_their_site() {
        assert_eq!(conversation_site("site1-abc").map(|s| s.id), Some("1"));
        assert_eq!(conversation_site("site2-a_b-C9").map(|s| s.id), Some("2"));
        for bad in [
            "site3-abc",
            "site1-",
            "site1",
            "sitex-abc",
            "42",
            "demo",
            "site1-a.b",
            "alice",
        ] {
            assert_eq!(conversation_site(bad), None, "{bad}");
        }
        assert_eq!(
            conversation_site(&format!("site1-{}", "a".repeat(65))),
            None
        );
    }

    #[test]
    fn operators_by_sub_and_username() {
        assert_eq!(operator_by_sub("op:2").map(|o| o.username), Some("bob"));
        assert_eq!(operator_by_sub("op:3"), None);
        assert_eq!(operator_by_sub("visitor:op:1"), None);
        assert_eq!(operator_by_username("alice").map(|o| o.id), Some("1"));
        assert_eq!(operator_by_username("site1-x"), None);
    }

    #[test]
    fn grants_follow_the_roles() {
        let v = visitor_token("site1-abc", &SITES[0]).to_claims(0);
        assert_eq!(v["sub"], "visitor:site1-abc");
        assert!(v.get("channels").is_none(), "{v}");
        for op in ["subscribe", "publish", "signal", "presence"] {
            assert_eq!(v["allow"][op], json!(["chat_site1-abc"]), "{op}: {v}");
        }
        let o = operator_token(&OPERATORS[1]).to_claims(0);
        assert_eq!(o["sub"], "op:2");
        assert_eq!(
            o["channels"],
            json!(["dashboard_website_1", "dashboard_website_2", "chat_bob"])
        );
        for op in ["subscribe", "publish", "signal", "presence"] {
            assert_eq!(o["allow"][op], json!(["chat_*"]), "{op}: {o}");
        }
        assert_eq!(o["info"]["role"], "operator");
    }
}
