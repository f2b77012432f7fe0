//! A connection's outbound queue: pre-encoded WebSocket frames, bounded in
//! bytes (DESIGN.md guarantee 4).
//!
//! Fan-out pushes shared `Bytes` and never blocks; a push past the bound
//! marks the connection for close 4008 and drops the frame, so a slow client
//! never slows anyone else. An idle outbox holds no allocation (an empty
//! `VecDeque`), which keeps idle connections small.
//!
//! Direct writes (issue 13): fan-out goes through [`Outbox::deliver`], which
//! writes the frame to the socket itself, from the hub's thread, when the
//! connection is idle (nothing queued, the writer not mid-write, no close):
//! one `write(2)` and no task wake-up per delivery, instead of a notify, a
//! poll of the connection's task and a `writev` of one frame. Order is kept
//! by one rule, checked under the outbox lock: nothing is written directly
//! while anything is queued or being written. Whatever the socket does not
//! take at once (all of it, or the rest of a partial write) is queued for the
//! writer, which then owns the socket until the queue is empty again.

use bytes::Bytes;
use herald_protocol::CloseCode;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A connection's outbound queue. `repr(C)`: the lock and the state a
/// direct write reads come first, so that fan-out's per-subscriber check
/// touches as few cache lines as possible (the handle's other fields are
/// not read on that path).
#[repr(C)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when frames arrive or a close is requested.
    writer: Notify,
    /// Wakes whoever waits for the queue to drain (replay pacing) or the
    /// connection to close.
    drained: Notify,
    max_bytes: usize,
}

/// `repr(C)`, hot fields first: [`Outbox::deliver`] reads the flags, the
/// socket and the queue's length; the pong slot and the rest come after.
#[derive(Default)]
#[repr(C)]
struct State {
    /// The writer has taken frames and not yet come back for more: its
    /// write may be in progress, so nothing may be written directly.
    writing: bool,
    /// A heartbeat ping is due (one at most, whatever the ticks).
    ping: bool,
    /// The writer has stopped (socket gone); nothing more will be written.
    dead: bool,
    /// The writer task has returned (set once, by [`Outbox::finish`]).
    finished: bool,
    close: Option<CloseCode>,
    /// The socket, for direct writes ([`Outbox::deliver`]); `None` for
    /// non-TCP connections and once the writer has stopped (so a hub that
    /// still holds the connection does not keep its socket open).
    sock: Option<Arc<TcpStream>>,
    bytes: usize,
    queue: VecDeque<Bytes>,
    /// The pong not yet written, if any: a newer one replaces it (RFC 6455
    /// section 5.5.3 allows answering only the latest ping), so a client
    /// that pings and never reads holds at most one here.
    pong: Option<Bytes>,
}

impl State {
    /// Drops everything queued.
    fn clear(&mut self) {
        self.queue.clear();
        self.pong = None;
        self.ping = false;
        self.bytes = 0;
    }

    /// Nothing queued and no write in progress, read from the first
    /// fields only: a pong or a ping counts in `bytes` until the writer
    /// takes it (then the queue holds it), so `bytes == 0` with an empty
    /// queue means no pong and no ping either.
    fn idle(&self) -> bool {
        let idle = !self.writing && self.bytes == 0 && self.queue.is_empty();
        debug_assert!(!idle || self.is_empty());
        idle
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.pong.is_none() && !self.ping
    }
}

/// The heartbeat ping: an empty ping frame (FIN + opcode 0x9, length 0), a
/// static, so a heartbeat allocates nothing in thousands of idle
/// connections.
const PING: &[u8] = crate::ws::EMPTY_PING;

/// A first frame takes one slot, not the four `push_back` reserves: most
/// wake-ups of an idle connection carry one frame (a heartbeat, a message),
/// and thousands of them at once (synchronized heartbeats) would otherwise
/// raise the allocator's high-water mark for nothing.
fn reserve_one(q: &mut VecDeque<Bytes>) {
    if q.capacity() == 0 {
        q.reserve_exact(1);
    }
}

/// What [`Outbox::deliver`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The socket took the whole frame: it is sent (the caller counts it).
    Written,
    /// The socket took this many bytes (more than 0); the rest is queued
    /// for the writer, which counts the frame when it has written it.
    Partial(usize),
    /// Queued for the writer, whole.
    Queued,
    /// Refused: the connection is closing or gone, or the frame passed the
    /// bound (the connection is then marked for close 4008).
    Refused,
}

