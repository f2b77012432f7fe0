//! Hostile clients against real `herald dev` processes: floods of control
//! frames, fragments and requests, clients that never read, half-sent
//! handshakes and frames, oversized or cross-site upgrade requests, and
//! malformed framing (RFC 6455). Each test checks what an operator would:
//! the attacker is cut off with the documented close code or HTTP status,
//! the node's resident memory stays under a bound derived from the
//! configured limits, and the node keeps serving an ordinary client.
//!
//! Memory is `VmRSS` of the herald process (`/proc/<pid>/status`), sampled
//! every 50 ms while the attack runs. The bounds are baseline (after one
//! ordinary client's round trip) + the queues the limits allow + a fixed
//! [`SLACK`]. Lines starting with `MEASURED:` report the figures (run with
//! `-- --nocapture` to see them).
//!
//! Sections, one per hostile behaviour:
//! 1. ping flood from a client that never reads; a non-reading client fed
//!    big publishes;
//! 2. fragment flood;
//! 3. slowloris handshakes;
//! 4. half-finished frame, then silence;
//! 5. subscribe/unsubscribe flood;
//! 6. oversized and malformed `recover=`, oversized request heads;
//! 7. cross-site `Origin`;
//! 8. close frames (RFC 6455 sections 5.5.1, 7.4);
//! 9. non-minimal payload lengths (RFC 6455 section 5.2).
//!
//! Every test starts its own herald, talks to 127.0.0.1 only and is bounded
//! in time and in the number of connections and frames it sends.

use std::time::{Duration, Instant};

use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fixed allowance over the figure derived from the limits: allocator
/// arenas and thread caches, tokio worker stacks, SQLite's page cache and
/// the metrics registry, none of which a client controls.
const SLACK: u64 = 64 * 1024 * 1024;

/// How often resident memory is sampled during an attack.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A token for `sub` allowed every op on every channel.
fn full(h: &HeraldProcess, sub: &str) -> String {
    TokenBuilder::new(sub).allow_all().sign(&h.jwt_secret)
}

/// The node serves an ordinary client: it connects, subscribes, and
/// receives what the application then publishes to that channel.
async fn assert_serves(h: &HeraldProcess, what: &str) {
    assert!(
        vm_rss_bytes(h.pid()).is_some(),
        "{what}: the herald process is gone; log:\n{}",
        h.log()
    );
    let ch = format!("probe_{}", now_ms());
    let t = full(h, "probe");
    let (mut c, _) = Connect::new(h).token(&t).ready().await;
    let r = c.subscribe(&ch).await;
    assert_eq!(r["channel"], ch.as_str(), "{what}: subscribe reply {r}");
    let sent = Api::new(h).publish(&ch, json!({"probe": what})).await;
    let m = c
        .recv_until(&format!("{what}: the probe message"), |v| {
            v["type"] == "message" && v["channel"] == ch.as_str()
        })
        .await;
    assert_eq!(m["data"]["probe"], what, "{what}: {m}");
    assert_eq!(m["id"], sent["id"], "{what}: {m}");
    c.close().await;
}

/// Resident memory once the node has served one client (so its lazily
/// built pools and caches exist).
async fn baseline(h: &HeraldProcess) -> u64 {
    assert_serves(h, "baseline").await;
    vm_rss_bytes(h.pid()).expect("herald is running")
}

/// Asserts `peak` stayed within `bound` and prints the figures.
fn check_memory(test: &str, base: u64, peak: u64, samples: u64, bound: u64, derivation: &str) {
    println!(
        "MEASURED: {test}: VmRSS baseline {}, peak {} ({samples} samples every {SAMPLE_EVERY:?}), \
         bound {} = {derivation}",
        mib(base),
        mib(peak),
        mib(bound)
    );
    assert!(samples > 0, "{test}: no memory sample was taken");
    assert!(
        peak <= bound,
        "{test}: VmRSS peaked at {} over the bound {} ({derivation}); baseline {}",
        mib(peak),
        mib(bound),
        mib(base)
    );
}

/// Opens a raw WebSocket with `token` and reads its welcome frame.
async fn raw_welcomed(h: &HeraldProcess, token: &str, rcvbuf: Option<u32>) -> (RawWs, Value) {
    let mut raw = RawWs::connect(h.port, &format!("/ws?token={token}"), None, rcvbuf).await;
    let w = raw
        .read_frame(STEP)
        .await
        .unwrap_or_else(|e| panic!("no welcome: {e}"))
        .and_then(|f| f.json())
        .expect("a welcome frame");
    assert_eq!(w["type"], "welcome", "{w}");
    (raw, w)
}

/// Reads whatever the server has already sent, without waiting for more:
/// data frames are appended to `frames`; a close frame's code is returned
/// (`Some(None)` for a close without a code), as is the end of the stream
/// (`Some(None)` too, with `ended` set).
async fn poll_frames(
    raw: &mut RawWs,
    frames: &mut Vec<Value>,
    ended: &mut Option<String>,
) -> Option<Option<u16>> {
    loop {
        match raw.read_frame(Duration::from_millis(1)).await {
            Ok(Some(f)) if f.opcode == 8 => return Some(f.close_code()),
            Ok(Some(f)) => frames.extend(f.json()),
            Ok(None) => {
                *ended = Some("EOF".into());
                return Some(None);
            }
            Err(RawReadError::Timeout(_)) => return None,
            Err(e) => {
                *ended = Some(e.to_string());
                return Some(None);
            }
        }
    }
}

/// The `disconnect` frames among `frames`, as their codes.
fn disconnect_codes(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "disconnect")
        .map(|f| f["code"].clone())
        .collect()
}

/// Sum of `herald_disconnects_total` over the given `code` labels (0 when
/// none was counted yet).
async fn disconnects(api: &Api, codes: &[&str]) -> u64 {
    let (status, text) = api.admin_text("/metrics").await;
    assert_eq!(status, 200, "/metrics: {text}");
    let mut n = 0.0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("herald_disconnects_total{"))
    {
        if codes
            .iter()
            .any(|c| line.contains(&format!("code=\"{c}\"")))
        {
            n += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unreadable sample: {line}"));
        }
    }
    // A counter of connections: a small whole number.
    n as u64
}

