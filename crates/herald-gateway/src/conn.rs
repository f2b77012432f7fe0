//! One WebSocket connection: a single task that owns the connection's state
//! and runs its reader and writer side by side (`join!`, no extra task).
//!
//! - The reader decodes requests, enforces the rate limit, heartbeat and
//!   token expiry, and answers each request once (PROTOCOL.md section 4).
//! - The writer drains the [`Outbox`] and writes every queued frame with one
//!   vectored write. Over TCP, fan-out also writes to the socket directly
//!   when the outbox is idle ([`Outbox::deliver`]); the outbox lets only one
//!   of them write at a time, so frames stay in order.
//! - Subscribe ordering (PROTOCOL.md section 5): the subscriber is added to
//!   the hub *buffering* before the channel position is read, so every
//!   message after the reply's seq is either replayed or buffered; the reply
//!   goes first, then the replay, then the buffer, then live messages.

use crate::Inner;
use crate::hub::{AddError, ConnHandle, GoLive};
use crate::ingest::PublishCall;
use crate::metrics as m;
use crate::outbox::{Outbox, Take};
use crate::ws::{self, FrameReader, InFrame, InOp, ReadError};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use herald_auth::{ConnClaims, GrantOp};
use herald_protocol::bus::Envelope;
use herald_protocol::server::{
    ClientInfo, Disconnect, Empty, ErrorRef, Pong, PresenceList, ReplyErr, ReplyOk, SubResult,
    Unsubscribed, Welcome,
};
use herald_protocol::webhook::EventKind;
use herald_protocol::{
    ChannelName, CloseCode, DecodeLimits, Encoding, ErrorCode, Op, Request, decode_request,
};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

/// Boxed read half (the upgraded TCP stream, or a generic split).
pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
/// The write half: the shared TCP socket inline (the usual case, no
/// allocation of its own), or any other stream boxed.
pub enum Writer {
    /// A TCP socket the outbox also writes to ([`Outbox::deliver`]).
    Tcp(SharedTcpWriter),
    /// Anything else (a generic split of an upgraded stream).
    Other(Box<dyn AsyncWrite + Unpin + Send>),
}

