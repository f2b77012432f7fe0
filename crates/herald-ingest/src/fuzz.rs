//! Fuzzing (issue 9) of the ingest HTTP API's parsers of untrusted input
//! (PROTOCOL.md section 8): the JSON bodies of `POST /v1/publish`,
//! `/v1/signal` and `/v1/positions`, the history query (`after`, `limit`),
//! the channel in the path, the API key and the route.
//!
//! The body parsers in `http.rs` are private, so each case goes through
//! [`crate::http::handle`] for real: a hyper client and server over an
//! in-memory duplex pipe, an [`IngestService`] on a SQLite store in a fresh
//! temporary directory (removed afterwards) and the local bus. Nothing is
//! mocked; each response is checked against a model of section 8 written
//! here (status, error code, and the answer's shape).
//!
//! proptest on the stable toolchain: CI-sized case counts, or
//! `HERALD_FUZZ_CASES` per property for the long local run
//! (docs/fuzzing.md). Failures go to `proptest-regressions/fuzz.txt`
//! (committed) and are replayed first.

use crate::{IngestConfig, IngestService};
use bytes::Bytes;
use herald_protocol::Encoding;
use herald_protocol::api::{HistoryPage, PositionsAnswer, PublishAnswer};
use herald_protocol::server::{Message, MessageKind};
use herald_testkit::fuzz::config;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs one property with a harness that lives for all its cases (the
/// `proptest!` macro would build one per case), persisting failures like
/// the macro does: in `proptest-regressions/fuzz.txt` beside `src/`, found
/// from this file (`source_file`, which the macro would set).
fn run<S: Strategy>(
    name: &'static str,
    ci: u32,
    strategy: S,
    test: impl Fn(&Harness, S::Value) -> Result<(), TestCaseError>,
) {
    let h = Harness::new();
    let mut runner = TestRunner::new(ProptestConfig {
        source_file: Some(file!()),
        test_name: Some(name),
        ..config(ci)
    });
    if let Err(e) = runner.run(&strategy, |v| test(&h, v)) {
        panic!("{name}: {e}\n{runner}");
    }
}

// ---- the service, in-process ----

const API_KEY: &str = "fuzz-api-key";
const MAX_DATA: usize = 16384;
const MAX_CHANNELS: usize = 100;

/// An ingest service on SQLite in its own temporary directory.
struct Harness {
    rt: Option<tokio::runtime::Runtime>,
    svc: Option<Arc<IngestService>>,
    dir: PathBuf,
}

impl Harness {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-ingest-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("sqlite://{}", dir.join("store.db").display());
        let svc = rt.block_on(async {
            let store = herald_store::open(&url, herald_store::StoreConfig::default())
                .await
                .unwrap();
            IngestService::new(
                IngestConfig {
                    api_key: API_KEY.into(),
                    max_data_bytes: MAX_DATA,
                    max_publish_channels: MAX_CHANNELS,
                    ..IngestConfig::default()
                },
                store,
                Arc::new(herald_bus::local::LocalBus::new()),
                Arc::new(herald_bus::local::LocalPresence::new()),
            )
        });
        Self {
            rt: Some(rt),
            svc: Some(svc),
            dir,
        }
    }

    /// One request over a fresh HTTP/1 connection: status and body.
    fn call(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let svc = self.svc.clone().expect("set until drop");
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        self.rt
            .as_ref()
            .expect("set until drop")
            .block_on(async move {
                let (client, server) = tokio::io::duplex(1 << 16);
                let service = hyper::service::service_fn(move |req| {
                    let svc = svc.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(crate::http::handle(&svc, req).await)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(server), service)
                        .await;
                });
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(client))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
    }

    fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        self.call(Method::POST, path, Some(&format!("Bearer {API_KEY}")), body)
    }

    fn get(&self, uri: &str) -> (StatusCode, Bytes) {
        self.call(
            Method::GET,
            uri,
            Some(&format!("Bearer {API_KEY}")),
            Vec::new(),
        )
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.svc.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- checking answers ----

/// What section 8 allows for a request: a success status, or the error
/// codes any one of its faults may be reported with.
#[derive(Debug, Clone)]
enum Want {
    Ok,
    Err(Vec<&'static str>),
    /// Not modelled: any section 8 answer will do.
    Any,
}

fn status_of(code: &str) -> u16 {
    match code {
        "bad_request" | "bad_channel" => 400,
        "unauthorized" => 401,
        "not_found" => 404,
        "conflict" => 409,
        "too_large" => 413,
        other => panic!("no status for {other}"),
    }
}

/// Checks an answer: errors in the section 8 format with the status of
/// their code; success with `ok_status`.
fn check(
    (status, body): &(StatusCode, Bytes),
    ok_status: u16,
    want: &Want,
    what: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    let status = status.as_u16();
    if (200..300).contains(&status) {
        prop_assert_eq!(status, ok_status, "{:?}", what);
        prop_assert!(
            !matches!(want, Want::Err(_)),
            "{:?}: {} {:?}, model {:?}",
            what,
            status,
            body,
            want
        );
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("{what:?}: error body {body:?}: {e}")))?;
    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
    prop_assert!(v["error"]["message"].is_string(), "{:?}", v);
    prop_assert!(
        [
            "bad_request",
            "bad_channel",
            "too_large",
            "unauthorized",
            "not_found",
            "conflict"
        ]
        .contains(&code.as_str()),
        "{:?}: {} {}",
        what,
        status,
        v
    );
    prop_assert_eq!(status, status_of(&code), "{:?}: {}", what, v);
    match want {
        Want::Ok => prop_assert!(false, "{:?}: {} {}, model ok", what, status, v),
        Want::Err(codes) => prop_assert!(
            codes.contains(&code.as_str()),
            "{:?}: {} {}, model {:?}",
            what,
            status,
            v,
            codes
        ),
        Want::Any => {}
    }
    Ok(())
}

// ---- body generators ----

/// Any JSON value, small.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-c]{1,3}_[0-9]{1,2}",
        1 => "[A-Za-z0-9_.:@=-]{1,40}",
        1 => prop_oneof![Just(String::new()), Just("chat 1".to_owned()), Just("a".repeat(201)), Just("é".to_owned())],
    ]
}