// ---------------------------------------------------------------------------
// 1. Ping flood; a non-reading client fed big publishes
// ---------------------------------------------------------------------------

/// Item 1 (a), ping flood from a client that never reads: WebSocket pings
/// with 125-byte payloads, 500 every 10 ms (~50 000 a second), never
/// reading a byte. The frame bucket (`rate_per_second` 50, `rate_burst`
/// 100, the defaults) ends the connection after 2 s over it: herald counts
/// a 4029 disconnect, and the client's writes start failing (what it finds
/// when it finally reads, if anything, is `disconnect` 4029 and close 4029).
/// Herald's memory stays within baseline + one `max_queue_bytes` (256 KiB)
/// + [`SLACK`] throughout (every queued frame counts against the queue
/// bound, and a queued pong is replaced by the newer one); a fresh client
/// is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_never_reading_is_cut_off_memory_bounded() {
    const MAX_QUEUE: u64 = 256 * 1024;
    const PER_TICK: usize = 500;
    // Far past the 2 s over the limit (plus the 2 s herald keeps reading
    // after its close) that the cut-off takes: ~1.5M pings.
    const FLOOD_FOR: Duration = Duration::from_secs(30);
    let h = start_dev(&["--max-queue-bytes", &MAX_QUEUE.to_string()]).await;
    let api = Api::new(&h);
    let base = baseline(&h).await;
    let watch = RssWatch::start(h.pid(), SAMPLE_EVERY);

    let t = full(&h, "pinger");
    // Never reads, not even the welcome.
    let mut raw = RawWs::connect(h.port, &format!("/ws?token={t}"), None, None).await;
    let batch = encode_raw_frame(0x89, true, &[b'p'; 125]).repeat(PER_TICK);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let write_error = loop {
        assert!(
            started.elapsed() < FLOOD_FOR,
            "the ping flood was not cut off after {sent} pings in {:?} (VmRSS peak so far {})",
            started.elapsed(),
            mib(watch.peak())
        );
        tick.tick().await;
        match raw.try_write_raw(&batch, STEP).await {
            Ok(()) => sent += PER_TICK as u64,
            Err(e) => break e,
        }
    };
    let took = started.elapsed();
    assert_ne!(
        write_error.kind(),
        std::io::ErrorKind::TimedOut,
        "herald neither read the flood nor closed the connection: {write_error}"
    );
    let (peak, samples) = watch.stop().await;
    // What the client finds when it finally reads.
    let (close, frames, how) = raw.drain_to_end(STEP).await;
    println!(
        "MEASURED: ping flood (never reading): {sent} pings of 125 bytes written in {took:?} \
         before the connection failed ({write_error}); then read: close {close:?}, \
         {} data frames, stream end: {how}",
        frames.len()
    );
    if let Some(code) = close {
        assert_eq!(code, Some(4029), "close code of the flooding client");
    }
    for d in disconnect_codes(&frames) {
        assert_eq!(d, 4029, "disconnect frame of the flooding client");
    }
    assert_eq!(
        disconnects(&api, &["4029"]).await,
        1,
        "herald_disconnects_total{{code=\"4029\"}} after the flood"
    );
    check_memory(
        "ping flood (never reading)",
        base,
        peak,
        samples,
        base + MAX_QUEUE + SLACK,
        "baseline + 1 x max_queue_bytes (256 KiB) + 64 MiB slack",
    );
    assert_serves(&h, "after the ping flood").await;
}

/// What a [`spawn_pinger`] client saw: pings written, how long it lasted,
/// the write error that ended it (`None`: it was never cut off), and what it
/// read afterwards (close code, data frames, how the stream ended).
type PingerEnd = (
    u64,
    Duration,
    Option<std::io::Error>,
    (Option<Option<u16>>, Vec<Value>, String),
);

/// A client that writes a WebSocket ping every 50 ms (20 a second, under
/// the default frame bucket of 50) and reads nothing, until a write fails
/// or 90 s pass; then it reads what is left.
fn spawn_pinger(mut raw: RawWs) -> tokio::task::JoinHandle<PingerEnd> {
    tokio::spawn(async move {
        let ping = encode_raw_frame(0x89, true, b"still here");
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut pings = 0u64;
        let error = loop {
            // Bounded: the drop is expected within seconds.
            if started.elapsed() > Duration::from_secs(90) {
                break None;
            }
            tick.tick().await;
            match raw.try_write_raw(&ping, Duration::from_secs(5)).await {
                Ok(()) => pings += 1,
                Err(e) => break Some(e),
            }
        };
        let end = raw.drain_to_end(Duration::from_secs(5)).await;
        (pings, started.elapsed(), error, end)
    })
}

