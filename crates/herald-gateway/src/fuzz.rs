//! Fuzzing (issue 9) of the gateway's parsers of untrusted bytes: the
//! WebSocket frame reader ([`FrameReader`], through its public `read()`
//! only), close-frame payloads ([`close_code_of`]), the handshake query
//! ([`crate::parse_query`] and `recover=`) and route paths
//! ([`Route::channels_for`]).
//!
//! proptest on the stable toolchain: CI-sized case counts, or
//! `HERALD_FUZZ_CASES` per property for the long local run
//! (docs/fuzzing.md). Failures are written to
//! `proptest-regressions/fuzz.txt` (committed) and replayed first; the plain
//! `#[test]`s at the end are the seed corpus and the regression tests.

use crate::Route;
use crate::ws::{FrameReader, InFrame, InOp, ReadError, close_code_of};
use futures_util::FutureExt;
use herald_protocol::ChannelName;
use herald_protocol::api::{parse_recover, percent_encode};
use herald_testkit::fuzz::config;
use proptest::prelude::*;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

// ---- a stream that hands out its bytes in given pieces ----

/// An `AsyncRead` over `data` that ends each read at the next cut, and with
/// `pending` answers every other poll with `Pending` (waking at once), so a
/// `read()` future can be dropped half way.
struct Pieces {
    data: Vec<u8>,
    cuts: Vec<usize>,
    pos: usize,
    pending: bool,
    ready_next: bool,
}

impl Pieces {
    fn new(data: Vec<u8>, mut cuts: Vec<usize>, pending: bool) -> Self {
        cuts.retain(|&c| c > 0 && c < data.len());
        cuts.sort_unstable();
        cuts.dedup();
        Self {
            data,
            cuts,
            pos: 0,
            pending,
            ready_next: false,
        }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pending && !this.ready_next {
            this.ready_next = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.ready_next = false;
        let next = this.cuts.partition_point(|&c| c <= this.pos);
        let end = this.cuts.get(next).copied().unwrap_or(this.data.len());
        let n = (end - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Every frame `read()` returns until its first error, on a current-thread
/// runtime.
fn read_all(data: Vec<u8>, cuts: Vec<usize>, max: usize) -> (Vec<InFrame>, ReadError) {
    let bound = data.len() + 2;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut r = FrameReader::new(Pieces::new(data, cuts, false), max);
        let mut frames = Vec::new();
        loop {
            match r.read().await {
                Ok(f) => frames.push(f),
                Err(e) => return (frames, e),
            }
            assert!(frames.len() <= bound, "more frames than bytes");
        }
    })
}

/// The same, polling each `read()` once and dropping it when pending: the
/// frames must come out the same (the reader is cancel-safe).
fn read_all_cancelling(data: Vec<u8>, cuts: Vec<usize>, max: usize) -> (Vec<InFrame>, ReadError) {
    let bound = 4 * data.len() + 8;
    let mut r = FrameReader::new(Pieces::new(data, cuts, true), max);
    let mut frames = Vec::new();
    for _ in 0..bound {
        match r.read().now_or_never() {
            Some(Ok(f)) => frames.push(f),
            Some(Err(e)) => return (frames, e),
            None => {}
        }
    }
    panic!("no progress after {bound} polls");
}

/// What RFC 6455 section 5 lets a returned frame be.
fn check_frames(frames: &[InFrame], max: usize) -> Result<(), TestCaseError> {
    for f in frames {
        prop_assert!(
            f.payload.len() <= max,
            "payload {} > max {}",
            f.payload.len(),
            max
        );
        if matches!(f.op, InOp::Close | InOp::Ping | InOp::Pong) {
            prop_assert!(f.fin && f.payload.len() <= 125, "{:?}", f);
        }
    }
    Ok(())
}

// ---- valid client frames ----

/// One frame as a client sends it.
#[derive(Debug, Clone)]
struct Out {
    fin: bool,
    op: u8,
    payload: Vec<u8>,
    mask: [u8; 4],
}

impl Out {
    /// Masked, with the minimal length encoding (RFC 6455 section 5.2).
    fn encode(&self, into: &mut Vec<u8>) {
        into.push(if self.fin { 0x80 } else { 0 } | self.op);
        let len = self.payload.len();
        if len < 126 {
            into.push(0x80 | u8::try_from(len).unwrap());
        } else if let Ok(l) = u16::try_from(len) {
            into.push(0x80 | 126);
            into.extend_from_slice(&l.to_be_bytes());
        } else {
            into.push(0x80 | 127);
            into.extend_from_slice(&u64::try_from(len).unwrap().to_be_bytes());
        }
        into.extend_from_slice(&self.mask);
        into.extend(
            self.payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ self.mask[i % 4]),
        );
    }

    fn in_op(&self) -> InOp {
        match self.op {
            0x0 => InOp::Continuation,
            0x1 => InOp::Text,
            0x2 => InOp::Binary,
            0x8 => InOp::Close,
            0x9 => InOp::Ping,
            _ => InOp::Pong,
        }
    }
}

fn encode_all(frames: &[Out]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        f.encode(&mut v);
    }
    v
}