fn ref_name_ok(s: &str) -> bool {
    (1..=200).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b))
}

/// A body field: its JSON text, or absent.
type Field = Option<Value>;

fn opt(p: f64, s: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Field> {
    prop::option::weighted(p, s).boxed()
}

fn channel_field() -> impl Strategy<Value = Value> {
    prop_oneof![6 => name().prop_map(Value::from), 1 => Just(Value::Null), 1 => any_json()]
}

fn channels_field(max: usize) -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::collection::vec(name(), 0..5).prop_map(|v| json!(v)),
        1 => (max - 1..max + 2).prop_map(|n| json!((0..n).map(|i| format!("c_{i}")).collect::<Vec<_>>())),
        1 => Just(Value::Null),
        1 => any_json(),
    ]
}

/// `data`: any value, rarely one whose text passes the limit.
fn data_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => any_json(),
        1 => (MAX_DATA - 4..MAX_DATA + 4).prop_map(|n| Value::from("d".repeat(n - 2))),
    ]
}

fn text_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-z0-9-]{1,16}".prop_map(Value::from),
        1 => prop_oneof![Just(0usize), Just(256), Just(257)].prop_map(|n| Value::from("k".repeat(n))),
        1 => Just(Value::Null),
        1 => any_json(),
    ]
}

/// Renders fields in the given order as one JSON object.
fn render(fields: &[(String, Value)]) -> Vec<u8> {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", json!(k), v))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

fn collect(named: Vec<(&str, Field)>, extra: Option<(String, Value)>) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = named
        .into_iter()
        .filter_map(|(k, f)| f.map(|f| (k.to_owned(), f)))
        .collect();
    v.extend(extra);
    v
}

fn extra() -> BoxedStrategy<Option<(String, Value)>> {
    prop::option::weighted(0.1, ("x[a-z]{0,3}", any_json())).boxed()
}

fn get<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A field serde reads into `Option<String>`: absent, null or a string.
fn is_opt_string(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null | Value::String(_)))
}

/// A field serde reads into `Option<Vec<String>>`.
fn is_opt_strings(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.iter().all(Value::is_string),
        _ => false,
    }
}