/// Item 1 (b), a client that sends WebSocket pings under the limit (20 a
/// second; the frame bucket allows 50) but never reads, on a 4 KiB receive
/// window, subscribed to a channel the app floods with ~16 KiB messages
/// (`POST /v1/publish`): herald drops it (close 4008 when its queue passes
/// `--max-queue-bytes 262144`, or 4408 when its socket has taken nothing
/// for `--heartbeat-timeout 3`; the socket itself is dropped after a 2 s
/// grace, so its pings start failing), it leaves presence, herald's memory
/// stays within baseline + one `max_queue_bytes` + [`SLACK`], and a fresh
/// client is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_non_reader_fed_big_publishes_is_dropped_memory_bounded() {
    const CH: &str = "firehose";
    const MAX_QUEUE: u64 = 256 * 1024;
    let h = start_dev(&[
        "--max-queue-bytes",
        &MAX_QUEUE.to_string(),
        "--heartbeat-interval",
        "1",
        "--heartbeat-timeout",
        "3",
    ])
    .await;
    let api = Api::new(&h);
    let base = baseline(&h).await;
    let watch = RssWatch::start(h.pid(), SAMPLE_EVERY);

    let t = TokenBuilder::new("stuck")
        .channels(&[CH])
        .sign(&h.jwt_secret);
    // The welcome is the only thing it ever reads.
    let (raw, w) = raw_welcomed(&h, &t, Some(4096)).await;
    let conn = w["conn"].as_str().expect("welcome.conn").to_string();
    let pinger = spawn_pinger(raw);

    eventually(STEP, "the stuck client shows in presence", || {
        let (api, conn) = (api.clone(), conn.clone());
        async move { api.present_conns(CH).await.contains(&conn) }
    })
    .await;
    let pad = "y".repeat(16_000);
    let started = Instant::now();
    let mut published = 0u64;
    while !pinger.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stuck client was still connected after {published} messages of 16 KB"
        );
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let (api, data) = (api.clone(), json!({ "pad": pad }));
                tokio::spawn(async move { api.publish(CH, data).await })
            })
            .collect();
        for b in batch {
            b.await.unwrap();
        }
        published += 4;
    }
    let (pings, alive, error, (close, frames, how)) = pinger.await.unwrap();
    let error = error.unwrap_or_else(|| {
        panic!("the stuck client's pings still went through after {alive:?} ({published} messages published)")
    });
    assert_ne!(
        error.kind(),
        std::io::ErrorKind::TimedOut,
        "herald stopped reading the stuck client without closing it: {error}"
    );
    let (peak, samples) = watch.stop().await;
    println!(
        "MEASURED: non-reading pinger: dropped after {alive:?}, {pings} pings sent, \
         {published} messages of 16 KB published; then read: close {close:?}, {} data frames \
         ({}), stream end: {how}",
        frames.len(),
        frames
            .iter()
            .filter(|f| message_seq(f, CH).is_some())
            .count()
    );
    if let Some(code) = close {
        assert!(
            matches!(code, Some(4008 | 4408)),
            "close code of the stuck client: {code:?}"
        );
    }
    for d in disconnect_codes(&frames) {
        assert!(
            d == 4008 || d == 4408,
            "disconnect frame of the stuck client: {d}"
        );
    }
    let by_code = [
        ("4008", disconnects(&api, &["4008"]).await),
        ("4408", disconnects(&api, &["4408"]).await),
    ];
    println!("MEASURED: non-reading pinger: herald_disconnects_total by code: {by_code:?}");
    assert_eq!(
        by_code[0].1 + by_code[1].1,
        1,
        "herald_disconnects_total for 4008 and 4408 after dropping the stuck client"
    );
    eventually(STEP, "the stuck client left presence", || {
        let (api, conn) = (api.clone(), conn.clone());
        async move { !api.present_conns(CH).await.contains(&conn) }
    })
    .await;
    check_memory(
        "non-reading pinger fed 16 KB publishes",
        base,
        peak,
        samples,
        base + MAX_QUEUE + SLACK,
        "baseline + 1 x max_queue_bytes (256 KiB) + 64 MiB slack",
    );
    assert_serves(&h, "after the stuck client").await;
}

/// Item 1 (c), writes stalled while the client keeps talking: the same
/// pinging non-reader (4 KiB receive window), but with a queue bound
/// (`--max-queue-bytes 67108864`) far above the 400 messages of ~16 KiB
/// (6.4 MB) the app publishes to its channel, so the queue never overflows:
/// its socket takes nothing for `--heartbeat-timeout 3` and herald closes it
/// with 4408 although it keeps sending pings (counted as 4408, not 4008),
/// then drops the socket after its grace, so the pings start failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_non_reader_with_stalled_writes_closed_4408() {
    const CH: &str = "stalled";
    const MESSAGES: usize = 400;
    let h = start_dev(&[
        "--max-queue-bytes",
        "67108864",
        "--heartbeat-interval",
        "1",
        "--heartbeat-timeout",
        "3",
    ])
    .await;
    let api = Api::new(&h);
    let t = TokenBuilder::new("stalled")
        .channels(&[CH])
        .sign(&h.jwt_secret);
    let (raw, _) = raw_welcomed(&h, &t, Some(4096)).await;
    let pinger = spawn_pinger(raw);
    let pad = "y".repeat(16_000);
    for _ in 0..MESSAGES / 4 {
        if pinger.is_finished() {
            break;
        }
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let (api, data) = (api.clone(), json!({ "pad": pad }));
                tokio::spawn(async move { api.publish(CH, data).await })
            })
            .collect();
        for b in batch {
            b.await.unwrap();
        }
    }
    let (pings, alive, error, (close, frames, how)) =
        tokio::time::timeout(Duration::from_secs(120), pinger)
            .await
            .expect("the pinger ends by itself")
            .unwrap();
    println!(
        "MEASURED: stalled writes: pinging non-reader dropped after {alive:?} ({pings} pings \
         sent); then read: close {close:?}, {} data frames, stream end: {how}",
        frames.len()
    );
    let error = error
        .unwrap_or_else(|| panic!("the stalled client's pings still went through after {alive:?}"));
    assert_ne!(
        error.kind(),
        std::io::ErrorKind::TimedOut,
        "herald stopped reading the stalled client without closing it: {error}"
    );
    if let Some(code) = close {
        assert_eq!(code, Some(4408), "close code of the stalled client");
    }
    assert_eq!(
        (
            disconnects(&api, &["4408"]).await,
            disconnects(&api, &["4008"]).await
        ),
        (1, 0),
        "herald_disconnects_total (4408, 4008) after the stall"
    );
    assert_serves(&h, "after the stalled client").await;
}

// ---------------------------------------------------------------------------
// 2. Fragment flood
// ---------------------------------------------------------------------------

