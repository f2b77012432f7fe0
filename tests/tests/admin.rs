//! The admin page (docs/operations.md, "Admin page"; issue 12) end to end:
//! `[admin] ui` off by default, every API call behind the API key, and with
//! the key: the node, its connections, its busiest channels, a channel's
//! presence and recent messages, and the publish API, which stores and
//! delivers like `POST /v1/publish`. On `herald dev`, and on `herald
//! gateway` / `herald ingest` around a private Redis (each node shows its
//! own view: the gateway reaches history and publishes through ingest).
//!
//! `admin_page_in_headless_chromium` drives the real page in Debian's
//! Chromium through `tests/browser/admin.mjs` (Node + playwright-core); it
//! fails, naming what to install, when `node`, `tests/browser/node_modules`
//! or `/usr/bin/chromium` is missing.
//!
//! Answers are read as generic JSON values; waits have deadlines.

use std::path::PathBuf;
use std::time::Duration;

use herald_testkit::RedisServer;
use herald_tests::*;
use serde_json::{Value, json};

/// Bound for a state the node reaches asynchronously (presence joins).
const SETTLE: Duration = Duration::from_secs(10);
/// Bound for the whole browser run (Chromium start included, debug build,
/// two loaded cores).
const BROWSER: Duration = Duration::from_secs(120);

/// The admin API of one node at `base` (its admin listener).
#[derive(Clone)]
struct Admin {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Admin {
    fn new(base: String, key: &str) -> Admin {
        Admin {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building a reqwest client"),
            base,
            key: Some(key.to_string()),
        }
    }

    /// The same API with another key (`None`: no Authorization header).
    fn with_key(&self, key: Option<&str>) -> Admin {
        Admin {
            key: key.map(str::to_string),
            ..self.clone()
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
        let rb = match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        };
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// `GET /admin/api/<path>`.
    async fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}/admin/api/{path}", self.base);
        self.send(self.http.get(&url), &format!("GET {url}")).await
    }

    /// `GET /admin/api/<path>`; panics unless 200.
    async fn ok(&self, path: &str) -> Value {
        let (s, b) = self.get(path).await;
        assert_eq!(s, 200, "GET /admin/api/{path}: {b}");
        b
    }

    /// `POST /admin/api/publish`.
    async fn publish(&self, body: &Value) -> (u16, Value) {
        let url = format!("{}/admin/api/publish", self.base);
        self.send(self.http.post(&url).json(body), &format!("POST {url}"))
            .await
    }

    /// `GET /admin` (no key: the page holds no data): status, headers, text.
    async fn page(&self) -> (u16, reqwest::header::HeaderMap, String) {
        let url = format!("{}/admin", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap_or_default())
    }
}

/// `herald dev --admin-ui` with its admin routes on a separate listener,
/// as in production.
async fn start_dev_with_ui() -> HeraldProcess {
    let admin = format!("127.0.0.1:{}", free_port());
    start_dev(&["--admin-ui", "--admin-listen", &admin]).await
}

fn admin_of(h: &HeraldProcess) -> Admin {
    Admin::new(h.admin_url(), &h.api_key)
}

/// A connection of `sub` subscribed to `channels` (with a presence grant
/// on them), its welcome read.
async fn client(h: &HeraldProcess, sub: &str, channels: &[&str]) -> Client {
    let t = TokenBuilder::new(sub)
        .channels(channels)
        .allow("presence", &["*"])
        .allow("subscribe", &["*"])
        .info(json!({"name": format!("<b>{sub}</b>")}))
        .sign(&h.jwt_secret);
    Connect::new(h).token(&t).ready().await.0
}