/// A data payload: mostly short and random, at times at the length-form
/// edges or past 64 KiB (the 64-bit form), filled with a cheap pattern.
fn data_payload(text: bool) -> BoxedStrategy<Vec<u8>> {
    let fill = move |(n, seed): (usize, u8)| -> Vec<u8> {
        (0..n)
            .map(|i| {
                let b = seed.wrapping_add(i.to_le_bytes()[0].wrapping_mul(31));
                if text { 0x20 + b % 0x5f } else { b }
            })
            .collect()
    };
    let small = if text {
        "[ -~\n]{0,200}".prop_map(String::into_bytes).boxed()
    } else {
        prop::collection::vec(any::<u8>(), 0..200).boxed()
    };
    let sized = (
        prop_oneof![
            4 => prop::sample::select(vec![125usize, 126, 127, 65535]),
            1 => Just(65536usize),
            1 => 65537usize..70000,
        ],
        any::<u8>(),
    )
        .prop_map(fill);
    prop_oneof![12 => small, 1 => sized].boxed()
}

fn mask() -> impl Strategy<Value = [u8; 4]> {
    any::<[u8; 4]>()
}

fn control() -> impl Strategy<Value = Out> {
    (
        prop::sample::select(vec![0x9u8, 0xA]),
        prop::collection::vec(any::<u8>(), 0..=125),
        mask(),
    )
        .prop_map(|(op, payload, mask)| Out {
            fin: true,
            op,
            payload,
            mask,
        })
}

/// One message: a data message in 1 to 3 fragments with control frames
/// between them, or a lone control frame.
fn message() -> impl Strategy<Value = Vec<Out>> {
    let data = any::<bool>().prop_flat_map(|text| {
        (
            prop::collection::vec((data_payload(text), mask()), 1..=3),
            prop::collection::vec(prop::option::weighted(0.2, control()), 3),
        )
            .prop_map(move |(frags, ctrl)| {
                let n = frags.len();
                let mut out = Vec::new();
                for (i, ((payload, mask), c)) in frags.into_iter().zip(ctrl).enumerate() {
                    out.push(Out {
                        fin: i + 1 == n,
                        op: if i > 0 {
                            0
                        } else if text {
                            1
                        } else {
                            2
                        },
                        payload,
                        mask,
                    });
                    if let Some(c) = c.filter(|_| i + 1 < n) {
                        out.push(c);
                    }
                }
                out
            })
    });
    prop_oneof![4 => data, 1 => control().prop_map(|c| vec![c])]
}