/// Item 2, fragment flood under a large message limit (`--max-frame-bytes
/// 8388608`): a text message opened with `{` and continued by one-byte,
/// non-final continuation frames, without end. Reassembly would take 8M
/// fragments to reach the limit; the frame bucket (defaults 50/s, burst 100)
/// ends it first: `disconnect` 4029, then close 4029. Memory stays within
/// baseline + one `max_frame_bytes` + [`SLACK`]; a fresh client is served
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_flood_closed_4029_memory_bounded() {
    const MAX_FRAME: u64 = 8 * 1024 * 1024;
    const BATCH: usize = 10_000;
    // Half the fragments the message limit needs: only the frame bucket can
    // end this flood.
    const MAX_FRAGMENTS: u64 = 4_000_000;
    let h = start_dev(&["--max-frame-bytes", &MAX_FRAME.to_string()]).await;
    let base = baseline(&h).await;
    let watch = RssWatch::start(h.pid(), SAMPLE_EVERY);

    let t = full(&h, "fragmenter");
    let (mut raw, _) = raw_welcomed(&h, &t, None).await;
    raw.write_raw(&encode_raw_frame(0x01, true, b"{")).await;
    let batch = encode_raw_frame(0x00, true, b" ").repeat(BATCH);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut frames = Vec::new();
    let mut ended = None;
    let close = loop {
        assert!(
            sent < MAX_FRAGMENTS,
            "the fragment flood was not cut off after {sent} fragments in {:?}",
            started.elapsed()
        );
        if let Err(e) = raw.try_write_raw(&batch, STEP).await {
            assert_ne!(
                e.kind(),
                std::io::ErrorKind::TimedOut,
                "herald neither read the fragments nor closed the connection: {e}"
            );
            // Closed: whatever it said before is in our receive buffer.
            let (close, more, how) = raw.drain_to_end(STEP).await;
            frames.extend(more);
            ended = Some(format!("write failed ({e}); read: {how}"));
            break close.flatten();
        }
        sent += BATCH as u64;
        if let Some(code) = poll_frames(&mut raw, &mut frames, &mut ended).await {
            break code;
        }
    };
    let took = started.elapsed();
    let (peak, samples) = watch.stop().await;
    println!(
        "MEASURED: fragment flood: {sent} one-byte continuation frames in {took:?}, \
         then close {close:?} (stream: {ended:?})"
    );
    assert_eq!(
        close,
        Some(4029),
        "close code after {sent} fragments (None: no close frame; stream: {ended:?}); frames: {frames:?}"
    );
    assert_eq!(
        disconnect_codes(&frames),
        vec![json!(4029)],
        "one disconnect 4029 before the close; frames: {frames:?}"
    );
    check_memory(
        "fragment flood",
        base,
        peak,
        samples,
        base + MAX_FRAME + SLACK,
        "baseline + 1 x max_frame_bytes (8 MiB) + 64 MiB slack",
    );
    assert_serves(&h, "after the fragment flood").await;
}

/// Item 2, fragments adding up past `max_frame_bytes` (default 64 KiB):
/// 66 fragments of 1000 bytes (fewer than the frame bucket's burst) close
/// with 1009; one-byte fragments under `--max-frame-bytes 4096` are closed
/// with 1009 (limit reached) or 4029 (frame bucket), whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_past_max_frame_bytes_close_1009() {
    let (h, small) = tokio::join!(start_dev(&[]), start_dev(&["--max-frame-bytes", "4096"]));

    let t = full(&h, "fragmenter");
    let (mut raw, _) = raw_welcomed(&h, &t, None).await;
    let mut bytes = encode_raw_frame(0x01, true, &[b' '; 1000]);
    for _ in 1..66 {
        bytes.extend(encode_raw_frame(0x00, true, &[b' '; 1000]));
    }
    // The server may close before taking the last fragments.
    let _ = raw.try_write_raw(&bytes, STEP).await;
    match raw.try_read_until_close(STEP).await {
        Ok((_, code)) => assert_eq!(code, Some(1009), "66 x 1000 bytes over a 65536 limit"),
        Err(e) => panic!("66 x 1000-byte fragments: {e}"),
    }
    assert_serves(&h, "after 66 KB of fragments").await;

    let t = full(&small, "fragmenter");
    let (mut raw, _) = raw_welcomed(&small, &t, None).await;
    let mut bytes = encode_raw_frame(0x01, true, b"{");
    bytes.extend(encode_raw_frame(0x00, true, b" ").repeat(5000));
    let _ = raw.try_write_raw(&bytes, STEP).await;
    match raw.try_read_until_close(STEP).await {
        Ok((frames, code)) => assert!(
            matches!(code, Some(1009 | 4029)),
            "5001 one-byte fragments over a 4096 limit: close {code:?}, frames {frames:?}"
        ),
        Err(e) => panic!("5001 one-byte fragments: {e}"),
    }
    assert_serves(&small, "after one-byte fragments").await;
}

// ---------------------------------------------------------------------------
// 3. Slowloris handshakes
// ---------------------------------------------------------------------------

/// An upgrade request trickled one byte every 100 ms whose last header line
/// never ends; or (`trickle` false) a connection that sends nothing. Waits
/// until the server closes the connection; the time that took, or what went
/// wrong within `deadline`.
async fn hang_handshake(
    mut stream: TcpStream,
    port: u16,
    trickle: bool,
    deadline: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nX-Slow: "
    )
    .into_bytes();
    // Longer than the deadline allows to send: never finished.
    request.resize(request.len() + 1000, b'a');
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 1024];
    let mut answered = Vec::new();
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!(
                "still open after {deadline:?} ({next} bytes sent; answer so far {:?})",
                String::from_utf8_lossy(&answered)
            ));
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(started.elapsed()),
                // E.g. a 408 answer; the close follows.
                Ok(n) => answered.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick(), if trickle && next < request.len() => {
                if stream.write_all(&request[next..next + 1]).await.is_err() {
                    return Ok(started.elapsed());
                }
                next += 1;
            }
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// Item 3, slowloris: 100 upgrade requests trickled one byte at a time and
/// never finished plus 100 connections that send nothing, all at once,
/// against `--handshake-timeout 1`: every one is closed by the server
/// within 15 s, and an ordinary client is served while they hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshakes_are_closed_node_keeps_serving() {
    const EACH: usize = 100;
    let h = start_dev(&["--handshake-timeout", "1"]).await;
    let mut streams = Vec::with_capacity(2 * EACH);
    for _ in 0..2 * EACH {
        let s = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", h.port)))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        streams.push(s);
    }
    let port = h.port;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let trickle = i % 2 == 0;
            tokio::spawn(async move {
                (
                    trickle,
                    hang_handshake(s, port, trickle, Duration::from_secs(15)).await,
                )
            })
        })
        .collect();
    // While they hang.
    assert_serves(&h, "during the slowloris").await;

    let mut failures = Vec::new();
    let (mut slowest, mut fastest) = (Duration::ZERO, Duration::MAX);
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(took)) => {
                slowest = slowest.max(took);
                fastest = fastest.min(took);
            }
            (trickle, Err(e)) => failures.push(format!(
                "{}: {e}",
                if trickle { "trickling" } else { "silent" }
            )),
        }
    }
    println!(
        "MEASURED: slowloris: {} half-open handshakes (handshake_timeout 1 s) closed by the \
         server after {fastest:?} to {slowest:?}",
        2 * EACH - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} hanging handshakes not closed:\n{}",
        failures.len(),
        2 * EACH,
        failures.join("\n")
    );
    assert_serves(&h, "after the slowloris").await;
}