fn error_code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// The subs present in a `/presence` answer.
fn present_subs(p: &Value) -> Vec<String> {
    p["clients"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["sub"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the presence of `channel` through the admin API lists `sub`.
async fn wait_present(admin: &Admin, channel: &str, sub: &str) -> Value {
    let path = format!("channels/{channel}/presence");
    eventually(
        SETTLE,
        &format!("{sub} in the presence of {channel}"),
        || {
            let admin = admin.clone();
            let path = path.clone();
            async move { present_subs(&admin.ok(&path).await).contains(&sub.to_string()) }
        },
    )
    .await;
    admin.ok(&path).await
}

/// The `data.text` of the messages of a `/messages` answer, in order.
fn texts(r: &Value) -> Vec<String> {
    r["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["data"]["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Off by default: no `/admin` anywhere, with or without the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_answers_404() {
    let h = start_dev(&[]).await;
    let admin = admin_of(&h);
    let (s, _, _) = admin.page().await;
    assert_eq!(s, 404, "GET /admin with [admin] ui off");
    let (s, b) = admin.get("node").await;
    assert_eq!(s, 404, "GET /admin/api/node with [admin] ui off: {b}");
    let (s, b) = admin
        .publish(&json!({"channel": "chat_1", "data": {"x": 1}}))
        .await;
    assert_eq!(s, 404, "POST /admin/api/publish with [admin] ui off: {b}");
    // Nothing was published.
    let hist = Api::new(&h).history("chat_1", &[]).await;
    assert_eq!(hist["last_seq"], 0, "{hist}");
}

/// `[admin] ui` from the file and the environment, and the flag winning over
/// both (`--admin-ui=false`); only on the admin listener, never the public
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_follows_file_env_flag_and_stays_on_the_admin_listener() {
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let from_env = HeraldProcess::start(HeraldOptions {
        args: vec!["--admin-listen".into(), admin_addr],
        env: vec![("HERALD_ADMIN__UI".into(), "true".into())],
        ..HeraldOptions::default()
    })
    .await;
    let (s, _, _) = admin_of(&from_env).page().await;
    assert_eq!(s, 200, "HERALD_ADMIN__UI=true serves /admin");
    let public = Admin::new(from_env.http_url(), &from_env.api_key);
    let (s, _, _) = public.page().await;
    assert_eq!(s, 404, "the public listener never serves /admin");
    let (s, _) = public.get("node").await;
    assert_eq!(s, 404, "the public listener never serves /admin/api");

    let from_file = HeraldProcess::start(HeraldOptions {
        config_toml: Some("[admin]\nui = true\n".into()),
        ..HeraldOptions::default()
    })
    .await;
    let (s, _, _) = admin_of(&from_file).page().await;
    assert_eq!(s, 200, "[admin] ui = true in the file serves /admin");

    let flag_off = HeraldProcess::start(HeraldOptions {
        config_toml: Some("[admin]\nui = true\n".into()),
        env: vec![("HERALD_ADMIN__UI".into(), "true".into())],
        args: vec!["--admin-ui=false".into()],
        ..HeraldOptions::default()
    })
    .await;
    let (s, _, _) = admin_of(&flag_off).page().await;
    assert_eq!(
        s, 404,
        "--admin-ui=false wins over the file and the environment"
    );
}

/// Every API call needs the API key (401 without it or with another one);
/// the page itself is served without the key, holds no secret, loads
/// nothing from elsewhere and may not be framed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_api_key() {
    let h = start_dev_with_ui().await;
    let admin = admin_of(&h);
    let (s, headers, page) = admin.page().await;
    assert_eq!(s, 200);
    assert!(page.contains("herald admin"), "{page}");
    assert!(
        !page.contains(&h.api_key),
        "the page must not carry the key"
    );
    assert!(!page.contains("https://") && !page.contains("http://"));
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    for path in [
        "node",
        "connections",
        "channels",
        "channels/chat_1/presence",
        "channels/chat_1/messages",
        "no/such/route",
    ] {
        let (s, b) = admin.with_key(None).get(path).await;
        assert_eq!(s, 401, "GET {path} without a key: {b}");
        assert_eq!(error_code_of(&b), "unauthorized", "{b}");
        let (s, b) = admin.with_key(Some("wrong-key")).get(path).await;
        assert_eq!(s, 401, "GET {path} with a wrong key: {b}");
        let wrong_same_length = "x".repeat(h.api_key.len());
        let (s, _) = admin.with_key(Some(&wrong_same_length)).get(path).await;
        assert_eq!(s, 401, "GET {path} with a wrong key of the right length");
    }
    let body = json!({"channel": "chat_1", "data": {"x": 1}});
    let (s, b) = admin.with_key(None).publish(&body).await;
    assert_eq!(s, 401, "publish without a key: {b}");
    let (s, b) = admin.with_key(Some("wrong-key")).publish(&body).await;
    assert_eq!(s, 401, "publish with a wrong key: {b}");
    let hist = Api::new(&h).history("chat_1", &[]).await;
    assert_eq!(
        hist["last_seq"], 0,
        "a refused publish stored nothing: {hist}"
    );

    let (s, b) = admin.get("node").await;
    assert_eq!(s, 200, "with the key: {b}");
    let (s, b) = admin.get("no/such/route").await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(error_code_of(&b), "not_found");
}

/// With the key, on `herald dev`: the node, the connection count and the
/// users with most connections, the channels by local subscribers, a
/// channel's presence and recent messages, and the publish API (stored,
/// delivered, idempotent by key, checked like the ingest API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_node_shows_connections_channels_presence_and_publishes() {
    let h = start_dev_with_ui().await;
    let admin = admin_of(&h);

    let node = admin.ok("node").await;
    assert_eq!(node["id"], "dev", "{node}");
    assert_eq!(node["role"], "dev", "{node}");
    assert!(node["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(node["draining"], false, "{node}");
    assert!(node["uptime_seconds"].as_u64().is_some(), "{node}");
    assert_eq!(node["connections"], 0, "{node}");

    // ops:a has 3 connections, ops:b 2, ops:c 1; chat_big has 4
    // subscribers, chat_mid 2, chat_small 1.
    let mut clients = Vec::new();
    for (sub, chans) in [
        ("ops:a", &["chat_big", "chat_mid"][..]),
        ("ops:a", &["chat_big"][..]),
        ("ops:a", &["chat_big"][..]),
        ("ops:b", &["chat_big", "chat_mid"][..]),
        ("ops:b", &["chat_small"][..]),
        ("ops:c", &[][..]),
    ] {
        clients.push(client(&h, sub, chans).await);
    }

    let node = admin.ok("node").await;
    assert_eq!(node["connections"], 6, "{node}");
    assert_eq!(node["users"], 3, "{node}");
    assert_eq!(node["channels"], 3, "{node}");
    assert_eq!(node["subscriptions"], 7, "{node}");

    let c = admin.ok("connections").await;
    assert_eq!(c["connections"], 6, "{c}");
    assert_eq!(c["users"], 3, "{c}");
    assert_eq!(
        c["top_users"],
        json!([
            {"sub": "ops:a", "connections": 3},
            {"sub": "ops:b", "connections": 2},
            {"sub": "ops:c", "connections": 1},
        ]),
        "{c}"
    );
    let c = admin.ok("connections?limit=1").await;
    assert_eq!(c["top_users"], json!([{"sub": "ops:a", "connections": 3}]));
    let (s, b) = admin.get("connections?limit=0").await;
    assert_eq!((s, error_code_of(&b)), (400, "bad_request"), "{b}");

    let ch = admin.ok("channels").await;
    assert_eq!(ch["channels"], 3, "{ch}");
    assert_eq!(ch["subscriptions"], 7, "{ch}");
    assert_eq!(
        ch["top"],
        json!([
            {"channel": "chat_big", "subscribers": 4},
            {"channel": "chat_mid", "subscribers": 2},
            {"channel": "chat_small", "subscribers": 1},
        ]),
        "{ch}"
    );
    let ch = admin.ok("channels?limit=2").await;
    assert_eq!(ch["top"].as_array().map(Vec::len), Some(2), "{ch}");
    assert_eq!(ch["channels"], 3, "totals count every channel: {ch}");

    // One connection closed: the counts follow.
    clients.pop().expect("six clients").close().await;
    eventually(SETTLE, "5 connections after one closed", || {
        let admin = admin.clone();
        async move { admin.ok("node").await["connections"] == 5 }
    })
    .await;

    // Presence: every subscriber of chat_small, with its info as data.
    let p = wait_present(&admin, "chat_small", "ops:b").await;
    assert_eq!(p["channel"], "chat_small");
    assert_eq!(p["total"], 1, "{p}");
    assert_eq!(p["clients"][0]["info"]["name"], "<b>ops:b</b>", "{p}");
    assert!(p["clients"][0]["conn"].as_str().is_some(), "{p}");
    let p = admin.ok("channels/nobody_here/presence").await;
    assert_eq!(p["total"], 0, "{p}");
    let (s, b) = admin.get("channels/bad%20name/presence").await;
    assert_eq!((s, error_code_of(&b)), (400, "bad_channel"), "{b}");

    // Recent messages: the newest, in seq order.
    let api = Api::new(&h);
    for i in 1..=5 {
        api.publish("chat_mid", json!({"text": format!("m{i}")}))
            .await;
    }
    let r = admin.ok("channels/chat_mid/messages").await;
    assert_eq!(r["last_seq"], 5, "{r}");
    assert_eq!(texts(&r), ["m1", "m2", "m3", "m4", "m5"], "{r}");
    let r = admin.ok("channels/chat_mid/messages?limit=2").await;
    assert_eq!(texts(&r), ["m4", "m5"], "{r}");
    assert_eq!(r["messages"][1]["seq"], 5, "{r}");
    let r = admin.ok("channels/never_used/messages").await;
    assert_eq!(
        (r["last_seq"].clone(), r["messages"].clone()),
        (json!(0), json!([]))
    );
    let (s, b) = admin.get("channels/chat_mid/messages?limit=101").await;
    assert_eq!((s, error_code_of(&b)), (400, "bad_request"), "{b}");

    // Publish: one message to two channels, stored and delivered.
    let a = admin
        .publish(&json!({
            "channels": ["chat_big", "chat_small"],
            "data": {"text": "from-admin", "n": 12345678901234567890u64},
            "key": "admin-k1",
        }))
        .await;
    assert_eq!(a.0, 200, "{}", a.1);
    let id = a.1["id"].as_str().expect("a message id").to_string();
    assert_eq!(
        a.1["seqs"],
        json!({"chat_big": 1, "chat_small": 1}),
        "{}",
        a.1
    );
    let got = clients[0]
        .recv_until("the admin publish on chat_big", |v| {
            v["type"] == "message" && v["channel"] == "chat_big"
        })
        .await;
    assert_eq!(got["id"], id.as_str(), "{got}");
    assert_eq!(got["data"]["text"], "from-admin", "{got}");
    assert!(
        got.get("from").is_none(),
        "an admin publish has no from: {got}"
    );
    let hist = api.history("chat_small", &[]).await;
    assert_eq!(hist["messages"][0]["id"], id.as_str(), "{hist}");
    let r = admin.ok("channels/chat_big/messages").await;
    assert_eq!(texts(&r), ["from-admin"], "{r}");

    // The same key again: the first answer, nothing new stored.
    let again = admin
        .publish(&json!({
            "channels": ["chat_big", "chat_small"],
            "data": {"text": "from-admin", "n": 12345678901234567890u64},
            "key": "admin-k1",
        }))
        .await;
    assert_eq!(again.0, 200, "{}", again.1);
    assert_eq!(again.1["id"], id.as_str(), "{}", again.1);
    assert_eq!(admin.ok("channels/chat_big/messages").await["last_seq"], 1);

    // Checked like the ingest API.
    for (body, status, code) in [
        (
            json!({"channel": "bad name", "data": 1}),
            400,
            "bad_channel",
        ),
        (json!({"channel": "chat_1"}), 400, "bad_request"),
        (json!({"data": 1}), 400, "bad_request"),
        (
            json!({"channel": "a", "channels": ["b"], "data": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"channel": "chat_1", "data": 1, "from": "x"}),
            400,
            "bad_request",
        ),
        (
            json!({"channel": "chat_1", "data": 1, "key": ""}),
            400,
            "bad_request",
        ),
        (
            json!({"channel": "chat_1", "data": json_string_of_len(16385)}),
            413,
            "too_large",
        ),
        (
            json!({"channel": "chat_big", "data": {"other": 1}, "key": "admin-k1"}),
            409,
            "conflict",
        ),
    ] {
        let (s, b) = admin.publish(&body).await;
        assert_eq!((s, error_code_of(&b)), (status, code), "{body}: {b}");
    }
}

/// `herald gateway` and `herald ingest` (private Redis, SQLite) with the
/// page on: each shows its own view. The gateway counts its connections,
/// reads presence from Redis and reaches history and publishes through
/// ingest; the ingest node has no connections to show and serves presence,
/// history and publishes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_ingest_nodes_show_their_own_view() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server panicked")
        .unwrap_or_else(|e| panic!("cannot start a private redis-server: {e}"));
    let ingest = HeraldProcess::start(HeraldOptions {
        subcommand: "ingest".into(),
        args: vec![
            "--redis-url".into(),
            redis.url(),
            "--node-id".into(),
            "ingest-adm".into(),
            "--admin-ui".into(),
        ],
        ..HeraldOptions::default()
    })
    .await;
    let gw = HeraldProcess::start(HeraldOptions {
        subcommand: "gateway".into(),
        args: vec![
            "--redis-url".into(),
            redis.url(),
            "--ingest-url".into(),
            ingest.http_url(),
            "--node-id".into(),
            "gw-adm".into(),
            "--admin-ui".into(),
        ],
        api_key: ingest.api_key.clone(),
        jwt_secret: ingest.jwt_secret.clone(),
        ..HeraldOptions::default()
    })
    .await;
    let (ga, ia) = (admin_of(&gw), admin_of(&ingest));

    let mut c1 = client(&gw, "op:1", &["room_1"]).await;
    let _c2 = client(&gw, "op:2", &["room_1", "room_2"]).await;

    let node = ga.ok("node").await;
    assert_eq!(
        (node["id"].clone(), node["role"].clone()),
        (json!("gw-adm"), json!("gateway")),
        "{node}"
    );
    assert_eq!(node["connections"], 2, "{node}");
    let ch = ga.ok("channels").await;
    assert_eq!(
        ch["top"],
        json!([
            {"channel": "room_1", "subscribers": 2},
            {"channel": "room_2", "subscribers": 1},
        ]),
        "{ch}"
    );

    let node = ia.ok("node").await;
    assert_eq!(
        (node["id"].clone(), node["role"].clone()),
        (json!("ingest-adm"), json!("ingest")),
        "{node}"
    );
    assert!(node["connections"].is_null(), "{node}");
    let (s, b) = ia.get("connections").await;
    assert_eq!((s, error_code_of(&b)), (404, "not_found"), "{b}");

    // Presence in Redis: seen from both nodes.
    wait_present(&ga, "room_2", "op:2").await;
    wait_present(&ia, "room_2", "op:2").await;

    // The gateway publishes through ingest; its subscriber gets it, and
    // both nodes list it among the recent messages.
    let a = ga
        .publish(&json!({"channel": "room_1", "data": {"text": "via-gateway"}}))
        .await;
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(a.1["seqs"], json!({"room_1": 1}), "{}", a.1);
    let got = c1
        .recv_until("the gateway admin publish", |v| v["type"] == "message")
        .await;
    assert_eq!(got["data"]["text"], "via-gateway", "{got}");
    let a = ia
        .publish(&json!({"channels": ["room_1"], "data": {"text": "via-ingest"}}))
        .await;
    assert_eq!(a.0, 200, "{}", a.1);
    let got = c1
        .recv_until("the ingest admin publish", |v| v["type"] == "message")
        .await;
    assert_eq!(got["data"]["text"], "via-ingest", "{got}");
    for admin in [&ga, &ia] {
        let r = admin.ok("channels/room_1/messages").await;
        assert_eq!(texts(&r), ["via-gateway", "via-ingest"], "{r}");
        assert_eq!(r["last_seq"], 2, "{r}");
    }
    // Ingest's own checks come back through the gateway unchanged.
    let (s, b) = ga
        .publish(&json!({"channel": "room_1", "data": json_string_of_len(16385)}))
        .await;
    assert_eq!((s, error_code_of(&b)), (413, "too_large"), "{b}");
}

/// The page in a real browser: sign in with the key, the node panel, the
/// connection count, a channel's presence and recent messages, a publish
/// through the form that shows in the page's list and reaches a WebSocket
/// client held here. Set `HERALD_TEST_ADMIN_SCREENSHOT=FILE` to keep the
/// screenshot the script takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_headless_chromium() {
    let dir = browser_prerequisites();
    let h = start_dev_with_ui().await;
    let admin = admin_of(&h);
    let mut watcher = client(&h, "visitor:42", &["chat_browser"]).await;
    let _other = client(&h, "op:7", &["chat_browser", "dashboard_website_12"]).await;
    wait_present(&admin, "chat_browser", "visitor:42").await;
    let before = format!("before-{}", now_ms());
    Api::new(&h)
        .publish("chat_browser", json!({"text": before}))
        .await;
    let first = watcher
        .recv_until("the API publish", |v| v["type"] == "message")
        .await;
    assert_eq!(first["data"]["text"], before.as_str());

    let published = format!("from-browser-{}", now_ms());
    let shot = std::env::var("HERALD_TEST_ADMIN_SCREENSHOT")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| h.dir().join("admin.png"));
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("admin.mjs"))
        .args(["--url", &h.admin_url()])
        .args(["--key", &h.api_key])
        .args(["--node", "dev"])
        .args(["--connections", "2"])
        .args(["--channel", "chat_browser"])
        .args(["--presence-sub", "visitor:42"])
        .args(["--expect-text", &before])
        .args(["--publish-text", &published])
        .arg("--screenshot")
        .arg(&shot)
        .current_dir(&dir);
    run_browser_script(cmd, "tests/browser/admin.mjs", BROWSER, &h).await;
    assert!(shot.is_file(), "no screenshot at {}", shot.display());

    let got = watcher
        .recv_until("the browser's publish", |v| v["type"] == "message")
        .await;
    assert_eq!(got["data"]["text"], published.as_str(), "{got}");
    assert_eq!(got["channel"], "chat_browser");
    let r = admin.ok("channels/chat_browser/messages").await;
    assert_eq!(texts(&r), [before, published], "{r}");
}