/// Section 8's checks on a channel list: codes for its faults.
fn names_faults(names: &[String], max: usize, errs: &mut Vec<&'static str>) {
    if names.is_empty() || names.len() > max {
        errs.push("bad_request");
    }
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !ref_name_ok(n) {
            errs.push("bad_channel");
        } else if !seen.insert(n) {
            errs.push("bad_request");
        }
    }
}

fn data_faults(v: Option<&Value>, errs: &mut Vec<&'static str>) {
    match v {
        None => errs.push("bad_request"),
        Some(d) if d.to_string().len() > MAX_DATA => errs.push("too_large"),
        Some(_) => {}
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn publish_model(fields: &[(String, Value)]) -> Want {
    let known = ["channel", "channels", "data", "key", "from"];
    let serde_ok = fields.iter().all(|(k, _)| known.contains(&k.as_str()))
        && is_opt_string(get(fields, "channel"))
        && is_opt_strings(get(fields, "channels"))
        && is_opt_string(get(fields, "key"))
        && is_opt_string(get(fields, "from"));
    if !serde_ok {
        return Want::Err(vec!["bad_request"]);
    }
    let mut errs = Vec::new();
    let one = get(fields, "channel").filter(|v| !v.is_null());
    let many = get(fields, "channels").filter(|v| !v.is_null());
    match (one, many) {
        (Some(_), Some(_)) | (None, None) => errs.push("bad_request"),
        (Some(c), None) => names_faults(&strings(Some(c)), MAX_CHANNELS, &mut errs),
        (None, Some(cs)) => names_faults(&strings(Some(cs)), MAX_CHANNELS, &mut errs),
    }
    data_faults(get(fields, "data"), &mut errs);
    if get(fields, "key")
        .and_then(Value::as_str)
        .is_some_and(|k| !(1..=256).contains(&k.len()))
    {
        errs.push("bad_request");
    }
    if errs.is_empty() {
        Want::Ok
    } else {
        Want::Err(errs)
    }
}

fn signal_model(fields: &[(String, Value)]) -> Want {
    let known = ["channel", "data", "from"];
    let serde_ok = fields.iter().all(|(k, _)| known.contains(&k.as_str()))
        && is_opt_string(get(fields, "channel"))
        && is_opt_string(get(fields, "from"));
    if !serde_ok {
        return Want::Err(vec!["bad_request"]);
    }
    let mut errs = Vec::new();
    match get(fields, "channel").and_then(Value::as_str) {
        None => errs.push("bad_request"),
        Some(c) if !ref_name_ok(c) => errs.push("bad_channel"),
        Some(_) => {}
    }
    data_faults(get(fields, "data"), &mut errs);
    if errs.is_empty() {
        Want::Ok
    } else {
        Want::Err(errs)
    }
}

fn positions_model(fields: &[(String, Value)]) -> Want {
    let serde_ok = fields.iter().all(|(k, _)| k == "channels")
        && matches!(get(fields, "channels"), Some(Value::Array(a)) if a.iter().all(Value::is_string));
    if !serde_ok {
        return Want::Err(vec!["bad_request"]);
    }
    let names = strings(get(fields, "channels"));
    let mut errs = Vec::new();
    if names.len() > 1000 {
        errs.push("bad_request");
    }
    if names.iter().any(|n| !ref_name_ok(n)) {
        errs.push("bad_channel");
    }
    if errs.is_empty() {
        Want::Ok
    } else {
        Want::Err(errs)
    }
}

fn publish_body() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        opt(0.6, channel_field()),
        opt(0.5, channels_field(MAX_CHANNELS)),
        opt(0.9, data_field()),
        opt(0.3, text_field()),
        opt(0.3, text_field()),
        extra(),
    )
        .prop_flat_map(|(channel, channels, data, key, from, extra)| {
            let f = collect(
                vec![
                    ("channel", channel),
                    ("channels", channels),
                    ("data", data),
                    ("key", key),
                    ("from", from),
                ],
                extra,
            );
            Just(f).prop_shuffle()
        })
}

fn signal_body() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        opt(0.9, channel_field()),
        opt(0.9, data_field()),
        opt(0.3, text_field()),
        extra(),
    )
        .prop_flat_map(|(channel, data, from, extra)| {
            Just(collect(
                vec![("channel", channel), ("data", data), ("from", from)],
                extra,
            ))
            .prop_shuffle()
        })
}

