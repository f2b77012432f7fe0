//! The `/v1/*` routes (PROTOCOL.md section 8): bearer API key, JSON in and
//! out, errors as `{"error":{"code","message"}}` with the status of their
//! code. Each failure maps to its code here and nowhere else.

use crate::{IngestError, IngestService, PublishInput, metrics};
use bytes::Bytes;
use herald_protocol::api::{
    DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_POSITIONS, PositionsAnswer, PublishAnswer,
};
use herald_protocol::server::{ErrorRef, PresenceList};
use herald_protocol::{ChannelName, ErrorCode, JsonData};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashSet};
use subtle::ConstantTimeEq;

/// Who publishes through the API: idempotency keys of API publishes share
/// this scope (one API key, one owner).
pub const API_PUBLISHER: &str = "api:default";

/// Header with which a gateway names the WebSocket client it publishes for
/// (the same name as the gateway's `herald_gateway::http_ingest`).
pub const PUBLISHER_HEADER: &str = "herald-publisher";

type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error response in the PROTOCOL.md format.
pub fn error(code: ErrorCode, message: &str) -> Resp {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: ErrorRef<'a>,
    }
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        &Body {
            error: ErrorRef { code, message },
        },
    )
}

fn err(e: IngestError) -> Resp {
    error(e.code, &e.message)
}

fn bad(message: &str) -> IngestError {
    IngestError::new(ErrorCode::BadRequest, message)
}

fn bad_channel(name: &str, e: herald_protocol::NameError) -> IngestError {
    IngestError::new(ErrorCode::BadChannel, format!("{name:?}: {e}"))
}

/// Whether `path` belongs to the ingest API.
pub fn is_api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Handles one `/v1/*` request.
pub async fn handle(svc: &IngestService, req: Request<Incoming>) -> Resp {
    let resp = route(svc, req).await;
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::http_requests(class).increment(1);
    resp
}

fn authorized(svc: &IngestService, req: &Request<Incoming>) -> bool {
    bearer_matches(req.headers(), &svc.config().api_key)
}

/// Whether `headers` carry `Authorization: Bearer <key>` for this API key,
/// compared in constant time in the key's content (the length is not
/// secret). An empty configured key matches nothing. Shared with the admin
/// page's API, which takes the same key.
pub fn bearer_matches(headers: &http::HeaderMap, key: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let want = key.as_bytes();
    !want.is_empty() && bool::from(given.trim().as_bytes().ct_eq(want))
}

async fn route(svc: &IngestService, req: Request<Incoming>) -> Resp {
    match dispatch(svc, req).await {
        Ok(r) => r,
        Err(e) => err(e),
    }
}

async fn dispatch(svc: &IngestService, req: Request<Incoming>) -> Result<Resp, IngestError> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let known = matches!(
        (req.method(), segs.as_slice()),
        (&Method::POST, ["v1", "publish"])
            | (&Method::POST, ["v1", "signal"])
            | (&Method::POST, ["v1", "positions"])
            | (&Method::POST, ["v1", "events"])
            | (&Method::GET, ["v1", "channels", _, "messages"])
            | (&Method::GET, ["v1", "channels", _, "presence"])
    );
    if !known {
        return Err(IngestError::new(
            ErrorCode::NotFound,
            format!("no route for {} {}", req.method(), path),
        ));
    }
    if !authorized(svc, &req) {
        return Err(IngestError::new(
            ErrorCode::Unauthorized,
            "missing or wrong API key",
        ));
    }
    match segs.as_slice() {
        ["v1", "publish"] => {
            // A gateway forwarding a client publish names the client, so the
            // key is scoped to that user (PROTOCOL.md section 8).
            let publisher = req
                .headers()
                .get(PUBLISHER_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                // Percent-encoded by the gateway (any UTF-8 `sub`, control
                // characters included, survives a header that way).
                .map(|v| format!("sub:{}", herald_protocol::api::percent_decode(v, false)))
                .unwrap_or_else(|| API_PUBLISHER.to_owned());
            publish(svc, &body(svc, req).await?, publisher).await
        }
        ["v1", "signal"] => signal(svc, &body(svc, req).await?).await,
        ["v1", "events"] => events(svc, &body(svc, req).await?).await,
        ["v1", "positions"] => positions(svc, &body(svc, req).await?).await,
        ["v1", "channels", ch, "messages"] => {
            let ch = channel(ch)?;
            history(svc, &ch, req.uri().query().unwrap_or("")).await
        }
        ["v1", "channels", ch, "presence"] => {
            let ch = channel(ch)?;
            let clients = svc.presence(&ch).await?;
            Ok(json(StatusCode::OK, &PresenceList { clients }))
        }
        _ => Err(IngestError::new(ErrorCode::NotFound, "no such route")),
    }
}

fn channel(raw: &str) -> Result<ChannelName, IngestError> {
    let decoded = herald_protocol::api::percent_decode(raw, false);
    ChannelName::new(&decoded).map_err(|e| bad_channel(&decoded, e))
}

async fn body(svc: &IngestService, req: Request<Incoming>) -> Result<Bytes, IngestError> {
    // Room for the largest data plus channel lists and the other fields.
    let max = svc.config().max_data_bytes + 64 * 1024;
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(IngestError::new(
                ErrorCode::TooLarge,
                format!("request body is larger than {max} bytes"),
            ))
        }
        Err(_) => Err(bad("could not read the request body")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(borrow, default, deserialize_with = "herald_protocol::client::present")]
    data: Option<&'a RawValue>,
    key: Option<String>,
    from: Option<String>,
}