/// What the writer takes each round.
pub enum Take {
    /// Frames to write, in order (the queue itself: the outbox keeps no
    /// buffer between bursts, so an idle connection holds none).
    Frames(VecDeque<Bytes>),
    /// Write a `disconnect` + close frame with this code, then stop.
    Close(CloseCode),
    /// The socket is gone: stop without writing.
    Stop,
}

impl Outbox {
    /// An empty outbox with a byte bound.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            writer: Notify::new(),
            drained: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue in a
        // half-updated state worth refusing: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame within the bound. Past the bound the connection is
    /// marked for close 4008 and `false` is returned.
    pub fn push(&self, frame: Bytes) -> bool {
        let mut s = self.lock();
        if !self.admit(&mut s, frame.len()) {
            return false;
        }
        s.bytes += frame.len();
        Self::enqueue(&mut s, frame);
        drop(s);
        self.writer.notify_one();
        true
    }

    /// Fan-out's push: like [`Outbox::push`], but when the connection is
    /// idle the frame is written to the socket at once, on the caller's
    /// thread, without waking the connection's task. The write is one
    /// non-blocking `write(2)` under the outbox lock (which serialises it
    /// with other direct writes and with the writer taking frames); what the
    /// socket does not take is queued for the writer, so the caller never
    /// blocks (DESIGN.md guarantee 4) and order is kept (guarantee 2).
    pub fn deliver(&self, frame: &Bytes) -> Delivered {
        let mut s = self.lock();
        if !self.admit(&mut s, frame.len()) {
            return Delivered::Refused;
        }
        let mut written = 0;
        // Idle: nothing queued (frames, pong, ping), no write in progress.
        // `admit` has checked there is no close and the socket is not gone.
        if s.idle()
            && let Some(sock) = &s.sock
        {
            // `send(2)` on the socket itself, not tokio's `try_write`: that
            // one first reads the socket's readiness word, a cache line of
            // its own per connection, and a direct write needs none (it is
            // never awaited; a `WouldBlock` goes to the writer, which waits
            // for readiness itself, `SharedTcpWriter::poll_io`).
            match socket2::SockRef::from(&**sock).send(frame) {
                Ok(n) if n == frame.len() => return Delivered::Written,
                Ok(n) => written = n,
                // WouldBlock: the writer waits for the socket. Any other
                // error: the writer meets it too and ends the connection,
                // as for any failed write.
                Err(_) => {}
            }
        }
        let rest = frame.slice(written..);
        s.bytes += rest.len();
        Self::enqueue(&mut s, rest);
        drop(s);
        self.writer.notify_one();
        if written == 0 {
            Delivered::Queued
        } else {
            Delivered::Partial(written)
        }
    }

    /// Reads the outbox's first cache line (the lock's poison flag, beside
    /// the lock word) and nothing else: a safe prefetch for fan-out, which
    /// reads several subscribers' outboxes ahead of their sends.
    pub fn touch(&self) {
        std::hint::black_box(self.state.is_poisoned());
    }

    /// Reads what a direct write will read after the lock: the socket's
    /// file descriptor (one more allocation). Skipped when the lock is
    /// taken (the writer is at work; nothing to gain).
    pub fn touch_socket(&self) {
        if let Ok(s) = self.state.try_lock()
            && let Some(sock) = &s.sock
        {
            std::hint::black_box(std::os::fd::AsRawFd::as_raw_fd(&**sock));
        }
    }

    /// Whether a frame of `len` bytes may be queued; past the bound the
    /// connection is marked for close 4008 (and its queue dropped).
    fn admit(&self, s: &mut State, len: usize) -> bool {
        if s.close.is_some() || s.dead {
            return false;
        }
        if s.bytes + len > self.max_bytes {
            s.close = Some(CloseCode::SlowConsumer);
            s.clear();
            self.writer.notify_one();
            self.drained.notify_waiters();
            return false;
        }
        true
    }

    fn enqueue(s: &mut State, frame: Bytes) {
        reserve_one(&mut s.queue);
        s.queue.push_back(frame);
    }

