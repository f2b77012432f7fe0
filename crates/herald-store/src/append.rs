//! What both backends share about an append: the order channels are written
//! and reported in, the idempotency fingerprint, the remembered result of a
//! key and how a retry is judged against it (PROTOCOL.md section 8).
//!
//! Invariants:
//! - Channel rows are locked in sorted name order ([`Plan::lock_order`]), so
//!   two multi-channel publishes never wait on each other in a cycle;
//!   seqs are reported in request order ([`Plan::ordered`]).
//! - The fingerprint covers the channel *set* (sorted, distinct) and the
//!   data bytes: the same publish with its channels listed in another order
//!   is a retry, not a conflict.
//! - A key is remembered from the `ts` of the request that stored it, and a
//!   later request with a `ts` more than the window after that treats it as
//!   new. Using the request's time (not the database clock) keeps one clock
//!   for the whole decision, and lets tests exercise expiry without sleeping.
//!
//! No I/O here.

use crate::{AppendRequest, Appended, OutboxItem, StoreError};
use herald_protocol::ChannelName;
use herald_protocol::server::Message;
use herald_protocol::webhook::Event;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How one append is carried out.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Distinct channels in request order (the order of `Appended::seqs`).
    pub ordered: Vec<ChannelName>,
    /// The same channels sorted by name: the order their rows are locked in.
    pub lock_order: Vec<ChannelName>,
    /// sha256 hex of the sorted channel set and the data; computed only for
    /// a publish with an idempotency key (the only one that is judged or
    /// remembered), empty otherwise.
    pub fingerprint: String,
}

impl Plan {
    /// Dedupes the request's channels (ingest already rejects duplicates; a
    /// second row for one channel in one message would break the seq
    /// contract, so we stay defensive) and fingerprints the publish.
    pub fn new(req: &AppendRequest) -> Self {
        let mut ordered: Vec<ChannelName> = Vec::with_capacity(req.channels.len());
        for ch in &req.channels {
            if !ordered.contains(ch) {
                ordered.push(ch.clone());
            }
        }
        let mut lock_order = ordered.clone();
        lock_order.sort();
        let fingerprint = if req.key.is_some() {
            fingerprint(&lock_order, req.data.as_bytes())
        } else {
            String::new()
        };
        Self {
            ordered,
            lock_order,
            fingerprint,
        }
    }

    /// Seqs in request order, from the seqs assigned in lock order.
    pub fn in_request_order(&self, assigned: &[(ChannelName, u64)]) -> Vec<(ChannelName, u64)> {
        self.ordered
            .iter()
            .filter_map(|ch| assigned.iter().find(|(c, _)| c == ch).cloned())
            .collect()
    }
}

/// sha256 hex of `sorted` channel names, each followed by `\n` (a byte no
/// channel name contains, so the encoding is unambiguous), one more `\n`,
/// then the data bytes.
fn fingerprint(sorted: &[ChannelName], data: &[u8]) -> String {
    let mut h = Sha256::new();
    for ch in sorted {
        h.update(ch.as_str().as_bytes());
        h.update(b"\n");
    }
    h.update(b"\n");
    h.update(data);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
    hex
}

/// `seqs` column: JSON `[["chat_1", 5], ...]`.
pub(crate) fn encode_seqs(seqs: &[(ChannelName, u64)]) -> String {
    let pairs: Vec<(&str, u64)> = seqs.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    serde_json::to_string(&pairs).expect("a list of (str, u64) always serializes")
}

fn decode_seqs(text: &str) -> Result<Vec<(ChannelName, u64)>, StoreError> {
    let pairs: Vec<(String, u64)> = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("idempotency seqs: {e}")))?;
    pairs
        .into_iter()
        .map(|(c, s)| {
            ChannelName::new(&c)
                .map(|c| (c, s))
                .map_err(|e| StoreError::Corrupt(format!("idempotency seqs channel: {e}")))
        })
        .collect()
}

/// An idempotency row as read back.
#[derive(Debug, Clone)]
pub(crate) struct Remembered {
    /// Message id of the first request.
    pub id: String,
    /// Its ts.
    pub ts: i64,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its seqs, JSON.
    pub seqs: String,
    /// When the key was stored (the first request's ts).
    pub created_ms: i64,
}