/// A valid close payload: empty, or a code allowed on the wire and a UTF-8
/// reason (at most 125 bytes in all).
fn close() -> impl Strategy<Value = Out> {
    let payload = prop_oneof![
        Just(Vec::new()),
        (
            prop::sample::select(vec![1000u16, 1001, 1003, 1008, 1011, 3000, 4000, 4999]),
            "\\PC{0,30}"
        )
            .prop_map(|(code, reason)| {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                p.truncate(125);
                while std::str::from_utf8(&p[2..]).is_err() {
                    p.pop();
                }
                p
            }),
    ];
    (payload, mask()).prop_map(|(payload, mask)| Out {
        fin: true,
        op: 0x8,
        payload,
        mask,
    })
}

/// A valid client stream: messages, maybe a close at the end.
fn stream() -> impl Strategy<Value = Vec<Out>> {
    (
        prop::collection::vec(message(), 0..5),
        prop::option::weighted(0.3, close()),
    )
        .prop_map(|(msgs, close)| {
            let mut v: Vec<Out> = msgs.into_iter().flatten().collect();
            v.extend(close);
            v
        })
}

/// Split points: a few anywhere, or (rarely) after every byte.
fn cuts(len_hint: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        8 => prop::collection::vec(0..len_hint.max(1), 0..8),
        1 => Just((1..len_hint.min(4096)).collect::<Vec<_>>()),
    ]
}

fn stream_and_cuts() -> impl Strategy<Value = (Vec<Out>, Vec<usize>)> {
    stream().prop_flat_map(|s| {
        let len = encode_all(&s).len();
        (Just(s), cuts(len))
    })
}

fn same_frames(got: &[InFrame], want: &[Out]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        prop_assert_eq!(g.fin, w.fin);
        prop_assert_eq!(g.op, w.in_op());
        prop_assert!(
            g.payload[..] == w.payload[..],
            "payload of {:?} differs",
            g.op
        );
    }
    Ok(())
}

/// The inbound limits the arbitrary-bytes properties use.
fn any_max() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![0usize, 1, 125, 126, 200, 65535, 65536, 1 << 20])
}

/// RFC 6455 section 7.4 and the registry: the codes a peer may send.
fn ref_close_code_ok(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

proptest! {
    #![proptest_config(config(1500))]

    /// A valid masked stream, split anywhere, reads back frame by frame,
    /// then `Gone` at its end.
    #[test]
    fn frames_roundtrip((s, cuts) in stream_and_cuts()) {
        let max = s.iter().map(|f| f.payload.len()).max().unwrap_or(0);
        let (got, end) = read_all(encode_all(&s), cuts, max);
        same_frames(&got, &s)?;
        prop_assert!(matches!(end, ReadError::Gone), "{:?}", end);
    }

    /// The same with every `read()` dropped at its first `Pending`.
    #[test]
    fn frames_roundtrip_when_cancelled((s, cuts) in stream_and_cuts()) {
        let max = s.iter().map(|f| f.payload.len()).max().unwrap_or(0);
        let (got, end) = read_all_cancelling(encode_all(&s), cuts, max);
        same_frames(&got, &s)?;
        prop_assert!(matches!(end, ReadError::Gone), "{:?}", end);
    }

    /// Under a smaller limit: the frames before the first one over it, then
    /// `TooBig` (close 1009), never a frame over the limit.
    #[test]
    fn frames_over_the_limit((s, cuts) in stream_and_cuts(), at in any::<prop::sample::Index>()) {
        let sizes: Vec<usize> = s.iter().map(|f| f.payload.len()).collect();
        let max = at.index(sizes.iter().max().copied().unwrap_or(0) + 1);
        let over = sizes.iter().position(|&n| n > max);
        let (got, end) = read_all(encode_all(&s), cuts, max);
        match over {
            Some(i) => {
                same_frames(&got, &s[..i])?;
                prop_assert!(matches!(end, ReadError::TooBig), "{:?}", end);
            }
            None => {
                same_frames(&got, &s)?;
                prop_assert!(matches!(end, ReadError::Gone), "{:?}", end);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(6000))]

    /// Arbitrary bytes: no panic, and every frame returned fits the limit
    /// and RFC 6455's rules for control frames.
    #[test]
    fn frames_from_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300),
                                   cuts in prop::collection::vec(0usize..300, 0..6),
                                   max in any_max()) {
        let (frames, _) = read_all(data, cuts, max);
        check_frames(&frames, max)?;
    }

    /// Frame headers with any bits and lengths, masked or not, in front of
    /// a few bytes: reaches every branch of the header parser.
    #[test]
    fn frames_from_arbitrary_headers(b0 in any::<u8>(), b1 in any::<u8>(), ext in any::<[u8; 8]>(),
                                     ext_len in prop::sample::select(vec![0usize, 2, 8]),
                                     tail in prop::collection::vec(any::<u8>(), 0..140),
                                     max in any_max()) {
        let mut data = vec![b0, b1];
        data.extend_from_slice(&ext[..ext_len]);
        data.extend(tail);
        let (frames, _) = read_all(data, vec![], max);
        check_frames(&frames, max)?;
    }

    /// Close payloads: validated exactly as RFC 6455 sections 5.5.1 and 7.4
    /// say.
    #[test]
    fn close_payloads(code in prop_oneof![any::<u16>(), 995u16..1020, 2990u16..3010, 4990u16..5010],
                      reason in prop_oneof![
                          "\\PC{0,20}".prop_map(String::into_bytes),
                          prop::collection::vec(any::<u8>(), 0..20),
                      ],
                      short in prop::collection::vec(any::<u8>(), 0..2)) {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(&reason);
        let r = close_code_of(&p);
        let ok = ref_close_code_ok(code) && std::str::from_utf8(&reason).is_ok();
        prop_assert_eq!(r.is_ok(), ok, "{:?}", r);
        if let Ok(c) = r {
            prop_assert_eq!(c, Some(code));
        }
        let r = close_code_of(&short);
        prop_assert_eq!(r.is_ok(), short.is_empty());
    }
}