    /// Gives the outbox the connection's socket for direct writes
    /// ([`Outbox::deliver`]). The writer keeps writing through its own
    /// handle to the same socket; the outbox drops this one when the writer
    /// stops.
    pub fn attach(&self, sock: Arc<TcpStream>) {
        let mut s = self.lock();
        if !s.dead && !s.finished {
            s.sock = Some(sock);
        }
    }

    /// Queues a pong, replacing one still waiting (its bytes are at most
    /// 127 + 2, counted against the bound like every queued frame).
    pub fn push_pong(&self, frame: Bytes) -> bool {
        let mut s = self.lock();
        if s.close.is_some() || s.dead {
            return false;
        }
        let old = s.pong.as_ref().map_or(0, Bytes::len);
        if s.bytes - old + frame.len() > self.max_bytes {
            drop(s);
            self.close_now(CloseCode::SlowConsumer);
            return false;
        }
        s.bytes = s.bytes - old + frame.len();
        s.pong = Some(frame);
        drop(s);
        self.writer.notify_one();
        true
    }

    /// Queues the heartbeat ping (a static two-byte frame; one at most).
    pub fn push_ping(&self) -> bool {
        let mut s = self.lock();
        if s.close.is_some() || s.dead {
            return false;
        }
        if !s.ping {
            if s.bytes + PING.len() > self.max_bytes {
                drop(s);
                self.close_now(CloseCode::SlowConsumer);
                return false;
            }
            s.bytes += PING.len();
            s.ping = true;
        }
        drop(s);
        self.writer.notify_one();
        true
    }

    /// Queues a frame outside the bound (replay pages, which are paced by
    /// [`Outbox::wait_drained`] instead, PROTOCOL.md section 5).
    pub fn push_unbounded(&self, frame: Bytes) -> bool {
        let mut s = self.lock();
        if s.close.is_some() || s.dead {
            return false;
        }
        reserve_one(&mut s.queue);
        s.queue.push_back(frame);
        drop(s);
        self.writer.notify_one();
        true
    }