/// What to do with a request whose key is already remembered.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The key is older than the window: overwrite it and store anew.
    Expired,
    /// A retry of the remembered publish: answer this, store nothing.
    Duplicate(Appended),
}

/// Judges a request against the remembered row of its key.
///
/// Errors: [`StoreError::Conflict`] when the channel set or data differ;
/// [`StoreError::Corrupt`] when the stored seqs cannot be read or do not
/// cover the channels.
pub(crate) fn judge(
    rem: &Remembered,
    plan: &Plan,
    req_ts: i64,
    window: Duration,
) -> Result<Verdict, StoreError> {
    if rem.created_ms < req_ts.saturating_sub(crate::millis(window)) {
        return Ok(Verdict::Expired);
    }
    if rem.fingerprint != plan.fingerprint {
        return Err(StoreError::Conflict);
    }
    let stored = decode_seqs(&rem.seqs)?;
    let seqs = plan.in_request_order(&stored);
    if seqs.len() != plan.ordered.len() {
        return Err(StoreError::Corrupt(format!(
            "idempotency row of message {} lacks some of its channels",
            rem.id
        )));
    }
    Ok(Verdict::Duplicate(Appended {
        id: rem.id.clone(),
        ts: rem.ts,
        seqs,
        duplicate: true,
    }))
}

/// Keep-at-most `max` messages: after appending `seq`, every seq at or
/// below the returned bound is evicted (`None`: nothing to evict yet).
pub(crate) fn evict_through(seq: i64, max: u64) -> Option<i64> {
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    (seq > max).then(|| seq - max)
}

/// A seq read from the database (BIGINT, never negative when we wrote it).
pub(crate) fn seq_from_db(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative seq {v}")))
}

/// The outbox rows of a committed append: one `publish` event per target
/// whose channel got a seq in `assigned` (a target naming a channel the
/// append does not write is ignored).
pub(crate) fn outbox_rows(req: &AppendRequest, assigned: &[(ChannelName, u64)]) -> Vec<OutboxItem> {
    req.outbox
        .iter()
        .filter_map(|t| {
            let seq = assigned.iter().find(|(c, _)| *c == t.channel)?.1;
            let ev = Event::publish(Message {
                kind: None,
                channel: t.channel.clone(),
                seq,
                id: req.id.clone(),
                ts: req.ts,
                from: req.from.clone(),
                data: req.data.clone(),
            });
            Some(OutboxItem {
                endpoint: t.endpoint.clone(),
                event_id: ev.id.clone(),
                body: ev.to_body(),
            })
        })
        .collect()
}

/// A seq bound for a query (`after` beyond i64 matches nothing anyway).
pub(crate) fn seq_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The webhook outbox's pending rows per endpoint, the same query on both
/// backends ([`crate::Store::outbox_depth`]).
pub(crate) const OUTBOX_DEPTH_SQL: &str =
    "SELECT endpoint, count(*) AS n FROM webhook_outbox GROUP BY endpoint ORDER BY endpoint";