impl Writer {
    /// The socket fan-out may write to directly, when there is one.
    fn direct(&self) -> Option<Arc<TcpStream>> {
        match self {
            Self::Tcp(w) => Some(w.0.clone()),
            Self::Other(_) => None,
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Self::Other(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Other(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(w) => w.is_write_vectored(),
            Self::Other(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_flush(cx),
            Self::Other(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Self::Other(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The reader's handle to a TCP socket shared with the writer and the
/// outbox: one `Arc<TcpStream>` for all three, so that a direct write
/// ([`Outbox::deliver`]) reaches the file descriptor through one pointer
/// (tokio's `into_split` would put an `OwnedWriteHalf` allocation between
/// the two). Reads wait for read readiness, writes for write readiness:
/// tokio keeps a waker per direction, so the reader and the writer do not
/// steal each other's wake-ups.
pub struct SharedTcpReader(pub Arc<TcpStream>);

impl AsyncRead for SharedTcpReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Zeroes what the buffer has not initialised yet (`unsafe` is
            // forbidden here): at most the read chunk, 2 KiB
            // (`ws::FrameReader`), once per read.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A stale readiness: `try_read` has cleared it; wait again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The writer's handle to a TCP socket whose outbox also writes to it
/// directly ([`Outbox::deliver`]). Only one of them writes at a time (the
/// outbox's `writing` rule), so the readiness waker below is the writer's
/// alone: direct writes never poll. Dropping it shuts the write side down
/// (our FIN), as tokio's `OwnedWriteHalf` does, though the reader still
/// holds the socket (it lingers for the peer's close).
pub struct SharedTcpWriter(pub Arc<TcpStream>);

impl SharedTcpWriter {
    /// Waits for write readiness, then runs `op`; a `WouldBlock` (a stale
    /// readiness, or one a direct write used up) clears it and waits again.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&TcpStream) -> std::io::Result<T>,
    ) -> Poll<std::io::Result<T>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match op(&self.0) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn shutdown_write(&self) -> std::io::Result<()> {
        socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write)
    }
}

impl Drop for SharedTcpWriter {
    fn drop(&mut self) {
        // Already shut down (the close path) or reset: nothing to do.
        let _ = self.shutdown_write();
    }
}

impl AsyncWrite for SharedTcpWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_io(cx, |w| w.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_io(cx, |w| w.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends our FIN now (the close path), whoever else holds the socket.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

/// What the HTTP upgrade learned before the socket was handed over.
pub struct Handshake {
    /// Negotiated encoding.
    pub enc: Encoding,
    /// The token, if any.
    pub token: Option<String>,
    /// `recover=` entries.
    pub recover: HashMap<ChannelName, u64>,
    /// Route channels.
    pub route_channels: Vec<ChannelName>,
    /// Peer address, for logs.
    pub peer: String,
}

/// An error for one request: the code, and a message for the client.
struct ReqError(ErrorCode, String);

impl ReqError {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
}

struct SubInfo {
    /// Granted by a subscription token rather than the connection token
    /// (a `refresh` does not end it).
    via_sub_token: bool,
}

/// A connection's subscriptions, sorted by channel: a hash map's smallest
/// table is ~120 bytes in every idle connection, and a connection holds at
/// most `max_subscriptions_per_connection` entries (binary search; an insert
/// moves at most that many 24-byte entries).
#[derive(Default)]
struct Subs(Vec<(ChannelName, SubInfo)>);

impl Subs {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn find(&self, ch: &ChannelName) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.cmp(ch))
    }

    fn contains_key(&self, ch: &ChannelName) -> bool {
        self.find(ch).is_ok()
    }

    fn insert(&mut self, ch: ChannelName, info: SubInfo) {
        match self.find(&ch) {
            Ok(i) => self.0[i].1 = info,
            Err(i) => {
                if self.0.len() == self.0.capacity() && self.0.len() < 4 {
                    // Grow one at a time while small (a first push reserves 4).
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (ch, info));
            }
        }
    }

    fn remove(&mut self, ch: &ChannelName) -> Option<SubInfo> {
        let i = self.find(ch).ok()?;
        Some(self.0.remove(i).1)
    }

    fn iter(&self) -> impl Iterator<Item = (&ChannelName, &SubInfo)> {
        self.0.iter().map(|(c, i)| (c, i))
    }

    fn drain(&mut self) -> impl Iterator<Item = (ChannelName, SubInfo)> + '_ {
        self.0.drain(..)
    }
}

/// Planned replay of a subscription, done after the reply.
struct Plan {
    channel: ChannelName,
    /// Live delivery starts after this seq (the reply's seq).
    after: u64,
    /// Replay seqs `since+1..=after` (when recovered).
    replay_from: Option<u64>,
    /// First page already fetched.
    first_page: Vec<herald_protocol::server::Message>,
}

/// Token bucket with PROTOCOL.md section 7 over-limit tracking.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    over_since: Option<Instant>,
    last_refused: Option<Instant>,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
            over_since: None,
            last_refused: None,
        }
    }

    /// Ok(true) allowed; Ok(false) refused; Err(()) over the limit for 2 s.
    fn take(&mut self, now: Instant) -> Result<bool, ()> {
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(true);
        }
        // Over the limit from the first refusal until a whole second passes
        // without one.
        let fresh = self
            .last_refused
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if fresh || self.over_since.is_none() {
            self.over_since = Some(now);
        }
        self.last_refused = Some(now);
        match self.over_since {
            Some(s) if now.duration_since(s) >= Duration::from_secs(2) => Err(()),
            _ => Ok(false),
        }
    }
}

/// The per-connection state owned by the reader.
struct Conn {
    gw: Arc<Inner>,
    handle: Arc<ConnHandle>,
    /// Boxed: an idle connection's task should not carry ~200 bytes inline.
    claims: Box<ConnClaims>,
    subs: Subs,
    expires: Option<tokio::time::Instant>,
}

/// A connection, ready to run until it closes. The handle is built here,
/// outside the returned future, so the task of every idle connection
/// carries only the writer's and the reader's states, not the locals that
/// built them.
pub fn run(
    gw: Arc<Inner>,
    rd: Reader,
    wr: Writer,
    hs: Box<Handshake>,
) -> impl Future<Output = ()> + Send {
    let handle = new_handle(&gw, hs.enc, wr.direct());
    let writer = write_loop(wr, gw.clone(), handle.clone());
    let reader = read_side(gw, handle, rd, hs);
    // `join` holds each half once; an `async move` block around
    // `tokio::join!` would carry both twice (as captures and as join state).
    futures_util::future::join(writer, reader).map(|((), ())| ())
}

fn new_handle(gw: &Inner, enc: Encoding, direct: Option<Arc<TcpStream>>) -> Arc<ConnHandle> {
    let outbox = Outbox::new(gw.cfg.limits.max_queue_bytes);
    if let Some(sock) = direct {
        outbox.attach(sock);
    }
    Arc::new(ConnHandle {
        num: gw.next_conn_num(),
        id: Arc::from(format!("c_{}", uuid::Uuid::now_v7().simple())),
        enc,
        outbox,
        client: std::sync::OnceLock::new(),
    })
}

/// How long a write blocked on a non-reading client may go on after the
/// connection was told to close.
const STUCK_WRITE_GRACE: Duration = Duration::from_secs(2);

async fn write_loop(mut wr: Writer, gw: Arc<Inner>, h: Arc<ConnHandle>) {
    loop {
        match h.outbox.take().await {
            Take::Frames(mut frames) => {
                let frames = frames.make_contiguous();
                let n = frames.len() as u64;
                let bytes: usize = frames.iter().map(Bytes::len).sum();
                let mut pos = (0, 0);
                // Fast path, the usual case: the socket takes the whole batch
                // now. No timer, no close watch, no allocation.
                let first =
                    poll_fn(|cx| Poll::Ready(poll_write_frames(&mut wr, cx, frames, &mut pos)))
                        .await;
                let ok = match first {
                    Poll::Ready(r) => r.is_ok(),
                    // The client's window is full: finish the write, watching
                    // for a close and for a client that stopped reading
                    // (boxed, so this state is not carried by every idle
                    // connection).
                    Poll::Pending => {
                        let stall = gw.cfg.limits.heartbeat_timeout;
                        Box::pin(finish_write(&mut wr, &h, frames, &mut pos, stall)).await
                    }
                };
                if !ok {
                    if let Some(code) = h.outbox.close_code() {
                        m::disconnects(code.label()).increment(1);
                    }
                    h.outbox.mark_dead();
                    break;
                }
                gw.sent.frames.increment(n);
                gw.sent.bytes.increment(bytes as u64);
            }
            Take::Close(code) => {
                let mut frames = Vec::with_capacity(2);
                if code.announced() {
                    frames.push(ws::encode_frame(h.enc, &Disconnect::new(code)));
                }
                frames.push(ws::close_frame(code));
                // Bounded: a client that does not read must not hold us.
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(5), async {
                    let mut pos = (0, 0);
                    poll_fn(|cx| poll_write_frames(&mut wr, cx, &frames, &mut pos)).await?;
                    wr.flush().await?;
                    wr.shutdown().await
                }))
                .await;
                m::disconnects(code.label()).increment(1);
                h.outbox.mark_dead();
                break;
            }
            Take::Stop => break,
        }
    }
    h.outbox.finish();
}