/// Item 3, the knob's other spellings: `HERALD_GATEWAY__HANDSHAKE_TIMEOUT=1`
/// and `[gateway] handshake_timeout = 1`, like `--handshake-timeout 1`,
/// close a silent and a trickling handshake within 6 s (well under the 10 s
/// default, so a knob that was not applied fails here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_from_flag_env_and_file() {
    let (flag, env, file) = tokio::join!(
        start_dev(&["--handshake-timeout", "1"]),
        HeraldProcess::start(HeraldOptions {
            env: vec![("HERALD_GATEWAY__HANDSHAKE_TIMEOUT".into(), "1".into())],
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            config_toml: Some("[gateway]\nhandshake_timeout = 1\n".into()),
            ..Default::default()
        }),
    );
    for (what, h) in [("flag", &flag), ("env", &env), ("file", &file)] {
        for trickle in [false, true] {
            let s = TcpStream::connect(("127.0.0.1", h.port))
                .await
                .expect("TCP connect");
            let r = hang_handshake(s, h.port, trickle, Duration::from_secs(6)).await;
            let took = r.unwrap_or_else(|e| {
                panic!("handshake_timeout 1 from the {what}, trickle {trickle}: {e}")
            });
            println!(
                "MEASURED: handshake_timeout 1 s ({what}, trickle {trickle}): closed after {took:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Half-finished frame, then silence
// ---------------------------------------------------------------------------

/// Item 4: a frame header announcing 1000 bytes, 10 of them, then nothing
/// (not even pongs), under `--heartbeat-interval 1 --heartbeat-timeout 2`:
/// the server closes with 4408, no sooner than the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_frame_then_silence_closes_4408() {
    let h = start_dev(&["--heartbeat-interval", "1", "--heartbeat-timeout", "2"]).await;
    let t = full(&h, "halfway");
    let started = Instant::now();
    let (mut raw, _) = raw_welcomed(&h, &t, None).await;
    let frame = encode_raw_frame(0x81, true, &[b' '; 1000]);
    // Header (4 bytes: 126 form) + mask (4) + the first 10 payload bytes.
    raw.write_raw(&frame[..4 + 4 + 10]).await;
    let (frames, code) = raw.read_until_close(Duration::from_secs(15)).await;
    let took = started.elapsed();
    println!(
        "MEASURED: half frame then silence: closed {code:?} after {took:?} (heartbeat_timeout 2 s)"
    );
    assert_eq!(code, Some(4408), "frames before: {frames:?}");
    assert!(
        took >= Duration::from_secs(2),
        "closed after {took:?}, before the 2 s heartbeat timeout"
    );
    assert_serves(&h, "after the half frame").await;
}

// ---------------------------------------------------------------------------
// 5. Subscribe/unsubscribe flood
// ---------------------------------------------------------------------------

/// What a paced request flood on one raw connection saw.
#[derive(Debug, Default)]
struct Flood {
    /// Requests written.
    sent: u64,
    /// Replies per request id (index = id).
    replies: Vec<u32>,
    /// Replies with a `result`.
    ok: u64,
    /// Error replies by code.
    errors: std::collections::BTreeMap<String, u64>,
    /// Other frames (not replies).
    others: Vec<Value>,
    /// Close code, if the server closed.
    close: Option<Option<u16>>,
    /// How the stream ended, if it did.
    ended: Option<String>,
    /// From the first request to the last reply or the close.
    took: Duration,
    /// From the first `rate_limited` reply to the close.
    refused_for: Option<Duration>,
}

/// Request `i` (from 0) of the subscribe/unsubscribe flood: 500 subscribes
/// to `chat_0..chat_499`, then 500 unsubscribes of them, and so on.
fn sub_unsub(i: u64) -> (Value, &'static str) {
    let ch = format!("chat_{}", i % 500);
    let op = if (i / 500).is_multiple_of(2) {
        "subscribe"
    } else {
        "unsubscribe"
    };
    (json!({"op": op, "id": i + 1, "channel": ch}), op)
}

/// Sends `total` requests (ids 1..=total) at `per_tick` every 10 ms on `raw`,
/// reading replies meanwhile, until every request is answered, the server
/// closes, or `deadline` passes.
async fn flood_requests(raw: &mut RawWs, total: u64, per_tick: u64, deadline: Duration) -> Flood {
    let mut f = Flood {
        replies: vec![0; usize::try_from(total).expect("a request count fits usize") + 1],
        ..Flood::default()
    };
    let started = Instant::now();
    let mut first_refusal: Option<Instant> = None;
    let mut answered = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while answered < total && f.close.is_none() && f.ended.is_none() {
        let left = deadline.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "flood: {answered} of {total} requests answered ({} sent) within {deadline:?}",
            f.sent
        );
        tokio::select! {
            _ = tick.tick(), if f.sent < total => {
                let n = per_tick.min(total - f.sent);
                let mut bytes = Vec::new();
                for i in f.sent..f.sent + n {
                    let (req, _) = sub_unsub(i);
                    bytes.extend(encode_raw_frame(0x81, true, req.to_string().as_bytes()));
                }
                if let Err(e) = raw.try_write_raw(&bytes, STEP).await {
                    // Closed: the close frame, if any, is read next.
                    f.ended.get_or_insert(format!("write failed: {e}"));
                    let (close, frames, how) = raw.drain_to_end(STEP).await;
                    f.close = close;
                    f.others.extend(frames);
                    f.ended = Some(format!("write failed ({e}); read: {how}"));
                    break;
                }
                f.sent += n;
            }
            r = raw.read_frame(left) => match r {
                Ok(Some(fr)) if fr.opcode == 8 => f.close = Some(fr.close_code()),
                Ok(Some(fr)) => {
                    let Some(v) = fr.json() else {
                        continue;
                    };
                    if v["type"] != "reply" {
                        f.others.push(v);
                        continue;
                    }
                    let id = v["id"].as_u64().unwrap_or_else(|| panic!("reply without an id: {v}"));
                    let slot = f
                        .replies
                        .get_mut(usize::try_from(id).unwrap_or(usize::MAX))
                        .unwrap_or_else(|| panic!("reply to an id never sent: {v}"));
                    *slot += 1;
                    answered += 1;
                    if v.get("result").is_some() {
                        f.ok += 1;
                        let (req, op) = sub_unsub(id - 1);
                        if op == "subscribe" {
                            assert_eq!(v["result"]["channel"], req["channel"], "{v}");
                        } else {
                            assert_eq!(v["result"], json!({}), "{v}");
                        }
                    } else {
                        let code = error_code(&v);
                        if code == "rate_limited" {
                            first_refusal.get_or_insert_with(Instant::now);
                        }
                        *f.errors.entry(code).or_default() += 1;
                    }
                }
                Ok(None) => f.ended = Some("EOF".into()),
                Err(RawReadError::Timeout(_)) => {}
                Err(e) => f.ended = Some(e.to_string()),
            },
        }
    }
    f.took = started.elapsed();
    f.refused_for = first_refusal.map(|t| t.elapsed());
    f
}

/// Item 5: 30 000 requests alternating blocks of 500 subscribes and 500
/// unsubscribes (`chat_<i % 500>`), pipelined at ~10 000 a second on one
/// connection under `--rate-per-second 20000 --rate-burst 20000`: every
/// request is answered exactly once and successfully, nothing closes the
/// connection; the `herald_subscriptions` and `herald_channels` gauges
/// return to 0 (the connection ends holding nothing), and memory stays
/// within baseline + one `max_queue_bytes` (1 MiB default) + [`SLACK`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_flood_answered_gauges_return_to_zero() {
    const TOTAL: u64 = 30_000;
    const MAX_QUEUE: u64 = 1024 * 1024;
    let h = start_dev(&["--rate-per-second", "20000", "--rate-burst", "20000"]).await;
    let api = Api::new(&h);
    let base = baseline(&h).await;
    let watch = RssWatch::start(h.pid(), SAMPLE_EVERY);

    let t = TokenBuilder::new("churner")
        .allow("subscribe", &["chat_*"])
        .sign(&h.jwt_secret);
    let (mut raw, _) = raw_welcomed(&h, &t, None).await;
    let f = flood_requests(&mut raw, TOTAL, 100, Duration::from_secs(180)).await;
    let (peak, samples) = watch.stop().await;
    println!(
        "MEASURED: subscribe/unsubscribe flood: {} requests sent at ~10000/s, {} answered in {:?} \
         ({:.0} answers/s)",
        f.sent,
        f.replies.iter().map(|&n| u64::from(n)).sum::<u64>(),
        f.took,
        // Display only.
        f.ok as f64 / f.took.as_secs_f64()
    );
    assert_eq!(f.close, None, "the connection was closed: {f:?}");
    assert_eq!(f.ended, None, "the connection ended: {:?}", f.ended);
    let wrong: Vec<_> = f
        .replies
        .iter()
        .enumerate()
        .skip(1)
        .filter(|&(_, &n)| n != 1)
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "(id, replies) not answered exactly once: {wrong:?}"
    );
    assert!(f.errors.is_empty(), "error replies: {:?}", f.errors);
    assert_eq!(f.ok, TOTAL);
    assert!(
        f.others.is_empty(),
        "unexpected frames: {:?}",
        &f.others[..f.others.len().min(5)]
    );

    for gauge in ["herald_subscriptions", "herald_channels"] {
        eventually(STEP, &format!("{gauge} returns to 0"), || {
            let api = api.clone();
            async move { metric_sum(&api.admin_text("/metrics").await.1, gauge) == Some(0.0) }
        })
        .await;
    }
    check_memory(
        "subscribe/unsubscribe flood",
        base,
        peak,
        samples,
        base + MAX_QUEUE + SLACK,
        "baseline + 1 x max_queue_bytes (1 MiB) + 64 MiB slack",
    );
    // The connection itself is still served.
    let ping = json!({"op": "ping", "id": TOTAL + 1}).to_string();
    raw.write_frame(true, 1, ping.as_bytes()).await;
    let pong = raw.read_frame(STEP).await.unwrap().and_then(|f| f.json());
    assert_eq!(pong, Some(json!({"type": "pong", "id": TOTAL + 1})));
    assert_serves(&h, "after the subscribe flood").await;
}