/// Reads [`OUTBOX_DEPTH_SQL`]'s rows, whichever backend returned them.
pub(crate) fn outbox_depth_rows<R>(rows: &[R]) -> Result<Vec<crate::OutboxDepth>, StoreError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(crate::OutboxDepth {
                endpoint: r.try_get("endpoint")?,
                pending: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use herald_protocol::JsonData;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn req(channels: &[&str], data: &'static str) -> AppendRequest {
        AppendRequest {
            outbox: Vec::new(),
            channels: channels.iter().map(|c| ch(c)).collect(),
            data: JsonData::from_json_text(Bytes::from_static(data.as_bytes())).unwrap(),
            from: None,
            publisher: "p".into(),
            key: Some("k".into()),
            id: "id1".into(),
            ts: 10_000,
        }
    }

    #[test]
    fn plan_dedupes_and_sorts() {
        let p = Plan::new(&req(&["b", "a", "b", "c"], "1"));
        assert_eq!(p.ordered, vec![ch("b"), ch("a"), ch("c")]);
        assert_eq!(p.lock_order, vec![ch("a"), ch("b"), ch("c")]);
        let assigned = vec![(ch("a"), 1), (ch("b"), 7), (ch("c"), 3)];
        assert_eq!(
            p.in_request_order(&assigned),
            vec![(ch("b"), 7), (ch("a"), 1), (ch("c"), 3)]
        );
    }

    #[test]
    fn fingerprint_is_order_free_but_set_and_data_sensitive() {
        let a = Plan::new(&req(&["x", "y"], "{\"a\":1}")).fingerprint;
        assert_eq!(a, Plan::new(&req(&["y", "x"], "{\"a\":1}")).fingerprint);
        assert_ne!(a, Plan::new(&req(&["x"], "{\"a\":1}")).fingerprint);
        assert_ne!(a, Plan::new(&req(&["x", "y"], "{\"a\":2}")).fingerprint);
        assert_ne!(a, Plan::new(&req(&["x", "y"], "{\"a\": 1}")).fingerprint);
        assert_eq!(a.len(), 64);
        // sha256 of "x\ny\n\n{\"a\":1}", lower-case hex (the stored format).
        assert_eq!(
            a,
            "aad110d58c32711ffc26d7dfaeac4ae8703baf3710e57b55fcb2393723d9da9e"
        );
        // Without a key nothing is judged or remembered: no hashing.
        let mut unkeyed = req(&["x", "y"], "{\"a\":1}");
        unkeyed.key = None;
        assert_eq!(Plan::new(&unkeyed).fingerprint, "");
    }

    #[test]
    fn seqs_round_trip() {
        let s = vec![(ch("a"), 1), (ch("b"), 99)];
        let text = encode_seqs(&s);
        assert_eq!(text, r#"[["a",1],["b",99]]"#);
        assert_eq!(decode_seqs(&text).unwrap(), s);
        assert!(matches!(decode_seqs("{"), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            decode_seqs(r#"[["bad ch",1]]"#),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn judging() {
        let first = req(&["a", "b"], "1");
        let plan = Plan::new(&first);
        let rem = Remembered {
            id: "id0".into(),
            ts: 9_000,
            fingerprint: plan.fingerprint.clone(),
            seqs: encode_seqs(&[(ch("a"), 4), (ch("b"), 2)]),
            created_ms: 9_000,
        };
        let w = Duration::from_secs(1);
        // Retry with the channels the other way round: same result, request order.
        let retry = Plan::new(&req(&["b", "a"], "1"));
        match judge(&rem, &retry, 9_500, w).unwrap() {
            Verdict::Duplicate(a) => {
                assert_eq!(a.id, "id0");
                assert_eq!(a.ts, 9_000);
                assert_eq!(a.seqs, vec![(ch("b"), 2), (ch("a"), 4)]);
                assert!(a.duplicate);
            }
            v => panic!("{v:?}"),
        }
        // Exactly at the window's edge: still remembered; past it: new.
        assert!(matches!(
            judge(&rem, &plan, 10_000, w),
            Ok(Verdict::Duplicate(_))
        ));
        assert!(matches!(
            judge(&rem, &plan, 10_001, w),
            Ok(Verdict::Expired)
        ));
        // Other data or other set: conflict (even when the ts is older).
        let other = Plan::new(&req(&["a", "b"], "2"));
        assert!(matches!(
            judge(&rem, &other, 9_000, w),
            Err(StoreError::Conflict)
        ));
        let fewer = Plan::new(&req(&["a"], "1"));
        assert!(matches!(
            judge(&rem, &fewer, 1, w),
            Err(StoreError::Conflict)
        ));
    }

    #[test]
    fn eviction_bound() {
        assert_eq!(evict_through(5, 5), None);
        assert_eq!(evict_through(6, 5), Some(1));
        assert_eq!(evict_through(12, 5), Some(7));
        assert_eq!(evict_through(1, 0), Some(1));
        assert_eq!(evict_through(3, u64::MAX), None);
    }
}