/// Finishes a write the socket could not take at once. A close requested
/// meanwhile (the slow consumer of DESIGN.md guarantee 4) gets
/// [`STUCK_WRITE_GRACE`], then the socket is dropped rather than the task
/// held by a client that does not read.
///
/// A client whose socket takes nothing for `stall` (the heartbeat timeout)
/// has not read our pings either: it is closed with 4408 whatever it sends,
/// so a client that only writes (pings, requests) cannot keep a dead
/// reader alive and its answers piling up.
async fn finish_write(
    wr: &mut Writer,
    h: &ConnHandle,
    frames: &[Bytes],
    pos: &mut (usize, usize),
    stall: Duration,
) -> bool {
    let mut at = *pos;
    let write = poll_fn(|cx| {
        let r = poll_write_frames(wr, cx, frames, pos);
        if r.is_pending() && *pos != at {
            // Progress: the client reads, however slowly.
            at = *pos;
            return Poll::Ready(None);
        }
        r.map(Some)
    });
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            r = &mut write => match r {
                Some(r) => return r.is_ok(),
                // Made progress and blocked again: a fresh stall window.
                None => continue,
            },
            _ = h.outbox.closed() => return matches!(
                tokio::time::timeout(STUCK_WRITE_GRACE, async {
                    loop {
                        if let Some(r) = (&mut write).await {
                            return r;
                        }
                    }
                })
                .await,
                Ok(Ok(()))
            ),
            () = tokio::time::sleep(stall) => {
                m::write_stalls().increment(1);
                h.outbox.close_now(CloseCode::HeartbeatTimeout);
            }
        }
    }
}

/// Most frames handed to one `writev`.
const MAX_IOV: usize = 64;

/// Writes `frames` from `pos` (frame index, offset in it) with vectored
/// writes until done or the socket would block; `pos` records progress.
fn poll_write_frames(
    wr: &mut Writer,
    cx: &mut Context<'_>,
    frames: &[Bytes],
    pos: &mut (usize, usize),
) -> Poll<std::io::Result<()>> {
    while pos.0 < frames.len() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        for (slot, f) in iov.iter_mut().zip(&frames[pos.0..]) {
            *slot = IoSlice::new(if k == 0 { &f[pos.1..] } else { f });
            k += 1;
        }
        let mut n = ready!(Pin::new(&mut *wr).poll_write_vectored(cx, &iov[..k]))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        while n > 0 && pos.0 < frames.len() {
            let left = frames[pos.0].len() - pos.1;
            if n >= left {
                n -= left;
                pos.0 += 1;
                pos.1 = 0;
            } else {
                pos.1 += n;
                n = 0;
            }
        }
    }
    Poll::Ready(Ok(()))
}

async fn read_side(gw: Arc<Inner>, handle: Arc<ConnHandle>, rd: Reader, hs: Box<Handshake>) {
    // Resolves once the writer has stopped (its last frame is out).
    let done = &handle.outbox;
    let mut wsr = FrameReader::new(rd, gw.cfg.limits.max_frame_bytes);

    // Authenticate; a bad token still completes the upgrade and gets a
    // disconnect + close (PROTOCOL.md section 2).
    let claims = match hs.token.as_deref().filter(|t| !t.is_empty()) {
        None => Err(CloseCode::Unauthorized),
        Some(t) => gw.verifier.verify(t).map(Box::new).map_err(|e| {
            tracing::debug!(error = %e, peer = %hs.peer, "token rejected");
            e.close_code()
        }),
    };
    let claims = match claims {
        Ok(c) => c,
        Err(code) => {
            handle.outbox.close(code);
            Box::pin(linger(wsr, done)).await;
            return;
        }
    };
    if let Err(code) = gw.register(&handle, &claims.sub) {
        handle.outbox.close(code);
        Box::pin(linger(wsr, done)).await;
        return;
    }
    let _ = handle.client.set(ClientInfo {
        sub: claims.sub.clone(),
        conn: handle.id.to_string(),
        info: claims.info.clone(),
    });
    m::connections().increment(1.0);
    let span = tracing::debug_span!("conn", conn = %handle.id, sub = %claims.sub, node = %gw.cfg.node_id, peer = %hs.peer);
    let expires = expiry_deadline(&claims, gw.verifier.leeway());
    let mut conn = Conn {
        gw: gw.clone(),
        handle: handle.clone(),
        claims,
        subs: Subs::default(),
        expires,
    };
    async {
        let welcomed = Box::pin(conn.welcome(&hs)).await;
        // The handshake (token text, recover= map) is not needed any more:
        // an idle connection should not keep it.
        drop(hs);
        if welcomed {
            gw.events
                .emit(EventKind::Connect, None, &conn.client_info());
        }
        let linger_needed = !welcomed || conn.serve(&mut wsr).await;
        // Local state first, at once, whatever the bus and presence do: a
        // Redis outage must not hold the hub entries (or, below, the
        // connection's limit slots) for 2 s per channel.
        conn.release();
        if welcomed {
            gw.events
                .emit(EventKind::Disconnect, None, &conn.client_info());
        }
        if linger_needed {
            Box::pin(linger(wsr, done)).await;
        }
    }
    .instrument(span)
    .await;
    gw.unregister(&handle, &conn.claims.sub);
    m::connections().decrement(1.0);
}

/// Longest the presence `leave`s of a closed connection are tried, all its
/// channels together. Past it (Redis down) the entries are left to expire
/// with `[presence] ttl`, and the presence sweep announces their leave.
const LEAVE_DEADLINE: Duration = Duration::from_secs(10);

/// Presence `leave` calls in flight for one closed connection.
const LEAVE_CONCURRENCY: usize = 16;

