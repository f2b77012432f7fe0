//! A TCP forwarder for fault tests: [`Proxy`] listens on a free 127.0.0.1
//! port and forwards each connection to 127.0.0.1:`upstream_port`, and can
//! freeze, partition, sever or take down the link on demand.
//!
//! It runs on its own std threads (an acceptor, two pumps per forwarded
//! connection), so it works from any tokio runtime and outlives runtimes.
//!
//! Invariants:
//! - After [`Proxy::freeze`] or [`Proxy::partition`] returns, no byte moves
//!   on a silenced connection (a pump checks the link's flag under the lock
//!   it holds while writing) and the sockets stay open.
//! - Dropping the proxy closes the listener and every socket (silent ones
//!   too) and joins every thread: nothing outlives the value. Pumps read with
//!   a short timeout so they notice a freeze; the owner shuts sockets down to
//!   end a blocked read or write at once.
//! - It never sleeps: threads block on sockets with timeouts.

use crate::{TestkitError, free_port};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a pump blocked in `read` looks at its link's flag: the bound on
/// how long a frozen pump thread lingers (the freeze itself is immediate).
const POLL: Duration = Duration::from_millis(50);
/// A pump's write to a peer that does not read fails after this, closing
/// the link (keeps `freeze` from waiting long on a pump's lock).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting to the upstream on loopback: refused or done at once, normally.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A fault-injecting TCP forwarder 127.0.0.1:[`port`](Proxy::port) →
/// 127.0.0.1:`upstream_port`; stopped (listener and all sockets closed,
/// threads joined) when dropped.
pub struct Proxy {
    /// The proxy's own port.
    port: u16,
    /// State shared with the acceptor.
    shared: Arc<Shared>,
    /// The acceptor thread; `None` once joined.
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("port", &self.port)
            .field("upstream", &self.shared.upstream)
            .field("connections", &self.connections())
            .finish()
    }
}

/// What happens to a newly accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward it.
    Normal,
    /// Hold it open, silent.
    Partition,
    /// Close it at once.
    Down,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// Set by `Drop`; the acceptor exits when it sees it.
    stop: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// Every connection not yet reaped.
    links: Mutex<Vec<Link>>,
}

/// One accepted connection: the client side, the upstream side when
/// forwarded, and its pump threads.
struct Link {
    client: TcpStream,
    upstream: Option<TcpStream>,
    state: Arc<LinkState>,
    pumps: Vec<JoinHandle<()>>,
}

struct LinkState {
    /// True while bytes may move; pumps hold this lock while writing, so
    /// setting it false stops forwarding at once.
    forwarding: Mutex<bool>,
    /// Set when a pump closed the link (EOF or error): it may be reaped.
    closed: AtomicBool,
}