/// Item 5, the same flood under the default limits (50 a second, burst
/// 100): the burst is served, then requests get `rate_limited` replies, and
/// after 2 s over the limit the connection gets `disconnect` 4029 and close
/// 4029; nothing is answered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_flood_at_default_limits_rate_limited_then_4029() {
    const TOTAL: u64 = 100_000;
    let h = start_dev(&[]).await;
    let t = TokenBuilder::new("churner")
        .allow("subscribe", &["chat_*"])
        .sign(&h.jwt_secret);
    let (mut raw, _) = raw_welcomed(&h, &t, None).await;
    let f = flood_requests(&mut raw, TOTAL, 100, Duration::from_secs(60)).await;
    println!(
        "MEASURED: subscribe flood at default limits: {} sent, {} served, {:?} refused, \
         close {:?} after {:?} ({:?} after the first refusal)",
        f.sent, f.ok, f.errors, f.close, f.took, f.refused_for
    );
    assert_eq!(f.close, Some(Some(4029)), "close; stream end {:?}", f.ended);
    assert_eq!(
        disconnect_codes(&f.others),
        vec![json!(4029)],
        "one disconnect 4029 before the close: {:?}",
        f.others
    );
    let twice: Vec<_> = f
        .replies
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 1)
        .take(10)
        .collect();
    assert!(
        twice.is_empty(),
        "(id, replies) answered more than once: {twice:?}"
    );
    assert!(f.ok >= 100, "the burst of 100 was not served: {} ok", f.ok);
    // The bucket refills at 50 a second (rounded up to whole seconds).
    let refill = 50 * (f.took.as_secs() + 1);
    assert!(
        f.ok <= 100 + refill,
        "{} requests served in {:?} at 50/s with a burst of 100",
        f.ok,
        f.took
    );
    // A refused subscribe makes the later unsubscribe of its channel a
    // `not_subscribed`; nothing else is expected.
    assert!(
        f.errors.get("rate_limited").is_some_and(|&n| n > 0),
        "no rate_limited reply: {:?}",
        f.errors
    );
    assert!(
        f.errors
            .keys()
            .all(|k| k == "rate_limited" || k == "not_subscribed"),
        "errors: {:?}",
        f.errors
    );
    let refused_for = f.refused_for.expect("refusals before 4029");
    assert!(
        refused_for >= Duration::from_millis(1500),
        "closed {refused_for:?} after the first refusal; 2 s over the limit expected"
    );
    assert_serves(&h, "after the rate-limited flood").await;
}