fn expiry_deadline(c: &ConnClaims, leeway: Duration) -> Option<tokio::time::Instant> {
    let at = c.expires_at()? + leeway;
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(tokio::time::Instant::now() + left)
}

/// After a close was requested: keep reading (and discarding) until the
/// writer is done and the peer closes or 2 s pass, so unread client data
/// does not turn our close into a TCP reset that eats the close frame.
async fn linger(mut rd: FrameReader<Reader>, done: &Outbox) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        done.finished().await;
        loop {
            match rd.read().await {
                Ok(InFrame {
                    op: InOp::Close, ..
                })
                | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), done.finished()).await;
}

impl Conn {
    fn enc(&self) -> Encoding {
        self.handle.enc
    }

    fn push<T: serde::Serialize>(&self, frame: &T) {
        self.handle.outbox.push(ws::encode_frame(self.enc(), frame));
    }

    fn reply_ok<T: serde::Serialize>(&self, id: i64, result: &T) {
        self.push(&ReplyOk {
            kind: "reply",
            id,
            result,
        });
    }

    fn reply_err(&self, id: Option<i64>, code: ErrorCode, message: &str) {
        m::errors(code.as_str()).increment(1);
        self.push(&ReplyErr {
            kind: "reply",
            id,
            error: ErrorRef { code, message },
        });
    }

    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            sub: self.claims.sub.clone(),
            conn: self.handle.id.to_string(),
            info: self.claims.info.clone(),
        }
    }

    /// Automatic subscriptions, the welcome frame and their recovery.
    async fn welcome(&mut self, hs: &Handshake) -> bool {
        let mut wanted: Vec<ChannelName> = self.claims.channels.clone();
        for c in &hs.route_channels {
            if !wanted.contains(c) {
                wanted.push(c.clone());
            }
        }
        let mut results = Vec::new();
        let mut plans = Vec::new();
        for ch in wanted {
            // Route channels still need a grant; token channels carry one.
            if !self.claims.allows(GrantOp::Subscribe, &ch) {
                continue;
            }
            if self.subs.len() >= self.gw.cfg.limits.max_subscriptions_per_connection {
                break;
            }
            let since = hs.recover.get(&ch).copied();
            match self.prepare(&ch, since, false).await {
                Ok((res, plan)) => {
                    results.push(res);
                    plans.push(plan);
                }
                // A capped channel is left out of `welcome.subs`.
                Err(ReqError(ErrorCode::LimitReached, _)) => {}
                Err(ReqError(code, msg)) => {
                    tracing::warn!(channel = %ch, code = %code, error = %msg, "automatic subscription failed");
                    self.handle.outbox.close(CloseCode::ServiceRestart);
                    return false;
                }
            }
        }
        let hb = self.gw.cfg.limits.heartbeat_interval.as_secs_f64();
        self.push(&Welcome {
            kind: "welcome",
            conn: &self.handle.id,
            node: &self.gw.cfg.node_id,
            heartbeat: hb,
            subs: &results,
        });
        for plan in plans {
            let ch = plan.channel.clone();
            if !self.finish(plan).await {
                return false;
            }
            self.join(&ch).await;
        }
        true
    }

    /// Steps 1-3 of a subscribe: add buffering, wait for the bus, read the
    /// position (and first replay page). On error the subscriber is removed.
    async fn prepare(
        &mut self,
        ch: &ChannelName,
        since: Option<u64>,
        via_sub_token: bool,
    ) -> Result<(SubResult, Plan), ReqError> {
        let presence = self.claims.allows(GrantOp::Presence, ch);
        let cap = self.gw.cfg.limits.channel_cap(ch.as_str());
        self.gw
            .hub
            .add(ch, &self.handle, presence, cap)
            .map_err(|AddError::Cap| {
                ReqError::new(
                    ErrorCode::LimitReached,
                    format!("{ch} has reached its subscriber limit on this node"),
                )
            })?;
        match self.position(ch, since).await {
            Ok(r) => {
                self.subs.insert(ch.clone(), SubInfo { via_sub_token });
                Ok(r)
            }
            Err(e) => {
                self.gw.hub.remove(ch, self.handle.num);
                Err(e)
            }
        }
    }

    async fn position(
        &self,
        ch: &ChannelName,
        since: Option<u64>,
    ) -> Result<(SubResult, Plan), ReqError> {
        self.gw
            .hub
            .bus_ready(ch)
            .await
            .map_err(|e| ReqError::new(ErrorCode::Unavailable, format!("bus unavailable: {e}")))?;
        let ingest_err = |e: crate::ingest::IngestError| ReqError::new(e.code, e.message);
        let Some(since) = since else {
            let pos = self
                .gw
                .ingest_positions(std::slice::from_ref(ch))
                .await
                .map_err(ingest_err)?;
            let seq = pos.first().copied().unwrap_or(0);
            return Ok((
                SubResult {
                    channel: ch.clone(),
                    seq,
                    recovered: None,
                    replayed: None,
                },
                Plan {
                    channel: ch.clone(),
                    after: seq,
                    replay_from: None,
                    first_page: Vec::new(),
                },
            ));
        };
        let page = self
            .gw
            .ingest_history(ch, since, 100)
            .await
            .map_err(ingest_err)?;
        let last = page.last_seq;
        let behind = last.saturating_sub(since);
        let contiguous = match page.messages.first() {
            Some(m) => m.seq == since + 1,
            None => behind == 0,
        };
        let recovered = since <= last && behind <= self.gw.cfg.limits.max_replay && contiguous;
        let replayed = if recovered { behind } else { 0 };
        Ok((
            SubResult {
                channel: ch.clone(),
                seq: last,
                recovered: Some(recovered),
                replayed: Some(replayed),
            },
            Plan {
                channel: ch.clone(),
                after: last,
                replay_from: (recovered && behind > 0).then_some(since + 1),
                first_page: if recovered { page.messages } else { Vec::new() },
            },
        ))
    }

    /// After the reply: replay, then go live (filling anything this node
    /// handed out before the subscriber was buffering).
    async fn finish(&mut self, plan: Plan) -> bool {
        let ch = plan.channel.clone();
        if let Some(from) = plan.replay_from
            && !self
                .send_history(&ch, from, plan.after, plan.first_page)
                .await
        {
            return false;
        }
        let mut after = plan.after;
        loop {
            match self.gw.hub.go_live(&ch, self.handle.num, after) {
                GoLive::Done | GoLive::Gone => return true,
                GoLive::Missing { from, to } => {
                    if !self.send_history(&ch, from, to, Vec::new()).await {
                        return false;
                    }
                    after = to;
                }
            }
        }
    }

    /// Sends seqs `from..=to` of a channel from history, page by page at the
    /// pace the client reads (outside the queue bound, PROTOCOL.md section 5).
    ///
    /// The seqs must be contiguous. If history lacks one (evicted between
    /// the reply and this read), the client cannot get it from us any more:
    /// it is asked to reconnect (1012), and its `since` then gets
    /// `recovered:false`, so the loss is never silent (DESIGN.md guarantee 3).
    async fn send_history(
        &self,
        ch: &ChannelName,
        from: u64,
        to: u64,
        mut page: Vec<herald_protocol::server::Message>,
    ) -> bool {
        let mut next = from;
        let mut queued = 0usize;
        while next <= to {
            if page.is_empty() {
                let limit = u32::try_from((to - next + 1).min(500)).unwrap_or(500);
                match self.gw.ingest_history(ch, next - 1, limit).await {
                    Ok(p) => page = p.messages,
                    Err(e) => {
                        tracing::warn!(channel = %ch, error = %e, "replay read failed; asking the client to reconnect");
                        self.handle.outbox.close(CloseCode::ServiceRestart);
                        return false;
                    }
                }
            }
            let mut progressed = false;
            for mut msg in page.drain(..) {
                if msg.seq < next || msg.seq > to {
                    continue;
                }
                if msg.seq != next {
                    break;
                }
                next = msg.seq + 1;
                progressed = true;
                msg.kind = Some(herald_protocol::server::MessageKind::Message);
                let frame = ws::encode_frame(self.enc(), &msg);
                queued += frame.len();
                if !self.handle.outbox.push_unbounded(frame) {
                    return false;
                }
                // Outside the bound, but never more than about one bound's
                // worth queued at a time: a page of large messages waits
                // for the client to read the first of them.
                if queued >= self.gw.cfg.limits.max_queue_bytes {
                    if !self.handle.outbox.wait_drained().await {
                        return false;
                    }
                    queued = 0;
                }
            }
            if !progressed && next <= to {
                tracing::warn!(channel = %ch, missing = next, "history lost a seq during replay; asking the client to reconnect");
                m::replay_holes().increment(1);
                self.handle.outbox.close(CloseCode::ServiceRestart);
                return false;
            }
            if !self.handle.outbox.wait_drained().await {
                return false;
            }
            queued = 0;
        }
        true
    }

    /// The reader loop.
    /// Serves requests until the connection ends; true when the caller
    /// should [`linger`] (we asked for the close), false when the client
    /// closed or vanished.
    async fn serve(&mut self, rd: &mut FrameReader<Reader>) -> bool {
        // A handle on the shared config, not a copy of it in every task.
        let gw = self.gw.clone();
        let handle = self.handle.clone();
        let done = &handle.outbox;
        let limits = &gw.cfg.limits;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let mut last_recv = tokio::time::Instant::now();
        let mut next_ping = last_recv + limits.heartbeat_interval;
        // One timer for the ping, the silence timeout and the token expiry
        // (whichever is first): each timer is ~100 bytes in every idle
        // connection's task.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        let mut rate = RateLimit::new(limits.rate_per_second, limits.rate_burst);
        // Control frames and fragments: a bucket of the same size, apart
        // from requests (PROTOCOL.md section 7 counts only data frames;
        // docs/protocol-notes.md says why these are limited too).
        let mut frames = RateLimit::new(limits.rate_per_second, limits.rate_burst);
        let mut fragments: Option<(InOp, BytesMut)> = None;
        loop {
            let timeout_at = last_recv + limits.heartbeat_timeout;
            let expires_at = self.expires.unwrap_or(far);
            let due = next_ping.min(timeout_at).min(expires_at);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                // Cancel-safe: FrameReader consumes a frame only once whole.
                res = rd.read() => {
                    last_recv = tokio::time::Instant::now();
                    let frame = match res {
                        Ok(f) => f,
                        Err(ReadError::TooBig) => {
                            self.handle.outbox.close_now(CloseCode::TooBig);
                            break;
                        }
                        Err(ReadError::Protocol(why)) => {
                            tracing::debug!(why, "protocol violation");
                            self.handle.outbox.close_now(CloseCode::ProtocolViolation);
                            break;
                        }
                        // The reader does not judge close payloads itself.
                        Err(ReadError::BadClose(_) | ReadError::BadCloseReason) => {
                            self.handle.outbox.close_now(CloseCode::ProtocolError);
                            break;
                        }
                        Err(ReadError::Gone) => {
                            m::disconnects("abnormal").increment(1);
                            self.handle.outbox.mark_dead();
                            return false;
                        }
                    };
                    let InFrame { fin, op, payload } = frame;
                    // Control frames and non-final fragments cost no request
                    // token but take one from the frame bucket: a flood of
                    // them is refused like a request flood (4029).
                    let framing = matches!(op, InOp::Ping | InOp::Pong)
                        || (!fin && matches!(op, InOp::Text | InOp::Binary | InOp::Continuation));
                    let frame_ok = if framing {
                        match frames.take(std::time::Instant::now()) {
                            Ok(ok) => ok,
                            Err(()) => {
                                self.handle.outbox.close(CloseCode::RateLimited);
                                break;
                            }
                        }
                    } else {
                        true
                    };
                    match op {
                        InOp::Close => {
                            // RFC 6455 sections 5.5.1 and 7.4: a valid code is
                            // echoed; a malformed close fails the connection.
                            let code = match ws::close_code_of(&payload) {
                                Ok(None) => CloseCode::Normal,
                                Ok(Some(c)) => CloseCode::Peer(c),
                                Err(ReadError::BadCloseReason) => {
                                    self.handle.outbox.close_now(CloseCode::InvalidUtf8);
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "invalid close frame");
                                    self.handle.outbox.close_now(CloseCode::ProtocolError);
                                    break;
                                }
                            };
                            self.handle.outbox.close(code);
                            // The client said goodbye: no lingering needed.
                            let _ = Box::pin(tokio::time::timeout(Duration::from_secs(5), done.finished())).await;
                            return false;
                        }
                        InOp::Ping => {
                            // Refused pings (over the frame bucket) go
                            // unanswered; RFC 6455 lets a pong answer only
                            // the latest ping, which push_pong keeps.
                            if frame_ok {
                                self.handle.outbox.push_pong(ws::frame(ws::Opcode::Pong, &payload));
                            }
                        }
                        InOp::Pong => {}
                        InOp::Text | InOp::Binary | InOp::Continuation => {
                            let complete = match (op, fragments.take()) {
                                (InOp::Continuation, None) => {
                                    self.handle.outbox.close_now(CloseCode::ProtocolViolation);
                                    break;
                                }
                                (InOp::Continuation, Some((first, mut buf))) => {
                                    if buf.len() + payload.len() > limits.max_frame_bytes {
                                        self.handle.outbox.close_now(CloseCode::TooBig);
                                        break;
                                    }
                                    buf.extend_from_slice(&payload);
                                    if fin { Some((first, buf.freeze())) } else { fragments = Some((first, buf)); None }
                                }
                                (_, Some(_)) => {
                                    // A new data frame inside a fragmented message.
                                    self.handle.outbox.close_now(CloseCode::ProtocolViolation);
                                    break;
                                }
                                (first, None) => {
                                    if fin { Some((first, payload)) } else { fragments = Some((first, BytesMut::from(&payload[..]))); None }
                                }
                            };
                            if let Some((first, msg)) = complete {
                                let ok_kind = matches!((first, self.enc()), (InOp::Text, Encoding::Json) | (InOp::Binary, Encoding::Msgpack));
                                if !ok_kind {
                                    self.handle.outbox.close_now(CloseCode::ProtocolViolation);
                                    break;
                                }
                                if first == InOp::Text && std::str::from_utf8(&msg).is_err() {
                                    self.handle.outbox.close_now(CloseCode::InvalidUtf8);
                                    break;
                                }
                                match rate.take(std::time::Instant::now()) {
                                    Ok(true) => {
                                        // Boxed: a request's state (a replay, an
                                        // ingest call) lives only while it runs,
                                        // not in every idle connection's task.
                                        Box::pin(self.on_request(&msg)).await;
                                        // We did not read while handling it
                                        // (a replay, a slow ingest): that
                                        // silence is ours, not the client's.
                                        last_recv = tokio::time::Instant::now();
                                    }
                                    Ok(false) => {
                                        let id = decode_request(self.enc(), &msg, self.decode_limits())
                                            .map(|r| Some(r.id))
                                            .unwrap_or_else(|e| e.id);
                                        self.reply_err(id, ErrorCode::RateLimited, "too many requests");
                                    }
                                    Err(()) => {
                                        self.handle.outbox.close(CloseCode::RateLimited);
                                        break;
                                    }
                                }
                                if self.handle.outbox.is_closing() {
                                    break;
                                }
                            }
                        }
                    }
                }
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if expires_at <= now {
                        self.handle.outbox.close(CloseCode::TokenExpired);
                        break;
                    }
                    if timeout_at <= now {
                        self.handle.outbox.close(CloseCode::HeartbeatTimeout);
                        break;
                    }
                    if next_ping <= now {
                        self.handle.outbox.push_ping();
                        next_ping = now + limits.heartbeat_interval;
                    }
                }
                _ = done.finished() => break,
            }
        }
        true
    }

    fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_data_bytes: self.gw.cfg.limits.max_data_bytes,
        }
    }

    async fn on_request(&mut self, payload: &[u8]) {
        let req = match decode_request(self.enc(), payload, self.decode_limits()) {
            Ok(r) => r,
            Err(e) => {
                self.reply_err(e.id, e.code, &e.message);
                return;
            }
        };
        m::requests(req.op.name()).increment(1);
        let Request { id, op } = req;
        let r = match op {
            Op::Ping => {
                self.push(&Pong { kind: "pong", id });
                Ok(())
            }
            Op::Subscribe {
                channel,
                since,
                token,
            } => self.subscribe(id, channel, since, token).await,
            Op::Unsubscribe { channel } => {
                if self.subs.remove(&channel).is_some() {
                    self.leave(&channel).await;
                    self.reply_ok(id, &Empty {});
                    Ok(())
                } else {
                    Err(ReqError::new(
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to {channel}"),
                    ))
                }
            }
            Op::Publish { channel, data, key } => {
                if !self.claims.allows(GrantOp::Publish, &channel) {
                    Err(forbidden("publish", &channel))
                } else {
                    let call = PublishCall {
                        channel,
                        data,
                        key,
                        publisher: self.claims.sub.clone(),
                    };
                    match self.gw.ingest_publish(call).await {
                        Ok(res) => {
                            self.reply_ok(id, &res);
                            Ok(())
                        }
                        Err(e) => Err(ReqError::new(e.code, e.message)),
                    }
                }
            }
            Op::Signal { channel, data } => {
                if !self.claims.allows(GrantOp::Signal, &channel) {
                    Err(forbidden("signal", &channel))
                } else {
                    let mut env = Envelope::signal(channel, Some(self.claims.sub.clone()), &data);
                    // The sender's connection rides in `id` so it is not echoed.
                    env.id = Some(self.handle.id.to_string());
                    match self.gw.bus.publish(&env).await {
                        Ok(()) => {
                            self.reply_ok(id, &Empty {});
                            Ok(())
                        }
                        Err(e) => Err(ReqError::new(
                            ErrorCode::Unavailable,
                            format!("bus unavailable: {e}"),
                        )),
                    }
                }
            }
            Op::Presence { channel } => {
                if !self.claims.allows(GrantOp::Presence, &channel) {
                    Err(forbidden("read presence of", &channel))
                } else {
                    match self.gw.presence.list(&channel).await {
                        Ok(clients) => {
                            self.reply_ok(id, &PresenceList { clients });
                            Ok(())
                        }
                        Err(e) => Err(ReqError::new(
                            ErrorCode::Unavailable,
                            format!("presence unavailable: {e}"),
                        )),
                    }
                }
            }
            Op::Refresh { token } => self.refresh(id, &token).await,
        };
        if let Err(ReqError(code, msg)) = r {
            self.reply_err(Some(id), code, &msg);
        }
    }

    async fn subscribe(
        &mut self,
        id: i64,
        ch: ChannelName,
        since: Option<u64>,
        token: Option<String>,
    ) -> Result<(), ReqError> {
        if self.subs.contains_key(&ch) {
            // Already held: channel and seq only, nothing changes or replays.
            let seq = self
                .gw
                .ingest_positions(std::slice::from_ref(&ch))
                .await
                .map_err(|e| ReqError::new(e.code, e.message))?
                .first()
                .copied()
                .unwrap_or(0);
            self.reply_ok(
                id,
                &SubResult {
                    channel: ch,
                    seq,
                    recovered: None,
                    replayed: None,
                },
            );
            return Ok(());
        }
        let via_sub_token = if self.claims.allows(GrantOp::Subscribe, &ch) {
            false
        } else {
            match token {
                Some(t) => match self
                    .gw
                    .verifier
                    .verify_subscription(&t, &self.claims.sub, &ch)
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, channel = %ch, "subscription token rejected");
                        return Err(forbidden("subscribe to", &ch));
                    }
                },
                None => return Err(forbidden("subscribe to", &ch)),
            }
        };
        if self.subs.len() >= self.gw.cfg.limits.max_subscriptions_per_connection {
            return Err(ReqError::new(
                ErrorCode::LimitReached,
                format!(
                    "at most {} subscriptions per connection",
                    self.gw.cfg.limits.max_subscriptions_per_connection
                ),
            ));
        }
        let (res, plan) = self.prepare(&ch, since, via_sub_token).await?;
        self.reply_ok(id, &res);
        self.finish(plan).await;
        self.join(&ch).await;
        Ok(())
    }

    async fn join(&self, ch: &ChannelName) {
        let client = self.client_info();
        self.gw.events.emit(EventKind::Join, Some(ch), &client);
        if let Err(e) = self.gw.presence.join(ch, &client).await {
            tracing::warn!(channel = %ch, error = %e, "presence join failed");
        }
        self.presence_event(ch, "join", client).await;
    }

    async fn leave(&self, ch: &ChannelName) {
        self.gw.hub.remove(ch, self.handle.num);
        self.gw
            .events
            .emit(EventKind::Leave, Some(ch), &self.client_info());
        if let Err(e) = self.gw.presence.leave(ch, &self.handle.id).await {
            tracing::warn!(channel = %ch, error = %e, "presence leave failed");
        }
        self.presence_event(ch, "leave", self.client_info()).await;
    }

    async fn presence_event(&self, ch: &ChannelName, event: &str, client: ClientInfo) {
        crate::hub::publish_presence(&*self.gw.bus, ch, event, client).await;
    }

    async fn refresh(&mut self, id: i64, token: &str) -> Result<(), ReqError> {
        let claims = match self.gw.verifier.verify(token) {
            Ok(c) if c.sub == self.claims.sub => c,
            Ok(_) => {
                return Err(ReqError::new(
                    ErrorCode::Forbidden,
                    "refresh token names another sub",
                ));
            }
            Err(e) => {
                return Err(ReqError::new(
                    ErrorCode::Forbidden,
                    format!("refresh token rejected: {e}"),
                ));
            }
        };
        self.expires = expiry_deadline(&claims, self.gw.verifier.leeway());
        *self.claims = claims;
        let ended: Vec<ChannelName> = self
            .subs
            .iter()
            .filter(|(ch, info)| !info.via_sub_token && !self.claims.allows(GrantOp::Subscribe, ch))
            .map(|(ch, _)| ch.clone())
            .collect();
        self.reply_ok(id, &Empty {});
        for ch in ended {
            self.subs.remove(&ch);
            self.leave(&ch).await;
            self.push(&Unsubscribed {
                kind: "unsubscribed",
                channel: &ch,
                reason: ErrorCode::Forbidden,
            });
        }
        Ok(())
    }

    /// Ends every subscription of a closing connection: the hub entries go
    /// now; the presence entries and `leave` events are handed to a tracked
    /// background task bounded by [`LEAVE_DEADLINE`], so the connection's
    /// slots are free at once even while Redis is away.
    fn release(&mut self) {
        let subs: Vec<ChannelName> = self.subs.drain().map(|(c, _)| c).collect();
        if subs.is_empty() {
            return;
        }
        let events = self.gw.events.wants_any(EventKind::Leave);
        let client = events.then(|| self.client_info());
        for ch in &subs {
            self.gw.hub.remove(ch, self.handle.num);
            if let Some(c) = &client {
                self.gw.events.emit(EventKind::Leave, Some(ch), c);
            }
        }
        let gw = self.gw.clone();
        let client = self.client_info();
        self.gw.tracker.spawn(async move {
            use futures_util::StreamExt;
            let leaves = futures_util::stream::iter(subs).for_each_concurrent(
                LEAVE_CONCURRENCY,
                |ch| {
                    let gw = &gw;
                    let client = client.clone();
                    async move {
                        if let Err(e) = gw.presence.leave(&ch, &client.conn).await {
                            tracing::debug!(channel = %ch, error = %e, "presence leave failed; the entry expires with its ttl");
                        }
                        crate::hub::publish_presence(&*gw.bus, &ch, "leave", client).await;
                    }
                },
            );
            if tokio::time::timeout(LEAVE_DEADLINE, leaves).await.is_err() {
                tracing::warn!("presence leaves of a closed connection timed out; entries expire with their ttl");
            }
        });
    }
}