fn positions_body() -> impl Strategy<Value = Vec<(String, Value)>> {
    (opt(0.95, channels_field(1000)), extra())
        .prop_map(|(channels, extra)| collect(vec![("channels", channels)], extra))
}

/// A path segment for a channel: allowed characters, percent escapes of
/// any byte (an escaped `/` or `%` included), and characters that are no
/// channel's.
fn path_channel() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        8 => "[A-Za-z0-9_.:@=-]{1,6}",
        2 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
        1 => prop::sample::select(vec!["%", "%2", "%G0", "!", "~", "'", "("]).prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 1..5).prop_map(|ps| ps.concat())
}

/// Strict percent decoding (`%` and two hex digits), invalid UTF-8 lossy.
fn ref_percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap());
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A history query: `after` and `limit` in and out of range, malformed,
/// repeated, with other keys around.
fn history_query() -> impl Strategy<Value = Vec<(String, String)>> {
    let after = prop_oneof![
        4 => any::<u64>().prop_map(|u| u.to_string()),
        2 => (0u64..5).prop_map(|u| u.to_string()),
        1 => prop::sample::select(vec!["", "-1", "18446744073709551616", "1.0", "x", "1e3", "0x1", "%31", "007"]).prop_map(str::to_owned),
    ];
    let limit = prop_oneof![
        4 => (1u32..=1000).prop_map(|u| u.to_string()),
        1 => prop::sample::select(vec!["0", "1001", "", "-5", "4294967296", "abc", "01000", "1_0"]).prop_map(str::to_owned),
    ];
    let pair = prop_oneof![
        3 => after.prop_map(|v| ("after".to_owned(), v)),
        3 => limit.prop_map(|v| ("limit".to_owned(), v)),
        1 => ("[a-z]{1,5}", "[a-z0-9]{0,4}"),
    ];
    prop::collection::vec(pair, 0..4)
}

fn history_model(q: &[(String, String)]) -> (Want, u64, u32) {
    let mut after = 0u64;
    let mut limit = 100u32;
    for (k, v) in q {
        let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        match k.as_str() {
            "after" => match v.parse::<u64>() {
                Ok(a) if digits => after = a,
                _ => return (Want::Err(vec!["bad_request"]), 0, 0),
            },
            "limit" => match v.parse::<u32>() {
                Ok(l) if digits && (1..=1000).contains(&l) => limit = l,
                _ => return (Want::Err(vec!["bad_request"]), 0, 0),
            },
            _ => {}
        }
    }
    (Want::Ok, after, limit)
}

// ---- the properties ----

/// Arbitrary bytes as the body of each POST route: a section 8 answer,
/// never a 5xx or a panic.
#[test]
fn bodies_arbitrary_bytes() {
    let soup = prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"channel\"",
            "\"channels\"",
            "\"data\"",
            "\"key\"",
            "\"from\"",
            "\"chat_1\"",
            "1",
            "-1",
            "1e400",
            "null",
            "true",
            "\"\\ud800\"",
            "\"",
            " ",
        ]),
        0..30,
    )
    .prop_map(|v| v.concat().into_bytes());
    let body = prop_oneof![prop::collection::vec(any::<u8>(), 0..200), soup];
    run(
        "bodies_arbitrary_bytes",
        600,
        (body, 0usize..3),
        |h, (b, route)| {
            let (path, ok) = [
                ("/v1/publish", 200),
                ("/v1/signal", 202),
                ("/v1/positions", 200),
            ][route];
            check(
                &h.post(path, b.clone()),
                ok,
                &Want::Any,
                &String::from_utf8_lossy(&b),
            )
        },
    );
}