fn channels_of(
    one: Option<String>,
    many: Option<Vec<String>>,
    max: usize,
) -> Result<Vec<ChannelName>, IngestError> {
    let names = match (one, many) {
        (Some(_), Some(_)) => return Err(bad("give either channel or channels, not both")),
        (None, None) => return Err(bad("missing channel or channels")),
        (Some(c), None) => vec![c],
        (None, Some(cs)) => cs,
    };
    if names.is_empty() {
        return Err(bad("channels is empty"));
    }
    if names.len() > max {
        return Err(bad(&format!("at most {max} channels per publish")));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let c = ChannelName::new(&n).map_err(|e| bad_channel(&n, e))?;
        if !seen.insert(c.clone()) {
            return Err(bad(&format!("channel {n:?} listed twice")));
        }
        out.push(c);
    }
    Ok(out)
}

fn data_of(svc: &IngestService, raw: Option<&RawValue>) -> Result<JsonData, IngestError> {
    let Some(raw) = raw else {
        return Err(bad("missing data"));
    };
    let text = raw.get();
    if text.len() > svc.config().max_data_bytes {
        return Err(IngestError::new(
            ErrorCode::TooLarge,
            format!("data is larger than {} bytes", svc.config().max_data_bytes),
        ));
    }
    JsonData::from_json_text(Bytes::copy_from_slice(text.as_bytes()))
        .map_err(|_| bad("data is not valid JSON"))
}

/// Parses a request body, which must be one JSON object (serde's derived
/// `Deserialize` would also read a struct from an array of its fields:
/// found by fuzzing).
fn parse_json<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, IngestError> {
    if b.trim_ascii_start().first() != Some(&b'{') {
        return Err(bad("malformed JSON body: expected a JSON object"));
    }
    serde_json::from_slice(b).map_err(|e| bad(&format!("malformed JSON body: {e}")))
}

async fn publish(svc: &IngestService, b: &[u8], publisher: String) -> Result<Resp, IngestError> {
    let body: PublishBody<'_> = parse_json(b)?;
    let channels = channels_of(
        body.channel,
        body.channels,
        svc.config().max_publish_channels,
    )?;
    let data = data_of(svc, body.data)?;
    if body
        .key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(bad("key must be 1 to 256 bytes"));
    }
    let input = PublishInput {
        channels,
        data,
        key: body.key,
        from: body.from,
        publisher,
    };
    let a = svc.publish(input).await?;
    Ok(json(
        StatusCode::OK,
        &PublishAnswer {
            id: a.id,
            ts: a.ts,
            seqs: a
                .seqs
                .into_iter()
                .map(|(c, s)| (c.as_str().to_owned(), s))
                .collect(),
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody<'a> {
    channel: Option<String>,
    #[serde(borrow, default, deserialize_with = "herald_protocol::client::present")]
    data: Option<&'a RawValue>,
    from: Option<String>,
}

async fn signal(svc: &IngestService, b: &[u8]) -> Result<Resp, IngestError> {
    let body: SignalBody<'_> = parse_json(b)?;
    let name = body.channel.ok_or_else(|| bad("missing channel"))?;
    let ch = ChannelName::new(&name).map_err(|e| bad_channel(&name, e))?;
    let data = data_of(svc, body.data)?;
    svc.signal(ch, data, body.from).await?;
    Ok(json(StatusCode::ACCEPTED, &serde_json::json!({})))
}

/// `POST /v1/events` (herald's own: gateways report client events for
/// webhooks; docs/protocol-notes.md).
async fn events(svc: &IngestService, b: &[u8]) -> Result<Resp, IngestError> {
    use herald_protocol::webhook::{EventBatch, MAX_EVENTS_PER_BATCH};
    let body: EventBatch = parse_json(b)?;
    if body.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(bad(&format!("at most {MAX_EVENTS_PER_BATCH} events")));
    }
    if let Some(e) = body.events.iter().find(|e| {
        e.id.is_empty()
            || e.id.len() > 128
            || e.kind.has_channel() != e.channel.is_some()
            || e.kind == herald_protocol::webhook::EventKind::Publish
    }) {
        return Err(bad(&format!(
            "event {:?}: needs an id of 1 to 128 bytes, is not publish, and has a channel exactly for join and leave",
            e.id
        )));
    }
    let stored = svc.events(&body.events).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "stored": stored }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionsBody {
    channels: Vec<String>,
}

async fn positions(svc: &IngestService, b: &[u8]) -> Result<Resp, IngestError> {
    let body: PositionsBody = parse_json(b)?;
    if body.channels.len() > MAX_POSITIONS {
        return Err(bad(&format!("at most {MAX_POSITIONS} channels")));
    }
    let chans = body
        .channels
        .iter()
        .map(|n| ChannelName::new(n).map_err(|e| bad_channel(n, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let p = svc.positions(&chans).await?;
    let positions: BTreeMap<String, u64> = chans
        .iter()
        .zip(p)
        .map(|(c, s)| (c.as_str().to_owned(), s))
        .collect();
    Ok(json(StatusCode::OK, &PositionsAnswer { positions }))
}

async fn history(svc: &IngestService, ch: &ChannelName, query: &str) -> Result<Resp, IngestError> {
    let mut after = 0u64;
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "after" => {
                after = v
                    .parse::<u64>()
                    .map_err(|_| bad("after must be a non-negative integer"))?
            }
            "limit" => match v.parse::<u32>() {
                Ok(l) if (1..=MAX_HISTORY_LIMIT).contains(&l) => limit = l,
                _ => return Err(bad(&format!("limit must be 1 to {MAX_HISTORY_LIMIT}"))),
            },
            _ => {}
        }
    }
    let page = svc.history(ch, after, limit).await?;
    Ok(json(StatusCode::OK, &page))
}