impl LinkState {
    fn forwarding(&self) -> MutexGuard<'_, bool> {
        self.forwarding.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Link {
    /// Stops forwarding; the sockets stay open.
    fn silence(&self) {
        *self.state.forwarding() = false;
    }

    /// Silences, shuts both sockets down (ending blocked pumps) and joins
    /// the pumps; the sockets close when `self` drops.
    fn close(mut self) {
        // Shut down first: a pump blocked in `write` (holding the flag's
        // lock) fails at once instead of after its write timeout.
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(up) = &self.upstream {
            let _ = up.shutdown(Shutdown::Both);
        }
        self.silence();
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
    }
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mode(&self) -> MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close_all(&self) {
        let links = std::mem::take(&mut *self.links());
        for link in links {
            link.close();
        }
    }

    fn silence_all(&self) {
        for link in self.links().iter() {
            link.silence();
        }
    }
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:<new free port>` -> `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Result<Proxy, TestkitError> {
        let listener = bind_free()?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            mode: Mutex::new(Mode::Normal),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            links: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-accept-{port}"))
                .spawn(move || accept_loop(listener, &shared))?
        };
        Ok(Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The proxy's own port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"redis://127.0.0.1:<port>"` (for `--redis-url`).
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Existing connections stop forwarding in both directions and stay
    /// open, silent (a half-open link: a host gone without RST); new
    /// connections are forwarded normally.
    pub fn freeze(&self) {
        self.shared.silence_all();
    }

    /// Every connection, present and future, goes silent (accepted, never
    /// forwarded, never closed) until `heal` — a partition.
    pub fn partition(&self) {
        // Mode first: a connection accepted meanwhile is silenced either way.
        *self.shared.mode() = Mode::Partition;
        self.shared.silence_all();
    }

    /// Ends `partition` and `down`: new connections forward again
    /// (connections frozen or partitioned before stay silent).
    pub fn heal(&self) {
        *self.shared.mode() = Mode::Normal;
    }

    /// Closes every current connection, both sides (a reset link); new ones
    /// are forwarded.
    pub fn sever(&self) {
        self.shared.close_all();
    }

    /// Closes every current connection and closes each new one at once,
    /// until `heal` (the upstream is unreachable).
    pub fn down(&self) {
        *self.shared.mode() = Mode::Down;
        self.shared.close_all();
    }

    /// Connections accepted so far (a test can wait for a reconnect with it).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The acceptor blocks in `accept`: wake it with a connection of our
        // own; it sees `stop`, drops it and the listener, and returns.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            CONNECT_TIMEOUT,
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.shared.close_all();
    }
}

/// Binds 127.0.0.1 on a free port (retrying if another process takes it).
fn bind_free() -> Result<TcpListener, TestkitError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match TcpListener::bind(("127.0.0.1", free_port())) {
            Ok(l) => return Ok(l),
            Err(e) if attempt < 5 && e.kind() == ErrorKind::AddrInUse => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn accept_loop(listener: TcpListener, shared: &Shared) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, _)) = accepted else {
            // EMFILE and friends: keep serving; the test sees the failure.
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Reap links whose pumps closed them (both ends already shut).
        {
            let mut links = shared.links();
            let (done, live): (Vec<Link>, Vec<Link>) = std::mem::take(&mut *links)
                .into_iter()
                .partition(|l| l.state.closed.load(Ordering::SeqCst));
            *links = live;
            drop(links);
            for link in done {
                link.close();
            }
        }
        let mode = *shared.mode();
        match mode {
            Mode::Down => {
                let _ = client.shutdown(Shutdown::Both);
            }
            Mode::Partition => shared.links().push(Link {
                client,
                upstream: None,
                state: Arc::new(LinkState {
                    forwarding: Mutex::new(false),
                    closed: AtomicBool::new(false),
                }),
                pumps: Vec::new(),
            }),
            Mode::Normal => {
                if let Some(link) = forward(client, shared) {
                    let mut links = shared.links();
                    // A partition or down that raced with this connect.
                    match *shared.mode() {
                        Mode::Normal => links.push(link),
                        Mode::Partition => {
                            link.silence();
                            links.push(link);
                        }
                        Mode::Down => {
                            drop(links);
                            link.close();
                        }
                    }
                }
            }
        }
    }
}

/// Connects to the upstream and starts both pumps; `None` (client closed)
/// when the upstream cannot be reached.
fn forward(client: TcpStream, shared: &Shared) -> Option<Link> {
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return None;
    };
    let state = Arc::new(LinkState {
        forwarding: Mutex::new(true),
        closed: AtomicBool::new(false),
    });
    let mut pumps = Vec::with_capacity(2);
    for (from, to) in [(&client, &upstream), (&upstream, &client)] {
        let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
            break;
        };
        let state = state.clone();
        match std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump(from, to, &state))
        {
            Ok(h) => pumps.push(h),
            Err(_) => break,
        }
    }
    let link = Link {
        client,
        upstream: Some(upstream),
        state,
        pumps,
    };
    if link.pumps.len() < 2 {
        link.close();
        return None;
    }
    Some(link)
}