/// `POST /v1/publish` bodies answer as the section 8 model says; a 200
/// names one seq per channel. A `key` accepted before may also answer 409
/// `conflict` (same key, other channels or data).
#[test]
fn publish_bodies_match_model() {
    let keys = std::cell::RefCell::new(std::collections::HashSet::new());
    run(
        "publish_bodies_match_model",
        900,
        publish_body(),
        |h, fields| {
            let body = render(&fields);
            let key = get(&fields, "key")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let want = match publish_model(&fields) {
                Want::Ok if key.as_ref().is_some_and(|k| keys.borrow().contains(k)) => Want::Any,
                w => w,
            };
            let r = h.post("/v1/publish", body.clone());
            check(&r, 200, &want, &String::from_utf8_lossy(&body))?;
            if let (StatusCode::OK, Some(k)) = (r.0, key) {
                keys.borrow_mut().insert(k);
            }
            if r.0 == StatusCode::OK {
                let a: PublishAnswer = serde_json::from_slice(&r.1).unwrap();
                let one = get(&fields, "channel").filter(|v| !v.is_null());
                let names = strings(one.or(get(&fields, "channels")));
                prop_assert_eq!(a.seqs.len(), names.len());
                prop_assert!(names.iter().all(|n| a.seqs.get(n).is_some_and(|&s| s >= 1)));
            }
            Ok(())
        },
    );
}

#[test]
fn signal_bodies_match_model() {
    run(
        "signal_bodies_match_model",
        900,
        signal_body(),
        |h, fields| {
            let body = render(&fields);
            check(
                &h.post("/v1/signal", body.clone()),
                202,
                &signal_model(&fields),
                &String::from_utf8_lossy(&body),
            )
        },
    );
}

/// `POST /v1/positions`: up to 1000 valid channels, each in the answer.
#[test]
fn positions_bodies_match_model() {
    run(
        "positions_bodies_match_model",
        600,
        positions_body(),
        |h, fields| {
            let body = render(&fields);
            let r = h.post("/v1/positions", body.clone());
            check(
                &r,
                200,
                &positions_model(&fields),
                &String::from_utf8_lossy(&body),
            )?;
            if r.0 == StatusCode::OK {
                let a: PositionsAnswer = serde_json::from_slice(&r.1).unwrap();
                let names = strings(get(&fields, "channels"));
                prop_assert!(names.iter().all(|n| a.positions.contains_key(n)));
                prop_assert!(a.positions.len() <= names.len());
            }
            Ok(())
        },
    );
}