proptest! {
    #![proptest_config(config(1500))]

    /// A valid stream with bytes flipped, cut or inserted.
    #[test]
    fn frames_mutated((s, cuts) in stream_and_cuts(),
                      edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
                      max in any_max()) {
        let mut b = encode_all(&s);
        for (at, byte, how) in edits {
            let i = at.index(b.len() + 1);
            match how {
                0 if i < b.len() => b[i] ^= byte | 1,
                1 if i < b.len() => { b.truncate(i); }
                _ => b.insert(i, byte),
            }
        }
        let (frames, _) = read_all(b, cuts, max);
        check_frames(&frames, max)?;
    }
}

// ---- the handshake: query and route paths ----

/// A route like an operator's, with two parameters.
fn route() -> Route {
    Route::new(
        "/ws/{site}/{user}",
        &["dash_{site}_{user}".into(), "u_{user}".into()],
    )
    .unwrap()
}

proptest! {
    #![proptest_config(config(6000))]

    /// Any query string: no panic; a `recover` value that parses names
    /// valid channels.
    #[test]
    fn query_arbitrary(q in "[a-z=&%0-9A-F:,_+.-]{0,80}|\\PC{0,40}") {
        let map = crate::parse_query(&q);
        if let Some(Ok(list)) = map.get("recover").map(|r| parse_recover(r)) {
            prop_assert!(list.iter().all(|(c, _)| ChannelName::new(c.as_str()).is_ok()));
        }
    }

    /// A client's query (token, recover list, other keys) comes back intact.
    #[test]
    fn query_roundtrip(token in "[A-Za-z0-9._-]{0,60}",
                       list in prop::collection::vec(("[A-Za-z0-9_.:@=-]{1,20}", any::<u64>()), 0..10),
                       other in prop::collection::vec(("x[a-z]{0,4}", any::<String>()), 0..3)) {
        let recover = list.iter().map(|(c, s)| format!("{c}:{s}")).collect::<Vec<_>>().join(",");
        let mut parts = vec![format!("token={}", percent_encode(&token)), format!("recover={}", percent_encode(&recover))];
        parts.extend(other.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))));
        let map = crate::parse_query(&parts.join("&"));
        prop_assert_eq!(map.get("token"), Some(&token));
        let want: Vec<(ChannelName, u64)> = list.iter().map(|(c, s)| (ChannelName::new(c).unwrap(), *s)).collect();
        prop_assert_eq!(parse_recover(&map["recover"]), Ok(want));
        for (k, _) in &other {
            let last = other.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v);
            prop_assert_eq!(map.get(k), last);
        }
    }

    /// Route parameters substitute into the templates as written, in one
    /// pass (a value spelling a parameter is not substituted again: B7),
    /// and the result is valid or refused.
    #[test]
    fn route_paths(site in "[A-Za-z0-9_.:@=%{}-]{0,12}|\\{user\\}|\\PC{0,6}",
                   user in "[A-Za-z0-9_.:@=%{}-]{0,12}|\\{site\\}|\\PC{0,6}") {
        let path = format!("/ws/{site}/{user}");
        let want = [format!("dash_{site}_{user}"), format!("u_{user}")];
        let ok = want.iter().all(|n| ChannelName::new(n).is_ok());
        match route().channels_for(&path) {
            None => prop_assert!(user.contains('/') || site.contains('/'), "{}", path),
            Some(Ok(chs)) => {
                prop_assert!(ok, "{} -> {:?}", path, chs);
                prop_assert_eq!(chs.iter().map(|c| c.as_str().to_owned()).collect::<Vec<_>>(), want.to_vec());
            }
            Some(Err(_)) => prop_assert!(!ok, "{}", path),
        }
    }
}