fn forbidden(what: &str, ch: &ChannelName) -> ReqError {
    ReqError::new(ErrorCode::Forbidden, format!("not allowed to {what} {ch}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn subs_behave_as_a_map() {
        let mut s = Subs::default();
        for name in ["chat_3", "chat_1", "dashboard_website_1", "chat_2"] {
            s.insert(
                ch(name),
                SubInfo {
                    via_sub_token: false,
                },
            );
        }
        // Replacing keeps one entry and takes the new value.
        s.insert(
            ch("chat_1"),
            SubInfo {
                via_sub_token: true,
            },
        );
        assert_eq!(s.len(), 4);
        assert!(s.contains_key(&ch("chat_2")));
        assert!(!s.contains_key(&ch("chat_4")));
        let listed: Vec<(String, bool)> = s
            .iter()
            .map(|(c, i)| (c.to_string(), i.via_sub_token))
            .collect();
        assert_eq!(
            listed,
            [
                ("chat_1".to_string(), true),
                ("chat_2".to_string(), false),
                ("chat_3".to_string(), false),
                ("dashboard_website_1".to_string(), false),
            ]
        );
        assert!(s.remove(&ch("chat_2")).is_some());
        assert!(s.remove(&ch("chat_2")).is_none());
        let drained: Vec<String> = s.drain().map(|(c, _)| c.to_string()).collect();
        assert_eq!(drained, ["chat_1", "chat_3", "dashboard_website_1"]);
        assert_eq!(s.len(), 0);
    }

    /// Fan-out writing directly and the writer draining the queue share
    /// one socket: under load, with the peer reading late, every frame
    /// arrives once and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn direct_writes_and_the_writer_keep_order() {
        use crate::outbox::Delivered;
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (s, mut c) = (s.unwrap().0, c.unwrap());
        s.set_nodelay(true).unwrap();
        socket2::SockRef::from(&s)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(4096)
            .unwrap();
        s.writable().await.unwrap();
        let w = Arc::new(s);
        let o = Arc::new(Outbox::new(64 << 20));
        o.attach(w.clone());

        // The writer, as write_loop runs it.
        let writer = tokio::spawn({
            let o = o.clone();
            let mut wr = Writer::Tcp(SharedTcpWriter(w));
            async move {
                loop {
                    match o.take().await {
                        Take::Frames(mut f) => {
                            let f = f.make_contiguous();
                            let mut pos = (0, 0);
                            poll_fn(|cx| poll_write_frames(&mut wr, cx, f, &mut pos))
                                .await
                                .unwrap();
                        }
                        Take::Close(_) => {
                            wr.shutdown().await.unwrap();
                            o.mark_dead();
                            break;
                        }
                        Take::Stop => break,
                    }
                }
                o.finish();
            }
        });
        // Frame i: i as 8 bytes, repeated: 1 KiB for the first FILL (more
        // than the small socket buffers hold), then 8 to 56 bytes. Little
        // data in all: after a stall, loopback TCP here (BBR) crawls.
        const FILL: u64 = 64;
        const N: u64 = 5_000;
        let frame = |i: u64| {
            let times = if i < FILL { 128 } else { i % 7 + 1 };
            Bytes::from(i.to_be_bytes().repeat(usize::try_from(times).unwrap()))
        };
        let start_reading = Arc::new(tokio::sync::Notify::new());
        let reader = tokio::spawn({
            let start = start_reading.clone();
            async move {
                start.notified().await;
                let mut got = Vec::new();
                c.read_to_end(&mut got).await.unwrap();
                got
            }
        });
        let (mut written, mut queued) = (0, 0);
        for i in 0..N {
            if i == FILL {
                // The socket is full by now: the rest meets a reading peer.
                start_reading.notify_one();
            }
            if i >= FILL && i % 5 == 0 {
                // A reply, say: always queued.
                assert!(o.push(frame(i)));
            } else {
                match o.deliver(&frame(i)) {
                    Delivered::Written => written += 1,
                    Delivered::Partial(_) | Delivered::Queued => queued += 1,
                    Delivered::Refused => panic!("refused frame {i}"),
                }
            }
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        o.close(CloseCode::Normal);
        let got = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("all frames arrive")
            .unwrap();
        writer.await.unwrap();
        assert!(
            written > 0 && queued > 0,
            "both paths taken: {written} written, {queued} queued"
        );
        let mut at = 0;
        for i in 0..N {
            let f = frame(i);
            assert_eq!(
                got.get(at..at + f.len()),
                Some(&f[..]),
                "frame {i} in place"
            );
            at += f.len();
        }
        assert_eq!(at, got.len());
    }
}
