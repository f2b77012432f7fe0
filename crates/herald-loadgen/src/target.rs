//! The herald under test: where it listens, how to authenticate, and the
//! local resources (file descriptors, source addresses) a run needs to reach
//! it with many connections.
//!
//! Invariants: every address of a target is on 127.0.0.1. The load generator
//! refuses any other host, so a typo can never point a connection storm at a
//! machine that is not ours. A target has at least one WebSocket address;
//! with several (one per gateway, `--url` repeated), connection `i` goes to
//! the `i % n`-th, so N connections split evenly and the split does not
//! depend on which handshake finishes first.

use anyhow::{Context, bail};
use herald_auth::{Minter, TokenSpec};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Lifetime of the tokens minted for load connections: far beyond any run's
/// hard deadline, so no connection is closed with 4004 mid-run.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The herald being measured.
#[derive(Debug, Clone)]
pub struct Target {
    /// `127.0.0.1:PORT` of each listener taking `/ws` (the `--url`s, in
    /// order): one in dev, one per gateway in the Redis topology. Never
    /// empty ([`Target::new`] refuses an empty list).
    ws_addrs: Vec<SocketAddr>,
    /// Where `POST /v1/publish` goes: the first `--url` in dev, the ingest
    /// node's listener in the Redis topology (`--ingest-url`).
    pub ingest_addr: SocketAddr,
    /// Bearer key for `POST /v1/publish`.
    pub api_key: String,
    /// Signs connection tokens (HS256 with the server's `--jwt-secret`).
    pub minter: Minter,
}