// ---- seed corpus ----

/// A masked frame with the given first byte and length field bytes.
fn raw(first: u8, len_bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(len_bytes);
    v.extend_from_slice(&[1, 2, 3, 4]);
    v.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    v
}

#[test]
fn seed_zero_byte_frames() {
    let mut b = raw(0x81, &[0x80], b"");
    b.extend(raw(0x82, &[0x80], b""));
    b.extend(raw(0x89, &[0x80], b""));
    b.extend(raw(0x88, &[0x80], b""));
    let (frames, end) = read_all(b, vec![], 0);
    assert_eq!(frames.len(), 4);
    assert!(frames.iter().all(|f| f.fin && f.payload.is_empty()));
    assert!(matches!(end, ReadError::Gone));
}

#[test]
fn seed_length_forms() {
    // The 16- and 64-bit forms at their smallest.
    for (len_bytes, n) in [
        (vec![0x80 | 126, 0, 126], 126usize),
        (vec![0x80 | 126, 0xFF, 0xFF], 65535),
        (vec![0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0], 65536),
    ] {
        let (frames, end) = read_all(raw(0x82, &len_bytes, &vec![7; n]), vec![1, 2, 3], n);
        assert_eq!(frames.len(), 1, "{n}");
        assert_eq!(frames[0].payload.len(), n);
        assert!(matches!(end, ReadError::Gone));
    }
}