// ---------------------------------------------------------------------------
// 6. recover= and oversized request heads
// ---------------------------------------------------------------------------

/// `recover=` naming `n` channels `c0..` at seq 1.
fn recover_of(n: usize) -> String {
    let v: Vec<String> = (0..n).map(|i| format!("c{i}:1")).collect();
    percent_encode(&v.join(","))
}

/// Item 6: a `recover=` naming more than 1000 channels is refused with
/// HTTP 400 before the upgrade, the body saying so; exactly 1000 upgrade;
/// malformed ones get 400; a request line or header far beyond the
/// server's header size limit (1 MiB) gets a 4xx or a closed connection,
/// never a crash: the node serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_recover_and_huge_heads_refused() {
    let h = start_dev(&[]).await;
    let t = full(&h, "recoverer");

    let q = format!("/ws?token={t}&recover={}", recover_of(1001));
    match RawWs::connect_with(h.port, &q, &[]).await {
        Ok(_) => panic!("recover= with 1001 channels was upgraded"),
        Err(a) => {
            assert_eq!(
                a.status,
                400,
                "1001 recover entries: {}{}",
                a.head,
                a.text()
            );
            assert!(
                a.text()
                    .contains("recover parameter names more than 1000 channels"),
                "body of the 400: {:?}",
                a.text()
            );
        }
    }
    let q = format!("/ws?token={t}&recover={}", recover_of(1000));
    let mut raw = RawWs::connect_with(h.port, &q, &[])
        .await
        .unwrap_or_else(|a| panic!("1000 recover entries refused: {}{}", a.head, a.text()));
    let w = raw.read_frame(STEP).await.unwrap().and_then(|f| f.json());
    assert_eq!(w.map(|w| w["type"].clone()), Some(json!("welcome")));

    for bad in [
        "chat_1",
        "chat_1:x",
        "bad channel:1",
        "chat_1:-1",
        ":5",
        "chat_1:1:2:x",
    ] {
        let q = format!("/ws?token={t}&recover={}", percent_encode(bad));
        match RawWs::connect_with(h.port, &q, &[]).await {
            Ok(_) => panic!("malformed recover={bad:?} was upgraded"),
            Err(a) => assert_eq!(a.status, 400, "recover={bad:?}: {}{}", a.head, a.text()),
        }
    }

    let huge = "a".repeat(1 << 20);
    let cases = [
        (
            "1 MiB query",
            upgrade_request(h.port, &format!("/ws?token={t}&pad={huge}"), &[]),
        ),
        (
            "1 MiB header",
            upgrade_request(h.port, &format!("/ws?token={t}"), &[("X-Pad", &huge)]),
        ),
    ];
    for (what, req) in cases {
        match raw_http(h.port, req.as_bytes(), Duration::from_secs(15)).await {
            Ok(a) => {
                println!("MEASURED: {what}: HTTP {}", a.status);
                assert!(
                    (400..500).contains(&a.status),
                    "{what}: answered {} (a 4xx or a closed connection expected)",
                    a.head
                );
            }
            Err(RawHttpEnd::Closed(how)) => println!("MEASURED: {what}: connection closed ({how})"),
            Err(RawHttpEnd::TimedOut(d)) => {
                panic!("{what}: neither answered nor closed within {d:?}")
            }
        }
        assert_serves(&h, &format!("after a {what}")).await;
    }
}

// ---------------------------------------------------------------------------
// 7. Cross-site Origin
// ---------------------------------------------------------------------------

/// Upgrades with `headers`; the status (101, or the refusal's), reading the
/// welcome after a 101.
async fn upgrade_status(h: &HeraldProcess, headers: &[(&str, &str)]) -> u16 {
    let t = full(h, "browser");
    match RawWs::connect_with(h.port, &format!("/ws?token={t}"), headers).await {
        Ok(mut raw) => {
            let w = raw
                .read_frame(STEP)
                .await
                .unwrap_or_else(|e| panic!("{headers:?}: no welcome: {e}"))
                .and_then(|f| f.json());
            assert_eq!(
                w.as_ref().map(|w| w["type"].clone()),
                Some(json!("welcome")),
                "{headers:?}: first frame {w:?}"
            );
            101
        }
        Err(a) => a.status,
    }
}

