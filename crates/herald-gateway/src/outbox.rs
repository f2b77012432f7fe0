//! A connection's outbound queue: pre-encoded WebSocket frames, bounded in
//! bytes (DESIGN.md guarantee 4).
//!
//! Fan-out pushes shared `Bytes` and never blocks; a push past the bound
//! marks the connection for close 4008 and drops the frame, so a slow client
//! never slows anyone else. An idle outbox holds no allocation (an empty
//! `VecDeque`), which keeps idle connections small.

use bytes::Bytes;
use herald_protocol::CloseCode;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// A connection's outbound queue.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when frames arrive or a close is requested.
    writer: Notify,
    /// Wakes whoever waits for the queue to drain (replay pacing) or the
    /// connection to close.
    drained: Notify,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// The pong not yet written, if any: a newer one replaces it (RFC 6455
    /// section 5.5.3 allows answering only the latest ping), so a client
    /// that pings and never reads holds at most one here.
    pong: Option<Bytes>,
    /// A heartbeat ping is due (one at most, whatever the ticks).
    ping: bool,
    close: Option<CloseCode>,
    /// The writer has stopped (socket gone); nothing more will be written.
    dead: bool,
    /// The writer task has returned (set once, by [`Outbox::finish`]).
    finished: bool,
}

impl State {
    /// Drops everything queued.
    fn clear(&mut self) {
        self.queue.clear();
        self.pong = None;
        self.ping = false;
        self.bytes = 0;
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
        if s.close.is_some() || s.dead {
            return false;
        }
        if s.bytes + frame.len() > self.max_bytes {
            s.close = Some(CloseCode::SlowConsumer);
            s.clear();
            drop(s);
            self.writer.notify_one();
            self.drained.notify_waiters();
            return false;
        }
        s.bytes += frame.len();
        reserve_one(&mut s.queue);
        s.queue.push_back(frame);
        drop(s);
        self.writer.notify_one();
        true
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
        drop(s);
        self.writer.notify_one();
        self.drained.notify_waiters();
    }

    /// Writer side: the writer has returned; wakes [`Outbox::finished`].
    pub fn finish(&self) {
        self.lock().finished = true;
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

    /// Writer side: waits for frames or a close request.
    pub async fn take(&self) -> Take {
        loop {
            let notified = self.writer.notified();
            {
                let mut s = self.lock();
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
}