    /// Asks the writer to send `disconnect` and close with `code` after what
    /// is queued. The first close request wins.
    pub fn close(&self, code: CloseCode) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
        }
        drop(s);
        self.writer.notify_one();
        self.drained.notify_waiters();
    }

    /// Like [`Outbox::close`], but drops what is queued first (protocol
    /// violations and slow consumers need not see the rest).
    pub fn close_now(&self, code: CloseCode) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
        }
        s.clear();
        drop(s);
        self.writer.notify_one();
        self.drained.notify_waiters();
    }

    /// The close requested, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.lock().close
    }

    /// Whether the connection is closing or gone.
    pub fn is_closing(&self) -> bool {
        let s = self.lock();
        s.close.is_some() || s.dead
    }

    /// Writer side: marks the socket gone.
    pub fn mark_dead(&self) {
        let mut s = self.lock();
        s.dead = true;
        s.clear();
        let sock = s.sock.take();
        drop(s);
        drop(sock);
        self.writer.notify_one();
        self.drained.notify_waiters();
    }

    /// Writer side: the writer has returned; wakes [`Outbox::finished`].
    /// Drops the outbox's socket handle: the hub may hold the connection a
    /// while longer, the socket must close with the connection.
    pub fn finish(&self) {
        let mut s = self.lock();
        s.finished = true;
        let sock = s.sock.take();
        drop(s);
        drop(sock);
        self.drained.notify_waiters();
    }

    /// Resolves once the writer has returned (its last frame, if any, is
    /// written). Replaces a cancellation token, which would cost every
    /// connection another ~130-byte allocation.
    pub async fn finished(&self) {
        loop {
            let notified = self.drained.notified();
            if self.lock().finished {
                return;
            }
            notified.await;
        }
    }

    /// Writer side: waits for frames or a close request. Calling it again
    /// says the frames it returned last are written (or the write failed and
    /// the connection is dead): until then no frame is written directly.
    pub async fn take(&self) -> Take {
        loop {
            let notified = self.writer.notified();
            {
                let mut s = self.lock();
                s.writing = false;
                if s.dead {
                    return Take::Stop;
                }
                if let Some(p) = s.pong.take() {
                    s.queue.push_back(p);
                }
                if std::mem::take(&mut s.ping) {
                    s.queue.push_back(Bytes::from_static(PING));
                }
                if !s.queue.is_empty() {
                    s.bytes = 0;
                    s.writing = true;
                    // The whole queue, buffer and all: no copy, and nothing
                    // left allocated here once it is written.
                    return Take::Frames(std::mem::take(&mut s.queue));
                }
                if let Some(code) = s.close {
                    return Take::Close(code);
                }
            }
            self.drained.notify_waiters();
            notified.await;
        }
    }

    /// Resolves once a close was requested or the socket is gone.
    pub async fn closed(&self) {
        loop {
            let notified = self.drained.notified();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the queue is empty, or the connection closes. Returns
    /// false when it closed.
    pub async fn wait_drained(&self) -> bool {
        loop {
            let notified = self.drained.notified();
            {
                let s = self.lock();
                if s.close.is_some() || s.dead {
                    return false;
                }
                if s.is_empty() {
                    return true;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    #[tokio::test]
    async fn bound_closes_with_4008() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"12345")));
        assert!(o.push(Bytes::from_static(b"12345")));
        assert!(!o.push(Bytes::from_static(b"1")));
        assert_eq!(o.close_code(), Some(CloseCode::SlowConsumer));
        assert!(matches!(
            o.take().await,
            Take::Close(CloseCode::SlowConsumer)
        ));
    }

    #[tokio::test]
    async fn finished_resolves_after_finish_only() {
        let o = std::sync::Arc::new(Outbox::new(10));
        o.close(CloseCode::Normal);
        o.mark_dead();
        // Closing or dying is not finishing: only the writer says that.
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.finished().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        o.finish();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("finished() resolves after finish()")
            .unwrap();
        // And at once for a late caller.
        o.finished().await;
    }

    #[tokio::test]
    async fn a_pong_replaces_the_one_not_yet_written() {
        let o = Outbox::new(100);
        for i in 0..10_000u32 {
            assert!(o.push_pong(Bytes::from(i.to_be_bytes().to_vec())));
        }
        assert!(o.push_ping());
        assert!(o.push_ping());
        assert!(o.push(Bytes::from_static(b"msg")));
        match o.take().await {
            Take::Frames(f) => assert_eq!(
                f,
                [
                    Bytes::from_static(b"msg"),
                    Bytes::from(9_999u32.to_be_bytes().to_vec()),
                    Bytes::from_static(PING),
                ]
            ),
            Take::Close(_) | Take::Stop => panic!("unexpected close"),
        }
        assert!(o.wait_drained().await);
    }

    #[tokio::test]
    async fn control_frames_count_against_the_bound() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"12345678")));
        assert!(o.push_ping());
        assert!(!o.push_pong(Bytes::from_static(b"xyz")));
        assert_eq!(o.close_code(), Some(CloseCode::SlowConsumer));
    }

    #[tokio::test]
    async fn take_returns_in_order_and_frees_bound() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"ab")));
        assert!(o.push(Bytes::from_static(b"cd")));
        match o.take().await {
            Take::Frames(f) => {
                assert_eq!(f, [Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]);
                assert_eq!(o.lock().queue.capacity(), 0, "no buffer kept");
            }
            Take::Close(_) | Take::Stop => panic!("unexpected close"),
        }
        assert!(o.push(Bytes::from_static(b"0123456789")));
    }

    /// A connected pair on 127.0.0.1: the server side shared as a
    /// connection's is (reader, writer and outbox), and the client. With `small`
    /// socket buffers a peer that does not read fills them fast (but one
    /// that reads much through them waits on delayed acks).
    async fn tcp_pair_with(
        small: bool,
    ) -> (
        crate::conn::SharedTcpReader,
        Arc<TcpStream>,
        tokio::net::TcpStream,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (s, c) = (s.unwrap().0, c.unwrap());
        s.set_nodelay(true).unwrap();
        if small {
            socket2::SockRef::from(&s)
                .set_send_buffer_size(4096)
                .unwrap();
            socket2::SockRef::from(&c)
                .set_recv_buffer_size(4096)
                .unwrap();
        }
        // Hyper has written the 101 through this socket before fan-out
        // sees it: its write readiness is known.
        s.writable().await.unwrap();
        let s = Arc::new(s);
        (crate::conn::SharedTcpReader(s.clone()), s, c)
    }

    async fn tcp_pair() -> (
        crate::conn::SharedTcpReader,
        Arc<TcpStream>,
        tokio::net::TcpStream,
    ) {
        tcp_pair_with(true).await
    }

    /// The writer's side of the test: takes frames and writes them all.
    async fn write_taken(o: &Outbox, wr: &mut crate::conn::SharedTcpWriter) -> Vec<Bytes> {
        use tokio::io::AsyncWriteExt;
        match o.take().await {
            Take::Frames(f) => {
                for b in &f {
                    wr.write_all(b).await.unwrap();
                }
                f.into()
            }
            Take::Close(_) | Take::Stop => panic!("unexpected close"),
        }
    }

    async fn read_exact(c: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf))
            .await
            .expect("the bytes arrive")
            .unwrap();
        buf
    }

    /// Whether the writer has a wake-up waiting.
    fn writer_woken(o: &Outbox) -> bool {
        o.writer.notified().now_or_never().is_some()
    }

    #[tokio::test]
    async fn an_idle_connection_is_written_directly_without_waking_the_writer() {
        let (_r, w, mut c) = tcp_pair().await;
        let o = Outbox::new(1 << 20);
        o.attach(w);
        assert_eq!(o.deliver(&Bytes::from_static(b"one")), Delivered::Written);
        assert_eq!(o.deliver(&Bytes::from_static(b"two")), Delivered::Written);
        assert!(!writer_woken(&o));
        assert!(o.lock().queue.is_empty());
        assert_eq!(read_exact(&mut c, 6).await, b"onetwo");
        // Without a socket (non-TCP connections) it is a push.
        let plain = Outbox::new(100);
        assert_eq!(plain.deliver(&Bytes::from_static(b"x")), Delivered::Queued);
        assert!(writer_woken(&plain));
    }

    #[tokio::test]
    async fn queued_or_in_flight_frames_go_first() {
        let (_r, w, mut c) = tcp_pair().await;
        let mut wr = crate::conn::SharedTcpWriter(w.clone());
        let o = Outbox::new(1 << 20);
        o.attach(w);
        // Something queued (a reply): fan-out queues behind it.
        assert!(o.push(Bytes::from_static(b"a")));
        assert_eq!(o.deliver(&Bytes::from_static(b"b")), Delivered::Queued);
        // A pending pong or ping counts as queued too.
        let taken = match o.take().await {
            Take::Frames(f) => f,
            Take::Close(_) | Take::Stop => panic!("unexpected close"),
        };
        assert_eq!(taken, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        // The writer holds them, not yet written: still no direct write.
        assert_eq!(o.deliver(&Bytes::from_static(b"c")), Delivered::Queued);
        {
            use tokio::io::AsyncWriteExt;
            for b in &taken {
                wr.write_all(b).await.unwrap();
            }
        }
        assert_eq!(write_taken(&o, &mut wr).await, [Bytes::from_static(b"c")]);
        assert!(o.push_ping());
        assert_eq!(o.deliver(&Bytes::from_static(b"d")), Delivered::Queued);
        assert_eq!(
            write_taken(&o, &mut wr).await,
            [Bytes::from_static(b"d"), Bytes::from_static(PING)]
        );
        // The writer came back and found nothing: idle again.
        assert!(o.take().now_or_never().is_none());
        assert_eq!(o.deliver(&Bytes::from_static(b"e")), Delivered::Written);
        let mut want = b"abcd".to_vec();
        want.extend_from_slice(PING);
        want.push(b'e');
        assert_eq!(read_exact(&mut c, want.len()).await, want);
    }

    #[tokio::test]
    async fn a_partial_write_queues_the_rest() {
        let (_r, w, mut c) = tcp_pair_with(false).await;
        let mut wr = crate::conn::SharedTcpWriter(w.clone());
        let o = Outbox::new(64 << 20);
        o.attach(w);
        // More than the largest send buffer (4 MiB) and a receive window
        // that has not grown (its peer has not read yet).
        let big: Bytes = (0..16u32 << 20)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect::<Vec<u8>>()
            .into();
        let Delivered::Partial(n) = o.deliver(&big) else {
            panic!("16 MiB does not fit the socket buffers at once");
        };
        assert!(n > 0 && n < big.len());
        assert!(writer_woken(&o));
        {
            let s = o.lock();
            assert_eq!(s.queue, [big.slice(n..)]);
            assert_eq!(s.bytes, big.len() - n);
        }
        // Fan-out queues behind the remainder.
        assert_eq!(o.deliver(&Bytes::from_static(b"after")), Delivered::Queued);
        let total = big.len() + 5;
        let reader = tokio::spawn(async move { read_exact(&mut c, total).await });
        write_taken(&o, &mut wr).await;
        let got = reader.await.unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"after");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_hits_the_bound() {
        let (_r, w, _c) = tcp_pair().await;
        let o = Outbox::new(64 << 10);
        o.attach(w);
        let frame = Bytes::from(vec![7u8; 1 << 10]);
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let d = o.deliver(&frame);
            if seen.last() != Some(&d) {
                seen.push(d);
            }
            if d == Delivered::Refused {
                break;
            }
        }
        // Written while the socket took them, then queued (the first
        // perhaps in part), then refused with 4008 past the bound.
        assert_eq!(seen.first(), Some(&Delivered::Written));
        assert_eq!(seen.last(), Some(&Delivered::Refused));
        assert!(seen.contains(&Delivered::Queued));
        assert_eq!(o.close_code(), Some(CloseCode::SlowConsumer));
        assert!(matches!(
            o.take().await,
            Take::Close(CloseCode::SlowConsumer)
        ));
        // Closing: nothing more is written directly.
        assert_eq!(o.deliver(&Bytes::from_static(b"x")), Delivered::Refused);
    }

    #[tokio::test]
    async fn the_socket_closes_when_the_writer_stops_though_the_outbox_lives() {
        use tokio::io::AsyncReadExt;
        let (r, w, mut c) = tcp_pair().await;
        let held = Arc::downgrade(&w);
        let wr = crate::conn::SharedTcpWriter(w.clone());
        // The hub's handle on the connection: it may outlive the writer.
        let o = Arc::new(Outbox::new(1 << 20));
        o.attach(w);
        assert_eq!(o.deliver(&Bytes::from_static(b"last")), Delivered::Written);
        // The writer's socket fails: it marks the outbox dead and returns.
        o.mark_dead();
        drop(wr);
        o.finish();
        drop(r);
        assert!(held.upgrade().is_none(), "no handle left on the socket");
        assert_eq!(o.deliver(&Bytes::from_static(b"x")), Delivered::Refused);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("the peer sees the close")
            .unwrap();
        assert_eq!(got, b"last");
    }

    #[tokio::test]
    async fn a_close_goes_after_directly_written_frames() {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let (_r, w, mut c) = tcp_pair().await;
        let mut wr = crate::conn::SharedTcpWriter(w.clone());
        let o = Arc::new(Outbox::new(1 << 20));
        o.attach(w);
        assert_eq!(o.deliver(&Bytes::from_static(b"msg")), Delivered::Written);
        o.close(CloseCode::Normal);
        assert_eq!(o.deliver(&Bytes::from_static(b"late")), Delivered::Refused);
        assert!(matches!(o.take().await, Take::Close(CloseCode::Normal)));
        wr.write_all(b"bye").await.unwrap();
        // The FIN goes now, though the outbox still holds the socket.
        wr.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("the peer sees the FIN")
            .unwrap();
        assert_eq!(got, b"msgbye");
        o.mark_dead();
        o.finish();
    }

    #[tokio::test]
    async fn the_writer_going_sends_the_fin_while_the_reader_lingers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut r, w, mut c) = tcp_pair().await;
        let mut wr = crate::conn::SharedTcpWriter(w.clone());
        let o = Arc::new(Outbox::new(1 << 20));
        o.attach(w);
        assert_eq!(o.deliver(&Bytes::from_static(b"one")), Delivered::Written);
        wr.write_all(b"two").await.unwrap();
        // The writer stops without a close (its socket failed, or a stuck
        // write ran out of grace): the outbox lets go, the writer drops.
        o.mark_dead();
        o.finish();
        drop(wr);
        // The reader still holds the socket (it lingers): the peer sees
        // our FIN all the same, after everything written.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("the peer sees the FIN")
            .unwrap();
        assert_eq!(got, b"onetwo");
        // And the reader still reads what the peer sends, then its close.
        c.write_all(b"late").await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
            .await
            .expect("the reader sees the peer's close")
            .unwrap();
        assert_eq!(back, b"late");
    }
}