/// Copies `from` → `to` while the link forwards. Returns, leaving both
/// sockets open, once the link is silenced; on EOF or an error it shuts the
/// link down (unless silenced: a silent link never closes by itself).
fn pump(mut from: TcpStream, mut to: TcpStream, state: &LinkState) {
    if from.set_read_timeout(Some(POLL)).is_err()
        || to.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !*state.forwarding() {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let forwarding = state.forwarding();
        if !*forwarding {
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let forwarding = state.forwarding();
    if *forwarding {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        state.closed.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventually;

    /// A std echo server; stopped (listener closed, echo threads ended by
    /// shutting their sockets) when dropped.
    struct Echo {
        port: u16,
        stop: Arc<AtomicBool>,
        conns: Arc<Mutex<Vec<TcpStream>>>,
        acceptor: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            let stop = Arc::new(AtomicBool::new(false));
            let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
            let acceptor = {
                let (stop, conns) = (stop.clone(), conns.clone());
                std::thread::spawn(move || {
                    for s in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(mut s) = s else { continue };
                        conns.lock().unwrap().push(s.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 || s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                })
            };
            Echo {
                port,
                stop,
                conns,
                acceptor: Some(acceptor),
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            if let Some(a) = self.acceptor.take() {
                a.join().unwrap();
            }
            for c in self.conns.lock().unwrap().iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Writes `msg` and reads it back (bounded by the 5 s read timeout).
    fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
        if s.write_all(msg).is_err() {
            return false;
        }
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).is_ok() && got == msg
    }

    /// Writes `msg` and checks that nothing comes back within `window` and
    /// the socket is still open (no EOF, no reset).
    fn silent(s: &mut TcpStream, msg: &[u8]) -> bool {
        let window = Duration::from_millis(300);
        s.write_all(msg).unwrap();
        s.set_read_timeout(Some(window)).unwrap();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        matches!(r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }

    /// The peer closed: EOF or a reset (bounded by the 5 s read timeout).
    fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    #[test]
    fn proxy_is_send_and_sync() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Proxy>();
    }

    #[test]
    fn forwards_both_ways_and_counts() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        assert_eq!(
            proxy.redis_url(),
            format!("redis://127.0.0.1:{}", proxy.port())
        );
        let mut a = connect(&proxy);
        let mut b = connect(&proxy);
        assert!(echoes(&mut a, b"hello"));
        assert!(echoes(&mut b, b"world"));
        assert!(echoes(&mut a, &[7u8; 100_000]));
        assert_eq!(proxy.connections(), 2);
    }

    #[test]
    fn freeze_silences_existing_and_forwards_new() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        let mut a = connect(&proxy);
        assert!(echoes(&mut a, b"before"));
        proxy.freeze();
        assert!(silent(&mut a, b"after"));
        let mut b = connect(&proxy);
        assert!(echoes(&mut b, b"new"));
        // Still silent, still open.
        assert!(silent(&mut a, b"again"));
    }

    #[test]
    fn partition_silences_all_until_heal() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        let mut a = connect(&proxy);
        assert!(echoes(&mut a, b"before"));
        proxy.partition();
        assert!(silent(&mut a, b"during"));
        let mut c = connect(&proxy);
        assert!(silent(&mut c, b"new during"));
        proxy.heal();
        let mut d = connect(&proxy);
        assert!(echoes(&mut d, b"healed"));
        assert!(silent(&mut a, b"old"));
        assert!(silent(&mut c, b"old"));
        assert_eq!(proxy.connections(), 3);
    }

    #[test]
    fn sever_closes_existing_and_forwards_new() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        let mut a = connect(&proxy);
        assert!(echoes(&mut a, b"before"));
        proxy.sever();
        assert!(closed(&mut a));
        let mut b = connect(&proxy);
        assert!(echoes(&mut b, b"after"));
    }

    #[test]
    fn sever_also_closes_frozen_connections() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        let mut a = connect(&proxy);
        assert!(echoes(&mut a, b"before"));
        proxy.freeze();
        proxy.sever();
        assert!(closed(&mut a));
    }

    #[tokio::test]
    async fn down_closes_all_until_heal() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        let mut a = connect(&proxy);
        assert!(echoes(&mut a, b"before"));
        proxy.down();
        assert!(closed(&mut a));
        let mut b = connect(&proxy);
        assert!(closed(&mut b));
        eventually(Duration::from_secs(5), "second accept counted", || async {
            proxy.connections() == 2
        })
        .await;
        proxy.heal();
        let mut c = connect(&proxy);
        assert!(echoes(&mut c, b"healed"));
    }

    #[test]
    fn upstream_gone_closes_new_connections() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        drop(echo);
        let mut a = connect(&proxy);
        assert!(closed(&mut a));
    }

    #[tokio::test]
    async fn drop_closes_silent_sockets_and_listener() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.port).unwrap();
        let port = proxy.port();
        let mut a = connect(&proxy);
        assert!(echoes(&mut a, b"before"));
        proxy.freeze();
        proxy.partition();
        let mut c = connect(&proxy);
        eventually(
            Duration::from_secs(5),
            "partitioned accept counted",
            || async { proxy.connections() == 2 },
        )
        .await;
        drop(proxy);
        assert!(closed(&mut a));
        assert!(closed(&mut c));
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