/// `GET /v1/channels/{channel}/messages?after&limit`: the channel from the
/// percent-decoded path, the query as section 8 says, and a page in seq
/// order after `after`, at most `limit` long.
#[test]
fn history_queries_match_model() {
    let chan = prop_oneof![
        4 => Just("chat_1".to_owned()),
        1 => path_channel(),
    ];
    run(
        "history_queries_match_model",
        900,
        (chan, history_query()),
        |h, (raw, q)| {
            // A few messages to page through.
            if h.get("/v1/channels/chat_1/messages")
                .1
                .starts_with(b"{\"messages\":[]")
            {
                for i in 0..5 {
                    let r = h.post(
                        "/v1/publish",
                        format!(r#"{{"channel":"chat_1","data":{i}}}"#).into_bytes(),
                    );
                    prop_assert_eq!(r.0, StatusCode::OK);
                }
            }
            let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let uri = format!("/v1/channels/{raw}/messages?{}", query.join("&"));
            let Ok(parsed) = uri.parse::<http::Uri>() else {
                return Ok(()); // not a URI a client could send
            };
            let (want, after, limit) = history_model(&q);
            // The path is read first: a bad channel is reported whatever the query.
            let want = if ref_name_ok(&ref_percent_decode(&raw)) {
                want
            } else {
                Want::Err(vec!["bad_channel"])
            };
            let r = h.get(&parsed.to_string());
            check(&r, 200, &want, &uri)?;
            if r.0 == StatusCode::OK {
                let page: HistoryPage = serde_json::from_slice(&r.1).unwrap();
                prop_assert!(page.messages.len() <= usize::try_from(limit).unwrap());
                prop_assert!(page.messages.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
                prop_assert!(
                    page.messages
                        .iter()
                        .all(|m| m.seq > after && m.seq <= page.last_seq)
                );
            }
            Ok(())
        },
    );
}

/// Unknown routes are 404 before the key is looked at; known ones without
/// the right bearer key are 401.
#[test]
fn routes_and_keys() {
    let path = prop_oneof![
        prop::sample::select(vec![
            "/v1/publish",
            "/v1/signal",
            "/v1/positions",
            "/v1/channels/chat_1/messages",
            "/v1/channels/chat_1/presence",
            "/v1",
            "/v1/",
            "/v1/publish/",
            "/v1//publish",
            "/v2/publish",
            "/v1/channels//messages",
            "/v1/channels/chat_1",
            "/v1/channels/a/b/messages",
            "/"
        ])
        .prop_map(str::to_owned),
        "/v1/[a-z/]{0,12}",
    ];
    let method = prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
    ]);
    let auth = prop_oneof![
        3 => Just(Some(format!("Bearer {API_KEY}"))),
        1 => Just(Some(format!("bearer {API_KEY}"))),
        1 => Just(Some(format!("Bearer  {API_KEY} "))),
        2 => prop::option::of(prop_oneof![
            Just(format!("Basic {API_KEY}")),
            Just(format!("Bearer {API_KEY}x")),
            Just(format!("Bearer {}", &API_KEY[1..])),
            Just("Bearer ".to_owned()),
            "Bearer [ -~]{0,20}",
        ]),
    ];
    run(
        "routes_and_keys",
        900,
        (method, path, auth),
        |h, (method, path, auth)| {
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let known = matches!(
                (&method, segs.as_slice()),
                (&Method::POST, ["v1", "publish" | "signal" | "positions"])
                    | (&Method::GET, ["v1", "channels", _, "messages" | "presence"])
            );
            let good_key = auth.as_deref().is_some_and(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
                    .is_some_and(|k| k.trim() == API_KEY)
            });
            let body = if method == Method::POST {
                br#"{"channel":"chat_1","data":1,"channels":null}"#.to_vec()
            } else {
                Vec::new()
            };
            let r = h.call(method.clone(), &path, auth.as_deref(), body);
            let want = if !known {
                Want::Err(vec!["not_found"])
            } else if !good_key {
                Want::Err(vec!["unauthorized"])
            } else {
                Want::Any
            };
            let ok = if path.ends_with("signal") { 202 } else { 200 };
            if method == Method::HEAD {
                // No body to read the code from.
                prop_assert_eq!(r.0, StatusCode::NOT_FOUND);
                return Ok(());
            }
            check(&r, ok, &want, &(&method, &path, &auth))
        },
    );
}

// ---- seed corpus ----