/// Item 7: with `--allowed-origins https://a.example,https://b.example`, an
/// upgrade from `https://evil.example` (or a look-alike: other scheme,
/// port, suffix, `null`) is refused with HTTP 403 before the upgrade; the
/// listed origins upgrade, compared case-insensitively; a request without
/// `Origin` (not a browser) upgrades. Without the knob any origin upgrades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_refuse_cross_site_upgrades() {
    let (strict, open) = tokio::join!(
        start_dev(&["--allowed-origins", "https://a.example,https://b.example"]),
        start_dev(&[]),
    );
    let cases: &[(Option<&str>, u16)] = &[
        (Some("https://evil.example"), 403),
        (Some("https://a.example.evil.example"), 403),
        (Some("http://a.example"), 403),
        (Some("https://a.example:8443"), 403),
        (Some("null"), 403),
        (Some("https://a.example"), 101),
        (Some("https://b.example"), 101),
        (Some("HTTPS://A.Example"), 101),
        (None, 101),
    ];
    let mut failures = Vec::new();
    for (origin, want) in cases {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("Origin", *o)).collect();
        let got = upgrade_status(&strict, &headers).await;
        if got != *want {
            failures.push(format!("Origin {origin:?}: {got}, expected {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "with allowed_origins:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        upgrade_status(&open, &[("Origin", "https://evil.example")]).await,
        101,
        "without allowed_origins any origin upgrades"
    );
}

/// Item 7, the knob's other spellings: `HERALD_GATEWAY__ALLOWED_ORIGINS`
/// (comma-separated) and `[gateway] allowed_origins` (a list) refuse a
/// foreign origin with 403 and let a listed one upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_from_env_and_file() {
    let (env, file) = tokio::join!(
        HeraldProcess::start(HeraldOptions {
            env: vec![(
                "HERALD_GATEWAY__ALLOWED_ORIGINS".into(),
                "https://a.example,https://b.example".into()
            )],
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            config_toml: Some(
                "[gateway]\nallowed_origins = [\"https://a.example\", \"https://b.example\"]\n"
                    .into()
            ),
            ..Default::default()
        }),
    );
    for (what, h) in [("env", &env), ("file", &file)] {
        for (origin, want) in [
            ("https://evil.example", 403),
            ("https://a.example", 101),
            ("https://b.example", 101),
        ] {
            assert_eq!(
                upgrade_status(h, &[("Origin", origin)]).await,
                want,
                "allowed_origins from the {what}, Origin {origin}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 8. Close frames (RFC 6455 sections 5.5.1, 7.4)
// ---------------------------------------------------------------------------

/// Item 8: the server's answer to a client close frame. A 1-byte payload,
/// or a code RFC 6455 section 7.4 does not allow on the wire (0, 999, 1004,
/// 1005, 1006, 1015, 1016, 2999, 5000, 65535): close 1002. A valid code
/// with a reason that is not UTF-8: 1007. A valid code (1000, 1001, 1003,
/// 1007, 1011, 1012, 1014, 3000, 4000, 4999): echoed. An empty close: 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_frames_validated_and_echoed() {
    let h = start_dev(&[]).await;
    let t = full(&h, "closer");
    let with_reason = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    };
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        ("1-byte payload".into(), vec![0x03], 1002),
        ("empty close".into(), Vec::new(), 1000),
        (
            "1000 with a reason that is not UTF-8".into(),
            with_reason(1000, &[b'b', 0xFF, 0xFE]),
            1007,
        ),
    ];
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push((format!("code {code}"), with_reason(code, b"bye"), 1002));
    }
    for code in [
        1000u16, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4000, 4999,
    ] {
        cases.push((
            format!("code {code}"),
            with_reason(code, "bye é".as_bytes()),
            code,
        ));
    }
    let mut failures = Vec::new();
    for (what, payload, want) in &cases {
        let (mut raw, _) = raw_welcomed(&h, &t, None).await;
        raw.write_frame(true, 8, payload).await;
        match raw.try_read_until_close(STEP).await {
            Ok((_, Some(code))) if code == *want => {}
            Ok((frames, code)) => {
                failures.push(format!(
                    "{what}: close {code:?}, expected {want}; frames {frames:?}"
                ));
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} close frames answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_serves(&h, "after the close frames").await;
}

// ---------------------------------------------------------------------------
// 9. Non-minimal payload lengths (RFC 6455 section 5.2)
// ---------------------------------------------------------------------------

/// A masked frame header with the payload length written in `form` (7, 16
/// or 64 bits) whatever its value, the mask, then `payload`.
fn frame_with_length_form(first: u8, form: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![first];
    match form {
        7 => out.push(0x80 | u8::try_from(len).expect("7-bit length")),
        16 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&u16::try_from(len).expect("16-bit length").to_be_bytes());
        }
        64 => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        _ => panic!("length form {form}"),
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A `ping` request of exactly `len` bytes (JSON padded with spaces).
fn ping_of_len(id: u64, len: usize) -> Vec<u8> {
    let mut p = json!({"op": "ping", "id": id}).to_string().into_bytes();
    assert!(p.len() <= len);
    p.resize(len, b' ');
    p
}

/// Item 9: a frame whose length uses the 16-bit form for fewer than 126
/// bytes, or the 64-bit form for at most 65535, closes with 4000 (protocol
/// violation). The minimal forms at the edges (126 bytes in 16 bits, 65536
/// in 64 bits, under `--max-frame-bytes 131072`) are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_minimal_payload_lengths_close_4000() {
    let h = start_dev(&["--max-frame-bytes", "131072"]).await;
    let t = full(&h, "framer");
    let small = ping_of_len(1, 40);
    // The server can tell from the header alone: send the header, the mask
    // and a few payload bytes (at most the frame's length).
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "text, 40 bytes in the 16-bit form",
            frame_with_length_form(0x81, 16, 40, &small),
        ),
        (
            "text, 0 bytes in the 16-bit form",
            frame_with_length_form(0x81, 16, 0, b""),
        ),
        (
            "text, 125 bytes in the 16-bit form",
            frame_with_length_form(0x81, 16, 125, &ping_of_len(1, 125)),
        ),
        (
            "text, 40 bytes in the 64-bit form",
            frame_with_length_form(0x81, 64, 40, &small),
        ),
        (
            "binary, 200 bytes in the 64-bit form",
            frame_with_length_form(0x82, 64, 200, &[0; 200]),
        ),
        (
            "text, 65535 bytes in the 64-bit form (first 10 sent)",
            frame_with_length_form(0x81, 64, 65535, &[b' '; 10]),
        ),
        (
            "ping, 5 bytes in the 16-bit form",
            frame_with_length_form(0x89, 16, 5, b"hello"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in &cases {
        let (mut raw, _) = raw_welcomed(&h, &t, None).await;
        // The server may close before taking it all.
        let _ = raw.try_write_raw(bytes, STEP).await;
        match raw.try_read_until_close(STEP).await {
            Ok((_, Some(4000))) => {}
            Ok((frames, code)) => {
                failures.push(format!("{what}: close {code:?}; frames {frames:?}"))
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "non-minimal lengths not closed with 4000:\n{}",
        failures.join("\n")
    );

    // The minimal forms at their lower edges are fine.
    let (mut raw, _) = raw_welcomed(&h, &t, None).await;
    raw.write_raw(&frame_with_length_form(0x81, 16, 126, &ping_of_len(2, 126)))
        .await;
    raw.write_raw(&frame_with_length_form(
        0x81,
        64,
        65536,
        &ping_of_len(3, 65536),
    ))
    .await;
    for id in [2, 3] {
        let f = raw.read_frame(STEP).await.unwrap().and_then(|f| f.json());
        assert_eq!(
            f,
            Some(json!({"type": "pong", "id": id})),
            "minimal length form, id {id}"
        );
    }
    assert_serves(&h, "after the non-minimal lengths").await;
}