#[test]
fn seed_bad_headers_are_errors_not_panics() {
    let max = 65536;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // 64-bit length with its high bit set.
        (
            raw(0x82, &[0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], b""),
            "protocol",
        ),
        // 63-bit lengths: refused before any allocation of that size.
        (
            raw(
                0x82,
                &[0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                b"",
            ),
            "too big",
        ),
        (raw(0x82, &[0xFF, 0, 0, 0, 1, 0, 0, 0, 0], b""), "too big"),
        // Length 127 form for a small payload, 126 form for 5 bytes.
        (
            raw(0x82, &[0xFF, 0, 0, 0, 0, 0, 0, 0, 5], b"hello"),
            "protocol",
        ),
        (raw(0x82, &[0xFE, 0, 5], b"hello"), "protocol"),
        // Unmasked, reserved bits, unknown opcodes.
        (vec![0x81, 0x02, b'h', b'i'], "protocol"),
        (raw(0xC1, &[0x81], b"x"), "protocol"),
        (raw(0x83, &[0x81], b"x"), "protocol"),
        (raw(0x8B, &[0x81], b"x"), "protocol"),
        // Fragmented or long control frames.
        (raw(0x09, &[0x81], b"x"), "protocol"),
        (raw(0x89, &[0xFE, 0, 126], &[0; 126]), "protocol"),
        // Header, then the stream ends.
        (vec![0x82, 0xFE, 0x01], "gone"),
        (raw(0x82, &[0xFE, 0x01, 0x00], b"abc"), "gone"),
        (vec![0x82], "gone"),
    ];
    for (bytes, want) in cases {
        for cuts in [vec![], (1..bytes.len()).collect()] {
            let (frames, end) = read_all(bytes.clone(), cuts, max);
            assert!(frames.is_empty(), "{bytes:?}");
            let got = match end {
                ReadError::Protocol(_) => "protocol",
                ReadError::TooBig => "too big",
                ReadError::Gone => "gone",
                other => panic!("{bytes:?}: {other:?}"),
            };
            assert_eq!(got, want, "{bytes:?}");
        }
    }
}

#[test]
fn seed_big_frame_one_byte_at_a_time() {
    let payload: Vec<u8> = (0..70_000u32).map(|i| i.to_le_bytes()[0]).collect();
    let mut b = Vec::new();
    Out {
        fin: true,
        op: 2,
        payload: payload.clone(),
        mask: [9, 8, 7, 6],
    }
    .encode(&mut b);
    let cuts = (1..b.len()).collect();
    let (frames, end) = read_all_cancelling(b, cuts, 70_000);
    assert_eq!(frames.len(), 1);
    assert_eq!(&frames[0].payload[..], &payload[..]);
    assert!(matches!(end, ReadError::Gone));
}

#[test]
fn seed_close_payloads() {
    assert!(matches!(close_code_of(&[]), Ok(None)));
    assert!(close_code_of(&[0x03]).is_err());
    assert_eq!(close_code_of(&[0x03, 0xE8]).unwrap(), Some(1000));
    assert!(close_code_of(&[0x03, 0xED]).is_err()); // 1005: never on the wire
    assert!(close_code_of(&[0x03, 0xE8, 0xC3]).is_err()); // cut UTF-8
    assert!(close_code_of(&[0x0F, 0xA0, 0xED, 0xA0, 0x80]).is_err()); // 4000, a surrogate
}

// ---- regression tests for the bugs found (docs/fuzzing.md, "Findings") ----

/// B6: with a limit at `usize::MAX` (`max_frame_bytes` is only checked to
/// be positive), a 14-byte header claiming 2^63 - 1 bytes made `parse()`
/// reserve the whole frame at once: "capacity overflow" panic (and a claim
/// of 2^40 bytes an allocation failure, which aborts the process). The
/// buffer must grow only as bytes come.
#[test]
fn b6_huge_limit_and_length_header_does_not_panic() {
    for len in [u64::MAX >> 1, 1 << 62, 1 << 40] {
        let mut len_bytes = vec![0xFF];
        len_bytes.extend_from_slice(&len.to_be_bytes());
        let header = raw(0x82, &len_bytes, b"some of it");
        let (frames, end) = read_all(header, vec![], usize::MAX);
        assert!(frames.is_empty());
        assert!(
            matches!(end, ReadError::Gone | ReadError::TooBig),
            "{end:?}"
        );
    }
}

/// B7: route parameters were substituted one after another, so a path
/// segment that spells another parameter (`{user}`) was substituted again:
/// `/ws/{user}/bob` gave `dash_bob_bob` instead of refusing `dash_{user}_bob`.
#[test]
fn b7_route_parameter_values_are_not_resubstituted() {
    // hyper's URI parser lets braces through in a path.
    let uri: http::Uri = "/ws/{user}/bob".parse().unwrap();
    let got = route().channels_for(uri.path());
    assert!(matches!(got, Some(Err(_))), "{got:?}");
}