#[test]
fn seed_bodies() {
    let h = Harness::new();
    let limit = MAX_DATA + 64 * 1024;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("/v1/publish", Vec::new(), Want::Err(vec!["bad_request"])),
        (
            "/v1/publish",
            b"null".to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/publish",
            b"\xef\xbb\xbf{\"channel\":\"c\",\"data\":1}".to_vec(),
            Want::Any,
        ),
        (
            "/v1/publish",
            br#"{"channel":"c","data":1}   "#.to_vec(),
            Want::Ok,
        ),
        (
            "/v1/publish",
            br#"{"channel":"c","data":1} {}"#.to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/publish",
            br#"{"channel":"c","channel":"d","data":1}"#.to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/publish",
            br#"{"channels":["c","c"],"data":1}"#.to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/publish",
            br#"{"channel":"c","data":1,"key":""}"#.to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/publish",
            br#"{"channel":"c","data":null}"#.to_vec(),
            Want::Ok,
        ),
        (
            "/v1/publish",
            format!(r#"{{"channel":"c","data":{deep}}}"#).into_bytes(),
            Want::Err(vec!["too_large"]),
        ),
        (
            "/v1/publish",
            format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes(),
            Want::Err(vec!["bad_request", "too_large"]),
        ),
        (
            "/v1/publish",
            vec![b' '; limit],
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/publish",
            vec![b' '; limit + 1],
            Want::Err(vec!["too_large"]),
        ),
        (
            "/v1/signal",
            br#"{"channel":"c","data":{"typing":true},"from":"op:1"}"#.to_vec(),
            Want::Ok,
        ),
        (
            "/v1/signal",
            br#"{"channels":["c"],"data":1}"#.to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        ("/v1/positions", br#"{"channels":[]}"#.to_vec(), Want::Ok),
        (
            "/v1/positions",
            br#"{}"#.to_vec(),
            Want::Err(vec!["bad_request"]),
        ),
        (
            "/v1/positions",
            br#"{"channels":["c","c"]}"#.to_vec(),
            Want::Ok,
        ),
        (
            "/v1/positions",
            json!({"channels": vec!["c"; 1001]})
                .to_string()
                .into_bytes(),
            Want::Err(vec!["bad_request"]),
        ),
    ];
    for (path, body, want) in cases {
        let ok = if path == "/v1/signal" { 202 } else { 200 };
        check(
            &h.post(path, body.clone()),
            ok,
            &want,
            &(path, String::from_utf8_lossy(&body[..body.len().min(60)])),
        )
        .unwrap();
    }
}

#[test]
fn seed_history_queries() {
    let h = Harness::new();
    for (q, want) in [
        ("", Want::Ok),
        ("after=18446744073709551615&limit=1000", Want::Ok),
        ("after=18446744073709551616", Want::Err(vec!["bad_request"])),
        ("limit=0", Want::Err(vec!["bad_request"])),
        ("limit=1001", Want::Err(vec!["bad_request"])),
        ("limit=", Want::Err(vec!["bad_request"])),
        ("after", Want::Err(vec!["bad_request"])),
        ("after=-1", Want::Err(vec!["bad_request"])),
        ("limit=5&limit=0", Want::Err(vec!["bad_request"])),
        ("&&&after=1&&", Want::Ok),
        ("x=%zz&after=2", Want::Ok),
    ] {
        check(
            &h.get(&format!("/v1/channels/chat_1/messages?{q}")),
            200,
            &want,
            &q,
        )
        .unwrap();
    }
    for (ch, want) in [
        ("chat%5F1", Want::Ok),
        ("a%2Fb", Want::Err(vec!["bad_channel"])),
        ("a%00", Want::Err(vec!["bad_channel"])),
        ("%", Want::Err(vec!["bad_channel"])),
        ("%C3%A9", Want::Err(vec!["bad_channel"])),
        ("%FF", Want::Err(vec!["bad_channel"])),
    ] {
        check(
            &h.get(&format!("/v1/channels/{ch}/messages")),
            200,
            &want,
            &ch,
        )
        .unwrap();
    }
    let long = "a".repeat(201);
    check(
        &h.get(&format!("/v1/channels/{long}/presence")),
        200,
        &Want::Err(vec!["bad_channel"]),
        &"201 bytes",
    )
    .unwrap();
}

// ---- regression tests for the bugs found (docs/fuzzing.md, "Findings") ----

/// B2 in ingest: serde's derived `Deserialize` reads the body structs from
/// a JSON array too, so `["chat_1",null,1,null,null]` is a publish.
#[test]
fn b2_array_bodies_are_refused() {
    let h = Harness::new();
    for (path, body) in [
        ("/v1/publish", r#"["chat_1",null,{"a":1},null,null]"#),
        ("/v1/signal", r#"["chat_1",1,null]"#),
        ("/v1/positions", r#"[["chat_1"]]"#),
    ] {
        let r = h.post(path, body.as_bytes().to_vec());
        assert_eq!(r.0, StatusCode::BAD_REQUEST, "{path} {body}: {:?}", r.1);
    }
}

/// B1 end to end: `data` of `1e400` (valid JSON text, no f64) is accepted
/// and stored; the history page carries it, and encoding that message for
/// a MessagePack subscriber panics in `JsonData::to_value`. Either the API
/// refuses it (400) or the stored message must transcode.
#[test]
fn b1_stored_data_transcodes_to_msgpack() {
    let h = Harness::new();
    for data in ["1e400", &format!("{}{}", "[".repeat(200), "]".repeat(200))] {
        let r = h.post(
            "/v1/publish",
            format!(r#"{{"channel":"b1","data":{data}}}"#).into_bytes(),
        );
        if r.0 == StatusCode::BAD_REQUEST {
            continue;
        }
        assert_eq!(r.0, StatusCode::OK, "{:?}", r.1);
        let page: HistoryPage =
            serde_json::from_slice(&h.get("/v1/channels/b1/messages?limit=1000").1).unwrap();
        let m: &Message = page.messages.last().unwrap();
        let frame = Message {
            kind: Some(MessageKind::Message),
            ..m.clone()
        };
        let _ = herald_protocol::encode(Encoding::Msgpack, &frame);
    }
}