impl Target {
    /// Parses each of `urls` (`http://127.0.0.1:PORT`, or `localhost`, or
    /// `ws://`) as a WebSocket listener; the first also takes publishes
    /// until [`Target::with_ingest`] says otherwise. Any other host, or no
    /// URL at all, is refused.
    pub fn new<S: AsRef<str>>(urls: &[S], api_key: &str, jwt_secret: &str) -> anyhow::Result<Self> {
        let ws_addrs = urls
            .iter()
            .map(|u| loopback(u.as_ref(), "--url"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let Some(&first) = ws_addrs.first() else {
            bail!("--url: at least one is needed");
        };
        Ok(Self {
            ws_addrs,
            ingest_addr: first,
            api_key: api_key.to_owned(),
            minter: Minter::hs256(jwt_secret.as_bytes()),
        })
    }

    /// Publishes to another listener (an ingest node), same loopback rule.
    pub fn with_ingest(mut self, url: &str) -> anyhow::Result<Self> {
        self.ingest_addr = loopback(url, "--ingest-url")?;
        Ok(self)
    }

    /// Every WebSocket address, in `--url` order (at least one).
    pub fn ws_addrs(&self) -> &[SocketAddr] {
        &self.ws_addrs
    }

    /// Where connection `i` goes: round robin over [`Target::ws_addrs`].
    pub fn ws_addr(&self, i: usize) -> SocketAddr {
        *self
            .ws_addrs
            .get(self.ws_index(i))
            .expect("i % len is below len")
    }

    /// Index in [`Target::ws_addrs`] of connection `i`'s address.
    pub fn ws_index(&self, i: usize) -> usize {
        // `new` refuses an empty list, so the divisor is never zero.
        i % self.ws_addrs.len()
    }

    /// A connection token for `sub` with `channels` as automatic
    /// subscriptions (they come back in `welcome.subs` with their seq).
    pub fn token(&self, sub: &str, channels: &[String]) -> anyhow::Result<String> {
        let spec = TokenSpec {
            sub: sub.to_owned(),
            ttl: Some(TOKEN_TTL),
            channels: channels.to_vec(),
            ..TokenSpec::default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.minter
            .mint(&spec.to_claims(now))
            .map_err(|e| anyhow::anyhow!("minting a token: {e}"))
    }
}

/// Parses `http://127.0.0.1:PORT` (or `localhost`, or `ws://`); any other
/// host is refused.
fn loopback(url: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .with_context(|| format!("{flag} {url:?}: expected http://127.0.0.1:PORT"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .with_context(|| format!("{flag} {url:?}: the port is missing"))?;
    if host != "127.0.0.1" && host != "localhost" {
        bail!("{flag} {url:?}: herald-loadgen only targets 127.0.0.1 (loopback)");
    }
    let port: u16 = port
        .parse()
        .with_context(|| format!("{flag} {url:?}: bad port"))?;
    Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
}

/// Cycles client source addresses over 127.0.0.1..=127.0.0.254, so that
/// many connections to one server port never run out of ephemeral ports
/// (about 28 000 per source address with Linux defaults).
#[derive(Debug, Default)]
pub struct SourceAddrs {
    next: AtomicU32,
}

impl SourceAddrs {
    /// The source address for the next connection.
    pub fn next(&self) -> Ipv4Addr {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % 254;
        let last = u8::try_from(i + 1).expect("i % 254 + 1 fits in u8");
        Ipv4Addr::new(127, 0, 0, last)
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit
/// in force afterwards. Each load connection is one descriptor.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Fails early when `connections` sockets (plus a margin for the HTTP
/// client and the runtime) would not fit under the fd limit.
pub fn check_fd_budget(connections: usize) -> anyhow::Result<()> {
    let limit = raise_fd_limit();
    let need = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    if need > limit {
        bail!(
            "{connections} connections need about {need} file descriptors; the limit is {limit} \
             (raise the hard limit with `ulimit -Hn` / prlimit)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback() {
        assert!(Target::new(&["http://127.0.0.1:8080"], "k", "s").is_ok());
        assert!(Target::new(&["ws://localhost:9/ws"], "k", "s").is_ok());
        assert!(Target::new(&["http://10.0.0.1:8080"], "k", "s").is_err());
        assert!(Target::new(&["http://127.0.0.1"], "k", "s").is_err());
        assert!(Target::new(&["https://127.0.0.1:1"], "k", "s").is_err());
        let t = Target::new(&["http://127.0.0.1:8080"], "k", "s").unwrap();
        assert_eq!(t.ingest_addr, t.ws_addr(0));
        let t = t.with_ingest("http://127.0.0.1:8081").unwrap();
        assert_eq!(t.ingest_addr.port(), 8081);
        assert!(
            Target::new(&["http://127.0.0.1:8080"], "k", "s")
                .unwrap()
                .with_ingest("http://10.0.0.1:1")
                .is_err()
        );
    }

    #[test]
    fn every_url_is_loopback_checked() {
        let no_urls: [&str; 0] = [];
        assert!(Target::new(&no_urls, "k", "s").is_err());
        let e = Target::new(&["http://127.0.0.1:1", "http://10.0.0.1:2"], "k", "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("10.0.0.1"), "{e}");
        assert!(Target::new(&["http://127.0.0.1:1", "http://127.0.0.1"], "k", "s").is_err());
        assert!(Target::new(&["http://example.com:1", "http://127.0.0.1:2"], "k", "s").is_err());
        let t = Target::new(&["http://127.0.0.1:1", "ws://localhost:2/ws"], "k", "s").unwrap();
        let ports: Vec<u16> = t.ws_addrs().iter().map(SocketAddr::port).collect();
        assert_eq!(ports, [1, 2]);
        assert!(t.ws_addrs().iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn connections_go_round_robin() {
        let urls = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ];
        let t = Target::new(&urls, "k", "s").unwrap();
        let ports: Vec<u16> = (0..7).map(|i| t.ws_addr(i).port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
        // 1,000 subscribers over 2 gateways: 500 each.
        let t = Target::new(&urls[..2], "k", "s").unwrap();
        let mut per = [0usize; 2];
        for i in 0..1000 {
            per[t.ws_index(i)] += 1;
        }
        assert_eq!(per, [500, 500]);
        // Publishes go to the first URL unless --ingest-url says otherwise.
        assert_eq!(t.ingest_addr.port(), 1);
        let t = t.with_ingest("http://127.0.0.1:9").unwrap();
        assert_eq!(t.ingest_addr.port(), 9);
        assert_eq!(t.ws_addr(1).port(), 2);
    }

    #[test]
    fn source_addresses_cycle() {
        let s = SourceAddrs::default();
        assert_eq!(s.next(), Ipv4Addr::new(127, 0, 0, 1));
        for _ in 0..252 {
            s.next();
        }
        assert_eq!(s.next(), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(s.next(), Ipv4Addr::new(127, 0, 0, 1));
    }
}
